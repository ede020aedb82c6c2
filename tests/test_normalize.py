"""Tests for xclimax.normalize: statistics and (de)normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests import as_backend, raise_if_dask_computes
from xclimax.cf.stats import compute_stats, denormalize, normalize, stats_from_dict, stats_to_dict
from xclimax.cf.tokens import to_array
from xclimax.exceptions import DataError, XClimaxWarning
from xclimax.testing import synthetic_dataset

NAMES = ["land_sea_mask", "orography", "lattitude", "2m_temperature", "geopotential_500", "temperature_850"]


@pytest.fixture(scope="module")
def era5():
    return synthetic_dataset(8, variables=["2m_temperature", "geopotential", "temperature"], levels=[500, 850],
                             grid=(4, 8))


def test_stats_match_numpy(era5, backend):
    ds = as_backend(era5, backend)
    with raise_if_dask_computes():
        stats = compute_stats(ds, variables=NAMES)
    assert (backend == "dask") == (stats["mean"].chunks is not None)
    stats = stats.compute()
    assert stats["variable"].values.tolist() == NAMES
    assert stats["mean"].dtype == np.float64
    # independent numpy computation on the raw variables
    t2m = era5["2m_temperature"].values.astype(np.float64)
    z500 = era5["geopotential"].sel(level=500).values.astype(np.float64)
    oro = era5["geopotential_at_surface"].values.astype(np.float64) / 9.80665
    lat = np.broadcast_to(era5["lat"].values[:, None], (4, 8))
    for name, ref, rtol in (("2m_temperature", t2m, 1e-6), ("geopotential_500", z500, 1e-6),
                            ("orography", oro, 1e-5), ("lattitude", lat, 1e-6)):
        np.testing.assert_allclose(stats["mean"].sel(variable=name), ref.mean(), rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(stats["std"].sel(variable=name), ref.std(), rtol=rtol)


def test_time_selection_and_pooling(era5):
    """Pooled over all selected times (not the last period only); time= selects the period."""
    stats = compute_stats(era5, variables=["2m_temperature"], time=slice("2000-01-01T00", "2000-01-01T18"))
    ref = era5["2m_temperature"].isel(time=slice(0, 4)).values.astype(np.float64)
    np.testing.assert_allclose(float(stats["mean"][0]), ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(stats["std"][0]), ref.std(), rtol=1e-6)
    # pooled std equals sqrt(E[var_y] + E[mu_y^2] - E[mu_y]^2) over two equal halves (ClimaX's formula)
    full = era5["2m_temperature"].values.astype(np.float64)
    halves = [full[:4], full[4:]]
    pooled = np.sqrt(np.mean([h.var() for h in halves]) + np.mean([h.mean() ** 2 for h in halves])
                     - np.mean([h.mean() for h in halves]) ** 2)
    all_stats = compute_stats(era5, variables=["2m_temperature"])
    np.testing.assert_allclose(float(all_stats["std"][0]), pooled, rtol=1e-6)
    with pytest.raises(DataError, match="selects no time steps"):
        compute_stats(era5, variables=["2m_temperature"], time=slice("1990", "1991"))


def test_dataarray_input_batch_dims_and_variables(era5, backend):
    da = to_array(era5, NAMES)
    da = xr.concat([da, da + 1], dim=pd.Index([0, 1], name="member"))
    da = da.chunk({"time": 2}) if backend == "dask" else da
    with raise_if_dask_computes():
        stats = compute_stats(da, variables=["2m_temperature", "temperature_850"])
    ref = da.sel(variable="temperature_850").values.astype(np.float64)
    np.testing.assert_allclose(float(stats["mean"].sel(variable="temperature_850")), ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(stats["std"].sel(variable="temperature_850")), ref.std(), rtol=1e-6)
    with pytest.raises(DataError, match="not in the DataArray"):
        compute_stats(da, variables=["specific_humidity_50"])
    with pytest.raises(DataError, match="variable"):
        compute_stats(da.isel(variable=0, drop=True))


def test_constant_field_and_precipitation(backend):
    ds = synthetic_dataset(4, variables=["2m_temperature"], grid=(4, 8), constants=False)
    tp = (ds["2m_temperature"] * 0 + 0.002 + 0.001 * np.sin(np.arange(4))[:, None, None])
    ds = ds.assign(tp=tp.assign_attrs(standard_name="precipitation_amount", units="m"),
                   mask=(ds["2m_temperature"].isel(time=0, drop=True) * 0).assign_attrs(
                       standard_name="land_binary_mask", units="1"))
    ds = as_backend(ds, backend)
    kwargs = dict(variables=["land_sea_mask", "total_precipitation"], extra_variables=["total_precipitation"])
    if backend == "dask":  # lazy: the warning comes when the statistics are computed
        with raise_if_dask_computes():
            lazy = compute_stats(ds, **kwargs)
        with pytest.warns(XClimaxWarning, match="land_sea_mask"):
            stats = lazy.compute()
    else:
        with pytest.warns(XClimaxWarning, match="land_sea_mask"):
            stats = compute_stats(ds, **kwargs)
    assert float(stats["std"].sel(variable="land_sea_mask")) == 1.0
    assert float(stats["mean"].sel(variable="total_precipitation")) == 0.0
    ref = tp.values.astype(np.float64)
    np.testing.assert_allclose(float(stats["std"].sel(variable="total_precipitation")), ref.std(), rtol=1e-5)


def test_normalize_denormalize(era5, backend):
    da = as_backend(to_array(era5, NAMES), backend)
    stats = compute_stats(era5, variables=NAMES).compute()
    with raise_if_dask_computes():
        z = normalize(da, stats)
        back = denormalize(z, stats)
    assert z.dtype == np.float32 and z.dims == da.dims
    zc = z.compute()
    m = stats["mean"].sel(variable="temperature_850").item()
    s = stats["std"].sel(variable="temperature_850").item()
    np.testing.assert_allclose(zc.sel(variable="temperature_850").values,
                               (era5["temperature"].sel(level=850).values - m) / s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(back.values, da.values, rtol=1e-5, atol=1e-3)
    # alignment on the variable coordinate, not position; dict statistics accepted
    rev = stats.isel(variable=slice(None, None, -1))
    np.testing.assert_allclose(normalize(da, rev).values, zc.values, rtol=1e-6)
    np.testing.assert_allclose(normalize(da, stats_to_dict(stats)).values, zc.values, rtol=1e-6)
    with pytest.raises(DataError, match=r"no normalisation statistics for \['orography'\]"):
        normalize(da, stats.drop_sel(variable="orography"))
    with pytest.raises(DataError, match="'mean' and 'std'"):
        normalize(da, stats.rename(mean="mu"))


def test_stats_dict_round_trip(era5):
    stats = compute_stats(era5, variables=NAMES)
    d = stats_to_dict(stats)
    assert list(d) == NAMES and all(isinstance(v[0], float) and isinstance(v[1], float) for v in d.values())
    back = stats_from_dict(d)
    xr.testing.assert_allclose(back, stats.compute())
    assert stats_to_dict(back) == d
    with pytest.raises(DataError, match="mean, std"):
        stats_from_dict({"a": (1.0,)})
