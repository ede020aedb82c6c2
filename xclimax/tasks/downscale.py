"""The downscaling task: coarse fields interpolated onto the model's fine grid, ClimaX at lead 0."""

from __future__ import annotations

from typing import Any

import pandas as pd
import xarray as xr

from ..exceptions import DataError
from ._run import run
from .base import Task

__all__ = ["DownscaleTask"]


class DownscaleTask(Task):
    """Downscaling: predict fine-grid fields from coarse inputs interpolated onto the model grid (lead 0)."""

    name = "downscale"
    recipe = {"betas": (0.9, 0.99)}
    metrics = ("rmse", "bias")

    def predict(self, ds: xr.Dataset, model: Any, *, regrid: str = "bilinear", **kwargs: Any) -> xr.Dataset:
        """Fields on the model grid (see :func:`xclimax.downscale`)."""
        if regrid not in ("bilinear", "conservative"):
            raise DataError(f"regrid must be 'bilinear' or 'conservative' for downscaling; got {regrid!r}")
        out = run(ds, model, lead=pd.Timedelta(0), steps=1, regrid=regrid, task=self.name, **kwargs)
        out = out.isel(lead_time=0, drop=True)
        return out.drop_vars("valid_time", errors="ignore")
