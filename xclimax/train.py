"""Pre-training and fine-tuning ClimaX straight from xarray Datasets.

:func:`pretrain` and :func:`finetune` map CF variables to ClimaX tokens, compute normalisation
statistics, stream shuffled batches out of (dask-backed) data with
:class:`xclimax.batching.BatchLoader` and run the official recipe: AdamW with two parameter
groups (no weight decay on ``var_embed`` and ``pos_embed``), linear warm-up then cosine decay
stepped per optimiser step (:class:`LinearWarmupCosine`), gradient clipping, gradient
accumulation, mixed precision, checkpoints with exact resumption. Both return
``(model, history)``: the trained model and an :class:`xarray.Dataset` of training loss,
learning rate and validation scores (latitude-weighted RMSE and ACC in physical units).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import re
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from . import checkpoint as _checkpoint
from . import grid as _grid
from . import metrics as _metrics
from . import normalize as _normalize
from . import tokens as _tokens
from ._utils import resolve_device
from .batching import Batch, BatchLoader, split_times, time_step
from .exceptions import CheckpointError, DataError, GridError
from .model import ClimaX
from .options import OPTIONS
from .vocab import FORECAST_VARIABLES, VARIABLES, canonical_name

__all__ = [
    "pretrain",
    "finetune",
    "LinearWarmupCosine",
    "configure_optimizer",
    "region_mask",
    "REGIONS",
    "TASKS",
    "ForecastTask",
]

logger = logging.getLogger(__name__)

#: Named regions (lat range, lon range in degrees east), the boxes of ClimaX's regional forecasting.
REGIONS: dict[str, dict[str, tuple[float, float]]] = {
    "NorthAmerica": {"lat": (15, 65), "lon": (220, 300)},
    "SouthAmerica": {"lat": (-55, 20), "lon": (270, 330)},
    "Europe": {"lat": (30, 65), "lon": (0, 40)},
    "SouthAsia": {"lat": (-15, 45), "lon": (25, 110)},
    "EastAsia": {"lat": (5, 65), "lon": (70, 150)},
    "Australia": {"lat": (-50, 10), "lon": (100, 180)},
    "Global": {"lat": (-90, 90), "lon": (0, 360)},
}

#: Default architecture of a model built by :func:`pretrain` (``model_kwargs`` overrides it).
DEFAULT_MODEL = dict(embed_dim=256, depth=4, decoder_depth=2, num_heads=8, mlp_ratio=4.0, drop_path=0.1, drop_rate=0.1)


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
    >>> from xclimax.model import ClimaX
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


def _lat_weights(lat: Sequence[float] | np.ndarray) -> np.ndarray:
    """ClimaX's latitude weights ``cos(lat) / mean(cos(lat))`` as a numpy array."""
    return _metrics.lat_weights(np.asarray(lat, dtype=np.float64), flavour="climax").values


def region_mask(lat: np.ndarray, lon: np.ndarray, region: str | Mapping[str, Any], patch_size: int) -> np.ndarray:
    """Pixels of the patches that lie entirely inside a lat/lon box: bool ``[lat, lon]``.

    Latitudes are matched by value, so the mask is right for ascending (south-to-north)
    grids; ClimaX's ``get_region_info`` reversed the latitudes and selected the mirrored band.

    Parameters
    ----------
    lat, lon : numpy.ndarray
        Grid coordinates (lon in degrees east, any range).
    region : str or dict
        A name in :data:`REGIONS` or ``{"lat": (south, north), "lon": (west, east)}``;
        ``west > east`` (after wrapping to [0, 360)) means a box crossing 0°E.
    patch_size : int

    Examples
    --------
    >>> from xclimax.testing import grid_coords
    >>> lat, lon = grid_coords(32, 64)
    >>> m = region_mask(lat, lon, "Europe", 2)
    >>> lat[m.any(axis=1)].min() > 30, lat[m.any(axis=1)].max() < 65
    (np.True_, np.True_)
    """
    if isinstance(region, str):
        if region not in REGIONS:
            raise DataError(f"unknown region {region!r}; expected one of {sorted(REGIONS)} or dict(lat=(a, b), lon=(c, d))")
        region = REGIONS[region]
    if not isinstance(region, Mapping) or set(region) != {"lat", "lon"}:
        raise DataError(f"region must be a name or dict(lat=(south, north), lon=(west, east)); got {region!r}")
    (s, n), (w, e) = region["lat"], region["lon"]
    lat, lon = np.asarray(lat, float), np.asarray(lon, float) % 360
    in_lat = (lat >= s) & (lat <= n)
    if e - w >= 360:
        in_lon = np.ones(lon.shape, bool)
    else:
        w, e = w % 360, e % 360 if e % 360 or e == 0 else 360.0
        in_lon = (lon >= w) & (lon <= e) if w <= e else (lon >= w) | (lon <= e)
    inside = in_lat[:, None] & in_lon[None, :]
    p = int(patch_size)
    H, W = inside.shape
    patches = inside.reshape(H // p, p, W // p, p).all(axis=(1, 3))
    if not patches.any():
        raise DataError(f"no whole {p}x{p} patch of the grid lies inside the region {region}")
    return np.repeat(np.repeat(patches, p, 0), p, 1)


@dataclass
class ForecastTask:
    """Predict the output variables at ``t + lead`` from the input variables at ``t``.

    Tasks are looked up by name in :data:`TASKS`; a task provides the training pairs (``loader``)
    and the model call (``predict``), so other tasks can be added without touching the loop.
    """

    lead_times: Any

    def loader(
        self, sources: Mapping[str, xr.Dataset | xr.DataArray], stats: Mapping[str, Any], **kwargs: Any
    ) -> BatchLoader:
        """A :class:`~xclimax.batching.BatchLoader` over forecast pairs."""
        return BatchLoader(sources, stats, lead_times=self.lead_times, **kwargs)

    def predict(self, model: ClimaX, batch: Batch) -> torch.Tensor:
        """The model's prediction of ``batch.y``."""
        return model(batch.x, batch.lead_hours, batch.variables, batch.out_variables)


#: Training tasks by name; ``None`` marks tasks that are planned but not implemented yet.
TASKS: dict[str, Callable[..., ForecastTask] | None] = {"forecast": ForecastTask, "downscale": None, "projection": None}


def _task(name: str, lead_times: Any) -> ForecastTask:
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    factory = TASKS[name]
    if factory is None:
        raise NotImplementedError(
            f"task={name!r} is not implemented yet; only 'forecast' is. Planned: 'downscale' (upsample coarse inputs, "
            "lead 0, targets on a fine grid) and 'projection' (forcing histories to climate fields)."
        )
    return factory(lead_times)


# ----------------------------------------------------------------------------- data preparation


def _canonical(
    ds: Any, variables: Sequence[str] | None, extra_variables: Any, variable_map: Any
) -> tuple[xr.DataArray, xr.Dataset | xr.DataArray]:
    """The canonical ``(*batch, time, variable, lat, lon)`` array of a Dataset (or a canonical
    DataArray), and what to feed the loader.

    A dask-backed Dataset is fed as the grid-normalised Dataset: the loader's Dataset reader
    loads each source variable once per block (no per-read culling of the large ``to_array``
    graph; straight from the zarr store when it can, see ``batching._ZarrDirect``), and the
    canonical array stays lazy (statistics and checks only). A Dataset opened without dask
    (``chunks=None``) is fed the same way, its canonical array chunked by the on-disk time
    chunks, so memory stays bounded. For in-memory data ``to_array`` has already built the
    canonical array, and slicing it is the cheapest read. All feeds give identical batches.
    """
    if isinstance(ds, xr.DataArray):
        da = ds
        names = [str(v) for v in da["variable"].values] if "variable" in da.coords else None
        if names is None or not {"time", "lat", "lon"} <= set(da.dims):
            raise DataError(f"a DataArray must have dims (*batch, time, variable, lat, lon) with variable names; got {da.dims}")
        if variables is not None:
            missing = [v for v in variables if v not in names]
            if missing:
                raise DataError(f"variables {missing} are not in the DataArray's variables {names}")
            da = da.sel(variable=list(variables))
        da = da.transpose(..., "time", "variable", "lat", "lon")
        return da, da
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"expected an xarray.Dataset (or a list/dict of them); got {type(ds).__name__}")
    norm, _ = _grid.normalize_grid(ds)
    found = _tokens.find_variables(norm, variables, extra_variables=extra_variables, variable_map=variable_map, strict=variables is not None)
    if not found:
        raise DataError(f"no ClimaX variable found in the Dataset (data variables: {list(ds.data_vars)})")
    on_disk = [v for v in norm.data_vars.values() if v.chunks is None and not v.variable._in_memory]
    if on_disk:  # opened lazily without dask (``chunks=None``): statistics by on-disk time chunks, bounded memory
        step = max([v.encoding.get("preferred_chunks", {}).get("time") or 0 for v in on_disk] or [0]) or 16
        da = _tokens.to_array(norm.chunk({"time": step}), list(found), extra_variables=extra_variables,
                              variable_map=variable_map)
        return da, norm
    da = _tokens.to_array(norm, list(found), extra_variables=extra_variables, variable_map=variable_map)
    return da, (norm if da.chunks is not None else da)


def _sources(ds: Any) -> dict[str, Any]:
    if isinstance(ds, (xr.Dataset, xr.DataArray)):
        return {"data": ds}
    if isinstance(ds, Mapping):
        if not ds:
            raise DataError("got an empty mapping of datasets")
        return {str(k): v for k, v in ds.items()}
    if isinstance(ds, (list, tuple)):
        if not ds:
            raise DataError("got an empty list of datasets")
        return {f"source{i}": v for i, v in enumerate(ds)}
    return {"data": ds}


def _img_size(arrays: Mapping[str, xr.DataArray], model: ClimaX | None) -> tuple[int, int]:
    shapes = {(a.sizes["lat"], a.sizes["lon"]) for a in arrays.values()}
    if len(shapes) != 1:
        raise GridError(f"all sources must share one grid; found lat x lon sizes {sorted(shapes)}")
    img = model.img_size if model is not None else shapes.pop()
    for name, a in arrays.items():
        try:
            _grid.check_grid(a, tuple(img))
        except GridError as err:
            raise GridError(f"source {name!r}: {err} Regrid with xclimax.grid.regrid first.") from None
    return tuple(img)  # type: ignore[return-value]


def _stats(arrays: Mapping[str, xr.DataArray], masks: Mapping[str, np.ndarray], pooled: bool) -> tuple[dict, dict]:
    """Per-source ``{var: (mean, std)}`` over the training times, and their pooled combination."""
    per: dict[str, dict] = {}
    moments: dict[str, list] = {}
    for name, da in arrays.items():
        sub = da.isel(time=np.nonzero(masks[name])[0])
        st = _normalize.stats_to_dict(_normalize.compute_stats(sub))
        n = sub.size // max(1, sub.sizes["variable"])
        per[name] = st
        for v, (m, s) in st.items():
            moments.setdefault(v, []).append((n, m, s))
    pool = {}
    for v, rows in moments.items():
        n = np.array([r[0] for r in rows], float)
        m = np.array([r[1] for r in rows], float)
        s = np.array([r[2] for r in rows], float)
        mean = float((n * m).sum() / n.sum())
        var = float((n * (s**2 + m**2)).sum() / n.sum() - mean**2)
        pool[v] = (mean, math.sqrt(max(var, 0.0)))
    return (pool if pooled else per), pool


def _widen(model: ClimaX, variables: Sequence[str]) -> ClimaX:
    """A copy of ``model`` whose vocabulary also holds ``variables``: new ones get fresh weights."""
    new = [v for v in dict.fromkeys(variables) if v not in model.variables]
    if not new:
        return copy.deepcopy(model)
    wide = _checkpoint.remap_variables(model, list(model.variables) + new, warn=False)
    logger.info("added fresh token embeddings, var_embed rows and head rows for %s", new)
    return wide


def _freeze(model: ClimaX, freeze: Any, new_vars: Sequence[str]) -> list:
    """Freeze parameters by group name or prefix; returns hook handles to remove after training."""
    groups = {
        "encoder": ("token_embeds", "var_embed", "var_query", "var_agg", "pos_embed", "lead_time_embed", "blocks", "norm"),
        "embeddings": ("token_embeds", "var_embed", "var_query", "var_agg", "pos_embed", "lead_time_embed"),
        "blocks": ("blocks",),
        "head": ("head",),
    }
    if freeze is None:
        return []
    prefixes = list(groups.get(freeze, (freeze,))) if isinstance(freeze, str) else list(freeze)
    names = [n for n, _ in model.named_parameters()]
    unknown = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
    if unknown:
        raise DataError(f"freeze={freeze!r}: no parameters start with {unknown}; groups are {sorted(groups)} or module prefixes")
    new_ids = [model.variables.index(v) for v in new_vars]
    hooks = []
    for n, p in model.named_parameters():
        if any(n == q or n.startswith(q + ".") for q in prefixes):
            m = re.match(r"token_embeds\.(\d+)\.", n)
            if m and int(m.group(1)) in new_ids:
                continue  # new variables stay trainable
            if n == "var_embed" and new_ids:
                keep = torch.zeros_like(p)
                keep[:, new_ids] = 1
                hooks.append(p.register_hook(lambda g, keep=keep: g * keep))  # only the new rows learn
                continue
            p.requires_grad_(False)
    return hooks


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])


def _save_state(directory: Path, state: dict, keep: int = 2) -> Path:
    """Write a training state atomically (temporary file + ``os.replace``) and prune old ones."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"state-{state['step']:09d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in sorted(directory.glob("state-*.pt"))[:-keep]:
        old.unlink()
    return path


def _latest_state(directory: Path) -> dict | None:
    files = sorted(directory.glob("state-*.pt")) if directory.exists() else []
    if not files:
        return None
    try:
        return torch.load(files[-1], map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read the training state {str(files[-1])!r}: {err}") from None


# ----------------------------------------------------------------------------- validation


class _Scores:
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


def _weighted_sq_error(pred: torch.Tensor, y: torch.Tensor, wmap: torch.Tensor) -> torch.Tensor:
    """Per-variable latitude-weighted MSE ``[V]`` over batch and (masked) pixels."""
    return ((pred.float() - y) ** 2 * wmap).sum((0, 2, 3)) / (pred.shape[0] * (wmap > 0).sum())


def _fit(
    model: ClimaX,
    task: ForecastTask,
    loader: BatchLoader,
    val_loader: BatchLoader | None,
    *,
    lat: np.ndarray,
    mask: np.ndarray,
    max_steps: int | None,
    epochs: int | None,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup_steps: int | None,
    warmup_start_lr: float,
    eta_min: float,
    grad_clip: float | None,
    accumulate: int,
    precision: str | None,
    seed: int,
    device: Any,
    checkpoint_dir: Any,
    checkpoint_every: int | None,
    resume: bool,
    val_every: int | None,
    callback: Callable[[int, float], None] | None,
    desc: str,
) -> xr.Dataset:
    from tqdm.auto import tqdm

    device = resolve_device(device)
    if accumulate < 1:
        raise DataError(f"accumulate must be >= 1; got {accumulate}")
    if precision is None and device.type == "cuda":
        precision = OPTIONS["autocast"]
    if precision not in (None, "bf16", "fp16"):
        raise DataError(f"precision must be None, 'bf16' or 'fp16'; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise DataError("precision='fp16' needs a CUDA device (use 'bf16' on CPU)")
    n_batches = len(loader)
    if max_steps is None:
        total = math.ceil((epochs or 1) * n_batches / accumulate)
    else:
        total = int(max_steps)
    if total < 1:
        raise DataError(f"nothing to train: max_steps/epochs give {total} optimiser steps")
    warmup = min(10_000, total // 10) if warmup_steps is None else int(warmup_steps)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt_dir is None:
        raise CheckpointError("resume=True needs checkpoint_dir")
    every = checkpoint_every or max(1, total // 10)

    model.to(device).train()
    optimizer = configure_optimizer(model, lr=lr, betas=betas, weight_decay=weight_decay)
    scheduler = LinearWarmupCosine(optimizer, warmup, total, warmup_start_lr=warmup_start_lr, eta_min=eta_min)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    autocast = (
        torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
        if precision else nullcontext()
    )
    wmap = torch.as_tensor(_lat_weights(lat)[:, None] * mask, dtype=torch.float32, device=device)
    outs = list(dict.fromkeys(v for s in loader.sources for v in s.outputs))
    hist: dict[str, list] = {"loss": [], "lr": [], "epoch": [], "var_loss": [], "val_step": [], "val_epoch": [], "val": []}
    step, epoch, position = 0, 0, 0

    if resume:
        state = _latest_state(ckpt_dir)  # type: ignore[arg-type]
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
            _set_rng_state(state["rng"])
            step, epoch, position = state["step"], state["epoch"], state["position"]
            hist = {k: list(v) for k, v in state["history"].items()}
            logger.info("resumed from step %d (epoch %d, batch %d)", step, epoch, position)

    def save() -> None:
        if ckpt_dir is None:
            return
        state = {
            "format": "xclimax-train", "format_version": 1, "step": step, "epoch": epoch, "position": position,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": dict(model.config), "variables": list(model.variables), "stats": dict(model.stats),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": _rng_state(), "history": hist,
        }
        _save_state(ckpt_dir, state)

    def validate() -> None:
        if val_loader is None:
            return
        model.eval()
        scores = _Scores(torch.as_tensor(_lat_weights(lat))[:, None], torch.as_tensor(mask))
        total_loss, count = 0.0, 0
        with torch.no_grad(), autocast:
            it = val_loader.epoch(0)
            for b in it:
                b = b.to(device, non_blocking=True)
                pred = task.predict(model, b).float()
                total_loss += float(_weighted_sq_error(pred, b.y, wmap).mean()) * b.x.shape[0]
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

    bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=not OPTIONS["progress"])
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
        bar.update(len(unsynced))
        bar.set_postfix(loss=f"{running:.4g}")
        unsynced.clear()
    try:
        while step < total:
            it = loader.epoch(epoch, start=position)
            try:
                for batch in it:
                    batch = batch.to(device, non_blocking=True)
                    with autocast:
                        pred = task.predict(model, batch)
                    per_var = _weighted_sq_error(pred, batch.y, wmap)
                    loss = per_var.mean()
                    scaler.scale(loss / accumulate).backward()
                    position += 1
                    pending += 1
                    if pending < accumulate:
                        continue
                    pending = 0
                    if grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    hist["lr"].append(float(scheduler.get_last_lr()[0]))
                    scheduler.step()
                    step += 1
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


@dataclass
class _Data:
    """Training (or validation) sources: lazy canonical arrays (statistics, grid and time checks),
    what the loader reads (grid-normalised Datasets or canonical DataArrays) and usable-time masks."""

    arrays: dict[str, xr.DataArray]
    feeds: dict[str, xr.Dataset | xr.DataArray]
    masks: dict[str, np.ndarray]

    def variables(self) -> dict[str, list[str]]:
        """The ClimaX variables of each source, in the order of its canonical array."""
        return {k: [str(v) for v in a["variable"].values] for k, a in self.arrays.items()}

    def loader_kwargs(self, extra_variables: Any, variable_map: Any) -> dict[str, Any]:
        """Sources and variables for :class:`~xclimax.batching.BatchLoader` (via ``ForecastTask.loader``)."""
        return dict(sources=self.feeds, mask=self.masks, variables=self.variables(), extra_variables=extra_variables,
                    variable_map=variable_map)


def _prepare(
    ds: Any, val: Any, variables: Sequence[str] | None, extra_variables: Any, variable_map: Any
) -> tuple[_Data, _Data | None]:
    """Training data and validation data (the same sources with other masks, separate data, or None)."""
    def load(obj: Any) -> tuple[dict, dict]:
        pairs = {k: _canonical(v, variables, extra_variables, variable_map) for k, v in _sources(obj).items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}

    arrays, feeds = load(ds)
    for a in arrays.values():
        time_step(a["time"].values)  # validates the time axis early
    if isinstance(val, (xr.Dataset, xr.DataArray, Mapping, list, tuple)):
        val_arrays, val_feeds = load(val)
        every = lambda arrs: {k: np.ones(a.sizes["time"], bool) for k, a in arrs.items()}  # noqa: E731
        return _Data(arrays, feeds, every(arrays)), _Data(val_arrays, val_feeds, every(val_arrays))
    split = {k: split_times(a["time"].values, val) for k, a in arrays.items()}
    train = _Data(arrays, feeds, {k: s[0] for k, s in split.items()})
    if val is None:
        return train, None
    return train, _Data(arrays, feeds, {k: s[1] for k, s in split.items()})


def pretrain(
    ds: Any,
    model: ClimaX | None = None,
    *,
    variables: Sequence[str] | None = None,
    lead_times: Any = ("6h", "168h"),
    batch_size: int = 16,
    max_steps: int | None = None,
    epochs: int | None = None,
    lr: float = 5e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 1e-5,
    warmup_steps: int | None = None,
    warmup_start_lr: float = 1e-8,
    eta_min: float = 1e-8,
    grad_clip: float | None = 1.0,
    accumulate: int = 1,
    precision: str | None = None,
    seed: int = 42,
    device: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    val: Any = None,
    val_lead_time: Any = None,
    val_every: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    stats: str = "pooled",
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
    block_size: int | None = None,
    buffer_size: int | None = None,
    prefetch: int = 2,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[ClimaX, xr.Dataset]:
    """Pre-train ClimaX: from the state at ``t`` predict every variable at ``t + lead``.

    Each input time gets one lead drawn uniformly (per epoch) from the multiples of the data's
    time step in the inclusive range ``lead_times``; the loss is ClimaX's latitude-weighted MSE
    in normalised space, ``mean(w * (pred - truth)**2)`` with ``w = cos(lat) / mean(cos(lat))``.

    Parameters
    ----------
    ds : Dataset, list or dict of Datasets
        CF-annotated data on a ClimaX grid (lat ascending or not, any lon convention), numpy- or
        dask-backed; or canonical DataArrays ``(*batch, time, variable, lat, lon)``. Several
        sources (e.g. CMIP6 models) may hold different variables: each batch comes from one
        source and the model covers the union of their variables.
    model : ClimaX, optional
        Model to continue training (a copy is trained; variables it lacks get fresh weights).
        Default: a new model with :data:`DEFAULT_MODEL` updated by ``model_kwargs``.
    variables : sequence of str, optional
        ClimaX names to use (default: all found in each source).
    lead_times : (lo, hi) or one lead
        Inclusive lead-time range (default 6 h to 168 h).
    batch_size, max_steps, epochs
        Batch size; length of training in optimiser steps, or in epochs (default 1 epoch).
    lr, betas, weight_decay
        AdamW settings (ClimaX pre-training: 5e-4, (0.9, 0.95), 1e-5).
    warmup_steps, warmup_start_lr, eta_min
        :class:`LinearWarmupCosine` settings (default warm-up: 10 % of the steps, at most 10,000).
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
        atomically; ``resume=True`` continues from the latest one. A resumed run ends with the
        same weights as an uninterrupted one (bit for bit on CPU).
    val : slice, float, Dataset or None
        Validation data: a time slice or a final fraction of ``ds`` (excluded from training and
        from the statistics), or separate data.
    val_lead_time : optional
        Lead time of the validation pairs (default: the longest of ``lead_times``).
    val_every : int, optional
        Validate every ``val_every`` steps (default: at the end of each epoch and of training).
    model_kwargs : dict, optional
        :class:`~xclimax.ClimaX` arguments of a new model.
    stats : {"pooled", "per_source"}
        Normalise all sources with pooled statistics, or each with its own. ``model.stats``
        receives the pooled statistics.
    extra_variables, variable_map
        As in :func:`xclimax.tokens.find_variables`.
    block_size, buffer_size, prefetch
        :class:`~xclimax.batching.BatchLoader` settings.
    callback : callable, optional
        ``callback(step, loss)`` after each optimiser step (and after any checkpoint of that step).
        On CUDA the losses are read from the GPU every 16 steps (so that the GPU never waits for
        Python), and the callbacks of those steps are called then, in order.

    Returns
    -------
    model : ClimaX
        The trained model (in eval mode) with ``stats`` and ``metadata``.
    history : xarray.Dataset
        ``loss``, ``lr``, ``var_loss`` over ``step``; ``val_loss``, ``val_rmse``, ``val_acc``
        over ``val_step`` (and ``val_variable``) when validating. Plot with e.g.
        ``history.loss.plot()``.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(24, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> model, history = xclimax.pretrain(ds, lead_times=("6h", "12h"), batch_size=4, max_steps=3,
    ...     model_kwargs=dict(embed_dim=32, depth=1, num_heads=2), val=0.25)
    >>> model.variables, history.sizes["step"], history.val_variable.values.tolist()
    (('lattitude', '2m_temperature'), 3, ['2m_temperature'])
    """
    if stats not in ("pooled", "per_source"):
        raise DataError(f"stats must be 'pooled' or 'per_source'; got {stats!r}")
    data, val_data = _prepare(ds, val, variables, extra_variables, variable_map)
    arrays, masks = data.arrays, data.masks
    img = _img_size(arrays, model)
    names = list(dict.fromkeys(str(v) for a in arrays.values() for v in a["variable"].values))
    norm_stats, pooled = _stats(arrays, masks, stats == "pooled")
    if model is None:
        torch.manual_seed(seed)
        kwargs = {**DEFAULT_MODEL, "patch_size": 2 if max(img) <= 64 else 4, **(model_kwargs or {})}
        model = ClimaX(variables=names, img_size=img, **kwargs)
    else:
        model = _widen(model, names)
    model.stats = {**model.stats, **pooled}
    outs = [v for v in names if VARIABLES.get(v, {}).get("kind") != "constant"]
    if not outs:
        raise DataError(f"pretraining needs time-varying variables to predict; found only constants {names}")
    task = _task("forecast", lead_times)
    lat = np.asarray(next(iter(arrays.values()))["lat"].values)
    mapping = (extra_variables, variable_map)
    loader = task.loader(stats=norm_stats, batch_size=batch_size, outputs=outs, seed=seed, block_size=block_size,
                         buffer_size=buffer_size, prefetch=prefetch, pin_memory=resolve_device(device).type == "cuda",
                         **data.loader_kwargs(*mapping))
    val_loader = None
    if val_data is not None:
        lead = val_lead_time or (lead_times[-1] if isinstance(lead_times, (list, tuple)) else lead_times)
        val_stats = norm_stats if stats == "pooled" or val_data.arrays is arrays else pooled
        val_loader = _task("forecast", lead).loader(stats=val_stats, batch_size=batch_size, outputs=outs, shuffle=False,
                                                    prefetch=prefetch, **val_data.loader_kwargs(*mapping))
    history = _fit(
        model, task, loader, val_loader, lat=lat, mask=np.ones(img, bool), max_steps=max_steps, epochs=epochs, lr=lr,
        betas=betas, weight_decay=weight_decay, warmup_steps=warmup_steps, warmup_start_lr=warmup_start_lr,
        eta_min=eta_min, grad_clip=grad_clip, accumulate=accumulate, precision=precision, seed=seed, device=device,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume, val_every=val_every,
        callback=callback, desc="xclimax pretrain",
    )
    model.metadata.update(
        task="pretrain", out_variables=outs,
        lead_times=[str(pd.Timedelta(v)) for v in (lead_times if isinstance(lead_times, (list, tuple)) else [lead_times])],
        time_step=str(pd.Timedelta(time_step(next(iter(arrays.values()))["time"].values))),
    )
    return model, history


def finetune(
    ds: Any,
    model: ClimaX,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    lead_time: Any = "72h",
    task: str = "forecast",
    target: Any = None,
    region: str | Mapping[str, Any] | None = None,
    freeze: str | Sequence[str] | None = None,
    max_steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 16,
    lr: float = 5e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 1e-5,
    warmup_steps: int | None = None,
    warmup_start_lr: float = 1e-8,
    eta_min: float = 1e-8,
    grad_clip: float | None = 1.0,
    accumulate: int = 1,
    precision: str | None = None,
    seed: int = 42,
    device: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    val: Any = None,
    val_every: int | None = None,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
    block_size: int | None = None,
    buffer_size: int | None = None,
    prefetch: int = 2,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[ClimaX, xr.Dataset]:
    """Fine-tune a **copy** of ``model`` on a task; the model passed in is left unchanged.

    Variables the model has never seen (e.g. ``mean_sea_level_pressure`` through
    ``extra_variables``) get fresh token embeddings, ``var_embed`` rows and prediction-head
    rows; the other weights are copied by name. Known variables are normalised with
    ``model.stats`` (so the pre-trained weights see what they were trained on); statistics of
    variables without any are computed from the training period of ``ds``.

    Parameters
    ----------
    ds : Dataset (or list/dict of Datasets)
        Training data, as in :func:`pretrain`.
    model : ClimaX
        The pre-trained model, e.g. from :func:`xclimax.load_checkpoint`.
    inputs : sequence of str, optional
        Input variables (default: all ClimaX variables found in ``ds``).
    outputs : sequence of str, optional
        Predicted variables (default: :data:`xclimax.FORECAST_VARIABLES` present in ``ds``, or
        all time-varying inputs if none is).
    lead_time : str or timedelta
        The fixed lead time (one model per lead, as in ClimaX); a multiple of the time step.
    task : {"forecast"}
        Looked up in :data:`TASKS`. ``"downscale"`` and ``"projection"`` are planned and raise
        :class:`NotImplementedError`.
    target : Dataset, optional
        Target data for tasks whose targets are not the inputs' future; must be None for "forecast".
    region : str or dict, optional
        Train (and validate) only on the patches inside a lat/lon box (see :func:`region_mask`
        and :data:`REGIONS`); the model still sees the whole globe as input.
    freeze : str or sequence of str, optional
        ``"encoder"`` (everything but the head), ``"embeddings"``, ``"blocks"``, ``"head"`` or a
        list of parameter-name prefixes. New variables' embeddings stay trainable.
    max_steps, epochs, batch_size, lr, betas, weight_decay, warmup_steps, warmup_start_lr, eta_min, grad_clip,
    accumulate, precision, seed, device, checkpoint_dir, checkpoint_every, resume, val, val_every,
    extra_variables, variable_map, block_size, buffer_size, prefetch, callback
        As in :func:`pretrain` (fine-tuning defaults: betas (0.9, 0.99)).

    Returns
    -------
    model : ClimaX
        The fine-tuned copy; ``metadata["out_variables"]`` and ``metadata["lead_time"]`` record the task.
    history : xarray.Dataset
        As in :func:`pretrain`.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(24, variables=["2m_temperature", "temperature"], levels=[850], grid=(8, 16), constants=False)
    >>> base = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=32, depth=1, num_heads=2)
    >>> tuned, history = xclimax.finetune(ds, base, inputs=["2m_temperature"], outputs=["temperature_850"],
    ...                                   lead_time="12h", batch_size=4, max_steps=2)
    >>> tuned.variables, base.variables
    (('2m_temperature', 'temperature_850'), ('2m_temperature',))
    """
    if not isinstance(model, ClimaX):
        raise DataError(f"finetune needs a ClimaX model (e.g. from xclimax.load_checkpoint); got {type(model).__name__}")
    the_task = _task(task, (lead_time, lead_time))
    if target is not None:
        raise DataError(f"target= is for tasks whose targets are separate data; task {task!r} predicts the inputs' future")
    want = None
    if inputs is not None or outputs is not None:
        want = list(dict.fromkeys(canonical_name(v) for v in [*(inputs or []), *(outputs or [])]))
        if inputs is None:
            want = None  # all variables found, which must include the outputs (checked below)
    data, val_data = _prepare(ds, val, want, extra_variables, variable_map)
    arrays, masks = data.arrays, data.masks
    img = _img_size(arrays, model)
    found = list(dict.fromkeys(str(v) for a in arrays.values() for v in a["variable"].values))
    ins = [canonical_name(v) for v in inputs] if inputs is not None else found
    if outputs is not None:
        outs = [canonical_name(v) for v in outputs]
    else:
        outs = [v for v in FORECAST_VARIABLES if v in found] or [
            v for v in found if VARIABLES.get(v, {}).get("kind") != "constant"
        ]
    missing = [v for v in dict.fromkeys(ins + outs) if v not in found]
    if missing:
        raise DataError(f"variables {missing} were not found in the data (found {found})")
    new_vars = [v for v in dict.fromkeys(ins + outs) if v not in model.variables]
    tuned = _widen(model, ins + outs)
    _, pooled = _stats(arrays, masks, True)
    stats = {**pooled, **{v: tuple(s) for v, s in model.stats.items()}}
    tuned.stats = {**tuned.stats, **{v: stats[v] for v in dict.fromkeys(ins + outs)}}
    hooks = _freeze(tuned, freeze, new_vars)
    lat, lon = (np.asarray(next(iter(arrays.values()))[c].values) for c in ("lat", "lon"))
    mask = region_mask(lat, lon, region, tuned.patch_size) if region is not None else np.ones(img, bool)
    torch.manual_seed(seed)
    kw = dict(batch_size=batch_size, inputs=ins, outputs=outs, prefetch=prefetch)
    mapping = (extra_variables, variable_map)
    loader = the_task.loader(stats=stats, seed=seed, block_size=block_size, buffer_size=buffer_size,
                             pin_memory=resolve_device(device).type == "cuda", **kw, **data.loader_kwargs(*mapping))
    val_loader = None
    if val_data is not None:
        val_loader = the_task.loader(stats=stats, shuffle=False, **kw, **val_data.loader_kwargs(*mapping))
    history = _fit(
        tuned, the_task, loader, val_loader, lat=lat, mask=mask, max_steps=max_steps, epochs=epochs, lr=lr, betas=betas,
        weight_decay=weight_decay, warmup_steps=warmup_steps, warmup_start_lr=warmup_start_lr, eta_min=eta_min,
        grad_clip=grad_clip, accumulate=accumulate, precision=precision, seed=seed, device=device,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume, val_every=val_every,
        callback=callback, desc=f"xclimax finetune ({task})",
    )
    for h in hooks:
        h.remove()
    for p in tuned.parameters():
        p.requires_grad_(True)
    tuned.metadata.update(
        task=task, in_variables=ins, out_variables=outs, lead_time=str(pd.Timedelta(lead_time)),
        region=region if region is None or isinstance(region, str) else {k: list(v) for k, v in region.items()},
        time_step=str(pd.Timedelta(time_step(next(iter(arrays.values()))["time"].values))),
    )
    return tuned, history
