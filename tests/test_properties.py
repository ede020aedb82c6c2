"""Property tests: the same data laid out differently gives the same forecast.

Grid orientation (latitudes north to south), longitude convention (-180..180 or 0..360, any
starting longitude), the order of the data variables, dask chunking, dimension order and extra
(ensemble) dimensions are layouts, not data: the forecast, brought back to one layout, must not
depend on them, and it must come back in the input's layout.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xclimax  # noqa: E402
from xclimax.exceptions import XClimaxWarning  # noqa: E402
from xclimax.testing import synthetic_dataset  # noqa: E402

GRID = (8, 16)
NAMES = ["temperature", "geopotential", "2m_temperature", "10m_u_component_of_wind"]
MODEL_VARS = ["2m_temperature", "10m_u_component_of_wind", "temperature_500", "temperature_850",
              "geopotential_500", "geopotential_850"]


@functools.cache
def _setup():
    ds = synthetic_dataset(3, variables=NAMES, levels=(500, 850), grid=GRID, constants=False)
    torch.manual_seed(0)
    model = xclimax.ClimaX(MODEL_VARS, img_size=GRID, patch_size=2, embed_dim=16, depth=1, num_heads=2,
                           decoder_depth=1, drop_path=0.0, drop_rate=0.0).eval()
    model.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(ds, variables=MODEL_VARS))
    model.metadata = {"task": "forecast", "lead_time": "6h", "out_variables": MODEL_VARS}
    reference = xclimax.forecast(ds, model, lead_time="6h")
    return ds, model, reference


def _canonical(out: xr.Dataset) -> xr.Dataset:
    """Back to one layout: lat ascending, lon in [0, 360) ascending, canonical dim order."""
    out = out.rename({k: v for k, v in (("latitude", "lat"), ("longitude", "lon")) if k in out.dims})
    out = out.assign_coords(lon=out["lon"] % 360).sortby("lon").sortby("lat")
    order = [d for d in ("member", "time", "lead_time", "level", "lat", "lon") if d in out.dims]
    return out.transpose(*order)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    flip=st.booleans(),
    negative=st.booleans(),
    start=st.sampled_from([0, 3, 9]),
    order=st.permutations(NAMES),
    chunks=st.sampled_from([None, {"time": 1}, {"time": 2, "lat": 4}, {"lon": 5}]),
    member=st.booleans(),
    lon_first=st.booleans(),
    rename=st.booleans(),
)
def test_layout_does_not_change_the_forecast(flip, negative, start, order, chunks, member, lon_first, rename):
    ds, model, reference = _setup()
    data = ds[list(order)]
    if negative:
        data = data.assign_coords(lon=((data["lon"] + 180) % 360 - 180).assign_attrs(data["lon"].attrs)).sortby("lon")
    if start:
        data = data.roll(lon=start, roll_coords=True)
    if flip:
        data = data.isel(lat=slice(None, None, -1))
    if lon_first:
        data = data.transpose(..., "lon", "lat")
    if member:
        data = data.expand_dims(member=[0, 1])
    if rename:
        data = data.rename(lat="latitude", lon="longitude")
    if chunks is not None:
        data = data.chunk({("latitude" if rename and k == "lat" else "longitude" if rename and k == "lon" else k): v
                           for k, v in chunks.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error", XClimaxWarning)  # a pure layout change must not warn
        out = xclimax.forecast(data, model, lead_time="6h")
    lat_name, lon_name = ("latitude", "longitude") if rename else ("lat", "lon")
    # the result comes back in the input's layout ...
    assert lat_name in out.dims and lon_name in out.dims
    np.testing.assert_array_equal(out[lat_name].values, data[lat_name].values)
    np.testing.assert_array_equal(out[lon_name].values, data[lon_name].values)
    assert (chunks is not None) == (out["temperature"].chunks is not None)
    # ... and is the same forecast
    got = _canonical(out.compute())
    expected = _canonical(reference)
    if member:
        assert list(got["member"].values) == [0, 1]
        for m in (0, 1):
            xr.testing.assert_allclose(got.sel(member=m, drop=True)[list(expected.data_vars)], expected,
                                       rtol=1e-5, atol=1e-4)
    else:
        xr.testing.assert_allclose(got[list(expected.data_vars)], expected, rtol=1e-5, atol=1e-4)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(order=st.permutations(MODEL_VARS), out_order=st.permutations(MODEL_VARS[:3]))
def test_order_of_model_and_output_variables(order, out_order):
    """A model whose tokens come in another order (same weights by name) gives the same forecast."""
    ds, model, reference = _setup()
    reordered = xclimax.remap_variables(model, list(order), warn=False)
    out = xclimax.forecast(ds, reordered, lead_time="6h", out_variables=list(out_order))
    expected = xclimax.forecast(ds, model, lead_time="6h", out_variables=list(out_order))
    xr.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
