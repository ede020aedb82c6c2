"""CF calendars and near-surface heights through the public API (issue 10).

Every calendar of the CF conventions (as cftime objects) and numpy ``datetime64`` go through
forecast, the baselines, evaluate, compute_stats, pretrain/finetune and plot. The oracles are
independent of xclimax: cftime's own date arithmetic (``cftime.datetime + datetime.timedelta``),
its ``dayofyr`` attribute, and numpy.
"""

from __future__ import annotations

import datetime
import warnings

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xclimax
from xclimax.testing import synthetic_dataset

from . import as_backend, raise_if_dask_computes

CALENDARS = ["standard", "gregorian", "proleptic_gregorian", "noleap", "365_day", "all_leap", "366_day", "360_day",
             "julian"]
ALL = [*CALENDARS, "datetime64"]
BACKENDS = ["numpy", "dask"]
TINY = dict(embed_dim=32, depth=1, num_heads=2, decoder_depth=1)

#: 2100-02-28 00:00 + 24 h by each calendar's own rules (2100 is a leap year in the julian calendar only)
AFTER_FEB_28 = {
    "standard": (2100, 3, 1), "gregorian": (2100, 3, 1), "proleptic_gregorian": (2100, 3, 1), "noleap": (2100, 3, 1),
    "365_day": (2100, 3, 1), "all_leap": (2100, 2, 29), "366_day": (2100, 2, 29), "360_day": (2100, 2, 29),
    "julian": (2100, 2, 29), "datetime64": (2100, 3, 1),
}


@pytest.fixture(autouse=True)
def _quiet():
    with xclimax.set_options(progress=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", xclimax.XClimaxWarning)
        yield


def _ds(calendar: str, nt: int = 6, *, freq: str = "12h", start: str = "2100-02-27", grid=(8, 16), **kw) -> xr.Dataset:
    cal = None if calendar == "datetime64" else calendar
    return synthetic_dataset(nt, variables=["2m_temperature"], grid=grid, constants=False, freq=freq, start=start,
                             calendar=cal, **kw)


def _model(grid=(8, 16)) -> xclimax.ClimaX:
    model = xclimax.ClimaX(["2m_temperature"], img_size=grid, **TINY)
    model.stats = {"2m_temperature": (285.0, 10.0)}
    return model


def _later(t, hours: float):
    """The oracle: ``t + hours`` by cftime's (or numpy's) own arithmetic."""
    if isinstance(t, np.datetime64):
        return t + np.timedelta64(int(hours * 3600), "s")
    return t + datetime.timedelta(hours=hours)


def _ymd(t) -> tuple[int, int, int]:
    if isinstance(t, np.datetime64):
        t = pd.Timestamp(t)
    return (t.year, t.month, t.day)


def _same_calendar(values: np.ndarray, like: np.ndarray) -> None:
    """Every value has the type (datetime64) or the calendar (cftime) of ``like``."""
    values, like = np.asarray(values), np.asarray(like)
    if like.dtype.kind == "M":
        assert values.dtype.kind == "M", values.dtype
    else:
        assert values.dtype == object
        assert {(type(v), v.calendar) for v in values.ravel()} == {(type(like.flat[0]), like.flat[0].calendar)}


def _area_weights(lat: np.ndarray) -> np.ndarray:
    """Cell areas of an equiangular grid of cell centres."""
    d = lat[1] - lat[0]
    return np.sin(np.deg2rad(lat + d / 2)) - np.sin(np.deg2rad(lat - d / 2))


def _dayofyear(t) -> int:
    return pd.Timestamp(t).day_of_year if isinstance(t, np.datetime64) else t.dayofyr


# --------------------------------------------------------------------------- forecast


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("calendar", ALL)
def test_forecast_valid_time_in_the_input_calendar(calendar, backend):
    ds = as_backend(_ds(calendar), backend)
    times = ds.time.values
    with raise_if_dask_computes():
        fc = xclimax.forecast(ds, _model(), lead_time="24h", steps=2)
    assert (fc.time.values == times).all()
    _same_calendar(fc.time.values, times)
    _same_calendar(fc.valid_time.values, times)
    expect = np.array([[_later(t, 24 * k) for k in (1, 2)] for t in times])
    assert (fc.valid_time.values == expect).all()
    assert _ymd(fc.valid_time.values[2, 0]) == AFTER_FEB_28[calendar]  # init 2100-02-28 00:00
    assert (fc.lead_time.values == np.array([24, 48], "timedelta64[h]")).all()
    out = fc["2m_temperature"].values
    assert out.shape == (6, 2, 8, 16) and np.isfinite(out).all()


def test_downscale_keeps_the_calendar():
    coarse = _ds("360_day", 3, start="2100-02-29", grid=(8, 16))
    model = _model(grid=(16, 32))
    model.metadata["task"] = "downscale"
    out = xclimax.downscale(coarse, model)
    assert (out.time.values == coarse.time.values).all()
    _same_calendar(out.time.values, coarse.time.values)


@pytest.fixture(scope="module")
def projection_model():
    with xclimax.set_options(progress=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", xclimax.XClimaxWarning)
        ds = xclimax.tutorial.open_climatebench(["ssp126", "ssp585"], grid=(8, 16), calendar="noleap")
        base = xclimax.ClimaX(["CO2"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
        model, _ = xclimax.finetune(ds, base, task="projection", outputs=["tas"], history=3, max_steps=1)
    return model


@pytest.mark.parametrize("calendar", ["standard", "noleap", "all_leap", "360_day", "julian"])
def test_project_keeps_the_calendar(projection_model, calendar):
    ds = xclimax.tutorial.open_climatebench(["ssp245"], grid=(8, 16), calendar=calendar).isel(time=slice(-8, None))
    out = xclimax.project(ds.sel(scenario="ssp245"), projection_model)
    assert (out.time.values == ds.time.values).all()
    _same_calendar(out.time.values, ds.time.values)
    assert np.isfinite(out["tas"].isel(time=slice(2, None)).values).all()


# --------------------------------------------------------------------------- baselines and scores


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("calendar", ALL)
def test_persistence_and_evaluate_pair_valid_times_in_the_calendar(calendar, backend):
    ds = _ds(calendar, 8, freq="1D", start="2100-02-25", grid=(4, 8))
    data = as_backend(ds, backend)
    with raise_if_dask_computes():
        fc = xclimax.baselines.persistence(data, ["24h", "48h"])
        scores = xclimax.evaluate(fc, data, metrics=["rmse", "bias"])
    times = ds.time.values
    _same_calendar(fc.valid_time.values, times)
    assert (fc.valid_time.values == np.array([[_later(t, h) for h in (24, 48)] for t in times])).all()
    x = ds["2m_temperature"].values.astype(np.float64)
    w = _area_weights(ds.lat.values)[:, None]
    for k, lead in enumerate((1, 2)):  # daily data, regular in their own calendar: a lead of n days is n steps
        err = x[:-lead] - x[lead:]
        den = w.sum() * x.shape[2] * err.shape[0]
        rmse = np.sqrt((w * err**2).sum() / den)
        bias = (w * err).sum() / den
        assert float(scores["2m_temperature"].sel(metric="rmse")[k]) == pytest.approx(rmse, rel=1e-4)
        assert float(scores["2m_temperature"].sel(metric="bias")[k]) == pytest.approx(bias, rel=1e-3, abs=1e-4)


def _two_years(calendar: str, grid=(2, 4), backend: str = "numpy") -> xr.Dataset:
    if calendar == "datetime64":
        n = int((np.datetime64("2103-01-01") - np.datetime64("2101-01-01")) / np.timedelta64(1, "D"))
    else:
        n = (cftime.datetime(2103, 1, 1, calendar=calendar) - cftime.datetime(2101, 1, 1, calendar=calendar)).days
    ds = _ds(calendar, n, freq="1D", start="2101-01-01", grid=grid)
    return ds.chunk(time=120) if backend == "dask" else ds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("calendar", ["standard", "noleap", "all_leap", "360_day", "julian", "datetime64"])
def test_dayofyear_climatology_follows_the_calendar(calendar, backend):
    ds = _two_years(calendar, backend=backend)
    with raise_if_dask_computes():
        clim = xclimax.baselines.climatology(ds)
    doy = np.array([_dayofyear(t) for t in ds.time.values])
    assert doy.max() == {"all_leap": 366, "360_day": 360}.get(calendar, 365)
    assert clim.dayofyear.values.tolist() == sorted(set(doy.tolist()))
    x = ds["2m_temperature"].values.astype(np.float64)
    expect = np.stack([x[doy == d].mean(0) for d in sorted(set(doy.tolist()))])
    np.testing.assert_allclose(clim["2m_temperature"].values, expect, rtol=1e-6)

    # the climatology as a forecast: its value on the day of year of each valid time
    init = ds.time[-5:]
    with raise_if_dask_computes():
        fc = xclimax.baselines.climatology_forecast(clim, init, ["24h", "72h"])
    _same_calendar(fc.valid_time.values, ds.time.values)
    for i, t in enumerate(init.values):
        for k, hours in enumerate((24, 72)):
            want = clim["2m_temperature"].sel(dayofyear=_dayofyear(_later(t, hours))).values
            np.testing.assert_allclose(fc["2m_temperature"].values[i, k], want, rtol=1e-6)


@pytest.mark.parametrize("calendar", ["360_day", "noleap"])
def test_smoothed_climatology_wraps_around_the_calendar_year(calendar):
    ds = _two_years(calendar)
    clim = xclimax.baselines.climatology(ds, smooth=5)
    year = 360 if calendar == "360_day" else 365
    doy = np.array([_dayofyear(t) for t in ds.time.values])
    x = ds["2m_temperature"].values.astype(np.float64)
    daily = np.stack([x[doy == d].mean(0) for d in range(1, year + 1)])
    expect = np.mean([np.roll(daily, s, axis=0) for s in range(-2, 3)], axis=0)  # cyclic over the calendar year
    assert clim.dayofyear.values.tolist() == list(range(1, year + 1))
    np.testing.assert_allclose(clim["2m_temperature"].values, expect, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_acc_with_a_dayofyear_climatology(calendar, backend):
    ds = _two_years(calendar, grid=(4, 8), backend=backend)
    clim = xclimax.baselines.climatology(ds.isel(time=slice(None, -30)), smooth=15)
    truth = ds.isel(time=slice(-30, None))
    fc = xclimax.baselines.persistence(truth, ["24h", "48h"])
    scores = xclimax.evaluate(fc, truth, metrics=["acc", "rmse"], climatology=clim).compute()
    acc = scores["2m_temperature"].sel(metric="acc").values
    assert acc.shape == (2,) and np.isfinite(acc).all() and (np.abs(acc) <= 1).all()
    assert scores.attrs["climatology"] == "dayofyear"


@pytest.mark.parametrize("calendar", ["noleap", "360_day", "datetime64"])
def test_maps_title_dates_in_the_calendar(calendar):
    ds = _ds(calendar, freq="1D", start="2100-02-26", grid=(4, 8))
    fc = xclimax.baselines.persistence(ds, "24h")
    init = ds.time.values[2]  # 2100-02-28
    fig = xclimax.plot.maps(fc, ds, "2m_temperature", lead_time="24h", time=init)
    title = fig.get_suptitle()
    assert "init 2100-02-28 00:00" in title
    assert "valid {:04d}-{:02d}-{:02d} 00:00".format(*AFTER_FEB_28[calendar]) in title
    fig2 = xclimax.plot.maps(fc, ds, "2m_temperature", lead_time="24h", time="2100-02-28")
    assert fig2.get_suptitle() == title


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("calendar", ["noleap", "360_day", "julian"])
def test_compute_stats_on_a_cftime_axis(calendar, backend):
    ds = _ds(calendar, 8, freq="1D", start="2100-02-25", grid=(4, 8))
    x = ds["2m_temperature"].values.astype(np.float64)
    with raise_if_dask_computes():
        stats = xclimax.compute_stats(as_backend(ds, backend), variables=["2m_temperature"])
    assert float(stats["mean"].sel(variable="2m_temperature")) == pytest.approx(x.mean(), rel=1e-6)
    assert float(stats["std"].sel(variable="2m_temperature")) == pytest.approx(x.std(), rel=1e-5)
    # a training period given as date strings, read in the data's calendar
    part = xclimax.compute_stats(as_backend(ds, backend), variables=["2m_temperature"], time=slice("2100-02-27", None))
    first = [_ymd(t) for t in ds.time.values].index((2100, 2, 27))
    assert float(part["mean"].sel(variable="2m_temperature")) == pytest.approx(x[first:].mean(), rel=1e-6)


# --------------------------------------------------------------------------- training


def _n_pairs(times: np.ndarray, hours: float) -> int:
    """Independent count of (t, t + hours) pairs on the axis, by cftime's arithmetic."""
    later = {_later(t, hours) for t in times}
    return sum(t in later for t in times)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_pretrain_and_finetune_find_every_pair_of_the_calendar(calendar, backend):
    # Feb 25 to early March 2000: Feb 29 exists in the gregorian calendar, not in noleap; Feb 30 in 360_day
    ds = _ds(calendar, 9, freq="1D", start="2000-02-25")
    n = _n_pairs(ds.time.values, 24)
    assert n == 8
    data = as_backend(ds, backend)
    model, history = xclimax.pretrain(data, lead_times=("24h", "24h"), batch_size=1, epochs=1, prefetch=0,
                                      model_kwargs=TINY)
    assert history.sizes["step"] == n  # one pair per step
    assert pd.Timedelta(model.metadata["time_step"]) == pd.Timedelta("24h")
    tuned, history = xclimax.finetune(data, model, lead_time="24h", batch_size=1, epochs=1, prefetch=0)
    assert history.sizes["step"] == n
    # validation on a date range of the calendar (Feb 30 exists in 360_day only)
    _, history = xclimax.finetune(data, model, lead_time="24h", batch_size=1, epochs=1, prefetch=0,
                                  val=slice("2000-03-02", None))
    in_val = [_ymd(t) >= (2000, 3, 2) for t in ds.time.values]
    assert history.sizes["step"] == n - sum(in_val)  # pairs with both ends in the training period
    assert history.sizes["val_step"] >= 1


def test_pretrain_mixes_calendars_across_sources():
    sources = {
        "noleap": _ds("noleap", 6, freq="1D", start="2000-02-26"),
        "360_day": _ds("360_day", 7, freq="1D", start="2000-02-27"),
        "gregorian": _ds("datetime64", 5, freq="1D", start="2000-02-27"),
    }
    n = sum(_n_pairs(s.time.values, 24) for s in sources.values())
    assert n == 5 + 6 + 4
    model, history = xclimax.pretrain(sources, lead_times="24h", batch_size=1, epochs=1, prefetch=0, model_kwargs=TINY)
    assert history.sizes["step"] == n


# --------------------------------------------------------------------------- coordinates


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_cftime_and_string_coordinates_pass_through(backend):
    ref = cftime.Datetime360Day(1850, 1, 1)
    ds = _ds("360_day").assign_coords(reference_time=ref, member_id="r1i1p1f1")
    ds.reference_time.attrs["long_name"] = "reference time"
    data = as_backend(ds, backend)
    report = data.climax.check(variables=["2m_temperature"])
    assert report.ok
    with raise_if_dask_computes():
        fc = xclimax.forecast(data, _model(), lead_time="12h")
    assert fc["reference_time"].item() == ref and fc["reference_time"].attrs == {"long_name": "reference time"}
    assert fc["member_id"].item() == "r1i1p1f1"
    climax_names = xclimax.forecast(data, _model(), lead_time="12h", names="climax")
    assert climax_names["reference_time"].item() == ref and climax_names["member_id"].item() == "r1i1p1f1"
    assert xclimax.baselines.persistence(data, "12h")["member_id"].item() == "r1i1p1f1"
    stats = xclimax.compute_stats(data, variables=["2m_temperature"])
    assert np.isfinite(float(stats["mean"].sel(variable="2m_temperature")))
    _, history = xclimax.pretrain(data, lead_times="12h", batch_size=2, max_steps=1, prefetch=0, model_kwargs=TINY)
    assert history.sizes["step"] == 1


def test_string_member_dimension_passes_through():
    ds = xr.concat([_ds("noleap", seed=0), _ds("noleap", seed=1)], dim="member_id")
    ds = ds.assign_coords(member_id=["r1i1p1f1", "r2i1p1f1"])
    fc = xclimax.forecast(ds, _model(), lead_time="12h")
    assert fc["member_id"].values.tolist() == ["r1i1p1f1", "r2i1p1f1"]
    assert fc["2m_temperature"].dims[:2] == ("member_id", "time")
    _same_calendar(fc.valid_time.values, ds.time.values)


# --------------------------------------------------------------------------- near-surface heights


def _cmip_tas(height: float) -> xr.Dataset:
    ds = synthetic_dataset(4, variables=["2m_temperature"], grid=(8, 16), style="cmip", calendar="360_day")
    return ds.assign_coords(height=ds["height"].copy(data=np.float64(height)))


def test_screen_level_temperature_at_1p5_m_is_found_and_recorded():
    ds = _cmip_tas(1.5)  # HadCM3 / UKESM "tas"
    report = ds.climax.check(variables=["2m_temperature"])
    assert report.ok, report
    assert "1.5 m" in report.found["2m_temperature"].describe()
    fc = xclimax.forecast(ds, _model(), lead_time="6h")
    assert float(fc["height"]) == 1.5 and fc["height"].attrs["units"] == "m"
    assert fc["tas"].attrs["height_m"] == 1.5
    # training reads the same field
    _, history = xclimax.pretrain(ds, lead_times="6h", batch_size=2, max_steps=1, prefetch=0, model_kwargs=TINY)
    assert history.sizes["step"] == 1


def test_two_metre_temperature_and_ten_metre_wind_record_their_heights():
    ds = synthetic_dataset(3, variables=["2m_temperature"], grid=(8, 16), style="cmip")
    fc = xclimax.forecast(ds, _model(), lead_time="6h")
    assert float(fc["height"]) == 2.0 and fc["tas"].attrs["height_m"] == 2.0
    wind = synthetic_dataset(3, variables=["10m_u_component_of_wind"], grid=(8, 16), style="cmip")
    wind = wind.assign_coords(height=xr.Variable((), 10.0, {"standard_name": "height", "units": "m"}))
    assert wind.climax.check(variables=["10m_u_component_of_wind"]).ok
    found = wind.assign_coords(height=wind["height"].copy(data=np.float64(2.0)))
    assert not found.climax.check(variables=["10m_u_component_of_wind"]).ok  # a 2 m wind is not a 10 m wind


def test_variable_map_overrides_a_height_rejection():
    ds = _cmip_tas(5.0)
    report = ds.climax.check(variables=["2m_temperature"])
    assert not report.ok and "5" in report.missing["2m_temperature"]
    with pytest.warns(xclimax.XClimaxWarning, match="5 m"):
        report = ds.climax.check(variables=["2m_temperature"], variable_map={"2m_temperature": "tas"})
    assert report.ok
    fc = xclimax.forecast(ds, _model(), lead_time="6h", variable_map={"2m_temperature": "tas"})
    assert float(fc["height"]) == 5.0 and fc["tas"].attrs["height_m"] == 5.0
