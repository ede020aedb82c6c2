"""End-to-end tests of xclimax.forecast / downscale through the public API."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xclimax
from tests import as_backend, raise_if_dask_computes
from xclimax.cf.stats import stats_to_dict
from xclimax.exceptions import CFMappingError, DataError, GridError, XClimaxWarning
from xclimax.testing import synthetic_dataset

SURFACE = ["2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind"]
VARS = ["geopotential", "temperature", *SURFACE]


def _model(ds, variables=None, **kw):
    torch.manual_seed(0)
    cfg = dict(embed_dim=32, depth=1, num_heads=4, decoder_depth=1, drop_path=0.0, drop_rate=0.0)
    cfg.update(kw)
    found = xclimax.tokens.find_variables(ds, variables)
    model = xclimax.ClimaX(variables if variables is not None else list(found), **cfg).eval()
    model.stats = stats_to_dict(xclimax.compute_stats(ds, variables=list(found)))
    return model


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(6, variables=VARS, levels=(500, 850), constants=True)


def _manual_rollout(ds, model, lead_hours, steps, out_vars):
    """Independent computation: tokens -> normalise -> model -> denormalise, fed back by hand."""
    in_vars = [v for v in model.variables]
    arr = xclimax.tokens.to_array(ds, in_vars).transpose("time", "variable", "lat", "lon").values
    mean = np.array([model.stats[v][0] for v in in_vars])[:, None, None]
    std = np.array([model.stats[v][1] for v in in_vars])[:, None, None]
    x = torch.tensor((arr - mean) / std, dtype=torch.float32)
    outs = []
    for _ in range(steps):
        with torch.no_grad():
            y = model(x, torch.full((x.shape[0],), float(lead_hours)), in_vars, out_vars)
        o_mean = torch.tensor([model.stats[v][0] for v in out_vars])[:, None, None]
        o_std = torch.tensor([model.stats[v][1] for v in out_vars])[:, None, None]
        outs.append((y * o_std + o_mean).numpy())
        x = x.clone()
        for j, v in enumerate(out_vars):
            x[:, in_vars.index(v)] = y[:, j]
    return np.stack(outs, axis=1)  # time, step, var, lat, lon


def test_forecast_schema_and_values(ds, backend):
    model = _model(ds)
    data = as_backend(ds, backend)
    fc = xclimax.forecast(data, model, lead_time="6h", steps=3)
    if backend == "dask":
        assert fc["temperature"].chunks is not None
        fc = fc.compute()
    assert fc["temperature"].dims == ("time", "lead_time", "level", "lat", "lon")
    assert fc["2m_temperature"].dims == ("time", "lead_time", "lat", "lon")
    np.testing.assert_array_equal(fc["level"].values, [500, 850])
    assert fc["lead_time"].dtype.kind == "m"
    assert list(pd.to_timedelta(fc["lead_time"].values)) == [pd.Timedelta(h, "h") for h in (6, 12, 18)]
    np.testing.assert_array_equal(fc["valid_time"].values, fc["time"].values[:, None] + fc["lead_time"].values[None])
    for name in fc.data_vars:
        assert {"standard_name", "units", "long_name"} <= set(fc[name].attrs), name
    assert fc["geopotential"].attrs["units"] == "m2 s-2"
    assert "xclimax" in fc.attrs["source"] and fc.attrs["history"]

    out_vars = [v for v in model.variables if v not in ("land_sea_mask", "orography", "lattitude")]
    expected = _manual_rollout(ds, model, 6.0, 3, out_vars)
    j = out_vars.index("temperature_850")
    np.testing.assert_allclose(fc["temperature"].sel(level=850).values, expected[:, :, j], rtol=1e-5, atol=1e-3)
    j = out_vars.index("10m_v_component_of_wind")
    np.testing.assert_allclose(fc["10m_v_component_of_wind"].values, expected[:, :, j], rtol=1e-5, atol=1e-4)


def test_dask_forecast_is_lazy_and_batched(ds):
    model = _model(ds)
    with raise_if_dask_computes():
        fc = xclimax.forecast(ds.chunk(time=2), model, lead_time="6h", steps=2)
    assert fc["temperature"].chunks[0] == (2, 2, 2)
    fc2 = xclimax.forecast(ds.chunk(time=2), model, lead_time="6h", steps=2, batch_size=3)
    assert fc2["temperature"].chunks[0] == (3, 3)
    eager = xclimax.forecast(ds, model, lead_time="6h", steps=2)
    xr.testing.assert_allclose(fc.compute(), eager, rtol=1e-5)


def test_input_conventions_are_restored(ds, backend):
    model = _model(ds)
    ref = xclimax.forecast(ds, model, lead_time="6h")
    flipped = ds.isel(lat=slice(None, None, -1)).rename(lat="latitude", lon="longitude")
    flipped = flipped.assign_coords(longitude=((flipped.longitude + 180) % 360) - 180).sortby("longitude")
    fc = xclimax.forecast(as_backend(flipped, backend), model, lead_time="6h").compute()
    assert "latitude" in fc.dims and "longitude" in fc.dims
    assert fc.latitude.values[0] > fc.latitude.values[-1]
    assert fc.longitude.min() < 0
    back = fc.rename(latitude="lat", longitude="lon")
    back = back.assign_coords(lon=back.lon % 360).sortby("lon").sortby("lat")
    xr.testing.assert_allclose(back["temperature"], ref["temperature"], rtol=1e-5)


def test_extra_batch_dimension_is_kept(ds, backend):
    model = _model(ds)
    warm = ds.assign(temperature=ds["temperature"] + 1.0)
    varying = [v for v in ds.data_vars if "time" in ds[v].dims]
    ens = xr.concat([ds, warm], dim=pd.Index([0, 1], name="member"), data_vars=varying)
    assert "member" not in ens["land_sea_mask"].dims
    fc = xclimax.forecast(as_backend(ens, backend), model, lead_time="6h").compute()
    assert fc["temperature"].dims[0] == "member"
    for member, member_ds in ((0, ds), (1, warm)):
        single = xclimax.forecast(member_ds, model, lead_time="6h")
        xr.testing.assert_allclose(fc["temperature"].sel(member=member, drop=True), single["temperature"], rtol=1e-5)


def test_missing_inputs_warn_and_are_named(ds):
    model = _model(ds)
    partial = ds.drop_vars(["10m_u_component_of_wind"])
    with pytest.warns(XClimaxWarning, match="10m_u_component_of_wind"):
        fc = xclimax.forecast(partial, model, lead_time="6h", variables=["temperature_850"])
    assert list(fc.data_vars) == ["temperature"]
    assert fc.attrs["xclimax_missing_inputs"] == "10m_u_component_of_wind"


def test_rollout_needs_outputs_covering_inputs(ds):
    model = _model(ds)
    with pytest.raises(CFMappingError, match="not predicted"):
        xclimax.forecast(ds, model, lead_time="6h", steps=2, variables=["temperature_850"])


def test_grid_mismatch_and_regrid(ds, backend):
    model = _model(ds)
    coarse = synthetic_dataset(2, variables=VARS, levels=(500, 850), grid=(16, 32))
    with pytest.raises(GridError, match="regrid="):
        xclimax.forecast(coarse, model, lead_time="6h")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XClimaxWarning)
        fc = xclimax.forecast(as_backend(coarse, backend), model, lead_time="6h", regrid="bilinear").compute()
        on_model = xclimax.forecast(as_backend(coarse, backend), model, lead_time="6h", regrid="bilinear",
                                    output_grid="model").compute()
    # by default the forecast comes back on the input's grid; output_grid="model" keeps the model's
    assert fc.sizes["lat"] == 16 and fc.sizes["lon"] == 32
    np.testing.assert_array_equal(fc["lat"].values, coarse["lat"].values)
    assert on_model.sizes["lat"] == 32 and on_model.sizes["lon"] == 64
    assert np.isfinite(fc["temperature"]).all()
    # oracle: the model-grid forecast regridded back with the same bilinear weights
    back = xclimax.grid.regrid(on_model, coarse["lat"].values, coarse["lon"].values, method="bilinear")
    xr.testing.assert_allclose(fc["temperature"], back["temperature"].transpose(*fc["temperature"].dims), rtol=1e-5)


def test_bad_input_is_rejected_before_work(ds):
    model = _model(ds)
    with pytest.raises(ValueError, match="lead_time"):
        xclimax.forecast(ds, model, lead_time="soon")
    with pytest.raises(ValueError, match="positive"):
        xclimax.forecast(ds, model, lead_time="-6h")
    with pytest.raises(ValueError, match="steps"):
        xclimax.forecast(ds, model, lead_time="6h", steps=0)
    nan = ds.copy(deep=True)
    nan["temperature"][0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        xclimax.forecast(nan, model, lead_time="6h")
    nostats = _model(ds)
    nostats.stats = {}
    with pytest.raises(DataError, match="compute_stats"):
        xclimax.forecast(ds, nostats, lead_time="6h")
    with pytest.raises(CFMappingError, match="none of the model"):
        sst = ds["2m_temperature"].assign_attrs(standard_name="sea_surface_temperature")
        xclimax.forecast(xr.Dataset({"sst": sst}), model, lead_time="6h")


def test_forecast_does_not_modify_input(ds):
    model = _model(ds)
    before = ds.copy(deep=True)
    xclimax.forecast(ds, model, lead_time="6h")
    xr.testing.assert_identical(ds, before)


def test_cmip_style_input():
    ds = synthetic_dataset(4, variables=["geopotential", "temperature"], levels=(500, 850), style="cmip")
    model = _model(ds)
    fc = xclimax.forecast(ds, model, lead_time="6h")
    # results come back on the input's vertical coordinate, under its names and in its units
    assert "plev" in fc.dims
    assert fc["ta"].attrs["standard_name"] == "air_temperature"
    assert fc["zg"].attrs["units"] == "m" and fc["zg"].attrs["standard_name"] == "geopotential_height"
    # names="climax": ClimaX base names in canonical units (zg as geopotential in m2 s-2)
    canonical = xclimax.forecast(ds, model, lead_time="6h", names="climax")
    assert canonical["geopotential"].attrs["units"] == "m2 s-2"
    np.testing.assert_allclose(fc["zg"].values * xclimax.vocab.G0, canonical["geopotential"].values, rtol=1e-5)


def test_downscale_runs_on_the_model_grid(backend):
    coarse = synthetic_dataset(3, variables=["2m_temperature"], grid=(8, 16), constants=False)
    fine = synthetic_dataset(3, variables=["2m_temperature"], grid=(16, 32), constants=False)
    model = _model(fine, ["2m_temperature"], img_size=(16, 32))
    model.metadata["task"] = "downscale"  # (downscale refuses models not trained for it)
    out = xclimax.downscale(as_backend(coarse, backend), model).compute()
    assert out["2m_temperature"].dims == ("time", "lat", "lon")
    assert out.sizes["lat"] == 16
    # independent computation: bilinear regrid, then the model at lead 0
    up = xclimax.grid.regrid(coarse, *xclimax.grid.model_grid((16, 32)), method="bilinear")
    x = torch.tensor(up["2m_temperature"].values[:, None])
    m, s = model.stats["2m_temperature"]
    with torch.no_grad():
        y = model((x - m) / s, torch.zeros(3), ["2m_temperature"]) * s + m
    np.testing.assert_allclose(out["2m_temperature"].values, y[:, 0].numpy(), rtol=1e-5)


def test_accessor_parity(ds):
    model = _model(ds)
    a = ds.climax.forecast(model, lead_time="6h")
    b = xclimax.forecast(ds, model, lead_time="6h")
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert ds.climax.variables == xclimax.tokens.mapping(ds)
