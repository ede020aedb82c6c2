"""xclimax: the ClimaX foundation model for weather and climate, for xarray and dask.

``import xclimax`` registers the ``ds.climax`` Dataset accessor. Heavy modules
(torch, the model) are imported lazily on first use.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from . import accessor  # noqa: F401  (registers ds.climax)
from ._version import __version__
from .exceptions import CFMappingError, CheckpointError, DataError, GridError, XClimaxError, XClimaxWarning
from .options import get_options, set_options
from .vocab import CLIMAX_VARIABLES, FORECAST_VARIABLES

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> module that defines it (imported on first access)
_LAZY = {
    "ClimaX": "model",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "remap_variables": "checkpoint",
    "compute_stats": "normalize",
    "forecast": "inference",
    "downscale": "inference",
    "pretrain": "train",
    "finetune": "train",
    "evaluate": "metrics",
    "tutorial": None,
    "tokens": None,
    "grid": None,
    "normalize": None,
    "checkpoint": None,
    "inference": None,
    "metrics": None,
    "batching": None,
    "atmosphere": None,
    "vocab": None,
    "baselines": None,
    "plot": None,
    "testing": None,
}

__all__ = [
    "__version__",
    "XClimaxError",
    "CFMappingError",
    "GridError",
    "CheckpointError",
    "DataError",
    "XClimaxWarning",
    "set_options",
    "get_options",
    "CLIMAX_VARIABLES",
    "FORECAST_VARIABLES",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = _LAZY[name]
        if module is None:
            return importlib.import_module(f".{name}", __name__)
        return getattr(importlib.import_module(f".{module}", __name__), name)
    raise AttributeError(f"module 'xclimax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
