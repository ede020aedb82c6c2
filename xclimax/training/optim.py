"""The optimisation recipe of ClimaX: AdamW with two parameter groups and linear warm-up + cosine decay."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- recipe pieces


class LinearWarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up from ``warmup_start_lr`` to the base rate, then cosine decay to ``eta_min``.

    Step it once per optimiser step. At step ``s`` the rate is
    ``start + (base - start) * s / warmup`` for ``s < warmup`` and
    ``eta_min + (base - eta_min) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2`` after,
    held at ``eta_min`` from ``total`` on.

    Examples
    --------
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = LinearWarmupCosine(opt, warmup_steps=2, max_steps=4, warmup_start_lr=0.0, eta_min=0.0)
    >>> rates = []
    >>> for _ in range(5):
    ...     rates.append(round(sched.get_last_lr()[0], 3)); opt.step(); sched.step()
    >>> rates
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        max_steps: int,
        warmup_start_lr: float = 1e-8,
        eta_min: float = 1e-8,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps, self.max_steps = int(warmup_steps), int(max_steps)
        self.warmup_start_lr, self.eta_min = float(warmup_start_lr), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _rate(self, base: float, s: int) -> float:
        if s < self.warmup_steps:
            return self.warmup_start_lr + (base - self.warmup_start_lr) * s / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        frac = min(1.0, (s - self.warmup_steps) / span)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * frac)) / 2

    def get_lr(self) -> list[float]:  # noqa: D102
        return [self._rate(base, self.last_epoch) for base in self.base_lrs]


def configure_optimizer(
    model: torch.nn.Module, *, lr: float = 5e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 1e-5
) -> torch.optim.AdamW:
    """AdamW with ClimaX's two parameter groups: no weight decay on ``var_embed`` and ``pos_embed``.

    Frozen parameters (``requires_grad=False``) are left out.

    Examples
    --------
    >>> from xclimax.nn.model import ClimaX
    >>> m = ClimaX(["2m_temperature"], img_size=(4, 8), embed_dim=16, depth=1, num_heads=2)
    >>> [g["weight_decay"] for g in configure_optimizer(m).param_groups]
    [1e-05, 0.0]
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.split(".")[-1] in ("var_embed", "pos_embed", "time_pos_embed") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def optimiser_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, parameters: Any,
                   grad_clip: float | None) -> float:
    """One optimiser step on the accumulated gradients: unscale and clip, AdamW, zero the gradients, schedule.

    The step every training loop of the tasks shares. Returns the learning rate the step used.
    """
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    lr = float(scheduler.get_last_lr()[0])
    scheduler.step()
    return lr
