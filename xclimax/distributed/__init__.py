"""Scaling out on dask.distributed clusters: resident models, streamed zarr output, data-parallel training.

* :mod:`~xclimax.distributed.workers`: each worker loads a model once, on its own device, and
  keeps it in a bounded cache (``set_options(worker_cache_size=...)``).
* :mod:`~xclimax.distributed.zarr`: region-by-region zarr writes that resume after an
  interruption (used by :func:`xclimax.forecast_to_zarr`).
* :mod:`~xclimax.distributed.ddp`: one torch ``DistributedDataParallel`` rank per dask worker
  (used by ``pretrain(..., client=client)`` and ``finetune(..., client=client)``).

Nothing here starts a cluster: create one the usual way (``distributed.LocalCluster``,
``dask_cuda.LocalCUDACluster``, ``dask_jobqueue.SLURMCluster``, dask-kubernetes, dask-gateway)
and a ``Client``; xclimax uses the active Client.
"""

from __future__ import annotations

from .ddp import WorkerLostError
from .workers import (
    ModelRef,
    active_client,
    cache_info,
    clear_cache,
    model_key,
    prepare,
    tune_worker_allocator,
    worker_cache_info,
)

__all__ = [
    "ModelRef", "WorkerLostError", "active_client", "cache_info", "clear_cache", "model_key", "prepare",
    "tune_worker_allocator", "worker_cache_info",
]


def __getattr__(name: str):
    if name in ("zarr", "ddp", "workers"):  # submodules, imported on first use
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xclimax.distributed' has no attribute {name!r}")
