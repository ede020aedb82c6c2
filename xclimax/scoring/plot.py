"""Figures for forecasts and scores: maps, error against lead time, scorecards.

The functions follow xarray's plotting conventions: they draw with pyplot, on the current
figure when it is still empty (so ``plt.figure(figsize=...)`` before the call sizes it) or on a
new one, which becomes the current figure; so ``plt.savefig("maps.png")`` after
``xclimax.plot.maps(...)`` saves it, and Jupyter shows it. Pass ``fig=`` to draw on a figure of
your own (e.g. one made without pyplot). Like :class:`xarray.plot.FacetGrid`, they return a
:class:`Panels` object holding the figure (``.fig``), the panel axes (``.axs``) and the colour
bars; any other attribute (``savefig``, ``suptitle``, ...) is the figure's.

Maps use cartopy for coastlines when it is installed, plain longitude/latitude axes otherwise.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..cf import time as _time
from ..cf.time import as_lead_times
from ..exceptions import DataError
from .metrics import standardise

__all__ = ["Panels", "maps", "error_vs_lead", "scorecard"]

_LOWER_IS_BETTER = {"rmse": True, "mse": True, "mae": True, "bias": True, "acc": False}
#: metrics compared as a difference (they are bounded, a ratio means nothing); the others in %
_AS_DIFFERENCE = ("acc",)
_MINUS = "\N{MINUS SIGN}"


class Panels:
    """The result of a plot function, in the manner of :class:`xarray.plot.FacetGrid`.

    Attributes
    ----------
    fig : matplotlib.figure.Figure
        The figure drawn on (also ``figure``).
    axs : numpy.ndarray of Axes
        The panels, shaped like their grid (rows, columns).
    axes : list of Axes
        The panels in reading order (colour bars excluded).
    cbars : list of Colorbar
        The colour bars.

    Any other attribute is looked up on the figure, so ``panels.savefig("out.png")`` works.
    """

    def __init__(self, fig: Figure, axs: np.ndarray, cbars: list | None = None) -> None:
        self.fig = fig
        self.axs = np.asarray(axs, dtype=object).reshape(np.shape(axs) if np.ndim(axs) == 2 else (1, -1))
        self.cbars = list(cbars or [])

    @property
    def figure(self) -> Figure:
        """The figure (as ``fig``)."""
        return self.fig

    @property
    def axes(self) -> list:
        """The panel axes in reading order."""
        return [ax for ax in self.axs.ravel() if ax is not None]

    def __getattr__(self, name: str) -> Any:
        if name in ("fig", "axs", "cbars"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.fig, name)

    def __repr__(self) -> str:
        return f"<xclimax.plot.Panels: {len(self.axes)} panel(s) on {self.fig!r}>"

    def _repr_html_(self) -> str | None:  # let Jupyter show the figure, not the repr
        return None


def _figure(fig: Figure | None, size: tuple[float, float]) -> Figure:
    """``fig``, else pyplot's current figure when it is empty, else a new pyplot figure."""
    if fig is not None:
        if not isinstance(fig, Figure):
            raise DataError(f"fig must be a matplotlib Figure; got {type(fig).__name__}")
        fig.clear()
        return fig
    import matplotlib.pyplot as plt

    if plt.get_fignums():
        current = plt.gcf()
        if not current.get_axes() and not current.texts:
            if tuple(current.get_size_inches()) == tuple(plt.rcParams["figure.figsize"]):
                current.set_size_inches(size)  # not sized by the user: size it to its content
            current.set_layout_engine("constrained")
            return current
    return plt.figure(figsize=size, layout="constrained")


def _has_cartopy() -> bool:
    return importlib.util.find_spec("cartopy") is not None


def _lead_label(lead: np.timedelta64) -> str:
    """A lead time in whole days ("3 d") when it is one, else in hours ("6 h", "36 h")."""
    minutes = pd.Timedelta(lead) / pd.Timedelta("1min")
    hours = minutes / 60
    if hours >= 24 and hours % 24 == 0:
        return f"{hours / 24:.0f} d"
    if hours == int(hours):
        return f"{hours:.0f} h"
    return f"{int(hours)} h {minutes - 60 * int(hours):.0f} min"


def _level_text(coord: xr.DataArray | None, value: Any, dim: Hashable) -> str:
    """``500 hPa`` for a pressure level (hPa or Pa), ``value units`` or ``dim=value`` otherwise."""
    units = str(coord.attrs.get("units", "")).strip() if coord is not None else ""
    if isinstance(value, (str, bytes, np.str_)):
        return f"{dim}={value}"
    number = float(value)
    key = units.lower()
    if key in ("pa", "pascal", "pascals") or (not units and dim == "plev"):
        return f"{number / 100:g} hPa"
    if key in ("hpa", "mbar", "millibar", "millibars", "mb") or (not units and dim in ("level", "isobaricInhPa",
                                                                                        "pressure_level")):
        return f"{number:g} hPa"
    if units:
        return f"{number:g} {units}"
    return f"{dim}={number:g}"


def _field(da: xr.DataArray, level: Any, what: str) -> tuple[xr.DataArray, str]:
    """Reduce ``da`` to a (lat, lon) field: select ``level``, squeeze size-1 dims, sort lat; and the level's label."""
    extra = [d for d in da.dims if d not in ("lat", "lon")]
    label = ""
    if level is not None:
        level_dims = [d for d in extra if d in da.coords and np.isin(level, da[d].values).item()]
        if not level_dims:
            raise DataError(f"{what}: no dimension of {da.dims} has the level value {level!r}")
        label = _level_text(da[level_dims[0]], level, level_dims[0])
        da = da.sel({level_dims[0]: level})
        extra = [d for d in da.dims if d not in ("lat", "lon")]
    da = da.squeeze([d for d in extra if da.sizes[d] == 1], drop=True)
    extra = [d for d in da.dims if d not in ("lat", "lon")]
    if extra:
        raise DataError(f"{what} has dims {extra} besides lat/lon: pass level=... or select them first (.sel/.isel)")
    return da.sortby("lat").transpose("lat", "lon"), label


def maps(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variable: Hashable,
    *,
    lead_time: Any,
    time: Any = None,
    level: Any = None,
    fig: Figure | None = None,
) -> Panels:
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
    time : str, datetime-like or cftime, optional
        Initial time, read in the forecast's calendar (``"2000-02-30"`` exists in a ``360_day``
        one); default the first one.
    level : optional
        Value of the level dimension, required when the variable has several levels.
    fig : matplotlib.figure.Figure, optional
        Figure to draw on; default pyplot's current figure when empty, else a new one.

    Returns
    -------
    Panels
        Three panels (forecast, truth, forecast − truth) with colour bars; forecast and truth
        share one colour scale, the error uses a diverging one centred on zero.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from xclimax.testing import synthetic_dataset
    >>> from xclimax.scoring.baselines import persistence
    >>> truth = synthetic_dataset(4, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> panels = maps(persistence(truth, "6h"), truth, "2m_temperature", lead_time="6h")
    >>> [ax.get_title().splitlines()[0] for ax in panels.axes]
    ['forecast', 'truth', 'forecast − truth']
    >>> panels.fig is plt.gcf()  # plt.savefig(...) saves it
    True
    >>> plt.close("all")
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
    _time.same_calendar(f["time"].values[:1], tr["time"].values[:1])
    init = f["time"].values[0] if time is None else _time.as_time(time, f["time"].values)  # in the data's calendar
    try:
        f = f.sel(time=init, lead_time=lead[0])
    except KeyError as err:
        raise DataError(f"forecast has no initial time {init} with lead time {lead[0]}") from err
    valid = _time.add_leads(np.array([init]), lead)[0, 0]
    try:
        t = tr[variable].sel(time=valid)
    except KeyError as err:
        raise DataError(f"truth has no time {valid} (the valid time of the forecast)") from err
    f, level_label = _field(f.drop_vars("valid_time", errors="ignore"), level, "forecast")
    t, _ = _field(t, level, "truth")
    if f.shape != t.shape or not (np.allclose(f.lat, t.lat) and np.allclose(f.lon, t.lon)):
        raise DataError("forecast and truth are on different grids; regrid one of them first")
    f, t = f.compute(), t.compute()
    err = f - t.values
    units = f.attrs.get("units", t.attrs.get("units", ""))
    name = f.attrs.get("long_name", str(variable))
    if level_label:
        name = f"{name}, {level_label}"
    vmin = float(min(f.min(), t.min()))
    vmax = float(max(f.max(), t.max()))
    emax = float(abs(err).max()) or 1.0

    fig = _figure(fig, (15, 4.2))
    kw: dict[str, Any] = {}
    if _has_cartopy():
        import cartopy.crs as ccrs

        kw["projection"] = ccrs.PlateCarree(central_longitude=180)
    axes = [fig.add_subplot(1, 3, i + 1, **kw) for i in range(3)]
    suffix = f" [{units}]" if units else ""
    panels = (
        ("forecast", f.values, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
        ("truth", t.values, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
        (f"forecast {_MINUS} truth", err.values, dict(cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -emax, emax))),
    )
    cbars = []
    for ax, (title, values, style) in zip(axes, panels, strict=True):
        if kw:
            import cartopy.crs as ccrs

            mesh = ax.pcolormesh(f.lon, f.lat, values, transform=ccrs.PlateCarree(), shading="nearest", **style)
            ax.coastlines(linewidth=0.5)
        else:
            mesh = ax.pcolormesh(f.lon, f.lat, values, shading="nearest", **style)
            ax.set_xlabel("longitude [°E]")
            ax.set_ylabel("latitude [°N]")
        cbars.append(fig.colorbar(mesh, ax=ax, orientation="horizontal", label=f"{variable}{suffix}", shrink=0.9))
        ax.set_title(f"{title}\n{name}{suffix}", fontsize=10)
    level_text = f", {level_label}" if level_label else ""
    fig.suptitle(
        f"{variable}{level_text}: init {_time.format_time(init)}, lead {_lead_label(lead[0])}, "
        f"valid {_time.format_time(valid)}"
    )
    if not kw:
        fig.text(0.005, 0.005, "install cartopy for coastlines", ha="left", va="bottom", fontsize=7, color="0.4")
    return Panels(fig, np.array([axes], dtype=object), cbars)


def _series(
    scores: xr.Dataset, metric: str, variables: Iterable[Hashable] | None, what: str
) -> dict[str, tuple[Hashable, xr.DataArray]]:
    """``{label: (variable, 1-D DataArray over lead_time)}`` for each variable (and level) of ``scores``."""
    if not isinstance(scores, xr.Dataset):
        raise DataError(f"{what} must be an xarray.Dataset from xclimax.evaluate; got {type(scores).__name__}")
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
            coord = da[extra[0]] if extra[0] in da.coords else None
            for value in da[extra[0]].values:
                out[f"{name} {_level_text(coord, value, extra[0])}"] = (name, da.sel({extra[0]: value}))
        else:
            out[str(name)] = (name, da)
    return out


def _hours(lead: xr.DataArray) -> np.ndarray:
    return np.asarray(lead.values / np.timedelta64(1, "h"), dtype=float)


def _lead_axis(ax: Any, in_days: bool) -> None:
    """At most 8 ticks at whole days (``"3 d"``) or whole hours (``"18 h"``), evenly spaced."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    unit = "d" if in_days else "h"
    steps = [1, 2, 5, 10] if in_days else [1, 2, 3, 6, 10]
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, steps=steps, min_n_ticks=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0f} {unit}"))


def error_vs_lead(
    scores: xr.Dataset,
    *,
    metric: str = "rmse",
    variables: Iterable[Hashable] | None = None,
    baselines: Mapping[str, xr.Dataset] | None = None,
    label: str | None = None,
    fig: Figure | None = None,
) -> Panels:
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
    label : str, optional
        Legend label of ``scores`` (default: its ``forecast`` attribute, else "forecast").
    fig : matplotlib.figure.Figure, optional
        As in :func:`maps`.

    Returns
    -------
    Panels

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from xclimax.testing import synthetic_dataset
    >>> from xclimax.scoring.baselines import persistence
    >>> truth = synthetic_dataset(8, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> scores = xclimax.evaluate(persistence(truth, ["6h", "12h"]), truth, metrics="rmse")
    >>> panels = error_vs_lead(scores)
    >>> panels.axes[0].get_ylabel(), panels.axes[0].get_xlabel()
    ('rmse [K]', 'lead time [hours]')
    >>> plt.close("all")
    """
    series = _series(scores, metric, variables, "scores")
    refs = {name: _series(ref, metric, None, f"baseline {name!r}") for name, ref in (baselines or {}).items()}
    label = label or scores.attrs.get("forecast") or "forecast"
    ncol = min(len(series), 3)
    nrow = -(-len(series) // ncol)
    fig = _figure(fig, (4.5 * ncol, 3.5 * nrow))
    hours_all = np.concatenate([_hours(s["lead_time"]) for _, s in series.values()])
    in_days = hours_all.max() >= 72
    scale, xunit = (24.0, "days") if in_days else (1.0, "hours")
    axs = np.full((nrow, ncol), None, dtype=object)
    for i, (title, (name, da)) in enumerate(series.items()):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        axs[i // ncol, i % ncol] = ax
        ax.plot(_hours(da["lead_time"]) / scale, da.values, "o-", label=label)
        for ref_label, ref_series in refs.items():
            if title in ref_series:
                r = ref_series[title][1]
                ax.plot(_hours(r["lead_time"]) / scale, r.values, "s--", label=ref_label)
        units = scores[name].attrs.get(f"{metric}_units", "")
        ax.set_title(title)
        ax.set_xlabel(f"lead time [{xunit}]")
        ax.set_ylabel(f"{metric} [{units}]" if units else metric)
        _lead_axis(ax, in_days)
        ax.grid(alpha=0.3)
        if refs:
            ax.legend(fontsize=8)
    return Panels(fig, axs)


def _cell_text(value: float, as_difference: bool) -> str:
    if not np.isfinite(value):
        return ""
    if as_difference:
        text = f"{value:+.2f}"
    elif abs(value) >= 99.5:
        text = f"{value:+.0f}"
    else:
        text = f"{value:+.1f}"
    return text.replace("-", _MINUS)


def scorecard(
    scores: xr.Dataset,
    reference: xr.Dataset,
    *,
    metric: str = "rmse",
    label: str | None = None,
    reference_label: str | None = None,
    fig: Figure | None = None,
) -> Panels:
    """WeatherBench-style scorecard of ``scores`` against ``reference``, sized to its rows and columns.

    Rows are variables (and levels, labelled ``500 hPa``), columns lead times (whole hours or
    days). Error metrics (``rmse``, ``mse``, ``mae``, ``bias``) show the % difference
    ``100 * (score - reference) / |reference|`` (for ``bias`` of the absolute values); ``acc``,
    bounded by 1, shows the plain difference ``acc - acc_reference``. The colour says whether
    that is better (green) or worse (purple). Only variables and lead times present in both are
    shown. The figure is readable from 1 to 40 rows and up to about 20 lead times.

    Parameters
    ----------
    scores, reference : Dataset
        Outputs of :func:`xclimax.evaluate`.
    metric : str
        Metric to compare.
    label, reference_label : str, optional
        Names of the two forecasts in the title (default: the ``forecast`` attribute that
        :func:`xclimax.evaluate` copies from each forecast, else "forecast" / "reference").
    fig : matplotlib.figure.Figure, optional
        As in :func:`maps`.

    Returns
    -------
    Panels
        One panel; its colour mesh holds the signed improvement (positive = better), clipped to
        the 95th percentile of its magnitude (the cells show the values themselves).

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from xclimax.testing import synthetic_dataset
    >>> from xclimax.scoring.baselines import climatology, climatology_forecast, persistence
    >>> truth = synthetic_dataset(8, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> s = xclimax.evaluate(persistence(truth, ["6h", "12h"]), truth, metrics="rmse")
    >>> ref = xclimax.evaluate(climatology_forecast(climatology(truth, by="mean"), truth.time, ["6h", "12h"]),
    ...                        truth, metrics="rmse")
    >>> card = scorecard(s, ref)
    >>> print(card.axes[0].get_title())
    RMSE: persistence against climatology
    % difference (green = better)
    >>> plt.close("all")
    """
    if metric not in _LOWER_IS_BETTER:
        raise DataError(f"metric must be one of {sorted(_LOWER_IS_BETTER)}; got {metric!r}")
    model = _series(scores, metric, None, "scores")
    ref = _series(reference, metric, None, "reference")
    rows = [name for name in model if name in ref]
    if not rows:
        raise DataError(f"scores and reference share no variable: {list(model)} vs {list(ref)}")
    leads = np.intersect1d(
        np.concatenate([model[r][1]["lead_time"].values for r in rows]),
        np.concatenate([ref[r][1]["lead_time"].values for r in rows]),
    )
    if not leads.size:
        raise DataError("scores and reference share no lead time")
    label = label or scores.attrs.get("forecast") or "forecast"
    reference_label = reference_label or reference.attrs.get("forecast") or "reference"
    as_difference = metric in _AS_DIFFERENCE
    lower = _LOWER_IS_BETTER[metric]
    change = np.full((len(rows), leads.size), np.nan)
    for i, name in enumerate(rows):
        m = model[name][1].reindex(lead_time=leads).values.astype(float)
        r = ref[name][1].reindex(lead_time=leads).values.astype(float)
        if metric == "bias":
            m, r = np.abs(m), np.abs(r)
        with np.errstate(divide="ignore", invalid="ignore"):
            change[i] = m - r if as_difference else 100.0 * (m - r) / np.abs(r)
    better = -change if lower else change

    n_rows, n_cols = len(rows), leads.size
    label_width = 0.075 * max(len(r) for r in rows) + 0.3  # inches for the row labels
    cell_w = 0.62 if not as_difference else 0.66
    cell_h = 0.3
    width = max(label_width + n_cols * cell_w + 1.3, 5.0)
    title = (f"{metric.upper()}: {label} against {reference_label}\n"
             f"{'difference' if as_difference else '% difference'} (green = better)")
    title_lines = [textwrap.fill(line, width=max(30, int((width - 0.4) * 10))) for line in title.splitlines()]
    title = "\n".join(title_lines)
    height = max(1.3 + n_rows * cell_h + 0.2 * title.count("\n"), 2.6)
    fig = _figure(fig, (width, height))
    ax = fig.add_subplot()
    finite = np.isfinite(better)
    # colour limit: the 95th percentile of |improvement|, so that one outlier does not wash out the rest
    top = float(np.nanmax(np.abs(better))) if finite.any() else 1.0
    lim = float(np.nanpercentile(np.abs(better[finite]), 95)) if finite.any() else 1.0
    lim = lim or top or 1.0
    mesh = ax.pcolormesh(np.clip(better, -lim, lim), cmap="PiYG", vmin=-lim, vmax=lim, edgecolors="white",
                         linewidth=0.5)
    fontsize = 8 if n_rows <= 25 else 7
    for (i, j), value in np.ndenumerate(change):
        shade = min(abs(better[i, j]) / lim, 1.0) if np.isfinite(better[i, j]) else 0.0
        ax.text(j + 0.5, i + 0.5, _cell_text(value, as_difference), ha="center", va="center", fontsize=fontsize,
                color="white" if shade > 0.6 else "black")
    xlabels = [_lead_label(x) for x in leads]
    ax.set_xticks(np.arange(n_cols) + 0.5, xlabels, fontsize=8, rotation=45 if n_cols > 12 else 0,
                  ha="right" if n_cols > 12 else "center")
    ax.set_yticks(np.arange(n_rows) + 0.5, rows, fontsize=fontsize + 1)
    ax.tick_params(length=0)
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_rows, 0)
    ax.set_xlabel("lead time")
    ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(mesh, ax=ax, shrink=min(1.0, 0.9 if n_rows > 3 else 1.0), aspect=max(8, 2 * n_rows),
                        label="improvement" + ("" if as_difference else " [%]"), extend="both" if top > lim else "neither")
    return Panels(fig, np.array([[ax]], dtype=object), [cbar])
