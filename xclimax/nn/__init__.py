"""The network layer: torch only, never xarray. The ClimaX model and its checkpoints."""

from .checkpoint import load_checkpoint, remap_variables, save_checkpoint
from .model import ClimaX

__all__ = ["ClimaX", "load_checkpoint", "save_checkpoint", "remap_variables"]
