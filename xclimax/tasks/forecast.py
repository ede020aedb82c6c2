"""The forecast task: predict the state at ``t + lead`` from the state at ``t`` (pre-training and fine-tuning)."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .._utils import resolve_device
from ..cf import checks as _checks
from ..cf.time import as_timedelta
from ..exceptions import DataError, GridError, XClimaxError, XClimaxWarning
from ..loading import Batch, BatchLoader, time_step
from ..loading.index import lead_range
from ..nn.memory import fit_batch_size
from ..nn.model import ClimaX
from ..training.config import TrainConfig
from ..training.fit import fit
from ..training.prepare import (
    DEFAULT_MODEL,
    freeze_parameters,
    grid_record,
    grid_size,
    prepare_data,
    region_mask,
    source_stats,
    widen_model,
)
from ..vocab import FORECAST_VARIABLES, VARIABLES, canonical_name
from ._run import run
from .base import Task

logger = logging.getLogger(__name__)

class _Pairs:
    """Forecast training pairs for the fit loop: input at ``t``, target at ``t + lead``."""

    def __init__(self, lead_times: Any) -> None:
        self.lead_times = lead_times

    def loader(self, sources: Mapping[str, xr.Dataset | xr.DataArray], stats: Mapping[str, Any],
               **kwargs: Any) -> BatchLoader:
        """A :class:`~xclimax.loading.BatchLoader` over forecast pairs."""
        return BatchLoader(sources, stats, lead_times=self.lead_times, **kwargs)

    @staticmethod
    def forward(model: ClimaX, batch: Batch) -> torch.Tensor:
        """The model's prediction of ``batch.y``."""
        return model(batch.x, batch.lead_hours, batch.variables, batch.out_variables)


def _loader_settings(config: TrainConfig) -> dict[str, Any]:
    return dict(batch_size=config.batch_size, seed=config.seed, block_size=config.block_size,
                buffer_size=config.buffer_size, prefetch=config.prefetch,
                pin_memory=resolve_device(config.device).type == "cuda")


class ForecastTask(Task):
    """Forecasting: the state at ``t + lead`` from the state at ``t`` (ClimaX's pre-training and fine-tuning)."""

    name = "forecast"
    recipe = {"betas": (0.9, 0.99)}  # ClimaX fine-tuning; pre-training uses the TrainConfig defaults
    metrics = ("rmse", "acc", "bias")

    def pretrain(self, ds: Any, model: ClimaX | None, config: TrainConfig, **kwargs: Any) -> tuple[ClimaX, xr.Dataset]:
        """Pre-training with random lead times (see :func:`xclimax.pretrain`)."""
        _known_arguments(_pretrain, kwargs, "pretrain")
        return _pretrain(ds, model, config, **kwargs)

    def finetune(self, ds: Any, model: ClimaX, config: TrainConfig, **kwargs: Any) -> tuple[ClimaX, xr.Dataset]:
        """Fine-tuning for one lead time (see :func:`xclimax.finetune`)."""
        _known_arguments(_finetune, kwargs, "finetune(task='forecast')")
        return _finetune(ds, model, config, **kwargs)

    def predict(self, ds: xr.Dataset, model: ClimaX, *, lead_time: Any, steps: int = 1, **kwargs: Any) -> xr.Dataset:
        """Forecasts from every initial time (see :func:`xclimax.forecast`)."""
        lead = as_timedelta(lead_time)
        if lead <= pd.Timedelta(0):
            raise DataError(f"lead_time must be positive; got {lead / pd.Timedelta('1h'):g} h ({lead_time!r})")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise DataError(f"steps must be a positive integer; got {steps!r}")
        if lead > pd.Timedelta("168h"):
            warnings.warn(f"lead_time {lead} per step is beyond the 6-168 h range ClimaX was pretrained on",
                          XClimaxWarning, stacklevel=3)
        return run(ds, model, lead=lead, steps=int(steps), task=self.name, **kwargs)


def _known_arguments(func: Any, kwargs: Mapping[str, Any], where: str) -> None:
    import inspect

    known = [p.name for p in inspect.signature(func).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise DataError(f"unknown argument(s) {unknown} for {where}; expected some of {known} "
                        "(or a training setting of xclimax.TrainConfig)")


def _named(names: Sequence[str]) -> dict[str, tuple]:
    """``{name: (source, units, target units, scale, offset)}`` for checks of canonical training arrays."""
    units = {n: (VARIABLES.get(n) or {}).get("units") for n in names}
    return {n: (n, units[n], units[n], 1.0, 0.0) for n in names if n != "lattitude"}


def _check_model_kwargs(model_kwargs: Mapping[str, Any] | None) -> None:
    import inspect

    if model_kwargs is None:
        return
    if not isinstance(model_kwargs, Mapping):
        raise DataError(f"model_kwargs must be a dict of xclimax.ClimaX arguments; got {type(model_kwargs).__name__}")
    known = set(inspect.signature(ClimaX).parameters) - {"variables", "img_size"}
    unknown = sorted(set(model_kwargs) - known)
    if unknown:
        raise DataError(f"model_kwargs has unknown xclimax.ClimaX arguments {unknown}; expected some of {sorted(known)} "
                        "(variables and img_size come from the data)")


def _check_patch(img: Sequence[int], patch: int) -> None:
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise GridError(f"patch_size must be a positive integer; got {patch!r}")
    if min(img) < patch:  # (other sizes are padded to whole patches inside the model)
        raise GridError(f"the grid (lat, lon) = {tuple(img)} is smaller than one {patch}x{patch} patch "
                        f"(patch_size={patch}): use a larger grid (regrid), or a smaller patch_size")


def _pretrain(
    ds: Any,
    model: ClimaX | None,
    config: TrainConfig,
    *,
    variables: Sequence[str] | None = None,
    lead_times: Any = ("6h", "168h"),
    val: Any = None,
    val_lead_time: Any = None,
    model_kwargs: Mapping[str, Any] | None = None,
    stats: str = "pooled",
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
) -> tuple[ClimaX, xr.Dataset]:
    """Pre-training on one or several sources (see :func:`xclimax.pretrain`)."""
    if stats not in ("pooled", "per_source"):
        raise DataError(f"stats must be 'pooled' or 'per_source'; got {stats!r}")
    if model is not None and not isinstance(model, ClimaX):
        raise XClimaxError(f"model must be None (a new model) or an xclimax.ClimaX; got {type(model).__name__}")
    lead_range(lead_times)  # validated before any work
    if val_lead_time is not None:
        as_timedelta(val_lead_time, "val_lead_time")
    _check_model_kwargs(model_kwargs)
    data, val_data = prepare_data(ds, val, variables, extra_variables, variable_map)
    arrays, masks = data.arrays, data.masks
    img = grid_size(arrays, model)
    names = list(dict.fromkeys(str(v) for a in arrays.values() for v in a["variable"].values))
    outs = [v for v in names if VARIABLES.get(v, {}).get("kind") != "constant"]
    if not outs:
        raise DataError(f"pretraining needs time-varying variables to predict; found only constants {names}")
    kwargs = {**DEFAULT_MODEL, "patch_size": 2 if max(img) <= 64 else 4, **(model_kwargs or {})}
    planned = dict(model.config) if model is not None else {**kwargs, "variables": names, "img_size": img}
    _check_patch(img, int(planned.get("patch_size", 2)))
    fit_batch_size({**planned, "variables": list(dict.fromkeys([*planned.get("variables", []), *names]))},
                   resolve_device(config.device), requested=config.batch_size, n_in=len(names), n_out=len(outs),
                   training=True, checkpointing=config.activation_checkpointing, what="pretraining run")
    norm_stats, pooled = source_stats(arrays, masks, stats == "pooled")
    _checks.ValueChecker.build(_named(names), model.stats if model is not None else None,
                               what="training data").check_summary(pooled)
    torch.manual_seed(config.seed)  # fresh weights (new model or new variables) depend on the seed alone
    if model is None:
        model = ClimaX(variables=names, img_size=img, **kwargs)
    else:
        model = widen_model(model, names)
    model.stats = {**model.stats, **pooled}
    task = _Pairs(lead_times)
    lat = np.asarray(next(iter(arrays.values()))["lat"].values)
    mapping = (extra_variables, variable_map)
    loader = task.loader(stats=norm_stats, outputs=outs, **_loader_settings(config), **data.loader_kwargs(*mapping))
    val_loader = None
    if val_data is not None:
        lead = val_lead_time or (lead_times[-1] if isinstance(lead_times, (list, tuple)) else lead_times)
        val_stats = norm_stats if stats == "pooled" or val_data.arrays is arrays else pooled
        val_loader = _Pairs(lead).loader(stats=val_stats, batch_size=config.batch_size, outputs=outs, shuffle=False,
                                         prefetch=config.prefetch, **val_data.loader_kwargs(*mapping))
    history = fit(model, task, loader, val_loader, config, lat=lat, mask=np.ones(img, bool), desc="xclimax pretrain")
    model.metadata.update(
        task="pretrain", out_variables=outs, grid=grid_record(arrays),
        lead_times=[str(pd.Timedelta(v)) for v in (lead_times if isinstance(lead_times, (list, tuple)) else [lead_times])],
        time_step=str(pd.Timedelta(time_step(next(iter(arrays.values()))["time"].values))),
    )
    return model, history


def _finetune(
    ds: Any,
    model: ClimaX,
    config: TrainConfig,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    lead_time: Any = "72h",
    target: Any = None,
    region: str | Mapping[str, Any] | None = None,
    freeze: str | Sequence[str] | None = None,
    val: Any = None,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
) -> tuple[ClimaX, xr.Dataset]:
    """Fine-tuning for one fixed lead time (see :func:`xclimax.finetune`)."""
    if not isinstance(model, ClimaX):
        raise XClimaxError(f"finetune needs a ClimaX model as model (e.g. from xclimax.load_checkpoint); "
                           f"got {type(model).__name__}")
    lead = as_timedelta(lead_time, "lead_time")
    if lead <= pd.Timedelta(0):
        raise DataError(f"lead_time must be positive; got {lead / pd.Timedelta('1h'):g} h ({lead_time!r})")
    the_task = _Pairs((lead_time, lead_time))
    if target is not None:
        raise DataError("target= is for tasks whose targets are separate data (task='downscale'); "
                        "task 'forecast' predicts the inputs' future")
    want = None
    if inputs is not None or outputs is not None:
        want = list(dict.fromkeys(canonical_name(v) for v in [*(inputs or []), *(outputs or [])]))
        if inputs is None:
            want = None  # all variables found, which must include the outputs (checked below)
    data, val_data = prepare_data(ds, val, want, extra_variables, variable_map)
    arrays, masks = data.arrays, data.masks
    img = grid_size(arrays, model)
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
    fit_batch_size({**model.config, "variables": list(dict.fromkeys([*model.variables, *new_vars]))},
                   resolve_device(config.device), requested=config.batch_size, n_in=len(ins), n_out=len(outs),
                   training=True, checkpointing=config.activation_checkpointing, what="fine-tuning run")
    _, pooled = source_stats(arrays, masks, True)
    _checks.ValueChecker.build(_named(found), model.stats, what="training data").check_summary(pooled)
    torch.manual_seed(config.seed)  # fresh weights of new variables depend on the seed alone
    tuned = widen_model(model, ins + outs)
    stats = {**pooled, **{v: tuple(s) for v, s in model.stats.items()}}
    tuned.stats = {**tuned.stats, **{v: stats[v] for v in dict.fromkeys(ins + outs)}}
    hooks = freeze_parameters(tuned, freeze, new_vars)
    lat, lon = (np.asarray(next(iter(arrays.values()))[c].values) for c in ("lat", "lon"))
    mask = region_mask(lat, lon, region, tuned.patch_size) if region is not None else np.ones(img, bool)
    torch.manual_seed(config.seed)
    kw = dict(inputs=ins, outputs=outs)
    mapping = (extra_variables, variable_map)
    loader = the_task.loader(stats=stats, **_loader_settings(config), **kw, **data.loader_kwargs(*mapping))
    val_loader = None
    if val_data is not None:
        val_loader = the_task.loader(stats=stats, shuffle=False, batch_size=config.batch_size, prefetch=config.prefetch,
                                     **kw, **val_data.loader_kwargs(*mapping))
    history = fit(tuned, the_task, loader, val_loader, config, lat=lat, mask=mask, desc="xclimax finetune (forecast)")
    for h in hooks:
        h.remove()
    for p in tuned.parameters():
        p.requires_grad_(True)
    tuned.metadata.update(
        task="forecast", in_variables=ins, out_variables=outs, lead_time=str(pd.Timedelta(lead_time)),
        grid=grid_record(arrays),
        region=region if region is None or isinstance(region, str) else {k: list(v) for k, v in region.items()},
        time_step=str(pd.Timedelta(time_step(next(iter(arrays.values()))["time"].values))),
    )
    return tuned, history
