"""Time axes in every CF calendar: the time dimension, lead times, time steps and valid times.

A time axis is either numpy ``datetime64`` (the proleptic Gregorian calendar) or cftime objects
(``standard``/``gregorian``, ``proleptic_gregorian``, ``noleap``/``365_day``, ``all_leap``/``366_day``,
``360_day``, ``julian``), as xarray decodes them. All arithmetic happens in the data's own
calendar: internally a time is an *offset*, int64 microseconds since 1970-01-01 00:00 counted in
that calendar (:func:`to_offsets`), so that in a ``noleap`` calendar 2000-02-28 + 24 h is
2000-03-01 and in a ``360_day`` calendar 2000-02-30 exists. Results go back to the input's
type and calendar (:func:`from_offsets`, :func:`add_leads`).

This is the only module of xclimax that knows about calendars.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..exceptions import DataError

__all__ = [
    "time_dim",
    "as_lead_times",
    "as_timedelta",
    "is_cftime",
    "calendar",
    "same_calendar",
    "to_offsets",
    "from_offsets",
    "time_step",
    "add_leads",
    "valid_times",
    "positions",
    "select",
    "as_time",
    "dayofyear",
    "hour",
    "days_in_year",
    "format_time",
]

logger = logging.getLogger(__name__)

#: the unit of offsets: whole microseconds (int64 covers +-292,000 years)
_UNITS = "microseconds since 1970-01-01"

#: calendar name -> the canonical name of the same calendar (CF aliases)
_ALIASES = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap", "none": "proleptic_gregorian"}
#: calendars that agree with numpy datetime64 (proleptic Gregorian) after 1582-10-15
_GREGORIAN = ("standard", "proleptic_gregorian")
#: days of the longest year of each calendar (the length of a day-of-year axis)
_YEAR = {"noleap": 365, "all_leap": 366, "360_day": 360}


def time_dim(ds: xr.Dataset | xr.DataArray) -> str:
    """The name of the time dimension: ``time``, or the dimension with ``axis="T"`` (cf-xarray).

    Examples
    --------
    >>> import xarray as xr
    >>> time_dim(xr.Dataset(coords={"time": ("time", [0, 1])}))
    'time'
    """
    if "time" in ds.dims:
        return "time"
    try:
        t = [n for n in ds.cf.axes.get("T", []) if n in ds.dims]
    except Exception:
        t = []
    if t:
        return t[0]
    raise DataError(
        f"expected a 'time' dimension (or a dimension with axis='T'); found dims {dict(ds.sizes)}. "
        "Add one with ds.expand_dims(time=[...])"
    )


def as_lead_times(lead_time: Any, name: str = "lead_time") -> np.ndarray:
    """Lead time(s) as a 1-D ``timedelta64[ns]`` array.

    Strings (``"6h"``), ``numpy.timedelta64``, ``datetime.timedelta`` and pandas
    ``Timedelta`` are accepted, alone or in a list; plain numbers are hours. Arrays and
    DataArrays of timedelta64 (such as a forecast's ``lead_time`` coordinate) are taken as they
    are. Errors name the argument ``name``.

    Examples
    --------
    >>> as_lead_times(["6h", 24]) / np.timedelta64(1, "h")
    array([ 6., 24.])
    >>> as_lead_times(xr.DataArray(pd.to_timedelta(["6h", "12h"]), dims="lead_time")) / np.timedelta64(1, "h")
    array([ 6., 12.])
    """
    if isinstance(lead_time, (xr.DataArray, xr.Variable, pd.Index, np.ndarray)) and np.asarray(lead_time).dtype.kind == "m":
        out = np.asarray(lead_time, dtype="timedelta64[ns]").ravel()
        if not out.size:
            raise DataError(f"{name} is empty; give at least one lead time")
        if np.isnat(out).any():
            raise DataError(f"{name} must not contain NaT; got {out!r}")
        return out
    if isinstance(lead_time, xr.DataArray):
        lead_time = lead_time.values
    values = [lead_time] if isinstance(lead_time, (str, int, float, np.timedelta64, pd.Timedelta)) or np.ndim(
        lead_time
    ) == 0 else list(lead_time)
    out = []
    for value in values:
        if isinstance(value, (bool, np.bool_)):
            raise DataError(f"{name} must be a time span such as '6h'; got {value!r}")
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, np.timedelta64):
            value = pd.Timedelta(hours=float(value))
        try:
            out.append(pd.Timedelta(value).to_timedelta64())
        except (ValueError, TypeError) as err:
            raise DataError(f"{name} must be a time span such as '6h' or a number of hours; got {value!r}") from err
        if pd.isna(out[-1]):
            raise DataError(f"{name} must be a time span such as '6h'; got {value!r}")
    if not out:
        raise DataError(f"{name} is empty; give at least one lead time")
    return np.asarray(out, dtype="timedelta64[ns]")


def as_timedelta(value: Any, name: str = "lead_time") -> pd.Timedelta:
    """One lead time as a Timedelta: strings like ``"24h"``, timedeltas, or numbers of hours."""
    leads = as_lead_times(value, name)
    if leads.size != 1:
        raise DataError(f"{name} must be one lead time (of one step); got {leads.size}: {value!r}")
    return pd.Timedelta(leads[0])


# ----------------------------------------------------------------------------- calendars


def _values(times: Any) -> np.ndarray:
    """The values of a time axis (DataArray, Index, list or scalar) as a numpy array."""
    if isinstance(times, (xr.DataArray, xr.Variable)):
        times = times.values
    elif isinstance(times, pd.Index):
        times = np.asarray(times)  # CFTimeIndex -> object array; DatetimeIndex -> datetime64
    values = np.asarray(times)
    if values.dtype == object and values.size:
        if isinstance(values.flat[0], (np.datetime64, pd.Timestamp, _dt.datetime)) and not is_cftime(values):
            values = values.astype("datetime64[ns]")
    elif values.dtype.kind in "US":
        values = values.astype("datetime64[ns]")
    return values


def is_cftime(times: Any) -> bool:
    """True when the times are cftime objects (a non-datetime64 calendar or a cftime-decoded axis).

    Examples
    --------
    >>> import cftime
    >>> is_cftime([cftime.DatetimeNoLeap(2000, 1, 1)]), is_cftime(np.array(["2000-01-01"], "datetime64[ns]"))
    (True, False)
    """
    try:
        import cftime
    except ImportError:  # pragma: no cover - without cftime there are no cftime times
        return False
    if isinstance(times, (xr.DataArray, xr.Variable)):
        times = times.values
    values = np.asarray(times)
    return values.dtype == object and values.size > 0 and isinstance(values.flat[0], cftime.datetime)


def calendar(times: Any) -> str:
    """The CF calendar of a time axis; ``"proleptic_gregorian"`` for numpy datetime64.

    Aliases are resolved (``365_day`` -> ``noleap``, ``366_day`` -> ``all_leap``, ``gregorian`` ->
    ``standard``). A cftime axis mixing calendars raises :class:`~xclimax.exceptions.DataError`.

    Examples
    --------
    >>> import xarray as xr
    >>> calendar(xr.date_range("2000-01-01", periods=2, calendar="365_day", use_cftime=True))
    'noleap'
    """
    values = _values(times)
    if values.dtype.kind == "M":
        return "proleptic_gregorian"
    if not is_cftime(values):
        raise DataError(f"expected times (datetime64 or cftime objects); got dtype {values.dtype}"
                        + (f" with values like {values.flat[0]!r}" if values.size else ""))
    found = {_ALIASES.get(v.calendar, v.calendar) for v in values.flat}
    if len(found) > 1:
        raise DataError(f"a time axis mixes calendars {sorted(found)}; convert it to one with ds.convert_calendar(...)")
    return found.pop()


def same_calendar(a: Any, b: Any, what: tuple[str, str] = ("forecast", "truth")) -> None:
    """Raise :class:`~xclimax.exceptions.DataError` unless ``a`` and ``b`` count days alike.

    ``a`` and ``b`` are times or calendar names. numpy datetime64 and cftime
    ``standard``/``proleptic_gregorian`` times agree (after 1582).

    Examples
    --------
    >>> import xarray as xr
    >>> same_calendar(xr.date_range("2000", periods=2, calendar="noleap", use_cftime=True), "365_day")
    >>> same_calendar(np.array(["2000-01-01"], "datetime64[ns]"), "360_day")
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: forecast times are in the 'proleptic_gregorian' calendar and truth times in the '360_day' calendar; ...
    """
    name = lambda x: _ALIASES.get(x.lower(), x.lower()) if isinstance(x, str) else calendar(x)  # noqa: E731
    ca, cb = name(a), name(b)
    family = lambda c: "gregorian" if c in _GREGORIAN else c  # noqa: E731
    if family(ca) != family(cb):
        raise DataError(
            f"{what[0]} times are in the {ca!r} calendar and {what[1]} times in the {cb!r} calendar; "
            f"convert one with xarray's ds.convert_calendar({ca!r}) (or {cb!r}) first"
        )


def to_offsets(times: Any) -> np.ndarray:
    """Times as int64 microseconds since 1970-01-01 00:00, counted in their own calendar.

    Differences of offsets are exact elapsed times in the calendar (a ``noleap`` year has
    365 days, a ``360_day`` month 30), so pairs and lead times are found by integer arithmetic.

    Examples
    --------
    >>> import cftime
    >>> t = [cftime.DatetimeNoLeap(2000, 2, 28), cftime.DatetimeNoLeap(2000, 3, 1)]
    >>> np.diff(to_offsets(t)) / 3.6e9  # hours
    array([24.])
    """
    values = _values(times)
    if values.dtype.kind == "M":
        if np.isnat(values).any():
            raise DataError("the time axis holds NaT (missing times); drop them first")
        return values.astype("datetime64[us]").astype(np.int64)
    cal = calendar(values)
    import cftime

    flat = values.ravel()
    out = cftime.date2num(list(flat), _UNITS, calendar=cal, has_year_zero=flat[0].has_year_zero)
    out = np.asarray(out)
    if out.dtype.kind != "i":
        out = np.rint(out.astype(np.float64))
    return out.astype(np.int64).reshape(values.shape)


def from_offsets(offsets: Any, like: Any) -> np.ndarray:
    """Offsets (:func:`to_offsets`) back to times of the type and calendar of ``like``.

    Examples
    --------
    >>> import cftime
    >>> t = np.array([cftime.Datetime360Day(2000, 2, 30)])
    >>> from_offsets(to_offsets(t) + 24 * 3600 * 10**6, t)[0]
    cftime.Datetime360Day(2000, 3, 1, 0, 0, 0, 0, has_year_zero=True)
    """
    like = _values(like)
    offsets = np.asarray(offsets, dtype=np.int64)
    if like.dtype.kind == "M":
        out = offsets.astype("datetime64[us]")
        unit = np.datetime_data(like.dtype)[0]
        if unit == "ns":
            lo, hi = np.iinfo(np.int64).min // 1000, np.iinfo(np.int64).max // 1000
            if offsets.size and (offsets.min() <= lo or offsets.max() >= hi):
                raise DataError("times beyond 1678-2261 do not fit in datetime64[ns]; use cftime times")
        return out.astype(like.dtype)
    import cftime

    first = like.flat[0]
    out = cftime.num2date(offsets.ravel(), _UNITS, calendar=first.calendar, only_use_cftime_datetimes=True,
                          has_year_zero=first.has_year_zero)
    out = np.asarray(out, dtype=object)
    if out.size and type(out.flat[0]) is not type(first):  # e.g. the generic cftime.datetime class
        out = np.array([type(first)(*t.timetuple()[:6], t.microsecond, calendar=first.calendar,
                                    has_year_zero=first.has_year_zero) if type(first) is cftime.datetime
                        else type(first)(*t.timetuple()[:6], t.microsecond, has_year_zero=first.has_year_zero)
                        for t in out], dtype=object)
    return out.reshape(offsets.shape)


# ----------------------------------------------------------------------------- steps and valid times


def time_step(times: Any) -> np.timedelta64:
    """The time step of a time axis: the smallest positive difference between its values.

    Computed in the axis' own calendar (cftime objects or datetime64).

    Examples
    --------
    >>> import pandas as pd
    >>> pd.Timedelta(time_step(pd.date_range("2000-01-01", periods=4, freq="6h")))
    Timedelta('0 days 06:00:00')
    >>> import xarray as xr
    >>> pd.Timedelta(time_step(xr.date_range("2000-02-28", periods=3, freq="D", calendar="noleap", use_cftime=True)))
    Timedelta('1 days 00:00:00')
    """
    t = to_offsets(times).ravel()
    if t.size < 2:
        raise DataError(f"need at least 2 time steps to build forecast pairs; found {t.size}")
    d = np.diff(t)
    if (d <= 0).any():
        raise DataError("time coordinate must be strictly increasing; found repeated or decreasing values")
    return np.timedelta64(int(d.min()), "us").astype("timedelta64[ns]")


def _as_us(leads: Any) -> np.ndarray:
    leads = np.asarray(leads)
    if leads.dtype.kind != "m":
        leads = as_lead_times(leads)
    us = leads.astype("timedelta64[ns]").astype(np.int64)
    if (us % 1000).any():
        raise DataError(f"lead times must be whole microseconds; got {leads}")
    return us // 1000


def add_leads(times: Any, leads: Any) -> np.ndarray:
    """``times[..., None] + leads[None, :]`` in the times' calendar, as the times' type.

    Examples
    --------
    >>> import cftime
    >>> t = np.array([cftime.DatetimeNoLeap(2000, 2, 28)])
    >>> add_leads(t, as_lead_times(["24h"]))[0, 0]
    cftime.DatetimeNoLeap(2000, 3, 1, 0, 0, 0, 0, has_year_zero=True)
    """
    values = _values(times)
    us = _as_us(leads)
    if values.dtype.kind == "M":
        out = values[..., None] + us.astype("timedelta64[us]")
        same = out.astype(values.dtype)
        return same if (same == out).all() else out  # the input's unit unless a lead needs a finer one
    return from_offsets(to_offsets(values)[..., None] + us, values)


def valid_times(time: xr.DataArray, lead_time: xr.DataArray) -> xr.DataArray:
    """The ``valid_time(time, lead_time)`` coordinate of a forecast: initial time + lead, in the calendar of ``time``.

    Examples
    --------
    >>> import xarray as xr
    >>> t = xr.DataArray(xr.date_range("2000-02-30", periods=1, calendar="360_day", use_cftime=True), dims="time")
    >>> lead = xr.DataArray(as_lead_times(["24h"]), dims="lead_time")
    >>> valid_times(t, lead).values[0, 0]
    cftime.Datetime360Day(2000, 3, 1, 0, 0, 0, 0, has_year_zero=True)
    """
    values = add_leads(time.values, lead_time.values)
    return xr.DataArray(values, dims=(*time.dims, *lead_time.dims),
                        attrs={"standard_name": "time", "long_name": "valid time"})


def positions(wanted: Any, axis: Any, what: tuple[str, str] = ("forecast", "truth")) -> np.ndarray:
    """Position of each ``wanted`` time on ``axis`` (-1 where absent), matched in their common calendar.

    Raises :class:`~xclimax.exceptions.DataError` when the calendars differ or ``axis`` repeats a time.
    """
    same_calendar(wanted, axis, what)
    w, a = to_offsets(wanted), to_offsets(axis)
    index = pd.Index(a.ravel())
    if not index.is_unique:
        raise DataError(f"{what[1]} has repeated time values; expected unique times")
    return index.get_indexer(w.ravel()).reshape(w.shape)


def select(times: Any, period: Any) -> np.ndarray:
    """Boolean mask of the times inside ``period``: a slice of labels, inclusive like ``.sel``.

    Labels may be strings (partial dates such as ``"2000-03"`` cover the whole month, read in
    the axis' calendar), datetimes or cftime objects.

    Examples
    --------
    >>> import xarray as xr
    >>> t = xr.date_range("2000-02-28", periods=4, calendar="360_day", use_cftime=True)
    >>> select(t, slice("2000-02-30", None)).tolist()
    [False, False, True, True]
    """
    values = _values(times)
    if not isinstance(period, slice):
        raise DataError(f"a time period must be a slice of times; got {period!r}")
    bounds = slice(*(None if v is None or isinstance(v, str) else as_time(v, values) for v in (period.start, period.stop)),
                   period.step)
    bounds = slice(period.start if isinstance(period.start, str) else bounds.start,
                   period.stop if isinstance(period.stop, str) else bounds.stop)
    axis = xr.DataArray(np.arange(values.size), dims="t", coords={"t": values.ravel()})
    try:
        picked = axis.sel(t=bounds).values
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"cannot select {period!r} on a time axis in the {calendar(values)!r} calendar: {err}") from err
    mask = np.zeros(values.size, bool)
    mask[picked] = True
    return mask.reshape(values.shape)


_ISO = re.compile(r"^\s*(-?\d{1,4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?\s*$")


def as_time(value: Any, like: Any) -> Any:
    """One time given by the user (string, datetime, Timestamp, datetime64 or cftime) in the type and calendar of ``like``.

    Examples
    --------
    >>> import xarray as xr
    >>> as_time("2000-02-30T06", xr.date_range("2000-01-01", periods=1, calendar="360_day", use_cftime=True))
    cftime.Datetime360Day(2000, 2, 30, 6, 0, 0, 0, has_year_zero=True)
    """
    values = _values(like)
    import cftime

    if values.dtype.kind == "M":
        if isinstance(value, cftime.datetime):
            same_calendar(np.array([value]), values, ("the time given", "the data"))
            value = value.isoformat()
        try:
            return np.datetime64(pd.Timestamp(value).to_datetime64(), "ns").astype(values.dtype)
        except (ValueError, TypeError) as err:
            raise DataError(f"cannot read {value!r} as a time: {err}") from err
    first = values.flat[0]
    if isinstance(value, cftime.datetime):
        same_calendar(np.array([value]), values, ("the time given", "the data"))
        return from_offsets(to_offsets(np.array([value])), values)[0]
    if isinstance(value, str):
        m = _ISO.match(value)
        if not m:
            raise DataError(f"cannot read {value!r} as a time; expected ISO 8601 such as '2000-02-30T06:00'")
        parts = [int(p) if p else d for p, d in zip(m.groups()[:6], (None, 1, 1, 0, 0, 0))]
        us = int((m.group(7) or "0").ljust(6, "0"))
    else:
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError) as err:
            raise DataError(f"cannot read {value!r} as a time: {err}") from err
        parts, us = [ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second], ts.microsecond
    try:
        t = cftime.datetime(*parts, us, calendar=first.calendar, has_year_zero=first.has_year_zero)
    except ValueError as err:
        raise DataError(f"{value!r} is not a date of the {first.calendar!r} calendar: {err}") from err
    return from_offsets(to_offsets(np.array([t])), values)[0]


# ----------------------------------------------------------------------------- calendar fields


def dayofyear(times: Any) -> np.ndarray:
    """Day of the year (1-based) of each time, in its calendar (1..360 in a ``360_day`` calendar)."""
    values = _values(times)
    if values.dtype.kind == "M":
        return np.asarray(pd.DatetimeIndex(values.ravel()).day_of_year).reshape(values.shape)
    return np.array([t.dayofyr for t in values.ravel()], dtype=np.int64).reshape(values.shape)


def hour(times: Any) -> np.ndarray:
    """Hour of the day of each time."""
    values = _values(times)
    if values.dtype.kind == "M":
        return np.asarray(pd.DatetimeIndex(values.ravel()).hour).reshape(values.shape)
    return np.array([t.hour for t in values.ravel()], dtype=np.int64).reshape(values.shape)


def days_in_year(cal: str) -> int:
    """Days of the longest year of a calendar: the length of its day-of-year axis.

    Examples
    --------
    >>> days_in_year("360_day"), days_in_year("noleap"), days_in_year("standard")
    (360, 365, 366)
    """
    return _YEAR.get(_ALIASES.get(cal, cal), 366)


def format_time(t: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A time as text in its own calendar (cftime dates such as 2000-02-30 included)."""
    if isinstance(t, (np.datetime64, pd.Timestamp, _dt.datetime)) and not is_cftime(np.array([t], dtype=object)):
        return pd.Timestamp(t).strftime(fmt)
    return t.strftime(fmt)
