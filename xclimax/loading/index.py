"""The pure sample index: valid (input time, target time, lead) pairs, leads and train/validation splits.

No data are read here: everything is computed from time coordinates alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import DataError

logger = logging.getLogger(__name__)

def time_step(times: Any) -> np.timedelta64:
    """The time step of a time axis: the smallest positive difference between its values.

    Examples
    --------
    >>> import pandas as pd
    >>> pd.Timedelta(time_step(pd.date_range("2000-01-01", periods=4, freq="6h")))
    Timedelta('0 days 06:00:00')
    """
    t = np.asarray(times, dtype="datetime64[ns]")
    if t.size < 2:
        raise DataError(f"need at least 2 time steps to build forecast pairs; found {t.size}")
    d = np.diff(t)
    if (d <= np.timedelta64(0)).any():
        raise DataError("time coordinate must be strictly increasing; found repeated or decreasing values")
    return d.min()


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
    """
    if isinstance(lead_times, (list, tuple)):
        if len(lead_times) != 2:
            raise DataError(f"lead_times must be one lead or a (min, max) pair; got {lead_times!r}")
        lo, hi = (pd.Timedelta(v).to_timedelta64() for v in lead_times)
    else:
        lo = hi = pd.Timedelta(lead_times).to_timedelta64()
    step = np.timedelta64(step, "ns")
    if lo <= np.timedelta64(0) or hi < lo:
        raise DataError(f"lead times must be positive with min <= max; got {lo} to {hi}")
    k = np.arange(-(-lo // step), hi // step + 1)  # ceil(lo/step) .. floor(hi/step)
    if k.size == 0:
        raise DataError(
            f"no multiple of the data's time step ({pd.Timedelta(step)}) lies in the lead-time range "
            f"{pd.Timedelta(lo)} to {pd.Timedelta(hi)}"
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
    times : array-like of datetime64
        The time coordinate (strictly increasing).
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
    """
    t = np.asarray(times, dtype="datetime64[ns]")
    leads = lead_choices(lead_times, time_step(t))
    ok = np.ones(t.size, bool) if mask is None else np.asarray(mask, bool)
    if ok.shape != t.shape:
        raise DataError(f"mask must have one value per time step ({t.size}); got shape {ok.shape}")
    wanted = t[:, None] + leads[None, :]  # [T, K]
    pos = np.searchsorted(t, wanted).clip(max=t.size - 1)
    valid = (t[pos] == wanted) & ok[:, None] & ok[pos]
    i, k = np.nonzero(valid)  # row-major: sorted by input, then lead
    return SampleIndex(i.astype(np.int64), pos[i, k].astype(np.int64), leads[k])


def split_times(times: Any, val: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train and validation masks over a time axis.

    Parameters
    ----------
    times : array-like of datetime64
    val : slice, float or None
        ``slice(start, stop)`` of time labels (inclusive, like ``.sel``) for validation, or a
        fraction in (0, 1): the last part of the period. ``None``: no validation.

    Examples
    --------
    >>> import pandas as pd
    >>> train, val = split_times(pd.date_range("2000-01-01", periods=10, freq="D"), 0.2)
    >>> int(train.sum()), int(val.sum()), bool(val[-1])
    (8, 2, True)
    """
    t = pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]"))
    if val is None:
        return np.ones(t.size, bool), np.zeros(t.size, bool)
    if isinstance(val, slice):
        lo = pd.Timestamp(val.start) if val.start is not None else t.min()
        hi = pd.Timestamp(val.stop) if val.stop is not None else t.max()
        is_val = np.asarray((t >= lo) & (t <= hi))
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
