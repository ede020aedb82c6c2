"""Downscaling (issue 10): ``finetune(task="downscale")``, ``downscale`` and ``ds.climax.downscale``.

Skill is measured against bilinear interpolation computed independently (xarray's ``interp``,
periodic in longitude), with latitude-weighted RMSE computed here in numpy, on held-out periods:
the demo data coarsened 2x, and real climate-model output (HadCM3 1.5 m temperature, 360-day
calendar, limited area of odd size) shipped by the ``iris-sample-data`` package.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xclimax
from tests import raise_if_dask_computes
from xclimax.exceptions import CheckpointError, DataError, GridError, XClimaxWarning
from xclimax.testing import synthetic_dataset

FIXED = ["geopotential_at_surface", "land_sea_mask"]


def _bilinear(coarse: xr.Dataset, lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    """Independent bilinear baseline: xarray's interp, periodic in longitude, constant towards the poles."""
    c = coarse.compute()
    padded = xr.concat([c.isel(lon=[-1]).assign_coords(lon=c.lon[-1:] - 360), c,
                        c.isel(lon=[0]).assign_coords(lon=c.lon[:1] + 360)], dim="lon")
    out = padded.interp(lat=np.clip(lat, c.lat.values[0], c.lat.values[-1]), lon=lon)
    return out.assign_coords(lat=lat)


def _rmse(pred: xr.DataArray, truth: xr.DataArray) -> float:
    """ClimaX's latitude-weighted RMSE: per-time sqrt(mean(w * err^2)), w = cos(lat)/mean(cos(lat)), averaged."""
    w = np.cos(np.deg2rad(truth["lat"].values))
    w = w / w.mean()
    err = np.asarray(pred.transpose(*truth.dims).values, float) - np.asarray(truth.values, float)
    return float(np.sqrt((err**2 * w[:, None]).mean(axis=(-2, -1))).mean())


# ----------------------------------------------------------------------------- demo data: skill


@pytest.fixture(scope="module")
def demo():
    """Demo 2m and 850 hPa temperature; coarse = 2x2 block means; train 2000-2001, held-out 2002 (120 days each)."""
    ds = xclimax.tutorial.open_dataset(days=120)  # (the same cached years as tests/test_skill.py)
    fine = ds[["2m_temperature", "temperature", *FIXED]].sel(level=[850])
    coarse = fine.drop_vars(FIXED).coarsen(lat=2, lon=2).mean(keep_attrs=True)
    parts = {k: xclimax.tutorial.split(v) for k, v in (("fine", fine), ("coarse", coarse))}
    torch.manual_seed(0)
    base = xclimax.ClimaX(["2m_temperature", "temperature_850", "orography", "land_sea_mask", "lattitude"],
                          img_size=(32, 64), patch_size=4, embed_dim=64, depth=2, decoder_depth=1, num_heads=4,
                          drop_path=0.0, drop_rate=0.0)
    model, history = xclimax.finetune(parts["coarse"]["train"], base, task="downscale",
                                      target=parts["fine"]["train"], batch_size=16, max_steps=120, lr=1e-3,
                                      warmup_steps=12, seed=0)
    return model, history, parts


def test_finetuned_downscaling_beats_bilinear_interpolation_on_the_held_out_year(demo):
    model, history, parts = demo
    assert model.metadata["task"] == "downscale" and model.metadata["out_variables"] == ["2m_temperature",
                                                                                         "temperature_850"]
    assert set(model.metadata["fine_inputs"]) == {"orography", "land_sea_mask", "lattitude"}
    assert list(history["variable"].values) == ["2m_temperature", "temperature_850"]
    coarse, fine = parts["coarse"]["test"], parts["fine"]["test"]
    down = xclimax.downscale(coarse, model, static=fine[FIXED])
    base = _bilinear(coarse, fine["lat"].values, fine["lon"].values)
    assert down["2m_temperature"].dims == ("time", "lat", "lon") and down["temperature"].dims[1] == "level"
    for var in ("2m_temperature", "temperature"):
        ours, interp = _rmse(down[var], fine[var]), _rmse(base[var], fine[var])
        print(f"demo {var}: xclimax {ours:.3f}, bilinear {interp:.3f} (latitude-weighted RMSE, K)")
        assert ours < 0.85 * interp, (var, ours, interp)
    # CF-annotated, in the input's names, units and calendar
    assert down["2m_temperature"].attrs["standard_name"] == "air_temperature"
    assert down["2m_temperature"].attrs["units"] == "K"
    np.testing.assert_array_equal(down["time"].values, coarse["time"].values)


def test_dask_input_is_lazy_keeps_its_calendar_and_matches_numpy(demo):
    model, _, parts = demo
    coarse = parts["coarse"]["test"].isel(time=slice(0, 12)).convert_calendar("noleap")
    static = parts["fine"]["test"][FIXED]
    eager = xclimax.downscale(coarse, model, static=static)
    with raise_if_dask_computes():
        lazy = xclimax.downscale(coarse.chunk({"time": 5}), model, static=static.chunk(), batch_size=5)
    assert lazy["2m_temperature"].chunks is not None
    assert lazy["time"].dt.calendar == "noleap"
    np.testing.assert_array_equal(lazy["time"].values, coarse["time"].values)
    for var in ("2m_temperature", "temperature"):
        np.testing.assert_allclose(lazy[var].values, eager[var].values, rtol=1e-5, atol=1e-4)


def test_accessor_and_target_grid(demo):
    model, _, parts = demo
    coarse, fine = parts["coarse"]["test"].isel(time=slice(0, 4)), parts["fine"]["test"]
    on_model = coarse.climax.downscale(model, static=fine[FIXED])
    direct = xclimax.downscale(coarse, model, static=fine[FIXED])
    del on_model.attrs["history"], direct.attrs["history"]  # (time stamps)
    xr.testing.assert_identical(on_model, direct)
    # a 2-degree target over Europe, north to south: bilinear from the model grid, in the target's conventions
    target = xr.Dataset(coords={"latitude": ("latitude", np.arange(60.0, 35.0, -2.0), {"units": "degrees_north"}),
                                "longitude": ("longitude", np.arange(5.0, 40.0, 2.0), {"units": "degrees_east"})})
    out = xclimax.downscale(coarse, model, static=fine[FIXED], target_grid=target)
    assert out["2m_temperature"].dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(out["latitude"].values, target["latitude"].values)
    ref = on_model["2m_temperature"].interp(lat=target["latitude"].values, lon=target["longitude"].values)
    np.testing.assert_allclose(out["2m_temperature"].values, ref.values, rtol=1e-6)
    point = xclimax.downscale(coarse, model, static=fine[FIXED], target_grid=xr.Dataset(coords={"lat": [50.0],
                                                                                               "lon": [10.0]}))
    np.testing.assert_allclose(point["2m_temperature"].values[:, 0, 0],
                               on_model["2m_temperature"].interp(lat=50.0, lon=10.0).values, rtol=1e-6)


def test_limited_area_odd_sized_downscaling_and_a_target_beyond_the_model_grid():
    glob = synthetic_dataset(12, variables=["2m_temperature"], grid=(32, 64), constants=False, seed=2)
    fine = glob.isel(lat=slice(10, 19), lon=slice(20, 33))  # 9 x 13 points
    coarse = glob.isel(lat=slice(9, 21), lon=slice(19, 35)).coarsen(lat=2, lon=2).mean(keep_attrs=True)
    base = xclimax.ClimaX(["2m_temperature"], img_size=(9, 13), embed_dim=16, depth=1, num_heads=2)
    model, _ = xclimax.finetune(coarse, base, task="downscale", target=fine, batch_size=4, max_steps=2)
    assert model.padded_size == (10, 14)
    np.testing.assert_allclose(model.metadata["grid"]["lat"], fine["lat"].values)
    down = xclimax.downscale(coarse, model)
    assert down["2m_temperature"].shape == (12, 9, 13) and np.isfinite(down["2m_temperature"].values).all()
    with pytest.raises(GridError) as info:  # a target beyond the model's grid would need extrapolation
        xclimax.downscale(coarse, model, target_grid=glob)
    assert "target grid (lat -90..90" in str(info.value) and "model grid (lat " in str(info.value)


def test_fine_only_inputs_come_from_static(demo):
    model, _, parts = demo
    coarse = parts["coarse"]["test"].isel(time=slice(0, 2))
    with pytest.raises(DataError, match="static="):
        xclimax.downscale(coarse, model)
    with pytest.raises(GridError, match="model's grid"):
        xclimax.downscale(coarse, model, static=parts["fine"]["test"][FIXED].coarsen(lat=2, lon=2).mean())


# ----------------------------------------------------------------------------- refusals and errors


def test_a_model_not_trained_for_downscaling_is_refused_or_warned_about():
    forecaster = xclimax.tutorial.load_model()
    coarse = synthetic_dataset(2, variables=["2m_temperature"], grid=(16, 32), constants=False)
    with pytest.raises(CheckpointError, match=f"trained for '{forecaster.metadata['task']}', not for downscaling") as info:
        xclimax.downscale(coarse, forecaster)
    assert "allow_other_tasks=True" in str(info.value) and "task='downscale'" in str(info.value)
    with pytest.warns(XClimaxWarning, match="not for downscaling"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*missing from the input.*", category=XClimaxWarning)
            out = xclimax.downscale(coarse, forecaster, allow_other_tasks=True, out_variables=["2m_temperature"])
    assert out["2m_temperature"].shape == (2, 32, 64)


def test_coarse_input_must_cover_the_model_grid(demo):
    model, _, parts = demo
    regional = parts["coarse"]["test"].isel(time=slice(0, 2)).sel(lat=slice(20, 60), lon=slice(200, 300))
    with pytest.raises(GridError) as info:
        xclimax.downscale(regional, model, static=parts["fine"]["test"][FIXED])
    text = str(info.value)
    assert "model grid (lat -90..90, all longitudes (global" in text
    assert "coarse input (lat 22.5..56.25, lon 199.688..300.938 (limited area" in text


def _pair_data(calendar: str, fine_start: int, n_coarse: int = 12, n_fine: int = 12):
    """Coarse and fine 2m temperature on daily times of ``calendar`` starting 27 Feb (leap days and 30 Feb)."""
    times = xr.date_range("2001-02-26", periods=40, freq="D", calendar=calendar, use_cftime=True)
    fine = synthetic_dataset(40, variables=["2m_temperature"], grid=(8, 16), constants=False, freq="D", seed=1)
    fine = fine.assign_coords(time=times)
    coarse = fine.coarsen(lat=2, lon=2).mean(keep_attrs=True)
    return coarse.isel(time=slice(0, n_coarse)), fine.isel(time=slice(fine_start, fine_start + n_fine))


@pytest.mark.parametrize("calendar", ["360_day", "noleap"])
def test_pairs_are_the_common_times_in_the_data_calendar(calendar, backend):
    coarse, fine = _pair_data(calendar, fine_start=3)  # 9 times in common
    if backend == "dask":
        coarse, fine = coarse.chunk({"time": 4}), fine.chunk({"time": 5})
    base = xclimax.ClimaX(["2m_temperature", "lattitude"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    model, history = xclimax.finetune(coarse, base, task="downscale", target=fine, batch_size=1, epochs=1,
                                      residual=False)
    assert history.sizes["step"] == 9  # one step per pair: the common times only
    assert model.metadata["calendar"] == calendar and model.metadata["residual"] is False
    out = xclimax.downscale(coarse, model)
    assert out["time"].dt.calendar == calendar and out.sizes["time"] == 12


def test_pairs_need_common_times_and_one_calendar():
    base = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    coarse, fine = _pair_data("360_day", fine_start=20)
    with pytest.raises(DataError, match="no time in common"):
        xclimax.finetune(coarse, base, task="downscale", target=fine, max_steps=1)
    coarse, _ = _pair_data("noleap", fine_start=0)
    _, fine = _pair_data("360_day", fine_start=0)
    with pytest.raises(DataError, match="'noleap' calendar.*'360_day' calendar"):
        xclimax.finetune(coarse, base, task="downscale", target=fine, max_steps=1)


def test_finetune_downscale_argument_errors():
    coarse, fine = _pair_data("standard", fine_start=0)
    base = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(DataError, match="target="):
        xclimax.finetune(coarse, base, task="downscale", max_steps=1)
    wrong = xclimax.ClimaX(["2m_temperature"], img_size=(16, 32), embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(GridError, match=r"img_size=\(8, 16\)"):
        xclimax.finetune(coarse, wrong, task="downscale", target=fine, max_steps=1)
    with pytest.raises(DataError, match="temperature_850"):
        xclimax.finetune(coarse, base, task="downscale", target=fine, outputs=["temperature_850"], max_steps=1)
    with pytest.raises(GridError, match="coarse input"):  # the coarse cells must cover the fine grid
        xclimax.finetune(coarse.isel(lat=slice(1, 3)), base, task="downscale", target=fine, max_steps=1)


# ----------------------------------------------------------------------------- real climate-model output


def test_downscaling_real_climate_model_output_beats_bilinear():
    """HadCM3 (A1B) 1.5 m temperature over North America: a 360-day calendar, a limited area of odd size.

    Coarse: 2x2 block means; the model grid is the 35 x 47 interior of the fine grid (covered by the
    coarse cells; padded to whole 4x4 patches inside the model). Trained on 1860-2039, scored on the
    held-out years 2040-2099.
    """
    sample = pytest.importorskip("iris_sample_data")
    import os

    path = os.path.join(sample.path, "A1B_north_america.nc")
    ds = xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))[["air_temperature"]].load()
    coarse = ds.isel(latitude=slice(0, 36), longitude=slice(0, 48)).coarsen(latitude=2, longitude=2).mean(keep_attrs=True)
    fine = ds.isel(latitude=slice(1, 36), longitude=slice(1, 48))
    train, test = fine.time.dt.year < 2040, fine.time.dt.year >= 2040
    torch.manual_seed(0)
    base = xclimax.ClimaX(["2m_temperature", "lattitude"], img_size=(35, 47), patch_size=4, embed_dim=64, depth=2,
                          decoder_depth=1, num_heads=4, drop_path=0.0, drop_rate=0.0)
    vmap = {"2m_temperature": "air_temperature"}
    model, _ = xclimax.finetune(coarse.sel(time=train), base, task="downscale", target=fine.sel(time=train),
                                variable_map=vmap, batch_size=16, max_steps=120, lr=1e-3, warmup_steps=12, seed=0)
    assert model.metadata["calendar"] == "360_day" and model.padded_size == (36, 48)
    down = xclimax.downscale(coarse.sel(time=test), model, variable_map=vmap)
    truth = fine.sel(time=test).rename(latitude="lat", longitude="lon")["air_temperature"]
    ours = _rmse(down["air_temperature"].rename(latitude="lat", longitude="lon"), truth)
    interp = _rmse(_bilinear(coarse.sel(time=test).rename(latitude="lat", longitude="lon"), truth.lat.values,
                             truth.lon.values)["air_temperature"], truth)
    print(f"HadCM3 1.5 m temperature 2040-2099: xclimax {ours:.3f}, bilinear {interp:.3f} (latitude-weighted RMSE, K)")
    assert ours < 0.8 * interp, (ours, interp)
    assert down["time"].dt.calendar == "360_day"
