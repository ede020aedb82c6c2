"""The climate-projection task (ClimateBench): yearly forcing histories -> climate response maps.

ClimaX's set-up (``climax.md`` §4.5, ``climax.climate_projection`` of microsoft/ClimaX): the
inputs are forcing agents (cumulative CO2 and CH4 emissions as global scalars, SO2 and black
carbon emission maps), ``history`` consecutive years of them are encoded step by step by the
pretrained ClimaX encoder (frozen except its LayerNorms), aggregated over time by attention with
a learned query, and a linear head predicts the response maps (tas, diurnal temperature range,
pr, pr90) of the last year. See :class:`xclimax.nn.climatebench.ClimaXClimateBench`.

Data are yearly (one step per calendar year, any CF calendar), with optional batch dimensions
(``scenario``, ``member``) holding independent series: ClimateBench's historical run followed
by each SSP scenario. Windows that are identical in several series (the historical period
shared by every scenario) are used once, as the official ``skip_historical`` does. Batch
dimensions that only the responses have (ensemble ``member``) make separate samples with the same
forcings; average them first (``ds.mean("member")``) to train on the ensemble mean as ClimaX does.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from contextlib import nullcontext
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from .._utils import resolve_device
from .._version import __version__
from ..cf import grid as _grid
from ..cf import tokens as _tokens
from ..cf.stats import stats_arrays
from ..distributed.workers import prepare as prepare_model
from ..exceptions import CFMappingError, CheckpointError, DataError, GridError, XClimaxError
from ..nn.climatebench import DEFAULT_FORCINGS, DEFAULT_RESPONSES, KIND, ClimaXClimateBench
from ..nn.model import ClimaX
from ..options import OPTIONS
from ..training.config import TrainConfig
from ..training.optim import LinearWarmupCosine, configure_optimizer, optimiser_step
from ..vocab import VARIABLES, canonical_name
from .base import Task

__all__ = ["ProjectionTask"]

logger = logging.getLogger(__name__)

_SPACE = ("lat", "lon")


# ----------------------------------------------------------------------------- data
def _spec(name: str) -> Mapping[str, Any]:
    from .. import vocab

    return VARIABLES.get(name) or getattr(vocab, "EXTRA_VARIABLES", {}).get(name) or {}


def _check_yearly(time: xr.DataArray, what: str) -> None:
    """Raise unless ``time`` holds one step per consecutive calendar year (any calendar)."""
    try:
        years = np.asarray(time.dt.year.values, dtype=int)
    except (AttributeError, TypeError) as err:
        raise DataError(f"{what}: the time coordinate must hold dates (datetime64 or cftime); found {time.dtype}") from err
    steps = np.diff(years)
    if steps.size and not np.all(steps == 1):
        bad = np.flatnonzero(steps != 1)[:3]
        found = ", ".join(f"{years[i]} -> {years[i + 1]}" for i in bad)
        raise DataError(
            f"{what}: climate projection works on yearly data, one time step per consecutive calendar year; "
            f"found {found}. Aggregate first, e.g. ds.resample(time='YS').mean(), and keep the years contiguous"
        )


def _token_array(
    ds: xr.Dataset,
    names: Sequence[str],
    *,
    img_size: tuple[int, int] | None,
    regrid: str | None,
    variable_map: Mapping[str, str] | None,
    extra_variables: Any,
    what: str,
) -> tuple[xr.DataArray, _grid.GridInfo]:
    """``(*batch, time, variable, lat, lon)`` of ``names`` (canonical units), lazily.

    Global scalars (no latitude/longitude, such as cumulative CO2) are broadcast over the grid.
    With ``img_size`` the grid is checked against (or regridded to) the model grid.
    """
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"{what} must be an xarray.Dataset; got {type(ds).__name__}")
    norm, info = _grid.normalize_grid(ds)
    # labels such as scenario names travel around the CF lookup (which reads numeric coordinates)
    labels = {k: c for k, c in norm.coords.items()
              if k not in ("time", *_SPACE) and c.dtype.kind not in "iufcmM"}
    norm = norm.drop_vars(list(labels))
    if img_size is not None:
        try:
            _grid.check_grid(norm, img_size)
        except GridError as err:
            if regrid is None:
                raise GridError(f"{what}: {err} (or pass regrid='conservative' for emission fluxes)") from None
            norm = _grid.regrid(norm, *_grid.model_grid(img_size), method=regrid)
    try:
        found = _tokens.find_variables(
            norm, names, strict=True, variable_map=variable_map, extra_variables=extra_variables
        )
    except CFMappingError as err:
        raise CFMappingError(f"{what}: {err}") from None
    template = xr.zeros_like(norm["lat"], dtype=np.float32) + xr.zeros_like(norm["lon"], dtype=np.float32)
    for src in found.values():
        if src.source is not None and not set(_SPACE) <= set(norm[src.source].dims):
            da = norm[src.source]
            norm[src.source] = da.broadcast_like(template).assign_attrs(da.attrs)
    arr = _tokens.to_array(norm, names, variable_map=variable_map, extra_variables=extra_variables)
    arr = arr.transpose(..., "time", "variable", "lat", "lon")
    arr = arr.assign_coords({k: c for k, c in labels.items() if set(c.dims) <= set(arr.dims)})
    _check_yearly(arr["time"], what)
    return arr, info


def _flat(arr: xr.DataArray) -> np.ndarray:
    """Loaded ``(*batch, time, variable, lat, lon)`` as float32 ``[S, T, V, H, W]``."""
    values = np.asarray(arr.values, dtype=np.float32)
    return values.reshape((-1,) + values.shape[-4:])


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


def _windows(x: np.ndarray, y: np.ndarray, history: int) -> tuple[list[tuple[int, int]], int, int]:
    """Training windows ``(series, last step)`` with finite inputs and target; duplicates used once."""
    S, T = x.shape[:2]
    ok_x = np.isfinite(x).all(axis=(2, 3, 4))
    ok_y = np.isfinite(y).all(axis=(2, 3, 4))
    keys_x = [[_digest(x[s, t]) for t in range(T)] for s in range(S)]
    keys_y = [[_digest(y[s, t]) for t in range(T)] for s in range(S)]
    seen: set = set()
    out, complete, dup = [], 0, 0
    for s in range(S):
        for t in range(history - 1, T):
            if not (ok_y[s, t] and ok_x[s, t - history + 1 : t + 1].all()):
                continue
            complete += 1
            key = (t, tuple(keys_x[s][t - history + 1 : t + 1]), keys_y[s][t])
            if key in seen:
                dup += 1
                continue
            seen.add(key)
            out.append((s, t))
    return out, complete, dup


def _stats(a: np.ndarray, names: Sequence[str], steps: Sequence[tuple[int, int]]) -> dict[str, tuple[float, float]]:
    """Per-variable mean and std (float64, population) over the distinct ``(series, step)`` fields used."""
    sel = np.stack([a[s, t] for s, t in steps]).astype(np.float64)  # N, V, H, W
    out = {}
    for k, name in enumerate(names):
        v = sel[:, k]
        mean, std = float(v.mean()), float(v.std())
        if not np.isfinite(std) or std == 0:
            logger.warning("%s is constant in the training data (std %s): using std 1", name, std)
            std = 1.0
        out[name] = (mean, std)
    return out


def _attrs_of(ds: xr.Dataset, name: str, variable_map: Mapping[str, str] | None, extra_variables: Any) -> dict:
    try:
        src = _tokens.find_variables(ds, [name], variable_map=variable_map, extra_variables=extra_variables)[name]
    except XClimaxError:
        return {}
    if src.source is None:
        return {}
    keep = ("standard_name", "long_name", "units", "cell_methods", "comment")
    attrs = {k: str(v) for k, v in ds[src.source].attrs.items() if k in keep}
    if src.target_units:
        attrs["units"] = src.target_units
    return attrs


# ----------------------------------------------------------------------------- model runner
def _project_block(
    data: np.ndarray,
    payload: Any = None,
    *,
    ref: Any,
    in_vars: Sequence[str],
    out_vars: Sequence[str],
    mean_in: np.ndarray,
    std_in: np.ndarray,
    mean_out: np.ndarray,
    std_out: np.ndarray,
    batch_size: int,
    progress: Any = None,
) -> np.ndarray:
    """``[..., T, Vin, H, W]`` (physical) -> ``[..., T, Vout, H, W]`` (physical; NaN for the first history - 1 years)."""
    model, device = ref.get(payload)  # the caller's model (or a copy), or this worker's resident copy
    h = model.history
    lead = data.shape[:-4]
    x_all = data.reshape((-1,) + data.shape[-4:])
    S, T = x_all.shape[:2]
    out = np.full((S, T, len(out_vars)) + x_all.shape[-2:], np.nan, dtype=np.float32)
    m_in = torch.as_tensor(mean_in, dtype=torch.float32, device=device)[:, None, None]
    s_in = torch.as_tensor(std_in, dtype=torch.float32, device=device)[:, None, None]
    m_out = torch.as_tensor(mean_out, dtype=torch.float32, device=device)[:, None, None]
    s_out = torch.as_tensor(std_out, dtype=torch.float32, device=device)[:, None, None]
    autocast = OPTIONS["autocast"] if device.type == "cuda" else None
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast) if autocast else None
    jobs = [(s, t) for s in range(S) for t in range(h - 1, T)]
    finite = np.isfinite(x_all).all(axis=(2, 3, 4))
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            part = [(s, t) for s, t in jobs[start : start + batch_size] if finite[s, t - h + 1 : t + 1].all()]
            if part:
                x = np.stack([x_all[s, t - h + 1 : t + 1] for s, t in part])
                xt = (torch.as_tensor(x, device=device) - m_in) / s_in
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    y = model(xt, in_vars, out_vars).float()
                y = (y * s_out + m_out).cpu().numpy()
                for k, (s, t) in enumerate(part):
                    out[s, t] = y[k]
            if progress is not None:
                progress.update(min(batch_size, len(jobs) - start))
    return out.reshape(lead + out.shape[1:])


# ----------------------------------------------------------------------------- the task
class ProjectionTask(Task):
    """Climate projection (ClimateBench): response maps from ``history`` years of forcings.

    ``finetune`` turns a (pretrained) :class:`~xclimax.ClimaX` into a
    :class:`~xclimax.nn.climatebench.ClimaXClimateBench` (or continues training one) and trains
    it with the paper's recipe; ``predict`` runs it over every year that has ``history`` years
    of forcing, returning a CF-annotated Dataset on the input's time axis.
    """

    name = "projection"
    # configs/climate_projection.yaml: AdamW 5e-4, betas (0.9, 0.999), wd 1e-5, 60 warm-up and 600
    # scheduler steps; batch 16 as in the docs' command (the config's 1 makes training noisy)
    recipe = {"lr": 5e-4, "betas": (0.9, 0.999), "weight_decay": 1e-5, "warmup_steps": 60, "max_steps": 600,
              "batch_size": 16, "grad_clip": None}
    metrics = ("nrmse_s", "nrmse_g", "nrmse_t")

    # ------------------------------------------------------------------ training
    def finetune(
        self,
        ds: xr.Dataset,
        model: Any,
        config: TrainConfig,
        *,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        history: int | None = None,
        val: float | None = None,
        restore_best: bool = True,
        freeze_encoder: bool = True,
        regrid: str | None = None,
        variable_map: Mapping[str, str] | None = None,
        extra_variables: Any = None,
        **kwargs: Any,
    ) -> tuple[ClimaXClimateBench, xr.Dataset]:
        """Fine-tune ``model`` for projection; ``(model, history)``. See :func:`xclimax.finetune`."""
        unsupported = {k: v for k, v in kwargs.items() if k in ("target", "region", "freeze", "lead_time")}
        if unsupported:
            raise DataError(
                f"finetune(task='projection') does not take {sorted(unsupported)}: the targets are the response "
                "variables of ds (outputs=...), the lead time is 0 and the encoder is frozen with freeze_encoder=True"
            )
        if kwargs:
            raise TypeError(f"finetune(task='projection') got unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(config, TrainConfig):
            raise DataError(f"config must be an xclimax.TrainConfig; got {type(config).__name__}")
        val_fraction = 0.1 if val is None else val
        if isinstance(val_fraction, bool) or not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
            raise DataError(f"val must be the fraction of training windows held out for validation, in [0, 1); got {val!r}")
        net, inputs, outputs = self._network(model, inputs, outputs, history, freeze_encoder, ds, config)
        h = net.history

        # ---- data: loaded (ClimateBench-sized data fit in memory), on the model grid
        x_arr, _ = _token_array(ds, inputs, img_size=net.img_size, regrid=regrid, variable_map=variable_map,
                                extra_variables=extra_variables, what="training data")
        y_arr, _ = _token_array(ds, outputs, img_size=net.img_size, regrid=regrid, variable_map=variable_map,
                                extra_variables=extra_variables, what="training data")
        # batch dims of one side only (ensemble members of the responses) are separate series of the other
        x_arr, y_arr = xr.broadcast(x_arr, y_arr, exclude=("variable", "time", *_SPACE))
        batch = [d for d in y_arr.dims if d not in ("variable", "time", *_SPACE)]
        x_arr = x_arr.transpose(*batch, "time", "variable", *_SPACE)
        y_arr = y_arr.transpose(*batch, "time", "variable", *_SPACE)
        if x_arr.sizes["time"] < h:
            raise DataError(
                f"history={h} needs at least {h} yearly steps per series; the training data have {x_arr.sizes['time']}"
            )
        x, y = _flat(x_arr), _flat(y_arr)
        windows, complete, dup = _windows(x, y, h)
        if not windows:
            raise DataError(
                f"no training sample: no series has {h} consecutive years of finite inputs ending in a year with "
                f"finite outputs ({x.shape[0]} series of {x.shape[1]} years)"
            )
        if dup:
            logger.info("%d of %d windows repeat in several series (shared historical period): used once", dup, complete)
        steps_x = sorted({(s, t - k) for s, t in windows for k in range(h)})
        steps_y = sorted({(s, t) for s, t in windows})
        uniq_x = list({(t, _digest(x[s, t])): (s, t) for s, t in steps_x}.values())
        uniq_y = list({(t, _digest(y[s, t])): (s, t) for s, t in steps_y}.values())
        stats = {**_stats(x, inputs, uniq_x), **_stats(y, outputs, uniq_y)}
        mean = lambda names: np.array([stats[n][0] for n in names], np.float32)[:, None, None]  # noqa: E731
        std = lambda names: np.array([stats[n][1] for n in names], np.float32)[:, None, None]  # noqa: E731
        xn = torch.from_numpy((x - mean(inputs)) / std(inputs))
        yn = torch.from_numpy((y - mean(outputs)) / std(outputs))

        gen = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(windows), generator=gen).tolist()
        n_val = int(round(val_fraction * len(windows))) if len(windows) > 1 else 0
        val = [windows[i] for i in order[:n_val]]
        train = [windows[i] for i in order[n_val:]]
        logger.info("projection fine-tuning: %d training and %d validation windows of %d years", len(train), len(val), h)

        history_ds = self._fit(net, train, val, xn, yn, inputs, outputs, config, restore_best)
        net.stats = {k: (float(m), float(s)) for k, (m, s) in stats.items()}
        lat, lon = (np.asarray(x_arr[d].values, float) for d in _SPACE)
        years = np.asarray(x_arr["time"].dt.year.values, int)
        net.metadata.update({
            "task": self.name,
            "inputs": list(inputs),
            "out_variables": list(outputs),
            "history": h,
            "time_step": "1 year",
            "grid": {"lat": lat.tolist(), "lon": lon.tolist()},
            "calendar": str(getattr(x_arr["time"].dt, "calendar", "standard")),
            "train_years": [int(years.min()), int(years.max())],
            "n_train_windows": len(train),
            "n_val_windows": len(val),
            "out_attrs": {n: _attrs_of(ds, n, variable_map, extra_variables) for n in outputs},
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in (
                ("lr", config.lr), ("betas", config.betas), ("weight_decay", config.weight_decay),
                ("batch_size", config.batch_size), ("steps", int(history_ds.sizes.get("step", 0))))},
            "xclimax_version": __version__,
        })
        return net.eval(), history_ds

    def _network(self, model: Any, inputs: Sequence[str] | None, outputs: Sequence[str] | None,
                 history: int | None, freeze_encoder: bool, ds: xr.Dataset, config: TrainConfig
                 ) -> tuple[ClimaXClimateBench, list[str], list[str]]:
        """The network to train: a copy of a ClimateBench model, or a new one on a ClimaX encoder."""
        if isinstance(inputs, str) or isinstance(outputs, str):
            raise DataError("inputs and outputs must be lists of variable names, not a single string")
        if isinstance(model, ClimaXClimateBench):
            ins = [canonical_name(v) for v in (inputs or model.variables)]
            outs = [canonical_name(v) for v in (outputs or model.out_variables)]
            if tuple(ins) != model.variables or tuple(outs) != model.out_variables:
                raise DataError(
                    f"this projection model takes {list(model.variables)} and predicts {list(model.out_variables)}; "
                    f"got inputs={ins}, outputs={outs}. Start from its encoder instead: "
                    "ClimaXClimateBench.from_climax(model, inputs, outputs)"
                )
            if history is not None and int(history) != model.history:
                raise DataError(f"this projection model has history={model.history}; got history={history}")
            net = copy.deepcopy(model)
            if freeze_encoder:
                net.freeze()
            return net.train(), ins, outs
        if not isinstance(model, ClimaX):
            raise XClimaxError(
                f"finetune(task='projection') needs a ClimaX model (e.g. xclimax.tutorial.load_model() or "
                f"xclimax.load_checkpoint('5.625deg.ckpt')); got {type(model).__name__}"
            )
        ins = [canonical_name(v) for v in (inputs or DEFAULT_FORCINGS)]
        outs = [canonical_name(v) for v in (outputs or DEFAULT_RESPONSES)]
        both = set(ins) & set(outs)
        if both:
            raise DataError(f"variables {sorted(both)} are both inputs and outputs; projection predicts responses from forcings")
        h = 10 if history is None else history
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
            raise DataError(f"history must be a positive number of years; got {history!r}")
        norm, _ = _grid.normalize_grid(ds)
        nlat, nlon = norm.sizes.get("lat", 0), norm.sizes.get("lon", 0)
        p = model.patch_size
        if nlat % p or nlon % p or not nlat or not nlon:
            raise GridError(
                f"the data grid ({nlat} x {nlon}) must be divisible by the model's patch size {p}; regrid first "
                "(xclimax.grid.regrid)"
            )
        torch.manual_seed(config.seed)
        net = ClimaXClimateBench.from_climax(model, ins, outs, history=int(h), img_size=(nlat, nlon),
                                             freeze_encoder=freeze_encoder)
        return net.train(), ins, outs

    def _fit(self, net: ClimaXClimateBench, train: list, val: list, xn: torch.Tensor, yn: torch.Tensor,
             inputs: list[str], outputs: list[str], config: TrainConfig, restore_best: bool) -> xr.Dataset:
        """The training loop: plain MSE in normalised space (as the official module), AdamW + warm-up/cosine."""
        from tqdm.auto import tqdm

        c = config
        device = resolve_device(c.device)
        precision = c.precision if c.precision is not None else (OPTIONS["autocast"] if device.type == "cuda" else None)
        if precision == "fp16" and device.type != "cuda":
            raise DataError("precision='fp16' needs a CUDA device (use 'bf16' on CPU)")
        per_epoch = max(1, math.ceil(len(train) / c.batch_size))
        total = int(c.max_steps) if c.max_steps is not None else per_epoch * int(c.epochs or 1)
        total = max(1, math.ceil(total / c.accumulate) if c.max_steps is None else total)
        warmup = min(total // 10, 10_000) if c.warmup_steps is None else min(int(c.warmup_steps), total)
        torch.manual_seed(c.seed)
        net.to(device).train()
        optimizer = configure_optimizer(net, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        scheduler = LinearWarmupCosine(optimizer, warmup, total, warmup_start_lr=c.warmup_start_lr, eta_min=c.eta_min)
        scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        autocast = (torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
                    if precision else nullcontext())
        h = net.history
        xn, yn = xn.to(device), yn.to(device)

        def batch(items: list) -> tuple[torch.Tensor, torch.Tensor]:
            xs = torch.stack([xn[s, t - h + 1 : t + 1] for s, t in items])
            ys = torch.stack([yn[s, t] for s, t in items])
            return xs, ys

        def validate() -> tuple[float, np.ndarray]:
            net.eval()
            se, n = torch.zeros(len(outputs), dtype=torch.float64), 0
            with torch.no_grad(), autocast:
                for i in range(0, len(val), c.batch_size):
                    xb, yb = batch(val[i : i + c.batch_size])
                    err = (net(xb, inputs).float() - yb) ** 2
                    se += err.mean((2, 3)).sum(0).double().cpu()
                    n += xb.shape[0]
            net.train()
            per = (se / max(n, 1)).numpy()
            return float(per.mean()), per

        gen = torch.Generator().manual_seed(c.seed)
        hist: dict[str, list] = {"loss": [], "lr": [], "val_step": [], "val_loss": [], "val_var": []}
        best, best_state = math.inf, None
        val_every = c.val_every or per_epoch
        step, pending = 0, 0
        bar = tqdm(total=total, desc="projection", unit="step", disable=not OPTIONS["progress"])
        try:
            while step < total:
                perm = torch.randperm(len(train), generator=gen).tolist()
                for i in range(0, len(perm), c.batch_size):
                    xb, yb = batch([train[k] for k in perm[i : i + c.batch_size]])
                    with autocast:
                        pred = net(xb, inputs)
                    loss = ((pred.float() - yb) ** 2).mean()
                    scaler.scale(loss / c.accumulate).backward()
                    pending += 1
                    if pending < c.accumulate:
                        continue
                    pending = 0
                    hist["lr"].append(optimiser_step(optimizer, scheduler, scaler, net.parameters(), c.grad_clip))
                    step += 1
                    value = float(loss.detach())
                    hist["loss"].append(value)
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4g}")
                    if c.callback is not None:
                        c.callback(step, value)
                    if val and (step % val_every == 0 or step == total):
                        v, per = validate()
                        hist["val_step"].append(step)
                        hist["val_loss"].append(v)
                        hist["val_var"].append(per)
                        logger.info("step %d: validation MSE %.4g (normalised)", step, v)
                        if restore_best and v < best:
                            best = v
                            best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
                    if step >= total:
                        break
        finally:
            bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
            logger.info("restored the weights of the best validation step (MSE %.4g)", best)
        net.eval()
        out = xr.Dataset(
            {"loss": ("step", np.asarray(hist["loss"], float), {"long_name": "training loss (MSE, normalised)"}),
             "lr": ("step", np.asarray(hist["lr"], float), {"long_name": "learning rate"})},
            coords={"step": np.arange(1, len(hist["loss"]) + 1)},
        )
        if hist["val_step"]:
            out["val_loss"] = xr.DataArray(hist["val_loss"], dims="val_step",
                                           coords={"val_step": np.asarray(hist["val_step"], int)},
                                           attrs={"long_name": "validation MSE (normalised)"})
            out["val_mse"] = xr.DataArray(np.asarray(hist["val_var"]), dims=("val_step", "val_variable"),
                                          coords={"val_variable": list(outputs)},
                                          attrs={"long_name": "validation MSE per output (normalised)"})
        out.attrs = {"task": self.name, "restored_best": int(best_state is not None)}
        return out

    # ------------------------------------------------------------------ inference
    def predict(
        self,
        ds: xr.Dataset,
        model: Any,
        *,
        outputs: Sequence[str] | None = None,
        target_grid: xr.Dataset | xr.DataArray | None = None,
        regrid: str | None = None,
        regrid_method: str = "bilinear",
        batch_size: int | None = None,
        device: Any = None,
        variable_map: Mapping[str, str] | None = None,
        extra_variables: Any = None,
        **kwargs: Any,
    ) -> xr.Dataset:
        """Response maps for every year of ``ds`` (see :func:`xclimax.project`)."""
        if kwargs:
            raise TypeError(f"project() got unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(model, ClimaXClimateBench):
            task = model.metadata.get("task") if isinstance(getattr(model, "metadata", None), dict) else None
            raise CheckpointError(
                f"this model was not trained for climate projection ({type(model).__name__}, task {task!r}): "
                "xclimax.project needs a ClimaXClimateBench model; make one with "
                "xclimax.finetune(ds, model, task='projection', inputs=..., outputs=...)"
            )
        if model.config.get("kind") != KIND:
            raise CheckpointError(f"model configuration has kind {model.config.get('kind')!r}, expected {KIND!r}")
        outs = [canonical_name(v) for v in (outputs or model.out_variables)]
        model.out_ids(outs)  # unknown outputs raise
        stats = dict(model.stats or {})
        lacking = [v for v in (*model.variables, *outs) if v not in stats]
        if lacking:
            raise DataError(f"the model has no normalisation statistics for {lacking}: fine-tune it with "
                            "xclimax.finetune(..., task='projection') first")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise DataError(f"batch_size must be a positive integer; got {batch_size!r}")
        if regrid_method not in ("bilinear", "conservative"):
            raise DataError(f"regrid_method must be 'bilinear' or 'conservative'; got {regrid_method!r}")
        arr, info = _token_array(ds, list(model.variables), img_size=model.img_size, regrid=regrid,
                                 variable_map=variable_map, extra_variables=extra_variables, what="input")
        h = model.history
        if arr.sizes["time"] < h:
            raise DataError(
                f"the model needs history={h} yearly steps of forcing before the first projected year; the input has "
                f"{arr.sizes['time']} ({int(arr['time'].dt.year[0])}-{int(arr['time'].dt.year[-1])})"
            )
        chunked = arr.chunks is not None
        # the caller's model stays where and as it is (a copy on the device in eval mode when needed); on a
        # dask.distributed cluster the weights reach each worker once and stay resident there
        ref, payload = prepare_model(model, device, client="auto" if chunked else None)
        mean_in, std_in = stats_arrays(stats, model.variables)
        mean_out, std_out = stats_arrays(stats, outs)
        on_gpu = resolve_device(device).type == "cuda"
        kwargs_block = dict(in_vars=tuple(model.variables), out_vars=tuple(outs), mean_in=mean_in, std_in=std_in,
                            mean_out=mean_out, std_out=std_out, batch_size=int(batch_size or (32 if on_gpu else 8)))
        batch_dims = list(arr.dims[:-4])
        nb = len(batch_dims)
        if arr.chunks is not None:
            import dask
            import dask.array as dsa

            data = arr.data.rechunk({nb: -1, nb + 1: -1, nb + 2: -1, nb + 3: -1})
            out = dsa.map_blocks(
                _project_block, data, *((payload,) if payload is not None else ()),
                chunks=data.chunks[: nb + 1] + ((len(outs),),) + data.chunks[nb + 2 :],
                dtype=np.float32, name="xclimax-project-" + dask.base.tokenize(data.name, ref, kwargs_block),
                ref=ref, **kwargs_block,
            )
        else:
            from tqdm.auto import tqdm

            n = int(np.prod([arr.sizes[d] for d in batch_dims])) * (arr.sizes["time"] - h + 1)
            with tqdm(total=n, desc="project", unit="year", disable=not OPTIONS["progress"]) as bar:
                out = _project_block(np.asarray(arr.values, np.float32), ref=ref, progress=bar, **kwargs_block)
        coords = {d: arr[d] for d in (*batch_dims, "time", "lat", "lon") if d in arr.coords}
        result = xr.Dataset()
        first = arr["time"].values[h - 1]
        for k, name in enumerate(outs):
            data_k = out[..., k, :, :]
            attrs = dict(model.metadata.get("out_attrs", {}).get(name) or {})
            if not attrs:
                spec = _spec(name)
                attrs = {"long_name": spec.get("long_name", name), "units": spec.get("units") or ""}
                if spec.get("standard_name"):
                    attrs["standard_name"] = spec["standard_name"][0]
            attrs["comment"] = (
                f"projected by xclimax (ClimaX ClimateBench model, {h}-year forcing history); "
                f"NaN before {first} (less than {h} years of forcing)"
            )
            result[name] = xr.DataArray(data_k, dims=(*batch_dims, "time", "lat", "lon"), coords=coords, attrs=attrs)
        for name, c in arr.coords.items():  # scalar and non-index coordinates of the input (e.g. scenario labels)
            if name not in result.coords and set(c.dims) <= set(result.dims) and name != "variable":
                result = result.assign_coords({name: c})
        result["time"].attrs = dict(ds["time"].attrs) if "time" in ds.coords else {}
        if target_grid is not None:
            tgt, _ = _grid.normalize_grid(target_grid)
            result = _grid.regrid(result, tgt["lat"].values, tgt["lon"].values, method=regrid_method)
            result = _grid.restore_grid(result, _grid.normalize_grid(target_grid)[1])
        else:
            result = _grid.restore_grid(result, info)
        result.attrs = {
            "title": "xclimax climate projection",
            "source": f"xclimax {__version__}: ClimaX ClimateBench model (history {h} years)",
            "inputs": ",".join(model.variables),
            "Conventions": "CF-1.8",
        }
        return result
