"""Exceptions raised by xclimax.

Every error xclimax raises on bad user input derives from :class:`XClimaxError`,
which is also a :class:`ValueError`, so ``except ValueError`` keeps working.
Messages say what was expected and what was found.
"""

from __future__ import annotations

__all__ = [
    "XClimaxError",
    "CFMappingError",
    "GridError",
    "CheckpointError",
    "DataError",
    "ResourceError",
    "XClimaxWarning",
]


class XClimaxError(ValueError):
    """Root of all xclimax errors."""


class CFMappingError(XClimaxError):
    """A ClimaX variable could not be found in, or converted from, a Dataset."""


class GridError(XClimaxError):
    """The horizontal grid of a Dataset does not match what the model expects."""


class CheckpointError(XClimaxError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the requested model."""


class DataError(XClimaxError):
    """Input data are unusable: NaNs, too few time steps, mismatched chunks, ..."""


class ResourceError(XClimaxError):
    """A run would not fit in memory (or on the device): raised before it starts, saying what would fit."""


class XClimaxWarning(UserWarning):
    """Warnings about results that are valid but may not be what the user expects."""
