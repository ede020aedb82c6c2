"""The downscaling task: coarse fields interpolated onto the model's fine grid, ClimaX at lead 0.

As on ClimaX's ``climate_downscaling`` branch, the coarse input is interpolated (bilinear by
default) onto the model's grid, the grid of the fine target, and the network runs with lead
time 0 to predict the fine fields. Inputs may also hold fields that exist only at the fine
resolution (orography, land-sea mask: time-independent, taken from the target) and variables
that are not outputs.

By default (``residual=True``) the network predicts the *correction* to the interpolated input
for every output that is also an input, ``fine = interpolated + model(...)`` in normalised
units: a freshly initialised network starts close to plain interpolation and learns the fine
detail, which makes short fine-tunings beat interpolation. ``residual=False`` predicts the fine
fields directly, as the official branch does. The choice is recorded in
``model.metadata["residual"]`` and applied again by :func:`xclimax.downscale`.

Training reuses the shared machinery: pairs come from :class:`~xclimax.loading.BatchLoader`
(lead 0: input and target at the same time) over one canonical array holding the interpolated
inputs, the fine-only inputs and the fine targets, and the loop is
:func:`xclimax.training.fit.fit`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .._utils import resolve_device
from ..cf import grid as _grid
from ..cf import stats as _stats
from ..cf import time as _time
from ..cf import tokens as _tokens
from ..exceptions import CheckpointError, DataError, GridError, XClimaxWarning
from ..loading import Batch, BatchLoader, split_times
from ..nn.model import ClimaX
from ..training.config import TrainConfig
from ..training.fit import fit
from ..training.prepare import freeze_parameters, widen_model
from ..vocab import VARIABLES, canonical_name
from ._run import run
from .base import Task

__all__ = ["DownscaleTask"]

logger = logging.getLogger(__name__)

#: prefix of the fine targets in the canonical training array (the inputs keep the plain names)
_TARGET = "target:"
_METHODS = ("bilinear", "conservative")


def _is_constant(name: str) -> bool:
    return (VARIABLES.get(name) or {}).get("kind") == "constant"


def _span(times: Any) -> str:
    values = np.asarray(times)
    if not values.size:
        return "(no times)"
    return f"{_time.format_time(values.flat[0])} .. {_time.format_time(values.flat[-1])} ({values.size} times)"


def _check_method(regrid: Any) -> str:
    if regrid not in _METHODS:
        raise DataError(f"regrid must be 'bilinear' or 'conservative' for downscaling; got {regrid!r}")
    return str(regrid)


class _Pairs:
    """Downscaling pairs for the fit loop: interpolated coarse (+ fine-only) inputs and fine targets, lead 0."""

    def __init__(self, residual: bool) -> None:
        self.residual = residual

    @staticmethod
    def loader(sources: Any, stats: Mapping[str, Any], **kwargs: Any) -> BatchLoader:
        """A :class:`~xclimax.loading.BatchLoader` over same-time pairs."""
        return BatchLoader(sources, stats, lead_times="0h", **kwargs)

    def forward(self, model: ClimaX, batch: Batch) -> torch.Tensor:
        """The model's prediction of ``batch.y`` (the fine targets, normalised)."""
        outs = [v[len(_TARGET):] for v in batch.out_variables]
        y = model(batch.x, batch.lead_hours, batch.variables, outs)
        if self.residual:
            pairs = [(batch.variables.index(v), k) for k, v in enumerate(outs) if v in batch.variables]
            if pairs:
                inc = torch.zeros_like(y)
                inc[:, [k for _, k in pairs]] = batch.x[:, [i for i, _ in pairs]].to(y.dtype)
                y = y + inc
        return y


def _aligned(coarse: xr.Dataset, fine: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """The coarse and fine data at their common times (matched in their common calendar)."""
    tc, tf = _time.time_dim(coarse), _time.time_dim(fine)
    pos = _time.positions(coarse[tc].values, fine[tf].values, ("coarse input", "fine target"))
    keep = np.nonzero(pos >= 0)[0]
    if keep.size == 0:
        raise DataError(
            "the coarse input and the fine target have no time in common: coarse "
            f"{_span(coarse[tc].values)}, fine {_span(fine[tf].values)} (in the {_time.calendar(fine[tf].values)!r} "
            "calendar); downscaling pairs are fields at the same time"
        )
    dropped = coarse.sizes[tc] - keep.size, fine.sizes[tf] - keep.size
    if any(dropped):
        logger.info("downscaling pairs: %d common times (dropped %d coarse and %d fine times without a partner)",
                    keep.size, *dropped)
    coarse = coarse.isel({tc: keep})
    fine = fine.isel({tf: pos[keep]})
    if tc != "time":
        coarse = coarse.rename({tc: "time"})
    if tf != "time":
        fine = fine.rename({tf: "time"})
    return coarse, fine


def _has_time(ds: xr.Dataset, src: Any) -> bool:
    return src.source is not None and "time" in ds[src.source].dims


class DownscaleTask(Task):
    """Downscaling: fine-grid fields from coarse inputs interpolated onto the model grid, lead time 0."""

    name = "downscale"
    recipe = {"betas": (0.9, 0.999)}  # the climate_downscaling branch (lr 5e-4, wd 1e-5 are the defaults)
    metrics = ("rmse", "bias")

    # ------------------------------------------------------------------------------ training

    def finetune(
        self,
        ds: Any,
        model: ClimaX,
        config: TrainConfig,
        *,
        target: Any = None,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        val: Any = None,
        freeze: str | Sequence[str] | None = None,
        regrid: str = "bilinear",
        residual: bool = True,
        region: Any = None,
        extra_variables: Any = None,
        variable_map: Mapping[str, str] | None = None,
    ) -> tuple[ClimaX, xr.Dataset]:
        """Fine-tune a copy of ``model`` to downscale ``ds`` (coarse) to ``target`` (fine); see :func:`xclimax.finetune`."""
        if not isinstance(model, ClimaX):
            raise DataError(f"finetune needs a ClimaX model (e.g. from xclimax.load_checkpoint); got {type(model).__name__}")
        if not isinstance(ds, xr.Dataset):
            raise DataError(f"task='downscale' needs the coarse input as an xarray.Dataset; got {type(ds).__name__}")
        if not isinstance(target, xr.Dataset):
            raise DataError("task='downscale' needs target=<the fine Dataset> (the high-resolution fields to learn); "
                            f"got {type(target).__name__}")
        if region is not None:
            raise DataError("region= is for forecasting; to downscale a region, give a target on that region "
                            "(limited-area grids are supported)")
        method = _check_method(regrid)
        coarse, _ = _grid.normalize_grid(ds)
        fine, _ = _grid.normalize_grid(target)
        coarse, fine = _aligned(coarse, fine)
        flat, flon = np.asarray(fine["lat"].values, float), np.asarray(fine["lon"].values, float)
        if tuple(model.img_size) != (flat.size, flon.size):
            raise GridError(
                f"grid shape mismatch: the model expects (lat, lon) = {tuple(model.img_size)}, but the fine target "
                f"is on {flat.size} x {flon.size} points ({_grid.grid_domain(fine)}); the model predicts on the "
                f"target's grid: load the checkpoint at that size with xclimax.load_checkpoint(path, "
                f"img_size={(flat.size, flon.size)}) (pos_embed is interpolated) or build one with that img_size"
            )
        _grid.check_coverage(coarse, flat, flon, method=method, what=("coarse input", "fine target grid"))

        # ---- variables
        mapping = dict(extra_variables=extra_variables, variable_map=variable_map)
        cfound = _tokens.find_variables(coarse, None, **mapping)
        ffound = _tokens.find_variables(fine, None, **mapping)
        fine_static = {k: s for k, s in ffound.items() if not _has_time(fine, s)}  # constants, lattitude
        if outputs is not None:
            outs = [canonical_name(v) for v in ([outputs] if isinstance(outputs, str) else outputs)]
            absent = [v for v in outs if v not in ffound]
            if absent:
                raise DataError(f"outputs {absent} are not in the fine target (found {list(ffound)})")
            static = [v for v in outs if v in fine_static]
            if static:
                raise DataError(f"outputs {static} do not vary in time in the fine target: nothing to downscale")
        else:
            outs = [v for v in ffound if v in cfound and v not in fine_static and not _is_constant(v)]
            if not outs:
                raise DataError(
                    f"no time-varying variable is in both the coarse input ({list(cfound)}) and the fine target "
                    f"({list(ffound)}); name the fine fields to predict with outputs=[...]"
                )
        if inputs is not None:
            ins = [canonical_name(v) for v in ([inputs] if isinstance(inputs, str) else inputs)]
        else:
            ins = [v for v in cfound if v not in fine_static] + [v for v in fine_static if v in ffound]
        coarse_in, fine_in = [], []
        for v in dict.fromkeys(ins):
            if v in fine_static:
                fine_in.append(v)  # fine-resolution fields win over interpolated ones
            elif v in cfound:
                coarse_in.append(v)
            elif v in ffound:
                raise DataError(
                    f"input {v!r} varies in time and exists only in the fine target: it would not be available when "
                    "downscaling new coarse data; give it in the coarse input, or use time-independent fine fields "
                    "(orography, land-sea mask)"
                )
            else:
                raise DataError(f"input {v!r} is in neither the coarse input ({list(cfound)}) nor the fine target "
                                f"({list(ffound)})")
        ins = coarse_in + fine_in
        if not coarse_in:
            raise DataError(f"no input comes from the coarse data (inputs {ins}): downscaling needs coarse fields")

        # ---- the canonical training array: interpolated coarse inputs, fine-only inputs, fine targets
        sources = [cfound[v].source for v in coarse_in if cfound[v].source is not None]
        on_fine = _grid.regrid(coarse[list(dict.fromkeys(sources))], flat, flon, method=method)
        parts = [_tokens.to_array(on_fine, coarse_in, **mapping)]
        if fine_in:
            parts.append(_tokens.to_array(fine, fine_in, **mapping))
        tgt = _tokens.to_array(fine, outs, **mapping)
        parts.append(tgt.assign_coords(variable=[_TARGET + v for v in outs]))
        batch_dims = {tuple(p.dims[:-4]) for p in parts}
        if len(batch_dims) != 1:
            raise DataError(f"the coarse input and the fine target must have the same extra dimensions (e.g. member); "
                            f"found {sorted(batch_dims)}")
        time = tgt["time"]
        parts = [p.assign_coords(time=time, lat=tgt["lat"], lon=tgt["lon"]) for p in parts]
        array = xr.concat(parts, dim="variable", coords="minimal", compat="override", join="override")
        if array.chunks is not None:
            array = array.chunk({"variable": -1, "lat": -1, "lon": -1})
        array.name = "climax_downscaling_pairs"

        # ---- train / validation split, statistics (the model's own where it has them)
        if val is not None and not isinstance(val, (slice, float, int)):
            raise DataError(f"for downscaling, val must be a time slice or a final fraction of the common times; "
                            f"got {type(val).__name__}")
        train_mask, val_mask = split_times(time.values, val)
        stats = {v: tuple(float(x) for x in s) for v, s in (model.stats or {}).items()}
        need = [v for v in dict.fromkeys(outs + ins) if v not in stats]
        if need:
            names = [(_TARGET + v) if v in outs else v for v in need]  # outputs: the fine fields' statistics
            sub = array.sel(variable=names).isel(time=np.nonzero(train_mask)[0])
            computed = _stats.stats_to_dict(_stats.compute_stats(sub))
            stats.update({v: computed[n] for v, n in zip(need, names)})
        loader_stats = {**{v: stats[v] for v in ins}, **{_TARGET + v: stats[v] for v in outs}}

        # ---- model, loaders, loop
        new_vars = [v for v in dict.fromkeys(ins + outs) if v not in model.variables]
        torch.manual_seed(config.seed)  # fresh weights of new variables depend on the seed alone
        tuned = widen_model(model, ins + outs)
        tuned.stats = {**tuned.stats, **{v: stats[v] for v in dict.fromkeys(ins + outs)}}
        hooks = freeze_parameters(tuned, freeze, new_vars)
        torch.manual_seed(config.seed)
        pairs = _Pairs(bool(residual))
        kw = dict(inputs=ins, outputs=[_TARGET + v for v in outs], variables=list(array["variable"].values))
        loader = pairs.loader({"data": array}, loader_stats, mask={"data": train_mask}, batch_size=config.batch_size,
                              seed=config.seed, block_size=config.block_size, buffer_size=config.buffer_size,
                              prefetch=config.prefetch, pin_memory=resolve_device(config.device).type == "cuda", **kw)
        val_loader = None
        if val_mask.any():
            val_loader = pairs.loader({"data": array}, loader_stats, mask={"data": val_mask}, shuffle=False,
                                      batch_size=config.batch_size, prefetch=config.prefetch, **kw)
        history = fit(tuned, pairs, loader, val_loader, config, lat=flat, mask=np.ones(tuned.img_size, bool),
                      desc="xclimax finetune (downscale)")
        for h in hooks:
            h.remove()
        for p in tuned.parameters():
            p.requires_grad_(True)
        history = _strip_targets(history)
        tuned.metadata.update(
            task="downscale", in_variables=ins, out_variables=outs, coarse_inputs=coarse_in, fine_inputs=fine_in,
            residual=bool(residual), regrid=method, lead_time=str(pd.Timedelta(0)),
            grid=_grid.grid_metadata(flat, flon),
            source_grid=_grid.grid_metadata(coarse["lat"].values, coarse["lon"].values),
            calendar=_time.calendar(time.values),
        )
        return tuned, history

    # ------------------------------------------------------------------------------ inference

    def predict(
        self,
        ds: xr.Dataset,
        model: Any,
        *,
        target_grid: Any = None,
        static: xr.Dataset | None = None,
        regrid: str = "bilinear",
        target_regrid: str = "bilinear",
        allow_other_tasks: bool = False,
        output_grid: str | None = "model",
        **kwargs: Any,
    ) -> xr.Dataset:
        """Fine fields on the model grid or ``target_grid`` (see :func:`xclimax.downscale`)."""
        method = _check_method(regrid)
        _check_method(target_regrid)
        meta = model.metadata if isinstance(getattr(model, "metadata", None), dict) else {}
        trained_for = meta.get("task")
        if trained_for != "downscale":
            what = f"was trained for {trained_for!r}" if trained_for else "has no record of its task"
            reason = (f"this model {what}, not for downscaling (model.metadata['task'] is {trained_for!r}): a "
                      "forecasting or pre-trained model run at lead 0 on interpolated input gives fields that are "
                      "typically worse than the interpolation itself. Fine-tune it first with "
                      "xclimax.finetune(coarse, model, task='downscale', target=fine)")
            if not allow_other_tasks:
                raise CheckpointError(reason + ", or pass allow_other_tasks=True to run it anyway")
            warnings.warn(reason, XClimaxWarning, stacklevel=3)
        if not isinstance(ds, xr.Dataset):
            raise DataError(f"expected an xarray.Dataset; got {type(ds).__name__}")
        if output_grid not in (None, "model", "input"):
            raise DataError(f"output_grid must be 'model' or 'input'; got {output_grid!r}")
        if output_grid == "input" and target_grid is None:
            target_grid = ds
        target = None
        if target_grid is not None:  # validated before any work
            if not isinstance(target_grid, (xr.Dataset, xr.DataArray)):
                raise DataError("target_grid must be an xarray Dataset or DataArray whose lat/lon define the output "
                                f"grid; got {type(target_grid).__name__}")
            target = _grid.grid_axes(target_grid, points=True)

        norm, info = _grid.normalize_grid(ds)
        mlat, mlon = _grid.model_grid(model)
        try:
            _grid.check_grid(norm, model)
            on_grid = norm
        except GridError:
            _grid.check_coverage(norm, mlat, mlon, method=method, what=("coarse input", "model grid"))
            on_grid = _grid.regrid(norm, mlat, mlon, method=method)
        on_grid = self._with_static(on_grid, model, static, meta, kwargs)
        out = run(on_grid, model, lead=pd.Timedelta(0), steps=1, regrid=None, task=self.name, **kwargs)
        out = out.isel(lead_time=0, drop=True).drop_vars("valid_time", errors="ignore")
        if "time" in out.coords:
            out["time"].attrs = dict(norm["time"].attrs) if "time" in norm.coords else {}
        if target is not None:
            tlat, tlon, tlat_e, tlon_e = target
            bounds = dict(lat_bounds=np.stack([tlat_e[:-1], tlat_e[1:]], 1),
                          lon_bounds=np.stack([tlon_e[:-1], tlon_e[1:]], 1))
            _grid.check_coverage(out, tlat, tlon, method=target_regrid, what=("model grid", "target grid"), **bounds)
            out = _grid.regrid(out, tlat, tlon, method=target_regrid, **bounds)
            out = _grid.restore_grid(out, _grid.normalize_grid(target_grid)[1])
        else:
            out = _grid.restore_grid(out, info)  # the input's conventions (latitude order, longitude range)
        out.attrs.update(
            title="ClimaX downscaling",
            history=str(out.attrs.get("history", "")).replace("lead_time=0 days 00:00:00, steps=1, ", "")
            + f" (coarse input interpolated: {method}"
            + (f"; output regridded to target_grid: {target_regrid}" if target is not None else "") + ")",
            xclimax_task="downscale",
        )
        return out

    @staticmethod
    def _with_static(on_grid: xr.Dataset, model: Any, static: Any, meta: Mapping[str, Any],
                     kwargs: Mapping[str, Any]) -> xr.Dataset:
        """Add the model's fine-resolution inputs (from ``static``, on the model grid) to the regridded input."""
        wanted = [v for v in meta.get("fine_inputs") or [] if v != "lattitude"]
        mapping = dict(extra_variables=kwargs.get("extra_variables"), variable_map=kwargs.get("variable_map"))
        if static is None:
            if not wanted:
                return on_grid
            have = _tokens.find_variables(on_grid, wanted, **mapping)
            absent = [v for v in wanted if v not in have]
            if absent:
                raise DataError(
                    f"the model was trained with fine-resolution inputs {wanted} that are not in the input "
                    f"(missing {absent}); pass them with static=<a Dataset on the model's grid> (e.g. the "
                    "orography and land-sea mask of the fine target used for training)"
                )
            warnings.warn(
                f"the model was trained with fine-resolution {wanted} but got them from the coarse input, "
                "interpolated: pass the fine fields with static=... for the skill it was trained for",
                XClimaxWarning, stacklevel=4,
            )
            return on_grid
        if not isinstance(static, xr.Dataset):
            raise DataError(f"static must be an xarray.Dataset on the model's grid; got {type(static).__name__}")
        try:
            _grid.check_grid(static, model)
        except GridError as err:
            raise GridError(f"static fields must be on the model's grid: {err}") from None
        snorm, _ = _grid.normalize_grid(static)
        found = _tokens.find_variables(snorm, wanted or None, **mapping)
        absent = [v for v in wanted if v not in found]
        if absent:
            raise DataError(f"static has no {absent} (the model's fine-resolution inputs are {wanted}; "
                            f"found {list(found)})")
        names = [s.source for k, s in found.items() if s.source is not None and (not wanted or k in wanted)]
        add = {}
        for name in dict.fromkeys(names):
            da = snorm[name]
            try:
                tdim = _time.time_dim(static)
            except DataError:
                tdim = None
            if tdim in da.dims:  # time-independent fields: the first time
                da = da.isel({tdim: 0}, drop=True)
            add[name] = da.assign_coords(lat=on_grid["lat"], lon=on_grid["lon"])
        return on_grid.drop_vars([n for n in add if n in on_grid.variables]).assign(add)


def _strip_targets(history: xr.Dataset) -> xr.Dataset:
    """History over the output names (without the internal target prefix)."""
    strip = lambda names: [str(v)[len(_TARGET):] if str(v).startswith(_TARGET) else str(v) for v in names]  # noqa: E731
    out = history.assign_coords(variable=strip(history["variable"].values))
    if "val_variable" in out.coords:
        out = out.assign_coords(val_variable=strip(out["val_variable"].values))
    return out
