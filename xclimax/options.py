"""Global options for xclimax, settable globally or in a ``with`` block.

Examples
--------
>>> import xclimax
>>> with xclimax.set_options(device="cpu"):
...     xclimax.get_options()["device"]
'cpu'
>>> xclimax.get_options()["device"]
'auto'
"""

from __future__ import annotations

from typing import Any, Callable

from .exceptions import XClimaxError

__all__ = ["OPTIONS", "set_options", "get_options"]

OPTIONS: dict[str, Any] = {
    # show tqdm / dask progress bars on long work
    "progress": True,
    # torch device used when a function is given device=None ("auto": cuda if available)
    "device": "auto",
    # mixed precision for inference/training on GPU: "bf16", "fp16" or None
    "autocast": None,
    # user additions to the variable vocabulary: {climax_name: {"standard_name": (...), "units": ..., ...}}
    "extra_variables": {},
    # explicit user mapping {climax_name: dataset variable name}, bypassing CF lookup
    "variable_map": {},
    # training reads of zarr stores decode with the zarrs (Rust) codec pipeline when it is installed
    "zarrs": True,
    # models kept resident per dask worker (and copies per process), least recently used evicted first
    "worker_cache_size": 2,
    # dask workers raise glibc's mmap/trim thresholds that the nanny's MALLOC_TRIM_THRESHOLD_ fixed (faster on CPU)
    "worker_allocator": True,
}


def _is_bool(value):
    return isinstance(value, bool)


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_device(value):
    """A device torch can use here: "auto", None, "cpu", "cuda", "cuda:1", a torch.device, ...

    Checked when the option is set, so that a typo ("gpu0") or a device this machine lacks
    fails at once instead of in every later call.
    """
    if value is None or value == "auto":
        return True
    if not (isinstance(value, str) or type(value).__name__ == "device"):
        return False
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        return False
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise XClimaxError(f"option 'device' is {value!r} but CUDA is not available on this machine; "
                               "use 'cpu' or 'auto' (CUDA when available)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise XClimaxError(f"option 'device' is {value!r} but this machine has {torch.cuda.device_count()} "
                               "CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise XClimaxError(f"option 'device' is {value!r} but MPS is not available on this machine")
    return True


def _is_autocast(value):
    return value in (None, "bf16", "fp16")


def _is_mapping(value):
    return isinstance(value, dict)


def _is_criteria(value):
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items())


def _is_name_map(value):
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


_VALIDATORS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "progress": (_is_bool, "a bool"),
    "device": (_is_device, "a torch device such as 'cpu', 'cuda', 'cuda:0' or 'auto'"),
    "autocast": (_is_autocast, "None, 'bf16' or 'fp16'"),
    "extra_variables": (_is_criteria, "a dict {name: {criteria}}"),
    "variable_map": (_is_name_map, "a dict {climax name: dataset variable name}"),
    "zarrs": (_is_bool, "a bool"),
    "worker_cache_size": (_is_positive_int, "a positive integer"),
    "worker_allocator": (_is_bool, "a bool"),
}


def get_options() -> dict[str, Any]:
    """Return a copy of the current options.

    Examples
    --------
    >>> sorted(get_options())[:2]
    ['autocast', 'device']
    """
    return dict(OPTIONS)


class set_options:
    """Set xclimax options globally or, as a context manager, temporarily.

    Parameters
    ----------
    progress : bool
        Show progress bars on long work (default True).
    device : str
        Default torch device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    autocast : {None, "bf16", "fp16"}
        Mixed precision used on GPU.
    extra_variables : dict
        Variables outside the 48 official ones, ``{name: {"standard_name": (...), "units": ...}}``.
    variable_map : dict
        Explicit ``{climax name: dataset variable name}`` mapping that bypasses CF lookup.
    zarrs : bool
        Training reads of zarr stores decode with the ``zarrs`` (Rust) codec pipeline when that
        package is installed (default True; ``pip install zarrs``: about twice the loader
        throughput on a 16-core GPU node).
    worker_cache_size : int
        Models each dask worker keeps resident (on its device) for lazy predictions, and model
        copies kept per process; the least recently used is dropped first (default 2).
    worker_allocator : bool
        In dask worker processes that run xclimax models or training ranks, raise glibc's mmap
        and trim thresholds that dask's nanny fixed with ``MALLOC_TRIM_THRESHOLD_=65536``, so
        the network's buffers are reused instead of mapped afresh on every pass (about 1.4x
        faster on CPU workers; see :func:`xclimax.distributed.tune_worker_allocator`). Default
        True; it travels with the tasks.

    Examples
    --------
    >>> import xclimax
    >>> _ = xclimax.set_options(progress=False)  # global
    >>> _ = xclimax.set_options(progress=True)
    """

    def __init__(self, **kwargs: Any) -> None:
        self.old: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key not in OPTIONS:
                raise XClimaxError(f"unknown xclimax option {key!r}; valid options are {sorted(OPTIONS)}")
            check, expected = _VALIDATORS[key]
            if not check(value):
                raise XClimaxError(f"option {key!r} must be {expected}; got {value!r}")
            self.old[key] = OPTIONS[key]
        OPTIONS.update(kwargs)

    def __enter__(self) -> "set_options":
        return self

    def __exit__(self, *exc: object) -> None:
        OPTIONS.update(self.old)
