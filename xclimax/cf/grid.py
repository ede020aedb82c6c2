"""Horizontal grids: find, normalise, check and regrid regular latitude-longitude grids.

The canonical grid layout inside xclimax has dimensions named ``lat`` and ``lon``, latitudes
ascending (south to north) and longitudes ascending in ``[0, 360)`` (a limited area that crosses
the 0 meridian stays contiguous, with negative longitudes west of it). :func:`normalize_grid`
brings a Dataset into that layout and returns a :class:`GridInfo` with which
:func:`restore_grid` puts results back into the input's conventions.

Grids may be global or limited-area, of any size. A model knows its own grid
(``model.metadata["grid"]``, see :func:`model_grid`); :func:`check_grid` compares data with it.
:func:`regrid` (bilinear or conservative, honouring CF cell bounds) never extrapolates: target
cells outside the source domain are NaN, and :func:`check_coverage` says so as an error.

Everything here is lazy on dask-backed data: reordering uses indexing and rolling, and
regridding is two matrix products (one per axis) with precomputed weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

import numpy as np
import xarray as xr

from ..exceptions import DataError, GridError

__all__ = [
    "GridInfo", "Domain", "normalize_grid", "restore_grid", "grid_coords", "model_grid", "grid_metadata",
    "check_grid", "grid_axes", "grid_domain", "check_coverage", "regrid",
]

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
    curvilinear = [n for n in found if n in obj.coords and obj[n].ndim > 1]
    found += [n for n in names if n in obj.coords or n in obj.dims]
    if curvilinear and not any(n in obj.coords and obj[n].ndim == 1 for n in found):
        # a curvilinear grid: lat(y, x) / lon(y, x); the dimension names y/x are not latitudes
        raise GridError(
            f"expected a regular latitude-longitude grid with 1-D {key} coordinates; found a 2-D {key} "
            f"coordinate {curvilinear[0]!r} with dims {obj[curvilinear[0]].dims} (a curvilinear grid): "
            "regrid the data to a regular grid first (e.g. with xESMF)"
        )
    for name in found:
        if name in obj.dims and name in obj.coords:
            return name
    for name in found:
        if name in obj.coords and obj[name].ndim == 1:
            return name
    bare = [n for n in found if n in obj.dims]
    if bare:  # a bare dimension: its positions 0, 1, ... are not degrees
        raise GridError(
            f"found the {key} dimension {bare[0]!r} but no {key} coordinate values on it: expected a 1-D "
            f"coordinate in degrees; found dims {list(obj.dims)} and coords {list(obj.coords)}. "
            f"Assign it with ds.assign_coords({bare[0]}=...)"
        )
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
    # longitude ascending and contiguous: [0, 360), or across 0 E for a limited area crossing it
    wrapped = _wrap360(info.lon)
    if np.unique(np.round(wrapped, 6)).size != wrapped.size:
        raise GridError(
            f"longitudes repeat after wrapping to [0, 360): expected {wrapped.size} distinct longitudes, found "
            f"{np.unique(np.round(wrapped, 6)).size} (e.g. both 0 and 360 present); drop the duplicate column"
        )
    canon, order = _lon_frame(info.lon)
    if not np.array_equal(order, np.arange(order.size)):
        shift = int(order[0])
        if np.array_equal(order, np.roll(np.arange(order.size), -shift)):
            out = out.roll(lon=-shift, roll_coords=True)
        else:
            out = out.isel(lon=order)
    if not np.array_equal(canon, np.asarray(out["lon"].values)):
        out = out.assign_coords(lon=out["lon"].copy(data=canon))
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


def model_grid(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes of a model's grid (canonical layout: both ascending).

    A model records its grid in ``model.metadata["grid"]`` (``{"lat": [...], "lon": [...]}``,
    written by fine-tuning and saved in checkpoints; any size, global or limited-area). Without
    it, and for a bare ``img_size=(H, W)``, this is the global ClimaX grid of that size:
    latitudes are cell centres ``-90 + d/2 + d*i`` (``d = 180/H``), longitudes ``360/W * j``.

    Parameters
    ----------
    model : xclimax.ClimaX or (int, int)
        A model (anything with ``img_size`` and ``metadata``), or an image size ``(H, W)``.

    Raises
    ------
    GridError
        If the recorded grid does not have ``img_size`` points.

    Examples
    --------
    >>> lat, lon = model_grid((32, 64))
    >>> lat.size, lon.size, float(lat[0]), float(lon[-1])
    (32, 64, -87.1875, 354.375)
    >>> import xclimax
    >>> m = xclimax.ClimaX(["2m_temperature"], img_size=(4, 6), embed_dim=8, depth=0, num_heads=2)
    >>> m.metadata["grid"] = grid_metadata([40.0, 42.5, 45.0, 47.5], [0, 2.5, 5, 7.5, 10, 12.5])
    >>> model_grid(m)[0].tolist()
    [40.0, 42.5, 45.0, 47.5]
    """
    if hasattr(model, "img_size"):
        h, w = (int(v) for v in model.img_size)
        meta = getattr(model, "metadata", None)
        grid = meta.get("grid") if isinstance(meta, dict) else None
        if isinstance(grid, Mapping) and ("lat" in grid or "lon" in grid):
            try:
                lat, lon = (np.asarray(grid[k], dtype=float).ravel() for k in ("lat", "lon"))
            except (KeyError, TypeError, ValueError) as err:
                raise GridError(f"model.metadata['grid'] must be {{'lat': [...], 'lon': [...]}}; got {grid!r:.200}") from err
            if (lat.size, lon.size) != (h, w):
                raise GridError(
                    f"model.metadata['grid'] has {lat.size} x {lon.size} points but the model's img_size is {(h, w)}"
                )
            return lat, lon
        return grid_coords(h, w)
    h, w = (int(v) for v in model)
    return grid_coords(h, w)


def grid_metadata(lat: Any, lon: Any) -> dict[str, list[float]]:
    """The ``{"lat": [...], "lon": [...]}`` record of a grid for ``model.metadata["grid"]`` (JSON-ready).

    Examples
    --------
    >>> grid_metadata(*grid_coords(2, 4))
    {'lat': [-45.0, 45.0], 'lon': [0.0, 90.0, 180.0, 270.0]}
    """
    return {"lat": [float(v) for v in np.asarray(lat, float).ravel()],
            "lon": [float(v) for v in np.asarray(lon, float).ravel()]}


def _span(x: np.ndarray) -> str:
    return f"{x.min():g}..{x.max():g}" if x.size else "(empty)"


def _is_global_climax(lat: np.ndarray, lon: np.ndarray) -> bool:
    glat, glon = grid_coords(lat.size, lon.size)
    return bool(np.allclose(lat, glat, atol=_TOL, rtol=0) and np.allclose(_wrap360(lon), glon, atol=_TOL, rtol=0))


def _describe(lat: np.ndarray, lon: np.ndarray) -> str:
    dlat = float(np.median(np.diff(lat))) if lat.size > 1 else float("nan")
    dlon = float(np.median(np.diff(lon))) if lon.size > 1 else float("nan")
    return f"{lat.size} x {lon.size} points, lat {_span(lat)}, lon {_span(lon)} (spacing {dlat:.4g} x {dlon:.4g} deg)"


def check_grid(ds: xr.Dataset | xr.DataArray, model: Any) -> None:
    """Raise :class:`GridError` unless ``ds`` is on the model's grid.

    The model's grid is :func:`model_grid` (its recorded grid, global or limited-area, or the
    global ClimaX grid of its ``img_size``). The coordinates are compared after normalisation
    (descending latitudes or longitudes in ``[-180, 180)`` are accepted) with a tolerance of
    1e-3 degrees.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
    model : xclimax.ClimaX, (int, int), xarray.Dataset or xarray.DataArray
        The model, ``(H, W)`` for the global ClimaX grid of that size, or data on the expected grid.

    Raises
    ------
    GridError
        Saying the expected and found shape and coordinates (shape mismatch, shifted grid,
        non-global or another limited area).

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
    if isinstance(model, (xr.Dataset, xr.DataArray)):  # another object's grid
        ref, _ = normalize_grid(model)
        elat, elon = np.asarray(ref["lat"].values, float), np.asarray(ref["lon"].values, float)
    else:
        elat, elon = model_grid(model)
    hint = ("; regrid with xclimax.grid.regrid(ds, *xclimax.grid.model_grid(model)) or pass regrid='bilinear' "
            "(inputs must cover the model's domain: nothing is extrapolated)")
    found = _describe(lat, lon)
    expected = _describe(elat, elon)
    if (lat.size, lon.size) != (elat.size, elon.size):
        raise GridError(
            f"grid shape mismatch: the model expects (lat, lon) = {(elat.size, elon.size)}, found "
            f"{(lat.size, lon.size)} (model grid: {expected}; input grid: {found}){hint}"
        )
    for name, got, exp in (("lat", lat, elat), ("lon", lon, elon)):
        err = np.abs(got - exp) if name == "lat" else np.abs((got - exp + 180.0) % 360.0 - 180.0)
        if err.max(initial=0) > _TOL:
            span = got.max() - got.min()
            espan = exp.max() - exp.min()
            step = abs(exp[1] - exp[0]) if exp.size > 1 else 0.0
            kind = "non-global" if span < espan - 0.5 * step else "offset"
            if kind == "non-global" and not _is_global_climax(elat, elon):
                kind = "other-area"
            raise GridError(
                f"{kind} grid: {name} coordinates differ from the model grid by up to {err.max():.4g} deg "
                f"(tolerance {_TOL:g}); model grid: {expected}; input grid: {found}{hint}"
            )


# --------------------------------------------------------------------------------------------
# cell edges and domains


def _bounds_of(obj: xr.Dataset | xr.DataArray, name: str) -> np.ndarray | None:
    """The CF cell bounds ``[n, 2]`` of coordinate ``name`` (attribute ``bounds``), or None."""
    ref = obj[name].attrs.get("bounds")
    if not ref or ref not in obj.variables:
        return None
    b = obj[ref]
    if b.ndim != 2 or name not in b.dims:
        return None
    other = [d for d in b.dims if d != name][0]
    values = np.asarray(b.transpose(name, other).values, dtype=float)
    return values if values.shape[1] == 2 else None


def _edges_from(centres: np.ndarray, bounds: np.ndarray | None, axis: str, points: bool = False) -> np.ndarray:
    """Cell edges ``[n + 1]`` of ascending centres: from CF bounds when contiguous, else mid-points.

    The outer edges of mid-point cells lie half a spacing beyond the outer centres; latitudes are
    clipped to the poles. Longitude bounds are taken in the frame of their centres.
    """
    c = np.asarray(centres, dtype=float)
    if bounds is not None:
        b = np.sort(np.asarray(bounds, dtype=float), axis=1)
        if axis == "lon":  # the bounds of each cell next to its centre
            b = c[:, None] + (b - c[:, None] + 180.0) % 360.0 - 180.0
            b = np.sort(b, axis=1)
        if b.shape == (c.size, 2) and np.all(b[:, 0] <= c + _TOL) and np.all(b[:, 1] >= c - _TOL):
            if c.size == 1 or np.allclose(b[1:, 0], b[:-1, 1], atol=_TOL, rtol=0):
                edges = np.concatenate([b[:, 0], b[-1:, 1]])
                return np.clip(edges, -90.0, 90.0) if axis == "lat" else edges
        logger.info("ignoring %s bounds that are not contiguous cells around the centres", axis)
    if c.size < 2:
        if points:  # a single target point: a cell of no size (fine for point interpolation)
            return np.concatenate([c, c])
        raise GridError(f"cannot tell the cell size of a grid with a single {axis} ({c.tolist()}) "
                        "without CF bounds; add bounds or more points")
    mid = 0.5 * (c[1:] + c[:-1])
    edges = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    return np.clip(edges, -90.0, 90.0) if axis == "lat" else edges


@dataclass(frozen=True)
class Domain:
    """The area covered by the cells of a regular latitude-longitude grid.

    Attributes
    ----------
    south, north : float
        Outer latitude edges of the cells.
    west, east : float
        Outer longitude edges (``east > west``; ``east - west >= 360`` for a global grid).
    """

    south: float
    north: float
    west: float
    east: float

    @property
    def global_lon(self) -> bool:
        """Whether the cells go all the way round in longitude."""
        return self.east - self.west >= 360.0 - _TOL

    @property
    def is_global(self) -> bool:
        """Whether the cells cover the whole sphere."""
        return self.global_lon and self.south <= -90.0 + _TOL and self.north >= 90.0 - _TOL

    def __str__(self) -> str:
        lon = "all longitudes" if self.global_lon else f"lon {self.west:g}..{self.east:g}"
        kind = "global" if self.is_global else "limited area"
        return f"lat {self.south:g}..{self.north:g}, {lon} ({kind}, cell edges)"


@dataclass(frozen=True)
class _Axes:
    """Centres and edges of a grid in the canonical layout (ascending; longitudes contiguous)."""

    lat: np.ndarray
    lon: np.ndarray
    lat_edges: np.ndarray
    lon_edges: np.ndarray

    @property
    def domain(self) -> Domain:
        return Domain(float(self.lat_edges[0]), float(self.lat_edges[-1]), float(self.lon_edges[0]),
                      float(self.lon_edges[-1]))


def _axes(lat: Any, lon: Any, lat_bounds: Any = None, lon_bounds: Any = None, points: bool = False) -> _Axes:
    lat = np.asarray(lat, dtype=float).ravel()
    lon = np.asarray(lon, dtype=float).ravel()
    if lat.size > 1 and not np.all(np.diff(lat) > 0):
        raise GridError(f"latitudes must be strictly ascending here; found {lat[:5].tolist()}...")
    if lon.size > 1 and not np.all(np.diff(lon) > 0):
        raise GridError(f"longitudes must be strictly ascending here; found {lon[:5].tolist()}...")
    lat_b = None if lat_bounds is None else np.asarray(lat_bounds, dtype=float).reshape(lat.size, 2)
    lon_b = None if lon_bounds is None else np.asarray(lon_bounds, dtype=float).reshape(lon.size, 2)
    lat_e = _edges_from(lat, lat_b, "lat", points)
    lon_e = _edges_from(lon, lon_b, "lon", points)
    if lon_e[-1] - lon_e[0] > 360.0 + _TOL:  # overlapping cells at the seam (e.g. from wide bounds)
        lon_e = np.clip(lon_e, lon_e[0], lon_e[0] + 360.0)
    return _Axes(lat, lon, lat_e, lon_e)


def grid_axes(
    obj: xr.Dataset | xr.DataArray, *, points: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres and cell edges of an object's grid: ``(lat, lon, lat_edges, lon_edges)``, canonical layout.

    Edges come from CF cell bounds (the coordinate's ``bounds`` attribute) when present and
    contiguous, else from mid-points between centres (latitudes clipped to the poles). With
    ``points=True`` a single latitude or longitude without bounds is a cell of no size (a point
    target for bilinear interpolation) instead of an error.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> lat, lon, lat_e, lon_e = grid_axes(synthetic_dataset(1, variables=["2m_temperature"], grid=(4, 8)))
    >>> lat_e.tolist(), lon_e[[0, -1]].tolist()
    ([-90.0, -45.0, 0.0, 45.0, 90.0], [-22.5, 337.5])
    """
    norm, _ = normalize_grid(obj)
    ax = _axes(norm["lat"].values, norm["lon"].values, _bounds_of(norm, "lat"), _bounds_of(norm, "lon"), points)
    return ax.lat, ax.lon, ax.lat_edges, ax.lon_edges


def grid_domain(obj: xr.Dataset | xr.DataArray) -> Domain:
    """The :class:`Domain` (cell-edge extent) of an object's grid.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(1, variables=["2m_temperature"], grid=(32, 64))
    >>> str(grid_domain(ds))
    'lat -90..90, all longitudes (global, cell edges)'
    >>> str(grid_domain(ds.sel(lat=slice(15, 65), lon=slice(220, 300))))
    'lat 16.875..67.5, lon 222.188..300.938 (limited area, cell edges)'
    """
    _, _, lat_e, lon_e = grid_axes(obj)
    return Domain(float(lat_e[0]), float(lat_e[-1]), float(lon_e[0]), float(lon_e[-1]))


# --------------------------------------------------------------------------------------------
# regridding: separable weight matrices (one per axis), never extrapolating


def _lon_frame(lon: Any) -> tuple[np.ndarray, np.ndarray]:
    """Canonical longitudes and the order that gives them: ascending and contiguous.

    Global (or evenly spread) longitudes are wrapped to ``[0, 360)``. A regular limited area
    that crosses the 0 meridian keeps its columns contiguous: its western part gets negative
    longitudes (e.g. ``-10 .. 10`` rather than ``0 .. 10, 350 .. 360``).
    """
    wrapped = _wrap360(np.asarray(lon, dtype=float).ravel())
    order = np.argsort(wrapped, kind="stable")
    s = wrapped[order]
    if s.size < 3:
        return s, order
    gaps = np.diff(np.concatenate([s, s[:1] + 360.0]))
    k = int(np.argmax(gaps))
    start = (k + 1) % s.size
    rest = np.delete(gaps, k)
    if start == 0 or gaps[k] <= 1.5 * float(np.median(gaps)) or not np.allclose(rest, rest[0], rtol=0.01, atol=_TOL):
        return s, order  # global, not crossing 0 E, or scattered points rather than a regular limited area
    order = np.roll(order, -start)
    vals = wrapped[order]
    return np.where(vals >= s[start], vals - 360.0, vals), order


def _unwrap(x: np.ndarray, west: float) -> np.ndarray:
    """Longitudes in ``[west, west + 360)``."""
    return np.mod(np.asarray(x, dtype=float) - west, 360.0) + west


def _linear_weights(ax: _Axes, dst: np.ndarray, which: str) -> np.ndarray:
    """Weights ``[dst, src]`` of 1-D linear interpolation between source centres.

    Destinations between the outer centre and the outer edge of the source domain take the
    outer cell's value; destinations outside the domain get no weight (NaN after normalising).
    Longitudes wrap round when the source is global in longitude.
    """
    src = ax.lat if which == "lat" else ax.lon
    edges = ax.lat_edges if which == "lat" else ax.lon_edges
    n = src.size
    w = np.zeros((dst.size, n))
    rows = np.arange(dst.size)
    if which == "lon" and edges[-1] - edges[0] >= 360.0 - _TOL:  # periodic
        x = np.concatenate([src[-1:] - 360.0, src, src[:1] + 360.0])
        idx = np.concatenate([[n - 1], np.arange(n), [0]])
        d = _unwrap(dst, x[0])
        inside = np.ones(dst.size, bool)
    else:
        x, idx = src, np.arange(n)
        d = _unwrap(dst, edges[0]) if which == "lon" else np.asarray(dst, float)
        inside = (d >= edges[0] - _TOL) & (d <= edges[-1] + _TOL)
        d = np.clip(d, x[0], x[-1])
    if x.size == 1:
        w[inside, idx[0]] = 1.0
        return w
    j = np.clip(np.searchsorted(x, d, side="right") - 1, 0, x.size - 2)
    frac = (d - x[j]) / (x[j + 1] - x[j])
    np.add.at(w, (rows[inside], idx[j][inside]), 1.0 - frac[inside])
    np.add.at(w, (rows[inside], idx[j + 1][inside]), frac[inside])
    return w


def _conservative_weights(src: _Axes, dst: _Axes, which: str) -> np.ndarray:
    """First-order conservative weights ``[dst, src]``: the fraction of each target cell in each source cell.

    Latitude overlaps are measured in ``sin(lat)`` (area on the sphere), longitude overlaps in
    degrees. Target cells not entirely inside the source domain get no weight.
    """
    if np.any(np.diff(dst.lat_edges if which == "lat" else dst.lon_edges) <= 0):
        raise GridError(f"conservative regridding needs target cells: give {which}_bounds for a target with a "
                        f"single {which}, or use method='bilinear'")
    if which == "lat":
        se, de = np.sin(np.deg2rad(src.lat_edges)), np.sin(np.deg2rad(dst.lat_edges))
        lo, hi = de[:-1, None], de[1:, None]
        overlap = np.clip(np.minimum(hi, se[None, 1:]) - np.maximum(lo, se[None, :-1]), 0, None)
        covered = np.abs(dst.lat_edges[:-1] - np.clip(dst.lat_edges[:-1], src.lat_edges[0], src.lat_edges[-1])) <= _TOL
        covered &= np.abs(dst.lat_edges[1:] - np.clip(dst.lat_edges[1:], src.lat_edges[0], src.lat_edges[-1])) <= _TOL
    else:
        se = src.lon_edges
        lo0 = _unwrap(dst.lon_edges[:-1], se[0])
        width = np.diff(dst.lon_edges)
        lo, hi = lo0[:, None], (lo0 + width)[:, None]
        overlap = np.zeros((width.size, se.size - 1))
        for shift in (-360.0, 0.0, 360.0):
            overlap += np.clip(np.minimum(hi, se[None, 1:] + shift) - np.maximum(lo, se[None, :-1] + shift), 0, None)
        if se[-1] - se[0] >= 360.0 - _TOL:
            covered = np.ones(width.size, bool)
        else:
            covered = overlap.sum(1) >= width - _TOL
    total = hi - lo
    w = overlap / np.where(total > 0, total, 1.0)
    w[~np.asarray(covered).ravel()] = 0.0
    return w


def _apply_weights(x: np.ndarray, wlat: np.ndarray, wlon: np.ndarray) -> np.ndarray:
    """``wlat @ x @ wlon.T`` over the last two axes, skipping missing values (weights renormalised).

    Target points whose weights are all on missing values (or that have no weight: outside the
    source domain) are NaN. Blocks without missing values skip the normalising product.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(wlat.dtype)
    missing = np.isnan(x)
    if missing.any():
        num = wlat @ np.where(missing, 0, x).astype(wlat.dtype, copy=False) @ wlon.T
        den = wlat @ (~missing).astype(wlat.dtype) @ wlon.T
    else:
        num = wlat @ x.astype(wlat.dtype, copy=False) @ wlon.T
        den = np.broadcast_to(np.outer(wlat.sum(1), wlon.sum(1)), num.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, num / np.where(den > 1e-6, den, 1), np.nan).astype(wlat.dtype, copy=False)


def _target_axes(lat: Any, lon: Any, lat_bounds: Any, lon_bounds: Any) -> tuple[_Axes, np.ndarray, np.ndarray]:
    """Target grid in the canonical layout, with the orders applied to the given coordinates."""
    lat = np.asarray(lat, dtype=float).ravel()
    if lat.size == 0 or np.asarray(lon).size == 0:
        raise GridError("the target grid is empty: expected at least one latitude and one longitude")
    if np.any(np.abs(lat) > 90):
        raise GridError(f"target latitudes must be within [-90, 90]; found {lat.min():g}..{lat.max():g}")
    lat_order = np.argsort(lat, kind="stable")
    lon_c, lon_order = _lon_frame(lon)
    lat_b = None if lat_bounds is None else np.asarray(lat_bounds, float).reshape(lat.size, 2)[lat_order]
    lon_b = None if lon_bounds is None else np.asarray(lon_bounds, float).reshape(lon_c.size, 2)[lon_order]
    return _axes(lat[lat_order], lon_c, lat_b, lon_b, points=True), lat_order, lon_order


def _uncovered(src: _Axes, dst: _Axes, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Target latitudes and longitudes that the source cannot fill without extrapolating."""
    if method == "bilinear":
        wlat, wlon = _linear_weights(src, dst.lat, "lat"), _linear_weights(src, dst.lon, "lon")
    else:
        wlat, wlon = _conservative_weights(src, dst, "lat"), _conservative_weights(src, dst, "lon")
    return dst.lat[wlat.sum(1) <= 0.5], dst.lon[wlon.sum(1) <= 0.5]


def check_coverage(
    ds: xr.Dataset | xr.DataArray,
    lat: Any,
    lon: Any,
    *,
    method: str = "bilinear",
    lat_bounds: Any = None,
    lon_bounds: Any = None,
    what: tuple[str, str] = ("input", "target grid"),
) -> None:
    """Raise :class:`GridError` if regridding ``ds`` to ``lat``/``lon`` would need extrapolation.

    :func:`regrid` never extrapolates (target cells outside the source domain become NaN); use
    this before regridding when every target cell must get a value, e.g. model inputs.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        The source.
    lat, lon, method, lat_bounds, lon_bounds
        As in :func:`regrid`.
    what : (str, str)
        Names of the source and the target in the message.

    Raises
    ------
    GridError
        Naming both domains and the target latitudes/longitudes left uncovered.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(1, variables=["2m_temperature"], grid=(32, 64))
    >>> north_america = ds.sel(lat=slice(15, 65), lon=slice(220, 300))
    >>> check_coverage(north_america, *model_grid((32, 64)), what=("input", "model grid"))
    Traceback (most recent call last):
    ...
    xclimax.exceptions.GridError: the model grid (lat -90..90, all longitudes (global, cell edges)) is not covered by ...
    """
    if method not in ("bilinear", "conservative"):
        raise DataError(f"method must be 'bilinear' or 'conservative'; got {method!r}")
    norm, _ = normalize_grid(ds)
    src = _axes(norm["lat"].values, norm["lon"].values, _bounds_of(norm, "lat"), _bounds_of(norm, "lon"))
    dst, _, _ = _target_axes(lat, lon, lat_bounds, lon_bounds)
    bad_lat, bad_lon = _uncovered(src, dst, method)
    if bad_lat.size or bad_lon.size:
        parts = []
        if bad_lat.size:
            parts.append(f"{bad_lat.size} of its {dst.lat.size} latitudes")
        if bad_lon.size:
            parts.append(f"{bad_lon.size} of its {dst.lon.size} longitudes")
        raise GridError(
            f"the {what[1]} ({dst.domain}) is not covered by the {what[0]} ({src.domain}): {' and '.join(parts)} "
            f"lie outside it and would need extrapolation, which xclimax never does; give {what[0]} data that "
            f"cover the {what[1]} (e.g. a larger area), or use a model/target on the {what[0]}'s area"
        )


def regrid(
    ds: T,
    lat: Any,
    lon: Any,
    method: str = "bilinear",
    *,
    lat_bounds: Any = None,
    lon_bounds: Any = None,
) -> T:
    """Regrid regular latitude-longitude fields to new latitudes and longitudes, never extrapolating.

    ``bilinear`` interpolates linearly between source cell centres in latitude and longitude
    (exact for fields linear in latitude and longitude); targets between the outermost centres
    and the outer edge of the source cells take the outermost cells' values. ``conservative`` is
    first-order area-weighted remapping: each target cell is the area-weighted mean of the source
    cells it overlaps (areas ``dlon * dsin(lat)`` on the sphere), which preserves area means.

    Cell edges come from CF cell bounds (``lat_bnds``/``lon_bnds`` named by the coordinates'
    ``bounds`` attribute, or ``lat_bounds``/``lon_bounds`` for the target) when present, else from
    mid-points between centres (clipped to the poles). Longitudes wrap round only when the source
    cells go all the way round. Target points (bilinear) or cells (conservative) outside the
    source domain are NaN: nothing is extrapolated (see :func:`check_coverage`). Missing source
    values are skipped and the remaining weights renormalised. Both methods are separable (one
    matrix product per axis) and lazy on dask-backed data.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        Data with latitude/longitude coordinates (any convention accepted by :func:`normalize_grid`).
    lat, lon : array-like
        Target latitudes and longitudes (1-D, degrees, any order and longitude convention).
    method : {"bilinear", "conservative"}
    lat_bounds, lon_bounds : array-like ``[n, 2]``, optional
        Cell bounds of the target grid (conservative); default: mid-points between centres.

    Returns
    -------
    same type as ``ds``
        In the canonical layout with coordinates ``lat`` and ``lon`` (ascending; longitudes in
        ``[0, 360)``, or contiguous across 0 for a limited area). Variables without both
        horizontal dimensions are passed through when they do not depend on the grid, otherwise
        dropped (e.g. the old cell bounds).

    Raises
    ------
    DataError
        For an unknown method.
    GridError
        If the coordinates cannot be found or the target latitudes are not within [-90, 90].

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["2m_temperature"], grid=(32, 64))
    >>> out = regrid(ds, *model_grid((16, 32)), method="conservative")
    >>> out["2m_temperature"].shape
    (2, 16, 32)
    >>> box = ds.sel(lat=slice(15, 65), lon=slice(220, 300))
    >>> glob = regrid(box, *model_grid((32, 64)))  # outside North America: NaN, not extrapolated
    >>> int(glob["2m_temperature"].isel(time=0).notnull().sum()), box["2m_temperature"].isel(time=0).size
    (126, 126)
    """
    if method not in ("bilinear", "conservative"):
        raise DataError(f"method must be 'bilinear' or 'conservative'; got {method!r}")
    src, _ = normalize_grid(ds)
    sax = _axes(src["lat"].values, src["lon"].values, _bounds_of(src, "lat"), _bounds_of(src, "lon"))
    dax, _, _ = _target_axes(lat, lon, lat_bounds, lon_bounds)
    if method == "bilinear":
        wlat, wlon = _linear_weights(sax, dax.lat, "lat"), _linear_weights(sax, dax.lon, "lon")
    else:
        wlat, wlon = _conservative_weights(sax, dax, "lat"), _conservative_weights(sax, dax, "lon")
    bad_lat, bad_lon = _uncovered(sax, dax, method) if method == "bilinear" else (
        dax.lat[wlat.sum(1) <= 0.5], dax.lon[wlon.sum(1) <= 0.5])
    if bad_lat.size or bad_lon.size:
        logger.info("regrid: %d latitudes and %d longitudes of the target lie outside the source domain (%s): NaN",
                    bad_lat.size, bad_lon.size, sax.domain)

    def one(da: xr.DataArray) -> xr.DataArray:
        dtype = da.dtype if np.issubdtype(da.dtype, np.floating) else np.dtype(np.float64)
        out = xr.apply_ufunc(
            _apply_weights, da, input_core_dims=[["lat", "lon"]], output_core_dims=[["lat_new", "lon_new"]],
            kwargs={"wlat": wlat.astype(dtype), "wlon": wlon.astype(dtype)}, dask="parallelized",
            output_dtypes=[dtype], keep_attrs=True,
            dask_gufunc_kwargs={"output_sizes": {"lat_new": wlat.shape[0], "lon_new": wlon.shape[0]},
                                "allow_rechunk": True},
        )
        return out.rename(lat_new="lat", lon_new="lon").transpose(*da.dims).assign_attrs(da.attrs)

    lat_attrs = {k: v for k, v in src["lat"].attrs.items() if k != "bounds"}
    lon_attrs = {k: v for k, v in src["lon"].attrs.items() if k != "bounds"}
    coords = {"lat": ("lat", dax.lat, lat_attrs), "lon": ("lon", dax.lon, lon_attrs)}
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
