"""The pure sample index: valid (input time, target time, lead) pairs, leads and train/validation splits.

No data are read here: everything is computed from time coordinates alone, in the data's own
calendar (datetime64 or cftime objects of any CF calendar, through :mod:`xclimax.cf.time`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..cf.time import as_lead_times, select, time_step, to_offsets
from ..exceptions import DataError

logger = logging.getLogger(__name__)

def _h(td: Any) -> str:
    return f"{pd.Timedelta(td) / pd.Timedelta('1h'):g} h"


def lead_range(lead_times: Any) -> tuple[np.timedelta64, np.timedelta64]:
    """``(min, max)`` of one lead time or a ``(min, max)`` pair, validated (positive, min <= max).

    Examples
    --------
    >>> [_h(v) for v in lead_range(("6h", "168h"))]
    ['6 h', '168 h']
    >>> lead_range(("banana", "6h"))
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: lead_times must be a time span such as '6h' or a number of hours; got 'banana'
    """
    if isinstance(lead_times, (list, tuple)):
        if len(lead_times) not in (1, 2):
            what = "is empty" if not lead_times else f"has {len(lead_times)} entries"
            raise DataError(f"lead_times must be one lead time or a (min, max) pair; got {lead_times!r}, which {what}")
        leads = as_lead_times(list(lead_times), "lead_times")
        lo, hi = leads[0], leads[-1]
    else:
        lo = hi = as_lead_times(lead_times, "lead_times")[0]
        if as_lead_times(lead_times, "lead_times").size != 1:
            raise DataError(f"lead_times must be one lead time or a (min, max) pair; got {lead_times!r}")
    if lo <= np.timedelta64(0) or hi < lo:
        raise DataError(f"lead_times must be positive with min <= max; got {_h(lo)} to {_h(hi)} ({lead_times!r})")
    return lo, hi


def _lead_zero(lead_times: Any) -> bool:
    """Whether ``lead_times`` is the single lead 0: input and target at the same time (downscaling)."""
    if isinstance(lead_times, (list, tuple)):
        return False
    try:
        return pd.Timedelta(lead_times) == pd.Timedelta(0)
    except (ValueError, TypeError):
        return False


def lead_choices(lead_times: Any, step: np.timedelta64) -> np.ndarray:
    """The lead times allowed for training: multiples of ``step`` in an inclusive range.

    Parameters
    ----------
    lead_times : str, timedelta or (lo, hi) pair
        One lead time, or the inclusive range to draw lead times from.
    step : numpy.timedelta64
        Time step of the data (:func:`time_step`).

    Examples
    --------
    >>> lead_choices(("6h", "24h"), np.timedelta64(6, "h")) / np.timedelta64(1, "h")
    array([ 6., 12., 18., 24.])
    >>> lead_choices("0h", np.timedelta64(6, "h"))  # lead 0 (downscaling): input and target at the same time
    array([0], dtype='timedelta64[ns]')
    """
    if _lead_zero(lead_times):
        return np.zeros(1, "timedelta64[ns]")
    lo, hi = lead_range(lead_times)
    step = np.timedelta64(step, "ns")
    k = np.arange(-(-lo // step), hi // step + 1)  # ceil(lo/step) .. floor(hi/step)
    if k.size == 0:
        raise DataError(
            f"lead_times: no multiple of the data's time step ({_h(step)}) lies in the lead-time range "
            f"{_h(lo)} to {_h(hi)}; choose lead times that are multiples of {_h(step)}"
        )
    return k * step


@dataclass(frozen=True)
class SampleIndex:
    """All valid forecast pairs of one time axis, sorted by input time then lead.

    Attributes
    ----------
    input, target : numpy.ndarray of int64
        Positions on the time axis of the input state and of the target state.
    lead : numpy.ndarray of timedelta64[ns]
        ``time[target] - time[input]``.
    """

    input: np.ndarray
    target: np.ndarray
    lead: np.ndarray

    def __len__(self) -> int:
        return int(self.input.size)

    @property
    def lead_hours(self) -> np.ndarray:
        """Lead times in hours (float64)."""
        return self.lead / np.timedelta64(1, "h")


def sample_index(times: Any, lead_times: Any, *, mask: np.ndarray | None = None) -> SampleIndex:
    """List every ``(input, target, lead)`` pair of a time axis.

    A pair exists when ``time[input] + lead`` is itself on the axis for a lead returned by
    :func:`lead_choices`. Pairs are matched by value, so gaps in the axis are handled and
    no pair is dropped at chunk boundaries.

    Parameters
    ----------
    times : array-like of datetime64 or cftime objects
        The time coordinate (strictly increasing), in any CF calendar: pairs are found in that
        calendar (in ``noleap`` data, 28 February + 24 h is 1 March).
    lead_times : str, timedelta or (lo, hi) pair
        One lead time or an inclusive range.
    mask : numpy.ndarray of bool, optional
        Times that may be used (e.g. the training period); both ends of a pair must be in it.

    Examples
    --------
    >>> import pandas as pd
    >>> idx = sample_index(pd.date_range("2000-01-01", periods=5, freq="6h"), ("6h", "12h"))
    >>> idx.input.tolist(), idx.target.tolist()
    ([0, 0, 1, 1, 2, 2, 3], [1, 2, 2, 3, 3, 4, 4])
    >>> import xarray as xr
    >>> noleap = xr.date_range("2001-02-27", periods=3, freq="D", calendar="noleap", use_cftime=True)
    >>> sample_index(noleap, "24h").target.tolist()  # 28 February + 24 h is 1 March
    [1, 2]
    """
    t = to_offsets(times)  # int64 microseconds, counted in the data's own calendar
    leads = lead_choices(lead_times, np.timedelta64(0, "ns") if _lead_zero(lead_times) else time_step(times))
    ok = np.ones(t.size, bool) if mask is None else np.asarray(mask, bool)
    if ok.shape != t.shape:
        raise DataError(f"mask must have one value per time step ({t.size}); got shape {ok.shape}")
    wanted = t[:, None] + (leads // np.timedelta64(1, "us"))[None, :]  # [T, K]
    pos = np.searchsorted(t, wanted).clip(max=t.size - 1)
    valid = (t[pos] == wanted) & ok[:, None] & ok[pos]
    i, k = np.nonzero(valid)  # row-major: sorted by input, then lead
    return SampleIndex(i.astype(np.int64), pos[i, k].astype(np.int64), leads[k])


def split_times(times: Any, val: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train and validation masks over a time axis.

    Parameters
    ----------
    times : array-like of datetime64 or cftime objects
    val : slice, float or None
        ``slice(start, stop)`` of time labels (inclusive, like ``.sel``; strings are read in the
        data's calendar) for validation, or a fraction in (0, 1): the last part of the period.
        ``None``: no validation.

    Examples
    --------
    >>> import pandas as pd
    >>> train, val = split_times(pd.date_range("2000-01-01", periods=10, freq="D"), 0.2)
    >>> int(train.sum()), int(val.sum()), bool(val[-1])
    (8, 2, True)
    """
    t = np.asarray(times)
    if val is None:
        return np.ones(t.size, bool), np.zeros(t.size, bool)
    if isinstance(val, slice):
        is_val = select(t, val)
    elif isinstance(val, (float, int)) and not isinstance(val, bool) and 0 < val < 1:
        n_val = int(round(val * t.size))
        is_val = np.arange(t.size) >= t.size - n_val
    else:
        raise DataError(f"val must be a slice of times, a fraction in (0, 1) or a Dataset; got {val!r}")
    if is_val.all() or not is_val.any():
        raise DataError(
            f"the validation split {val!r} leaves {int((~is_val).sum())} training and {int(is_val.sum())} "
            "validation time steps; both must be non-empty"
        )
    return ~is_val, is_val
