"""Plausibility checks of inputs before a model runs: never silently wrong.

A forecast from temperatures in degC labelled ``K``, or from geopotential height labelled as
geopotential, looks plausible and is wrong by tens of kelvin. These checks look at the values
themselves, after the unit conversions the labels imply, and say what is most likely wrong:

* :func:`check_dtypes`: numeric data only (object, string, complex and date dtypes refused;
  ``bool`` only for masks). Values are checked and computed in float32 whatever the input dtype.
* :class:`ValueChecker`: every value finite (NaN, +inf and -inf counted per variable), values
  inside a physical range per ClimaX variable (:func:`plausible_range`) and consistent with the
  model's normalisation statistics; when they are not, the alternative units that would explain
  them are named ("mean 14.2 for a variable in K: values look like degC"). It is a small,
  picklable callable, so the dask task that runs the model checks its own block before any
  model work; eager input is checked before the first batch.
* :func:`check_coordinates`: latitude/longitude present, in degrees (not radians).
* :func:`check_times`: decoded, distinct (and for training sorted) times.
* :func:`check_lead_time`: warn when a lead time is not one the model was trained on.

Everything raises a :class:`~xclimax.exceptions.XClimaxError` subclass (or warns with
:class:`~xclimax.exceptions.XClimaxWarning`) naming the variable, what was expected and what
was found.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .. import vocab
from ..exceptions import DataError, GridError, XClimaxWarning

__all__ = [
    "check_dataset",
    "as_float32",
    "guard_finite",
    "plausible_range",
    "VariableCheck",
    "ValueChecker",
    "check_dtypes",
    "check_coordinates",
    "check_times",
    "check_lead_time",
    "trained_lead_times",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# physical ranges (canonical units of xclimax.vocab)

#: Plausible ranges of single-level and extra variables in canonical units (generous: real data
#: never leave them; fill values and unit mix-ups do).
_RANGES: dict[str, tuple[float, float]] = {
    "2m_temperature": (170.0, 350.0),
    "10m_u_component_of_wind": (-100.0, 100.0),
    "10m_v_component_of_wind": (-100.0, 100.0),
    "land_sea_mask": (-0.01, 1.01),
    "orography": (-1000.0, 9000.0),
    "mean_sea_level_pressure": (85000.0, 110000.0),
    "surface_pressure": (40000.0, 110000.0),
    "total_precipitation": (-1e-3, 2.0),
    "toa_incident_solar_radiation": (-1.0, 1e8),
}
#: Plausible ranges of pressure-level variables (geopotential depends on the level).
_PRESSURE_RANGES: dict[str, tuple[float, float]] = {
    "u_component_of_wind": (-200.0, 200.0),
    "v_component_of_wind": (-200.0, 200.0),
    "temperature": (120.0, 350.0),
    "relative_humidity": (-10.0, 200.0),
    "specific_humidity": (-1e-3, 0.06),
}


def _standard_height(level_hpa: float) -> float:
    """Height (m) of a pressure level in the ICAO standard atmosphere (troposphere formula, then isothermal)."""
    p = float(level_hpa)
    if p >= 226.32:
        return 44330.8 * (1.0 - (p / 1013.25) ** 0.190263)
    return 11000.0 + 6341.6 * math.log(226.32 / p)


def _split(name: str) -> tuple[str, float | None]:
    m = re.match(r"^(.*)_(\d+(?:\.\d+)?)$", name)
    if m and m.group(1) in vocab.PRESSURE_VARIABLES:
        return m.group(1), float(m.group(2))
    return name, None


def plausible_range(name: str) -> tuple[float, float] | None:
    """Plausible ``(low, high)`` of a ClimaX variable in its canonical units, or None if unknown.

    Geopotential depends on the level: the standard-atmosphere height of the level, -30 % - 1 km
    to +25 % + 1 km, times g.

    Examples
    --------
    >>> plausible_range("temperature_850")
    (120.0, 350.0)
    >>> lo, hi = plausible_range("geopotential_500")
    >>> lo / 9.80665 < 5574 < hi / 9.80665
    True
    """
    base, level = _split(vocab.canonical_name(name))
    if level is not None:
        if base == "geopotential":
            h = _standard_height(level)
            return (round((0.7 * h - 1000.0) * vocab.G0, 1), round((1.25 * h + 1000.0) * vocab.G0, 1))
        return _PRESSURE_RANGES.get(base)
    return _RANGES.get(base)


# --------------------------------------------------------------------------------------------
# alternative units: what the values may really be in when their labels are wrong

_G = vocab.G0
#: alternatives per family: key -> {label: (scale, offset, description)}; canonical = raw * scale + offset
_FAMILIES: dict[str, dict[str, tuple[float, float, str]]] = {
    "K": {
        "K": (1.0, 0.0, "K"),
        "degC": (1.0, 273.15, "degC"),
        "degF": (5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0, "degF"),
    },
    "geopotential": {
        "m2 s-2": (1.0, 0.0, "geopotential in m2 s-2 (factor ~9.8 = g from geopotential height)"),
        "m": (_G, 0.0, "geopotential height in m (factor ~9.8 = g from geopotential)"),
        "dam": (10.0 * _G, 0.0, "geopotential height in dam (decametres)"),
    },
    "orography": {
        "m": (1.0, 0.0, "a height in m"),
        "m2 s-2": (1.0 / _G, 0.0, "surface geopotential in m2 s-2 (factor ~9.8 = g)"),
        "km": (1000.0, 0.0, "a height in km"),
    },
    "m s-1": {
        "m s-1": (1.0, 0.0, "m s-1"),
        "km h-1": (1.0 / 3.6, 0.0, "km h-1"),
        "knots": (0.514444, 0.0, "knots"),
        "cm s-1": (0.01, 0.0, "cm s-1"),
    },
    "%": {"%": (1.0, 0.0, "%"), "1": (100.0, 0.0, "a fraction (0-1) rather than %")},
    "1": {"1": (1.0, 0.0, "a fraction (0-1)"), "%": (0.01, 0.0, "% rather than a fraction (0-1)")},
    "kg kg-1": {"kg kg-1": (1.0, 0.0, "kg kg-1"), "g kg-1": (1e-3, 0.0, "g kg-1")},
    "Pa": {"Pa": (1.0, 0.0, "Pa"), "hPa": (100.0, 0.0, "hPa"), "kPa": (1000.0, 0.0, "kPa")},
    "precipitation": {"m": (1.0, 0.0, "m"), "mm": (1e-3, 0.0, "mm (kg m-2)")},
}


def _family(name: str, target_units: str | None) -> dict[str, tuple[float, float, str]] | None:
    base, _ = _split(name)
    if base == "geopotential":
        return _FAMILIES["geopotential"]
    if base == "orography":
        return _FAMILIES["orography"]
    if base == "total_precipitation":
        return _FAMILIES["precipitation"]
    return _FAMILIES.get(str(target_units)) if target_units is not None else None


# --------------------------------------------------------------------------------------------
# value checks


@dataclass(frozen=True)
class VariableCheck:
    """What is checked for one ClimaX variable (picklable, travels in dask graphs).

    Attributes
    ----------
    name : str
        ClimaX name.
    source : str or None
        Data variable it comes from (None: computed, e.g. ``lattitude``; not range-checked).
    units : str or None
        Units label found on the source (None: missing, canonical assumed).
    target_units : str or None
        Canonical units.
    scale, offset : float
        The conversion the label implied (``canonical = raw * scale + offset``).
    low, high : float
        Plausible range in canonical units (NaN: unknown).
    mean, std : float
        The model's normalisation statistics (NaN: none).
    """

    name: str
    source: str | None
    units: str | None
    target_units: str | None
    scale: float = 1.0
    offset: float = 0.0
    low: float = float("nan")
    high: float = float("nan")
    mean: float = float("nan")
    std: float = float("nan")

    @property
    def what(self) -> str:
        """``name (from 'source', labelled 'units')`` for messages."""
        label = f"labelled {self.units!r}" if self.units is not None else f"no units attribute, {self.target_units!r} assumed"
        return f"{self.name} (from {self.source!r}, {label})"


def _unit_label(check: VariableCheck) -> str:
    return str(check.units) if check.units is not None else str(check.target_units)


def _label_key(units: str | None) -> str | None:
    if units is None:
        return None
    try:
        from .units import _unit_key

        return _unit_key(units)
    except ImportError:  # pragma: no cover - units module renamed
        return str(units)


def _explain(check: VariableCheck, raw_mean: float, raw_std: float, raw_min: float, raw_max: float) -> tuple[str, str] | None:
    """The alternative units (label, description) that best explain the raw values, or None."""
    family = _family(check.name, check.target_units)
    if not family or not np.isfinite(check.low):
        return None
    labelled = _label_key(check.units) if check.units is not None else _label_key(check.target_units)
    best: tuple[float, str, str] | None = None
    span = check.high - check.low
    for rank, (label, (scale, offset, desc)) in enumerate(family.items()):
        if label == labelled or (scale, offset) == (check.scale, check.offset):
            continue
        lo, hi = sorted((raw_min * scale + offset, raw_max * scale + offset))
        mean = raw_mean * scale + offset
        if not (check.low <= mean <= check.high) or lo < check.low - 0.1 * span or hi > check.high + 0.1 * span:
            continue
        if np.isfinite(check.mean) and np.isfinite(check.std) and check.std > 0:
            score = abs(mean - check.mean) / check.std
            ratio = raw_std * abs(scale) / check.std if raw_std > 0 else 1.0
            if score > 5 or not (1 / 20 <= ratio <= 20):
                continue
        else:  # no statistics: the more common mix-up first (degC before degF)
            score = float(rank)
        if best is None or score < best[0]:
            best = (score, label, desc)
    return None if best is None else (best[1], best[2])


def _fix_hint(check: VariableCheck, label: str) -> str:
    if check.source is None:
        return ""
    return (f" Set ds[{check.source!r}].attrs['units'] = {label!r} (xclimax then converts) "
            f"or convert the values to {check.target_units!r}.")


@dataclass(frozen=True)
class ValueChecker:
    """Check blocks of model input (canonical units, float32) before the model sees them.

    Call it on an array whose axis ``variable_axis`` runs over ``checks`` (in order). It raises
    :class:`~xclimax.exceptions.DataError` on non-finite values, on values outside a variable's
    physical range and on values that the model's statistics and an alternative unit both say
    are mislabelled; it warns (:class:`~xclimax.exceptions.XClimaxWarning`) when values merely
    disagree with the statistics, or when a handful lie outside the range.

    Examples
    --------
    >>> checker = ValueChecker.build({"2m_temperature": ("t2m", "K", "K", 1.0, 0.0)}, {"2m_temperature": (278.0, 21.0)})
    >>> checker(np.full((1, 1, 4, 8), 14.2, dtype="float32"))
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: implausible input values: 2m_temperature (from 't2m', labelled 'K'): mean 14.2 for a variable in K ... values look like degC...
    """

    checks: tuple[VariableCheck, ...]
    variable_axis: int = -3
    what: str = "input"

    @classmethod
    def build(
        cls,
        sources: Mapping[str, Any],
        stats: Mapping[str, Sequence[float]] | None = None,
        *,
        order: Sequence[str] | None = None,
        variable_axis: int = -3,
        what: str = "input",
    ) -> "ValueChecker":
        """A checker from ``{name: VariableSource}`` (or ``{name: (source, units, target, scale, offset)}``).

        ``stats`` are the model's ``{name: (mean, std)}``; ``order`` the variable order of the
        arrays to check (default: the order of ``sources``).
        """
        stats = dict(stats or {})
        out = []
        for name in order if order is not None else list(sources):
            src = sources.get(name)
            if src is None:
                out.append(VariableCheck(name, None, None, None))
                continue
            if isinstance(src, tuple):
                source, units, target, scale, offset = src
            else:
                source, units, target = src.source, src.units, src.target_units
                scale, offset = float(src.scale), float(src.offset)
            lo, hi = plausible_range(name) or (float("nan"), float("nan"))
            mean, std = (float(stats[name][0]), float(stats[name][1])) if name in stats else (float("nan"),) * 2
            out.append(VariableCheck(name, source, None if units is None else str(units), target, float(scale),
                                     float(offset), lo, hi, mean, std))
        return cls(tuple(out), variable_axis, what)

    def __call__(self, block: np.ndarray) -> None:
        """Check one block (any float dtype; summaries are computed in float64)."""
        x = np.asarray(block)
        axis = self.variable_axis % x.ndim
        if x.shape[axis] != len(self.checks):
            raise DataError(f"expected {len(self.checks)} variables along axis {axis} of the {self.what}, found {x.shape[axis]}")
        if x.size == 0:
            return
        rows = np.moveaxis(x, axis, 0).reshape(len(self.checks), -1)  # one row per variable
        if not np.isfinite(rows).all():
            bad = []
            for check, v in zip(self.checks, rows):
                n_nan, n_pos, n_neg = int(np.isnan(v).sum()), int(np.isposinf(v).sum()), int(np.isneginf(v).sum())
                parts = [f"{n} {label}" for n, label in ((n_nan, "NaN"), (n_pos, "+inf"), (n_neg, "-inf")) if n]
                if parts:
                    bad.append(f"{check.name} (from {check.source!r}): {', '.join(parts)} of {v.size} values")
            raise DataError(
                f"the {self.what} contains non-finite values (expected finite numbers everywhere): "
                + "; ".join(bad)
                + ". ClimaX needs complete fields: fill or drop them first (ds.fillna / ds.dropna / ds.interpolate_na)."
            )
        errors, warns = [], []
        for check, row in zip(self.checks, rows):
            if check.source is None:
                continue
            v = row.astype(np.float64, copy=False)  # summaries in float64, one variable at a time
            outside = float(np.mean((v < check.low) | (v > check.high))) if np.isfinite(check.low) else 0.0
            err, warn = self._check_one(check, outside, float(v.mean()), float(v.std()), float(v.min()),
                                        float(v.max()))
            if err:
                errors.append(err)
            if warn:
                warns.append(warn)
        if errors:
            raise DataError(f"implausible {self.what} values: " + " | ".join(errors))
        for text in warns:
            warnings.warn(text, XClimaxWarning, stacklevel=3)

    def check_summary(self, summaries: Mapping[str, Sequence[float]]) -> None:
        """Check per-variable ``(mean, std)`` of the data, e.g. statistics over a training period.

        Non-finite statistics mean non-finite values somewhere; the means are checked against
        the physical ranges and, where the checker has them, the model's statistics.

        Examples
        --------
        >>> checker = ValueChecker.build({"2m_temperature": ("t2m", "K", "K", 1.0, 0.0)}, what="training data")
        >>> checker.check_summary({"2m_temperature": (float("nan"), float("nan"))})
        Traceback (most recent call last):
        ...
        xclimax.exceptions.DataError: the training data contain non-finite values ... 2m_temperature (from 't2m'): mean nan...
        """
        bad, errors, warns = [], [], []
        for check in self.checks:
            if check.name not in summaries:
                continue
            mean, std = (float(v) for v in summaries[check.name])
            if not (np.isfinite(mean) and np.isfinite(std)):
                bad.append(f"{check.name} (from {check.source!r}): mean {mean}, std {std}")
                continue
            if check.source is None:
                continue
            outside = float(not check.low <= mean <= check.high) if np.isfinite(check.low) else 0.0
            err, warn = self._check_one(check, outside, mean, std, mean, mean, summary=True)
            if err:
                errors.append(err)
            if warn:
                warns.append(warn)
        if bad:
            raise DataError(f"the {self.what} contain non-finite values (NaN or inf; expected finite numbers "
                            f"everywhere): their statistics are {'; '.join(bad)}. Fill or drop them before training "
                            "(ds.fillna / ds.dropna / ds.interpolate_na).")
        if errors:
            raise DataError(f"implausible {self.what}: " + " | ".join(errors))
        for text in warns:
            warnings.warn(text, XClimaxWarning, stacklevel=3)

    def _check_one(self, check: VariableCheck, outside: float, mean: float, std: float, vmin: float, vmax: float,
                   summary: bool = False):
        units = check.target_units or ""
        raw = [(value - check.offset) / check.scale for value in (mean, vmin, vmax)]
        raw_mean, raw_min, raw_max = raw[0], min(raw[1:]), max(raw[1:])
        raw_std = std / abs(check.scale)
        shown = f"mean {raw_mean:.3g} for a variable in {_unit_label(check)}"
        if np.isfinite(check.low):
            span = check.high - check.low
            absurd = vmin < check.low - 10 * span or vmax > check.high + 10 * span
            if not (check.low <= mean <= check.high) or outside > 1e-3 or absurd:
                cause = _explain(check, raw_mean, raw_std, raw_min, raw_max)
                if summary:
                    found = (f"{check.what}: {shown} (its mean over the period); the plausible range is "
                             f"{check.low:g}..{check.high:g} {units}")
                else:
                    found = (f"{check.what}: {shown} (min {raw_min:.4g}, max {raw_max:.4g}); "
                             f"{100 * outside:.3g} % of the values lie outside the plausible range "
                             f"{check.low:g}..{check.high:g} {units}")
                if cause is not None:
                    return f"{found}: values look like {cause[1]}.{_fix_hint(check, cause[0])}", None
                if absurd and outside < 0.5:
                    return (f"{found}: a few values are huge (min {vmin:.4g}, max {vmax:.4g}): an unmasked fill "
                            "value? Decode with xr.decode_cf / mask with ds.where(...)."), None
                return f"{found}: check the units attribute and the scaling of the data.", None
            if outside > 0:
                return None, (f"{check.what}: {100 * outside:.3g} % of the values lie outside the plausible range "
                              f"{check.low:g}..{check.high:g} {units} (min {vmin:.4g}, max {vmax:.4g})")
        if np.isfinite(check.mean) and np.isfinite(check.std) and check.std > 0:
            z = abs(mean - check.mean) / check.std
            ratio = std / check.std
            if z > 5 or (std > 0 and not (1 / 50 <= ratio <= 50)):
                stats_text = (f"the model's normalisation statistics are mean {check.mean:.4g}, std {check.std:.4g} "
                              f"{units}; the {self.what} has mean {mean:.4g}, std {std:.4g} {units}")
                cause = _explain(check, raw_mean, raw_std, raw_min, raw_max)
                if cause is not None:
                    return (f"{check.what}: {shown}: values look like {cause[1]} ({stats_text})."
                            f"{_fix_hint(check, cause[0])}"), None
                return None, (f"{check.what}: values do not look like the data the model was trained on: {stats_text} "
                              "(a different variable, level or unit?)")
        return None, None


# --------------------------------------------------------------------------------------------
# the Dataset itself


def check_dataset(ds: Any, name: str = "ds") -> None:
    """Raise :class:`DataError` unless ``ds`` is a non-empty :class:`xarray.Dataset`.

    Examples
    --------
    >>> check_dataset(xr.DataArray([1.0], dims="x", name="t"))
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: ds must be an xarray.Dataset; got a DataArray: use da.to_dataset() ...
    """
    if isinstance(ds, xr.Dataset):
        if not ds.data_vars:
            raise DataError(f"{name} has no data variables: expected a Dataset with the model's variables; "
                            f"found an empty Dataset (dims {dict(ds.sizes)})")
        return
    hint = {
        "DataArray": ": use da.to_dataset() (named after the variable, with its CF attributes)",
        "str": ": open the file first, e.g. xr.open_dataset(path) or xr.open_zarr(path)",
        "PosixPath": ": open the file first, e.g. xr.open_dataset(path) or xr.open_zarr(path)",
        "ndarray": ": wrap it in an xarray.Dataset with time, lat and lon coordinates and CF attributes",
    }.get(type(ds).__name__, "")
    article = "a " if type(ds).__name__ != "NoneType" else ""
    raise DataError(f"{name} must be an xarray.Dataset; got {article}{type(ds).__name__}{hint}")


def _sources_of(found: Mapping[str, Any]) -> dict[str, dict[str, set[int]]]:
    """{data variable: {dim: positions used}} of the found variables (no positions: all used)."""
    out: dict[str, dict[str, set[int]]] = {}
    for src in found.values():
        var = src[0] if isinstance(src, tuple) else getattr(src, "source", None)
        if var is None:
            continue
        used = out.setdefault(var, {})
        for dim, pos in dict(getattr(src, "selection", {}) or {}).items():
            used.setdefault(dim, set()).add(int(pos))
    return out


def as_float32(ds: xr.Dataset, found: Mapping[str, Any]) -> xr.Dataset:
    """``ds`` with the sources of ``found`` that are not float32/float64 cast to float32 (lazily).

    float16 would overflow in unit conversions (geopotential height x 9.8) and in normalisation;
    integers and booleans are exact in float32. ``ds`` itself is not modified.

    Examples
    --------
    >>> ds = xr.Dataset({"t": ("x", np.array([250, 300], dtype="int16"))})
    >>> as_float32(ds, {"temperature_850": ("t", "K", "K", 1.0, 0.0)})["t"].dtype
    dtype('float32')
    """
    cast = {var: ds[var].astype(np.float32) for var in _sources_of(found)
            if var in ds.data_vars and ds[var].dtype not in (np.float32, np.float64)}
    return ds.assign(cast) if cast else ds


def _finite_block(block: np.ndarray, *, what: str) -> np.ndarray:
    values = np.asarray(block)
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        raise DataError(_non_finite_text(what, values))
    return block


def _non_finite_text(what: str, values: np.ndarray) -> str:
    counts = [(int(np.isnan(values).sum()), "NaN"), (int(np.isposinf(values).sum()), "+inf"),
              (int(np.isneginf(values).sum()), "-inf")]
    found = ", ".join(f"{n} {label}" for n, label in counts if n)
    return (f"the input contains non-finite values (expected finite numbers everywhere): {what}: {found} of "
            f"{values.size} values. ClimaX needs complete fields, and regridding would hide them by interpolation: "
            "fill or drop them first (ds.fillna / ds.dropna / ds.interpolate_na).")


def guard_finite(ds: xr.Dataset, found: Mapping[str, Any]) -> xr.Dataset:
    """The sources of ``found`` (only the levels used), checked to be finite before they are regridded.

    Regridding skips missing values and renormalises the weights, so NaN would silently be filled
    from their neighbours. Numpy-backed data are checked now; dask-backed data get the check in
    each chunk's task (nothing is computed here). Returns ``ds`` reduced to the used variables
    and levels, which also makes the regridding cheaper.

    Examples
    --------
    >>> ds = xr.Dataset({"t": ("x", [1.0, np.nan])})
    >>> guard_finite(ds, {"2m_temperature": ("t", "K", "K", 1.0, 0.0)})
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: the input contains non-finite values ...: 2m_temperature (from 't'): 1 NaN of 2 values...
    """
    used = _sources_of(found)
    names = {}
    for name, src in found.items():
        var = src[0] if isinstance(src, tuple) else getattr(src, "source", None)
        if var is not None:
            names.setdefault(var, []).append(name)
    keep = [v for v in used if v in ds.data_vars]
    out = ds[keep]
    positions: dict[str, set[int]] = {}
    for var in keep:
        for dim, pos in used[var].items():
            positions.setdefault(dim, set()).update(pos)
    for dim, pos in positions.items():
        if dim in out.dims and len(pos) < out.sizes[dim]:
            out = out.isel({dim: sorted(pos)})
    guarded = {}
    for var in keep:
        what = f"{', '.join(names[var])} (from {var!r})"
        da = out[var]
        if da.chunks is not None:
            guarded[var] = da.copy(data=da.data.map_blocks(_finite_block, what=what, dtype=da.dtype))
        else:
            values = np.asarray(da.values)
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                raise DataError(_non_finite_text(what, values))
    return out.assign(guarded) if guarded else out


# --------------------------------------------------------------------------------------------
# dtypes, coordinates, times, statistics


def check_dtypes(ds: xr.Dataset, sources: Mapping[str, Any]) -> None:
    """Raise :class:`DataError` for source variables whose dtype is not numeric.

    Floats of any width and integers are accepted (values are converted to float32);
    ``bool`` only for constant fields such as the land-sea mask; object, string, bytes,
    complex, datetime and timedelta dtypes are refused.

    Examples
    --------
    >>> ds = xr.Dataset({"t2m": ("x", np.array(["a", "b"], dtype=object))})
    >>> check_dtypes(ds, {"2m_temperature": ("t2m", "K", "K", 1.0, 0.0)})
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: 2m_temperature: variable 't2m' has dtype object (Python objects); expected numbers...
    """
    bad = []
    for name, src in sources.items():
        var = src[0] if isinstance(src, tuple) else getattr(src, "source", None)
        if var is None or var not in ds.variables:
            continue
        dtype = ds[var].dtype
        kind = dtype.kind
        if kind in "fiu":
            continue
        if kind == "b":
            spec = vocab.VARIABLES.get(name)
            if spec is not None and spec["kind"] == "constant":
                continue
            bad.append(f"{name}: variable {var!r} has dtype bool; expected numbers in {getattr(src, 'target_units', None) or 'physical units'}")
            continue
        what = {"c": "complex numbers", "O": "Python objects", "U": "strings", "S": "bytes", "M": "dates",
                "m": "time spans"}.get(kind, "non-numeric values")
        bad.append(f"{name}: variable {var!r} has dtype {dtype} ({what}); expected numbers (float or integer)")
    if bad:
        raise DataError("; ".join(bad) + ". Convert with ds[name].astype('float32') after checking the values.")


def _latlon(ds: xr.Dataset | xr.DataArray) -> tuple[str, str]:
    from .grid import _find_coord

    return (_find_coord(ds, "latitude", "Y", ("lat", "latitude", "y")),
            _find_coord(ds, "longitude", "X", ("lon", "longitude", "x")))


def check_coordinates(ds: xr.Dataset | xr.DataArray) -> None:
    """Raise :class:`GridError` unless ``ds`` has latitude/longitude coordinates in degrees.

    Radians are recognised by their units (``radian``, ``rad``) or, whatever the units say, by
    values that span at most pi/2 in latitude while the longitudes, evenly spaced, cover 2*pi.

    Examples
    --------
    >>> ds = xr.Dataset(coords={"lat": np.linspace(-1.5, 1.5, 8), "lon": np.arange(16) * 2 * np.pi / 16})
    >>> check_coordinates(ds)
    Traceback (most recent call last):
    ...
    xclimax.exceptions.GridError: latitude 'lat' looks like radians...
    """
    lat_name, lon_name = _latlon(ds)
    lat = np.asarray(ds[lat_name].values, dtype=float)
    lon = np.asarray(ds[lon_name].values, dtype=float)
    for name, values, limit in ((lat_name, lat, 90.0), (lon_name, lon, 360.0)):
        units = str(ds[name].attrs.get("units", "")).strip().lower()
        if units in ("rad", "radian", "radians"):
            raise GridError(
                f"{'latitude' if limit == 90 else 'longitude'} {name!r} is in {units}; expected degrees "
                f"({'degrees_north' if limit == 90 else 'degrees_east'}): convert with np.rad2deg and set the units"
            )
        if not np.isfinite(values).all():
            raise GridError(f"coordinate {name!r} has non-finite values; expected finite degrees")
    if lat.size and np.abs(lat).max() > 90 + 1e-6:
        raise GridError(f"latitude {lat_name!r} must lie within [-90, 90] degrees; found {lat.min():g}..{lat.max():g}")
    if lat.size >= 4 and lon.size >= 4 and np.abs(lat).max() <= math.pi / 2 + 1e-6 and lon.max() - lon.min() <= 2 * math.pi:
        step = np.diff(np.sort(lon))
        covers = step.size and np.allclose(step, step[0], rtol=1e-3) and abs(step[0] * lon.size - 2 * math.pi) < 1e-2
        if covers:
            raise GridError(
                f"latitude {lat_name!r} looks like radians: it spans {lat.min():.4g}..{lat.max():.4g} while the "
                f"{lon.size} evenly spaced longitudes {lon_name!r} cover 2*pi ({lon.min():.4g}..{lon.max():.4g}); "
                "expected degrees: convert with np.rad2deg and set units 'degrees_north'/'degrees_east'"
            )


def check_times(ds: xr.Dataset | xr.DataArray, dim: str = "time", *, what: str = "input", sorted_: bool = False) -> None:
    """Raise :class:`DataError` unless ``ds[dim]`` holds decoded, distinct (optionally sorted) times.

    Examples
    --------
    >>> ds = xr.Dataset(coords={"time": pd.to_datetime(["2000-01-01", "2000-01-01"])})
    >>> check_times(ds)
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: input times must be distinct; found 1 repeated: ['2000-01-01 00:00:00']...
    """
    if dim not in ds.dims:
        raise DataError(f"the {what} needs a {dim!r} dimension; found dims {list(ds.dims)}")
    if ds.sizes[dim] == 0:
        raise DataError(f"the {what} has no time steps ({dim!r} has length 0); expected at least one")
    coord = ds[dim]
    values = coord.values
    kind = values.dtype.kind
    if kind == "O":
        first = values.flat[0]
        if not hasattr(first, "calendar") and not isinstance(first, (pd.Timestamp, np.datetime64)):
            raise DataError(f"{what} {dim!r} holds {type(first).__name__} objects; expected dates (datetime64 or cftime)")
    elif kind != "M":
        cal = coord.attrs.get("calendar", coord.encoding.get("calendar"))
        units = coord.attrs.get("units", coord.encoding.get("units"))
        hint = (f" The calendar {cal!r} may be unknown to xarray/cftime:" if cal else "") + (
            " decode the times (xr.decode_cf(ds, use_cftime=True)) or give a valid calendar attribute")
        raise DataError(
            f"{what} {dim!r} holds {values.dtype} values{f' with units {units!r}' if units else ''}; expected "
            f"decoded dates (datetime64 or cftime).{hint}"
        )
    index = pd.Index(values)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()
        shown = [str(v)[:19] for v in dup[:3]]
        raise DataError(
            f"{what} times must be distinct; found {dup.size} repeated: {shown}"
            f"{' ...' if dup.size > 3 else ''}. Drop them with ds.drop_duplicates({dim!r})"
        )
    if sorted_ and not index.is_monotonic_increasing:
        raise DataError(f"{what} times must be sorted in increasing order; sort with ds.sortby({dim!r})")


# --------------------------------------------------------------------------------------------
# lead times


def _hours(td: pd.Timedelta) -> str:
    h = td / pd.Timedelta("1h")
    if h % 24 == 0 and h >= 24:
        return f"{h / 24:g} d ({h:g} h)"
    return f"{h:g} h"


def trained_lead_times(metadata: Mapping[str, Any] | None) -> tuple[list[pd.Timedelta], str] | None:
    """The lead times a model was trained for, from its metadata: ``(leads, description)`` or None.

    Fine-tuned models record ``lead_time`` (one lead); pre-trained ones ``lead_times``, the
    inclusive range ``(low, high)`` drawn in multiples of ``time_step``.

    Examples
    --------
    >>> leads, text = trained_lead_times({"task": "forecast", "lead_time": "24h"})
    >>> text
    '1 d (24 h)'
    >>> leads, text = trained_lead_times({"task": "pretrain", "lead_times": ["6h", "24h"], "time_step": "6h"})
    >>> [str(x) for x in leads], text
    (['0 days 06:00:00', '0 days 12:00:00', '0 days 18:00:00', '1 days 00:00:00'], '6 h to 1 d (24 h) in steps of 6 h')
    """
    if not isinstance(metadata, Mapping):
        return None
    try:
        single = metadata.get("lead_time")
        many = metadata.get("lead_times")
        if many is not None and not isinstance(many, str) and len(many) == 2 and metadata.get("task") == "pretrain":
            lo, hi = (pd.Timedelta(v) for v in many)
            step = pd.Timedelta(metadata.get("time_step") or (hi - lo) or hi)
            if lo == hi or step <= pd.Timedelta(0):
                return [lo], _hours(lo)
            n = int(round((hi - lo) / step))
            return [lo + k * step for k in range(n + 1)], f"{_hours(lo)} to {_hours(hi)} in steps of {_hours(step)}"
        if single is not None:
            lead = pd.Timedelta(single)
            return [lead], _hours(lead)
        if many is not None:
            leads = [pd.Timedelta(v) for v in ([many] if isinstance(many, str) else many)]
            return leads, ", ".join(_hours(v) for v in leads)
    except (TypeError, ValueError):
        logger.info("could not read the lead times of the model's metadata: %r", metadata)
    return None


def check_lead_time(metadata: Mapping[str, Any] | None, lead: Any, *, stacklevel: int = 3) -> bool:
    """Warn (:class:`XClimaxWarning`) when ``lead`` is not one of the model's trained lead times.

    Returns True when the lead was trained (or the model records nothing), False after warning.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     check_lead_time({"task": "forecast", "lead_time": "24h"}, "6h")
    False
    >>> "trained for lead time 1 d (24 h)" in str(w[0].message)
    True
    """
    trained = trained_lead_times(metadata)
    if trained is None:
        return True
    leads, text = trained
    lead = pd.Timedelta(lead)
    if any(abs(lead - t) < pd.Timedelta("1s") for t in leads):
        return True
    name = f" {metadata.get('name')!r}" if isinstance(metadata, Mapping) and metadata.get("name") else ""
    warnings.warn(
        f"the model{name} was trained for lead time {text}; lead_time {_hours(lead)} was never trained, so expect "
        f"poor skill (possibly worse than persistence). Use a trained lead time or fine-tune for this one "
        f"(xclimax.finetune(ds, model, lead_time={str(lead)!r})).",
        XClimaxWarning,
        stacklevel=stacklevel,
    )
    return False
