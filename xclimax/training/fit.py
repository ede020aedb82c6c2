"""Pre-training and fine-tuning ClimaX straight from xarray Datasets.

:func:`pretrain` and :func:`finetune` map CF variables to ClimaX tokens, compute normalisation
statistics, stream shuffled batches out of (dask-backed) data with
:class:`xclimax.loading.BatchLoader` and run the official recipe: AdamW with two parameter
groups (no weight decay on ``var_embed`` and ``pos_embed``), linear warm-up then cosine decay
stepped per optimiser step (:class:`LinearWarmupCosine`), gradient clipping, gradient
accumulation, mixed precision, checkpoints with exact resumption. Both return
``(model, history)``: the trained model and an :class:`xarray.Dataset` of training loss,
learning rate and validation scores (latitude-weighted RMSE and ACC in physical units).
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from .._utils import resolve_device
from ..distributed import ddp
from ..exceptions import CheckpointError, DataError
from ..loading import BatchLoader
from ..nn.model import ClimaX
from ..options import OPTIONS
from .config import TrainConfig
from .optim import LinearWarmupCosine, configure_optimizer, optimiser_step
from .prepare import lat_weights
from .state import latest_state, rng_state, save_state, set_rng_state

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- validation


class ValidationScores:
    """Accumulates ClimaX's latitude-weighted RMSE and ACC per variable in physical units.

    RMSE: per-sample ``sqrt(mean_ij w (pred - truth)^2)``, averaged over samples. ACC:
    anomalies from the validation-period time mean of the truth at each pixel, minus their
    mean over samples and pixels, correlated with latitude weights and pooled over all
    samples (the whole validation set is one "batch").
    """

    def __init__(self, weights: torch.Tensor, mask: torch.Tensor) -> None:
        self.w, self.mask = weights.double(), mask.bool()
        self.acc: dict[str, dict[str, Any]] = {}

    def add(self, var: str, pred: torch.Tensor, truth: torch.Tensor) -> None:  # [B, H, W] physical units
        p, y = pred.double().cpu(), truth.double().cpu()
        a = self.acc.setdefault(var, {"n": 0, "rmse": 0.0, **{k: torch.zeros_like(p[0]) for k in ("p", "y", "py", "pp", "yy")}})
        se = (self.w * (p - y) ** 2 * self.mask).sum((1, 2)) / self.mask.sum()
        a["rmse"] += float(se.sqrt().sum())
        a["n"] += p.shape[0]
        a["p"] += p.sum(0)
        a["y"] += y.sum(0)
        a["py"] += (p * y).sum(0)
        a["pp"] += (p * p).sum(0)
        a["yy"] += (y * y).sum(0)

    def result(self) -> dict[str, tuple[float, float]]:
        out = {}
        m = self.mask
        for var, a in self.acc.items():
            n = a["n"]
            c = a["y"] / n
            s_a = a["p"] - n * c  # sum over samples of the forecast anomaly (truth anomalies sum to 0)
            a_bar = s_a[m].sum() / (n * m.sum())
            ab = a["py"] - c * a["p"]
            aa = a["pp"] - 2 * c * a["p"] + n * c * c - 2 * a_bar * s_a + n * a_bar**2
            bb = a["yy"] - n * c * c
            w = self.w * m
            acc = float((w * ab).sum() / torch.sqrt((w * aa).sum() * (w * bb).sum()))
            out[var] = (a["rmse"] / n, acc)
        return out


# ----------------------------------------------------------------------------- the loop


def weighted_sq_error(pred: torch.Tensor, y: torch.Tensor, wmap: torch.Tensor) -> torch.Tensor:
    """Per-variable latitude-weighted MSE ``[V]`` over batch and (masked) pixels."""
    return ((pred.float() - y) ** 2 * wmap).sum((0, 2, 3)) / (pred.shape[0] * (wmap > 0).sum())


def fit(
    model: ClimaX,
    task: Any,
    loader: BatchLoader,
    val_loader: BatchLoader | None,
    config: TrainConfig,
    *,
    lat: np.ndarray,
    mask: np.ndarray,
    desc: str,
    rank: Any = None,
) -> xr.Dataset:
    """Train ``model`` in place with ``config``; return the history Dataset.

    ``task`` is duck-typed: ``task.forward(model, batch)`` gives the prediction of ``batch.y``.
    The loss is ClimaX's latitude-weighted MSE in normalised space over the pixels of ``mask``.
    With ``config.client`` the loop runs data-parallel on the dask cluster (one rank per worker,
    see :func:`_fit_on_cluster`); ``rank`` (a :class:`~xclimax.distributed.ddp.RankContext`) is
    set on those ranks.
    """
    from tqdm.auto import tqdm

    c = config
    if c.client is not None and rank is None:
        return _fit_on_cluster(model, task, loader, val_loader, c, lat=lat, mask=mask, desc=desc)
    main = rank is None or rank.is_main  # rank 0 (or a single process) keeps history, checkpoints, validation
    max_steps, epochs, accumulate, precision = c.max_steps, c.epochs, c.accumulate, c.precision
    grad_clip, val_every, callback = c.grad_clip, c.val_every, c.callback
    device = rank.device if rank is not None else resolve_device(c.device)
    if precision is None and device.type == "cuda":
        precision = OPTIONS["autocast"]
    if precision == "fp16" and device.type != "cuda":
        raise DataError("precision='fp16' needs a CUDA device (use 'bf16' on CPU)")
    n_batches = len(loader)
    if max_steps is None:
        total = math.ceil((epochs or 1) * n_batches / accumulate)
    else:
        total = int(max_steps)
    if total < 1:
        raise DataError(f"nothing to train: max_steps/epochs give {total} optimiser steps")
    warmup = min(10_000, total // 10) if c.warmup_steps is None else int(c.warmup_steps)
    ckpt_dir = Path(c.checkpoint_dir) if c.checkpoint_dir is not None else None
    if c.resume and ckpt_dir is None:
        raise CheckpointError("resume=True needs checkpoint_dir")
    every = c.checkpoint_every or max(1, total // 10)

    model.to(device).train()
    if c.activation_checkpointing:  # recompute activations in the backward pass (same results, less memory)
        model.checkpoint_activations = True
    net = model if rank is None else ddp.wrap(model, rank)  # what the task calls: gradients averaged over ranks
    optimizer = configure_optimizer(model, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
    scheduler = LinearWarmupCosine(optimizer, warmup, total, warmup_start_lr=c.warmup_start_lr, eta_min=c.eta_min)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    autocast = (
        torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
        if precision else nullcontext()
    )
    wmap = torch.as_tensor(lat_weights(lat)[:, None] * mask, dtype=torch.float32, device=device)
    outs = list(dict.fromkeys(v for s in loader.sources for v in s.outputs))
    hist: dict[str, list] = {"loss": [], "lr": [], "epoch": [], "var_loss": [], "val_step": [], "val_epoch": [], "val": []}
    step, epoch, position = 0, 0, 0

    if c.resume:
        state = latest_state(ckpt_dir) if main else None  # type: ignore[arg-type]
        if rank is not None:
            state = ddp.broadcast_object(state, rank)  # rank 0's checkpoint on every rank
        if state is not None:
            if tuple(state["variables"]) != tuple(model.variables):
                raise CheckpointError(
                    f"the training state in {str(ckpt_dir)!r} is for variables {state['variables']}, "
                    f"not this run's {list(model.variables)}"
                )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            ranks_rng = state.get("rng_ranks")
            set_rng_state(ranks_rng[rank.rank] if rank is not None and ranks_rng and len(ranks_rng) == rank.world_size
                          else state["rng"])
            step, epoch, position = state["step"], state["epoch"], state["position"]
            hist = {k: list(v) for k, v in state["history"].items()}
            logger.info("resumed from step %d (epoch %d, batch %d)", step, epoch, position)

    def save() -> None:
        if ckpt_dir is None:
            return
        rngs = ddp.gather_objects(rng_state(), rank) if rank is not None else None  # (every rank takes part)
        if not main:
            return
        state = {
            "format": "xclimax-train", "format_version": 1, "step": step, "epoch": epoch, "position": position,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": dict(model.config), "variables": list(model.variables), "stats": dict(model.stats),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state(), "history": hist,
        }
        if rngs is not None:
            state["rng_ranks"] = rngs
        save_state(ckpt_dir, state)

    def validate() -> None:
        if val_loader is None or not main:  # (rank 0 validates alone, on the unwrapped model: no collectives)
            return
        model.eval()
        scores = ValidationScores(torch.as_tensor(lat_weights(lat))[:, None], torch.as_tensor(mask))
        total_loss, count = 0.0, 0
        with torch.no_grad(), autocast:
            it = val_loader.epoch(0)
            for b in it:
                b = b.to(device, non_blocking=True)
                pred = task.forward(model, b).float()
                total_loss += float(weighted_sq_error(pred, b.y, wmap).mean()) * b.x.shape[0]
                count += b.x.shape[0]
                src = next(s for s in val_loader.sources if s.name == b.source)
                m, s = (torch.as_tensor(a[src.out_ids, 0, 0], device=device) for a in (src.mean, src.std))
                pred, truth = pred * s[:, None, None] + m[:, None, None], b.y * s[:, None, None] + m[:, None, None]
                for k, v in enumerate(b.out_variables):
                    scores.add(v, pred[:, k], truth[:, k])
        model.train()
        res = scores.result()
        hist["val_step"].append(step)
        hist["val_epoch"].append(epoch)
        hist["val"].append({"loss": total_loss / max(count, 1), **{f"rmse/{v}": r for v, (r, _) in res.items()},
                            **{f"acc/{v}": a for v, (_, a) in res.items()}})
        logger.info("step %d validation: loss %.4g; %s", step, total_loss / max(count, 1),
                    ", ".join(f"{v}: rmse {r:.4g} acc {a:.3f}" for v, (r, a) in res.items()))

    bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=not OPTIONS["progress"] or rank is not None)
    pending = 0
    running = None
    # losses are read from the device in groups: a per-step read would make the GPU wait for Python each step
    unsynced: list[tuple] = []
    synced: list[tuple[int, float]] = []  # (step, loss) not yet passed to ``callback``
    sync_every = 16 if device.type == "cuda" else 1

    def flush() -> None:
        nonlocal running
        if not unsynced:
            return
        losses, per_vars = (torch.stack([u[k] for u in unsynced]).float().cpu().numpy() for k in (2, 3))  # one sync
        for (n, ep, _, _, names), value, per in zip(unsynced, losses.tolist(), per_vars):
            hist["loss"].append(value)
            hist["epoch"].append(ep)
            row = dict.fromkeys(outs, float("nan"))
            row.update({v: float(x) for v, x in zip(names, per)})
            hist["var_loss"].append([row[v] for v in outs])
            running = value if running is None else 0.98 * running + 0.02 * value
            synced.append((n, value))
            if rank is not None:
                rank.report(n, total, value)  # to the client's progress bar and callback
        bar.update(len(unsynced))
        bar.set_postfix(loss=f"{running:.4g}")
        unsynced.clear()
    try:
        while step < total:
            it = loader.epoch(epoch, start=position)
            try:
                for batch in it:
                    batch = batch.to(device, non_blocking=True)
                    # (ranks exchange gradients once per optimiser step, not per micro-batch)
                    with net.no_sync() if rank is not None and pending + 1 < accumulate else nullcontext():
                        with autocast:
                            pred = task.forward(net, batch)
                        if rank is None:
                            per_var = weighted_sq_error(pred, batch.y, wmap)
                            loss = per_var.mean()
                        else:  # this rank's share of the global batch's loss (see ddp.batch_loss)
                            per_var, loss = ddp.batch_loss(pred, batch, wmap, rank)
                        scaler.scale(loss / accumulate).backward()
                    position += 1
                    pending += 1
                    if pending < accumulate:
                        continue
                    pending = 0
                    hist["lr"].append(optimiser_step(optimizer, scheduler, scaler, model.parameters(), grad_clip))
                    step += 1
                    if rank is not None:  # the global batch's loss, as a single process would record it
                        per_var = ddp.all_sum(per_var.detach().clone())
                        loss = per_var.mean()
                    unsynced.append((step, epoch, loss.detach(), per_var.detach(), batch.out_variables))
                    checkpoint_now = step % every == 0 and step < total
                    validate_now = bool(val_every) and step % val_every == 0
                    if len(unsynced) >= sync_every or validate_now or checkpoint_now or step >= total:
                        flush()
                    if validate_now:
                        validate()
                    if checkpoint_now:
                        save()
                    if callback is not None:
                        for n, value in synced:
                            callback(n, value)
                    synced.clear()
                    if step >= total:
                        break
                else:
                    epoch, position = epoch + 1, 0
                    if not val_every:
                        validate()
                    continue
            finally:
                if hasattr(it, "close"):
                    it.close()
        if not val_every or step % val_every:
            if not hist["val_step"] or hist["val_step"][-1] != step:
                validate()
        save()
    finally:
        bar.close()
    model.eval()
    return _history(hist, outs)


def _fit_on_cluster(model: ClimaX, task: Any, loader: BatchLoader, val_loader: BatchLoader | None,
                    config: TrainConfig, *, lat: np.ndarray, mask: np.ndarray, desc: str) -> xr.Dataset:
    """:func:`fit` data-parallel on ``config.client``'s workers (one rank each); ``model`` gets rank 0's weights.

    The model, the task and the loaders travel once (scattered; a loader is rebuilt on each rank
    from its arguments, so zarr-backed data are read there, straight from the store); each rank
    serves its part of every global batch (``BatchLoader.share``). Rank 0's steps reach this
    process's progress bar and ``config.callback`` as they happen.
    """
    from tqdm.auto import tqdm

    client, callback = config.client, config.callback
    # gradient hooks (e.g. rows of var_embed frozen by finetune(freeze=...)) are not pickled with the parameters
    hooks = {n: list(p._backward_hooks.values()) for n, p in model.named_parameters() if getattr(p, "_backward_hooks", None)}
    n_ranks = len(client.scheduler_info()["workers"])
    bar = tqdm(desc=f"{desc} ({n_ranks} ranks)", unit="step", disable=not OPTIONS["progress"])
    delivered = 0

    def on_event(msg: dict) -> None:
        nonlocal delivered
        step, loss = int(msg["step"]), msg.get("loss")
        bar.total = msg.get("total", bar.total)
        bar.update(max(0, step - bar.n))
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4g}")
        if callback is not None and step > delivered and loss is not None:
            callback(step, float(loss))
        delivered = max(delivered, step)

    try:
        results = ddp.launch(client, _fit_rank, model, task, loader, val_loader, config.replace(client=None, callback=None),
                             lat=lat, mask=mask, desc=desc, hooks=hooks, options={"autocast": OPTIONS["autocast"]},
                             device=config.device, on_event=on_event)
    finally:
        bar.close()
    state, history = results[0]
    model.load_state_dict(state)
    model.eval()
    if callback is not None:  # steps whose reports had not arrived when the ranks finished
        for step, value in zip(history["step"].values.tolist(), history["loss"].values.tolist()):
            if step > delivered:
                callback(int(step), float(value))
    return history


def _fit_rank(model: ClimaX, task: Any, loader: BatchLoader, val_loader: BatchLoader | None, config: TrainConfig, *,
              lat: np.ndarray, mask: np.ndarray, desc: str, hooks: dict, options: dict, ctx: Any) -> Any:
    """One rank of :func:`_fit_on_cluster` (runs on a dask worker): ``(state_dict, history)`` on rank 0."""
    from ..options import set_options

    loader.rank, loader.world_size = ctx.rank, ctx.world_size
    loader.pin_memory = ctx.device.type == "cuda"
    for name, p in model.named_parameters():
        for hook in hooks.get(name, ()):
            p.register_hook(hook)
    torch.manual_seed(config.seed + 7919 * ctx.rank)  # dropout: a stream of its own on each rank
    with set_options(progress=False, **options):  # the client's options that change results
        history = fit(model, task, loader, val_loader, config, lat=lat, mask=mask, desc=desc, rank=ctx)
    if not ctx.is_main:
        return None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, history


def _history(hist: dict, outs: list[str]) -> xr.Dataset:
    steps = np.arange(1, len(hist["loss"]) + 1)
    ds = xr.Dataset(
        {
            "loss": ("step", np.asarray(hist["loss"], float), {"long_name": "training loss (latitude-weighted MSE, normalised)"}),
            "lr": ("step", np.asarray(hist["lr"], float), {"long_name": "learning rate"}),
            "var_loss": (("step", "variable"), np.asarray(hist["var_loss"], float).reshape(len(steps), len(outs)),
                         {"long_name": "training loss per variable (NaN where the batch lacked it)"}),
        },
        coords={"step": steps, "variable": [str(v) for v in outs], "epoch": ("step", np.asarray(hist["epoch"], int))},
    )
    if hist["val"]:
        names = list(dict.fromkeys(k.split("/", 1)[1] for row in hist["val"] for k in row if "/" in k))
        get = lambda key: np.array([[row.get(f"{key}/{v}", np.nan) for v in names] for row in hist["val"]])  # noqa: E731
        val = xr.Dataset(
            {
                "val_loss": ("val_step", [row["loss"] for row in hist["val"]], {"long_name": "validation loss (normalised)"}),
                "val_rmse": (("val_step", "val_variable"), get("rmse"),
                             {"long_name": "latitude-weighted RMSE", "units": "physical units of each variable"}),
                "val_acc": (("val_step", "val_variable"), get("acc"), {"long_name": "latitude-weighted ACC", "units": "1"}),
            },
            coords={"val_step": np.asarray(hist["val_step"], int), "val_variable": [str(v) for v in names],
                    "val_epoch": ("val_step", np.asarray(hist["val_epoch"], int))},
        )
        ds = ds.merge(val)
    return ds


# ----------------------------------------------------------------------------- public API


