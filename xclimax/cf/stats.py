"""Normalisation statistics: per-variable scalar mean and standard deviation.

ClimaX normalises every variable with one scalar mean and std. xclimax computes them lazily
with dask, pooled over **all** selected times, space and batch dimensions (ClimaX's own
preprocessing kept only the last training year for pressure-level variables; see the
reference notes), unweighted as in ClimaX. ``total_precipitation`` gets mean 0 as in ClimaX.

Statistics are an :class:`xarray.Dataset` with ``mean`` and ``std`` on a ``variable``
dimension; on a model they are a dict ``{name: (mean, std)}`` (:func:`stats_to_dict`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Iterable, Mapping

import numpy as np
import xarray as xr

from ..exceptions import DataError, XClimaxWarning
from .grid import normalize_grid
from .tokens import to_array

__all__ = ["compute_stats", "normalize", "denormalize", "stats_to_dict", "stats_from_dict"]

logger = logging.getLogger(__name__)

#: Variables whose mean is forced to 0 (scaled by std only), as in ClimaX.
ZERO_MEAN = ("total_precipitation",)


def _fix_std(std: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Replace zero or non-finite std by 1, warning which variables were affected."""
    std = np.array(std, dtype=np.float64, copy=True)
    bad = ~np.isfinite(std) | (std <= 0)
    if bad.any():
        warnings.warn(
            f"standard deviation is zero or undefined for {[str(n) for n in np.asarray(names)[bad]]} "
            "(constant or empty field); using std = 1 for them",
            XClimaxWarning,
            stacklevel=2,
        )
        std[bad] = 1.0
    return std


def _select_time(obj: xr.Dataset | xr.DataArray, time: Any) -> xr.Dataset | xr.DataArray:
    if time is None:
        return obj
    if "time" not in obj.dims:
        raise DataError(f"time={time!r} was given but the data have no 'time' dimension; found dims {tuple(obj.dims)}")
    if isinstance(time, (tuple, list)) and len(time) == 2:
        time = slice(*time)
    out = obj.sel(time=time)
    if out.sizes.get("time", 1) == 0:
        raise DataError(
            f"time={time!r} selects no time steps; the data cover "
            f"{obj['time'].values[0]} .. {obj['time'].values[-1]}"
        )
    return out


def compute_stats(
    ds: xr.Dataset | xr.DataArray,
    *,
    variables: Iterable[str] | None = None,
    time: Any = None,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Per-variable mean and standard deviation for normalising ClimaX inputs and outputs.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        A CF-annotated Dataset (mapped with :func:`xclimax.tokens.to_array`) or a DataArray in the
        canonical layout with a ``variable`` dimension.
    variables : iterable of str, optional
        ClimaX names; default: all variables found (Dataset) or all of the DataArray.
    time : slice, str, (start, stop) or None
        Training period, e.g. ``slice("1979", "2015")`` or ``"2000"``; default all times.
    extra_variables, variable_map
        As in :func:`xclimax.tokens.find_variables`.

    Returns
    -------
    xarray.Dataset
        ``mean`` and ``std`` (float64) on ``variable``. Lazy for dask-backed input. Means and
        standard deviations (population, ``ddof=0``) are pooled over every time step, grid point
        and batch member, unweighted as in ClimaX; constants (broadcast in time) give the
        static field's values. ``total_precipitation`` has mean 0. A std that is zero or NaN
        (constant field) is replaced by 1 with an :class:`~xclimax.exceptions.XClimaxWarning`
        (at compute time for dask input).

    Raises
    ------
    DataError
        If the time selection is empty or the data have no ``variable`` dimension.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> ds = synthetic_dataset(4, variables=["2m_temperature"], constants=False)
    >>> stats = compute_stats(ds, variables=["2m_temperature"])
    >>> round(float(stats["mean"].sel(variable="2m_temperature")), 3) == round(float(ds["2m_temperature"].astype("float64").mean()), 3)
    True
    """
    if isinstance(ds, xr.Dataset):
        ds = _select_time(ds, time)
        ds, _ = normalize_grid(ds)
        da = to_array(
            ds, variables, extra_variables=extra_variables, variable_map=variable_map, strict=variables is not None
        )
    elif isinstance(ds, xr.DataArray):
        if "variable" not in ds.dims:
            raise DataError(f"expected a DataArray with a 'variable' dimension; found dims {ds.dims}")
        da = _select_time(ds, time)
        if variables is not None:
            names = list(variables)
            have = [str(v) for v in da["variable"].values]
            missing = [n for n in names if n not in have]
            if missing:
                raise DataError(f"variables {missing} are not in the DataArray; it has {have}")
            da = da.sel(variable=names)
    else:
        raise DataError(f"compute_stats expects an xarray Dataset or DataArray; got {type(ds).__name__}")
    dims = [d for d in da.dims if d != "variable"]
    x = da.astype(np.float64)
    mean = x.mean(dims)
    std = x.std(dims, ddof=0)
    names = mean["variable"]
    zero = names.isin(list(ZERO_MEAN))
    mean = mean.where(~zero, 0.0)
    std = xr.apply_ufunc(_fix_std, std, names, dask="parallelized", output_dtypes=[np.float64])
    out = xr.Dataset({"mean": mean, "std": std})
    out["mean"].attrs = {"long_name": "normalisation mean (canonical units)"}
    out["std"].attrs = {"long_name": "normalisation standard deviation (canonical units)"}
    out.attrs = {
        "description": "per-variable mean and std pooled over all times, grid points and batch members (unweighted)",
        "zero_mean_variables": ",".join(ZERO_MEAN),
    }
    if "time" in da.dims and da.sizes["time"]:
        out.attrs["time_range"] = f"{da['time'].values[0]} .. {da['time'].values[-1]}"
    return out


def _as_stats(stats: xr.Dataset | Mapping[str, tuple[float, float]]) -> xr.Dataset:
    if isinstance(stats, Mapping) and not isinstance(stats, xr.Dataset):
        return stats_from_dict(stats)
    if not {"mean", "std"} <= set(stats.data_vars) or "variable" not in stats.dims:
        raise DataError(
            f"statistics must be a Dataset with 'mean' and 'std' on a 'variable' dimension; found "
            f"variables {list(stats.data_vars)} and dims {dict(stats.sizes)}"
        )
    return stats


def _aligned(da: xr.DataArray, stats: xr.Dataset | Mapping) -> tuple[xr.DataArray, xr.DataArray]:
    stats = _as_stats(stats)
    if "variable" not in da.dims:
        raise DataError(f"expected a DataArray with a 'variable' dimension; found dims {da.dims}")
    names = [str(v) for v in da["variable"].values]
    have = {str(v) for v in stats["variable"].values}
    missing = [n for n in names if n not in have]
    if missing:
        raise DataError(f"no normalisation statistics for {missing}; statistics are available for {sorted(have)}")
    s = stats.sel(variable=names).assign_coords(variable=da["variable"].values)
    dtype = da.dtype if np.issubdtype(da.dtype, np.floating) else np.float64
    return s["mean"].astype(dtype).reset_coords(drop=True), s["std"].astype(dtype).reset_coords(drop=True)


def stats_arrays(stats: Mapping[str, tuple[float, float]], names: Iterable[str],
                 what: str = "the model") -> tuple[np.ndarray, np.ndarray]:
    """float32 ``mean`` and ``std`` arrays ``[V]`` of ``names`` from ``{name: (mean, std)}``.

    The one place where statistics become arrays (training loader, inference runner); raises
    :class:`~xclimax.DataError` when a variable has none or its std is not positive and finite.

    Examples
    --------
    >>> stats_arrays({"a": (1.0, 2.0), "b": (0.0, 5.0)}, ["b", "a"])
    (array([0., 1.], dtype=float32), array([5., 2.], dtype=float32))
    """
    names = list(names)
    missing = [v for v in dict.fromkeys(names) if v not in stats]
    if missing:
        raise DataError(
            f"{what} has no normalisation statistics for {missing}; compute them with xclimax.compute_stats(ds) "
            "and set model.stats = xclimax.normalize.stats_to_dict(stats)"
        )
    mean = np.array([float(stats[v][0]) for v in names], dtype=np.float32)
    std = np.array([float(stats[v][1]) for v in names], dtype=np.float32)
    bad = [(v, float(stats[v][1])) for v, s in zip(names, std) if not np.isfinite(s) or s <= 0]
    if bad or not np.isfinite(mean).all():
        raise DataError(f"normalisation statistics must be finite with a positive std; got {bad or dict(zip(names, mean))}")
    return mean, std


def normalize(da: xr.DataArray, stats: xr.Dataset | Mapping[str, tuple[float, float]]) -> xr.DataArray:
    """``(da - mean) / std`` per variable, aligned on the ``variable`` coordinate (lazy).

    Parameters
    ----------
    da : xarray.DataArray
        With a ``variable`` dimension of ClimaX names.
    stats : xarray.Dataset or dict
        From :func:`compute_stats`, or ``{name: (mean, std)}``.

    Returns
    -------
    xarray.DataArray
        Same dims and dtype as ``da``.

    Raises
    ------
    DataError
        If statistics are missing for a variable of ``da``.

    Examples
    --------
    >>> da = xr.DataArray([[1.0, 10.0]], dims=("time", "variable"), coords={"variable": ["a", "b"]})
    >>> normalize(da, {"a": (1.0, 2.0), "b": (0.0, 5.0)}).values.tolist()
    [[0.0, 2.0]]
    """
    mean, std = _aligned(da, stats)
    out = (da - mean) / std
    return out.assign_attrs(da.attrs).rename(da.name)


def denormalize(da: xr.DataArray, stats: xr.Dataset | Mapping[str, tuple[float, float]]) -> xr.DataArray:
    """``da * std + mean`` per variable: the inverse of :func:`normalize` (lazy).

    Examples
    --------
    >>> da = xr.DataArray([[0.0, 2.0]], dims=("time", "variable"), coords={"variable": ["a", "b"]})
    >>> denormalize(da, {"a": (1.0, 2.0), "b": (0.0, 5.0)}).values.tolist()
    [[1.0, 10.0]]
    """
    mean, std = _aligned(da, stats)
    out = da * std + mean
    return out.assign_attrs(da.attrs).rename(da.name)


def stats_to_dict(stats: xr.Dataset) -> dict[str, tuple[float, float]]:
    """``{name: (mean, std)}`` as Python floats (computes dask-backed statistics).

    Examples
    --------
    >>> stats_to_dict(stats_from_dict({"a": (1.0, 2.0)}))
    {'a': (1.0, 2.0)}
    """
    stats = _as_stats(stats).compute()
    return {
        str(n): (float(m), float(s))
        for n, m, s in zip(stats["variable"].values, stats["mean"].values, stats["std"].values, strict=True)
    }


def stats_from_dict(d: Mapping[str, tuple[float, float]]) -> xr.Dataset:
    """Build the statistics Dataset from ``{name: (mean, std)}``.

    Examples
    --------
    >>> stats_from_dict({"a": (1.0, 2.0), "b": (0.0, 3.0)})["std"].values.tolist()
    [2.0, 3.0]
    """
    names = list(d)
    bad = [n for n in names if len(tuple(d[n])) != 2]
    if bad:
        raise DataError(f"statistics must map each name to (mean, std); got {[(n, d[n]) for n in bad]}")
    mean = np.array([float(d[n][0]) for n in names], dtype=np.float64)
    std = np.array([float(d[n][1]) for n in names], dtype=np.float64)
    return xr.Dataset(
        {"mean": ("variable", mean), "std": ("variable", std)},
        coords={"variable": np.array(names, dtype=str)},
    )
