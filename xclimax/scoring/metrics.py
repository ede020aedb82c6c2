"""Latitude-weighted forecast scores (RMSE, MSE, MAE, bias, ACC) on xarray objects.

Two definitions are offered through ``flavour``:

``"wb2"`` (default) follows WeatherBench 2 (``weatherbench2/metrics.py``):

- weights ``w`` are the area of each latitude band, normalised to mean 1 over the latitudes
  (for an equally spaced, cell-centred grid such as ClimaX's this is exactly
  ``cos(lat) / mean(cos(lat))``);
- ``mse``, ``mae`` and ``bias`` are the weighted spatial mean of ``e**2``, ``|e|`` and
  ``e = forecast - truth`` for each initial time, then averaged over time;
- ``rmse`` is the square root *after* the time mean of MSE (the ECMWF and WB2-website
  convention; WB2's ``RMSESqrtBeforeTimeAvg`` is what ``flavour="climax"`` computes);
- ``acc`` is the uncentred anomaly correlation per initial time,
  ``mean(w f' t') / sqrt(mean(w f'^2) mean(w t'^2))`` with ``f' = forecast - C``,
  ``t' = truth - C`` and ``C`` the climatology at the valid time, then averaged over time.

``"climax"`` reproduces ``src/climax/utils/metrics.py`` of the official ClimaX code:

- weights ``cos(lat) / mean(cos(lat))``;
- ``rmse`` is the per-sample RMSE averaged over samples, ``mean_t sqrt(mean_ij w e^2)``;
- ``acc`` is pooled over all samples and grid points: anomalies against the climatology
  (by default the time mean of the truth over the evaluated valid times, as ClimaX's
  ``test/climatology.npz``) minus their unweighted pooled mean, then
  ``sum(w f'' t'') / sqrt(sum(w f''^2) sum(w t''^2))``. ClimaX pools within each
  data-loader batch and averages batches; pooling over the whole period is the
  batch-independent version of that number.
- ``mse``, ``mae`` and ``bias`` are as for ``"wb2"`` (the definitions coincide).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..cf import time as _time
from ..cf.grid import GridInfo, normalize_grid, restore_grid
from ..exceptions import DataError, GridError, XClimaxWarning

__all__ = ["evaluate", "lat_weights", "METRICS"]

logger = logging.getLogger(__name__)

#: Scores :func:`evaluate` can compute.
METRICS: tuple[str, ...] = ("rmse", "mse", "mae", "bias", "acc")
_FLAVOURS = ("wb2", "climax")
_SPACE = ("lat", "lon")


# --------------------------------------------------------------------------- helpers
def standardise(ds: xr.Dataset, what: str) -> tuple[xr.Dataset, GridInfo]:
    """``ds`` on the canonical grid layout (``lat``/``lon``, lat ascending, lon in [0, 360)), lazily."""
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"{what} must be an xarray.Dataset; got {type(ds).__name__}")
    return normalize_grid(ds)


def _grid_order(reference: xr.Dataset, other: xr.Dataset, what: str) -> dict[str, np.ndarray]:
    """Integer indexers that put ``other``'s lat/lon in ``reference``'s order (``GridError`` if the grids differ)."""
    out = {}
    for dim in _SPACE:
        ref = np.asarray(reference[dim].values, dtype=float)
        oth = np.asarray(other[dim].values, dtype=float)
        order = np.argsort(oth)
        pos = np.searchsorted(oth[order], ref).clip(0, max(oth.size - 1, 0))
        found = oth[order][pos] if oth.size else np.empty(0)
        if oth.size != ref.size or not np.allclose(found, ref, rtol=0, atol=1e-6):
            raise GridError(
                f"{what} is on a different grid than the forecast: forecast {dim} has {ref.size} values "
                f"[{ref.min():g} .. {ref.max():g}], {what} has {oth.size} values "
                f"[{oth.min() if oth.size else np.nan:g} .. {oth.max() if oth.size else np.nan:g}]; "
                "regrid one of them first (xclimax.grid.regrid)"
            )
        out[dim] = order[pos]
    return out


def _on_grid(other: xr.Dataset, reference: xr.Dataset, what: str) -> xr.Dataset:
    """``other`` reordered to ``reference``'s lat/lon, with ``reference``'s exact coordinate values."""
    order = _grid_order(reference, other, what)
    if all(np.array_equal(order[d], np.arange(order[d].size)) for d in _SPACE):
        return other.assign_coords(lat=reference["lat"].values, lon=reference["lon"].values)
    return other.isel(order).assign_coords(lat=reference["lat"].values, lon=reference["lon"].values)


def _same_units(other: xr.Dataset, fc: xr.Dataset, names: Sequence[Hashable], what: str) -> xr.Dataset:
    """``other``'s variables in the forecast's units: converted when both are labelled, refused when they cannot be.

    A side without a ``units`` attribute is assumed to be in the other's units, with a warning.
    """
    from ..cf.units import _unit_key, between

    out = {}
    for name in names:
        fu, ou = fc[name].attrs.get("units"), other[name].attrs.get("units")
        if fu is None or ou is None:
            if (fu is None) != (ou is None):
                warnings.warn(
                    f"{name!r}: the {'forecast' if fu is None else what} has no units attribute; assumed to be in "
                    f"the {what if fu is None else 'forecast'}'s units {ou if fu is None else fu!r}",
                    XClimaxWarning, stacklevel=4,
                )
            continue
        if _unit_key(fu) == _unit_key(ou):
            continue
        conv = between(ou, fu)
        if conv is None:
            raise DataError(
                f"{name!r}: the forecast is in {fu!r} and the {what} in {ou!r}; expected the same units or units "
                f"that convert into each other (e.g. 'K' and 'degC'): fix the units attributes or convert first"
            )
        scale, offset, _ = conv
        logger.info("%s %r converted from %r to the forecast's %r", what, name, ou, fu)
        out[name] = (other[name] * scale + offset).assign_attrs({**other[name].attrs, "units": fu})
    return other.assign(out) if out else other


def lat_weights(lat: xr.DataArray | Sequence[float] | np.ndarray, *, flavour: str = "wb2") -> xr.DataArray:
    """Latitude weights normalised to mean 1 over the latitudes.

    Parameters
    ----------
    lat : array-like or DataArray
        Latitudes in degrees, in any order.
    flavour : {"wb2", "climax"}
        ``"wb2"``: area of each latitude band between the midpoints of neighbouring latitudes
        (outer bounds half a spacing beyond the first and last latitude, clipped to +-90), as
        WeatherBench 2. ``"climax"``: ``cos(lat)``, as ClimaX. Both agree on equally spaced,
        cell-centred grids.

    Returns
    -------
    DataArray
        Weights on a ``lat`` dimension (the input's dimension name when a DataArray is given).

    Examples
    --------
    >>> w = lat_weights([-45.0, 0.0, 45.0], flavour="climax")
    >>> w.values.round(4)
    array([0.8787, 1.2426, 0.8787])
    >>> float(w.mean())
    1.0
    """
    if flavour not in _FLAVOURS:
        raise ValueError(f"flavour must be one of {_FLAVOURS}; got {flavour!r}")
    da = lat if isinstance(lat, xr.DataArray) else xr.DataArray(np.asarray(lat, dtype=float), dims="lat")
    values = np.asarray(da.values, dtype=float)
    if values.ndim != 1 or values.size == 0 or np.abs(values).max() > 90:
        raise GridError(f"latitudes must be a non-empty 1-D array within [-90, 90]; got {values!r}")
    if flavour == "climax" or values.size == 1:
        w = np.cos(np.deg2rad(values))
    else:
        order = np.argsort(values)
        x = values[order]
        if np.any(np.diff(x) <= 0):
            raise GridError(f"latitudes must be unique; got {values!r}")
        bounds = np.concatenate([[x[0] - (x[1] - x[0]) / 2], (x[:-1] + x[1:]) / 2, [x[-1] + (x[-1] - x[-2]) / 2]])
        area = np.diff(np.sin(np.deg2rad(bounds.clip(-90, 90))))
        w = np.empty_like(area)
        w[order] = area
    if w.mean() <= 0:
        raise GridError(f"latitude weights sum to zero for latitudes {values!r}")
    return xr.DataArray(w / w.mean(), dims=da.dims, coords={da.dims[0]: da.values}, name="lat_weights")


def _wmean(x: xr.DataArray, dims: Sequence[Hashable], ok: xr.DataArray, latw: xr.DataArray | None = None) -> xr.DataArray:
    """Mean over ``dims`` weighted by ``ok`` (0/1 per pair) times ``latw`` when ``lat`` is averaged.

    NaNs in ``x`` propagate; elements with weight 0 are ignored; all-zero weights give NaN.
    """
    dims = [d for d in dims if d in x.dims]
    weight = ok * latw if (latw is not None and "lat" in dims) else ok
    num = (x.where(weight > 0, 0) * weight).sum(dims, skipna=False)
    wdims = [d for d in dims if d in weight.dims]
    den = weight.sum(wdims) * int(np.prod([x.sizes[d] for d in dims if d not in weight.dims]))
    return num / den.where(den > 0)


def _valid_times(fc: xr.Dataset) -> np.ndarray:
    lead = fc["lead_time"]
    if not np.issubdtype(lead.dtype, np.timedelta64):
        raise DataError(f"forecast lead_time must hold timedelta64 values; found dtype {lead.dtype}")
    return _time.add_leads(fc["time"].values, lead.values)  # in the forecast's calendar


def _match_times(valid: np.ndarray, truth_time: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    idx = _time.positions(valid, truth_time.values)  # DataError if the calendars differ or times repeat
    ok = idx >= 0
    if not ok.any():
        t = truth_time.values
        raise DataError(
            "no forecast valid time (time + lead_time) is in truth: forecast valid times span "
            f"{valid.min()} .. {valid.max()}, truth times span {t.min()} .. {t.max()}"
        )
    if not ok.all():
        logger.info("dropping %d of %d (time, lead_time) pairs whose valid time is not in truth", (~ok).sum(), ok.size)
    return np.where(ok, idx, 0), ok


def _select_like(other: xr.DataArray, fc_var: xr.DataArray, what: str, name: Hashable) -> xr.DataArray:
    """Select ``other`` at the forecast's values along shared non-spatial dims (level, ...)."""
    extra = [d for d in other.dims if d not in fc_var.dims and d not in ("time", "dayofyear", "hour")]
    if extra:
        raise DataError(f"{what} variable {name!r} has dims {extra} that the forecast variable lacks {fc_var.dims}")
    for dim in other.dims:
        if dim in _SPACE or dim in ("time", "dayofyear", "hour") or dim not in fc_var.coords:
            continue
        wanted = fc_var[dim].values
        missing = np.setdiff1d(wanted, other[dim].values) if dim in other.coords else wanted
        if missing.size:
            raise DataError(f"{what} variable {name!r} lacks {dim} values {missing.tolist()} found in the forecast")
        other = other.sel({dim: wanted})
    return other


def _take(obj: xr.DataArray | xr.Dataset, dim: Hashable, pos: np.ndarray, coords: dict) -> xr.DataArray | xr.Dataset:
    """``obj`` at integer positions ``pos[time, lead]`` along ``dim``, with dims ``(time, lead_time, ...)``.

    One orthogonal selection per lead time keeps dask chunks along time intact (a vectorised
    2-D selection would split them into single elements).
    """
    obj = obj.drop_vars([c for c in obj.coords if dim in obj[c].dims])
    parts = [obj.isel({dim: pos[:, j]}) for j in range(pos.shape[1])]
    out = xr.concat(parts, dim="lead_time", coords="minimal", compat="override", join="override")
    if dim != "time":
        out = out.rename({dim: "time"})
    return out.assign_coords(coords).transpose("time", "lead_time", ...)


def at_valid_times(clim: xr.DataArray | xr.Dataset, valid: np.ndarray, coords: dict, what: str = "climatology"):
    """Climatology at the valid times (dims ``time, lead_time, ...``), or as is when it has no time dims."""
    if "dayofyear" not in clim.dims:
        if "hour" in clim.dims:
            raise DataError(f"{what} has an 'hour' dimension but no 'dayofyear' dimension")
        return clim
    cal = clim["dayofyear"].attrs.get("calendar")
    if cal is not None:  # from xclimax.baselines.climatology: days of the year counted in that calendar
        _time.same_calendar(valid, cal, ("forecast valid", what))
    doy, hours = _time.dayofyear(valid).ravel(), _time.hour(valid).ravel()
    if "hour" in clim.dims:
        dim = "_dayofyear_hour"
        clim = clim.stack({dim: ("dayofyear", "hour")})
        index = pd.MultiIndex.from_arrays([clim["dayofyear"].values, clim["hour"].values])
        pos = index.get_indexer(pd.MultiIndex.from_arrays([doy, hours]))
    else:
        dim = "dayofyear"
        pos = pd.Index(clim["dayofyear"].values).get_indexer(doy)
    if (pos < 0).any():
        lacking = sorted({(d, h) if dim != "dayofyear" else d for d, h, p in zip(doy, hours, pos, strict=True) if p < 0})
        raise DataError(f"{what} lacks the (dayofyear{', hour' if dim != 'dayofyear' else ''}) values {lacking} "
                        "needed for the forecast valid times")
    return _take(clim, dim, pos.reshape(valid.shape), coords).drop_vars(["dayofyear", "hour"], errors="ignore")


def _units(attrs: dict, metric: str) -> str:
    units = attrs.get("units", "")
    if metric == "acc":
        return "1"
    if metric == "mse":
        return f"({units})^2" if units else ""
    return units


# --------------------------------------------------------------------------- public
def evaluate(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    metrics: str | Iterable[str] = ("rmse", "acc", "bias"),
    climatology: xr.Dataset | None = None,
    dims: str | Iterable[Hashable] | None = None,
    flavour: str = "wb2",
) -> xr.Dataset:
    """Latitude-weighted scores of a forecast against truth, aligned on valid time.

    The forecast at initial time ``t`` and lead ``L`` is compared with ``truth`` at ``t + L``;
    pairs whose valid time is not in ``truth`` are left out. The definitions are in the
    module docstring (``flavour="wb2"`` follows WeatherBench 2, ``"climax"`` the official
    ClimaX code). The result is lazy when the inputs are dask-backed.

    Parameters
    ----------
    forecast : Dataset
        Dims ``(*batch, "time", "lead_time", [level], lat, lon)``: initial times (datetime64 or
        cftime in any CF calendar; valid times are counted in it and must be in ``truth``'s
        calendar), timedelta64 lead times. Latitude/longitude may be named ``latitude``/``longitude``, in any order.
        Every data variable with both spatial dims is scored.
    truth : Dataset
        Dims ``("time", [level], lat, lon)`` with the forecast's variable names, on the same grid.
    metrics : str or iterable of str
        Any of ``"rmse"``, ``"mse"``, ``"mae"``, ``"bias"``, ``"acc"``. Or ClimateBench's
        ``"nrmse_s"``, ``"nrmse_g"``, ``"nrmse_t"`` for a climate projection (no ``lead_time``):
        computed over the whole time window of ``forecast`` by
        :func:`xclimax.scoring.climatebench.nrmse` (``climatology``, ``dims`` and ``flavour`` do
        not apply).
    climatology : Dataset, optional
        Used for ``"acc"`` anomalies: variables on a ``dayofyear`` (and optionally ``hour``)
        dimension, as :func:`xclimax.baselines.climatology` makes, or without time dims (a
        static field). Default: the time mean of ``truth`` over the evaluated valid times,
        which is what ClimaX uses; with ``flavour="wb2"`` this default warns, because WB2 uses a
        day-of-year climatology.
    dims : str or iterable of str, optional
        Dims to average over; default ``("time", lat, lon)``. For instance
        ``dims=("lat", "lon")`` gives scores per initial time and ``dims=("time",)`` per grid
        point. Any batch dim (ensemble member, ...) may be added. ``flavour="climax"`` needs
        both spatial dims.
    flavour : {"wb2", "climax"}
        Which definitions to follow.

    Returns
    -------
    Dataset
        One data variable per scored variable, with a leading ``metric`` dimension (coordinate
        = the metric names) followed by the dims that were not averaged (``lead_time``, level,
        batch dims). Each variable's attrs hold ``<metric>_units`` (the variable's units for
        ``rmse``/``mae``/``bias``, ``"1"`` for ``acc``), and ``units`` when all requested
        metrics share the same units. Select one metric with ``scores.sel(metric="rmse")``.

    Raises
    ------
    DataError
        A forecast variable is missing from ``truth`` (or the climatology), no valid time
        overlaps, or the arguments are invalid.
    GridError
        The latitudes/longitudes of forecast and truth differ.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> from xclimax.baselines import persistence
    >>> truth = synthetic_dataset(8, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> fc = persistence(truth, ["6h", "12h"])
    >>> scores = evaluate(fc, truth, metrics=["rmse", "bias"])
    >>> scores["2m_temperature"].dims
    ('metric', 'lead_time')
    >>> scores["2m_temperature"].attrs["units"]
    'K'
    >>> bool((scores["2m_temperature"].sel(metric="rmse") > 0).all())
    True
    """
    if flavour not in _FLAVOURS:
        raise DataError(f"flavour must be one of {_FLAVOURS}; got {flavour!r}")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if any(str(m).startswith("nrmse") for m in metrics):  # ClimateBench scores of a climate projection
        from .climatebench import nrmse

        return nrmse(forecast, truth, metrics=metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics or len(set(metrics)) != len(metrics):
        raise DataError(f"metrics must be distinct names from {METRICS}; got {metrics}")

    fc, fc_info = standardise(forecast, "forecast")
    fc_names = {"lat": fc_info.lat_name, "lon": fc_info.lon_name}
    tr, _ = standardise(truth, "truth")
    for what, obj, need in (("forecast", fc, ("time", "lead_time")), ("truth", tr, ("time",))):
        missing_dims = [d for d in need if d not in obj.dims]
        if missing_dims:
            raise DataError(f"{what} needs dims {list(need)}; it lacks {missing_dims} (found {list(obj.dims)})")
    names = [v for v in fc.data_vars if set(_SPACE) <= set(fc[v].dims)]
    if not names:
        raise DataError(f"forecast has no data variable with lat and lon dims; found {list(fc.data_vars)}")
    absent = [v for v in names if v not in tr.data_vars]
    if absent:
        raise DataError(f"truth lacks forecast variables {absent}; truth has {list(tr.data_vars)}")
    no_time = [v for v in names if "time" not in tr[v].dims]
    if no_time:
        raise DataError(f"truth variables {no_time} have no time dimension")

    back = {v: k for k, v in fc_names.items()}
    if dims is None:
        dims = ("time", "lat", "lon")
    dims = [back.get(d, d) for d in ([dims] if isinstance(dims, str) else list(dims))]
    unknown_dims = [d for d in dims if d not in fc.dims]
    if unknown_dims or not dims:
        raise DataError(f"dims must be dims of the forecast {list(fc.dims)}; got {dims}")
    space = [d for d in dims if d in _SPACE]
    sample = [d for d in dims if d not in _SPACE]
    if flavour == "climax" and len(space) != 2:
        raise DataError(f"flavour='climax' averages over space: dims must include lat and lon; got {dims}")

    tr = _same_units(_on_grid(tr[names], fc, "truth"), fc, names, "truth")
    valid = _valid_times(fc)
    idx, ok_np = _match_times(valid, tr["time"])
    tc = {"time": fc["time"], "lead_time": fc["lead_time"]}
    ok = xr.DataArray(ok_np, dims=("time", "lead_time"), coords=tc)
    latw = lat_weights(fc["lat"], flavour=flavour)

    clim_kind = None
    if "acc" in metrics:
        if climatology is None:
            clim_kind = "time mean of truth over the evaluated valid times"
            if flavour == "wb2":
                warnings.warn(
                    "ACC without a climatology uses the time mean of truth over the evaluated period (as ClimaX); "
                    "WeatherBench 2 uses a day-of-year climatology: pass "
                    "climatology=xclimax.baselines.climatology(training_data)",
                    XClimaxWarning,
                    stacklevel=2,
                )
        else:
            clim_ds, _ = standardise(climatology, "climatology")
            absent = [v for v in names if v not in clim_ds.data_vars]
            if absent:
                raise DataError(f"climatology lacks forecast variables {absent}; it has {list(clim_ds.data_vars)}")
            clim_ds = _same_units(_on_grid(clim_ds[names], fc, "climatology"), fc, names, "climatology")
            clim_kind = ", ".join(d for d in ("dayofyear", "hour") if d in clim_ds.dims) or "static"

    used = np.unique(idx[ok_np])
    valid_ok = np.where(ok_np, valid, valid[ok_np][0])  # dropped pairs need no climatology
    out = {}
    for name in names:
        f = fc[name]
        t = _select_like(tr[name].drop_vars([c for c in tr[name].coords if c not in tr[name].dims]), f, "truth", name)
        t = _take(t, "time", idx, tc)
        results = {}
        err = f - t
        if {"mse", "rmse"} & set(metrics):
            mse = _wmean(err**2, dims, ok, latw)
            results["mse"] = mse
            if flavour == "wb2":
                results["rmse"] = np.sqrt(mse)
            else:
                results["rmse"] = _wmean(np.sqrt(_wmean(err**2, space, ok, latw)), sample, ok)
        if "mae" in metrics:
            results["mae"] = _wmean(abs(err), dims, ok, latw)
        if "bias" in metrics:
            results["bias"] = _wmean(err, dims, ok, latw)
        if "acc" in metrics:
            if climatology is None:
                c = _select_like(tr[name], f, "truth", name).isel(time=used).mean("time")
            else:
                c = at_valid_times(_select_like(clim_ds[name], f, "climatology", name), valid_ok, tc)
            fa, ta = f - c, t - c
            if flavour == "climax":
                fa = fa - _wmean(fa, dims, ok)
                ta = ta - _wmean(ta, dims, ok)
                pooled = dims
            else:
                pooled = space or sample
            norm = np.sqrt(_wmean(fa**2, pooled, ok, latw) * _wmean(ta**2, pooled, ok, latw))
            acc = _wmean(fa * ta, pooled, ok, latw) / norm.where(norm > 0)  # no anomalies: NaN
            results["acc"] = _wmean(acc, sample, ok) if (flavour == "wb2" and space) else acc
        attrs = dict(f.attrs) or dict(truth[name].attrs)
        da = xr.concat([results[m].drop_vars("valid_time", errors="ignore") for m in metrics], dim="metric",
                       coords="minimal", compat="override", join="outer")
        da = da.assign_coords(metric=list(metrics))
        da = da.transpose("metric", *[d for d in f.dims if d in da.dims])
        units = {m: _units(attrs, m) for m in metrics}
        da.attrs = {f"{m}_units": u for m, u in units.items()}
        if len(set(units.values())) == 1:
            da.attrs["units"] = units[metrics[0]]
        if "long_name" in attrs:
            da.attrs["long_name"] = f"scores of {attrs['long_name']}"
        out[name] = da
    result = xr.Dataset(out)
    if set(_SPACE) <= set(result.dims):
        result = restore_grid(result, fc_info)
    else:
        result = result.rename({k: v for k, v in fc_names.items() if k in result.dims and k != v})
    result.attrs = {
        "flavour": flavour,
        "averaged_over": " ".join(str(fc_names.get(d, d)) for d in dims),
    }
    if forecast.attrs.get("forecast") or forecast.attrs.get("title"):  # names the forecast in plots
        result.attrs["forecast"] = str(forecast.attrs.get("forecast") or forecast.attrs.get("title"))
    if clim_kind:
        result.attrs["climatology"] = clim_kind
    return result
