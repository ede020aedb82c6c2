"""Map CF-annotated variables of a Dataset to ClimaX variables (tokens) and back.

A ClimaX variable such as ``temperature_850`` is found by its CF criteria in
:data:`xclimax.vocab.VARIABLES`: a ``standard_name`` (through cf-xarray), a pressure level on
any vertical coordinate recognised by its attributes (``level`` in hPa, ``plev`` in Pa,
``isobaricInhPa``, ...) or a height above ground (2 m, 10 m, or none), and units that can be
converted to the canonical ones. Whatever the variable names, ``to_array`` returns the
canonical layout ``(*batch, "time", "variable", "lat", "lon")`` in float32, lazily.

Unit conversions are explicit (see ``_CONVERSIONS``): geopotential height (m) to geopotential
(x 9.80665), degC to K, relative humidity fraction to %, surface geopotential to orography
(/ 9.80665), g/kg to kg/kg, hPa to Pa, mm to m and land fraction % to 1.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr

from .. import vocab
from ..exceptions import CFMappingError, DataError, XClimaxWarning
from ..options import OPTIONS
from .grid import normalize_grid
from .time import time_dim
from .units import PRESSURE_NAMES, conversion, is_height, pressure_to_hpa

__all__ = ["VariableSource", "find_variables", "to_array", "stack", "from_array", "mapping"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# specs


def _spec_from_criteria(name: str, crit: Mapping[str, Any]) -> dict[str, Any]:
    """A vocab-like spec from user criteria ``{"standard_name": ..., "units": ..., "level": ...}``."""
    sn = crit.get("standard_name", ())
    sn = (sn,) if isinstance(sn, str) else tuple(sn)
    level = crit.get("level")
    spec = {
        "kind": crit.get("kind", "pressure" if level is not None else "surface"),
        "standard_name": sn,
        "level": level,
        "height": crit.get("height"),
        "units": crit.get("units"),
        "long_name": crit.get("long_name", name.replace("_", " ")),
        "names": tuple(crit.get("names", ())),
    }
    if not sn and not spec["names"]:
        raise CFMappingError(f"extra variable {name!r}: criteria need a 'standard_name' (or 'names'); got {dict(crit)}")
    return spec


def _registry(extra_variables: Any) -> dict[str, Mapping[str, Any]]:
    """ClimaX names -> specs: the 48, the options' extras and ``extra_variables`` (names or dict)."""
    reg: dict[str, Mapping[str, Any]] = dict(vocab.VARIABLES)
    for source in (OPTIONS.get("extra_variables") or {}, extra_variables or {}):
        if isinstance(source, str):
            source = [source]
        if isinstance(source, Mapping):
            for name, crit in source.items():
                reg[name] = _spec_from_criteria(name, crit)
        else:
            for name in source:
                if name in vocab.EXTRA_VARIABLES:
                    reg[name] = vocab.EXTRA_VARIABLES[name]
                elif name not in reg:
                    raise CFMappingError(
                        f"unknown extra variable {name!r}: expected one of {sorted(vocab.EXTRA_VARIABLES)} "
                        f"or a dict {{name: criteria}}"
                    )
    # well-known extras are always known (for from_array / variable_map); criteria only used on request
    for name, spec in vocab.EXTRA_VARIABLES.items():
        reg.setdefault(name, spec)
    return reg


# names used when a variable has no standard_name attribute: ClimaX/WeatherBench names and short codes
_FALLBACK_NAMES: dict[str, tuple[str, ...]] = {
    "geopotential": ("geopotential", "z", "zg"),
    "geopotential_height": ("geopotential_height", "gh"),
    "air_temperature": ("temperature", "t", "ta", "2m_temperature", "t2m", "tas", "2t"),
    "eastward_wind": ("u_component_of_wind", "u", "ua", "10m_u_component_of_wind", "u10", "uas", "10u"),
    "northward_wind": ("v_component_of_wind", "v", "va", "10m_v_component_of_wind", "v10", "vas", "10v"),
    "relative_humidity": ("relative_humidity", "r", "hur", "rh"),
    "specific_humidity": ("specific_humidity", "q", "hus"),
    "land_binary_mask": ("land_sea_mask", "lsm", "sftlf"),
    "surface_altitude": ("orography", "orog"),
    "surface_geopotential": ("geopotential_at_surface",),
    "air_pressure_at_mean_sea_level": ("mean_sea_level_pressure", "msl", "psl"),
    "surface_air_pressure": ("surface_pressure", "sp", "ps"),
    "precipitation_amount": ("total_precipitation", "tp"),
    "toa_incoming_shortwave_flux": ("toa_incident_solar_radiation", "tisr"),
}
#: heights (m) accepted for a near-surface variable of a nominal height: screen-level air temperature is
#: measured between 1.25 m and 2 m (WMO); climate models report it at 1.5 m (Met Office: HadCM3, HadGEM,
#: UKESM) or 2 m. Winds are at 10 m.
_HEIGHTS = {2.0: (1.25, 2.0), 10.0: (10.0, 10.0)}


def _height_fits(height: Any, nominal: float) -> np.ndarray:
    lo, hi = _HEIGHTS.get(float(nominal), (float(nominal), float(nominal)))
    h = np.asarray(height, dtype=float)
    return (h >= lo - 0.01) & (h <= hi + 0.01)


def _heights_text(nominal: float) -> str:
    lo, hi = _HEIGHTS.get(float(nominal), (float(nominal), float(nominal)))
    return f"{nominal:g} m" if lo == hi else f"{nominal:g} m ({lo:g} to {hi:g} m accepted)"


# height implied by a name (when no height coordinate exists)
_NAME_HEIGHT = {"2m_temperature": 2.0, "t2m": 2.0, "2t": 2.0, "tas": 2.0, "10m_u_component_of_wind": 10.0,
                "u10": 10.0, "10u": 10.0, "uas": 10.0, "10m_v_component_of_wind": 10.0, "v10": 10.0, "10v": 10.0,
                "vas": 10.0}


@dataclass(frozen=True)
class VariableSource:
    """Where a ClimaX variable comes from in a Dataset.

    Attributes
    ----------
    name : str
        ClimaX name (``"temperature_850"``).
    source : str or None
        Data variable in the Dataset; None for ``lattitude`` (computed from the latitude coordinate).
    kind : {"pressure", "surface", "constant"}
    selection : dict
        Integer positions selected on the source's vertical dimensions (``{"plev": 3}``).
    level : float or None
        Selected level in the source's units (``85000.0`` for ``plev`` in Pa).
    units : str or None
        Units found on the source (None: missing, assumed canonical).
    target_units : str or None
        Canonical units.
    scale, offset : float
        ``canonical = found * scale + offset``.
    conversion : str
        Human-readable description of the unit conversion ("" if none).
    drop_dims : tuple of str
        Size-1 dimensions (e.g. ``height``) squeezed away.
    height : float or None
        Height above ground (m) of a near-surface source, from its height coordinate (1.5 for a
        Met Office ``tas``); None when the data have no height coordinate.
    """

    name: str
    source: str | None
    kind: str
    selection: Mapping[str, int] = field(default_factory=dict)
    level: float | None = None
    units: str | None = None
    target_units: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    conversion: str = ""
    drop_dims: tuple[str, ...] = ()
    height: float | None = None

    def describe(self) -> str:
        """One line: source, selection and conversion."""
        src = self.source if self.source is not None else "<latitude coordinate>"
        sel = "".join(f"[{d}={self.level:g}]" for d in self.selection) if self.level is not None else ""
        at = f" at {self.height:g} m" if self.height is not None else ""
        conv = f" ({self.conversion})" if self.conversion else ""
        return f"{self.name} <- {src}{sel}{at}{conv}"


def _vertical_dims(da: xr.DataArray, ds: xr.Dataset) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(pressure dims -> values in hPa, height dims/scalars -> values in m) of a variable."""
    pressure: dict[str, np.ndarray] = {}
    height: dict[str, np.ndarray] = {}
    for name in [*da.dims, *(c for c in da.coords if c not in da.dims)]:  # dimensions first
        if name in ("time", "lat", "lon"):
            continue
        coord = da.coords[name] if name in da.coords else (ds.coords[name] if name in ds.coords else None)
        if coord is None or coord.ndim > 1:
            continue
        if is_height(coord):
            height[name] = np.atleast_1d(np.asarray(coord.values, float))
            continue
        p = pressure_to_hpa(coord)
        if p is not None:
            pressure[name] = np.atleast_1d(p)
    return pressure, height


def _candidates(ds: xr.Dataset, name: str, spec: Mapping[str, Any]) -> list[str]:
    """Data variables whose standard_name (or, lacking one, whose name) fits ``spec``."""
    sns = tuple(spec["standard_name"])
    names = set(spec.get("names", ()))
    for sn in sns:
        names.update(_FALLBACK_NAMES.get(sn, ()))
    # cf-xarray's index of standard names (read-only: no global cf_xarray options, so concurrent calls are safe)
    by_name = ds.cf.standard_names
    out = [v for sn in sns for v in by_name.get(sn, ()) if v in ds.data_vars]
    out += [v for v in ds.data_vars if v in names and ds[v].attrs.get("standard_name") in (None, "", "unknown")]
    out = list(dict.fromkeys(str(v) for v in out))

    # standard_name preference order, then variables named like the ClimaX name first
    def rank(var: str) -> tuple[int, int]:
        sn = ds[var].attrs.get("standard_name")
        return (sns.index(sn) if sn in sns else len(sns), 0 if var == name else 1)

    return sorted(out, key=rank)


def _match(
    ds: xr.Dataset, name: str, var: str, spec: Mapping[str, Any], *, explicit: bool = False
) -> tuple[dict, float | None, tuple, str, float | None]:
    """Try variable ``var`` for ``spec``: (selection, level, drop_dims, reason-if-rejected, height in m).

    A scalar coordinate of a Dataset is attached to every data variable, so a scalar pressure
    coordinate (left by ``ds.sel(plev=85000)``) cannot tell ``ta`` from ``tas``: a variable named
    as a near-surface field (``tas``, ``t2m``, ...) is then not taken as a pressure-level field,
    and a near-surface field is only taken from such a variable when its name says so or it was
    mapped explicitly (``explicit``, from ``variable_map``). A pressure *dimension*, whatever its
    size, always rules a variable out as a near-surface field (a level is not a height).
    Near-surface heights within :data:`_HEIGHTS` are accepted (1.5 m air temperature); an explicit
    mapping overrides a height mismatch, with an :class:`~xclimax.XClimaxWarning`.
    """
    da = ds[var]
    pressure, height = _vertical_dims(da, ds)
    level, want_h = spec.get("level"), spec.get("height")
    kind = spec["kind"]
    implied = _NAME_HEIGHT.get(var)
    sel: dict[str, int] = {}
    drop: list[str] = []
    if kind == "pressure":
        if not pressure:
            return {}, None, (), f"{var!r} has no pressure-level coordinate", None
        (dim, values), = list(pressure.items())[:1]
        if dim not in da.dims and implied is not None and not explicit:
            return {}, None, (), f"{var!r} is named as a {implied:g} m field (its scalar {dim} is the Dataset's)", None
        hits = np.flatnonzero(np.isclose(values, float(level), atol=0.01, rtol=1e-5))
        if hits.size == 0:
            return {}, None, (), f"{var!r} has {dim} levels {np.round(values, 3).tolist()} hPa, not {level} hPa", None
        coord_values = np.atleast_1d(np.asarray((da.coords[dim] if dim in da.coords else ds[dim]).values, float))
        if dim in da.dims:
            sel[dim] = int(hits[0])
        return sel, float(coord_values[hits[0]]), (), "", None
    if kind == "surface" and want_h is not None:
        # near-surface (2 m / 10 m): a height coordinate or no vertical coordinate at all
        for dim in da.dims:
            if dim in pressure or (dim in PRESSURE_NAMES and dim not in ds.coords):
                return {}, None, (), (
                    f"{var!r} has a pressure-level dimension {dim!r} (size {da.sizes[dim]}), "
                    f"so it is not a {want_h:g} m field"
                ), None
        scalars = [c for c in pressure if c not in da.dims]
        if scalars and implied is None and not explicit:
            return {}, None, (), (
                f"{var!r} has a scalar pressure coordinate {scalars[0]!r} = {float(pressure[scalars[0]][0]):g} hPa, "
                f"so it is not taken as a {want_h:g} m field (map it with variable_map if it is one)"
            ), None
    # surface / constant: no pressure dimension of size > 1
    for dim in pressure:
        if dim in da.dims and da.sizes[dim] > 1:
            return {}, None, (), f"{var!r} is on pressure levels ({dim})", None
        if dim in da.dims:
            drop.append(dim)
    if want_h is not None:
        if height:
            (dim, values), = list(height.items())[:1]
            hits = np.flatnonzero(_height_fits(values, want_h))
            if hits.size == 0 and explicit and values.size == 1:
                warnings.warn(
                    f"{name} <- {var!r}: {var!r} is at height {values[0]:g} m, not {_heights_text(want_h)}; "
                    "used because variable_map maps it", XClimaxWarning, stacklevel=5,
                )
                hits = np.array([0])
            if hits.size == 0:
                return {}, None, (), (
                    f"{var!r} is at height {values.tolist()} m, not {_heights_text(want_h)}"
                    + (f" (map it with variable_map={{{name!r}: {var!r}}} if it is one)" if values.size == 1 else "")
                ), None
            if dim in da.dims:
                if da.sizes[dim] > 1:
                    sel[dim] = int(hits[0])
                else:
                    drop.append(dim)
            return sel, None, tuple(drop), "", float(values[hits[0]])
        implied = _NAME_HEIGHT.get(var)
        if implied is not None and not _height_fits(implied, want_h):
            if not explicit:
                return {}, None, (), f"{var!r} is named as a {implied:g} m field, not {want_h:g} m", None
            warnings.warn(f"{name} <- {var!r}: {var!r} is named as a {implied:g} m field, not {want_h:g} m; "
                          "used because variable_map maps it", XClimaxWarning, stacklevel=5)
    for dim in height:
        if dim in da.dims and da.sizes[dim] == 1:
            drop.append(dim)
    return sel, None, tuple(drop), "", None


def _user_map(variable_map: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(OPTIONS.get("variable_map") or {})
    out.update(variable_map or {})
    return {vocab.canonical_name(k): v for k, v in out.items()}


def resolve_variables(
    ds: xr.Dataset,
    variables: Iterable[str] | None,
    extra_variables: Any,
    variable_map: Mapping[str, str] | None,
) -> tuple[list[str], dict[str, VariableSource], dict[str, str], dict[str, str]]:
    """(requested names, found, missing -> what was searched, unit problems -> message). Computes nothing."""
    reg = _registry(extra_variables)
    umap = _user_map(variable_map)
    if variables is None:
        names = list(vocab.CLIMAX_VARIABLES)
        extras = [extra_variables] if isinstance(extra_variables, str) else list(extra_variables or [])
        extras += list(OPTIONS.get("extra_variables") or {})
        names += [n for n in extras if n not in names]
    else:
        names = [vocab.canonical_name(n) for n in ([variables] if isinstance(variables, str) else variables)]
    names += [n for n in umap if n not in names and variables is None]
    found: dict[str, VariableSource] = {}
    missing: dict[str, str] = {}
    bad: dict[str, str] = {}
    cache: dict[tuple, list[str]] = {}  # candidates per criteria (shared by the levels of a variable)
    no_units: list[str] = []
    for name in names:
        if name not in reg:
            bad[name] = (
                f"{name}: unknown ClimaX variable; expected one of xclimax.CLIMAX_VARIABLES, "
                f"{sorted(vocab.EXTRA_VARIABLES)} (with extra_variables=...) or a name given in extra_variables"
            )
            continue
        spec = reg[name]
        target = spec["units"]
        if name == "lattitude" and name not in umap:
            lat = "lat" if "lat" in ds.coords else None
            if lat is None:
                try:
                    lat = next(iter(ds.cf.coordinates.get("latitude", [])), None)
                except Exception:
                    lat = None
            if lat is None:
                missing[name] = "computed from the latitude coordinate, but none was found"
            else:
                found[name] = VariableSource(name, None, "constant", units="degrees_north", target_units=target,
                                             conversion="computed from the latitude coordinate")
            continue
        if name in umap:
            var = umap[name]
            if var not in ds.data_vars:
                missing[name] = f"variable_map gives {var!r}, which is not a data variable of the Dataset"
                continue
            cands = [var]
        else:
            ckey = (tuple(spec["standard_name"]), tuple(spec.get("names", ())), _split_name(name)[0])
            if ckey not in cache:
                cache[ckey] = _candidates(ds, _split_name(name)[0], spec)
            cands = cache[ckey]
        reasons, matches = [], []
        for var in cands:
            sel, level, drop, why, height = _match(ds, name, var, spec, explicit=name in umap)
            if why:
                reasons.append(why)
            else:
                matches.append((var, sel, level, drop, height))
        if not matches:
            what = [f"standard_name in {list(spec['standard_name'])}"] if name not in umap else [f"variable {umap[name]!r}"]
            if spec.get("level") is not None:
                what.append(f"at {spec['level']} hPa on a pressure coordinate")
            if spec.get("height") is not None:
                what.append(f"at height {_heights_text(spec['height'])} (or no height coordinate)")
            missing[name] = " ".join(what) + (f"; candidates rejected: {'; '.join(reasons)}" if reasons else "; no candidate")
            continue
        if len(matches) > 1 and name not in umap:
            first_sn = ds[matches[0][0]].attrs.get("standard_name")
            tied = [m for m in matches if ds[m[0]].attrs.get("standard_name") == first_sn and m[0] != name]
            if len(tied) > 1 and matches[0][0] != name:
                bad[name] = (
                    f"{name}: ambiguous, several variables fit ({[m[0] for m in tied]}); "
                    f"pick one with variable_map={{{name!r}: ...}}"
                )
                continue
        var, sel, level, drop, height = matches[0]
        units = ds[var].attrs.get("units")
        if units is None:
            conv: tuple[float, float, str] | None = (1.0, 0.0, "")
            no_units.append(f"{name} <- {var!r} (assumed {target!r})")
        elif target is None:
            conv = (1.0, 0.0, "")
        else:
            conv = conversion(target, units)
        if conv is None:
            bad[name] = f"{name}: variable {var!r} has units {units!r}, expected {target!r} (or convertible to it)"
            continue
        scale, offset, text = conv
        found[name] = VariableSource(
            name, var, spec["kind"], dict(sel), level, None if units is None else str(units), target,
            scale, offset, text, drop, height,
        )
    if no_units:
        warnings.warn(
            f"variables without a 'units' attribute are assumed to be in canonical units: {no_units}",
            XClimaxWarning,
            stacklevel=3,
        )
    return names, found, missing, bad


def _mapping_error(names: list[str], missing: Mapping[str, str], bad: Mapping[str, str], ds: xr.Dataset) -> CFMappingError:
    lines = []
    if missing:
        lines.append(f"{len(missing)} of {len(names)} requested ClimaX variables not found in the Dataset:")
        lines += [f"  - {n}: searched {why}" for n, why in missing.items()]
    if bad:
        lines.append(f"{len(bad)} variables unknown, ambiguous or with unusable units:")
        lines += [f"  - {msg}" for msg in bad.values()]
    lines.append(f"Dataset data variables: {list(ds.data_vars)}.")
    lines.append("Map names explicitly with variable_map={'<climax name>': '<variable>'} or add CF attributes.")
    return CFMappingError("\n".join(lines))


def find_variables(
    ds: xr.Dataset,
    variables: Iterable[str] | None = None,
    *,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
    strict: bool = False,
) -> dict[str, VariableSource]:
    """Find where each ClimaX variable comes from in ``ds``, without computing anything.

    Parameters
    ----------
    ds : xarray.Dataset
        CF-annotated data (``standard_name`` and ``units`` attributes; pressure levels on any
        vertical coordinate with pressure units).
    variables : iterable of str, optional
        ClimaX names to look for (default: the 48 official ones plus requested extras).
    extra_variables : str, list of str or dict, optional
        Variables outside the 48: names from :data:`xclimax.vocab.EXTRA_VARIABLES` or a dict
        ``{name: {"standard_name": ..., "units": ..., "level": hPa, "height": m}}``. Added to
        ``xclimax.get_options()["extra_variables"]``.
    variable_map : dict, optional
        ``{climax name: data variable}`` bypassing the CF lookup (units are still converted).
        Added to ``xclimax.get_options()["variable_map"]``.
    strict : bool
        Raise :class:`CFMappingError` listing all missing variables. If False, only the found
        variables are returned.

    Returns
    -------
    dict of str to VariableSource
        In the requested order.

    Raises
    ------
    CFMappingError
        Missing variables (``strict=True``), units that cannot be converted, or several equally
        good candidates.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["geopotential"], style="cmip")
    >>> print(find_variables(ds, ["geopotential_500"])["geopotential_500"].describe())
    geopotential_500 <- zg[plev=50000] (geopotential height (m) -> geopotential (x 9.80665))
    """
    names, found, missing, bad = resolve_variables(ds, variables, extra_variables, variable_map)
    if bad or (strict and missing):
        raise _mapping_error(names, missing if strict else {}, bad, ds)
    return found


def _picks(src: VariableSource, dims: Sequence[str], time: str) -> dict[str, int]:
    """Integer positions that reduce ``src``'s data variable to its field: level, size-1 dims, a constant's time."""
    pick = {d: int(i) for d, i in dict(src.selection).items()}
    pick.update({d: 0 for d in src.drop_dims if d in dims and d not in pick})
    if src.kind == "constant" and time in dims:
        pick[time] = 0
    return pick


def _canonical_values(a: Any, scale: float, offset: float) -> Any:
    """``a * scale + offset`` as float32 (numpy or xarray); float64 sources are converted in float64."""
    if a.dtype != np.float64:  # float16 would overflow in the conversion (zg * 9.8); ints and bools are exact
        a = a.astype(np.float32)
    if scale != 1.0 or offset != 0.0:
        a = a * scale + offset
    return a.astype(np.float32, copy=False)


def _source_array(ds: xr.Dataset, src: VariableSource, time: str) -> xr.DataArray:
    if src.source is None:  # lattitude
        lat = ds["lat"]
        da = xr.DataArray(np.asarray(lat.values, dtype=np.float32), dims=("lat",), coords={"lat": lat})
        return da.broadcast_like(ds["lon"]).transpose("lat", "lon")
    da = ds[src.source]
    da = da.isel(_picks(src, da.dims, time)).reset_coords(drop=True)
    extra = [d for d in da.dims if d not in ("lat", "lon", time) and d in ds.coords and pressure_to_hpa(ds[d]) is not None]
    if extra:
        raise CFMappingError(f"{src.name}: variable {src.source!r} still has vertical dimensions {extra} after selection")
    return _canonical_values(da, src.scale, src.offset)


def to_array(
    ds: xr.Dataset,
    variables: Iterable[str] | None = None,
    *,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
    strict: bool = True,
) -> xr.DataArray:
    """Stack ClimaX variables of ``ds`` into the canonical layout, lazily.

    Parameters
    ----------
    ds : xarray.Dataset
        CF-annotated data with a time dimension. The grid is normalised with
        :func:`xclimax.grid.normalize_grid` (lat ascending, lon in [0, 360)).
    variables : iterable of str, optional
        ClimaX names in the wanted order; default: every official variable found.
    extra_variables, variable_map
        As in :func:`find_variables`.
    strict : bool
        If True (default), raise when a requested variable is missing.

    Returns
    -------
    xarray.DataArray
        float32, dims ``(*batch, "time", "variable", "lat", "lon")`` where batch dims are any
        other dimensions of the sources (ensemble member, ...); ``variable`` holds ClimaX names in
        the requested order; values in canonical units (``vocab.VARIABLES[name]["units"]``);
        constants are broadcast over time and ``lattitude`` is built from the coordinate.
        Dask-backed input stays dask-backed. NaNs are not checked here.

    Raises
    ------
    CFMappingError
        Listing all missing variables and what was searched, or bad units.
    DataError
        If ``ds`` has no time dimension.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(3, variables=["temperature", "2m_temperature"], grid=(4, 8))
    >>> da = to_array(ds, ["2m_temperature", "temperature_850", "lattitude"])
    >>> da.dims, da.sizes["variable"], str(da.dtype)
    (('time', 'variable', 'lat', 'lon'), 3, 'float32')
    """
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"to_array expects an xarray.Dataset; got {type(ds).__name__}")
    time = time_dim(ds)
    names, found, missing, bad = resolve_variables(ds, variables, extra_variables, variable_map)
    if bad or (strict and missing):
        raise _mapping_error(names, missing if strict else {}, bad, ds)
    if not found:
        raise _mapping_error(names, missing, bad, ds)
    norm, _ = normalize_grid(ds)
    arrays = [_source_array(norm, found[n], time) for n in names if n in found]
    for n, a in zip([n for n in names if n in found], arrays, strict=True):
        if "lat" not in a.dims or "lon" not in a.dims:
            raise CFMappingError(
                f"{n}: variable {found[n].source!r} has dims {a.dims}; expected latitude and longitude dimensions"
            )
    template = norm[time].reset_coords(drop=True)
    batch: list[str] = []
    for a in arrays:
        batch += [d for d in a.dims if d not in ("lat", "lon", time) and d not in batch]
    arrays = [a if time in a.dims else a.expand_dims({time: template}) for a in arrays]
    arrays = list(xr.broadcast(*arrays, exclude=()))
    out = xr.concat(arrays, dim="variable", coords="minimal", compat="override", join="outer")
    out = out.assign_coords(variable=[n for n in names if n in found])
    if time != "time":
        out = out.rename({time: "time"})
    out = out.transpose(*batch, "time", "variable", "lat", "lon")
    if out.chunks is not None:  # one chunk over variables: batches always load every variable
        out = out.chunk({"variable": -1})
    out.name = "climax_input"
    out.attrs = {"units_note": "canonical units of xclimax.vocab.VARIABLES"}
    return out


class _BlockStacker:
    """Stacks numpy blocks of source variables into ``to_array``'s layout (one dask task per block).

    Built on the client from the resolved :class:`VariableSource` records, it does in numpy
    exactly what :func:`_source_array` and :func:`to_array` do with xarray (selection, squeeze,
    float32, ``* scale + offset``, broadcast, stack), without any CF matching or xarray objects
    in the task: about 1 ms per block where ``to_array`` on the block takes ~100 ms.
    """

    def __init__(self, sources: list[tuple[str, tuple[str, ...]]], items: list[tuple], target: tuple[str, ...],
                 sizes_from: dict[str, tuple[int, int]], lat: np.ndarray, nlon: int, n_extra: int) -> None:
        self.sources, self.items, self.target = sources, items, target
        self.sizes_from, self.lat, self.nlon = sizes_from, lat, nlon
        self.n_extra = n_extra  # trailing length-1 axes, one per source dim selected away (see stack)

    def __call__(self, *blocks: Any) -> np.ndarray:
        shape = tuple(blocks[k].shape[ax] for k, ax in (self.sizes_from[d] for d in self.target[:-2]))
        shape += (len(self.lat), self.nlon)
        out = []
        for k, pick, scale, offset in self.items:
            if k is None:  # lattitude, from the coordinate
                a = np.broadcast_to(self.lat.astype(np.float32)[:, None], shape[-2:])
                kept: list[str] = ["lat", "lon"]
            else:
                dims = self.sources[k][1]
                a = np.asarray(blocks[k])[tuple(pick.get(d, slice(None)) for d in dims)]
                kept = [d for d in dims if d not in pick]
                a = _canonical_values(a, scale, offset)
            present = [d for d in self.target if d in kept]
            a = a.transpose([kept.index(d) for d in present])
            a = a.reshape([a.shape[present.index(d)] if d in kept else 1 for d in self.target])
            out.append(np.broadcast_to(a, shape))
        stacked = np.stack(out, axis=len(self.target) - 2)
        return stacked.reshape(stacked.shape + (1,) * self.n_extra)


def _first_chunks(ds: xr.Dataset, sources: list[str], dim: str) -> Any:
    """The chunks along ``dim`` of the first dask-backed source that has it (None: no such source)."""
    for name in sources:
        var = ds[name]
        if dim in var.dims and var.chunks is not None:
            return var.chunks[var.dims.index(dim)]
    return None


def stack(ds: xr.Dataset, names: Iterable[str], found: Mapping[str, VariableSource] | None = None, *,
          time_chunks: Any = None) -> xr.DataArray | None:
    """:func:`to_array` for a normalised grid, computed in numpy: one dask task per block; None if it cannot.

    ``to_array`` works with xarray operations: about 0.1-0.2 s of Python per call for 48
    variables and, on dask data, a few graph tasks per variable and block (selections, unit
    conversions, broadcasts, the concatenation), each a scheduler round trip on a cluster. This
    gives the same array from the resolved sources with plain numpy indexing: eagerly for numpy
    data, and for dask data as a single ``blockwise`` layer over the source variables, into which
    dask fuses the reads of a store (one task per block, whatever the number of variables).

    Parameters
    ----------
    ds : xarray.Dataset
        Data on a normalised grid (``lat``/``lon`` dimensions, both ascending), as from
        :func:`xclimax.grid.normalize_grid`.
    names : iterable of str
        ClimaX names, in order.
    found : dict, optional
        Their sources (:func:`find_variables`; found here when not given).
    time_chunks : int or tuple, optional
        Chunks of a dask result along time (default: the sources' own).

    Returns
    -------
    xarray.DataArray or None
        Equal to ``to_array(ds, names)`` (values, dims, coordinates; dask-backed when any source
        is), chunked whole along variable, lat and lon; None for layouts this does not cover
        (a grid that is not normalised, a source dim that is neither selected nor a batch dim):
        use :func:`to_array` then.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(3, variables=["temperature", "2m_temperature"], grid=(4, 8))
    >>> names = ["2m_temperature", "temperature_850", "lattitude"]
    >>> bool((stack(ds, names) == to_array(ds, names)).all())
    True
    """
    import dask.array as dsa
    from dask.base import tokenize

    names = list(names)
    found = find_variables(ds, names) if found is None else found
    order = [n for n in names if n in found]
    if not order or "lat" not in ds.dims or "lon" not in ds.dims:
        return None
    time = time_dim(ds)
    lat, lon = np.asarray(ds["lat"].values), np.asarray(ds["lon"].values)
    if lat.ndim != 1 or lon.ndim != 1 or np.any(np.diff(lat) <= 0) or np.any(np.diff(lon) <= 0):
        return None  # not normalised: to_array would reorder
    srcs = list(dict.fromkeys(found[n].source for n in order if found[n].source is not None))
    items, batch = [], []
    for n in order:  # what to_array's _source_array does, as integer picks; batch dims in to_array's order
        src = found[n]
        if src.source is None:  # lattitude
            items.append((None, {}, 1.0, 0.0))
            continue
        dims = ds[src.source].dims
        pick = _picks(src, dims, time)
        if any(d not in dims for d in pick) or "lat" not in dims or "lon" not in dims:
            return None
        for d in dims:
            if d not in pick and d not in ("lat", "lon", time) and d not in batch:
                if d in ds.coords and pressure_to_hpa(ds[d]) is not None:
                    return None  # a vertical dim left over: to_array explains the error
                batch.append(d)
        items.append((srcs.index(src.source), pick, float(src.scale), float(src.offset)))
    target = (*batch, time, "lat", "lon")
    sizes_from: dict[str, tuple[int, int]] = {}
    for k, name in enumerate(srcs):
        for ax, d in enumerate(ds[name].dims):
            sizes_from.setdefault(d, (k, ax))
    if time not in sizes_from:
        return None  # constants only: to_array broadcasts over the time coordinate
    sources = [(name, tuple(ds[name].dims)) for name in srcs]
    lazy = any(ds[name].chunks is not None for name in srcs)
    if not lazy:
        data = _BlockStacker(sources, items, target, sizes_from, lat, lon.size, 0)(*[ds[n].values for n in srcs])
    else:
        # Source dims selected away (levels, size-1 heights) stay in the layer's output as length-1 axes,
        # dropped right after: dask does not fuse a blockwise layer that contracts a dim with its inputs, but
        # fuses one that keeps every input dim, so each block's reads run inside its stacking task.
        index = {d: i for i, d in enumerate((*batch, time, "variable", "lat", "lon"))}
        chunks_of = {d: _first_chunks(ds, srcs, d) for d in batch}
        chunks_of[time] = time_chunks if time_chunks is not None else _first_chunks(ds, srcs, time)
        args = []
        for name, dims in sources:
            var = ds[name]
            arr = var.data if var.chunks is not None else dsa.from_array(np.asarray(var.values), chunks=-1)
            for d in dims:
                index.setdefault(d, len(index))
            rechunk = {ax: (chunks_of[d] if d in chunks_of and chunks_of[d] is not None else -1)
                       for ax, d in enumerate(dims)}
            args += [arr.rechunk(rechunk), tuple(index[d] for d in dims)]
        extra = [d for d in index if d not in (*batch, time, "variable", "lat", "lon")]
        stacker = _BlockStacker(sources, items, target, sizes_from, lat, lon.size, len(extra))
        out_ind = tuple(index[d] for d in (*batch, time, "variable", "lat", "lon", *extra))
        data = dsa.blockwise(
            stacker, out_ind, *args, new_axes={index["variable"]: len(order)},
            adjust_chunks={index[d]: 1 for d in extra}, concatenate=None, dtype=np.float32,
            meta=np.empty((0,) * len(out_ind), dtype=np.float32),
            name="xclimax-stack-" + tokenize(*args[::2], items, target),
        )
        if extra:
            data = data[(Ellipsis,) + (0,) * len(extra)]
    coords = {d: ds[d].variable for d in (*batch, time, "lat", "lon") if d in ds.indexes}
    out = xr.DataArray(data, dims=(*batch, time, "variable", "lat", "lon"), coords=coords)
    out = out.assign_coords(variable=order)
    if time != "time":
        out = out.rename({time: "time"})
    out.name = "climax_input"
    out.attrs = {"units_note": "canonical units of xclimax.vocab.VARIABLES"}
    return out


# --------------------------------------------------------------------------------------------
# inverse


def _split_name(name: str) -> tuple[str, float | None]:
    m = re.match(r"^(.*)_(\d+(?:\.\d+)?)$", name)
    if m and m.group(1) in vocab.PRESSURE_VARIABLES:
        return m.group(1), float(m.group(2))
    return name, None


def from_array(
    da: xr.DataArray,
    *,
    like: xr.Dataset | None = None,
    units: str = "canonical",
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
    sources: Mapping[str, VariableSource] | None = None,
) -> xr.Dataset:
    """Split a ``variable`` dimension back into a CF-annotated Dataset (inverse of :func:`to_array`).

    Pressure-level variables (``temperature_500``, ``temperature_850``, ...) are grouped on a
    level dimension, by default ``level`` in hPa, shared by all of them: variables on different
    levels (``geopotential_500``, ``temperature_850``) get the union of the levels, with NaN
    where a variable has none (an outer join, as :func:`xarray.merge`). With ``like`` (the user's input Dataset), the
    vertical coordinate reuses its name, units and order (e.g. ``plev`` in Pa) and the data
    variables reuse its names where it had them (``z``, ``t2m``, ``ta``, ...).
    Other dims (batch, ``time``, ``lead_time``) pass through untouched, and so do the scalar
    coordinates of ``like`` (a ``height`` of 1.5 m, a cftime reference time, a string
    ``member_id``) and its non-index coordinates along shared dims. Near-surface variables
    record the height they were found at in ``height_m`` (1.5 for a Met Office ``tas``).

    By default (``units="canonical"``) values stay in the canonical ClimaX units stated by the
    ``units`` attribute, and a name of ``like`` is only reused when its units needed no
    conversion (CMIP ``zg`` in m comes back as ``geopotential`` in m2 s-2). With
    ``units="like"`` every variable found in ``like`` is converted back to ``like``'s units and
    takes its name, so the result looks like the input (``zg`` in m).

    Parameters
    ----------
    da : xarray.DataArray
        Data with a ``variable`` dimension of ClimaX names.
    like : xarray.Dataset, optional
        Input whose naming conventions to reuse.
    units : {"canonical", "like"}
        Keep canonical units, or convert back to the units of ``like``.
    extra_variables, variable_map
        As in :func:`find_variables`, used to resolve names in ``like``.
    sources : dict, optional
        ``find_variables(like, ...)`` when the caller has it already (saves matching ``like`` again).

    Returns
    -------
    xarray.Dataset
        With ``standard_name``, ``units`` and ``long_name`` attributes.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["temperature", "2m_temperature"], grid=(4, 8))
    >>> out = from_array(to_array(ds, ["2m_temperature", "temperature_500", "temperature_850"]))
    >>> out["temperature"].dims, out["level"].values.tolist()
    (('time', 'level', 'lat', 'lon'), [500, 850])
    """
    if "variable" not in da.dims:
        raise DataError(f"from_array expects a 'variable' dimension; found dims {da.dims}")
    if units not in ("canonical", "like"):
        raise ValueError(f"units must be 'canonical' or 'like'; got {units!r}")
    reg = _registry(extra_variables)
    names = [str(v) for v in da["variable"].values]
    position = {n: i for i, n in enumerate(names)}
    given, sources = sources, {}
    level_name, level_attrs, level_factor, level_desc = "level", {
        "standard_name": "air_pressure", "units": "hPa", "long_name": "pressure level", "positive": "down", "axis": "Z",
    }, 1.0, False
    level_dtype: Any = None
    if like is not None:
        wanted = [n for n in names if n in reg]
        if given is not None and all(n in given for n in wanted):
            sources = {n: given[n] for n in wanted}
        else:
            _, sources, _, _ = resolve_variables(like, wanted, extra_variables, variable_map)
        levs = [s for s in sources.values() if s.kind == "pressure" and s.selection]
        if levs:
            level_name = next(iter(levs[0].selection))
            coord = like[level_name]
            level_attrs = dict(coord.attrs)
            hpa = pressure_to_hpa(coord)
            vals = np.asarray(coord.values, float)
            level_factor = float(vals[np.argmax(np.abs(hpa))] / hpa[np.argmax(np.abs(hpa))]) if hpa is not None else 1.0
            level_desc = bool(hpa is not None and hpa.size > 1 and hpa[0] > hpa[-1])
            level_dtype = coord.dtype
    vdim = da.dims.index("variable")
    groups: dict[str, list[tuple[float, str]]] = {}
    singles: list[str] = []
    for n in names:
        base, lev = _split_name(n)
        if lev is None:
            singles.append(n)
        else:
            groups.setdefault(base, []).append((lev, n))
    data_vars: dict[str, xr.DataArray] = {}

    def attrs_for(n: str, base: str | None = None) -> dict[str, Any]:
        spec = reg.get(n)
        if spec is None:
            return {}
        sn = spec["standard_name"]
        long_name = vocab.PRESSURE_VARIABLES[base][2] if base else spec["long_name"]
        attrs = {"standard_name": sn[0] if sn else None, "units": spec["units"], "long_name": long_name}
        if n in vocab.VARIABLES and spec.get("height") is not None:
            attrs["height_m"] = spec["height"]
        return {k: v for k, v in attrs.items() if v is not None}

    def name_and_convert(n: str, default: str, x: xr.DataArray) -> tuple[str, xr.DataArray]:
        x = x.copy(deep=False)
        x.attrs = {}
        src = sources.get(n)
        attrs = attrs_for(n, None if default == n else default)
        if src is not None and src.height is not None and "height_m" in attrs:
            attrs["height_m"] = src.height  # as found (1.5 m air temperature), not the nominal 2 m
        if src is None or src.source is None:
            return default, x.assign_attrs(attrs)
        if src.scale == 1.0 and src.offset == 0.0:
            return src.source, x.assign_attrs(attrs)
        if units == "like":
            back = ((x - src.offset) / src.scale).astype(x.dtype)
            attrs.update({k: v for k, v in like[src.source].attrs.items() if k in ("standard_name", "units", "long_name")})
            return src.source, back.assign_attrs(attrs)
        return default, x.assign_attrs(attrs)

    for n in singles:
        var, x = name_and_convert(n, n, da.isel(variable=position[n], drop=True))
        data_vars[var] = x
    on_levels: dict[str, xr.DataArray] = {}
    for base, items in groups.items():
        items.sort(reverse=level_desc)
        levels = np.array([lev for lev, _ in items]) * level_factor
        if level_dtype is not None and np.issubdtype(level_dtype, np.integer) or (
            level_dtype is None and np.allclose(levels, np.round(levels))
        ):
            levels = np.round(levels).astype(level_dtype if level_dtype is not None else np.int64)
        elif level_dtype is not None:
            levels = levels.astype(level_dtype)
        stacked = da.isel(variable=[position[n] for _, n in items])
        stacked = stacked.rename(variable=level_name).assign_coords({level_name: (level_name, levels, level_attrs)})
        dims = list(da.dims)
        dims[vdim] = level_name
        stacked = stacked.transpose(*dims)
        if len({getattr(sources.get(n), "source", None) for _, n in items}) > 1:
            var, x = base, stacked.copy(deep=False)  # levels from several sources
            x.attrs = attrs_for(items[0][1], base)
        else:
            var, x = name_and_convert(items[0][1], base, stacked)
        on_levels[var] = x
    if on_levels:  # one level coordinate for all: the union, NaN where a variable lacks a level (outer join)
        union = sorted({v for x in on_levels.values() for v in x[level_name].values.tolist()}, reverse=level_desc)
        ragged = [var for var, x in on_levels.items() if x.sizes[level_name] != len(union)]
        if ragged:
            logger.info("variables %s lack some of the levels %s: filled with NaN", ragged, union)
        for var, x in on_levels.items():
            if var in ragged:
                x = x.reindex({level_name: np.asarray(union, dtype=x[level_name].dtype)})
            data_vars[var] = x.assign_coords({level_name: x[level_name].assign_attrs(level_attrs)})
    out = xr.Dataset(data_vars, attrs={"note": "units as in each variable's 'units' attribute"})
    if like is not None:
        out = out.assign_coords(carried_coords(like, out))
    for c in ("lat", "lon"):
        if c in out.coords and not out[c].attrs:
            out[c].attrs = {"lat": {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"},
                            "lon": {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}}[c]
    return out


def carried_coords(like: xr.Dataset, out: xr.Dataset) -> dict[str, xr.Variable]:
    """Coordinates of ``like`` that pass through untouched to ``out``: scalar coordinates (a ``height``,
    a cftime reference time, a string ``member_id``) and non-index coordinates along dimensions that
    ``out`` shares with identical values. Vertical pressure coordinates and grid coordinates are not
    carried (the output has its own)."""
    keep: dict[str, xr.Variable] = {}
    for c, coord in like.coords.items():
        if c in out.coords or c in out.dims or c in like.dims or {"lat", "lon"} & set(coord.dims):
            continue
        if coord.ndim == 0 and pressure_to_hpa(coord) is not None:
            continue  # the level the input selected (``ds.sel(plev=85000)``)
        same = all(
            d in out.dims and out.sizes[d] == like.sizes[d]
            and (d not in like.indexes or d not in out.indexes or like.indexes[d].equals(out.indexes[d]))
            for d in coord.dims
        )
        if same:
            keep[str(c)] = coord.variable
    return keep


# --------------------------------------------------------------------------------------------
# inspection


def mapping(
    ds: xr.Dataset,
    variables: Iterable[str] | None = None,
    *,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
) -> dict[str, str | None]:
    """``{climax name: source variable}`` for the variables found in ``ds`` (computes nothing).

    ``lattitude`` maps to None (computed from the latitude coordinate).

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["2m_temperature"], style="cmip")
    >>> mapping(ds, ["2m_temperature", "lattitude"])
    {'2m_temperature': 'tas', 'lattitude': None}
    """
    found = find_variables(ds, variables, extra_variables=extra_variables, variable_map=variable_map)
    return {k: v.source for k, v in found.items()}


