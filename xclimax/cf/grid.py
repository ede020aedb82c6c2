"""Horizontal grids: find, normalise, check and regrid regular latitude-longitude grids.

The canonical grid layout inside xclimax has dimensions named ``lat`` and ``lon``, latitudes
ascending (south to north) and longitudes in ``[0, 360)`` ascending. :func:`normalize_grid`
brings a Dataset into that layout and returns a :class:`GridInfo` with which
:func:`restore_grid` puts results back into the input's conventions.

Everything here is lazy on dask-backed data: reordering uses indexing and rolling, and
regridding is two matrix products (one per axis) with precomputed weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import xarray as xr

from ..exceptions import GridError

__all__ = ["GridInfo", "normalize_grid", "restore_grid", "model_grid", "check_grid", "regrid"]

logger = logging.getLogger(__name__)

T = TypeVar("T", xr.Dataset, xr.DataArray)

_LAT_NAMES = ("lat", "latitude", "y")
_LON_NAMES = ("lon", "longitude", "x")
_TOL = 1e-3  # degrees


@dataclass(frozen=True)
class GridInfo:
    """What :func:`normalize_grid` did to a grid, so that :func:`restore_grid` can undo it.

    Attributes
    ----------
    lat_name, lon_name : str
        Names of the latitude and longitude dimensions in the input.
    lat : numpy.ndarray
        The input's latitudes, in the input's order.
    lon : numpy.ndarray
        The input's longitudes, in the input's order and range.
    """

    lat_name: str
    lon_name: str
    lat: np.ndarray
    lon: np.ndarray

    @property
    def lat_descending(self) -> bool:
        """Whether the input's latitudes ran north to south."""
        return bool(self.lat.size > 1 and self.lat[0] > self.lat[-1])

    @property
    def lon_negative(self) -> bool:
        """Whether the input used longitudes in ``[-180, 180)``."""
        return bool(self.lon.size and self.lon.min() < 0)

    @property
    def changed(self) -> bool:
        """Whether normalisation changed anything (names, order or longitude range)."""
        lat_ok = self.lat.size < 2 or bool(np.all(np.diff(self.lat) > 0))
        lon_ok = bool(np.all(np.diff(self.lon) > 0)) and self.lon.min(initial=0) >= 0 and self.lon.max(initial=0) < 360
        return not (self.lat_name == "lat" and self.lon_name == "lon" and lat_ok and lon_ok)


def _find_coord(obj: xr.Dataset | xr.DataArray, key: str, axis: str, names: tuple[str, ...]) -> str:
    """Name of the 1-D horizontal coordinate for ``key`` ("latitude"/"longitude")."""
    found: list[str] = []
    try:
        found = list(obj.cf.coordinates.get(key, [])) + [n for n in obj.cf.axes.get(axis, []) if n not in found]
    except Exception:  # cf-xarray may fail on exotic attributes; fall back to names
        found = []
    found += [n for n in names if n in obj.coords or n in obj.dims]
    for name in found:
        if name in obj.dims:
            return name
    for name in found:
        if name in obj.coords and obj[name].ndim == 1:
            return name
    if any(name in obj.coords and obj[name].ndim > 1 for name in found):
        raise GridError(
            f"expected a regular latitude-longitude grid with 1-D {key} coordinates; found a 2-D {key} "
            f"coordinate ({found}): regrid the data to a regular grid first"
        )
    raise GridError(
        f"could not find the {key} coordinate: expected a coordinate with standard_name={key!r}, axis={axis!r} "
        f"or a name in {list(names)}; found dims {list(obj.dims)} and coords {list(obj.coords)}"
    )


def _wrap360(lon: np.ndarray) -> np.ndarray:
    out = np.mod(np.asarray(lon, dtype=float), 360.0)
    out[np.isclose(out, 360.0, atol=1e-9)] = 0.0
    return out


def normalize_grid(ds: T) -> tuple[T, GridInfo]:
    """Bring the horizontal grid into the canonical layout.

    The latitude and longitude coordinates are found with cf-xarray (``standard_name``,
    ``units`` or ``axis`` attributes) or by the names ``lat/latitude/y`` and
    ``lon/longitude/x``. They are renamed to ``lat``/``lon``; latitudes are sorted
    ascending; longitudes are wrapped to ``[0, 360)`` and sorted (by a roll where possible).
    Nothing is computed on dask-backed data.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        Data on a regular latitude-longitude grid.

    Returns
    -------
    normalised : same type as ``ds``
        A new object in the canonical layout (``ds`` is not modified).
    info : GridInfo
        What was done, for :func:`restore_grid`.

    Raises
    ------
    GridError
        If no 1-D latitude/longitude coordinates are found or the longitudes repeat after wrapping.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["2m_temperature"], grid=(4, 8))
    >>> flipped = ds.rename(lat="latitude").isel(latitude=slice(None, None, -1))
    >>> out, info = normalize_grid(flipped)
    >>> out["lat"].values.tolist() == ds["lat"].values.tolist(), info.lat_name, info.lat_descending
    (True, 'latitude', True)
    """
    lat_name = _find_coord(ds, "latitude", "Y", _LAT_NAMES)
    lon_name = _find_coord(ds, "longitude", "X", _LON_NAMES)
    info = GridInfo(lat_name, lon_name, np.asarray(ds[lat_name].values), np.asarray(ds[lon_name].values))
    out = ds
    for name in (lat_name, lon_name):
        dim = ds[name].dims[0]
        if dim != name:  # a 1-D coordinate on another dimension, e.g. lat(y)
            out = out.swap_dims({dim: name})
    rename = {k: v for k, v in ((lat_name, "lat"), (lon_name, "lon")) if k != v}
    clash = [v for v in rename.values() if v in out.variables and v not in rename]
    if clash:
        out = out.drop_vars(clash)
    out = out.rename(rename) if rename else out
    # latitude ascending
    lat = info.lat
    if lat.size > 1 and not np.all(np.diff(lat) > 0):
        if np.all(np.diff(lat) < 0):
            out = out.isel(lat=slice(None, None, -1))
        else:
            out = out.isel(lat=np.argsort(lat, kind="stable"))
    # longitude in [0, 360), ascending
    wrapped = _wrap360(info.lon)
    if np.unique(np.round(wrapped, 6)).size != wrapped.size:
        raise GridError(
            f"longitudes repeat after wrapping to [0, 360): expected {wrapped.size} distinct longitudes, found "
            f"{np.unique(np.round(wrapped, 6)).size} (e.g. both 0 and 360 present); drop the duplicate column"
        )
    if not np.array_equal(wrapped, info.lon):
        out = out.assign_coords(lon=out["lon"].copy(data=wrapped))
    order = np.argsort(wrapped, kind="stable")
    if not np.array_equal(order, np.arange(order.size)):
        shift = int(order[0])
        if np.array_equal(order, np.roll(np.arange(order.size), -shift)):
            out = out.roll(lon=-shift, roll_coords=True)
        else:
            out = out.isel(lon=order)
    if info.changed:
        logger.info("normalised grid: %s/%s -> lat/lon (lat ascending, lon in [0, 360))", lat_name, lon_name)
    return out, info


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    return a.size == b.size and bool(np.allclose(np.sort(a), np.sort(b), atol=_TOL, rtol=0))


def restore_grid(obj: T, info: GridInfo) -> T:
    """Put an object in canonical grid layout back into the conventions recorded by ``info``.

    Names, latitude order and longitude range (``[-180, 180)`` if the input had negative
    longitudes) are restored. When ``obj`` is still on the input's grid the original
    coordinate order is restored exactly, so ``restore_grid(*normalize_grid(ds))`` equals ``ds``;
    on another grid (after regridding) the conventions are applied (descending latitudes stay
    descending, longitudes ascending within their range).

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        Data with ``lat`` and ``lon`` dimensions in the canonical layout.
    info : GridInfo
        Returned by :func:`normalize_grid` on the original input.

    Returns
    -------
    same type as ``obj``

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["2m_temperature"], grid=(4, 8))
    >>> ds = ds.assign_coords(lon=((ds.lon + 180) % 360) - 180).sortby("lon")
    >>> out, info = normalize_grid(ds)
    >>> restore_grid(out, info).identical(ds)
    True
    """
    if "lat" not in obj.dims or "lon" not in obj.dims:
        raise GridError(f"expected dimensions 'lat' and 'lon' to restore; found {list(obj.dims)}")
    lat = np.asarray(obj["lat"].values)
    lon = np.asarray(obj["lon"].values)
    out = obj
    # latitude order
    if _same_values(lat, info.lat):
        idx = np.array([int(np.argmin(np.abs(lat - v))) for v in info.lat])
        if not np.array_equal(idx, np.arange(idx.size)):
            out = out.isel(lat=idx)
        out = out.assign_coords(lat=out["lat"].copy(data=info.lat.astype(lat.dtype, copy=False)))
    elif info.lat_descending:
        out = out.isel(lat=slice(None, None, -1))
    # longitude order and range
    if _same_values(_wrap360(lon), _wrap360(info.lon)):
        wl = _wrap360(lon)
        wi = _wrap360(info.lon)
        idx = np.array([int(np.argmin(np.abs((wl - v + 180) % 360 - 180))) for v in wi])
        if not np.array_equal(idx, np.arange(idx.size)):
            out = out.isel(lon=idx)
        out = out.assign_coords(lon=out["lon"].copy(data=info.lon.astype(lon.dtype, copy=False)))
    elif info.lon_negative:
        new = (lon + 180.0) % 360.0 - 180.0
        out = out.assign_coords(lon=out["lon"].copy(data=new))
        order = np.argsort(new, kind="stable")
        if not np.array_equal(order, np.arange(order.size)):
            out = out.isel(lon=order)
    rename = {k: v for k, v in (("lat", info.lat_name), ("lon", info.lon_name)) if k != v}
    return out.rename(rename) if rename else out


def grid_coords(nlat: int = 32, nlon: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes (ascending, cell centres) and longitudes (0..360) of the ClimaX grid.

    Examples
    --------
    >>> lat, lon = grid_coords(32, 64)
    >>> float(lat[0]), float(lon[1])
    (-87.1875, 5.625)
    """
    dlat = 180.0 / nlat
    dlon = 360.0 / nlon
    return -90 + dlat / 2 + dlat * np.arange(nlat), dlon * np.arange(nlon)


def model_grid(img_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes of the ClimaX grid for ``img_size=(H, W)``.

    Latitudes are cell centres ``-90 + d/2 + d*i`` (``d = 180/H``), longitudes ``360/W * j``.

    Examples
    --------
    >>> lat, lon = model_grid((32, 64))
    >>> lat.size, lon.size, float(lat[0]), float(lon[-1])
    (32, 64, -87.1875, 354.375)
    """
    h, w = (int(v) for v in img_size)
    return grid_coords(h, w)


def _span(x: np.ndarray) -> str:
    return f"{x.min():g}..{x.max():g}" if x.size else "(empty)"


def check_grid(ds: xr.Dataset | xr.DataArray, img_size: tuple[int, int]) -> None:
    """Raise :class:`GridError` unless ``ds`` is on the ClimaX grid for ``img_size``.

    The coordinates are compared after normalisation (so descending latitudes or longitudes in
    ``[-180, 180)`` are accepted) with a tolerance of 1e-3 degrees.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
    img_size : (int, int)
        ``(H, W)`` of the model.

    Raises
    ------
    GridError
        Saying the expected and found shape and coordinates (shape mismatch, shifted grid,
        non-global grid).

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> check_grid(synthetic_dataset(1, variables=["2m_temperature"], grid=(32, 64)), (32, 64))
    >>> check_grid(synthetic_dataset(1, variables=["2m_temperature"], grid=(16, 32)), (32, 64))
    Traceback (most recent call last):
    ...
    xclimax.exceptions.GridError: grid shape mismatch: the model expects (lat, lon) = (32, 64), found (16, 32) ...
    """
    norm, _ = normalize_grid(ds)
    lat, lon = np.asarray(norm["lat"].values, float), np.asarray(norm["lon"].values, float)
    elat, elon = model_grid(img_size)
    hint = "; use xclimax.grid.regrid(ds, *xclimax.grid.model_grid(img_size)) or forecast(..., regrid='bilinear')"
    found = f"lat {_span(lat)}, lon {_span(lon)}"
    expected = f"lat {elat[0]:g}..{elat[-1]:g}, lon {elon[0]:g}..{elon[-1]:g} (cell centres, d = {180 / elat.size:g} deg)"
    if (lat.size, lon.size) != (elat.size, elon.size):
        raise GridError(
            f"grid shape mismatch: the model expects (lat, lon) = {(elat.size, elon.size)}, found "
            f"{(lat.size, lon.size)} ({found}){hint}"
        )
    for name, got, exp in (("lat", lat, elat), ("lon", lon, elon)):
        err = np.abs(got - exp)
        if err.max(initial=0) > _TOL:
            span = got.max() - got.min()
            espan = exp.max() - exp.min()
            kind = "non-global" if span < espan - 0.5 * (exp[1] - exp[0]) else "offset"
            raise GridError(
                f"{kind} grid: {name} coordinates differ from the model grid by up to {err.max():.4g} deg "
                f"(tolerance {_TOL:g}); expected {expected}, found {found}{hint}"
            )


# --------------------------------------------------------------------------------------------
# regridding: separable weight matrices (one per axis)


def _linear_weights(src: np.ndarray, dst: np.ndarray, period: float | None) -> np.ndarray:
    """Weights ``[dst, src]`` of 1-D linear interpolation; periodic if ``period`` is given.

    Without period, destinations outside the source range take the nearest edge value.
    """
    n = src.size
    w = np.zeros((dst.size, n))
    if n == 1:
        w[:, 0] = 1.0
        return w
    if period is not None:
        x = np.concatenate([src[-1:] - period, src, src[:1] + period])
        idx = np.concatenate([[n - 1], np.arange(n), [0]])
        d = np.mod(dst - x[0], period) + x[0]
    else:
        x, idx, d = src, np.arange(n), np.clip(dst, src[0], src[-1])
    j = np.clip(np.searchsorted(x, d, side="right") - 1, 0, x.size - 2)
    frac = (d - x[j]) / (x[j + 1] - x[j])
    rows = np.arange(dst.size)
    np.add.at(w, (rows, idx[j]), 1.0 - frac)
    np.add.at(w, (rows, idx[j + 1]), frac)
    return w


def _edges(centres: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    mid = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - (mid[0] - centres[0]) if centres.size > 1 else centres[0] - 0.5
    last = centres[-1] + (centres[-1] - mid[-1]) if centres.size > 1 else centres[-1] + 0.5
    e = np.concatenate([[first], mid, [last]])
    if lo is not None:
        e = np.clip(e, lo, hi)
    return e


def _conservative_weights(src: np.ndarray, dst: np.ndarray, periodic: bool) -> np.ndarray:
    """First-order conservative weights ``[dst, src]`` (latitude: sin-weighted, longitude: periodic)."""
    if periodic:
        se, de = _edges(src, None, None), _edges(dst, None, None)
        lo, hi = de[:-1, None], de[1:, None]
        overlap = np.zeros((dst.size, src.size))
        for shift in (-360.0, 0.0, 360.0):
            a = np.maximum(lo, se[None, :-1] + shift)
            b = np.minimum(hi, se[None, 1:] + shift)
            overlap += np.clip(b - a, 0, None)
        width = hi - lo
    else:
        se = np.sin(np.deg2rad(_edges(src, -90.0, 90.0)))
        de = np.sin(np.deg2rad(_edges(dst, -90.0, 90.0)))
        lo, hi = de[:-1, None], de[1:, None]
        overlap = np.clip(np.minimum(hi, se[None, 1:]) - np.maximum(lo, se[None, :-1]), 0, None)
        width = hi - lo
    return overlap / width


def regrid(ds: T, lat: np.ndarray, lon: np.ndarray, method: str = "bilinear") -> T:
    """Regrid a regular latitude-longitude field to new latitudes and longitudes.

    ``bilinear`` interpolates linearly in latitude and (periodically) in longitude; target
    latitudes outside the source range (towards the poles) take the nearest edge value.
    ``conservative`` is first-order area-weighted remapping from cell edges (mid-points between
    centres, clipped to the poles) with spherical cell areas ``dlon * dsin(lat)``; it preserves
    the area-weighted global mean. Both are separable: one matrix product per axis, lazy on dask.
    Missing values are skipped and the remaining weights renormalised.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        Data with latitude/longitude coordinates (any convention accepted by :func:`normalize_grid`).
    lat, lon : array-like
        Target latitudes and longitudes (1-D, degrees). Longitudes are wrapped to ``[0, 360)``.
    method : {"bilinear", "conservative"}

    Returns
    -------
    same type as ``ds``
        On the canonical layout with coordinates ``lat`` and ``lon`` (ascending, ``[0, 360)``).
        Non-float variables and variables without both horizontal dimensions are passed through
        unchanged when they do not depend on the grid, otherwise dropped.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["2m_temperature"], grid=(32, 64))
    >>> out = regrid(ds, *model_grid((16, 32)), method="conservative")
    >>> out["2m_temperature"].shape
    (2, 16, 32)
    """
    if method not in ("bilinear", "conservative"):
        raise ValueError(f"method must be 'bilinear' or 'conservative'; got {method!r}")
    src, _ = normalize_grid(ds)
    lat = np.asarray(lat, dtype=float)
    lon = _wrap360(np.asarray(lon, dtype=float))
    if np.any(np.abs(lat) > 90):
        raise GridError(f"target latitudes must be within [-90, 90]; found {lat.min():g}..{lat.max():g}")
    lat_order, lon_order = np.argsort(lat), np.argsort(lon)
    lat, lon = lat[lat_order], lon[lon_order]
    slat, slon = np.asarray(src["lat"].values, float), np.asarray(src["lon"].values, float)
    if method == "bilinear":
        wlat = _linear_weights(slat, lat, None)
        wlon = _linear_weights(slon, lon, 360.0)
    else:
        wlat = _conservative_weights(slat, lat, periodic=False)
        wlon = _conservative_weights(slon, lon, periodic=True)
    w_lat = xr.DataArray(wlat, dims=("lat_new", "lat"))
    w_lon = xr.DataArray(wlon, dims=("lon_new", "lon"))

    def one(da: xr.DataArray) -> xr.DataArray:
        dims = da.dims
        dtype = da.dtype
        valid = da.notnull()
        filled = da.fillna(0) if np.issubdtype(dtype, np.floating) else da
        mask_needed = np.issubdtype(dtype, np.floating)
        num = xr.dot(xr.dot(filled, w_lat, dim="lat"), w_lon, dim="lon")
        if mask_needed:
            den = xr.dot(xr.dot(valid.astype(float), w_lat, dim="lat"), w_lon, dim="lon")
            num = num / den.where(den > 1e-12)
        num = num.rename(lat_new="lat", lon_new="lon").transpose(*dims)
        out_dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
        return num.astype(out_dtype).assign_attrs(da.attrs)

    coords = {"lat": ("lat", lat, src["lat"].attrs), "lon": ("lon", lon, src["lon"].attrs)}
    if isinstance(src, xr.DataArray):
        out = one(src.drop_vars([c for c in src.coords if c not in src.dims and {"lat", "lon"} & set(src[c].dims)]))
        return out.assign_coords(coords)
    data_vars = {}
    for name, da in src.data_vars.items():
        if "lat" in da.dims and "lon" in da.dims:
            da = da.drop_vars([c for c in da.coords if c not in da.dims and {"lat", "lon"} & set(da[c].dims)])
            data_vars[name] = one(da)
        elif "lat" not in da.dims and "lon" not in da.dims:
            data_vars[name] = da
    keep = {k: v for k, v in src.coords.items() if not ({"lat", "lon"} & set(v.dims))}
    return xr.Dataset(data_vars, coords=keep, attrs=src.attrs).assign_coords(coords)
