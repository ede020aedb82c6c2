"""Time axes: finding the time dimension, lead times, time steps and valid times."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..exceptions import DataError

logger = logging.getLogger(__name__)

def time_dim(ds: xr.Dataset) -> str:
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



def as_lead_times(lead_time: Any) -> np.ndarray:
    """Lead time(s) as a 1-D ``timedelta64[ns]`` array.

    Strings (``"6h"``), ``numpy.timedelta64``, ``datetime.timedelta`` and pandas
    ``Timedelta`` are accepted, alone or in a list; plain numbers are hours.

    Examples
    --------
    >>> as_lead_times(["6h", 24]) / np.timedelta64(1, "h")
    array([ 6., 24.])
    """
    values = [lead_time] if isinstance(lead_time, (str, int, float, np.timedelta64, pd.Timedelta)) or np.ndim(
        lead_time
    ) == 0 else list(lead_time)
    out = []
    for value in values:
        if isinstance(value, (bool, np.bool_)):
            raise DataError(f"lead_time must be a time span such as '6h'; got {value!r}")
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, np.timedelta64):
            value = pd.Timedelta(hours=float(value))
        try:
            out.append(pd.Timedelta(value).to_timedelta64())
        except (ValueError, TypeError) as err:
            raise DataError(f"lead_time must be a time span such as '6h' or a number of hours; got {value!r}") from err
    if not out:
        raise DataError("lead_time is empty; give at least one lead time")
    return np.asarray(out, dtype="timedelta64[ns]")




def as_timedelta(value: Any, name: str = "lead_time") -> pd.Timedelta:
    """One lead time as a Timedelta: strings like ``"24h"``, timedeltas, or numbers of hours."""
    leads = as_lead_times(value)
    if leads.size != 1:
        raise DataError(f"{name} must be a single lead time per step; got {leads.size}: {value!r}")
    return pd.Timedelta(leads[0])
