"""Shared test helpers."""

from __future__ import annotations

import dask
import pytest


class CountingScheduler:
    """A dask scheduler that raises once ``compute`` is called more than ``max_computes`` times."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(f"Too many dask computations were scheduled: {self.total_computes}")
        return dask.get(dsk, keys, **kwargs)


def raise_if_dask_computes(max_computes: int = 0):
    """Context manager: any dask compute inside raises RuntimeError."""
    return dask.config.set(scheduler=CountingScheduler(max_computes))


requires_cuda = pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device"
)


def as_backend(ds, backend: str):
    """Return ``ds`` as is (``"numpy"``) or chunked along time (``"dask"``)."""
    return ds.chunk({"time": 2}) if backend == "dask" else ds


def record_loaders(monkeypatch) -> list:
    """Make the forecast task build BatchLoaders that are also appended to the returned list."""
    import xclimax.tasks.forecast as train_mod

    made: list = []

    class Recording(train_mod.BatchLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_mod, "BatchLoader", Recording)
    return made
