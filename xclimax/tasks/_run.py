"""Running a ClimaX model over xarray Datasets: the inference engine shared by the tasks.

:func:`run` maps CF variables to ClimaX tokens, normalises with the model's own
statistics, runs the network batch by batch (eagerly with a progress bar, or lazily
as one dask task per batch of initial times) and returns labelled, CF-annotated
results with ``lead_time`` and ``valid_time`` coordinates.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from .._utils import resolve_device
from .._version import __version__
from ..cf import checks as _checks
from ..cf import grid as _grid
from ..cf import time as _time
from ..cf import tokens as _tokens
from ..cf.stats import stats_arrays
from ..distributed.workers import ModelRef
from ..distributed.workers import prepare as prepare_model
from ..exceptions import CFMappingError, DataError, GridError, XClimaxWarning
from ..options import OPTIONS
from ..vocab import VARIABLES, canonical_name

if TYPE_CHECKING:  # pragma: no cover

    from ..nn.model import ClimaX

__all__ = ["run"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers


def _is_dynamic(name: str) -> bool:
    spec = VARIABLES.get(name)
    return spec is None or spec["kind"] != "constant"


def _run_blocks(
    data: np.ndarray,
    payload: Any = None,
    *,
    ref: ModelRef,
    in_vars: Sequence[str],
    out_vars: Sequence[str],
    mean_in: np.ndarray,
    std_in: np.ndarray,
    mean_out: np.ndarray,
    std_out: np.ndarray,
    lead_hours: float,
    steps: int,
    batch_size: int | None,
    feed: Sequence[tuple[int, int]],
    residual: Sequence[tuple[int, int]] = (),
    checker: Any = None,
    progress: Any = None,
) -> np.ndarray:
    """Forecast one block ``[..., time, Vin, H, W]`` -> ``[..., time, steps, Vout, H, W]`` (physical units).

    The model comes from ``ref`` (in-process: the caller's model or a copy on the device; on a dask
    worker: that worker's resident copy, built from ``payload`` once); ``batch_size=None`` picks one
    for the device of the process that runs the block.
    """
    import torch

    model, device = ref.get(payload)
    if batch_size is None:
        from ..nn.memory import fit_batch_size

        batch_size = fit_batch_size(model.config, device, default=32 if device.type == "cuda" else 8,
                                    n_in=len(in_vars), n_out=len(out_vars))
    lead_shape = data.shape[:-3]
    x_all = data.reshape((-1,) + data.shape[-3:])
    if checker is not None:  # finite, plausible values (xclimax.cf.checks), before any model work
        checker(x_all)
    else:
        bad = ~np.isfinite(x_all).all(axis=(0, 2, 3))
        if bad.any():
            names = [v for v, b in zip(in_vars, bad) if b]
            raise DataError(f"input contains NaN or inf in {names}: ClimaX needs complete fields; fill or drop them first")
    out = np.empty((x_all.shape[0], steps, len(out_vars)) + x_all.shape[-2:], dtype=np.float32)
    m_in = torch.as_tensor(mean_in, dtype=torch.float32, device=device)[:, None, None]
    s_in = torch.as_tensor(std_in, dtype=torch.float32, device=device)[:, None, None]
    m_out = torch.as_tensor(mean_out, dtype=torch.float32, device=device)[:, None, None]
    s_out = torch.as_tensor(std_out, dtype=torch.float32, device=device)[:, None, None]
    feed_in = [i for i, _ in feed]
    feed_out = [o for _, o in feed]
    autocast = ref.autocast if device.type == "cuda" else None  # the option when the graph was built
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast) if autocast else None
    with torch.inference_mode():
        for start in range(0, x_all.shape[0], batch_size):
            x = torch.as_tensor(x_all[start : start + batch_size], dtype=torch.float32).to(device)
            x = (x - m_in) / s_in
            lead = torch.full((x.shape[0],), float(lead_hours), device=device)
            for k in range(steps):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    y = model(x, lead, in_vars, out_vars).float()
                if residual:  # a model that predicts increments over its same-named inputs (metadata["residual"])
                    y[:, [o for _, o in residual]] += x[:, [i for i, _ in residual]]
                out[start : start + x.shape[0], k] = (y * s_out + m_out).cpu().numpy()
                if k + 1 < steps:
                    x = x.clone()
                    x[:, feed_in] = y[:, feed_out]
            if progress is not None:
                progress.update(x.shape[0])
    return out.reshape(lead_shape + out.shape[1:])


def _output_names(wanted: Sequence[str], found: dict, model: "ClimaX") -> list[str]:
    """ClimaX names of the requested outputs: ClimaX names, or data variables of the input (all their levels)."""
    out: list[str] = []
    unknown = []
    for name in wanted:
        climax = canonical_name(str(name))
        if climax in model.variables:
            out.append(climax)
            continue
        from_input = [k for k, src in found.items() if getattr(src, "source", None) == name and k in model.variables]
        if from_input:
            out += from_input
        else:
            unknown.append(name)
    if unknown:
        raise CFMappingError(
            f"requested output variables {unknown} are neither among the model's variables {list(model.variables)} "
            f"nor data variables of the input that map to them ({sorted({s.source for s in found.values() if s.source})})"
        )
    return list(dict.fromkeys(out))


def _check_arguments(ds: xr.Dataset, model: "ClimaX", *, lead: pd.Timedelta, regrid: str | None,
                     batch_size: int | None, names: str, output_grid: str | None, variables: Any,
                     out_variables: Any, task: str) -> list[str] | None:
    """Check :func:`run`'s arguments and the input's coordinates and times; the requested output variables."""
    _checks.check_dataset(ds, "ds")
    if regrid not in (None, "bilinear", "conservative"):
        raise DataError(f"regrid must be None, 'bilinear' or 'conservative'; got {regrid!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise DataError(f"batch_size must be a positive integer or None; got {batch_size!r}")
    if names not in ("input", "climax"):
        raise DataError(f"names must be 'input' (the input's names and units) or 'climax'; got {names!r}")
    if output_grid not in (None, "input", "model"):
        raise DataError(f"output_grid must be 'input' or 'model'; got {output_grid!r}")
    if variables is not None and out_variables is not None:
        raise DataError("give the output variables once: out_variables= (variables= is its older name)")
    out_variables = out_variables if out_variables is not None else variables
    if isinstance(out_variables, str):
        out_variables = [out_variables]
    _checks.check_coordinates(ds)
    _checks.check_times(ds, _time.time_dim(ds), what="input")
    if task == "forecast":
        _checks.check_lead_time(getattr(model, "metadata", None), lead, stacklevel=6)
    return out_variables


def _choose_variables(ds: xr.Dataset, model: "ClimaX", found: dict, out_variables: Any,
                      steps: int) -> tuple[list[str], list[str], list[str]]:
    """The model inputs found in ``ds``, the outputs to produce and the model inputs that are missing."""
    in_vars = [v for v in model.variables if v in found]
    if not any(_is_dynamic(v) for v in in_vars):
        raise CFMappingError(
            f"none of the model's {len(model.variables)} variables were found in the Dataset, "
            f"apart from constants {in_vars} "
            f"(looked for e.g. {list(model.variables[:5])} by CF standard_name, units and level); "
            f"Dataset has {list(ds.data_vars)}"
        )
    missing = [v for v in model.variables if v not in found]
    if missing:
        warnings.warn(
            f"{len(missing)} of the model's {len(model.variables)} input variables are missing from the input and "
            f"will not be used: {missing}. The model was trained with them: expect lower skill, or add them "
            "(xclimax.tokens.check(ds, model) shows what was searched).",
            XClimaxWarning,
            stacklevel=5,
        )
    trained = model.metadata.get("out_variables") if isinstance(model.metadata, dict) else None
    if out_variables is not None:
        out_vars = _output_names(out_variables, found, model)
        absent = [v for v in out_vars if v not in found]
        if absent:
            warnings.warn(
                f"forecasts of {absent} were requested but these variables are not in the input: they start from "
                "no initial state of their own and are inferred from the other variables only "
                f"({in_vars}); expect them to be less skilful than the others",
                XClimaxWarning,
                stacklevel=5,
            )
        untrained = [v for v in out_vars if trained and v not in trained]
        if untrained:
            warnings.warn(f"the model was not trained to predict {untrained} (its outputs: {list(trained)})",
                          XClimaxWarning, stacklevel=5)
    else:  # the variables of the input that the model predicts
        predicted = list(trained) if trained else [v for v in model.variables if _is_dynamic(v)]
        out_vars = [v for v in predicted if v in in_vars and _is_dynamic(v)]
        if not out_vars:
            raise CFMappingError(
                f"the model predicts {predicted}, none of which is in the input (found {in_vars}); ask for "
                "outputs with out_variables=[...]"
            )
    if steps > 1:
        needed = [v for v in in_vars if _is_dynamic(v) and v not in out_vars]
        if needed:
            raise CFMappingError(
                f"steps={steps} rolls the forecast out autoregressively, so the outputs must cover the model's "
                f"time-varying inputs; not predicted: {needed} (outputs: {out_vars})"
            )
    return in_vars, out_vars, missing


def _labelled(out: Any, arr: xr.DataArray, batch_dims: list, out_vars: Sequence[str],
              leads: pd.TimedeltaIndex) -> xr.DataArray:
    """The model output ``(*batch, time, lead_time, variable, lat, lon)`` with its coordinates and valid times."""
    dims = (*batch_dims, "time", "lead_time", "variable", "lat", "lon")
    coords = {d: arr[d] for d in (*batch_dims, "time", "lat", "lon") if d in arr.coords}
    result = xr.DataArray(out, dims=dims, coords=coords)
    result = result.assign_coords(variable=list(out_vars), lead_time=("lead_time", leads.values))
    result = result.assign_coords(valid_time=_time.valid_times(result["time"], result["lead_time"]))  # input's calendar
    result["lead_time"].attrs.update(long_name="lead time", standard_name="forecast_period")
    result["valid_time"].attrs.update(long_name="valid time", standard_name="time")
    result["time"].attrs.update(long_name="initial time", standard_name="forecast_reference_time")
    return result


def _in_users_terms(result: xr.DataArray, ds_n: xr.Dataset, info: Any, *, names: str, regridded: bool,
                    output_grid: str | None, regrid: str | None, task: str, extra_variables: Any,
                    variable_map: Any, found: Any = None) -> xr.Dataset:
    """The output as CF variables: the input's names, units, grid and conventions (or ClimaX names)."""
    if names == "climax":
        out_ds = _tokens.from_array(result, extra_variables=extra_variables)
        out_ds = out_ds.assign_coords(_tokens.carried_coords(ds_n, out_ds))  # the input's scalar coordinates
    else:  # the input's names, units and vertical coordinate
        with warnings.catch_warnings():  # the input's mapping was reported above
            warnings.simplefilter("ignore", XClimaxWarning)
            out_ds = _tokens.from_array(result, like=ds_n, units="like", extra_variables=extra_variables,
                                        variable_map=variable_map, sources=found)
    if regridded and (output_grid or ("model" if task == "downscale" else "input")) == "input":
        # back on the input's grid (the inverse of the regridding above)
        out_ds = _grid.regrid(out_ds, np.sort(np.asarray(info.lat, float)), np.asarray(info.lon, float), method=regrid)
        out_ds = _grid.restore_grid(out_ds, info)
    elif info is not None:
        out_ds = _grid.restore_grid(out_ds, info)
    return out_ds


def _provenance(model: "ClimaX", task: str, *, lead: pd.Timedelta, steps: int, regrid: str | None,
                in_vars: Sequence[str], missing: Sequence[str]) -> dict[str, str]:
    """Provenance attributes of a result: model, call, inputs used and missing."""
    attrs = {
        "title": f"ClimaX {task}",
        "source": f"xclimax {__version__} ClimaX model "
        f"(embed_dim={model.config.get('embed_dim')}, depth={model.config.get('depth')}, "
        f"patch_size={model.patch_size}, img_size={tuple(model.img_size)})",
        "history": f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} xclimax.{task}("
        f"lead_time={lead}, steps={steps}, regrid={regrid})",
        "xclimax_input_variables": " ".join(in_vars),
        "xclimax_missing_inputs": " ".join(missing),
        "Conventions": "CF-1.8",
    }
    if isinstance(model.metadata, dict) and model.metadata.get("name"):
        attrs["xclimax_model"] = str(model.metadata["name"])
    return attrs


def run(
    ds: xr.Dataset,
    model: "ClimaX",
    *,
    lead: pd.Timedelta,
    steps: int,
    regrid: str | None = None,
    batch_size: int | None = None,
    device: Any = None,
    variables: Sequence[str] | None = None,
    out_variables: Sequence[str] | None = None,
    names: str = "input",
    output_grid: str | None = None,
    extra_variables: Any = None,
    variable_map: dict[str, str] | None = None,
    task: str,
) -> xr.Dataset:
    """Run ``model`` from every time of ``ds`` (``steps`` autoregressive steps of ``lead``); a labelled Dataset.

    Everything that can be checked is checked before the model runs (arguments, coordinates,
    times, dtypes, variables, statistics, memory); the values themselves are checked by
    :class:`xclimax.cf.checks.ValueChecker` at the start of each batch of work (each dask task),
    so the graph of a lazy forecast is built without computing anything.
    """
    device_spec, device = device, resolve_device(device)  # (a dask worker resolves device_spec itself)
    out_variables = _check_arguments(ds, model, lead=lead, regrid=regrid, batch_size=batch_size, names=names,
                                     output_grid=output_grid, variables=variables, out_variables=out_variables,
                                     task=task)

    # ---- grid: normalise conventions; variables (found on the input's grid: the same sources after regridding)
    ds_n, info = _grid.normalize_grid(ds)
    found = _tokens.find_variables(
        ds_n, model.variables, extra_variables=extra_variables, variable_map=variable_map, strict=False
    )
    absent = {k: v for k, v in dict(variable_map or {}).items() if v not in ds_n.data_vars}
    if absent:
        raise CFMappingError(f"variable_map maps {absent}, but {sorted(set(absent.values()))} "
                             f"are not data variables of the Dataset; it has {list(ds.data_vars)}")
    _checks.check_dtypes(ds_n, found)
    ds_n = _checks.as_float32(ds_n, found)  # float16 / integer / bool sources: computed in float32
    # ---- check the grid or regrid to the model grid (never with NaN/inf hidden by the interpolation)
    mlat, mlon = _grid.model_grid(model)  # the model's own grid (global or limited-area)
    regridded = False
    try:
        _grid.check_grid(ds_n, model)
    except GridError as err:
        if regrid is None:
            raise GridError(str(err)) from None  # the message says how to regrid
        _grid.check_coverage(ds_n, mlat, mlon, method=regrid, what=("input", "model grid"))  # never extrapolate
        logger.info("regridding inputs (%s) to the model grid %s", regrid, tuple(model.img_size))
        ds_n = _checks.guard_finite(ds_n, {k: v for k, v in found.items() if k in model.variables})
        ds_n = _grid.regrid(ds_n, mlat, mlon, method=regrid)
        regridded = True
        found = _tokens.find_variables(
            ds_n, model.variables, extra_variables=extra_variables, variable_map=variable_map, strict=False
        )

    # ---- variables: which model inputs are present, which outputs are wanted
    in_vars, out_vars, missing = _choose_variables(ds, model, found, out_variables, steps)
    feed = [(in_vars.index(v), out_vars.index(v)) for v in in_vars if v in out_vars and _is_dynamic(v)]
    residual = ([(in_vars.index(v), out_vars.index(v)) for v in out_vars if v in in_vars]
                if isinstance(model.metadata, dict) and model.metadata.get("residual") else [])

    # ---- statistics
    stats = dict(getattr(model, "stats", {}) or {})
    stats_arrays(stats, dict.fromkeys(in_vars + out_vars))  # every variable has statistics
    mean_in, std_in = stats_arrays(stats, in_vars)
    mean_out, std_out = stats_arrays(stats, out_vars)

    # ---- the token array (*batch, time, variable, lat, lon), lazy for dask input
    # numpy indexing of the resolved sources (one fused task per block on dask); to_array's xarray operations
    # for the layouts that does not cover
    arr = _tokens.stack(ds_n, in_vars, found, time_chunks=batch_size)
    if arr is None:
        arr = _tokens.to_array(ds_n, in_vars, extra_variables=extra_variables, variable_map=variable_map)
        arr = arr.transpose(..., "time", "variable", "lat", "lon")
        if arr.chunks is not None:
            arr = arr.chunk({**({"time": batch_size} if batch_size is not None else {}),
                             "variable": -1, "lat": -1, "lon": -1})
    batch_dims = list(arr.dims[:-4])
    lead_hours = lead / pd.Timedelta("1h")
    leads = pd.to_timedelta([lead * (k + 1) for k in range(steps)])

    # ---- memory: the batch size must fit (checked, or chosen) before any work
    from ..nn.memory import fit_batch_size

    model_batch = fit_batch_size(model.config, device, requested=batch_size, default=32 if device.type == "cuda" else 8,
                                 n_in=len(in_vars), n_out=len(out_vars), what=task)
    chunked = arr.chunks is not None
    # the model reaches the tasks once: in-process the caller's model (or a copy on the device, in eval mode: the
    # caller's model is never moved); with a dask.distributed Client a Future of its weights, scattered once per
    # worker, each worker keeping it resident on its own device (xclimax.distributed.workers)
    ref, payload = prepare_model(model, device_spec, client="auto" if chunked else None)
    if payload is not None and batch_size is None:
        model_batch = None  # each worker picks the batch for its own device
    # dask input without batch_size: one task per existing time chunk
    checker = _checks.ValueChecker.build(found, stats, order=in_vars)
    kwargs = dict(
        in_vars=tuple(in_vars), out_vars=tuple(out_vars), mean_in=mean_in, std_in=std_in, mean_out=mean_out,
        std_out=std_out, lead_hours=lead_hours, steps=steps, batch_size=model_batch, feed=feed, residual=residual,
        checker=checker,
    )
    if chunked:
        nb = len(batch_dims)
        # one task per chunk-aligned batch: batch dims (e.g. ensemble members) keep their chunks
        data = arr.data
        ind_in = tuple(range(nb + 4))  # batch..., time, var, lat, lon
        lead_ax, var_ax = nb + 4, nb + 5
        ind_out = tuple(range(nb + 1)) + (lead_ax, var_ax, nb + 2, nb + 3)
        out = dsa.blockwise(
            _run_blocks, ind_out,
            data, ind_in,
            *((payload, None) if payload is not None else ()),
            new_axes={lead_ax: steps, var_ax: len(out_vars)},
            concatenate=True,
            dtype=np.float32,
            meta=np.empty((0,) * (nb + 5), dtype=np.float32),
            name=f"xclimax-{task}-" + dask.base.tokenize(data.name, ref, kwargs),
            ref=ref,
            **kwargs,
        )
    else:
        values = np.asarray(arr.values, dtype=np.float32)
        n = int(np.prod(values.shape[:-3]))
        from tqdm.auto import tqdm

        with tqdm(total=n, desc=f"xclimax {task}", unit="sample", disable=not OPTIONS["progress"]) as bar:
            out = _run_blocks(values, ref=ref, progress=bar, **kwargs)

    result = _labelled(out, arr, batch_dims, out_vars, leads)
    out_ds = _in_users_terms(result, ds_n, info, names=names, regridded=regridded, output_grid=output_grid,
                             regrid=regrid, task=task, extra_variables=extra_variables, variable_map=variable_map,
                             found=found)
    out_ds.attrs.update(_provenance(model, task, lead=lead, steps=steps, regrid=regrid, in_vars=in_vars,
                                    missing=missing))
    return out_ds
