"""The public functions: thin layers over the tasks (:mod:`xclimax.tasks`).

``forecast``, ``downscale``, ``pretrain`` and ``finetune`` validate their arguments, build the
training recipe (:class:`~xclimax.training.TrainConfig`) and call the task registered under
their name. The ``ds.climax`` accessor delegates to these functions.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import xarray as xr

from .exceptions import XClimaxError
from .tasks import get_task
from .tasks.forecast import ForecastTask
from .training.config import TrainConfig, build_config, with_config_signature

if TYPE_CHECKING:  # pragma: no cover
    from .nn.model import ClimaX

__all__ = ["forecast", "forecast_to_zarr", "downscale", "project", "pretrain", "finetune"]

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _as_model(model: Any) -> "ClimaX":
    """The model argument: a ClimaX, or a path to a checkpoint (loaded with :func:`xclimax.load_checkpoint`)."""
    from .nn.model import ClimaX

    if isinstance(model, ClimaX):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .nn.checkpoint import load_checkpoint

        return load_checkpoint(model)
    raise XClimaxError(f"model must be an xclimax.ClimaX or the path of a checkpoint; got {type(model).__name__}")


def forecast(
    ds: xr.Dataset,
    model: "ClimaX",
    *,
    lead_time: Any,
    steps: int = 1,
    regrid: str | None = None,
    batch_size: int | None = None,
    device: Any = None,
    variables: Sequence[str] | None = None,
    extra_variables: Any = None,
    variable_map: dict[str, str] | None = None,
    out_variables: Sequence[str] | None = None,
    names: str = "input",
    output_grid: str = "input",
) -> xr.Dataset:
    """Forecast with a ClimaX model from every initial time of ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        Initial conditions with a ``time`` dimension and CF-annotated variables (found by
        ``standard_name``, units and vertical coordinate; see :func:`xclimax.tokens.find_variables`).
        Extra dimensions such as ``member`` are kept. Latitude may be in either order and
        longitude in -180..180 or 0..360; results come back in the same conventions.
    model : xclimax.ClimaX or path
        The network, carrying its normalisation statistics in ``model.stats``, or the path of a
        checkpoint (read with :func:`xclimax.load_checkpoint`).
    lead_time : str or timedelta
        Lead time of one model step, e.g. ``"24h"``. A lead the model was not trained for
        (``model.metadata["lead_time"]`` / ``["lead_times"]``) gives an :class:`~xclimax.XClimaxWarning`.
    steps : int, default 1
        Number of autoregressive steps; the output has lead times ``lead_time * (1..steps)``.
        Needs a model whose outputs cover its time-varying inputs.
    regrid : {None, "bilinear", "conservative"}
        Regrid inputs to the model grid when ``ds`` is on another grid (the forecast is regridded
        back to ``ds``'s grid unless ``output_grid="model"``). ``None`` raises
        :class:`~xclimax.GridError` on a grid mismatch.
    batch_size : int, optional
        Initial times per model call, and per dask task for dask input. Default: as many as fit in
        memory, at most 8 on CPU and 32 on GPU per model call; for dask input, one task per existing
        time chunk. A batch whose estimated peak memory does not fit raises
        :class:`~xclimax.ResourceError` saying what would.
    device : str or torch.device, optional
        Default: the ``device`` option (``"auto"``: CUDA when available).
    variables : sequence of str, optional
        Older name of ``out_variables``.
    extra_variables, variable_map
        Passed to :func:`xclimax.tokens.find_variables` to map variables outside the 48 or by name.
    out_variables : sequence of str, optional
        Variables to forecast: ClimaX names or data variables of ``ds``. Default: the variables of
        ``ds`` that the model predicts (``model.metadata["out_variables"]``). Variables that are
        not in ``ds`` are forecast from the others, with a warning naming them.
    names : {"input", "climax"}
        ``"input"`` (default): the forecast uses ``ds``'s variable names, units and vertical
        coordinate (ERA5 ``z``/``t`` stay ``z``/``t``, CMIP ``zg`` stays geopotential height in m
        on ``plev`` in Pa), so ``xclimax.evaluate(fc, ds)`` needs no renaming. ``"climax"``:
        ClimaX base names in the canonical units on ``level`` in hPa.
    output_grid : {"input", "model"}
        With ``regrid=``: the forecast on ``ds``'s grid (default) or on the model's grid.

    Returns
    -------
    xarray.Dataset
        Dimensions ``(*extra, time, lead_time, [level], lat, lon)`` with a ``valid_time``
        coordinate; CF attributes on every variable; provenance in ``attrs``. Lazy (dask-backed)
        when ``ds`` is dask-backed: one task per batch of initial times.

    Raises
    ------
    DataError, CFMappingError, GridError, ResourceError, XClimaxError
        Before any model work: bad arguments, no usable variables, implausible values (e.g.
        degC labelled K: checked per batch of initial times, before the model sees it),
        non-finite values, grids, memory.

    Examples
    --------
    >>> import xclimax
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["temperature", "2m_temperature"])
    >>> model = xclimax.ClimaX(embed_dim=32, depth=1, num_heads=4, decoder_depth=1)
    >>> model.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(ds))
    >>> fc = xclimax.forecast(ds, model, lead_time="6h", steps=2)
    >>> fc["2m_temperature"].dims
    ('time', 'lead_time', 'lat', 'lon')
    """
    return get_task("forecast").predict(ds, _as_model(model), lead_time=lead_time, steps=steps, regrid=regrid,
                                        batch_size=batch_size, device=device, variables=variables,
                                        extra_variables=extra_variables, variable_map=variable_map,
                                        out_variables=out_variables, names=names, output_grid=output_grid)


def forecast_to_zarr(
    ds: xr.Dataset,
    model: "ClimaX",
    store: Any,
    *,
    lead_time: Any,
    steps: int = 1,
    region_size: int | None = None,
    resume: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> xr.Dataset:
    """Forecast into a zarr store region by region, with bounded memory, resuming an interrupted write.

    The forecast is built lazily (:func:`forecast`; an in-memory ``ds`` is first chunked along
    ``time``) and written in regions of whole zarr chunks along ``time``, one region after
    another, each computed in parallel on the active dask scheduler or ``distributed.Client``:
    every task writes its chunk straight to the store, so memory stays bounded by a few chunks
    per worker however long the forecast. Each finished region is recorded in the store (a small
    marker array under ``_xclimax/``, invisible to ``xr.open_zarr``); if the write is interrupted
    (a crash, a pre-empted job, bad input in a later region), calling again with ``resume=True``
    writes only the regions not yet written. The result equals an uninterrupted write.

    Parameters
    ----------
    ds : xarray.Dataset
        Initial conditions, as for :func:`forecast` (dask-backed for large data).
    model : xclimax.ClimaX or path
    store : str, path or zarr store
        Where to write: a local path, an fsspec URL (with ``storage_options``) or a zarr store.
    lead_time, steps
        As for :func:`forecast`.
    region_size : int, optional
        Initial times per region, rounded up to whole chunks. Default: two chunks per thread of
        the cluster (or per CPU core in-process).
    resume : bool
        Continue a write into ``store`` that was interrupted: regions already written are skipped.
        The store must hold the same forecast (same model, lead time, steps, coordinates); if not,
        :class:`~xclimax.DataError` says what differs. ``False`` replaces ``store``.
    storage_options : dict, optional
        fsspec options of a URL ``store``.
    **kwargs
        Other arguments of :func:`forecast` (``regrid``, ``batch_size``, ``device``, ``out_variables``, ...).

    Returns
    -------
    xarray.Dataset
        The written forecast, opened lazily from ``store``.

    Examples
    --------
    >>> import tempfile, xclimax
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(4, variables=["2m_temperature"], grid=(8, 16), constants=False).chunk(time=2)
    >>> model = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    >>> model.stats = {"2m_temperature": (285.0, 10.0)}
    >>> fc = xclimax.forecast_to_zarr(ds, model, tempfile.mkdtemp() + "/fc.zarr", lead_time="6h")
    >>> fc["2m_temperature"].sizes["time"]
    4
    """
    import hashlib

    from .cf.time import as_timedelta, time_dim
    from .distributed.workers import model_key
    from .distributed.zarr import write_regions

    model = _as_model(model)
    if not any(v.chunks is not None for v in ds.data_vars.values()):  # in memory: tasks of a few initial times
        ds = ds.chunk({time_dim(ds): kwargs.get("batch_size") or 8})
    fc = forecast(ds, model, lead_time=lead_time, steps=steps, **kwargs)
    facts = {"model": model_key(model), "lead_time": str(as_timedelta(lead_time)), "steps": int(steps),
             "options": hashlib.sha256(repr(sorted(kwargs.items())).encode()).hexdigest()}
    write_regions(fc, store, dim="time", region_size=region_size, resume=resume, fingerprint=facts,
                  storage_options=storage_options, desc="xclimax forecast_to_zarr")
    return xr.open_zarr(store, storage_options=storage_options)


def downscale(
    ds: xr.Dataset,
    model: "ClimaX",
    *,
    target_grid: xr.Dataset | xr.DataArray | None = None,
    batch_size: int | None = None,
    device: Any = None,
    static: xr.Dataset | None = None,
    regrid: str = "bilinear",
    target_regrid: str = "bilinear",
    allow_other_tasks: bool = False,
    variables: Sequence[str] | None = None,
    extra_variables: Any = None,
    variable_map: dict[str, str] | None = None,
    out_variables: Sequence[str] | None = None,
    names: str = "input",
    output_grid: str = "model",
) -> xr.Dataset:
    """Downscale coarse fields to the model's (finer) grid, as ClimaX's downscaling set-up does.

    The coarse input is interpolated onto the model's grid (bilinear by default; never
    extrapolated) and the network runs with lead time 0, predicting the fine fields. The model
    must have been fine-tuned for downscaling (``xclimax.finetune(coarse, model,
    task="downscale", target=fine)``): any other model is refused, since run this way it gives
    fields that are typically worse than the interpolation itself.

    Parameters
    ----------
    ds : xarray.Dataset
        Coarse fields with a time dimension, in any CF calendar; numpy- or dask-backed. Their
        cells must cover the model's grid (a :class:`~xclimax.GridError` names both domains
        otherwise).
    model : xclimax.ClimaX or path
        A model fine-tuned for downscaling (``model.metadata["task"] == "downscale"``), or the path of
        its checkpoint. Its grid (``model.metadata["grid"]``) is the fine grid.
    target_grid : xarray.Dataset or xarray.DataArray, optional
        Deliver the result on this object's lat/lon grid (regridded from the model grid with
        ``target_regrid``; it must lie within the model's domain) and in its conventions.
        Default: the model's grid, in ``ds``'s conventions (latitude order, longitude range).
    batch_size : int, optional
        Times per model call (and per dask task). Default: as many as fit in memory.
    device : str or torch.device, optional
        Default: the ``device`` option.
    static : xarray.Dataset, optional
        The fine-resolution inputs the model was trained with (``model.metadata["fine_inputs"]``,
        e.g. orography and land-sea mask), on the model's grid.
    regrid : {"bilinear", "conservative"}
        How the coarse input is interpolated onto the model grid (use the method the model was
        trained with, ``model.metadata["regrid"]``).
    target_regrid : {"bilinear", "conservative"}
        How the result is regridded onto ``target_grid``.
    allow_other_tasks : bool, default False
        Run a model that was not trained for downscaling anyway, with an
        :class:`~xclimax.XClimaxWarning` saying why it is a bad idea.
    variables, extra_variables, variable_map, out_variables, names
        As for :func:`forecast`.
    output_grid : {"model", "input"}
        ``"input"``: back on ``ds``'s coarse grid (the same as ``target_grid=ds``).

    Returns
    -------
    xarray.Dataset
        The fine fields with dimensions ``(*extra, time, [level], lat, lon)``, in ``ds``'s calendar
        and variable names; CF attributes on every variable. Lazy (dask-backed) when ``ds`` is.

    Raises
    ------
    CheckpointError
        The model was not trained for downscaling (unless ``allow_other_tasks=True``).
    GridError
        ``ds`` does not cover the model's grid, or ``target_grid`` lies outside it.
    DataError, CFMappingError
        Bad arguments, missing fine-resolution inputs, implausible values.

    Examples
    --------
    >>> import xclimax
    >>> from xclimax.testing import synthetic_dataset
    >>> fine = synthetic_dataset(8, variables=["2m_temperature"], grid=(8, 16), constants=False)
    >>> coarse = fine.coarsen(lat=2, lon=2).mean()
    >>> base = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    >>> model, _ = xclimax.finetune(coarse, base, task="downscale", target=fine, batch_size=4, max_steps=2)
    >>> down = xclimax.downscale(coarse, model)
    >>> down["2m_temperature"].shape, model.metadata["task"]
    ((8, 8, 16), 'downscale')
    """
    return get_task("downscale").predict(ds, _as_model(model), target_grid=target_grid, batch_size=batch_size,
                                         device=device, static=static, regrid=regrid, target_regrid=target_regrid,
                                         allow_other_tasks=allow_other_tasks, variables=variables,
                                         extra_variables=extra_variables, variable_map=variable_map,
                                         out_variables=out_variables, names=names, output_grid=output_grid)


def project(
    ds: xr.Dataset,
    model: "ClimaX",
    *,
    outputs: Sequence[str] | None = None,
    target_grid: xr.Dataset | xr.DataArray | None = None,
    regrid: str | None = None,
    regrid_method: str = "bilinear",
    batch_size: int | None = None,
    device: Any = None,
    extra_variables: Any = None,
    variable_map: dict[str, str] | None = None,
) -> xr.Dataset:
    """Project the climate response to forcing pathways with a ClimaX ClimateBench model.

    For every year with ``model.history`` years of forcing (that year and the ones before it)
    the model predicts the response maps of that year, as ClimaX's ClimateBench set-up
    (``finetune(task="projection")`` makes such a model).

    Parameters
    ----------
    ds : xarray.Dataset
        Yearly forcings (one step per consecutive calendar year, any CF calendar: datetime64 or
        cftime) with the model's input variables, e.g. ``CO2`` and ``CH4`` (global scalars) and
        ``SO2`` and ``BC`` (emission maps), found by name or CF ``standard_name``. Batch
        dimensions (``scenario``, ``member``) are kept.
    model : ClimaXClimateBench or path
        A model fine-tuned for projection, or the path of its checkpoint.
    outputs : sequence of str, optional
        Responses to return (default: all the model predicts).
    target_grid : Dataset or DataArray, optional
        Regrid the result to the latitudes/longitudes of this object (``regrid_method``).
        Default: the model's grid.
    regrid : {None, "bilinear", "conservative"}
        Regrid the forcings to the model grid when ``ds`` is on another grid (``"conservative"``
        keeps emission totals); None raises :class:`~xclimax.GridError` on a mismatch.
    regrid_method : {"bilinear", "conservative"}
        How the result is put on ``target_grid``.
    batch_size : int, optional
        Years per model call (default 8 on CPU, 32 on GPU).
    device : str or torch.device, optional
        Default: the ``device`` option.
    extra_variables, variable_map
        As in :func:`xclimax.tokens.find_variables`.

    Returns
    -------
    xarray.Dataset
        ``(*batch, time, lat, lon)`` per output, on ``ds``'s time axis (same calendar); the first
        ``history - 1`` years are NaN (not enough forcing history). CF attributes from the
        training data. Lazy (dask-backed) when ``ds`` is dask-backed.

    Raises
    ------
    CheckpointError
        The model was not trained for projection.
    CFMappingError, DataError, GridError
        Missing forcings, non-yearly or too short time axes, grid mismatch.

    Examples
    --------
    >>> import xclimax
    >>> ds = xclimax.tutorial.open_climatebench(["ssp126", "ssp585"], grid=(8, 16), calendar="noleap")
    >>> base = xclimax.ClimaX(["CO2"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    >>> model, _ = xclimax.finetune(ds, base, task="projection", outputs=["tas"], history=3, max_steps=2)
    >>> out = xclimax.project(ds.sel(scenario="ssp126"), model)
    >>> out["tas"].dims, out.time.dt.calendar, bool(out["tas"].isel(time=2).notnull().all())
    (('time', 'lat', 'lon'), 'noleap', True)
    """
    return get_task("projection").predict(ds, _as_model(model), outputs=outputs, target_grid=target_grid,
                                          regrid=regrid, regrid_method=regrid_method, batch_size=batch_size,
                                          device=device, extra_variables=extra_variables, variable_map=variable_map)


@with_config_signature()
def pretrain(
    ds: Any,
    model: ClimaX | None = None,
    *,
    variables: Sequence[str] | None = None,
    lead_times: Any = ("6h", "168h"),
    val: Any = None,
    val_lead_time: Any = None,
    model_kwargs: Mapping[str, Any] | None = None,
    stats: str = "pooled",
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
    config: TrainConfig | None = None,
    **train_kwargs: Any,
) -> tuple[ClimaX, xr.Dataset]:
    """Pre-train ClimaX: from the state at ``t`` predict every variable at ``t + lead``.

    Each input time gets one lead drawn uniformly (per epoch) from the multiples of the data's
    time step in the inclusive range ``lead_times``; the loss is ClimaX's latitude-weighted MSE
    in normalised space, ``mean(w * (pred - truth)**2)`` with ``w = cos(lat) / mean(cos(lat))``.

    Parameters
    ----------
    ds : Dataset, list or dict of Datasets
        CF-annotated data on a ClimaX grid (lat ascending or not, any lon convention), numpy- or
        dask-backed; or canonical DataArrays ``(*batch, time, variable, lat, lon)``; or the path
        or fsspec URL of a zarr store (opened lazily; with ``client=`` each rank reads it). Several
        sources (e.g. CMIP6 models) may hold different variables: each batch comes from one
        source and the model covers the union of their variables.
    model : ClimaX, optional
        Model to continue training (a copy is trained; variables it lacks get fresh weights).
        Default: a new model with :data:`DEFAULT_MODEL` updated by ``model_kwargs``.
    variables : sequence of str, optional
        ClimaX names to use (default: all found in each source).
    lead_times : (lo, hi) or one lead
        Inclusive lead-time range (default 6 h to 168 h).
    config : TrainConfig, optional
        The training recipe; keyword arguments named like its fields override it.
    val : slice, float, Dataset or None
        Validation data: a time slice or a final fraction of ``ds`` (excluded from training and
        from the statistics), or separate data.
    val_lead_time : optional
        Lead time of the validation pairs (default: the longest of ``lead_times``).
    model_kwargs : dict, optional
        :class:`~xclimax.ClimaX` arguments of a new model.
    stats : {"pooled", "per_source"}
        Normalise all sources with pooled statistics, or each with its own. ``model.stats``
        receives the pooled statistics.
    extra_variables, variable_map
        As in :func:`xclimax.tokens.find_variables`.
    {train_settings}
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
    cfg = build_config(config, None, "pretrain", **train_kwargs)
    return ForecastTask().pretrain(ds, model, cfg, variables=variables, lead_times=lead_times, val=val,
                                   val_lead_time=val_lead_time, model_kwargs=model_kwargs, stats=stats,
                                   extra_variables=extra_variables, variable_map=variable_map)


@with_config_signature(ForecastTask.recipe)
def finetune(
    ds: Any,
    model: ClimaX,
    *,
    task: str = "forecast",
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    lead_time: Any = "72h",
    target: Any = None,
    region: str | Mapping[str, Any] | None = None,
    freeze: str | Sequence[str] | None = None,
    val: Any = None,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
    config: TrainConfig | None = None,
    **kwargs: Any,
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
    task : {"forecast", "downscale", "projection"}
        The task, looked up in :data:`xclimax.tasks.TASKS`; other keyword arguments specific to a
        task (e.g. ``history`` for "projection") are passed on to it. ``"projection"``
        (ClimateBench): ``inputs`` are forcings (default CO2, SO2, CH4, BC), ``outputs`` responses
        (default tas, diurnal_temperature_range, pr, pr90), ``history=10`` yearly steps aggregated
        by attention, the encoder frozen except its LayerNorms (``freeze_encoder=True``), a linear
        head; ``val`` is the fraction of windows held out (default 0.1) and the best validation
        weights are kept (``restore_best=True``). Returns a
        :class:`~xclimax.nn.climatebench.ClimaXClimateBench` for :func:`project`.
        ``"downscale"``: ``ds`` is the coarse input and ``target`` the fine fields; pairs are their
        common times (in their calendar); the coarse input is interpolated onto the target's grid
        (``regrid="bilinear"`` or ``"conservative"``), which must be the model's size (its grid
        becomes the model's), and the model runs at lead 0. ``inputs`` (default: the coarse
        variables plus the target's time-independent fields such as orography and land-sea mask)
        may include variables that are not ``outputs`` (default: the target's time-varying variables
        that are also coarse inputs). ``residual=True`` (default) predicts the correction to the
        interpolated input; ``val`` is a time slice or a final fraction. Use the model with
        :func:`downscale`.
    target : Dataset, optional
        Target data for tasks whose targets are not the inputs' future; must be None for "forecast".
    region : str or dict, optional
        Train (and validate) only on the patches inside a lat/lon box (see :func:`region_mask`
        and :data:`REGIONS`); the model still sees the whole globe as input.
    freeze : str or sequence of str, optional
        ``"encoder"`` (everything but the head), ``"embeddings"``, ``"blocks"``, ``"head"`` or a
        list of parameter-name prefixes. New variables' embeddings stay trainable.
    config : TrainConfig, optional
        The training recipe (default: the task's recipe, e.g. betas (0.9, 0.99) for "forecast");
        keyword arguments named like its fields override it.
    val, extra_variables, variable_map
        As in :func:`pretrain`.
    {train_settings}
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
    the_task = get_task(task)
    train_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONFIG_FIELDS}
    cfg = build_config(config, the_task.recipe, "finetune", **train_kwargs)
    given = dict(inputs=inputs, outputs=outputs, target=target, region=region, freeze=freeze, val=val,
                 extra_variables=extra_variables, variable_map=variable_map)
    if task == "forecast" or "lead_time" in inspect.signature(the_task.finetune).parameters:
        given["lead_time"] = lead_time
    return the_task.finetune(ds, _as_model(model), cfg,
                             **{k: v for k, v in given.items() if v is not None or k == "lead_time"}, **kwargs)
