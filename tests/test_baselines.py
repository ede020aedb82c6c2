"""Tests for xclimax.baselines against plain numpy/pandas computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests import as_backend, raise_if_dask_computes
from xclimax.exceptions import DataError
from xclimax.scoring.baselines import as_lead_times, climatology, climatology_forecast, persistence
from xclimax.scoring.metrics import evaluate
from xclimax.testing import synthetic_dataset


@pytest.fixture
def ds():
    return synthetic_dataset(12, variables=["temperature", "2m_temperature"], levels=[500, 850], grid=(4, 8))


def _daily(seed=0, days=20, freq="12h"):
    """Random data spanning a year boundary, so day-of-year wraps."""
    time = pd.date_range("2003-12-25", periods=days * (24 // int(freq[:-1])), freq=freq)
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"x": (("time", "lat", "lon"), rng.standard_normal((time.size, 3, 4)), {"units": "K"})},
        coords={"time": time, "lat": [-30.0, 0.0, 30.0], "lon": [0.0, 90.0, 180.0, 270.0]},
    )


def test_persistence(ds, backend):
    with raise_if_dask_computes():
        fc = persistence(as_backend(ds, backend), ["6h", 24, np.timedelta64(2, "D")])
    assert set(fc.data_vars) == {"temperature", "2m_temperature"}  # constants dropped
    assert fc["temperature"].dims == ("time", "lead_time", "level", "lat", "lon")
    np.testing.assert_array_equal(fc.lead_time.values / np.timedelta64(1, "h"), [6, 24, 48])
    expected_valid = ds.time.values[:, None] + fc.lead_time.values[None, :]
    np.testing.assert_array_equal(fc.valid_time.values, expected_valid)
    for j in range(3):
        np.testing.assert_array_equal(fc["temperature"].isel(lead_time=j).values, ds["temperature"].values)
    assert fc["2m_temperature"].attrs["units"] == "K"


def test_persistence_scores():
    ds = _daily()
    fc = persistence(ds, ["0h", "12h"])
    rmse = evaluate(fc, ds, metrics=["rmse"])["x"].sel(metric="rmse").values
    assert rmse[0] == 0.0
    x = ds["x"].values
    w = np.cos(np.deg2rad([-30.0, 0.0, 30.0]))
    w = (w / w.mean())[:, None]
    mse = np.mean([np.mean(w * (x[i] - x[i + 1]) ** 2) for i in range(len(x) - 1)])
    np.testing.assert_allclose(rmse[1], np.sqrt(mse))


@pytest.mark.parametrize("by", ["dayofyear", "dayofyear_hour", "mean"])
def test_climatology(backend, by):
    ds = xr.concat([_daily(0), _daily(1).assign_coords(time=_daily(1).time + pd.Timedelta("365D"))], "time")
    with raise_if_dask_computes():
        clim = climatology(as_backend(ds, backend), by=by)
    frame = ds["x"].to_dataframe()["x"].reset_index()
    frame["dayofyear"] = frame.time.dt.day_of_year
    frame["hour"] = frame.time.dt.hour
    if by == "mean":
        np.testing.assert_allclose(clim["x"].values, ds["x"].values.mean(0))
        return
    keys = ["dayofyear", "hour"] if by == "dayofyear_hour" else ["dayofyear"]
    expected = frame.groupby(keys + ["lat", "lon"])["x"].mean().to_xarray()
    got = clim["x"].compute()
    xr.testing.assert_allclose(got.transpose(*expected.dims), expected)
    assert clim["x"].attrs["units"] == "K"


def test_climatology_smoothing(backend):
    ds = _daily(days=40, freq="24h")
    window = 5
    clim = climatology(as_backend(ds, backend), smooth=window).compute()
    raw = climatology(ds)["x"]
    full = np.full((366, 3, 4), np.nan)
    full[raw.dayofyear.values - 1] = raw.values
    expected = np.empty_like(full)
    for d in range(366):
        rows = [(d + k) % 366 for k in range(-2, 3)]
        block = full[rows]
        count = np.isfinite(block).sum(0)
        with np.errstate(invalid="ignore"):
            expected[d] = np.where(count > 0, np.nansum(block, 0) / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(clim["x"].values, expected)
    assert clim.sizes["dayofyear"] == 366
    # data cover days 359..366 and 1..33: day 35 is filled from day 33, day 36 is out of reach
    assert np.isfinite(clim["x"].sel(dayofyear=35).values).all()
    assert np.isnan(clim["x"].sel(dayofyear=36).values).all()


def test_climatology_forecast(backend):
    ds = _daily()
    clim = climatology(ds, by="dayofyear_hour")
    with raise_if_dask_computes():
        fc = climatology_forecast(clim.chunk(dayofyear=3) if backend == "dask" else clim, ds.time[:6], ["12h", "1D"])
    assert fc["x"].dims == ("time", "lead_time", "lat", "lon")
    for i in range(6):
        for j, lead in enumerate(fc.lead_time.values):
            v = pd.Timestamp(ds.time.values[i] + lead)
            np.testing.assert_array_equal(
                fc["x"].values[i, j], clim["x"].sel(dayofyear=v.day_of_year, hour=v.hour).values
            )
    np.testing.assert_array_equal(fc.valid_time.values, ds.time.values[:6, None] + fc.lead_time.values[None, :])
    static = climatology_forecast(climatology(ds, by="mean"), ds.time[:3], "12h")
    np.testing.assert_allclose(static["x"].values[2, 0], ds["x"].values.mean(0))
    # scored by evaluate like a model forecast
    rmse = evaluate(static, ds, metrics="rmse")["x"].values.item()
    w = np.cos(np.deg2rad([-30.0, 0.0, 30.0]))[:, None] / np.cos(np.deg2rad([-30.0, 0.0, 30.0])).mean()
    x = ds["x"].values
    np.testing.assert_allclose(rmse, np.sqrt(np.mean([np.mean(w * (x.mean(0) - x[k]) ** 2) for k in (1, 2, 3)])))


def test_errors():
    ds = _daily()
    with pytest.raises(DataError, match="lead_time"):
        persistence(ds, "soon")
    with pytest.raises(DataError, match="empty"):
        as_lead_times([])
    with pytest.raises(DataError, match="time"):
        persistence(ds.isel(time=0, drop=True), "6h")
    with pytest.raises(DataError, match="by must be"):
        climatology(ds, by="month")
    with pytest.raises(DataError, match="smooth"):
        climatology(ds, by="mean", smooth=5)
    with pytest.raises(DataError, match="lacks"):
        climatology_forecast(climatology(ds), ds.time[-1:], "30D")
