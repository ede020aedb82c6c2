"""Reference forecasts to score models against: persistence and climatology.

All functions return lazy objects on dask-backed input. Forecasts come in the layout of
:func:`xclimax.forecast` (dims ``(*batch, "time", "lead_time", ..., lat, lon)`` with a
``valid_time(time, lead_time)`` coordinate), so :func:`xclimax.evaluate` scores them like a
model forecast.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr

from ..cf import time as _time
from ..cf.time import as_lead_times
from ..exceptions import DataError
from .climatebench import mean_response, pattern_scaling  # climate-projection baselines
from .metrics import at_valid_times

__all__ = ["persistence", "climatology", "climatology_forecast", "as_lead_times", "mean_response", "pattern_scaling"]

logger = logging.getLogger(__name__)

_BY = ("dayofyear", "dayofyear_hour", "mean")


def _with_valid_time(fc: xr.Dataset) -> xr.Dataset:
    return fc.assign_coords(
        valid_time=_time.valid_times(fc["time"], fc["lead_time"]),  # in the calendar of the initial times
        lead_time=fc["lead_time"].assign_attrs(long_name="lead time"),
    )


def persistence(ds: xr.Dataset, lead_time: Any) -> xr.Dataset:
    """Persistence forecast: the state at the initial time, for every lead time.

    Parameters
    ----------
    ds : Dataset
        Data with a ``time`` dimension (datetime64 or cftime in any CF calendar); every time is
        used as an initial time and valid times are in its calendar. Variables without a
        ``time`` dimension (constants) are dropped.
    lead_time : str, timedelta-like, number of hours, a list of them, or a ``lead_time`` coordinate
        Lead time(s) of the forecast; a forecast's own ``fc.lead_time`` gives the reference for it.

    Returns
    -------
    Dataset
        Forecast layout: ``(*batch, "time", "lead_time", ...)`` with ``valid_time``.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(4, variables=["2m_temperature"], grid=(4, 8), constants=False)
    >>> fc = persistence(ds, ["6h", "1D"])
    >>> fc["2m_temperature"].dims
    ('time', 'lead_time', 'lat', 'lon')
    >>> str(fc.valid_time.values[0, 1])
    '2000-01-02T00:00:00.000000000'
    >>> persistence(ds, fc.lead_time).lead_time.equals(fc.lead_time)
    True
    """
    if isinstance(ds, xr.DataArray):
        raise DataError(f"persistence needs a Dataset with a 'time' dimension; got a DataArray: use "
                        f"da.to_dataset() (dims {list(ds.dims)})")
    if not isinstance(ds, xr.Dataset) or "time" not in ds.dims:
        raise DataError(f"persistence needs a Dataset with a 'time' dimension; got {type(ds).__name__}"
                        f" with dims {list(getattr(ds, 'dims', []))}")
    leads = as_lead_times(lead_time)
    names = [v for v in ds.data_vars if "time" in ds[v].dims]
    if not names:
        raise DataError(f"no data variable of ds has a 'time' dimension; found {list(ds.data_vars)}")
    lead = xr.DataArray(leads, dims="lead_time", coords={"lead_time": leads})
    out = {}
    for name in names:
        da = ds[name]
        dims = list(da.dims)
        dims.insert(dims.index("time") + 1, "lead_time")
        out[name] = da.expand_dims(lead_time=lead.size).assign_coords(lead_time=lead).transpose(*dims)
    fc = xr.Dataset(out, attrs={**ds.attrs, "forecast": "persistence"})
    return _with_valid_time(fc)


def climatology(ds: xr.Dataset, *, by: str = "dayofyear", smooth: int | None = None) -> xr.Dataset:
    """Climatological mean of ``ds``, usable as ``climatology=`` of :func:`xclimax.evaluate`.

    Parameters
    ----------
    ds : Dataset
        Data with a ``time`` dimension (for instance the training years), datetime64 or cftime in
        any CF calendar. Variables without a ``time`` dimension are dropped.
    by : {"dayofyear", "dayofyear_hour", "mean"}
        Mean per day of year (dim ``dayofyear``: 1..366, 1..365 for ``noleap`` data, 1..360 for
        ``360_day`` data; its ``calendar`` attribute names the calendar), per day of year and hour of day
        (dims ``dayofyear``, ``hour``), or over all times (no time dimension; ClimaX's choice).
    smooth : int, optional
        Width in days of a centred running mean over ``dayofyear``, applied cyclically to the
        per-day means (WeatherBench 2 uses 61 days). Days without data are filled from the
        days inside the window, so the result covers the whole calendar year when the data allow it.
        The per-day means get equal weight, which equals WB2's pooling over the window when
        every day holds the same number of samples.

    Returns
    -------
    Dataset
        The climatology, lazy on dask input, with the variables' attrs.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(12, variables=["2m_temperature"], grid=(4, 8), constants=False)
    >>> clim = climatology(ds, by="dayofyear_hour")
    >>> clim["2m_temperature"].dims
    ('dayofyear', 'hour', 'lat', 'lon')
    >>> clim.hour.values
    array([ 0,  6, 12, 18])
    """
    if by not in _BY:
        raise DataError(f"by must be one of {_BY}; got {by!r}")
    if not isinstance(ds, xr.Dataset) or "time" not in ds.dims:
        raise DataError("climatology needs a Dataset with a 'time' dimension")
    cal = _time.calendar(ds["time"])  # datetime64 or cftime of any CF calendar
    if smooth is not None and (by == "mean" or isinstance(smooth, bool) or not isinstance(smooth, (int, float, np.number))
                               or int(smooth) != smooth or smooth < 1):
        raise DataError(f"smooth must be a positive whole number of days used with a day-of-year climatology; "
                        f"got smooth={smooth!r} with by={by!r}")
    names = [v for v in ds.data_vars if "time" in ds[v].dims]
    if not names:
        raise DataError(f"no data variable of ds has a 'time' dimension; found {list(ds.data_vars)}")
    data = ds[names]
    if by == "mean":
        clim = data.mean("time", keep_attrs=True)
    elif by == "dayofyear":
        clim = data.groupby("time.dayofyear").mean("time", keep_attrs=True)
    else:
        hours = np.unique(data["time"].dt.hour.values)
        parts = [
            data.isel(time=np.flatnonzero(data["time"].dt.hour.values == h))
            .groupby("time.dayofyear")
            .mean("time", keep_attrs=True)
            for h in hours
        ]
        clim = xr.concat(parts, dim=xr.DataArray(hours, dims="hour", name="hour"), join="outer")
        clim = clim.transpose("dayofyear", "hour", ...)
    if smooth:
        clim = _smooth_dayofyear(clim, int(smooth), _time.days_in_year(cal))
    if "dayofyear" in clim.dims:  # days of the year counted in this calendar (1..360 in a 360_day one)
        clim["dayofyear"].attrs.update(long_name="day of the year", calendar=cal)
    for name in names:
        clim[name].attrs = dict(ds[name].attrs)
    clim.attrs = {**ds.attrs, "climatology": by + (f", {int(smooth)}-day running mean" if smooth else "")}
    return clim


def _smooth_dayofyear(clim: xr.Dataset, window: int, year: int = 366) -> xr.Dataset:
    """Centred running mean over a cyclic, complete ``dayofyear`` axis (1..``year``: 360, 365 or 366)."""
    full = clim.reindex(dayofyear=np.arange(1, year + 1))
    if clim.chunks:  # groupby leaves one chunk per day: one chunk over the year keeps the graph small
        full = full.chunk(dayofyear=-1)
    half = window // 2
    padded = xr.concat([full.isel(dayofyear=slice(-half, None)), full, full.isel(dayofyear=slice(None, half))]
                       if half else [full], dim="dayofyear")
    rolled = padded.rolling(dayofyear=window, center=True, min_periods=1).mean()
    out = rolled.isel(dayofyear=slice(half, half + year)).assign_coords(dayofyear=np.arange(1, year + 1))
    if clim.chunks:  # dask's rolling splits the other dims into tiny chunks: restore the input's
        out = out.chunk({d: c for d, c in clim.chunks.items() if d != "dayofyear"})
    return out


def climatology_forecast(clim: xr.Dataset, init_times: Iterable | xr.DataArray, lead_time: Any) -> xr.Dataset:
    """The climatology as a forecast: for each initial time and lead, ``clim`` at the valid time.

    Parameters
    ----------
    clim : Dataset
        From :func:`climatology` (``dayofyear`` and optional ``hour`` dims, or static).
    init_times : array-like of datetime64 or cftime objects
        Initial times (e.g. ``truth.time``); valid times are counted in their calendar, which must
        be the climatology's.
    lead_time : str, timedelta-like, number of hours, or a list of them

    Returns
    -------
    Dataset
        Forecast layout with ``valid_time``; lazy on dask input.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(8, variables=["2m_temperature"], grid=(4, 8), constants=False)
    >>> fc = climatology_forecast(climatology(ds), ds.time[:4], "6h")
    >>> fc["2m_temperature"].dims
    ('time', 'lead_time', 'lat', 'lon')
    """
    if isinstance(init_times, xr.Dataset) and not isinstance(clim, xr.Dataset):
        raise DataError(
            "climatology_forecast(clim, init_times, lead_time): the arguments look swapped: expected clim, the "
            f"Dataset from xclimax.baselines.climatology, first and the initial times second; got a "
            f"{type(clim).__name__} as clim and a Dataset as init_times"
        )
    if not isinstance(clim, xr.Dataset):
        raise DataError(f"clim must be a Dataset from xclimax.baselines.climatology; got {type(clim).__name__}")
    if "time" in clim.dims:
        raise DataError(
            f"clim must be a climatology (dims dayofyear/hour, or none), not data with a 'time' dimension "
            f"(found dims {dict(clim.sizes)}): pass xclimax.baselines.climatology(data); if the initial times were "
            "meant, the arguments may be swapped (clim first, init_times second)"
        )
    if isinstance(init_times, xr.Dataset):
        raise DataError("init_times must be times (e.g. truth.time), not a Dataset; got a Dataset with variables "
                        f"{list(init_times.data_vars)}")
    init = np.atleast_1d(np.asarray(init_times.values if isinstance(init_times, xr.DataArray) else init_times))
    if init.dtype.kind != "M" and not _time.is_cftime(init):
        try:
            init = init.astype("datetime64[ns]")  # strings, Timestamps
        except (ValueError, TypeError) as err:
            raise DataError(f"init_times must be dates (e.g. truth.time); got {init_times!r}") from err
    leads = as_lead_times(lead_time, "lead_time")
    valid = _time.add_leads(init, leads)  # in the calendar of the initial times
    coords = {"time": init, "lead_time": leads}
    if "dayofyear" in clim.dims or "hour" in clim.dims:
        fc = at_valid_times(clim, valid, coords, "clim")
    else:
        fc = clim.expand_dims(time=init.size, lead_time=leads.size).assign_coords(coords)
    fc = fc.transpose("time", "lead_time", ...)
    fc.attrs = {**clim.attrs, "forecast": "climatology"}
    for name in fc.data_vars:
        fc[name].attrs = dict(clim[name].attrs)
    return _with_valid_time(fc)
