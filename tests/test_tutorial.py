"""The bundled demo dataset and demo model (xclimax.tutorial)."""

from __future__ import annotations

import os

import cf_xarray  # noqa: F401  (registers ds.cf)
import numpy as np
import pytest

import xclimax
from xclimax import tutorial
from xclimax.cf.tokens import find_variables, to_array
from xclimax.exceptions import DataError
from xclimax.vocab import VARIABLES

#: The ClimaX variables the demo dataset maps to: 5 fields x 3 levels, 3 surface fields, 2 constants.
DEMO_VARIABLES = {
    f"{base}_{level}"
    for base in ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind", "specific_humidity"]
    for level in (250, 500, 850)
} | {"2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind", "land_sea_mask", "orography"}


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A private cache directory for the duration of the session."""
    path = tmp_path_factory.mktemp("xclimax_cache")
    old = os.environ.get("XCLIMAX_DATA_DIR")
    os.environ["XCLIMAX_DATA_DIR"] = str(path)
    yield path
    if old is None:
        del os.environ["XCLIMAX_DATA_DIR"]
    else:
        os.environ["XCLIMAX_DATA_DIR"] = old


@pytest.fixture(scope="session")
def demo(cache):
    return tutorial.open_dataset(years=[2000, 2001], days=1.5)


TOL_THICKNESS = 3.0  # K, two-level estimate of the layer mean


def test_schema(demo):
    assert dict(demo.sizes) == {"time": 12, "level": 3, "lat": 32, "lon": 64}
    assert demo["level"].values.tolist() == [250, 500, 850] == list(tutorial.DEMO_LEVELS)
    np.testing.assert_allclose(demo["lat"].values, -87.1875 + 5.625 * np.arange(32))
    np.testing.assert_allclose(demo["lon"].values, 5.625 * np.arange(64))
    assert (np.diff(demo["time"].values[:6]) == np.timedelta64(6, "h")).all()
    assert "synthetic" in demo.attrs["title"].lower() and "xclimax.atmosphere" in demo.attrs["source"]
    assert len(demo.data_vars) == 10
    for name in ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind", "specific_humidity"]:
        assert demo[name].dims == ("time", "level", "lat", "lon") and demo[name].dtype == np.float32
    for name in ["2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind"]:
        assert demo[name].dims == ("time", "lat", "lon")
    assert demo["land_sea_mask"].dims == demo["geopotential_at_surface"].dims == ("lat", "lon")
    # CF annotations as cf-xarray sees them
    assert demo.cf.axes == {"X": ["lon"], "Y": ["lat"], "Z": ["level"], "T": ["time"]}
    sn = demo.cf.standard_names
    assert sn["geopotential"] == ["geopotential"] and sn["surface_geopotential"] == ["geopotential_at_surface"]
    assert sorted(sn["air_temperature"]) == ["2m_temperature", "temperature"]
    assert sn["land_binary_mask"] == ["land_sea_mask"] and sn["specific_humidity"] == ["specific_humidity"]
    assert demo["geopotential"].attrs["units"] == "m2 s-2" and demo["level"].attrs["units"] == "hPa"
    # the CF mapping finds exactly the demo variables (geopotential_at_surface -> orography in m)
    found = find_variables(demo)
    assert set(found) == DEMO_VARIABLES | {"lattitude"}  # latitude comes from the coordinate
    da = to_array(demo, sorted(DEMO_VARIABLES))
    assert da.sizes["variable"] == 20 and bool(np.isfinite(da).all())
    assert float(da.sel(variable="orography").max()) == pytest.approx(float(demo["geopotential_at_surface"].max()) / 9.80665)


def test_value_ranges(demo):
    z500 = demo["geopotential"].sel(level=500)
    assert 4.4e4 < float(z500.min()) and float(z500.max()) < 6.3e4
    t850 = demo["temperature"].sel(level=850)
    assert 225 < float(t850.min()) and float(t850.max()) < 312
    assert 210 < float(demo["2m_temperature"].min()) and float(demo["2m_temperature"].max()) < 330
    for name in ["10m_u_component_of_wind", "10m_v_component_of_wind"]:
        assert 3 < float(abs(demo[name]).max()) < 40
    u = demo["u_component_of_wind"]
    assert float(u.sel(level=250).max()) > float(u.sel(level=850).max()) > 5  # jets strongest aloft
    q = demo["specific_humidity"]
    assert 0 < float(q.min()) and float(q.max()) < 0.03
    assert float(q.sel(level=850).mean()) > float(q.sel(level=500).mean()) > float(q.sel(level=250).mean())
    assert set(np.unique(demo["land_sea_mask"])) == {0.0, 1.0}
    # hydrostatic consistency: the 500-850 hPa thickness matches the layer-mean temperature
    thick = demo["geopotential"].sel(level=500) - demo["geopotential"].sel(level=850)
    t_layer = demo["temperature"].sel(level=[500, 850]).mean("level")
    r = thick / (287.05 * np.log(850 / 500))
    assert float(abs(r - t_layer).max()) < TOL_THICKNESS
    # north-south temperature gradient: tropics warmer than poles
    assert float(t850.sel(lat=slice(-10, 10)).mean()) > float(t850.sel(lat=slice(60, 90)).mean()) + 15


def test_deterministic_and_cached(demo, cache):
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and all(f.endswith(".nc") for f in files)  # one per year, no temp files left
    again = tutorial.open_dataset(years=[2000, 2001], days=1.5)  # from the cache
    assert again.identical(demo)
    fresh = tutorial.open_dataset(years=[2001], days=1.5, cache=False)  # recomputed, one year alone
    for name in demo.data_vars:
        a = demo[name].sel(time="2001") if "time" in demo[name].dims else demo[name]
        np.testing.assert_array_equal(a.values, fresh[name].values)


def test_split(demo):
    parts = tutorial.split(demo)
    assert set(parts["train"]["time"].dt.year.values) == {2000}
    assert set(parts["test"]["time"].dt.year.values) == {2001}
    assert tutorial.SPLITS["test"].start.startswith(str(tutorial.DEMO_YEARS[-1]))
    with pytest.raises(DataError, match="train_years"):
        tutorial.split(demo.drop_attrs())


def test_bad_arguments():
    with pytest.raises(DataError, match="unknown tutorial dataset"):
        tutorial.open_dataset("era5")
    with pytest.raises(DataError, match="years"):
        tutorial.open_dataset(years=0)
    with pytest.raises(DataError, match="years"):
        tutorial.open_dataset(years=[2000, 2000])


def test_chunks(cache):
    ds = tutorial.open_dataset(years=[2000, 2001], days=1.5, chunks={"time": 4})
    assert ds["temperature"].chunks[0] == (4, 4, 4)


@pytest.fixture(scope="module")
def model():
    return tutorial.load_model()


def test_load_model(model):
    assert model.img_size == (32, 64) and model.patch_size == 2
    assert set(model.variables) == DEMO_VARIABLES | {"lattitude"}
    assert set(model.stats) == set(model.variables)
    dynamic = {v for v in model.variables if VARIABLES[v]["kind"] != "constant"}
    assert set(model.metadata["out_variables"]) == dynamic and len(dynamic) == 18
    assert model.metadata["time_step_hours"] == 6 and "SYNTHETIC" in model.metadata["description"]
    assert model.metadata["training"]["data"].startswith(f"xclimax.tutorial.open_dataset() generator v{tutorial.VERSION}")
    assert model.metadata["training"]["script"] == "scripts/train_demo_model.py"
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert os.path.getsize(tutorial.DEMO_MODEL_PATH) < 10e6
    assert model.stats["temperature_850"][0] == pytest.approx(275, abs=15)


@pytest.fixture(scope="module")
def held_out(cache):
    """The first 40 days of the held-out year (the same data as the full year's first 40 days)."""
    return tutorial.open_dataset(years=[tutorial.DEMO_YEARS[-1]], days=40)


SCORED = [("geopotential", 500), ("temperature", 850), ("2m_temperature", None), ("10m_u_component_of_wind", None),
          ("10m_v_component_of_wind", None)]


def _rmse(a, b, lat):
    """Latitude-weighted RMSE over all samples and grid points, in numpy."""
    w = np.cos(np.deg2rad(lat))[:, None]
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2 * (w / w.mean()))))


def test_model_beats_persistence_at_24h(model, held_out):
    """24 h forecasts (public API) of the held-out year beat persistence for each ClimaX output."""
    n = held_out.sizes["time"] - 4
    init = held_out.isel(time=slice(0, n, 2))  # every 12 h; the model never saw this year
    fc = xclimax.forecast(init, model, lead_time="24h")
    assert fc.sizes["lead_time"] == 1
    np.testing.assert_array_equal(fc["valid_time"].values[:, 0], held_out["time"].values[4 : 4 + n : 2])
    lat = held_out["lat"].values
    ratios = {}
    for var, level in SCORED:
        sel = {} if level is None else {"level": level}
        x = held_out[var].sel(**sel).values.astype(np.float64)  # time, lat, lon
        truth, persistence = x[4 : 4 + n : 2], x[0:n:2]
        pred = fc[var].sel(**sel).isel(lead_time=0).values
        ratios[f"{var}{level or ''}"] = _rmse(pred, truth, lat) / _rmse(persistence, truth, lat)
    assert max(ratios.values()) < 1.0, ratios


def test_rollout_on_demo(model, held_out):
    """Two autoregressive 24 h steps: the second step starts from the first step's forecast."""
    init = held_out.isel(time=[0, 8])
    fc = xclimax.forecast(init, model, lead_time="24h", steps=2)
    np.testing.assert_array_equal(fc["lead_time"].values, np.array([24, 48], "timedelta64[h]"))
    assert set(fc.data_vars) >= {"geopotential", "2m_temperature", "10m_u_component_of_wind"}
    assert fc["geopotential"].dims == ("time", "lead_time", "level", "lat", "lon")
    np.testing.assert_array_equal(fc["valid_time"].values[:, 1], held_out["time"].values[[8, 16]])
    for name in fc.data_vars:
        assert bool(np.isfinite(fc[name]).all()), name
    z = fc["geopotential"].sel(level=500)
    assert float(abs(z.isel(lead_time=1) - z.isel(lead_time=0)).mean()) > 1.0  # the state moves on
    # the 48 h forecast from day 0 equals one 24 h step from the 24 h forecast (re-fed with the constants)
    one = fc.isel(lead_time=0, drop=True).drop_vars("valid_time", errors="ignore")
    one = one.assign_coords(time=fc["valid_time"].values[:, 0])
    for name in ("land_sea_mask", "geopotential_at_surface"):
        one[name] = held_out[name]
    again = xclimax.forecast(one, model, lead_time="24h")
    np.testing.assert_allclose(again["geopotential"].isel(lead_time=0).values, fc["geopotential"].isel(lead_time=1).values,
                               rtol=1e-5, atol=1e-2)
