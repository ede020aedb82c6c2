"""The training recipe: one :class:`TrainConfig` shared by ``pretrain``, ``finetune`` and the accessor.

Each task has its own defaults (``Task.recipe``, e.g. ClimaX's fine-tuning betas); a config
given by the user replaces them, and keyword arguments override single fields::

    cfg = xclimax.TrainConfig(max_steps=2_000, lr=2e-4)
    model, history = xclimax.pretrain(ds, config=cfg, batch_size=8)   # batch_size overrides cfg
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from ..exceptions import DataError

__all__ = ["TrainConfig", "build_config", "with_config_signature"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the optimisation recipe and how the run is carried out).

    Parameters
    ----------
    batch_size : int
        Samples per micro-batch.
    max_steps, epochs : int, optional
        Length of training in optimiser steps, or in epochs (default: 1 epoch).
    lr, betas, weight_decay
        AdamW settings (ClimaX pre-training: 5e-4, (0.9, 0.95), 1e-5).
    warmup_steps, warmup_start_lr, eta_min
        :class:`~xclimax.training.optim.LinearWarmupCosine` settings (default warm-up: 10 % of
        the steps, at most 10,000).
    grad_clip : float or None
        Maximum gradient norm.
    accumulate : int
        Micro-batches per optimiser step.
    precision : {None, "bf16", "fp16"}
        Autocast precision (``fp16`` with a gradient scaler, CUDA only). Default: the
        ``autocast`` option on CUDA, float32 otherwise.
    seed : int
        Seeds model initialisation, dropout and the batch order; on CPU runs are reproducible.
    device : str or torch.device, optional
        Default: the ``device`` option.
    checkpoint_dir, checkpoint_every, resume
        Write the full training state (model, optimiser, scheduler, RNG states, data position,
        history) every ``checkpoint_every`` steps (default: a tenth of the run) and at the end,
        atomically; ``resume=True`` continues from the latest one (bit for bit on CPU).
    val_every : int, optional
        Validate every ``val_every`` steps (default: at the end of each epoch and of training).
    block_size, buffer_size, prefetch
        :class:`~xclimax.loading.BatchLoader` settings.
    activation_checkpointing : bool
        Recompute activations in the backward pass (``model.checkpoint_activations``): at
        least twice the batch in the same memory, for about a third more compute per step;
        identical results. See ``docs/performance.md``.
    callback : callable, optional
        ``callback(step, loss)`` after each optimiser step (and after any checkpoint of that
        step). On CUDA the losses are read from the GPU every 16 steps, and the callbacks of
        those steps are called then, in order. With ``client`` it is called in this process as
        rank 0 reports its steps.
    client : distributed.Client, optional
        Train data-parallel on this dask cluster: one torch ``DistributedDataParallel`` rank per
        worker (gloo on CPU, nccl on GPU), each reading its share of every global batch straight
        from the data (a zarr-backed Dataset travels as its lazy graph; an in-memory one is sent
        once). ``batch_size`` is the global batch: the result equals single-process training
        with the same settings (up to floating-point rounding; dropout draws differ). Rank 0
        writes the checkpoints and returns the model and history; a worker lost mid-run raises
        :class:`~xclimax.distributed.ddp.WorkerLostError`, and ``resume=True`` continues from
        the last checkpoint. See :mod:`xclimax.distributed`.

    Examples
    --------
    >>> cfg = TrainConfig(max_steps=10)
    >>> cfg.replace(lr=1e-4).lr, cfg.lr
    (0.0001, 0.0005)
    >>> TrainConfig(accumulate=0)
    Traceback (most recent call last):
    ...
    xclimax.exceptions.DataError: accumulate must be a positive integer; got 0
    """

    batch_size: int = 16
    max_steps: int | None = None
    epochs: int | None = None
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-5
    warmup_steps: int | None = None
    warmup_start_lr: float = 1e-8
    eta_min: float = 1e-8
    grad_clip: float | None = 1.0
    accumulate: int = 1
    precision: str | None = None
    seed: int = 42
    device: Any = None
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    val_every: int | None = None
    block_size: int | None = None
    buffer_size: int | None = None
    prefetch: int = 2
    activation_checkpointing: bool = False
    callback: Callable[[int, float], None] | None = None
    client: Any = None

    def __post_init__(self) -> None:
        def positive_int(name: str, optional: bool) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be a positive integer{' or None' if optional else ''}; got {value!r}")

        for name in ("batch_size", "accumulate"):
            positive_int(name, False)
        for name in ("max_steps", "epochs", "checkpoint_every", "val_every", "block_size", "buffer_size"):
            positive_int(name, True)
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise DataError(f"prefetch must be a non-negative integer; got {self.prefetch!r}")
        for name in ("lr", "weight_decay", "warmup_start_lr", "eta_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise DataError(f"{name} must be a non-negative number; got {value!r}")
        if self.lr <= 0:
            raise DataError(f"lr must be positive; got {self.lr!r}")
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
            raise DataError(f"betas must be two numbers in [0, 1); got {betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if self.grad_clip is not None and (not isinstance(self.grad_clip, (int, float)) or self.grad_clip <= 0):
            raise DataError(f"grad_clip must be a positive number or None; got {self.grad_clip!r}")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise DataError(f"warmup_steps must be a non-negative integer or None; got {self.warmup_steps!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise DataError(f"activation_checkpointing must be True or False; got {self.activation_checkpointing!r}")
        if self.precision not in (None, "bf16", "fp16"):
            raise DataError(f"precision must be None, 'bf16' or 'fp16'; got {self.precision!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise DataError(f"seed must be an integer; got {self.seed!r}")
        if self.callback is not None and not callable(self.callback):
            raise DataError(f"callback must be callable(step, loss); got {type(self.callback).__name__}")
        if self.client is not None and type(self.client).__name__ != "Client":
            raise DataError(f"client must be a dask.distributed.Client; got {type(self.client).__name__}")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (unknown names raise :class:`~xclimax.DataError`)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)


def _check_names(changes: Mapping[str, Any], where: str = "TrainConfig") -> None:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise DataError(f"unknown training setting(s) {unknown} for {where}; expected some of {sorted(known)}")


def build_config(config: TrainConfig | None, recipe: Mapping[str, Any] | None = None, where: str = "TrainConfig",
                 **overrides: Any) -> TrainConfig:
    """The config of a run: ``config`` (or the task's ``recipe`` on the defaults), then ``overrides``."""
    if config is not None and not isinstance(config, TrainConfig):
        raise DataError(f"config must be an xclimax.TrainConfig; got {type(config).__name__}")
    _check_names(overrides, where)
    base = config if config is not None else TrainConfig(**dict(recipe or {}))
    return dataclasses.replace(base, **overrides) if overrides else base


def _settings_doc() -> str:
    """The parameter entries of :class:`TrainConfig`'s docstring, for the functions that take its fields."""
    doc = TrainConfig.__doc__ or ""
    body = doc[doc.index("----------\n") + len("----------\n"): doc.index("\n    Examples")]
    return body.strip("\n").lstrip()


def with_config_signature(recipe: Mapping[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: show the :class:`TrainConfig` fields as keyword arguments of a ``**train_kwargs`` function.

    ``help()``, ``inspect.signature`` and Jupyter's tab completion then list the real parameters
    (with the task's defaults) instead of ``**train_kwargs``.
    """
    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        have = {p.name for p in params}
        defaults = {**{f.name: f.default for f in fields(TrainConfig)}, **dict(recipe or {})}
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
                 for name, value in defaults.items() if name not in have]
        func.__signature__ = sig.replace(parameters=params + extra)  # type: ignore[attr-defined]
        if func.__doc__ and "{train_settings}" in func.__doc__:
            func.__doc__ = func.__doc__.replace("{train_settings}", _settings_doc())
        return func

    return decorate
