"""Resident models on dask workers: each worker loads a model once and keeps it on its own device.

A prediction on dask-backed data is a graph of one task per chunk-aligned batch. How the model
reaches the tasks depends on what computes the graph:

* **A dask.distributed Client** (``Client(cluster)`` is active when the graph is built): the
  model's weights, configuration and statistics are serialised once (safetensors) and
  scattered to every worker (``client.scatter(..., broadcast=True)``) under a key made from a
  content hash of the weights, configuration and statistics. The payload is scattered once per
  client and model (repeated calls reuse it); a task only names it, so the graph stays small.
  The first task on a worker builds the model **on that worker's device** (a dask-cuda worker
  sees its own GPU as the current CUDA device; a worker without a GPU uses the CPU) and keeps
  it in a per-worker LRU cache of at most ``set_options(worker_cache_size=...)`` models, so
  later tasks and later calls with the same model load nothing. Replicas of the payload on
  every worker let a task whose worker died run elsewhere.
* **In-process** (threaded or synchronous schedulers, no Client): the caller's model object is
  used directly when it is already on the target device and in eval mode; otherwise a copy on
  the target device in eval mode is used (cached by content hash), so the caller's model is
  never moved or switched out of training mode.

Options that change results (``autocast``; ``device`` when the call leaves it to the option)
are captured on the client when the graph is built and travel with the tasks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

from ..options import OPTIONS

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..nn.model import ClimaX

__all__ = [
    "ModelRef",
    "prepare",
    "model_key",
    "active_client",
    "resolve_worker_device",
    "tune_worker_allocator",
    "cache_info",
    "worker_cache_info",
    "clear_cache",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- content hash

_DIGESTS: "weakref.WeakKeyDictionary[Any, tuple[tuple, str]]" = weakref.WeakKeyDictionary()
_DIGEST_LOCK = threading.Lock()


def _weights_signature(model: Any) -> tuple:
    """Cheap fingerprint of the tensors' identity and version counters (bumped by in-place updates)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device)) for name, t in tensors)


def _weights_digest(model: Any) -> str:
    """SHA-256 of the weights' bytes, computed once per model object while its tensors are unchanged."""
    sig = _weights_signature(model)
    with _DIGEST_LOCK:
        hit = _DIGESTS.get(model)
        if hit is not None and hit[0] == sig:
            return hit[1]
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    digest = h.hexdigest()
    with _DIGEST_LOCK:
        _DIGESTS[model] = (sig, digest)
    return digest


def model_key(model: "ClimaX") -> str:
    """Content hash of a model's weights, configuration and normalisation statistics.

    Two models with equal weights, configuration and statistics get the same key, whatever their
    device or train/eval mode; the weights' hash is computed once per model object and reused
    until a parameter changes (an optimiser step, ``load_state_dict``, ...).

    Examples
    --------
    >>> import xclimax
    >>> m = xclimax.ClimaX(["2m_temperature"], img_size=(4, 8), embed_dim=16, depth=1, num_heads=2)
    >>> k = model_key(m)
    >>> model_key(m) == k, len(k)
    (True, 64)
    >>> import torch
    >>> with torch.no_grad():
    ...     _ = m.head[-1].bias.add_(1.0)
    >>> model_key(m) == k
    False
    """
    extra = json.dumps(
        {"config": dict(getattr(model, "config", {}) or {}), "stats": dict(getattr(model, "stats", {}) or {}),
         "class": f"{type(model).__module__}.{type(model).__qualname__}"},
        sort_keys=True, default=str,
    )
    return hashlib.sha256((_weights_digest(model) + extra).encode()).hexdigest()


def _payload(model: "ClimaX") -> tuple:
    """What a worker needs to rebuild ``model``: its class, safetensors bytes, config, stats, metadata."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cls = f"{type(model).__module__}:{type(model).__qualname__}"
    return (cls, save(state), dict(model.config), dict(model.stats), dict(getattr(model, "metadata", {}) or {}))


def _build(payload: tuple, device: "torch.device") -> "ClimaX":
    """The model of a :func:`_payload` on ``device``, in eval mode (``cls.from_state`` when the class has one)."""
    import importlib

    from safetensors.torch import load

    cls_path, blob, config, stats, metadata = payload
    module, _, name = cls_path.partition(":")
    try:
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"cannot rebuild a model of class {cls_path!r} on this worker: {err}; define model "
                           "classes in a module the workers can import") from err
    state = load(blob)
    if hasattr(cls, "from_state"):
        model = cls.from_state(state, config, stats=stats, metadata=metadata)
    else:
        model = cls(**config)
        model.load_state_dict(state)
    model.stats, model.metadata = dict(stats), dict(metadata)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- devices


def resolve_worker_device(spec: Any = None) -> "torch.device":
    """The torch device for ``spec`` **in this process** (run on the worker).

    ``None`` means the ``device`` option; ``"auto"`` is CUDA when this process sees a GPU, else
    the CPU; ``"cuda"`` without an index is this process's current CUDA device (with dask-cuda
    each worker's ``CUDA_VISIBLE_DEVICES`` makes that its own GPU). Explicit indices are kept.

    Examples
    --------
    >>> resolve_worker_device("cpu")
    device(type='cpu')
    """
    import torch

    spec = OPTIONS["device"] if spec is None else spec
    if str(spec) == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _on_device(model: Any, device: "torch.device") -> bool:
    for p in model.parameters():
        d = p.device
        return d.type == device.type and (device.index is None or d.index in (None, device.index))
    return True


def _training(model: Any) -> bool:
    return any(m.training for m in model.modules())


# ----------------------------------------------------------------------------- worker processes

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its own dynamic threshold on 64-bit
_TRIM_THRESHOLD = 64 << 20  # twice the mmap threshold, as glibc's dynamic rule sets it
_SMALL_TRIM = 1 << 20
_TUNED: list[bool] = []  # this process's decision, once taken: [True] tuned, [False] left as it is
_TUNE_LOCK = threading.Lock()


def tune_worker_allocator(enable: bool = True) -> bool:
    """Let glibc reuse freed tensor buffers in a dask worker process (once per process).

    dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
    ``distributed.nanny.pre-spawn-environ`` setting) so that memory goes back to the OS. Setting
    that variable also switches off glibc's *dynamic* mmap threshold, so every buffer above
    128 KiB (every activation of the network) is mapped fresh from the OS and zeroed page by page
    on each forward pass: CPU inference and training then run about 1.4x slower in a worker than
    in the client's process. This raises the mmap threshold to 32 MiB and the trim threshold to
    64 MiB (what glibc's dynamic rule would reach), so those buffers are reused. Free memory above
    64 MiB per arena still goes back to the OS.

    It does nothing (and returns False) unless ``enable`` is true, this is Linux with glibc and
    ``MALLOC_TRIM_THRESHOLD_`` is set to less than 1 MiB (a large value set on purpose is left
    alone). xclimax calls it when a worker first builds a resident model or starts a training
    rank; ``set_options(worker_allocator=False)`` turns that off.

    Returns
    -------
    bool
        Whether this process's allocator has been tuned.

    Examples
    --------
    >>> tune_worker_allocator(enable=False)  # asks only: this process has not been tuned
    False
    """
    if _TUNED or not enable:  # (checked on every task: decided once per process)
        return bool(_TUNED and _TUNED[0])
    with _TUNE_LOCK:
        if not _TUNED:
            _TUNED.append(_tune())
        return _TUNED[0]


def _tune() -> bool:
    try:
        small = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", "")) < _SMALL_TRIM
    except ValueError:
        small = False
    if not (small and sys.platform.startswith("linux")):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only
        return False
    if libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) != 1:
        return False
    logger.info("raised glibc's mmap/trim thresholds in worker process %d (MALLOC_TRIM_THRESHOLD_ was %s)",
                os.getpid(), os.environ["MALLOC_TRIM_THRESHOLD_"])
    return True


# ----------------------------------------------------------------------------- caches


class _ModelCache:
    """A bounded LRU of models built in this process (or on this worker), with load counters."""

    def __init__(self) -> None:
        self.models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.lock = threading.RLock()
        self.loads = 0
        self.hits = 0
        self.evictions = 0
        self.size: int | None = None  # the bound of the latest call (it travels with the tasks)

    def get(self, key: str, device: "torch.device", build: Callable[[], Any], size: int) -> Any:
        k = (key, str(device))
        with self.lock:  # building under the lock: threads of one worker never load a model twice
            self.size = max(1, int(size))
            model = self.models.get(k)
            if model is not None:
                self.models.move_to_end(k)
                self.hits += 1
                return model
            model = build()
            self.models[k] = model
            self.loads += 1
            logger.info("loaded model %s on %s (%d resident)", key[:12], device, len(self.models))
            self._trim(self.size)
            return model

    def _trim(self, size: int) -> None:
        freed_cuda = False
        while len(self.models) > max(0, int(size)):
            (key, dev), _ = self.models.popitem(last=False)
            self.evictions += 1
            freed_cuda |= dev.startswith("cuda")
            logger.info("evicted model %s from %s", key[:12], dev)
        if freed_cuda:
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        with self.lock:
            return {
                "loads": self.loads, "hits": self.hits, "evictions": self.evictions,
                "resident": [(k[:12], d) for k, d in self.models], "size": self.size,
            }

    def clear(self) -> None:
        with self.lock:
            self._trim(0)


_PROCESS_CACHE = _ModelCache()
_WORKER_ATTR = "_xclimax_models"
_ATTR_LOCK = threading.Lock()


def _current_worker() -> Any:
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def _cache(worker: Any = None) -> _ModelCache:
    """The model cache of ``worker`` (default: the dask worker running this task), or of this process."""
    worker = worker if worker is not None else _current_worker()
    if worker is None:
        return _PROCESS_CACHE
    with _ATTR_LOCK:
        cache = getattr(worker, _WORKER_ATTR, None)
        if cache is None:
            cache = _ModelCache()
            setattr(worker, _WORKER_ATTR, cache)
    return cache


def cache_info(dask_worker: Any = None) -> dict[str, Any]:
    """Counters of the model cache of a dask worker (or of this process): loads, hits, evictions.

    Run it on every worker with ``client.run(xclimax.distributed.cache_info)`` (which passes
    ``dask_worker``) or :func:`worker_cache_info`.

    Examples
    --------
    >>> sorted(cache_info())
    ['evictions', 'hits', 'loads', 'resident', 'size']
    """
    return _cache(dask_worker).info()


def worker_cache_info(client: Any = None) -> dict[str, dict[str, Any]]:
    """:func:`cache_info` of every worker of ``client`` (default: the active Client), by address."""
    client = client or active_client(require_scheduler=False)
    if client is None:
        raise ValueError("no dask.distributed Client is active; pass client=")
    return client.run(cache_info)


def _cache_size() -> int:
    return int(OPTIONS.get("worker_cache_size", 2))


def clear_cache(client: Any = None) -> None:
    """Drop the resident models of this process and, given a Client, of its workers and its scattered payloads."""
    _PROCESS_CACHE.clear()
    with _SCATTER_LOCK:
        if client is not None:
            _SCATTERED.pop(client.id, None)
    if client is not None:
        client.run(_clear_worker)


def _clear_worker(dask_worker: Any = None) -> None:
    _cache(dask_worker).clear()


# ----------------------------------------------------------------------------- client side

_SCATTERED: dict[str, "OrderedDict[str, Any]"] = {}
_WARNED: set[str] = set()
_SCATTER_LOCK = threading.Lock()


def active_client(require_scheduler: bool = True) -> Any:
    """The dask.distributed Client that will compute graphs built now, or None.

    With ``require_scheduler`` the Client counts only when it is dask's current scheduler (a
    ``dask.config.set(scheduler=...)`` block that picks another scheduler wins).
    """
    import sys

    if "distributed" not in sys.modules:  # no Client can exist: skip importing distributed
        return None
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    if client.status not in ("running", "connecting", "newly-created"):
        return None
    if require_scheduler:
        import dask.base

        if dask.base.get_scheduler() != client.get:
            return None
    return client


def _scatter(client: Any, model: Any, key: str) -> Any:
    """The Future of ``model``'s payload on every worker of ``client``: scattered once per (client, model)."""
    with _SCATTER_LOCK:
        held = _SCATTERED.setdefault(client.id, OrderedDict())
        future = held.get(key)
        if future is not None and future.status == "finished":
            held.move_to_end(key)
            return future
    name = f"xclimax-model-{key[:32]}"
    future = client.scatter({name: _payload(model)}, broadcast=True, hash=False)[name]
    with _SCATTER_LOCK:
        held = _SCATTERED.setdefault(client.id, OrderedDict())
        held[key] = future
        while len(held) > max(1, _cache_size()):
            held.popitem(last=False)  # released once no graph refers to it
    logger.info("scattered model %s to the workers of %s", key[:12], client.scheduler.address)
    return future


class ModelRef:
    """A picklable, tokenizable reference to a model, resolved where a task runs.

    Built by :func:`prepare` on the client. ``get(payload)`` returns ``(model, device)``.
    """

    __slots__ = ("key", "device", "autocast", "cache_size", "local", "inline", "tune_allocator")

    def __init__(
        self, key: str, device: Any, autocast: str | None, cache_size: int, local: Any = None, inline: Any = None,
        tune_allocator: bool = True,
    ) -> None:
        self.key = key
        self.device = None if device is None else str(device)
        self.autocast = autocast
        self.cache_size = int(cache_size)
        self.local = local  # in-process: the model object itself
        self.inline = inline  # payload carried in the pickle (a local ref sent to a worker)
        self.tune_allocator = bool(tune_allocator)

    def __dask_tokenize__(self) -> tuple:
        return ("xclimax-model", self.key, self.device, self.autocast)

    def __repr__(self) -> str:
        where = "local" if self.local is not None else "worker"
        return f"ModelRef({self.key[:12]}, device={self.device!r}, autocast={self.autocast!r}, {where})"

    def __reduce__(self) -> tuple:
        if self.local is not None:
            # built for an in-process scheduler but sent to a worker: the weights travel with every task
            if self.key not in _WARNED:
                _WARNED.add(self.key)
                logger.warning("a prediction built without a dask.distributed Client is being sent to workers: the "
                               "model's weights travel with every task; build it after creating the Client")
            return (ModelRef, (self.key, self.device, self.autocast, self.cache_size, None, _payload(self.local),
                               self.tune_allocator))
        return (ModelRef, (self.key, self.device, self.autocast, self.cache_size, None, self.inline,
                           self.tune_allocator))

    def get(self, payload: Any = None) -> tuple[Any, "torch.device"]:
        """The model (eval mode, on its device) and the device, resolved in this process."""
        device = resolve_worker_device(self.device)
        local = self.local
        if local is not None:
            if _on_device(local, device) and not _training(local):
                return local, device
            return _PROCESS_CACHE.get(self.key, device, lambda: copy.deepcopy(local).to(device).eval(),
                                      self.cache_size), device
        payload = payload if payload is not None else self.inline
        if payload is None:
            raise RuntimeError(f"model {self.key[:12]} is not resident here and no payload came with the task")
        if _current_worker() is not None:
            tune_worker_allocator(self.tune_allocator)
        return _cache().get(self.key, device, lambda: _build(payload, device), self.cache_size), device


def prepare(model: "ClimaX", device: Any = None, client: Any = "auto") -> tuple[ModelRef, Any]:
    """A :class:`ModelRef` for the tasks of a graph built now, and the payload argument to pass them.

    Parameters
    ----------
    model : ClimaX
    device : str or torch.device, optional
        Device of the tasks; default: the ``device`` option, resolved where the tasks run.
    client : Client, None or "auto"
        ``"auto"``: the active dask.distributed Client when it is dask's scheduler. With a
        Client the payload is a Future of the scattered weights (one copy per worker); without,
        it is None and the reference holds the model (or a copy on ``device`` in eval mode).

    Examples
    --------
    >>> import xclimax
    >>> m = xclimax.ClimaX(["2m_temperature"], img_size=(4, 8), embed_dim=16, depth=1, num_heads=2)
    >>> ref, payload = prepare(m, "cpu", client=None)
    >>> model, dev = ref.get(payload)
    >>> model is m, m.training, dev
    (False, True, device(type='cpu'))
    >>> ref2, _ = prepare(m.eval(), "cpu", client=None)
    >>> ref2.get()[0] is m
    True
    """
    if client == "auto":
        client = active_client()
    spec = device if device is not None else OPTIONS["device"]
    spec = str(spec) if spec is not None else None
    autocast, size, tune = OPTIONS["autocast"], _cache_size(), bool(OPTIONS["worker_allocator"])
    key = model_key(model)
    if client is not None:
        return ModelRef(key, spec, autocast, size, tune_allocator=tune), _scatter(client, model, key)
    return ModelRef(key, str(resolve_worker_device(spec)), autocast, size, local=model, tune_allocator=tune), None
