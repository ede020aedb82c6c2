"""Data-parallel training on a dask cluster: one torch ``DistributedDataParallel`` rank per worker.

:func:`launch` runs a function once on every worker of a Client, each call a rank of a torch
process group (gloo on CPU, nccl on GPU). Ranks rendezvous through a ``TCPStore`` served by
the dask scheduler's process (on the scheduler's host, a free port); when the scheduler cannot
serve one (no torch there), rank 0's worker serves it. Arguments are scattered once (workers
fetch them from each other), so a model or an in-memory Dataset crosses the client's network
link once; data opened from a zarr path or fsspec URL travel as their (small) lazy graphs and
each rank reads its own samples straight from the store.

The client watches the ranks: when a worker running a rank leaves the cluster (killed,
pre-empted, out of memory) the run is stopped and :class:`WorkerLostError` says so, naming the
worker; a run that wrote checkpoints continues from the last one with ``resume=True``.
Rank 0's progress reaches the client's progress bar through dask's event stream.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..exceptions import DataError, XClimaxError
from ..options import OPTIONS
from .workers import resolve_worker_device, tune_worker_allocator

__all__ = ["launch", "RankContext", "WorkerLostError", "free_port"]

logger = logging.getLogger(__name__)


class WorkerLostError(XClimaxError, RuntimeError):
    """A dask worker running a rank of a data-parallel run left the cluster."""


@dataclass
class RankContext:
    """What a rank knows about the run: passed to the function run by :func:`launch` as ``ctx=``."""

    rank: int
    world_size: int
    device: Any
    backend: str
    run_id: str

    @property
    def is_main(self) -> bool:
        """True on rank 0 (which writes checkpoints and returns the results)."""
        return self.rank == 0

    def report(self, step: int, total: int, loss: float | None = None) -> None:
        """Send rank 0's progress (one optimiser step) to the client: :func:`launch`'s ``on_event``."""
        if self.rank != 0:
            return
        try:
            from distributed import get_worker

            get_worker().log_event(_topic(self.run_id), {"step": int(step), "total": int(total), "loss": loss})
        except Exception:  # pragma: no cover - progress is best-effort
            logger.debug("could not report progress", exc_info=True)


def _topic(run_id: str) -> str:
    return f"xclimax-ddp-{run_id}"


# ----------------------------------------------------------------------------- rendezvous store

_STORES: dict[str, Any] = {}
_STORES_LOCK = threading.Lock()


def _start_store(run_id: str, world_size: int) -> int:
    """Serve a TCPStore in this process (the scheduler, or rank 0's worker); returns its port."""
    import torch.distributed as dist

    store = dist.TCPStore("0.0.0.0", 0, world_size=None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))
    with _STORES_LOCK:
        _STORES[run_id] = store
    return int(store.port)


def _stop_store(run_id: str) -> None:
    with _STORES_LOCK:
        _STORES.pop(run_id, None)


def free_port() -> int:
    """A TCP port that is free on this host now.

    Examples
    --------
    >>> 0 < free_port() < 65536
    True
    """
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _host(address: str) -> str:
    """The host of a dask address such as ``tcp://10.0.0.5:8786`` or ``tls://[::1]:8786``."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
    return host.strip("[]")


# ----------------------------------------------------------------------------- on the worker


class _Bundle:
    """Arguments scattered once to the cluster (a plain container: dask would unpack dicts and lists)."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs


def _probe(device: Any) -> tuple[int, str]:
    """(pid, device type) of this worker for ``device``."""
    return os.getpid(), resolve_worker_device(device).type


def _rank_main(bundle: _Bundle, rank: int, world_size: int, host: str, port: int, backend: str, run_id: str,
               device: Any, timeout_s: float, tune_allocator: bool = True) -> Any:
    import dask
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        raise RuntimeError("a torch process group is already running in this worker process")
    dev = resolve_worker_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    tune_worker_allocator(tune_allocator)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=min(timeout_s, 120)))
    store = dist.PrefixStore(run_id, store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    logger.info("rank %d/%d up on %s (%s)", rank, world_size, dev, backend)
    ctx = RankContext(rank, world_size, dev, backend, run_id)
    try:
        # this rank's reads run here, in threads: never through a Client (no task from within a task)
        with dask.config.set(scheduler="threads"):
            return bundle.fn(*bundle.args, ctx=ctx, **bundle.kwargs)
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - a broken group (lost peer) may not tear down cleanly
            logger.debug("destroy_process_group failed", exc_info=True)


# ----------------------------------------------------------------------------- on the client


def _is_peer_error(err: BaseException) -> bool:
    """An error that only says another rank went away (gloo/nccl connection errors)."""
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("Connection reset by peer", "Connection closed by peer", "NCCL", "gloo")
    )


def launch(
    client: Any,
    fn: Callable[..., Any],
    *args: Any,
    device: Any = None,
    timeout: float = 1800.0,
    on_event: Callable[[dict], None] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, ctx=RankContext, **kwargs)`` once per worker of ``client`` as torch DDP ranks.

    Parameters
    ----------
    client : distributed.Client
        One rank per worker; each worker must be its own process (``LocalCluster(processes=True)``,
        ``dask-cuda``, ``dask-jobqueue``, ...).
    fn : callable
        An importable function (it is pickled by reference) taking the keyword ``ctx``.
    device : str, optional
        The ranks' device spec, resolved on each worker (default: the ``device`` option; "auto":
        each worker's own GPU, or its CPU). GPUs on every worker give the nccl backend, else gloo.
    timeout : float
        Seconds a collective may wait for a slow rank before failing.
    on_event : callable, optional
        Called in this thread with each message of rank 0's :meth:`RankContext.report` calls
        (``{"step", "total", "loss"}``), while the ranks run.

    Returns
    -------
    list
        ``fn``'s results, by rank.

    Raises
    ------
    WorkerLostError
        When a worker running a rank leaves the cluster.
    """
    from distributed import Client

    if not isinstance(client, Client):
        raise DataError(f"client must be a dask.distributed.Client; got {type(client).__name__}")
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise DataError("the dask cluster has no workers: wait for them (client.wait_for_workers(n)) first")
    world = len(workers)
    spec = device if device is not None else OPTIONS["device"]
    spec = None if spec is None else str(spec)
    probes = client.run(_probe, spec, workers=workers)
    pids = [probes[w][0] for w in workers]
    hosts = [_host(w) for w in workers]
    if len(set(zip(hosts, pids))) < world:
        raise DataError(
            f"data-parallel training needs one process per dask worker, but {world} workers share "
            f"{len(set(zip(hosts, pids)))} process(es); use LocalCluster(processes=True) or one worker per process"
        )
    kinds = {probes[w][1] for w in workers}
    if len(kinds) > 1:
        raise DataError(f"workers resolve device {spec!r} to different kinds {sorted(kinds)}; pass device='cpu' or use only GPU workers")
    backend = "nccl" if kinds == {"cuda"} else "gloo"
    run_id = uuid.uuid4().hex[:12]
    try:
        host = _host(client.scheduler.address)
        port = client.run_on_scheduler(_start_store, run_id, world)
        on_scheduler = True
    except Exception as err:  # no torch on the scheduler: rank 0's worker serves the store
        logger.info("the scheduler cannot serve the rendezvous store (%s); rank 0's worker does", err)
        host = hosts[0]
        port = client.run(_start_store, run_id, world, workers=[workers[0]])[workers[0]]
        on_scheduler = False
    logger.info("data-parallel run %s: %d ranks (%s), rendezvous at %s:%d", run_id, world, backend, host, port)

    [bundle] = client.scatter([_Bundle(fn, args, kwargs)], hash=False)
    futures = [
        client.submit(_rank_main, bundle, rank, world, host, port, backend, run_id, spec, float(timeout),
                      bool(OPTIONS["worker_allocator"]), workers=[addr], allow_other_workers=False, pure=False, retries=0,
                      key=f"xclimax-ddp-{run_id}-rank{rank}")
        for rank, addr in enumerate(workers)
    ]

    events: queue.SimpleQueue = queue.SimpleQueue()  # filled in the client's event loop, drained here

    def drain() -> None:
        while on_event is not None:
            try:
                msg = events.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, dict):
                on_event(msg)

    topic = _topic(run_id)
    client.subscribe_topic(topic, lambda event: events.put(event[1]))
    try:
        checked = 0.0
        while True:
            drain()
            failed = [f for f in futures if f.status == "error"]
            lost: list = []
            if failed or time.monotonic() - checked > 0.5:  # (asks the scheduler: not at every poll)
                checked = time.monotonic()
                alive = client.scheduler_info()["workers"]
                lost = [(r, w) for r, w in enumerate(workers) if w not in alive]
            if failed and not lost:
                # a rank whose peer died fails before the scheduler notices the death: wait a little to tell
                # a lost worker from an error in a rank, and let the other ranks fail too
                deadline = time.monotonic() + 10.0
                while not lost and time.monotonic() < deadline:
                    time.sleep(0.25)
                    lost = [(r, w) for r, w in enumerate(workers) if w not in client.scheduler_info()["workers"]]
                    if not all(_is_peer_error(f.exception()) for f in futures if f.status == "error"):
                        break  # a rank's own error: the root cause
            errors = [f.exception() for f in futures if f.status == "error"]
            own = [e for e in errors if not _is_peer_error(e)]
            if own:  # a rank's own error is the root cause, even when a worker went away after it
                raise own[0]
            if lost:
                r, w = lost[0]
                raise WorkerLostError(
                    f"worker {w} running rank {r} of {world} left the cluster during data-parallel training; "
                    "the run stopped. With checkpoint_dir set, call again with resume=True to continue from the "
                    "last checkpoint"
                )
            if errors:
                raise errors[0]
            if all(f.status == "finished" for f in futures):
                results = client.gather(futures)
                drain()
                return results
            time.sleep(0.05)
    finally:
        client.unsubscribe_topic(topic)
        client.cancel(futures + [bundle], force=True)
        try:
            if on_scheduler:
                client.run_on_scheduler(_stop_store, run_id)
            elif workers[0] in client.scheduler_info()["workers"]:
                client.run(_stop_store, run_id, workers=[workers[0]])
        except Exception:  # pragma: no cover - cluster going away
            logger.debug("could not stop the rendezvous store", exc_info=True)


# ----------------------------------------------------------------------------- helpers for the fit loop (on a rank)


def wrap(model: Any, ctx: RankContext) -> Any:
    """``model`` in torch ``DistributedDataParallel`` (attributes not found on the wrapper come from the model)."""
    from torch.nn.parallel import DistributedDataParallel

    class _Wrapped(DistributedDataParallel):
        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return _Wrapped(model, device_ids=device_ids)  # (ClimaX has no buffers to keep in sync)


def batch_loss(pred: Any, batch: Any, wmap: Any, ctx: RankContext) -> tuple[Any, Any]:
    """This rank's share of the global batch's per-variable loss ``[V]``, and the loss to back-propagate.

    The loss of a global batch of ``N`` samples is ``mean_v sum_{i, pixels} w e_iv / (N * n_pixels)``
    (ClimaX's latitude-weighted MSE). Each rank sums over its own samples (stand-in samples have
    weight 0) and divides by the *global* ``N``; DDP averages gradients over ``world_size`` ranks,
    so the rank back-propagates ``world_size`` times its share: the averaged gradient is the
    gradient of the global batch's loss whatever the sizes of the ranks' parts.
    """
    err = ((pred.float() - batch.y) ** 2 * wmap).sum((2, 3))  # [b, V]
    if batch.weight is not None:
        err = err * batch.weight[:, None]
    n = batch.global_size if batch.global_size is not None else pred.shape[0]
    share = err.sum(0) / (n * (wmap > 0).sum())
    return share, share.mean() * ctx.world_size


def all_sum(tensor: Any) -> Any:
    """Sum of ``tensor`` over the ranks (in place, returned)."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, ctx: RankContext) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def gather_objects(obj: Any, ctx: RankContext) -> list[Any]:
    """Every rank's ``obj``, by rank (pickled)."""
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
