"""The ``ds.climax`` Dataset accessor: a thin, stateless alias layer.

Each method is a one-line call to the public function of the same name, so
``ds.climax.forecast(model, lead_time="24h")`` is exactly
``xclimax.forecast(ds, model, lead_time="24h")``. Nothing is stored on the accessor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

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
    >>> ds = synthetic_dataset(2, variables=["2m_temperature"])
    >>> ds.climax.variables
    {'2m_temperature': '2m_temperature'}
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

    def check(self, model: "ClimaX | None" = None, **kwargs: Any) -> "CheckReport":
        """Call :func:`xclimax.tokens.check` on this Dataset: what is found, converted and missing."""
        from .tokens import check

        return check(self._obj, model, **kwargs)

    # ------------------------------------------------------------------ inference
    def forecast(
        self,
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
        """Call :func:`xclimax.forecast` on this Dataset."""
        from .inference import forecast

        return forecast(
            self._obj, model, lead_time=lead_time, steps=steps, regrid=regrid, batch_size=batch_size,
            device=device, variables=variables, extra_variables=extra_variables, variable_map=variable_map,
        )

    def downscale(
        self,
        model: "ClimaX",
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
            self._obj, model, regrid=regrid, batch_size=batch_size, device=device, variables=variables,
            extra_variables=extra_variables, variable_map=variable_map,
        )
