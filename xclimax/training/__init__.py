"""Training: the recipe (:class:`TrainConfig`), the optimiser and schedule, resumable state and the fit loop.

The fit loop is task-agnostic: a task provides a loader of batches and ``forward(model, batch)``.
"""

from .config import TrainConfig
from .optim import LinearWarmupCosine, configure_optimizer
from .prepare import DEFAULT_MODEL, REGIONS, region_mask

__all__ = ["TrainConfig", "LinearWarmupCosine", "configure_optimizer", "region_mask", "REGIONS", "DEFAULT_MODEL"]
