"""Figures for forecasts and scores: maps, error against lead time, scorecards.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, any backend): it displays in Jupyter, and ``fig.savefig(...)`` writes it. Maps use
cartopy for coastlines when it is installed, plain longitude/latitude axes otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..cf.time import as_lead_times
from ..exceptions import DataError
from .metrics import standardise

__all__ = ["maps", "error_vs_lead", "scorecard"]

_LOWER_IS_BETTER = {"rmse": True, "mse": True, "mae": True, "bias": True, "acc": False}


def _has_cartopy() -> bool:
    return importlib.util.find_spec("cartopy") is not None


def _lead_label(lead: np.timedelta64) -> str:
    hours = lead / np.timedelta64(1, "h")
    return f"{hours / 24:g} d" if hours % 24 == 0 and hours >= 24 else f"{hours:g} h"


def _field(da: xr.DataArray, level: Any, what: str) -> xr.DataArray:
    """Reduce ``da`` to a (lat, lon) field: select ``level``, squeeze size-1 dims, sort lat."""
    extra = [d for d in da.dims if d not in ("lat", "lon")]
    if level is not None:
        level_dims = [d for d in extra if d in da.coords and np.isin(level, da[d].values).item()]
        if not level_dims:
            raise DataError(f"{what}: no dimension of {da.dims} has the level value {level!r}")
        da = da.sel({level_dims[0]: level})
        extra = [d for d in da.dims if d not in ("lat", "lon")]
    da = da.squeeze([d for d in extra if da.sizes[d] == 1], drop=True)
    extra = [d for d in da.dims if d not in ("lat", "lon")]
    if extra:
        raise DataError(f"{what} has dims {extra} besides lat/lon: pass level=... or select them first (.sel/.isel)")
    return da.sortby("lat").transpose("lat", "lon")


def maps(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variable: Hashable,
    *,
    lead_time: Any,
    time: Any = None,
    level: Any = None,
) -> Figure:
    """Forecast, truth and error maps of one variable at one initial time and lead time.

    Parameters
    ----------
    forecast : Dataset
        Forecast layout (``time``, ``lead_time``, [level], lat, lon), as :func:`xclimax.forecast`.
    truth : Dataset
        Observations with a ``time`` dimension; taken at the valid time ``time + lead_time``.
    variable : str
        Variable to show.
    lead_time : str or timedelta-like
        Lead time to show (one value).
    time : datetime-like, optional
        Initial time; default the first one.
    level : optional
        Value of the level dimension, required when the variable has several levels.

    Returns
    -------
    Figure
        Three panels (forecast, truth, forecast - truth) with colour bars; forecast and truth
        share one colour scale, the error uses a diverging one centred on zero.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> from xclimax.baselines import persistence
    >>> truth = synthetic_dataset(4, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> fig = maps(persistence(truth, "6h"), truth, "2m_temperature", lead_time="6h")
    >>> [ax.get_title().splitlines()[0] for ax in fig.axes[:3]]
    ['forecast', 'truth', 'forecast - truth']
    """
    fc, _ = standardise(forecast, "forecast")
    tr, _ = standardise(truth, "truth")
    for what, ds in (("forecast", fc), ("truth", tr)):
        if variable not in ds.data_vars:
            raise DataError(f"{what} has no variable {variable!r}; it has {list(ds.data_vars)}")
    lead = as_lead_times(lead_time)
    if lead.size != 1:
        raise DataError(f"maps shows one lead time; got {lead.size}")
    f = fc[variable]
    init = f["time"].values[0] if time is None else np.datetime64(pd.Timestamp(time), "ns")
    try:
        f = f.sel(time=init, lead_time=lead[0])
    except KeyError as err:
        raise DataError(f"forecast has no initial time {init} with lead time {lead[0]}") from err
    valid = np.datetime64(pd.Timestamp(init) + pd.Timedelta(lead[0]), "ns")
    try:
        t = tr[variable].sel(time=valid)
    except KeyError as err:
        raise DataError(f"truth has no time {valid} (the valid time of the forecast)") from err
    f = _field(f.drop_vars("valid_time", errors="ignore"), level, "forecast")
    t = _field(t, level, "truth")
    if f.shape != t.shape or not (np.allclose(f.lat, t.lat) and np.allclose(f.lon, t.lon)):
        raise DataError("forecast and truth are on different grids; regrid one of them first")
    f, t = f.compute(), t.compute()
    err = f - t.values
    units = f.attrs.get("units", t.attrs.get("units", ""))
    name = f.attrs.get("long_name", str(variable))
    vmin = float(min(f.min(), t.min()))
    vmax = float(max(f.max(), t.max()))
    emax = float(abs(err).max()) or 1.0

    fig = Figure(figsize=(15, 4), layout="constrained")
    kw: dict[str, Any] = {}
    if _has_cartopy():
        import cartopy.crs as ccrs

        kw["projection"] = ccrs.PlateCarree(central_longitude=180)
    axes = [fig.add_subplot(1, 3, i + 1, **kw) for i in range(3)]
    suffix = f" [{units}]" if units else ""
    panels = (
        ("forecast", f.values, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
        ("truth", t.values, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
        ("forecast - truth", err.values, dict(cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -emax, emax))),
    )
    for ax, (title, values, style) in zip(axes, panels, strict=True):
        if kw:
            import cartopy.crs as ccrs

            mesh = ax.pcolormesh(f.lon, f.lat, values, transform=ccrs.PlateCarree(), shading="nearest", **style)
            ax.coastlines(linewidth=0.5)
        else:
            mesh = ax.pcolormesh(f.lon, f.lat, values, shading="nearest", **style)
            ax.set_xlabel("longitude [°E]")
            ax.set_ylabel("latitude [°N]")
        fig.colorbar(mesh, ax=ax, orientation="horizontal", label=f"{variable}{suffix}", shrink=0.9)
        ax.set_title(f"{title}\n{name}{suffix}", fontsize=10)
    level_text = f", level {level}" if level is not None else ""
    fig.suptitle(
        f"{variable}{level_text}: init {pd.Timestamp(init):%Y-%m-%d %H:%M}, lead {_lead_label(lead[0])}, "
        f"valid {pd.Timestamp(valid):%Y-%m-%d %H:%M}"
    )
    if not kw:
        fig.text(0.995, 0.005, "install cartopy for coastlines", ha="right", va="bottom", fontsize=7, color="0.4")
    return fig


def _series(
    scores: xr.Dataset, metric: str, variables: Iterable[Hashable] | None, what: str
) -> dict[str, tuple[Hashable, xr.DataArray]]:
    """``{label: (variable, 1-D DataArray over lead_time)}`` for each variable (and level) of ``scores``."""
    if "metric" not in scores.dims or metric not in scores["metric"].values:
        found = list(scores["metric"].values) if "metric" in scores.coords else "no metric dimension"
        raise DataError(f"{what} has no metric {metric!r}; found {found}")
    if "lead_time" not in scores.dims:
        raise DataError(f"{what} needs a lead_time dimension; found dims {list(scores.dims)}")
    names = list(scores.data_vars) if variables is None else list(variables)
    absent = [v for v in names if v not in scores.data_vars]
    if absent:
        raise DataError(f"{what} lacks variables {absent}; it has {list(scores.data_vars)}")
    out: dict[str, tuple[Hashable, xr.DataArray]] = {}
    for name in names:
        da = scores[name].sel(metric=metric, drop=True)
        extra = [d for d in da.dims if d != "lead_time"]
        if len(extra) > 1:
            raise DataError(f"{what}[{name!r}] has dims {extra} besides lead_time; select or average them first")
        if extra:
            for value in da[extra[0]].values:
                text = f"{value:g}" if np.issubdtype(type(value), np.number) else str(value)
                out[f"{name} {extra[0]}={text}"] = (name, da.sel({extra[0]: value}))
        else:
            out[str(name)] = (name, da)
    return out


def _hours(lead: xr.DataArray) -> np.ndarray:
    return np.asarray(lead.values / np.timedelta64(1, "h"), dtype=float)


def error_vs_lead(
    scores: xr.Dataset,
    *,
    metric: str = "rmse",
    variables: Iterable[Hashable] | None = None,
    baselines: Mapping[str, xr.Dataset] | None = None,
) -> Figure:
    """A score against lead time, one panel per variable (and level), baselines dashed.

    Parameters
    ----------
    scores : Dataset
        Output of :func:`xclimax.evaluate` with dims ``metric``, ``lead_time`` and at most one
        more (a level).
    metric : str
        Which metric to draw.
    variables : iterable of str, optional
        Variables to show; default all of ``scores``.
    baselines : mapping of str to Dataset, optional
        ``{label: scores}`` of reference forecasts (e.g. persistence), drawn dashed where they
        have the same variable.

    Returns
    -------
    Figure

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> from xclimax.baselines import persistence
    >>> truth = synthetic_dataset(8, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> scores = xclimax.evaluate(persistence(truth, ["6h", "12h"]), truth, metrics="rmse")
    >>> fig = error_vs_lead(scores)
    >>> fig.axes[0].get_ylabel()
    'rmse [K]'
    """
    series = _series(scores, metric, variables, "scores")
    refs = {label: _series(ref, metric, None, f"baseline {label!r}") for label, ref in (baselines or {}).items()}
    ncol = min(len(series), 3)
    nrow = -(-len(series) // ncol)
    fig = Figure(figsize=(4.5 * ncol, 3.5 * nrow), layout="constrained")
    in_days = all(_hours(s["lead_time"]).max() >= 72 for _, s in series.values())
    scale, xunit = (24.0, "d") if in_days else (1.0, "h")
    for i, (label, (name, da)) in enumerate(series.items()):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.plot(_hours(da["lead_time"]) / scale, da.values, "o-", label=scores.attrs.get("label", "forecast"))
        for ref_label, ref_series in refs.items():
            if label in ref_series:
                r = ref_series[label][1]
                ax.plot(_hours(r["lead_time"]) / scale, r.values, "s--", label=ref_label)
        units = scores[name].attrs.get(f"{metric}_units", "")
        ax.set_title(label)
        ax.set_xlabel(f"lead time [{xunit}]")
        ax.set_ylabel(f"{metric} [{units}]" if units else metric)
        ax.grid(alpha=0.3)
        if refs:
            ax.legend(fontsize=8)
    return fig


def scorecard(scores: xr.Dataset, reference: xr.Dataset, *, metric: str = "rmse") -> Figure:
    """WeatherBench-style scorecard: % difference of ``scores`` from ``reference``.

    Rows are variables (and levels), columns lead times. Each cell shows
    ``100 * (score - reference) / |reference|`` (for ``bias``, of the absolute values); the colour
    says whether that is better (green) or worse (purple): lower is better for errors, higher for
    ``acc``. Only variables and lead times present in both are shown.

    Parameters
    ----------
    scores, reference : Dataset
        Outputs of :func:`xclimax.evaluate`.
    metric : str
        Metric to compare.

    Returns
    -------
    Figure
        The colour mesh holds the signed improvement in % (positive = better).

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> from xclimax.baselines import climatology, climatology_forecast, persistence
    >>> truth = synthetic_dataset(8, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> s = xclimax.evaluate(persistence(truth, ["6h", "12h"]), truth, metrics="rmse")
    >>> ref = xclimax.evaluate(climatology_forecast(climatology(truth, by="mean"), truth.time, ["6h", "12h"]),
    ...                        truth, metrics="rmse")
    >>> fig = scorecard(s, ref)
    >>> fig.axes[0].get_title()
    'rmse: % difference from reference (green = better)'
    """
    model = _series(scores, metric, None, "scores")
    ref = _series(reference, metric, None, "reference")
    rows = [label for label in model if label in ref]
    if not rows:
        raise DataError(f"scores and reference share no variable: {list(model)} vs {list(ref)}")
    leads = np.intersect1d(
        np.concatenate([model[r][1]["lead_time"].values for r in rows]),
        np.concatenate([ref[r][1]["lead_time"].values for r in rows]),
    )
    if not leads.size:
        raise DataError("scores and reference share no lead time")
    lower = _LOWER_IS_BETTER[metric]
    pct = np.full((len(rows), leads.size), np.nan)
    for i, label in enumerate(rows):
        m = model[label][1].reindex(lead_time=leads).values
        r = ref[label][1].reindex(lead_time=leads).values
        if metric == "bias":
            m, r = np.abs(m), np.abs(r)
        with np.errstate(divide="ignore", invalid="ignore"):
            pct[i] = 100.0 * (m - r) / np.abs(r)
    better = -pct if lower else pct
    fig = Figure(figsize=(1.0 + 0.9 * leads.size, 1.2 + 0.45 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    lim = float(np.nanmax(np.abs(better))) if np.isfinite(better).any() else 1.0
    lim = lim or 1.0
    mesh = ax.pcolormesh(better, cmap="PiYG", vmin=-lim, vmax=lim, edgecolors="white", linewidth=0.5)
    for (i, j), value in np.ndenumerate(pct):
        ax.text(j + 0.5, i + 0.5, "" if np.isnan(value) else f"{value:+.1f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(np.arange(leads.size) + 0.5, [_lead_label(x) for x in leads])
    ax.set_yticks(np.arange(len(rows)) + 0.5, rows)
    ax.invert_yaxis()
    ax.set_xlabel("lead time")
    ax.set_title(f"{metric}: % difference from reference (green = better)")
    fig.colorbar(mesh, ax=ax, label="improvement [%]")
    return fig
