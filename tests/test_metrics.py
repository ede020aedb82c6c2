"""Tests for xclimax.metrics: each score against an independent plain-numpy computation."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests import as_backend, raise_if_dask_computes
from xclimax.exceptions import DataError, GridError, XClimaxWarning
from xclimax.scoring.metrics import evaluate, lat_weights
from xclimax.testing import grid_coords

LEADS = pd.to_timedelta(["6h", "12h", "24h"]).values
ALL = ["rmse", "mse", "mae", "bias", "acc"]


def _data(seed: int = 0, member: bool = False):
    """Truth every 6 h for 3 days; forecasts from 6 inits, some valid times beyond the truth."""
    rng = np.random.default_rng(seed)
    lat, lon = grid_coords(6, 8)
    times = pd.date_range("2001-02-27", periods=12, freq="6h")
    level = np.array([500.0, 850.0])
    truth = xr.Dataset(
        {
            "t": (("time", "level", "lat", "lon"), 280 + 5 * rng.standard_normal((12, 2, 6, 8)), {"units": "K", "long_name": "temperature"}),
            "u": (("time", "lat", "lon"), rng.standard_normal((12, 6, 8)), {"units": "m s-1"}),
            "lsm": (("lat", "lon"), rng.random((6, 8))),
        },
        coords={"time": times, "level": level, "lat": lat, "lon": lon},
    )
    inits = times[[0, 2, 4, 7, 9, 11]]
    shape = (6, 3)
    fshape_t = (2,) * member + shape + (2, 6, 8)
    fshape_u = (2,) * member + shape + (6, 8)
    bdims = ("member",) * member
    fc = xr.Dataset(
        {
            "t": (bdims + ("time", "lead_time", "level", "lat", "lon"), 280 + 5 * rng.standard_normal(fshape_t), {"units": "K"}),
            "u": (bdims + ("time", "lead_time", "lat", "lon"), rng.standard_normal(fshape_u), {"units": "m s-1"}),
        },
        coords={"time": inits, "lead_time": LEADS, "level": level, "lat": lat, "lon": lon},
    )
    fc = fc.assign_coords(valid_time=(("time", "lead_time"), inits.values[:, None] + LEADS[None, :]))
    return fc, truth


def _pairs(fc, truth):
    """(i_init, i_lead, i_truth) for every pair whose valid time is in truth (plain Python)."""
    out = []
    tt = list(truth.time.values)
    for i, t0 in enumerate(fc.time.values):
        for j, lead in enumerate(fc.lead_time.values):
            if t0 + lead in tt:
                out.append((i, j, tt.index(t0 + lead)))
    return out


def _w(lat):
    w = np.cos(np.deg2rad(lat))
    return (w / w.mean())[:, None]


def _reference(fc, truth, name, level=None, flavour="wb2", clim=None):
    """Scores per lead time from loops over pairs: dict metric -> array over leads."""
    f = fc[name].values if level is None else fc[name].sel(level=level).values
    t = truth[name].values if level is None else truth[name].sel(level=level).values
    w = _w(fc.lat.values)
    pairs = _pairs(fc, truth)
    used = sorted({k for _, _, k in pairs})
    if clim is None:
        c_of = lambda k: t[used].mean(0)  # noqa: E731
    else:
        c = clim[name].values if level is None else clim[name].sel(level=level).values
        doy = pd.DatetimeIndex(truth.time.values).day_of_year
        c_of = lambda k: c[list(clim.dayofyear.values).index(doy[k])]  # noqa: E731
    out = {m: [] for m in ALL}
    for j in range(fc.sizes["lead_time"]):
        mine = [(i, k) for i, jj, k in pairs if jj == j]
        e = np.stack([f[i, j] - t[k] for i, k in mine])
        spatial_mse = np.array([np.mean(w * x**2) for x in e])
        out["mse"].append(spatial_mse.mean())
        out["mae"].append(np.mean([np.mean(w * abs(x)) for x in e]))
        out["bias"].append(np.mean([np.mean(w * x) for x in e]))
        fa = np.stack([f[i, j] - c_of(k) for i, k in mine])
        ta = np.stack([t[k] - c_of(k) for i, k in mine])
        if flavour == "wb2":
            out["rmse"].append(np.sqrt(spatial_mse.mean()))
            accs = [np.mean(w * a * b) / np.sqrt(np.mean(w * a * a) * np.mean(w * b * b)) for a, b in zip(fa, ta, strict=True)]
            out["acc"].append(np.mean(accs))
        else:
            out["rmse"].append(np.mean(np.sqrt(spatial_mse)))
            a, b = fa - fa.mean(), ta - ta.mean()
            out["acc"].append(np.sum(w * a * b) / np.sqrt(np.sum(w * a * a) * np.sum(w * b * b)))
    return {m: np.array(v) for m, v in out.items()}


def _clim(truth, seed=1):
    rng = np.random.default_rng(seed)
    doy = np.arange(1, 367)
    return xr.Dataset(
        {
            "t": (("dayofyear", "level", "lat", "lon"), 280 + rng.standard_normal((366, 2, 6, 8))),
            "u": (("dayofyear", "lat", "lon"), rng.standard_normal((366, 6, 8))),
        },
        coords={"dayofyear": doy, "level": truth.level, "lat": truth.lat, "lon": truth.lon},
    )


@pytest.mark.parametrize("flavour", ["wb2", "climax"])
@pytest.mark.parametrize("with_clim", [False, True])
def test_scores_match_numpy(backend, flavour, with_clim):
    fc, truth = _data()
    clim = _clim(truth) if with_clim else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XClimaxWarning)
        scores = evaluate(as_backend(fc, backend), as_backend(truth, backend), metrics=ALL, climatology=clim,
                          flavour=flavour).compute()
    assert scores["t"].dims == ("metric", "lead_time", "level")
    assert list(scores.metric.values) == ALL
    for name, level in (("t", 500.0), ("t", 850.0), ("u", None)):
        ref = _reference(fc, truth, name, level, flavour, clim)
        got = scores[name] if level is None else scores[name].sel(level=level)
        for m in ALL:
            np.testing.assert_allclose(got.sel(metric=m).values, ref[m], rtol=1e-10, err_msg=f"{name} {level} {m}")
    assert scores.attrs["flavour"] == flavour


def test_wb2_rmse_is_sqrt_after_time_mean_and_climax_before():
    fc, truth = _data()
    wb2 = evaluate(fc, truth, metrics=["rmse", "mse"])["u"]
    climax = evaluate(fc, truth, metrics="rmse", flavour="climax")["u"]
    np.testing.assert_allclose(wb2.sel(metric="rmse"), np.sqrt(wb2.sel(metric="mse")))
    # Jensen: the mean of square roots is below the square root of the mean
    assert (climax.sel(metric="rmse") < wb2.sel(metric="rmse")).all()


def test_lazy_and_chunk_independent():
    fc, truth = _data(member=True)
    clim = _clim(truth)
    expected = evaluate(fc, truth, metrics=ALL, climatology=clim)
    with raise_if_dask_computes():
        lazy = evaluate(fc.chunk(time=4, lat=5, member=1), truth.chunk(time=5, lon=7), metrics=ALL,
                        climatology=clim.chunk(dayofyear=100, lat=4))
        lazy_climax = evaluate(fc.chunk(time=4, lat=5), truth.chunk(time=5), flavour="climax")
    assert lazy["t"].chunks is not None
    xr.testing.assert_allclose(lazy.compute(), expected)
    xr.testing.assert_allclose(lazy_climax.compute(), evaluate(fc, truth, flavour="climax"))


def test_batch_dims_kept_or_averaged():
    fc, truth = _data(member=True)
    per_member = evaluate(fc, truth, metrics=["mse", "bias"])
    assert per_member["u"].dims == ("metric", "member", "lead_time")
    for k in range(2):
        ref = _reference(fc.isel(member=k), truth, "u")
        np.testing.assert_allclose(per_member["u"].sel(metric="mse").isel(member=k), ref["mse"])
    pooled = evaluate(fc, truth, metrics=["mse", "bias"], dims=("member", "time", "lat", "lon"))
    assert pooled["u"].dims == ("metric", "lead_time")
    # every member has the same pairs, so pooling equals the mean over members
    xr.testing.assert_allclose(pooled["u"], per_member["u"].mean("member"))


def test_per_time_and_per_gridpoint_dims():
    fc, truth = _data()
    per_time = evaluate(fc, truth, metrics=["rmse", "bias"], dims=("lat", "lon"))["u"]
    assert per_time.dims == ("metric", "time", "lead_time")
    w = _w(fc.lat.values)
    pairs = _pairs(fc, truth)
    expected = np.full((6, 3), np.nan)
    for i, j, k in pairs:
        expected[i, j] = np.sqrt(np.mean(w * (fc.u.values[i, j] - truth.u.values[k]) ** 2))
    np.testing.assert_allclose(per_time.sel(metric="rmse").values, expected)  # NaN where dropped
    per_point = evaluate(fc, truth, metrics="rmse", dims="time")["u"]
    assert per_point.dims == ("metric", "lead_time", "lat", "lon")
    j = 1
    ks = [(i, k) for i, jj, k in pairs if jj == j]
    ref = np.sqrt(np.mean([(fc.u.values[i, j] - truth.u.values[k]) ** 2 for i, k in ks], axis=0))
    np.testing.assert_allclose(per_point.sel(metric="rmse").isel(lead_time=j).values, ref)


def test_dayofyear_hour_climatology():
    fc, truth = _data()
    rng = np.random.default_rng(3)
    clim = xr.Dataset(
        {"u": (("dayofyear", "hour", "lat", "lon"), rng.standard_normal((366, 4, 6, 8)))},
        coords={"dayofyear": np.arange(1, 367), "hour": [0, 6, 12, 18], "lat": truth.lat, "lon": truth.lon},
    )
    got = evaluate(fc[["u"]], truth, metrics="acc", climatology=clim)["u"].sel(metric="acc")
    stamps = pd.DatetimeIndex(truth.time.values)
    w = _w(fc.lat.values)
    for j in range(3):
        accs = []
        for i, jj, k in _pairs(fc, truth):
            if jj != j:
                continue
            c = clim.u.values[stamps[k].day_of_year - 1, [0, 6, 12, 18].index(stamps[k].hour)]
            a, b = fc.u.values[i, j] - c, truth.u.values[k] - c
            accs.append(np.mean(w * a * b) / np.sqrt(np.mean(w * a * a) * np.mean(w * b * b)))
        np.testing.assert_allclose(got.isel(lead_time=j), np.mean(accs))


def test_perfect_forecast():
    _, truth = _data()
    fc = truth[["u"]].isel(time=slice(0, 8)).expand_dims(lead_time=[np.timedelta64(0, "ns")], axis=1)
    with pytest.warns(XClimaxWarning, match="day-of-year"):
        scores = evaluate(fc, truth, metrics=["rmse", "bias", "acc"])
    np.testing.assert_allclose(scores["u"].sel(metric=["rmse", "bias"]), 0.0, atol=1e-12)
    np.testing.assert_allclose(scores["u"].sel(metric="acc"), 1.0)


def test_names_order_and_attrs():
    fc, truth = _data()
    expected = evaluate(fc, truth, metrics=["rmse", "acc"], climatology=_clim(truth))
    flipped = truth.isel(lat=slice(None, None, -1), lon=np.roll(np.arange(8), 3))
    renamed = flipped.rename(lat="latitude", lon="longitude")
    clim = _clim(truth).rename(lat="latitude", lon="longitude")
    got = evaluate(fc.rename(lat="latitude", lon="longitude"), renamed, metrics=["rmse", "acc"], climatology=clim,
                   dims=["time", "latitude", "longitude"])
    xr.testing.assert_allclose(got, expected)
    assert got["t"].attrs["rmse_units"] == "K" and got["t"].attrs["acc_units"] == "1"
    assert "units" not in got["t"].attrs
    assert evaluate(fc, truth, metrics=["rmse", "bias"])["t"].attrs["units"] == "K"
    assert evaluate(fc, truth, metrics="mse")["u"].attrs["units"] == "(m s-1)^2"
    spatial = evaluate(fc.rename(lat="latitude", lon="longitude"), renamed, metrics="bias", dims="time")
    assert {"latitude", "longitude"} <= set(spatial.dims)
    # longitudes in [-180, 180) on the truth side are matched to [0, 360) in the forecast
    west = truth.assign_coords(lon=((truth.lon + 180) % 360) - 180).sortby("lon")
    xr.testing.assert_allclose(evaluate(fc, west, metrics=["rmse", "acc"], climatology=_clim(truth)), expected)


def test_lat_weights():
    lat, _ = grid_coords(32, 64)
    np.testing.assert_allclose(lat_weights(lat), lat_weights(lat, flavour="climax"), rtol=1e-12)
    poles = np.linspace(-90, 90, 7)  # 30 degree spacing, points on the poles
    bounds = np.array([-90, -75, -45, -15, 15, 45, 75, 90])
    area = np.diff(np.sin(np.deg2rad(bounds)))
    np.testing.assert_allclose(lat_weights(poles[::-1]).values, (area / area.mean())[::-1])
    assert lat_weights(poles, flavour="climax").values[0] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(GridError):
        lat_weights([0.0, 95.0])


def test_errors():
    fc, truth = _data()
    with pytest.raises(DataError, match="truth lacks forecast variables"):
        evaluate(fc, truth.drop_vars("u"))
    with pytest.raises(GridError, match="different grid"):
        evaluate(fc, truth.assign_coords(lat=truth.lat + 1.0))
    with pytest.raises(GridError, match="different grid"):
        evaluate(fc, truth.isel(lon=slice(0, 7)))
    with pytest.raises(DataError, match="no forecast valid time"):
        evaluate(fc, truth.assign_coords(time=truth.time + np.timedelta64(3650, "D")))
    with pytest.raises(DataError, match="metrics"):
        evaluate(fc, truth, metrics=["rmse", "crps"])
    with pytest.raises(DataError, match="dims"):
        evaluate(fc, truth, dims=("time", "height"))
    with pytest.raises(DataError, match="lat and lon"):
        evaluate(fc, truth, dims="time", flavour="climax")
    with pytest.raises(DataError, match="flavour"):
        evaluate(fc, truth, flavour="ecmwf")
    with pytest.raises(DataError, match="lacks the"):
        evaluate(fc, truth, metrics="acc", climatology=_clim(truth).sel(dayofyear=slice(1, 58)))
    with pytest.raises(DataError, match="climatology lacks forecast variables"):
        evaluate(fc, truth, metrics="acc", climatology=_clim(truth)[["t"]])
    with pytest.raises(DataError, match="level"):
        evaluate(fc, truth.sel(level=[500.0]))
    with pytest.raises(DataError, match="lead_time"):
        evaluate(truth, truth)


def test_inputs_not_modified():
    fc, truth = _data()
    before = fc.copy(deep=True), truth.copy(deep=True)
    evaluate(fc.rename(lat="latitude"), truth, metrics=ALL, climatology=_clim(truth))
    xr.testing.assert_identical(fc, before[0])
    xr.testing.assert_identical(truth, before[1])
