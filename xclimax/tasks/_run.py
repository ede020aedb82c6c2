"""Running a ClimaX model over xarray Datasets: the inference engine shared by the tasks.

:func:`run` maps CF variables to ClimaX tokens, normalises with the model's own
statistics, runs the network batch by batch (eagerly with a progress bar, or lazily
as one dask task per batch of initial times) and returns labelled, CF-annotated
results with ``lead_time`` and ``valid_time`` coordinates.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import uuid
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from .._utils import resolve_device
from .._version import __version__
from ..cf import grid as _grid
from ..cf import tokens as _tokens
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


class _ModelHandle:
    """A model reference that travels cheaply in dask graphs.

    In-process (threaded or synchronous schedulers) the model object is used directly.
    When pickled for a distributed worker, it carries the weights once; each worker process
    rebuilds the model a single time and keeps it in a process-wide cache keyed by ``token``.
    """

    _cache: dict[str, Any] = {}
    _lock = threading.Lock()

    def __init__(self, model: "ClimaX", device: Any, token: str | None = None) -> None:
        self.model = model
        self.device = device
        self.token = token or uuid.uuid4().hex

    def get(self) -> "ClimaX":
        return self.model

    def __dask_tokenize__(self) -> str:
        return self.token

    def __reduce__(self):
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        payload = (save(state), dict(self.model.config), dict(self.model.stats), dict(self.model.metadata))
        return (_rebuild_handle, (self.token, payload, str(self.device)))


def _rebuild_handle(token: str, payload: tuple, device: str) -> _ModelHandle:
    with _ModelHandle._lock:
        model = _ModelHandle._cache.get(token)
        if model is None:
            from safetensors.torch import load

            from ..nn.model import ClimaX

            blob, config, stats, metadata = payload
            model = ClimaX(**config)
            model.load_state_dict(load(blob))
            model.stats, model.metadata = dict(stats), dict(metadata)
            model = model.to(resolve_device(device)).eval()
            _ModelHandle._cache[token] = model
            logger.info("loaded model %s on this worker", token[:8])
    return _ModelHandle(model, device, token)


def _on_device_for_inference(model: "ClimaX", device: Any) -> "ClimaX":
    """The model on ``device`` in eval mode, leaving the caller's model where and as it was.

    The caller's object is used as is when it already is on ``device`` in eval mode; otherwise a
    copy is made (the caller's model keeps its device and train/eval mode).
    """
    import copy

    param = next(model.parameters(), None)
    here = param.device if param is not None else device
    if here == device and not model.training:
        return model
    logger.debug("inference on a copy of the model (caller's model is on %s, training=%s)", here, model.training)
    return copy.deepcopy(model).to(device).eval()


def _run_blocks(
    data: np.ndarray,
    handle: _ModelHandle,
    *,
    in_vars: Sequence[str],
    out_vars: Sequence[str],
    mean_in: np.ndarray,
    std_in: np.ndarray,
    mean_out: np.ndarray,
    std_out: np.ndarray,
    lead_hours: float,
    steps: int,
    batch_size: int,
    feed: Sequence[tuple[int, int]],
    progress: Any = None,
) -> np.ndarray:
    """Forecast one block ``[..., time, Vin, H, W]`` -> ``[..., time, steps, Vout, H, W]`` (physical units)."""
    import torch

    model = handle.get()
    device = next(model.parameters()).device
    lead_shape = data.shape[:-3]
    x_all = data.reshape((-1,) + data.shape[-3:])
    bad = np.isnan(x_all).any(axis=(0, 2, 3))
    if bad.any():
        names = [v for v, b in zip(in_vars, bad) if b]
        raise DataError(f"input contains NaN in {names}: ClimaX needs complete fields; fill or drop them first")
    out = np.empty((x_all.shape[0], steps, len(out_vars)) + x_all.shape[-2:], dtype=np.float32)
    m_in = torch.as_tensor(mean_in, dtype=torch.float32, device=device)[:, None, None]
    s_in = torch.as_tensor(std_in, dtype=torch.float32, device=device)[:, None, None]
    m_out = torch.as_tensor(mean_out, dtype=torch.float32, device=device)[:, None, None]
    s_out = torch.as_tensor(std_out, dtype=torch.float32, device=device)[:, None, None]
    feed_in = [i for i, _ in feed]
    feed_out = [o for _, o in feed]
    autocast = OPTIONS["autocast"] if device.type == "cuda" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast) if autocast else None
    with torch.inference_mode():
        for start in range(0, x_all.shape[0], batch_size):
            x = torch.as_tensor(x_all[start : start + batch_size], dtype=torch.float32).to(device)
            x = (x - m_in) / s_in
            lead = torch.full((x.shape[0],), float(lead_hours), device=device)
            for k in range(steps):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    y = model(x, lead, in_vars, out_vars).float()
                out[start : start + x.shape[0], k] = (y * s_out + m_out).cpu().numpy()
                if k + 1 < steps:
                    x = x.clone()
                    x[:, feed_in] = y[:, feed_out]
            if progress is not None:
                progress.update(x.shape[0])
    return out.reshape(lead_shape + out.shape[1:])


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
    extra_variables: Any = None,
    variable_map: dict[str, str] | None = None,
    task: str,
) -> xr.Dataset:
    """Run ``model`` from every time of ``ds`` (``steps`` autoregressive steps of ``lead``); a labelled Dataset."""
    device = resolve_device(device)
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset; got {type(ds).__name__}")
    if regrid not in (None, "bilinear", "conservative"):
        raise ValueError(f"regrid must be None, 'bilinear' or 'conservative'; got {regrid!r}")

    # ---- grid: normalise conventions, then check or regrid to the model grid
    ds_n, info = _grid.normalize_grid(ds)
    mlat, mlon = _grid.model_grid(model.img_size)
    try:
        _grid.check_grid(ds_n, model.img_size)
    except GridError as err:
        if regrid is None:
            raise GridError(f"{err} Pass regrid='bilinear' or regrid='conservative' to regrid inputs to the model grid.") from None
        logger.info("regridding inputs (%s) to the model grid %s", regrid, tuple(model.img_size))
        ds_n = _grid.regrid(ds_n, mlat, mlon, method=regrid)

    # ---- variables: which model inputs are present, which outputs are wanted
    found = _tokens.find_variables(
        ds_n, model.variables, extra_variables=extra_variables, variable_map=variable_map, strict=False
    )
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
            f"{len(missing)} of the model's variables are missing from the input and will not be used: {missing}",
            XClimaxWarning,
            stacklevel=3,
        )
    if variables is not None:
        out_vars = [canonical_name(v) for v in variables]
        unknown = [v for v in out_vars if v not in model.variables]
        if unknown:
            raise CFMappingError(f"requested output variables {unknown} are not among the model's variables {list(model.variables)}")
    else:
        trained = model.metadata.get("out_variables") if isinstance(model.metadata, dict) else None
        out_vars = list(trained) if trained else [v for v in in_vars if _is_dynamic(v)]
    if steps > 1:
        needed = [v for v in in_vars if _is_dynamic(v) and v not in out_vars]
        if needed:
            raise CFMappingError(
                f"steps={steps} rolls the forecast out autoregressively, so the outputs must cover the model's "
                f"time-varying inputs; not predicted: {needed} (outputs: {out_vars})"
            )
    feed = [(in_vars.index(v), out_vars.index(v)) for v in in_vars if v in out_vars and _is_dynamic(v)]

    # ---- statistics
    stats = dict(getattr(model, "stats", {}) or {})
    no_stats = [v for v in dict.fromkeys(in_vars + out_vars) if v not in stats]
    if no_stats:
        raise DataError(
            f"the model has no normalisation statistics for {no_stats}; compute them with "
            f"xclimax.compute_stats(ds) and set model.stats = xclimax.normalize.stats_to_dict(stats)"
        )
    mean_in = np.array([stats[v][0] for v in in_vars], dtype=np.float32)
    std_in = np.array([stats[v][1] for v in in_vars], dtype=np.float32)
    mean_out = np.array([stats[v][0] for v in out_vars], dtype=np.float32)
    std_out = np.array([stats[v][1] for v in out_vars], dtype=np.float32)

    # ---- the token array (*batch, time, variable, lat, lon), lazy for dask input
    arr = _tokens.to_array(ds_n, in_vars, extra_variables=extra_variables, variable_map=variable_map)
    arr = arr.transpose(..., "time", "variable", "lat", "lon")
    batch_dims = list(arr.dims[:-4])
    lead_hours = lead / pd.Timedelta("1h")
    leads = pd.to_timedelta([lead * (k + 1) for k in range(steps)])

    model = _on_device_for_inference(model, device)
    handle = _ModelHandle(model, device)
    chunked = arr.chunks is not None
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    # dask input without batch_size: one task per existing time chunk
    model_batch = int(batch_size or (32 if device.type == "cuda" else 8))
    kwargs = dict(
        in_vars=tuple(in_vars), out_vars=tuple(out_vars), mean_in=mean_in, std_in=std_in, mean_out=mean_out,
        std_out=std_out, lead_hours=lead_hours, steps=steps, batch_size=model_batch, feed=feed,
    )
    if chunked:
        nb = len(batch_dims)
        time_chunks = batch_size if batch_size is not None else arr.data.chunks[nb]
        data = arr.data.rechunk({**{i: -1 for i in range(nb)}, nb: time_chunks, nb + 1: -1, nb + 2: -1, nb + 3: -1})
        ind_in = tuple(range(nb + 4))  # batch..., time, var, lat, lon
        lead_ax, var_ax = nb + 4, nb + 5
        ind_out = tuple(range(nb + 1)) + (lead_ax, var_ax, nb + 2, nb + 3)
        out = dsa.blockwise(
            _run_blocks, ind_out,
            data, ind_in,
            dask.delayed(handle, pure=True, traverse=False), None,
            new_axes={lead_ax: steps, var_ax: len(out_vars)},
            concatenate=True,
            dtype=np.float32,
            meta=np.empty((0,) * (nb + 5), dtype=np.float32),
            name=f"xclimax-{task}-" + handle.token[:8],
            **kwargs,
        )
    else:
        values = np.asarray(arr.values, dtype=np.float32)
        n = int(np.prod(values.shape[:-3]))
        from tqdm.auto import tqdm

        with tqdm(total=n, desc=f"xclimax {task}", unit="sample", disable=not OPTIONS["progress"]) as bar:
            out = _run_blocks(values, handle, progress=bar, **kwargs)

    dims = (*batch_dims, "time", "lead_time", "variable", "lat", "lon")
    coords = {d: arr[d] for d in (*batch_dims, "time", "lat", "lon") if d in arr.coords}
    result = xr.DataArray(out, dims=dims, coords=coords)
    result = result.assign_coords(variable=list(out_vars), lead_time=("lead_time", leads.values))
    result = result.assign_coords(valid_time=result["time"] + result["lead_time"])
    result["lead_time"].attrs.update(long_name="lead time", standard_name="forecast_period")
    result["valid_time"].attrs.update(long_name="valid time", standard_name="time")
    result["time"].attrs.update(long_name="initial time", standard_name="forecast_reference_time")

    out_ds = _tokens.from_array(result, like=ds_n)
    if info is not None:
        out_ds = _grid.restore_grid(out_ds, info)
    out_ds.attrs.update(
        {
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
    )
    if isinstance(model.metadata, dict) and model.metadata.get("name"):
        out_ds.attrs["xclimax_model"] = str(model.metadata["name"])
    return out_ds
