"""ClimateBench scores (NRMSE) and the two simplest emulators to compare with.

The normalised root-mean-square errors of ClimateBench (Watson-Parris et al., 2022, and the
evaluation code of its repository), for a prediction ``x`` and the truth ``y`` over an
evaluation window (2080-2100 of ssp245 in the benchmark):

- ``N = | < mean_t y > |``, the absolute value of the time mean of the global mean truth;
- ``nrmse_s = sqrt( < (mean_t x - mean_t y)**2 > ) / N`` (spatial: error of the window-mean map);
- ``nrmse_g = sqrt( mean_t ( <x> - <y> )**2 ) / N`` (global: error of the yearly global means);
- ``nrmse_t = nrmse_s + 5 * nrmse_g`` (total),

where ``< . >`` is the area-weighted (``cos(lat)``) mean over latitude and longitude and
``mean_t`` the mean over the **whole** window. The official ClimaX code computes the time means
within each data-loader batch (``batch_size: 1`` makes ``nrmse_s`` a per-year score) and
averages batches; here they always span the window, so the values do not depend on how the
prediction was batched.

Baselines, computed from training data for any evaluation period:

- :func:`mean_response`: the time mean of each response over the training data, at every time;
- :func:`pattern_scaling`: per grid cell, a least-squares linear regression of the response on
  global-mean forcing(s) (by default the cumulative CO2 emissions, which scale with global
  warming), the classic pattern-scaling emulator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..cf.grid import normalize_grid, restore_grid
from ..exceptions import DataError, GridError

__all__ = ["NRMSE_METRICS", "ALPHA", "nrmse", "mean_response", "pattern_scaling", "global_mean"]

logger = logging.getLogger(__name__)

#: The ClimateBench scores :func:`nrmse` (and :func:`xclimax.evaluate`) compute.
NRMSE_METRICS: tuple[str, ...] = ("nrmse_s", "nrmse_g", "nrmse_t")
#: Weight of the global term in the total NRMSE.
ALPHA = 5.0
_SPACE = ("lat", "lon")


def _standard(ds: xr.Dataset, what: str) -> tuple[xr.Dataset, Any]:
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"{what} must be an xarray.Dataset; got {type(ds).__name__}")
    return normalize_grid(ds)


def _cos_weights(lat: xr.DataArray) -> xr.DataArray:
    w = np.cos(np.deg2rad(np.asarray(lat.values, dtype=float)))
    if np.any(w < -1e-9) or w.sum() <= 0:
        raise GridError(f"latitudes must lie within [-90, 90]; got {lat.values!r}")
    return xr.DataArray(np.clip(w, 0, None), dims=lat.dims, coords=lat.coords)


def global_mean(da: xr.DataArray) -> xr.DataArray:
    """Area-weighted (``cos(lat)``) mean over latitude and longitude, as ClimateBench; lazy on dask.

    Fields without both spatial dimensions (global scalars) are returned as they are.

    Examples
    --------
    >>> da = xr.DataArray([[1.0, 1.0], [3.0, 3.0]], dims=("lat", "lon"), coords={"lat": [-60.0, 0.0]})
    >>> round(float(global_mean(da)), 4)
    2.3333
    """
    if not set(_SPACE) <= set(da.dims):
        return da
    w = _cos_weights(da["lat"])
    return (da * w).sum(_SPACE, skipna=False) / (w.sum() * da.sizes["lon"])


def _select_years(ds: xr.Dataset, years: Any, what: str) -> xr.Dataset:
    if years is None:
        return ds
    if isinstance(years, slice):
        start, stop = years.start, years.stop
    else:
        start, stop = years
    year = ds["time"].dt.year
    keep = np.ones(year.shape, dtype=bool)
    if start is not None:
        keep &= year.values >= int(start)
    if stop is not None:
        keep &= year.values <= int(stop)
    if not keep.any():
        raise DataError(
            f"{what} has no time step in the years {start}-{stop}; its years span "
            f"{int(year.min())}-{int(year.max())}"
        )
    return ds.isel(time=np.flatnonzero(keep))


def _align_time(pred: xr.Dataset, truth: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """Both on their common time stamps (same calendar required)."""
    if "time" not in pred.dims or "time" not in truth.dims:
        raise DataError(
            f"prediction and truth need a 'time' dimension; found {list(pred.dims)} and {list(truth.dims)}"
        )
    try:
        common = np.intersect1d(pred["time"].values, truth["time"].values)
    except TypeError as err:  # cftime vs datetime64, or different calendars
        raise DataError(
            "prediction and truth have time axes in different calendars or types "
            f"({pred['time'].dtype} vs {truth['time'].dtype}); convert one with .convert_calendar()"
        ) from err
    if common.size == 0:
        raise DataError(
            f"prediction and truth share no time step: prediction {pred['time'].values[0]} .. "
            f"{pred['time'].values[-1]}, truth {truth['time'].values[0]} .. {truth['time'].values[-1]}"
        )
    if common.size < max(pred.sizes["time"], 1):
        logger.info("scoring the %d time steps prediction and truth share (prediction has %d)", common.size,
                    pred.sizes["time"])
    return pred.sel(time=common), truth.sel(time=common)


def nrmse(
    prediction: xr.Dataset,
    truth: xr.Dataset,
    *,
    metrics: str | Iterable[str] = NRMSE_METRICS,
    years: tuple[int | None, int | None] | slice | None = None,
    check_finite: bool = True,
) -> xr.Dataset:
    """ClimateBench's normalised RMSEs over the whole evaluation window.

    Parameters
    ----------
    prediction, truth : Dataset
        Yearly fields ``(*batch, time, lat, lon)`` with the same variable names, on the same grid
        and calendar (any CF calendar); they are compared on their common time stamps. Every
        prediction variable with both spatial dims is scored. Batch dims (scenario, member) are
        kept: one score per batch element.
    metrics : str or iterable of str
        Any of ``"nrmse_s"`` (spatial), ``"nrmse_g"`` (global), ``"nrmse_t"`` (total, spatial +
        5 x global).
    years : (int, int) or slice, optional
        First and last calendar year of the window, inclusive (ClimateBench: ``(2080, 2100)``).
        Default: every common time step.
    check_finite : bool
        Raise when the window holds NaN (for dask inputs this computes a small reduction).

    Returns
    -------
    Dataset
        One variable per scored variable, with a leading ``metric`` dimension (coordinate: the
        metric names) and the batch dims; dimensionless (``units: "1"``). Lazy for dask inputs
        when ``check_finite=False``.

    Raises
    ------
    DataError
        Missing variables, no common time step, NaN in the window, or a zero normaliser.
    GridError
        Different latitudes or longitudes.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> time = pd.date_range("2080-07-01", periods=3, freq="12MS")
    >>> coords = {"time": time, "lat": [-45.0, 45.0], "lon": [0.0, 180.0]}
    >>> truth = xr.Dataset({"tas": (("time", "lat", "lon"), np.full((3, 2, 2), 2.0))}, coords)
    >>> scores = nrmse(truth + 0.5, truth)
    >>> scores["tas"].values.round(3).tolist()  # spatial, global, total
    [0.25, 0.25, 1.5]
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    bad = [m for m in names if m not in NRMSE_METRICS]
    if bad or not names or len(set(names)) != len(names):
        raise DataError(f"metrics must be distinct names from {NRMSE_METRICS}; got {names}")
    pred, info = _standard(prediction, "prediction")
    tr, _ = _standard(truth, "truth")
    variables = [v for v in pred.data_vars if set(_SPACE) <= set(pred[v].dims)]
    if not variables:
        raise DataError(f"prediction has no variable with lat and lon dims; found {list(pred.data_vars)}")
    absent = [v for v in variables if v not in tr.data_vars]
    if absent:
        raise DataError(f"truth lacks the predicted variables {absent}; truth has {list(tr.data_vars)}")
    for dim in _SPACE:
        a, b = np.asarray(pred[dim].values, float), np.asarray(tr[dim].values, float)
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-6):
            raise GridError(
                f"prediction and truth are on different grids: {dim} has {a.size} values [{a.min():g} .. {a.max():g}] "
                f"vs {b.size} [{b.min():g} .. {b.max():g}]; regrid one of them (xclimax.grid.regrid)"
            )
    tr = tr.assign_coords(lat=pred["lat"].values, lon=pred["lon"].values)
    pred, tr = _align_time(pred[variables], tr[variables])
    pred, tr = _select_years(pred, years, "prediction"), _select_years(tr, years, "truth")
    out = {}
    for name in variables:
        x, y = pred[name], tr[name]  # batch dims of either (scenario, member) broadcast against the other
        if check_finite:
            bad_x, bad_y = int(x.isnull().sum()), int(y.isnull().sum())
            if bad_x or bad_y:
                raise DataError(
                    f"{name}: {bad_x} NaN values in the prediction and {bad_y} in the truth within the evaluation "
                    f"window ({x.sizes['time']} time steps): select a window the prediction covers (the first "
                    "history - 1 years of a projection have no prediction)"
                )
        gx, gy = global_mean(x), global_mean(y)
        norm = abs(gy.mean("time"))
        if check_finite and bool((norm == 0).any()):
            raise DataError(f"{name}: the global, time mean truth is exactly 0, so the NRMSE is undefined")
        s = np.sqrt(global_mean((x.mean("time") - y.mean("time")) ** 2)) / norm
        g = np.sqrt(((gx - gy) ** 2).mean("time")) / norm
        values = {"nrmse_s": s, "nrmse_g": g, "nrmse_t": s + ALPHA * g}
        da = xr.concat([values[m] for m in names], dim="metric", coords="minimal", compat="override")
        da = da.assign_coords(metric=names)
        da.attrs = {"units": "1", "long_name": f"ClimateBench NRMSE of {name}"}
        out[name] = da
    result = xr.Dataset(out)
    first = pred["time"].values[0], pred["time"].values[-1]
    result.attrs = {
        "definition": "ClimateBench NRMSE over the whole window: nrmse_t = nrmse_s + 5 * nrmse_g, cos(lat) weights",
        "window": f"{first[0]} .. {first[1]} ({pred.sizes['time']} time steps)",
    }
    return result


# --------------------------------------------------------------------------- baselines
def _field(ds: xr.Dataset, name: str, what: str) -> xr.DataArray:
    """Variable ``name`` of ``ds``: by name, else by the vocabulary's CF criteria (units converted)."""
    if name in ds.data_vars:
        return ds[name]
    from ..cf import tokens

    try:
        found = tokens.find_variables(ds, [name], strict=True)
    except Exception as err:
        raise DataError(f"{what} has no variable {name!r} (data variables: {list(ds.data_vars)}): {err}") from None
    src = found[name]
    da = ds[src.source]
    if src.scale != 1.0 or src.offset != 0.0:
        da = da * src.scale + src.offset
    return da.rename(name)


def _outputs(train: xr.Dataset, outputs: str | Sequence[str] | None) -> list[str]:
    if outputs is None:
        return [v for v in train.data_vars if set(_SPACE) <= set(train[v].dims) and "time" in train[v].dims]
    return [outputs] if isinstance(outputs, str) else list(outputs)


def _time_template(like: xr.Dataset) -> xr.DataArray:
    if "time" not in like.dims:
        raise DataError(f"like must have a 'time' dimension; found {list(like.dims)}")
    return like["time"]


def mean_response(
    train: xr.Dataset, like: xr.Dataset, *, outputs: str | Sequence[str] | None = None
) -> xr.Dataset:
    """The training-period mean response, repeated at every time of ``like``.

    Parameters
    ----------
    train : Dataset
        Training responses ``(*batch, time, lat, lon)``; the mean is over time and every batch dim,
        skipping NaN (e.g. a historical run that ends in 2014).
    like : Dataset
        Gives the time axis (and calendar) of the result; its batch dims (scenario, ...) are kept.
    outputs : str or sequence of str, optional
        Response variables (default: every variable of ``train`` with time, lat and lon).

    Returns
    -------
    Dataset
        ``(*like batch dims, time, lat, lon)`` on ``train``'s grid, with the variables' attrs.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> coords = {"time": pd.date_range("2000", periods=4, freq="YS"), "lat": [0.0], "lon": [0.0, 90.0]}
    >>> train = xr.Dataset({"tas": (("time", "lat", "lon"), np.arange(8.0).reshape(4, 1, 2))}, coords)
    >>> mean_response(train, train.isel(time=[0]))["tas"].values.tolist()
    [[[3.0, 4.0]]]
    """
    train, info = _standard(train, "train")
    time = _time_template(like)
    batch = {d: like.sizes[d] for d in like.dims if d not in ("time", *_SPACE)}
    out = {}
    for name in _outputs(train, outputs):
        da = _field(train, name, "train")
        reduce = [d for d in da.dims if d not in _SPACE]
        mean = da.mean(reduce, skipna=True)
        full = mean.expand_dims(time=time.values).assign_coords(time=time)
        for dim, size in batch.items():
            if dim in like.coords:
                full = full.expand_dims({dim: like[dim].values})
            else:
                full = full.expand_dims({dim: size})
        full.attrs = dict(da.attrs)
        out[name] = full.transpose(*batch, "time", *_SPACE)
    result = restore_grid(xr.Dataset(out), info)
    result.attrs = {"baseline": "training-period mean response"}
    return result


def pattern_scaling(
    train: xr.Dataset,
    like: xr.Dataset,
    *,
    outputs: str | Sequence[str] | None = None,
    predictors: str | Sequence[str] = ("CO2",),
) -> xr.Dataset:
    """Linear pattern scaling: per grid cell, regress the response on global-mean forcing.

    For every grid cell and output ``y(t) = a + sum_k b_k g_k(t)`` is fitted by least squares
    over all finite training samples (times and batch elements), where ``g_k`` is the global
    (``cos(lat)``-weighted) mean of predictor ``k`` (a global scalar such as cumulative CO2 is
    used as it is); the fit is then evaluated with ``like``'s predictors.

    Parameters
    ----------
    train : Dataset
        Training data with the responses and the predictors (any batch dims).
    like : Dataset
        The predictors at the times to predict (e.g. the held-out scenario).
    outputs : str or sequence of str, optional
        Response variables (default: every variable of ``train`` with time, lat and lon that is
        not a predictor).
    predictors : str or sequence of str
        Forcing variables whose global means are the regressors (default ``("CO2",)``:
        cumulative CO2 emissions, roughly proportional to global warming).

    Returns
    -------
    Dataset
        ``(*like batch dims, time, lat, lon)`` on ``train``'s grid; lazy if ``like`` is dask-backed
        (the regression itself is computed from ``train``).

    Raises
    ------
    DataError
        Missing variables or fewer finite training samples than coefficients.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> coords = {"time": pd.date_range("2000", periods=5, freq="YS"), "lat": [0.0], "lon": [0.0, 90.0]}
    >>> co2 = xr.DataArray(np.arange(5.0), dims="time")
    >>> tas = co2 * xr.DataArray([[1.0, 2.0]], dims=("lat", "lon")) + 0.5
    >>> train = xr.Dataset({"CO2": co2, "tas": tas}, coords)
    >>> fit = pattern_scaling(train, train.isel(time=[4]))
    >>> fit["tas"].values.round(6).tolist()
    [[[4.5, 8.5]]]
    """
    preds = [predictors] if isinstance(predictors, str) else list(predictors)
    if not preds:
        raise DataError("pattern_scaling needs at least one predictor")
    train, info = _standard(train, "train")
    like_std, _ = _standard(like, "like") if set(_SPACE) <= set(like.dims) else (like, None)
    time = _time_template(like)
    names = [n for n in _outputs(train, outputs) if n not in preds]
    if not names:
        raise DataError(f"no response variable to fit in train (data variables {list(train.data_vars)})")

    def regressors(ds: xr.Dataset, what: str) -> xr.DataArray:
        cols = [global_mean(_field(ds, p, what)).astype(float).reset_coords(drop=True) for p in preds]
        cols = [c.drop_vars([k for k in c.coords if k not in c.dims]) for c in cols]
        ones = xr.ones_like(cols[0])
        return xr.concat([ones, *xr.broadcast(*cols)], dim="coef").assign_coords(coef=["intercept", *preds])

    X = regressors(train, "train").compute()
    Xl = regressors(like_std, "like")
    out = {}
    for name in names:
        y = _field(train, name, "train")
        sample = [d for d in y.dims if d not in _SPACE]
        Xb, yb = xr.broadcast(X, y.mean(_SPACE, skipna=False))  # common sample dims
        xs = Xb.transpose(*sample, "coef").values.reshape(-1, len(preds) + 1)
        ys = y.transpose(*sample, *_SPACE).values.reshape(xs.shape[0], -1)
        ok = np.isfinite(xs).all(1) & np.isfinite(ys).all(1)
        if ok.sum() <= len(preds) + 1:
            raise DataError(
                f"{name}: {int(ok.sum())} finite training samples for {len(preds) + 1} coefficients; need more"
            )
        coef, *_ = np.linalg.lstsq(xs[ok], ys[ok], rcond=None)
        beta = xr.DataArray(coef.reshape(len(preds) + 1, y.sizes["lat"], y.sizes["lon"]), dims=("coef", *_SPACE),
                            coords={"coef": X["coef"].values, "lat": y["lat"].values, "lon": y["lon"].values})
        fitted = xr.dot(Xl, beta, dim="coef").astype(y.dtype)
        if "time" in fitted.dims:
            fitted = fitted.assign_coords(time=time.values)
        fitted.attrs = dict(y.attrs)
        batch = [d for d in fitted.dims if d not in ("time", *_SPACE)]
        out[name] = fitted.transpose(*batch, "time", *_SPACE)
        logger.info("pattern scaling of %s on %s from %d samples", name, preds, int(ok.sum()))
    result = restore_grid(xr.Dataset(out), info)
    result.attrs = {"baseline": f"linear pattern scaling on global-mean {', '.join(preds)}"}
    return result

