"""xclimax: the ClimaX foundation model for weather and climate, for xarray and dask.

``import xclimax`` registers the ``ds.climax`` Dataset accessor. Heavy modules
(torch, the model) are imported lazily on first use.

The package is layered; imports only go down (checked by import-linter, see ``setup.cfg``)::

    accessor, __main__                    ds.climax.*, the demo command
    api                                   forecast, downscale, pretrain, finetune
    tasks/      demo/                     one Task per task; the demo atmosphere and tutorial data
    training/                             TrainConfig, optimiser, resumable state, the fit loop
    scoring/                              metrics, baselines, plots
    loading/                              sample index, readers, the zarr fast path, the loader
    cf/                                   variables, units, grids, time axes, statistics (xarray)
    nn/                                   the ClimaX network and checkpoints (torch only)
    vocab, exceptions, options, _utils
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from typing import Any

from . import accessor  # noqa: F401  (registers ds.climax)
from ._version import __version__
from .exceptions import (
    CFMappingError,
    CheckpointError,
    DataError,
    GridError,
    ResourceError,
    XClimaxError,
    XClimaxWarning,
)
from .options import get_options, set_options
from .vocab import CLIMAX_VARIABLES, FORECAST_VARIABLES

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> "module:attribute" (imported on first access)
_LAZY = {
    "ClimaX": "nn.model:ClimaX",
    "load_checkpoint": "nn.checkpoint:load_checkpoint",
    "save_checkpoint": "nn.checkpoint:save_checkpoint",
    "remap_variables": "nn.checkpoint:remap_variables",
    "compute_stats": "cf.stats:compute_stats",
    "forecast": "api:forecast",
    "forecast_to_zarr": "api:forecast_to_zarr",
    "downscale": "api:downscale",
    "project": "api:project",
    "pretrain": "api:pretrain",
    "finetune": "api:finetune",
    "evaluate": "scoring.metrics:evaluate",
    "TrainConfig": "training.config:TrainConfig",
}

# public module names -> where they live
_MODULES = {
    "tutorial": "demo.tutorial",
    "atmosphere": "demo.atmosphere",
    "tokens": "cf.tokens",
    "grid": "cf.grid",
    "normalize": "cf.stats",
    "checkpoint": "nn.checkpoint",
    "metrics": "scoring.metrics",
    "baselines": "scoring.baselines",
    "plot": "scoring.plot",
    "tasks": "tasks",
    "training": "training",
    "loading": "loading",
    "distributed": "distributed",
    "vocab": "vocab",
    "testing": "testing",
}

__all__ = [
    "__version__",
    "XClimaxError",
    "CFMappingError",
    "GridError",
    "CheckpointError",
    "DataError",
    "ResourceError",
    "XClimaxWarning",
    "set_options",
    "get_options",
    "CLIMAX_VARIABLES",
    "FORECAST_VARIABLES",
    *_LAZY,
    *_MODULES,
]


class _AliasImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import xclimax.tutorial`` / ``from xclimax.baselines import ...`` find the module where it lives."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        head, _, name = fullname.partition(".")
        if head != __name__ or _MODULES.get(name, name) == name:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(f"{__name__}.{_MODULES[spec.name.partition('.')[2]]}")

    def exec_module(self, module: Any) -> None:  # the real module is already executed
        pass


if not any(isinstance(f, _AliasImporter) for f in sys.meta_path):
    sys.meta_path.append(_AliasImporter())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    if name in _MODULES:
        module = importlib.import_module(f".{_MODULES[name]}", __name__)
        sys.modules.setdefault(f"{__name__}.{name}", module)  # ``import xclimax.tutorial`` after first use
        return module
    raise AttributeError(f"module 'xclimax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_MODULES))
