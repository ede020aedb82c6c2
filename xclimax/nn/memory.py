"""Peak-memory estimates for ClimaX runs, so that no run dies of an out-of-memory error halfway.

The estimate follows the shapes of :class:`xclimax.nn.model.ClimaX`'s forward pass, per sample:

* the variable tokenizer works on ``V * L`` patches of ``K = p*p + 1`` values; its largest
  intermediate is the attention-weighted feature tensor ``[L, heads, V, K]``;
* each of the ``depth`` transformer blocks holds tokens ``[L, D]``, the ``qkv`` projection
  ``[L, 3D]``, the MLP's hidden layer ``[L, mlp_ratio * D]`` and, where attention is not fused,
  the scores ``[heads, L, L]``;
* the prediction head maps ``[L, D]`` to ``[Vout, H, W]``;

with ``L = ceil(H/p) * ceil(W/p)``. Inference keeps only the largest stage alive; training keeps the
activations of every stage for the backward pass, plus gradients and AdamW's two moments of
every parameter. The constants ``INFERENCE_FACTOR`` and ``TRAINING_FACTOR`` cover allocator
slack and temporaries; they were calibrated against measured peaks (``benchmarks/bench_memory.py``:
``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) so that the estimate is at or
above the measurement.

This module imports torch only (never xarray).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..exceptions import ResourceError

__all__ = ["MemoryEstimate", "estimate_memory", "available_memory", "fit_batch_size", "parameter_count"]

logger = logging.getLogger(__name__)

#: Multipliers of the activation estimate (measured peak / estimate stayed below them; see the module docstring).
INFERENCE_FACTOR = 1.0
TRAINING_FACTOR = 1.0
#: Bytes a first forward (backward) pass costs whatever the batch: kernels, thread pools, autograd bookkeeping.
OVERHEAD = 64 * 2**20
#: Fraction of the free memory a run may plan to use.
HEADROOM = 0.8
_GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of a run, in bytes.

    Attributes
    ----------
    fixed : int
        Independent of the batch: parameters (and, in training, their gradients and AdamW moments).
    per_sample : int
        Activations and data per sample.
    batch_size : int
    """

    fixed: int
    per_sample: int
    batch_size: int

    @property
    def total(self) -> int:
        """``fixed + batch_size * per_sample``."""
        return self.fixed + self.batch_size * self.per_sample

    def __str__(self) -> str:
        return f"{self.total / _GIB:.3g} GiB"


def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"patch_size": 2, "embed_dim": 1024, "depth": 8, "decoder_depth": 2, "num_heads": 16, "mlp_ratio": 4.0,
           "img_size": (32, 64), "variables": ()}
    cfg.update({k: v for k, v in dict(config).items() if v is not None})
    return cfg


def parameter_count(config: Mapping[str, Any]) -> int:
    """Number of parameters of a ClimaX with this configuration (no tensor is allocated).

    Examples
    --------
    >>> from xclimax.nn.model import ClimaX
    >>> m = ClimaX(["2m_temperature", "lattitude"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    >>> parameter_count(m.config) == sum(p.numel() for p in m.parameters())
    True
    """
    c = _cfg(config)
    V = max(len(c["variables"]), 1)
    p, D, depth, dd = int(c["patch_size"]), int(c["embed_dim"]), int(c["depth"]), int(c["decoder_depth"])
    hidden = int(D * float(c["mlp_ratio"]))
    H, W = (int(s) for s in c["img_size"])
    L = -(-H // p) * -(-W // p)  # grids that are not multiples of p are padded
    n = V * D * p * p + V * D  # token embeddings (weights + biases)
    n += V * D + D  # var_embed, var_query
    n += 3 * D * D + 3 * D + D * D + D  # var_agg (in/out projections)
    n += L * D  # pos_embed
    n += D + D  # lead_time_embed
    n += depth * (2 * D + 3 * D * D + 3 * D + D * D + D + 2 * D + D * hidden + hidden + hidden * D + D)
    n += 2 * D  # final norm
    n += dd * (D * D + D) + D * V * p * p + V * p * p  # head
    return int(n)


def _per_sample_floats(c: Mapping[str, Any], n_in: int, n_out: int, training: bool, checkpointing: bool = False) -> float:
    p, D, depth, dd = int(c["patch_size"]), int(c["embed_dim"]), int(c["depth"]), int(c["decoder_depth"])
    nh, hidden = int(c["num_heads"]), float(c["mlp_ratio"]) * int(c["embed_dim"])
    H, W = (int(s) for s in c["img_size"])
    L, K = -(-H // p) * -(-W // p), p * p + 1
    data = n_in * H * W + 2 * n_out * H * W  # input, prediction (and target when training)
    tokenizer = n_in * L * K * (nh + 2) + 2 * L * nh * n_in + 2 * L * D
    block = L * (6 * D + 2 * hidden) + nh * L * L
    head = L * D * (dd + 2) + 2 * n_out * H * W
    if training and checkpointing:  # (ClimaX(checkpoint_activations=True)) only the blocks' inputs are kept
        return data + (depth + 1) * L * D + max(tokenizer, block + L * D) + head
    if training:
        return data + tokenizer + depth * (block + L * D) + head
    return data + max(tokenizer, block, head) + L * D


def estimate_memory(
    config: Mapping[str, Any],
    batch_size: int,
    *,
    n_in: int | None = None,
    n_out: int | None = None,
    training: bool = False,
    bytes_per_value: int = 4,
    checkpointing: bool = False,
) -> MemoryEstimate:
    """Estimated peak memory of a forecast (``training=False``) or a training step.

    Parameters
    ----------
    config : mapping
        ``model.config`` (``variables``, ``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ...).
    batch_size : int
    n_in, n_out : int, optional
        Input and output variables per sample (default: all the model's variables).
    training : bool
        Forward and backward with AdamW (gradients and two moments per parameter).
    bytes_per_value : int
        4 for float32.
    checkpointing : bool
        Training with activation checkpointing (``ClimaX(checkpoint_activations=True)``).

    Examples
    --------
    >>> cfg = dict(variables=["a"] * 48, img_size=(32, 64), patch_size=2, embed_dim=1024, depth=8,
    ...            decoder_depth=2, num_heads=16, mlp_ratio=4.0)
    >>> est = estimate_memory(cfg, 8)
    >>> est.total > estimate_memory(cfg, 4).total, estimate_memory(cfg, 8, training=True).total > est.total
    (True, True)
    """
    c = _cfg(config)
    V = max(len(c["variables"]), 1)
    n_in = V if n_in is None else int(n_in)
    n_out = V if n_out is None else int(n_out)
    params = parameter_count(c) * bytes_per_value
    fixed = params * (4 if training else 1) + OVERHEAD  # weights (+ gradients + two AdamW moments)
    factor = TRAINING_FACTOR if training else INFERENCE_FACTOR
    per_sample = int(factor * _per_sample_floats(c, n_in, n_out, training, checkpointing) * bytes_per_value)
    return MemoryEstimate(int(fixed), max(per_sample, 1), int(batch_size))


def available_memory(device: Any) -> int:
    """Free memory in bytes on ``device``: CUDA free memory, or available host memory for the CPU.

    Examples
    --------
    >>> available_memory("cpu") > 0
    True
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of distributed
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE"))


def fit_batch_size(
    config: Mapping[str, Any],
    device: Any,
    *,
    requested: int | None = None,
    default: int = 32,
    n_in: int | None = None,
    n_out: int | None = None,
    training: bool = False,
    checkpointing: bool = False,
    what: str = "forecast",
    available: int | None = None,
) -> int:
    """A batch size that fits in memory on ``device``: check ``requested``, or pick one.

    With ``requested``, raise :class:`~xclimax.exceptions.ResourceError` when its estimated peak
    exceeds 80 % of the free memory, saying what would fit. Without, return the largest batch
    size up to ``default`` that fits (at least 1, or raise when not even one sample fits).

    Examples
    --------
    >>> cfg = dict(variables=["a", "b"], img_size=(8, 16), patch_size=2, embed_dim=16, depth=1, num_heads=2)
    >>> fit_batch_size(cfg, "cpu", default=8)
    8
    >>> fit_batch_size(cfg, "cpu", requested=10**9)
    Traceback (most recent call last):
    ...
    xclimax.exceptions.ResourceError: batch_size=1000000000 would need about ... GiB ...
    """
    import torch

    device = torch.device(device)
    free = available_memory(device) if available is None else int(available)
    budget = HEADROOM * free
    one = estimate_memory(config, 1, n_in=n_in, n_out=n_out, training=training, checkpointing=checkpointing)
    fits = int((budget - one.fixed) // one.per_sample) if budget > one.fixed else 0
    where = f"{device.type} memory" + (" (host RAM)" if device.type == "cpu" else "")
    if requested is not None:
        need = estimate_memory(config, requested, n_in=n_in, n_out=n_out, training=training,
                               checkpointing=checkpointing)
        if need.total > budget:
            advice = (f"batch_size <= {fits} fits" if fits >= 1 else
                      "not even batch_size=1 fits: use a smaller model or grid, or another device")
            raise ResourceError(
                f"batch_size={requested} would need about {need.total / _GIB:.3g} GiB for this {what} "
                f"({need.fixed / _GIB:.3g} GiB for the parameters{' and optimiser' if training else ''}, "
                f"{need.per_sample / 2**20:.3g} MiB per sample); {free / _GIB:.3g} GiB of {where} is free and "
                f"{int(HEADROOM * 100)} % of it may be used: {advice}"
            )
        return int(requested)
    if fits < 1:
        raise ResourceError(
            f"this {what} needs about {one.total / _GIB:.3g} GiB for a single sample; {free / _GIB:.3g} GiB of "
            f"{where} is free: use a smaller model or grid, or another device"
        )
    chosen = max(1, min(int(default), fits))
    if chosen < default:
        logger.info("batch size %d (of %d) fits in %.3g GiB of %s", chosen, default, budget / _GIB, where)
    return chosen
