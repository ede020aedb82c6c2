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

from .exceptions import DataError
from .tasks import get_task
from .tasks.forecast import ForecastTask
from .training.config import TrainConfig, build_config, with_config_signature

if TYPE_CHECKING:  # pragma: no cover
    from .nn.model import ClimaX

__all__ = ["forecast", "downscale", "pretrain", "finetune"]

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _as_model(model: Any) -> "ClimaX":
    """The model argument: a ClimaX, or a path to a checkpoint (loaded with :func:`xclimax.load_checkpoint`)."""
    from .nn.model import ClimaX

    if isinstance(model, ClimaX):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .nn.checkpoint import load_checkpoint

        return load_checkpoint(model)
    raise DataError(f"model must be an xclimax.ClimaX or the path of a checkpoint; got {type(model).__name__}")


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
) -> xr.Dataset:
    """Forecast with a ClimaX model from every initial time of ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        Initial conditions with a ``time`` dimension and CF-annotated variables (found by
        ``standard_name``, units and vertical coordinate; see :func:`xclimax.tokens.find_variables`).
        Extra dimensions such as ``member`` are kept. Latitude may be in either order and
        longitude in -180..180 or 0..360; results come back in the same conventions.
    model : xclimax.ClimaX
        The network, carrying its normalisation statistics in ``model.stats``.
    lead_time : str or timedelta
        Lead time of one model step, e.g. ``"24h"``.
    steps : int, default 1
        Number of autoregressive steps; the output has lead times ``lead_time * (1..steps)``.
        Needs a model whose outputs cover its time-varying inputs.
    regrid : {None, "bilinear", "conservative"}
        Regrid inputs to the model grid when ``ds`` is on another grid. ``None`` raises
        :class:`~xclimax.GridError` on a grid mismatch.
    batch_size : int, optional
        Initial times per model call, and per dask task for dask input. Default: 8 on CPU and 32 on
        GPU per model call; for dask input, one task per existing time chunk.
    device : str or torch.device, optional
        Default: the ``device`` option (``"auto"``: CUDA when available).
    variables : sequence of str, optional
        Output variables (ClimaX names). Default: ``model.metadata["out_variables"]`` if set,
        otherwise the model's time-varying variables found in ``ds``.
    extra_variables, variable_map
        Passed to :func:`xclimax.tokens.find_variables` to map variables outside the 48 or by name.

    Returns
    -------
    xarray.Dataset
        Dimensions ``(*extra, time, lead_time, [level], lat, lon)`` with a ``valid_time``
        coordinate; CF attributes on every variable; provenance in ``attrs``. Lazy (dask-backed)
        when ``ds`` is dask-backed: one task per batch of initial times.

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
                                        extra_variables=extra_variables, variable_map=variable_map)


def downscale(
    ds: xr.Dataset,
    model: "ClimaX",
    *,
    regrid: str = "bilinear",
    batch_size: int | None = None,
    device: Any = None,
    variables: Sequence[str] | None = None,
    extra_variables: Any = None,
    variable_map: dict[str, str] | None = None,
) -> xr.Dataset:
    """Downscale coarse fields to the model's (finer) grid, as ClimaX's downscaling set-up does.

    The coarse input is interpolated to the model grid (bilinear by default) and the network
    is run with lead time 0, predicting the high-resolution fields directly.

    Parameters
    ----------
    ds : xarray.Dataset
        Coarse fields with a ``time`` dimension.
    model : xclimax.ClimaX
        A model fine-tuned for downscaling (``task="downscale"``) on the target grid.
    regrid : {"bilinear", "conservative"}
        How the coarse input is brought to the model grid.
    batch_size, device, variables, extra_variables, variable_map
        As for :func:`forecast`.

    Returns
    -------
    xarray.Dataset
        Fields on the model grid with dimensions ``(*extra, time, [level], lat, lon)``.

    Examples
    --------
    >>> import xclimax
    >>> from xclimax.testing import synthetic_dataset
    >>> coarse = synthetic_dataset(2, variables=["2m_temperature"], grid=(8, 16))
    >>> model = xclimax.ClimaX(["2m_temperature"], img_size=(16, 32), embed_dim=32, depth=1, num_heads=4)
    >>> model.stats = {"2m_temperature": (285.0, 10.0)}
    >>> xclimax.downscale(coarse, model)["2m_temperature"].shape
    (2, 16, 32)
    """
    return get_task("downscale").predict(ds, _as_model(model), regrid=regrid, batch_size=batch_size, device=device,
                                         variables=variables, extra_variables=extra_variables,
                                         variable_map=variable_map)


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
    config : TrainConfig, optional
        The training recipe; keyword arguments named like its fields override it.
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
        :class:`~xclimax.loading.BatchLoader` settings.
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
        task (e.g. ``history`` for "projection") are passed on to it.
    target : Dataset, optional
        Target data for tasks whose targets are not the inputs' future; must be None for "forecast".
    region : str or dict, optional
        Train (and validate) only on the patches inside a lat/lon box (see :func:`region_mask`
        and :data:`REGIONS`); the model still sees the whole globe as input.
    freeze : str or sequence of str, optional
        ``"encoder"`` (everything but the head), ``"embeddings"``, ``"blocks"``, ``"head"`` or a
        list of parameter-name prefixes. New variables' embeddings stay trainable.
    config : TrainConfig, optional
        The training recipe (default: the task's recipe); keyword arguments named like its fields override it.
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
    the_task = get_task(task)
    train_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONFIG_FIELDS}
    cfg = build_config(config, the_task.recipe, "finetune", **train_kwargs)
    given = dict(inputs=inputs, outputs=outputs, target=target, region=region, freeze=freeze, val=val,
                 extra_variables=extra_variables, variable_map=variable_map)
    if task == "forecast" or "lead_time" in inspect.signature(the_task.finetune).parameters:
        given["lead_time"] = lead_time
    return the_task.finetune(ds, model, cfg, **{k: v for k, v in given.items() if v is not None or k == "lead_time"},
                             **kwargs)
