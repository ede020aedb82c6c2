"""The ``ds.climax`` Dataset accessor: a thin, stateless alias layer.

Each method is a one-line call to the public function of the same name, so
``ds.climax.forecast(model, lead_time="24h")`` is exactly
``xclimax.forecast(ds, model, lead_time="24h")``. Nothing is stored on the accessor.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping, Sequence

import xarray as xr

if TYPE_CHECKING:  # pragma: no cover
    from .model import ClimaX
    from .tokens import CheckReport


@xr.register_dataset_accessor("climax")
class ClimaxAccessor:
    """ClimaX on an xarray Dataset.

    Examples
    --------
    >>> import xclimax
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(2, variables=["2m_temperature"], constants=False)
    >>> ds.climax.variables  # computed from the latitude coordinate: no source variable
    {'lattitude': None, '2m_temperature': '2m_temperature'}
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._obj = ds

    # ------------------------------------------------------------------ inspection
    @property
    def variables(self) -> dict[str, str]:
        """The ClimaX variables found in this Dataset: ``{climax name: source variable}``.

        Computes nothing. See :func:`xclimax.tokens.mapping`.
        """
        from .tokens import mapping

        return mapping(self._obj)

    def check(self, model: ClimaX | None = None, **kwargs: Any) -> "CheckReport":
        """Call :func:`xclimax.tokens.check` on this Dataset: what is found, converted and missing."""
        from .tokens import check

        return check(self._obj, model, **kwargs)

    # ------------------------------------------------------------------ inference
    def forecast(
        self,
        model: ClimaX,
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
        """Call :func:`xclimax.forecast` on this Dataset."""
        from .inference import forecast

        return forecast(
            self._obj,
            model,
            lead_time=lead_time,
            steps=steps,
            regrid=regrid,
            batch_size=batch_size,
            device=device,
            variables=variables,
            extra_variables=extra_variables,
            variable_map=variable_map,
        )

    def downscale(
        self,
        model: ClimaX,
        *,
        regrid: str = "bilinear",
        batch_size: int | None = None,
        device: Any = None,
        variables: Sequence[str] | None = None,
        extra_variables: Any = None,
        variable_map: dict[str, str] | None = None,
    ) -> xr.Dataset:
        """Call :func:`xclimax.downscale` on this Dataset."""
        from .inference import downscale

        return downscale(
            self._obj,
            model,
            regrid=regrid,
            batch_size=batch_size,
            device=device,
            variables=variables,
            extra_variables=extra_variables,
            variable_map=variable_map,
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        truth: xr.Dataset,
        *,
        metrics: str | Iterable[str] = ("rmse", "acc", "bias"),
        climatology: xr.Dataset | None = None,
        dims: str | Iterable[Hashable] | None = None,
        flavour: str = "wb2",
    ) -> xr.Dataset:
        """Call :func:`xclimax.evaluate` on this (forecast) Dataset."""
        from .metrics import evaluate

        return evaluate(self._obj, truth, metrics=metrics, climatology=climatology, dims=dims, flavour=flavour)

    # ------------------------------------------------------------------ training
    def pretrain(
        self,
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
        """Call :func:`xclimax.pretrain` on this Dataset: returns ``(model, history)``."""
        from .train import pretrain

        return pretrain(
            self._obj,
            model,
            variables=variables,
            lead_times=lead_times,
            batch_size=batch_size,
            max_steps=max_steps,
            epochs=epochs,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            warmup_start_lr=warmup_start_lr,
            eta_min=eta_min,
            grad_clip=grad_clip,
            accumulate=accumulate,
            precision=precision,
            seed=seed,
            device=device,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
            val=val,
            val_lead_time=val_lead_time,
            val_every=val_every,
            model_kwargs=model_kwargs,
            stats=stats,
            extra_variables=extra_variables,
            variable_map=variable_map,
            block_size=block_size,
            buffer_size=buffer_size,
            prefetch=prefetch,
            callback=callback,
        )

    def finetune(
        self,
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
        """Call :func:`xclimax.finetune` on this Dataset: returns ``(model, history)``."""
        from .train import finetune

        return finetune(
            self._obj,
            model,
            inputs=inputs,
            outputs=outputs,
            lead_time=lead_time,
            task=task,
            target=target,
            region=region,
            freeze=freeze,
            max_steps=max_steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            warmup_start_lr=warmup_start_lr,
            eta_min=eta_min,
            grad_clip=grad_clip,
            accumulate=accumulate,
            precision=precision,
            seed=seed,
            device=device,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
            val=val,
            val_every=val_every,
            extra_variables=extra_variables,
            variable_map=variable_map,
            block_size=block_size,
            buffer_size=buffer_size,
            prefetch=prefetch,
            callback=callback,
        )
