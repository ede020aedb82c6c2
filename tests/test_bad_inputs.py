"""A corpus of bad and unusual inputs, through the public API only.

Every case asserts the exception (or warning) class and that the message names what was
expected and what was found. Errors must come before any expensive work: the ``no_model``
fixture replaces the network's forward pass by one that fails the test if it is called.
Inputs that are unusual but valid (float16, integers, unsorted times, mismatched chunks, a
checkpoint path as the model, truth in degC) must give the right result, checked against an
independent oracle (the same data in a plain layout).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xclimax
from tests import raise_if_dask_computes
from xclimax.exceptions import CFMappingError, CheckpointError, DataError, GridError, XClimaxError, XClimaxWarning
from xclimax.testing import synthetic_dataset
from xclimax.vocab import G0

GRID = (8, 16)
BASES = ["geopotential", "temperature", "specific_humidity", "relative_humidity", "2m_temperature"]
LEVELS = (500, 850)
MODEL_VARS = ["lattitude", "2m_temperature"] + [f"{b}_{p}" for b in BASES[:4] for p in LEVELS]
OUT_VARS = MODEL_VARS[1:]


# ------------------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return synthetic_dataset(4, variables=BASES, levels=LEVELS, grid=GRID, constants=False)


def make_model(ds: xr.Dataset, **meta) -> xclimax.ClimaX:
    torch.manual_seed(0)
    model = xclimax.ClimaX(MODEL_VARS, img_size=GRID, patch_size=2, embed_dim=16, depth=1, num_heads=2,
                           decoder_depth=1, drop_path=0.0, drop_rate=0.0).eval()
    model.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(ds, variables=MODEL_VARS))
    model.metadata = {"task": "forecast", "lead_time": "6h", "out_variables": OUT_VARS, **meta}
    return model


@pytest.fixture(scope="module")
def model(ds) -> xclimax.ClimaX:
    return make_model(ds)


@pytest.fixture
def no_model(monkeypatch):
    """The network must not run: errors are raised before any expensive work."""

    def forward(*args, **kwargs):
        raise AssertionError("the model ran although the input was bad")

    monkeypatch.setattr(xclimax.ClimaX, "forward", forward)


def says(err: BaseException, *fragments: str) -> None:
    """Assert that each fragment (what was expected, what was found) is in the message."""
    text = str(err).lower()
    missing = [f for f in fragments if f.lower() not in text]
    assert not missing, f"message lacks {missing}: {err}"


@contextlib.contextmanager
def raises(exc, *fragments):
    """``pytest.raises`` that also checks the message fragments."""
    with pytest.raises(exc) as info:
        yield info
    says(info.value, *fragments)


@contextlib.contextmanager
def quiet():
    """Ignore xclimax warnings that a case does not test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XClimaxWarning)
        yield


def fc(data, model, **kw):
    kw.setdefault("lead_time", "6h")
    return xclimax.forecast(data, model, **kw)


# ------------------------------------------------------------------------------ forecast: arguments


@pytest.mark.parametrize("bad, found", [(None, "none"), (42, "int"), ({"weights": 1}, "dict")])
def test_forecast_model_argument(ds, no_model, bad, found):
    with raises(XClimaxError, "model", "climax", found):
        fc(ds, bad)


def test_forecast_model_path_is_loaded(ds, model, tmp_path):
    path = xclimax.save_checkpoint(model, tmp_path / "m.safetensors")
    xr.testing.assert_allclose(fc(ds, str(path)), fc(ds, model))
    with raises(CheckpointError, "not found", "nope.safetensors"):
        fc(ds, str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("bad, found", [(None, "nonetype"), ("ds.nc", "str"), (np.zeros(3), "ndarray")])
def test_forecast_ds_argument(model, no_model, bad, found):
    with raises(DataError, "dataset", found):
        fc(bad, model)


def test_forecast_dataarray_input(ds, model, no_model):
    with raises(DataError, "dataset", "dataarray", "to_dataset"):
        fc(ds["temperature"], model)


@pytest.mark.parametrize(
    "lead, fragments",
    [("soon", ["lead_time", "'soon'"]), ("-6h", ["lead_time", "positive", "-6"]), (["6h", "12h"], ["lead_time", "one", "2"]),
     (True, ["lead_time", "true"])],
)
def test_forecast_bad_lead_time(ds, model, no_model, lead, fragments):
    with raises(DataError, *fragments):
        fc(ds, model, lead_time=lead)


@pytest.mark.parametrize("steps", [0, -1, 1.5, "2"])
def test_forecast_bad_steps(ds, model, no_model, steps):
    with raises(DataError, "steps", "positive integer", repr(steps)):
        fc(ds, model, steps=steps)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "8"])
def test_forecast_bad_batch_size(ds, model, no_model, batch_size):
    with raises(DataError, "batch_size", "positive integer", repr(batch_size)):
        fc(ds, model, batch_size=batch_size)


def test_forecast_bad_regrid(ds, model, no_model):
    with raises(DataError, "regrid", "'nearest'", "bilinear"):
        fc(ds, model, regrid="nearest")


def test_forecast_bad_device(ds, model, no_model):
    with raises(XClimaxError, "device", "gpu0"):
        fc(ds, model, device="gpu0")


def test_forecast_unknown_output_variable(ds, model, no_model):
    with raises(CFMappingError, "banana", "2m_temperature"):
        fc(ds, model, out_variables=["banana"])


def test_forecast_variable_map_to_missing_variable(ds, model, no_model):
    with raises(CFMappingError, "variable_map", "'nope'"):
        fc(ds, model, variable_map={"2m_temperature": "nope"})


# ------------------------------------------------------------------------------ forecast: datasets and variables


def test_forecast_empty_dataset(model, no_model):
    with raises(DataError, "no data variables", "dataset"):
        fc(xr.Dataset(), model)


def test_forecast_zero_time_steps(ds, model, no_model):
    with raises(DataError, "time", "length 0"):
        fc(ds.isel(time=slice(0, 0)), model)


def test_forecast_no_time_dimension(ds, model, no_model):
    with raises(DataError, "'time' dimension", "found dims"):
        fc(ds.isel(time=0), model)


def test_forecast_no_model_variable_found(ds, model, no_model):
    sst = ds["2m_temperature"].assign_attrs(standard_name="sea_surface_temperature")
    with raises(CFMappingError, "none of the model", "sst"):
        fc(xr.Dataset({"sst": sst}), model)


def test_forecast_ambiguous_variables(ds, model, no_model):
    twins = ds.rename(temperature="ta_a").assign(ta_b=ds["temperature"] + 1.0)
    with raises(CFMappingError, "ambiguous", "ta_a", "ta_b"):
        fc(twins, model)


def test_forecast_wrong_units(ds, model, no_model):
    bad = ds.assign(temperature=ds["temperature"].assign_attrs(units="m s-1"))
    with raises(CFMappingError, "temperature", "'m s-1'", "'k'"):
        fc(bad, model)


def test_forecast_missing_inputs_are_named(ds, model):
    with pytest.warns(XClimaxWarning, match="relative_humidity_500") as record:
        out = fc(ds.drop_vars("relative_humidity"), model)
    says(record[0].message, "missing", "relative_humidity_850")
    assert "relative_humidity" not in out.data_vars  # not in the input: not in the output


def test_forecast_of_variables_never_in_the_input_warns(ds, model):
    partial = ds.drop_vars("2m_temperature")
    with pytest.warns(XClimaxWarning) as record:
        out = fc(partial, model, out_variables=["2m_temperature", "temperature_850"])
    texts = [str(r.message) for r in record]
    assert any("2m_temperature" in t and "not in the input" in t for t in texts), texts
    assert "2m_temperature" in out.data_vars


def test_forecast_model_without_stats(ds, model, no_model):
    bare = make_model(ds)
    bare.stats = {}
    with raises(DataError, "normalisation statistics", "compute_stats"):
        fc(ds, bare)


def test_forecast_model_with_zero_std(ds, model, no_model):
    bad = make_model(ds)
    bad.stats = {**bad.stats, "temperature_850": (270.0, 0.0)}
    with raises(DataError, "temperature_850", "positive", "0.0"):
        fc(ds, bad)


# ------------------------------------------------------------------------------ forecast: implausible values


def test_forecast_degc_labelled_kelvin(ds, model, no_model):
    bad = ds.assign({"2m_temperature": (ds["2m_temperature"] - 273.15).assign_attrs(ds["2m_temperature"].attrs)})
    with raises(DataError, "2m_temperature", "for a variable in k", "values look like degc"):
        fc(bad, model)


def test_forecast_degc_labelled_kelvin_dask(ds, model, no_model):
    bad = ds.assign({"2m_temperature": (ds["2m_temperature"] - 273.15).assign_attrs(ds["2m_temperature"].attrs)})
    with raise_if_dask_computes():
        lazy = fc(bad.chunk(time=2), model)
    with raises(DataError, "2m_temperature", "values look like degc"):
        lazy.compute()


def test_forecast_geopotential_height_labelled_geopotential(ds, model, no_model):
    z = (ds["geopotential"] / G0).assign_attrs(ds["geopotential"].attrs)
    with raises(DataError, "geopotential_500", "geopotential height in m", "9.8"):
        fc(ds.assign(geopotential=z), model)


def test_forecast_geopotential_labelled_height(ds, model, no_model):
    z = ds["geopotential"].assign_attrs(standard_name="geopotential_height", units="m")
    with raises(DataError, "geopotential_500", "geopotential in m2 s-2", "9.8"):
        fc(ds.assign(geopotential=z), model)


def test_forecast_specific_humidity_in_g_per_kg_labelled_kg_per_kg(ds, model, no_model):
    q = (ds["specific_humidity"] * 1000).assign_attrs(ds["specific_humidity"].attrs)
    with raises(DataError, "specific_humidity", "g kg-1"):
        fc(ds.assign(specific_humidity=q), model)


def test_forecast_relative_humidity_fraction_labelled_percent(ds, model, no_model):
    r = (ds["relative_humidity"] / 100).assign_attrs(ds["relative_humidity"].attrs)
    with raises(DataError, "relative_humidity", "fraction", "normalisation statistics"):
        fc(ds.assign(relative_humidity=r), model)


def test_forecast_missing_units_assumed_when_plausible(ds, model):
    t = ds["temperature"].copy()
    t.attrs.pop("units")
    with pytest.warns(XClimaxWarning, match="assumed"):
        out = fc(ds.assign(temperature=t), model)
    xr.testing.assert_allclose(out["temperature"], fc(ds, model)["temperature"])


def test_forecast_missing_units_and_degc_values(ds, model, no_model):
    t = ds["2m_temperature"] - 273.15
    t.attrs = {"standard_name": "air_temperature"}
    with quiet(), raises(DataError, "2m_temperature", "no units attribute", "degc"):
        fc(ds.assign({"2m_temperature": t}), model)


def test_forecast_unmasked_fill_values(ds, model, no_model):
    t = ds["2m_temperature"].copy(deep=True)
    t[0, 0, :3] = 9.96921e36
    with raises(DataError, "2m_temperature", "fill value", "plausible range"):
        fc(ds.assign({"2m_temperature": t}), model)


def test_forecast_statistics_mismatch_warns(ds, model):
    """Values inside the physical range but far from the model's statistics, with no unit explaining it."""
    t = (ds["temperature"] + 60.0).assign_attrs(ds["temperature"].attrs)
    with pytest.warns(XClimaxWarning, match="normalisation statistics"):
        fc(ds.assign(temperature=t), model)


# ------------------------------------------------------------------------------ forecast: non-finite values and dtypes


@pytest.mark.parametrize("value, label", [(np.nan, "nan"), (np.inf, "+inf"), (-np.inf, "-inf")])
def test_forecast_non_finite(ds, model, no_model, value, label):
    t = ds["temperature"].copy(deep=True)
    t[1, 1, 2, 3] = value  # temperature_850
    with raises(DataError, "non-finite", "temperature_850", f"1 {label}"):
        fc(ds.assign(temperature=t), model)


def test_forecast_inf_in_dask_input_is_named_at_compute(ds, model, no_model):
    t = ds["2m_temperature"].copy(deep=True)
    t[3, 0, 0] = np.inf
    with raise_if_dask_computes():
        lazy = fc(ds.assign({"2m_temperature": t}).chunk(time=2), model)
    with raises(DataError, "2m_temperature", "+inf"):
        lazy.compute()


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32", "int16"])
def test_forecast_any_numeric_dtype(ds, model, dtype):
    """The forecast from data stored as ``dtype`` is the forecast from the same values in float32."""
    cast = ds.copy()
    for name in ("temperature", "2m_temperature", "geopotential"):
        values = ds[name].values
        wide = "int32" if dtype == "int16" and name == "geopotential" else dtype  # z500 > 32767
        cast[name] = ds[name].copy(data=np.round(values) if dtype.startswith("int") else values).astype(wide)
    assert cast["temperature"].dtype == dtype
    ref = cast.copy()
    for name in ("temperature", "2m_temperature", "geopotential"):
        ref[name] = cast[name].astype("float32")
    out = fc(cast, model)
    expected = fc(ref, model)
    for name in expected.data_vars:
        assert np.isfinite(out[name]).all(), name
    xr.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)


def test_forecast_bool_field(ds, model, no_model):
    bad = ds.assign({"2m_temperature": ds["2m_temperature"] > 280})
    with raises(DataError, "2m_temperature", "bool", "expected numbers"):
        fc(bad, model)


@pytest.mark.parametrize("dtype, found", [(object, "object"), ("U8", "<u8"), (np.complex64, "complex")])
def test_forecast_non_numeric_dtypes(ds, model, no_model, dtype, found):
    t = ds["2m_temperature"]
    values = t.values.astype(dtype) if dtype != "U8" else t.values.astype(int).astype("U8")
    bad = ds.assign({"2m_temperature": t.copy(data=values)})
    with raises(DataError, "2m_temperature", found, "expected numbers"):
        fc(bad, model)


# ------------------------------------------------------------------------------ forecast: times


def test_forecast_undecoded_time_with_unknown_calendar(ds, model, no_model):
    hours = (np.arange(ds.sizes["time"]) * 6).astype("int64")
    raw = ds.assign_coords(time=("time", hours, {"units": "hours since 2000-01-01", "calendar": "martian"}))
    with raises(DataError, "time", "int64", "calendar", "'martian'"):
        fc(raw, model)


def test_forecast_cftime_calendar_is_accepted(ds, model):
    cftime = pytest.importorskip("cftime")
    times = [cftime.Datetime360Day(2000, 1, 1, 6 * k) for k in range(ds.sizes["time"])]
    out = fc(ds.assign_coords(time=times), model)
    assert out["valid_time"].values[0, 0] == cftime.Datetime360Day(2000, 1, 1, 6)
    np.testing.assert_allclose(out["temperature"].values, fc(ds, model)["temperature"].values, rtol=1e-5)


def test_forecast_duplicate_times(ds, model, no_model):
    dup = xr.concat([ds, ds.isel(time=[0])], dim="time")
    with raises(DataError, "distinct", "repeated", "2000-01-01"):
        fc(dup, model)


def test_forecast_unsorted_times(ds, model):
    order = [2, 0, 3, 1]
    out = fc(ds.isel(time=order), model)
    xr.testing.assert_allclose(out, fc(ds, model).isel(time=order))


# ------------------------------------------------------------------------------ forecast: grids


def test_forecast_curvilinear_grid(ds, model, no_model):
    lat2d, lon2d = xr.broadcast(ds["lat"], ds["lon"])
    curvi = ds.rename(lat="y", lon="x").assign_coords(
        lat=(("y", "x"), lat2d.values, {"standard_name": "latitude", "units": "degrees_north"}),
        lon=(("y", "x"), lon2d.values, {"standard_name": "longitude", "units": "degrees_east"}),
    )
    curvi = curvi.drop_vars(["y", "x"])
    with raises(GridError, "2-d", "latitude", "regular"):
        fc(curvi, model)


def test_forecast_irregular_grid_without_regrid(ds, model, no_model):
    lat = ds["lat"].values.copy()
    lat[3] += 3.0
    with raises(GridError, "lat", "regrid="):
        fc(ds.assign_coords(lat=lat), model)


def test_forecast_latitude_in_radians(ds, model, no_model):
    rad = ds.assign_coords(lat=np.deg2rad(ds["lat"]).assign_attrs(ds["lat"].attrs),
                           lon=np.deg2rad(ds["lon"]).assign_attrs(ds["lon"].attrs))
    with raises(GridError, "radians", "degrees"):
        fc(rad, model, regrid="bilinear")


def test_forecast_radian_units(ds, model, no_model):
    rad = ds.assign_coords(lat=np.deg2rad(ds["lat"]).assign_attrs(units="radians", standard_name="latitude"))
    with raises(GridError, "radians", "degrees"):
        fc(rad, model, regrid="bilinear")


def test_forecast_missing_coordinates(ds, model, no_model):
    with raises(GridError, "latitude", "found dims"):
        fc(ds.drop_vars(["lat", "lon"]), model, regrid="bilinear")


def test_forecast_regional_input_is_not_extrapolated(ds, model, no_model):
    regional = ds.isel(lat=slice(2, 6), lon=slice(0, 8))
    with pytest.raises(GridError) as info:
        fc(regional, model, regrid="bilinear")
    says(info.value, "lat")


def test_forecast_grid_too_small(ds, model, no_model):
    tiny = synthetic_dataset(2, variables=BASES, levels=LEVELS, grid=(2, 4), constants=False)
    with raises(GridError, "(8, 16)", "(2, 4)"):
        fc(tiny, model)


def test_forecast_mismatched_chunks(ds, model):
    """Variables chunked differently along time give the eager forecast."""
    mixed = ds.copy()
    mixed["temperature"] = ds["temperature"].chunk(time=1)
    mixed["2m_temperature"] = ds["2m_temperature"].chunk(time=3)
    mixed["geopotential"] = ds["geopotential"].chunk(time=2, lat=3)
    with raise_if_dask_computes():
        lazy = fc(mixed, model)
    xr.testing.assert_allclose(lazy.compute(), fc(ds, model), rtol=1e-5)


# ------------------------------------------------------------------------------ forecast: lead times


def test_forecast_untrained_lead_time_warns(ds, model):
    with pytest.warns(XClimaxWarning, match="trained for lead time 6 h") as record:
        fc(ds, model, lead_time="12h")
    says(record[0].message, "12 h", "never trained")


def test_forecast_pretrained_lead_range(ds):
    pre = make_model(ds, task="pretrain", lead_times=["6h", "24h"], time_step="6h")
    pre.metadata.pop("lead_time")
    with warnings.catch_warnings():
        warnings.simplefilter("error", XClimaxWarning)
        fc(ds, pre, lead_time="18h")
    with pytest.warns(XClimaxWarning, match="6 h to 1 d"):
        fc(ds, pre, lead_time="9h")


# ------------------------------------------------------------------------------ downscale


def test_downscale_model_argument(ds, no_model):
    with raises(XClimaxError, "model", "none"):
        xclimax.downscale(ds, None)


def test_downscale_needs_regrid(ds, model, no_model):
    with raises(DataError, "regrid", "none", "bilinear"):
        xclimax.downscale(ds, model, regrid=None)


def test_downscale_with_a_forecasting_model(ds, model, no_model):
    with pytest.raises(XClimaxError) as info:
        xclimax.downscale(ds, model)
    says(info.value, "downscal", "forecast")


def test_downscale_implausible_units(no_model):
    coarse = synthetic_dataset(2, variables=["2m_temperature"], grid=(4, 8), constants=False)
    coarse["2m_temperature"] = (coarse["2m_temperature"] - 273.15).assign_attrs(coarse["2m_temperature"].attrs)
    torch.manual_seed(0)
    down = xclimax.ClimaX(["2m_temperature"], img_size=GRID, embed_dim=16, depth=1, num_heads=2)
    down.stats = {"2m_temperature": (285.0, 10.0)}
    down.metadata = {"task": "downscale"}
    with raises(DataError, "2m_temperature", "degc"):
        xclimax.downscale(coarse, down)


# ------------------------------------------------------------------------------ pretrain and finetune


def train_data(nt=12, **kw):
    return synthetic_dataset(nt, variables=["2m_temperature", "temperature"], levels=(850,), grid=GRID,
                             constants=False, **kw)


TRAIN = dict(batch_size=2, max_steps=1, model_kwargs=dict(embed_dim=16, depth=1, num_heads=2))


def pretrain(data, **kw):
    return xclimax.pretrain(data, **{"lead_times": ("6h", "12h"), **TRAIN, **kw})


@pytest.mark.parametrize(
    "leads, fragments",
    [
        (("banana", "6h"), ["lead_times", "'banana'"]),
        (("12h", "6h"), ["lead_times", "12 h", "6 h"]),
        (("7h", "11h"), ["lead_times", "multiple", "6 h"]),
        (("-6h", "6h"), ["lead_times", "positive"]),
        ((), ["lead_times", "empty"]),
    ],
)
def test_pretrain_bad_lead_times(no_model, leads, fragments):
    with raises(DataError, *fragments):
        pretrain(train_data(), lead_times=leads)


@pytest.mark.parametrize(
    "kw, fragments",
    [
        ({"batch_size": 0}, ["batch_size", "positive integer", "0"]),
        ({"batch_size": "4"}, ["batch_size", "positive integer", "'4'"]),
        ({"max_steps": -1}, ["max_steps", "-1"]),
        ({"epochs": 0}, ["epochs", "0"]),
        ({"lr": "fast"}, ["lr", "'fast'"]),
        ({"lr": -1e-3}, ["lr", "-0.001"]),
        ({"stats": "bogus"}, ["stats", "'bogus'", "pooled"]),
        ({"precision": "fp8"}, ["precision", "'fp8'", "bf16"]),
        ({"accumulate": 0}, ["accumulate", "0"]),
        ({"model_kwargs": {"bogus": 1}}, ["model_kwargs", "bogus"]),
        ({"device": "gpu0"}, ["device", "gpu0"]),
    ],
)
def test_pretrain_bad_arguments(no_model, kw, fragments):
    with raises(XClimaxError, *fragments):
        pretrain(train_data(), **kw)


def test_pretrain_unsorted_times(no_model):
    data = train_data()
    with raises(DataError, "sorted", "sortby"):
        pretrain(data.isel(time=[1, 0, *range(2, 12)]))


def test_pretrain_duplicate_times(no_model):
    data = train_data()
    with raises(DataError, "distinct", "repeated"):
        pretrain(xr.concat([data.isel(time=[0]), data], dim="time"))


def test_pretrain_irregular_times_without_pairs(no_model):
    """Gaps are fine (pairs are matched by value), but a lead no pair of times is apart is refused."""
    data = train_data().isel(time=[0, 2, 4, 6, 8, 10])  # every 12 h
    with raises(DataError, "lead_times", "multiple", "12 h"):
        pretrain(data, lead_times=("6h", "6h"))


def test_pretrain_irregular_times_with_gaps():
    data = train_data().isel(time=[0, 1, 2, 4, 5, 6, 7, 9, 10, 11])  # gaps: 6 h pairs exist around them
    model, history = pretrain(data, lead_times=("6h", "6h"))
    assert history.sizes["step"] == 1 and np.isfinite(history["loss"]).all()


def test_pretrain_non_finite_values(no_model):
    data = train_data()
    t = data["temperature"].copy(deep=True)
    t[-1, 0, 0, 0] = np.nan  # only in the last time step
    with raises(DataError, "temperature_850", "non-finite"):
        pretrain(data.assign(temperature=t))


def test_pretrain_degc_labelled_kelvin(no_model):
    data = train_data()
    t = (data["2m_temperature"] - 273.15).assign_attrs(data["2m_temperature"].attrs)
    with raises(DataError, "2m_temperature", "values look like degc"):
        pretrain(data.assign({"2m_temperature": t}))


def test_pretrain_too_few_times_for_the_lead(no_model):
    with pytest.raises(DataError) as info:
        pretrain(train_data(2), lead_times=("24h", "24h"))
    says(info.value, "24")


@pytest.mark.parametrize("grid, patch", [((GRID[0], 2), 3), ((1, 2), 2)])  # smaller than a patch (others: padded)
def test_pretrain_grid_and_patch_size(no_model, grid, patch):
    data = synthetic_dataset(6, variables=["2m_temperature"], grid=grid, constants=False)
    with raises(GridError, "patch", str(patch)):
        pretrain(data, model_kwargs=dict(embed_dim=16, depth=1, num_heads=2, patch_size=patch))


def test_pretrain_empty_sources(no_model):
    with raises(DataError, "empty"):
        pretrain([])


def test_pretrain_batch_that_cannot_fit_in_memory(no_model):
    with raises(XClimaxError, "batch_size", "memory", "fit"):
        pretrain(train_data(), batch_size=10**7)


def finetune(data, model, **kw):
    return xclimax.finetune(data, model, **{"lead_time": "6h", "batch_size": 2, "max_steps": 1, **kw})


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    m = xclimax.ClimaX(["2m_temperature", "temperature_850"], img_size=GRID, embed_dim=16, depth=1, num_heads=2)
    m.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(train_data()))
    return m


def test_finetune_model_argument(no_model):
    with raises(XClimaxError, "model", "climax", "none"):
        finetune(train_data(), None)


@pytest.mark.parametrize(
    "kw, fragments",
    [
        ({"task": "banana"}, ["task", "'banana'", "forecast"]),
        ({"outputs": ["banana"]}, ["banana"]),
        ({"region": "Atlantis"}, ["region", "'atlantis'", "europe"]),
        ({"freeze": "brain"}, ["freeze", "brain"]),
        ({"lead_time": "banana"}, ["lead_time", "'banana'"]),
        ({"batch_size": -2}, ["batch_size", "-2"]),
    ],
)
def test_finetune_bad_arguments(base, no_model, kw, fragments):
    with raises(XClimaxError, *fragments):
        finetune(train_data(), base, **kw)


def test_finetune_grid_mismatch(base, no_model):
    data = synthetic_dataset(8, variables=["2m_temperature"], grid=(16, 32), constants=False)
    with raises(GridError, "(8, 16)", "(16, 32)"):
        finetune(data, base)


def test_finetune_implausible_values_against_the_model(base, no_model):
    data = train_data()
    t = (data["2m_temperature"] - 273.15).assign_attrs(data["2m_temperature"].attrs)
    with raises(DataError, "2m_temperature", "degc"):
        finetune(data.assign({"2m_temperature": t}), base)


# ------------------------------------------------------------------------------ evaluate


@pytest.fixture(scope="module")
def truth():
    return synthetic_dataset(8, variables=["2m_temperature", "temperature"], levels=(850,), grid=GRID, constants=False)


def test_evaluate_converts_degc_truth(truth):
    forecast = xclimax.baselines.persistence(truth, ["6h", "12h"])
    celsius = truth.copy()
    celsius["2m_temperature"] = (truth["2m_temperature"] - 273.15).assign_attrs(units="degC")
    expected = xclimax.evaluate(forecast, truth, metrics=["rmse", "bias"])
    got = xclimax.evaluate(forecast, celsius, metrics=["rmse", "bias"])
    xr.testing.assert_allclose(got, expected, rtol=1e-5)


def test_evaluate_refuses_irreconcilable_units(truth):
    forecast = xclimax.baselines.persistence(truth, "6h")
    bad = truth.assign({"2m_temperature": truth["2m_temperature"].assign_attrs(units="m s-1")})
    with raises(DataError, "2m_temperature", "'m s-1'", "'k'"):
        xclimax.evaluate(forecast, bad, metrics="rmse")


@pytest.mark.parametrize(
    "kw, fragments",
    [
        ({"metrics": "rmsee"}, ["metrics", "rmsee", "rmse"]),
        ({"flavour": "bogus"}, ["flavour", "bogus", "wb2"]),
        ({"dims": ["member"]}, ["dims", "member"]),
    ],
)
def test_evaluate_bad_arguments(truth, kw, fragments):
    with raises(DataError, *fragments):
        xclimax.evaluate(xclimax.baselines.persistence(truth, "6h"), truth, **kw)


def test_evaluate_not_a_dataset(truth):
    with raises(DataError, "forecast", "dataset", "nonetype"):
        xclimax.evaluate(None, truth)


def test_evaluate_no_common_valid_time(truth):
    forecast = xclimax.baselines.persistence(truth.isel(time=[0]), "240h")
    with raises(DataError, "valid time", "truth"):
        xclimax.evaluate(forecast, truth, metrics="rmse")


def test_evaluate_other_grid(truth):
    other = synthetic_dataset(8, variables=["2m_temperature", "temperature"], levels=(850,), grid=(16, 32), constants=False)
    with raises(GridError, "different grid", "16"):
        xclimax.evaluate(xclimax.baselines.persistence(truth, "6h"), other, metrics="rmse")


def test_evaluate_truth_lacks_variable(truth):
    with raises(DataError, "truth lacks", "temperature"):
        xclimax.evaluate(xclimax.baselines.persistence(truth, "6h"), truth.drop_vars("temperature"), metrics="rmse")


def test_forecast_in_the_users_terms_evaluates_on_era5_names(ds, model):
    """ERA5 short names, latitude north to south: the forecast keeps them, evaluate needs no renaming."""
    era = ds.rename(geopotential="z", temperature="t", specific_humidity="q", relative_humidity="r",
                    lat="latitude", lon="longitude")
    era = era.rename({"2m_temperature": "t2m"}).isel(latitude=slice(None, None, -1))
    out = fc(era, model)
    assert {"z", "t", "q", "r", "t2m"} == set(out.data_vars)
    assert out["t"].dims == ("time", "lead_time", "level", "latitude", "longitude")
    assert out["latitude"].values[0] > out["latitude"].values[-1]
    scores = xclimax.evaluate(out, era, metrics="rmse")
    assert set(scores.data_vars) == {"z", "t", "q", "r", "t2m"}
    # oracle: the same forecast with ClimaX names, scored on the plain layout
    plain = fc(ds, model, names="climax")
    expected = xclimax.evaluate(plain, ds, metrics="rmse")
    np.testing.assert_allclose(scores["t"].values, expected["temperature"].values, rtol=1e-5)


def test_forecast_cmip_keeps_names_units_and_member(model):
    cmip = synthetic_dataset(4, variables=BASES, levels=LEVELS, grid=GRID, style="cmip")
    ens = xr.concat([cmip, cmip + 0.0], dim=pd.Index(["r1i1p1f1", "r2i1p1f1"], name="member_id"))
    for name in cmip.data_vars:
        ens[name].attrs = cmip[name].attrs
    with quiet():
        out = fc(ens, model)
    assert out["zg"].attrs["units"] == "m" and out["zg"].attrs["standard_name"] == "geopotential_height"
    assert "plev" in out["zg"].dims and out["plev"].attrs["units"] == "Pa"
    assert list(out["member_id"].values) == ["r1i1p1f1", "r2i1p1f1"]
    # zg comes back in m: the forecast of geopotential (m2 s-2) divided by g
    with quiet():
        canonical = fc(ens, model, names="climax")
    np.testing.assert_allclose(out["zg"].values * G0, canonical["geopotential"].values, rtol=1e-5)


# ------------------------------------------------------------------------------ baselines


def test_persistence_accepts_the_forecasts_lead_time(ds, model, truth):
    out = fc(ds, model, steps=2)
    pers = xclimax.baselines.persistence(ds, out.lead_time)
    np.testing.assert_array_equal(pers["lead_time"].values, out["lead_time"].values)
    np.testing.assert_array_equal(pers["temperature"].isel(lead_time=1).values, ds["temperature"].values)


def test_persistence_bad_arguments(truth):
    with raises(DataError, "lead_time", "'banana'"):
        xclimax.baselines.persistence(truth, "banana")
    with raises(DataError, "dataset", "dataarray"):
        xclimax.baselines.persistence(truth["temperature"], "6h")


def test_climatology_forecast_swapped_arguments(truth):
    clim = xclimax.baselines.climatology(truth, by="mean")
    with raises(DataError, "swapped", "clim", "init_times"):
        xclimax.baselines.climatology_forecast(truth.time, clim, "6h")


@pytest.mark.parametrize("kw, fragments", [({"by": "week"}, ["by", "'week'", "dayofyear"]),
                                           ({"smooth": 0}, ["smooth", "0"])])
def test_climatology_bad_arguments(truth, kw, fragments):
    with raises(DataError, *fragments):
        xclimax.baselines.climatology(truth, **kw)


# ------------------------------------------------------------------------------ checkpoints


@pytest.fixture
def saved(tmp_path, model):
    return xclimax.save_checkpoint(model, tmp_path / "model.safetensors")


def test_checkpoint_missing(tmp_path):
    with raises(CheckpointError, "not found", "missing.pt"):
        xclimax.load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_empty(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with raises(CheckpointError, "empty", "0 bytes"):
        xclimax.load_checkpoint(tmp_path / "empty.pt")


def test_checkpoint_truncated_safetensors(saved, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = saved.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with raises(CheckpointError, "truncated", "cut.safetensors"):
        xclimax.load_checkpoint(cut)


def test_checkpoint_truncated_torch_file(model, tmp_path):
    path = xclimax.save_checkpoint(model, tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with raises(CheckpointError, "truncated or corrupt", "model.pt"):
        xclimax.load_checkpoint(path)


def test_checkpoint_foreign_numpy_file(tmp_path):
    np.save(tmp_path / "weights.npy", np.zeros(4))
    with raises(CheckpointError, "not a checkpoint", "pytorch", "leading bytes"):
        xclimax.load_checkpoint(tmp_path / "weights.npy")


def test_checkpoint_foreign_text_file(tmp_path):
    (tmp_path / "notes.ckpt").write_text("these are not weights\n")
    with raises(CheckpointError, "not a checkpoint", "safetensors"):
        xclimax.load_checkpoint(tmp_path / "notes.ckpt")


class _Payload:
    """Unpickling this would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("zipped", [True, False])
def test_checkpoint_pickled_code_is_refused_and_not_run(tmp_path, zipped):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"pos_embed": torch.zeros(1)}, "hook": _Payload(str(marker))}, path,
               _use_new_zipfile_serialization=zipped)
    with raises(CheckpointError, "refusing", "pickled python objects", "weights_only"):
        xclimax.load_checkpoint(path)
    assert not marker.exists()
    with raises(CheckpointError, "refusing"):
        fc(synthetic_dataset(1, variables=["2m_temperature"], grid=GRID, constants=False), str(path))
    assert not marker.exists()


def test_checkpoint_directory(tmp_path):
    with raises(CheckpointError, "directory"):
        xclimax.load_checkpoint(tmp_path)


def test_checkpoint_not_a_climax_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with raises(CheckpointError, "pos_embed", "weight"):
        xclimax.load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_save_to_missing_directory(model, tmp_path):
    with raises(CheckpointError, "does not exist", "nodir"):
        xclimax.save_checkpoint(model, tmp_path / "nodir" / "m.safetensors")


def test_checkpoint_bad_variable_request(saved):
    with raises(CheckpointError, "non-empty", "[]"):
        xclimax.load_checkpoint(saved, variables=[])


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "kw, fragments",
    [
        ({"device": "gpu0"}, ["device", "'gpu0'", "cpu"]),
        ({"device": 3.5}, ["device", "3.5"]),
        ({"bogus": 1}, ["unknown", "'bogus'", "progress"]),
        ({"progress": "yes"}, ["progress", "bool", "'yes'"]),
        ({"autocast": "fp8"}, ["autocast", "'fp8'", "bf16"]),
        ({"extra_variables": ["sst"]}, ["extra_variables", "dict", "['sst']"]),
    ],
)
def test_options_rejected_at_set_time(kw, fragments):
    before = xclimax.get_options()
    with raises(XClimaxError, *fragments):
        xclimax.set_options(**kw)
    assert xclimax.get_options() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_options_cuda_without_cuda():
    with raises(XClimaxError, "device", "cuda", "not available"):
        xclimax.set_options(device="cuda")


# ------------------------------------------------------------------------------ no lost work, no mutation


def _digest(ds: xr.Dataset) -> str:
    h = hashlib.sha256()
    for name in sorted(ds.variables):
        h.update(str(name).encode())
        h.update(np.ascontiguousarray(ds[name].values).tobytes())
        h.update(repr(sorted(ds[name].attrs.items())).encode())
    h.update(repr(sorted(ds.attrs.items())).encode())
    return h.hexdigest()


def test_inputs_are_not_mutated(ds, model, truth):
    before, before_truth = _digest(ds), _digest(truth)
    stats_before = dict(model.stats)
    fc(ds, model)
    fc(ds.chunk(time=2), model).compute()
    with quiet():
        fc(synthetic_dataset(2, variables=BASES, levels=LEVELS, grid=(16, 32), constants=False), model, regrid="bilinear")
    xclimax.evaluate(xclimax.baselines.persistence(truth, "6h"), truth, metrics="rmse")
    assert _digest(ds) == before and _digest(truth) == before_truth
    assert model.stats == stats_before


def test_model_and_accessor_pickle(ds, model):
    clone = pickle.loads(pickle.dumps(model))
    xr.testing.assert_allclose(fc(ds, clone), fc(ds, model))
    assert clone.stats == model.stats and clone.metadata == model.metadata
    accessor = pickle.loads(pickle.dumps(ds.climax))
    assert accessor.variables == ds.climax.variables


def test_concurrent_forecasts_share_the_model_safely(ds, model):
    expected = fc(ds, model)
    results, errors = [], []

    def run():
        try:
            results.append(fc(ds.chunk(time=1), model).compute(scheduler="threads"))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        xr.testing.assert_allclose(r, expected, rtol=1e-5)


def test_failed_checkpoint_write_keeps_the_old_file(model, tmp_path, monkeypatch):
    path = xclimax.save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        xclimax.save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_forecast_batch_size_fits_in_memory(ds, model, monkeypatch):
    """No batch size given: the largest that fits is used; one that cannot fit is refused with what would."""
    from xclimax.nn import memory

    expected = fc(ds, model)  # plenty of memory: one call for the 4 initial times
    one = memory.estimate_memory(model.config, 1, n_in=len(MODEL_VARS), n_out=len(OUT_VARS))
    free = int((one.fixed + 2.5 * one.per_sample) / memory.HEADROOM)  # room for 2 samples, not 3
    monkeypatch.setattr(memory, "available_memory", lambda device: free)
    sizes = []
    forward = xclimax.ClimaX.forward

    def recording(self, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(xclimax.ClimaX, "forward", recording)
    out = fc(ds, model)
    assert sizes == [2, 2]  # 4 initial times, 2 per call
    xr.testing.assert_allclose(out, expected, rtol=1e-5)
    sizes.clear()
    with raises(xclimax.ResourceError, "batch_size=4", "gib", "batch_size <= 2 fits"):
        fc(ds, model, batch_size=4)
    assert sizes == []  # refused before any model work
