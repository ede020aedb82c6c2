"""Small helpers shared across xclimax modules (no torch, no model code)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

import numpy as np
import pandas as pd

from .exceptions import DataError
from .options import OPTIONS

__all__ = ["as_lead_times", "resolve_device"]


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


def resolve_device(device: Any = None) -> "torch.device":
    """Return the torch device to use: ``device`` or the ``device`` option (``"auto"``: CUDA if available).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    device = OPTIONS["device"] if device is None else device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)
