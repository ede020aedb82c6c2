"""The ``ds.climax`` Dataset accessor: a thin, stateless alias layer.

Each method is a one-line call to the public function of the same name, so
``ds.climax.forecast(model, lead_time="24h")`` is exactly
``xclimax.forecast(ds, model, lead_time="24h")``. Nothing is stored on the accessor. The
methods carry the functions' own signatures (minus the Dataset) and docstrings, so
``help(ds.climax.forecast)`` and Jupyter's tab completion show the real parameters.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

import xarray as xr

__all__ = ["ClimaxAccessor"]


class _Delegate:
    """A method that calls ``xclimax.<module>.<function>(ds, ...)``, imported on first use."""

    def __init__(self, module: str, function: str | None = None) -> None:
        self.module, self.function = module, function

    def __set_name__(self, owner: type, name: str) -> None:
        self.function = self.function or name

    def target(self) -> Callable:
        return getattr(importlib.import_module(f"xclimax.{self.module}"), str(self.function))

    def __get__(self, accessor: Any, owner: type | None = None) -> Callable:
        func = self.target()
        ds = accessor._obj if accessor is not None else None

        @functools.wraps(func)
        def method(*args: Any, **kwargs: Any) -> Any:
            if ds is None:
                raise TypeError(f"call {self.function} on a Dataset: ds.climax.{self.function}(...)")
            return func(ds, *args, **kwargs)

        sig = inspect.signature(func)
        method.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # type: ignore[attr-defined]
        method.__wrapped__ = None  # type: ignore[attr-defined]  # inspect.signature must not unwrap to ``func``
        del method.__wrapped__
        return method


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
    >>> import inspect
    >>> list(inspect.signature(ds.climax.forecast).parameters)[:3]
    ['model', 'lead_time', 'steps']
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._obj = ds

    def __getstate__(self) -> dict:
        return {"_obj": self._obj}

    def __setstate__(self, state: dict) -> None:
        self._obj = state["_obj"]

    @property
    def variables(self) -> dict[str, str]:
        """The ClimaX variables found in this Dataset: ``{climax name: source variable}``.

        Computes nothing. See :func:`xclimax.tokens.mapping`.
        """
        from .cf.tokens import mapping

        return mapping(self._obj)

    check = _Delegate("cf.report")
    forecast = _Delegate("api")
    downscale = _Delegate("api")
    project = _Delegate("api")
    evaluate = _Delegate("scoring.metrics")
    pretrain = _Delegate("api")
    finetune = _Delegate("api")
