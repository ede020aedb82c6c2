"""Tasks: forecasting, downscaling and climate projection, each one :class:`~xclimax.tasks.base.Task`.

A new task is one module with a ``Task`` subclass and one line in :data:`TASKS`.
"""

from __future__ import annotations

from ..exceptions import DataError
from .base import Task
from .downscale import DownscaleTask
from .forecast import ForecastTask
from .projection import ProjectionTask

__all__ = ["Task", "TASKS", "get_task", "ForecastTask", "DownscaleTask", "ProjectionTask"]

#: Tasks by name.
TASKS: dict[str, type[Task]] = {
    "forecast": ForecastTask,
    "downscale": DownscaleTask,
    "projection": ProjectionTask,
}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (a new instance)."""
    if not isinstance(name, str) or name not in TASKS:
        raise DataError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]()
