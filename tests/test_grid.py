"""Tests for xclimax.grid: grid normalisation, checks and regridding."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tests import as_backend, raise_if_dask_computes
from xclimax.cf.grid import GridInfo, check_grid, model_grid, normalize_grid, regrid, restore_grid
from xclimax.exceptions import GridError
from xclimax.testing import grid_coords, synthetic_dataset


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(3, variables=["2m_temperature", "temperature"], levels=[500, 850], grid=(8, 16))


def _variant(ds, lat_desc, lon_neg):
    out = ds
    if lon_neg:
        out = out.assign_coords(lon=((out.lon + 180) % 360) - 180).sortby("lon")
    if lat_desc:
        out = out.isel(lat=slice(None, None, -1))
    return out


@pytest.mark.parametrize("lat_desc", [False, True])
@pytest.mark.parametrize("lon_neg", [False, True])
def test_normalize_restore_round_trip(ds, backend, lat_desc, lon_neg):
    user = as_backend(_variant(ds, lat_desc, lon_neg), backend)
    with raise_if_dask_computes():
        norm, info = normalize_grid(user)
        back = restore_grid(norm, info)
    assert isinstance(info, GridInfo)
    assert info.lat_descending == lat_desc and info.lon_negative == lon_neg
    np.testing.assert_array_equal(norm["lat"].values, ds["lat"].values)
    np.testing.assert_array_equal(norm["lon"].values, ds["lon"].values)
    xr.testing.assert_identical(norm.compute(), ds)
    xr.testing.assert_identical(back.compute(), user.compute())


def test_names_and_odd_orders(ds):
    user = ds.rename(lat="latitude", lon="longitude")
    user = user.isel(longitude=np.r_[5:16, 0:5])  # starts at 112.5 degrees: a rotation
    norm, info = normalize_grid(user)
    assert (info.lat_name, info.lon_name) == ("latitude", "longitude")
    xr.testing.assert_identical(norm, ds)
    xr.testing.assert_identical(restore_grid(norm, info), user)
    # arbitrary permutation (not a rotation) and y/x names without attributes
    perm = np.random.default_rng(0).permutation(16)
    raw = ds.isel(lon=perm).rename(lat="y", lon="x")
    for c in ("x", "y"):
        raw[c].attrs = {}
    norm, info = normalize_grid(raw)
    np.testing.assert_array_equal(norm["lon"].values, ds["lon"].values)
    np.testing.assert_array_equal(norm["2m_temperature"].values, ds["2m_temperature"].values)
    xr.testing.assert_identical(restore_grid(norm, info), raw)


def test_restore_after_regrid_applies_conventions(ds):
    user = _variant(ds, True, True)
    norm, info = normalize_grid(user)
    coarse = regrid(norm, *model_grid((4, 8)))
    back = restore_grid(coarse, info)
    assert back["lat"].values[0] > back["lat"].values[-1]
    assert back["lon"].values.min() < 0 and np.all(np.diff(back["lon"].values) > 0)


def test_grid_errors():
    ds = synthetic_dataset(1, variables=["2m_temperature"], grid=(4, 8))
    with pytest.raises(GridError, match="could not find the latitude"):
        bad = ds.rename(lat="foo")
        bad["foo"].attrs = {}
        normalize_grid(bad)
    dup = xr.concat([ds, ds.isel(lon=[0]).assign_coords(lon=[360.0])], dim="lon")
    with pytest.raises(GridError, match="repeat"):
        normalize_grid(dup)


def test_model_grid_and_check_grid():
    lat, lon = model_grid((32, 64))
    np.testing.assert_allclose(lat, -90 + 2.8125 + 5.625 * np.arange(32))
    np.testing.assert_allclose(lon, 5.625 * np.arange(64))
    assert np.array_equal(lat, grid_coords(32, 64)[0])
    ds = synthetic_dataset(1, variables=["2m_temperature"], grid=(8, 16))
    check_grid(ds, (8, 16))
    check_grid(_variant(ds, True, True), (8, 16))  # conventions do not matter
    with pytest.raises(GridError, match=r"shape mismatch.*\(32, 64\).*\(8, 16\)"):
        check_grid(ds, (32, 64))
    shifted = ds.assign_coords(lat=ds.lat + 1.0)
    with pytest.raises(GridError, match="offset grid.*lat"):
        check_grid(shifted, (8, 16))
    poles = ds.assign_coords(lat=np.linspace(-90, 90, 8))
    with pytest.raises(GridError, match="lat"):
        check_grid(poles, (8, 16))
    regional = ds.assign_coords(lon=np.arange(16) * 5.0)
    with pytest.raises(GridError, match="non-global grid: lon"):
        check_grid(regional, (8, 16))
    check_grid(ds.assign_coords(lat=ds.lat + 5e-4), (8, 16))  # within the 1e-3 degree tolerance


def test_bilinear_linear_in_lon_and_smooth(backend):
    slat, slon = grid_coords(16, 32)
    # exactly linear in lon away from the wrap, and in lat
    field = 2.0 * slat[:, None] + 0.0 * slon[None, :] + np.where(slon < 180, slon, 360 - slon)[None, :]
    da = xr.DataArray(field, dims=("lat", "lon"), coords={"lat": slat, "lon": slon})
    da = da.expand_dims(time=2).chunk({"time": 1}) if backend == "dask" else da.expand_dims(time=2)
    tlat, tlon = np.array([-60.3, 0.0, 45.2]), np.array([10.0, 100.1, 200.7, 300.0])
    with raise_if_dask_computes():
        out = regrid(da, tlat, tlon)
    expected = 2.0 * tlat[:, None] + np.where(tlon < 180, tlon, 360 - tlon)[None, :]
    np.testing.assert_allclose(out.isel(time=0).values, expected, rtol=1e-10)
    # independent: xarray interp after periodic padding; latitudes beyond the source use the edge
    padded = xr.concat([da.isel(lon=[-1]).assign_coords(lon=[slon[-1] - 360]), da,
                        da.isel(lon=[0]).assign_coords(lon=[360.0])], dim="lon").compute()
    tlat2 = np.array([-89.0, -30.0, 88.0])
    tlon2 = np.array([0.0, 1.0, 358.0, 359.9])
    ref = padded.interp(lat=np.clip(tlat2, slat[0], slat[-1]), lon=tlon2).assign_coords(lat=tlat2)
    got = regrid(da, tlat2, tlon2).compute()
    np.testing.assert_allclose(got.values, ref.transpose(*got.dims).values, rtol=1e-12)


def test_bilinear_identity_and_smooth_dataset():
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=(16, 32))
    same = regrid(ds, ds.lat.values, ds.lon.values)
    np.testing.assert_allclose(same["2m_temperature"].values, ds["2m_temperature"].values, rtol=1e-6)
    assert same["land_sea_mask"].dtype == np.float32


def _area_mean(da, lat):
    d = 180.0 / lat.size
    w = np.sin(np.deg2rad(np.clip(lat + d / 2, -90, 90))) - np.sin(np.deg2rad(np.clip(lat - d / 2, -90, 90)))
    return (da * xr.DataArray(w, dims="lat")).sum(("lat", "lon")) / (w.sum() * da.sizes["lon"])


@pytest.mark.parametrize("target", [(4, 8), (12, 24), (32, 64)])
def test_conservative_preserves_global_mean(backend, target):
    ds = as_backend(synthetic_dataset(2, variables=["2m_temperature"], grid=(16, 32), constants=False), backend)
    src = ds["2m_temperature"].astype("float64")
    with raise_if_dask_computes():
        out = regrid(src, *model_grid(target), method="conservative")
    assert out.sizes["lat"] == target[0] and out.sizes["lon"] == target[1]
    np.testing.assert_allclose(
        _area_mean(out, out["lat"].values).values, _area_mean(src, src["lat"].values).values, rtol=1e-6
    )
    # a constant field stays constant
    const = regrid(xr.ones_like(src), *model_grid(target), method="conservative")
    np.testing.assert_allclose(const.values, 1.0, rtol=1e-12)


def test_conservative_block_average():
    """Halving the resolution averages 2x2 blocks with sin(lat) area weights."""
    lat, lon = grid_coords(8, 16)
    vals = np.random.default_rng(0).normal(size=(8, 16))
    da = xr.DataArray(vals, dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    out = regrid(da, *grid_coords(4, 8), method="conservative")
    edges = np.sin(np.deg2rad(np.linspace(-90, 90, 9)))
    a = np.diff(edges)
    expected = np.zeros((4, 8))
    for i in range(4):
        for j in range(8):
            # target lon cell j is centred on 45 j: it covers half of source cells 4j-1 and 4j+1... with centres
            # 22.5 k, the target cell [45 j - 22.5, 45 j + 22.5] holds source cell 2j fully and halves of 2j +- 1
            cols = {(2 * j) % 16: 0.5, (2 * j - 1) % 16: 0.25, (2 * j + 1) % 16: 0.25}
            rows = {2 * i: a[2 * i], 2 * i + 1: a[2 * i + 1]}
            tot = sum(rows.values())
            expected[i, j] = sum(rw / tot * cw * vals[r, c] for r, rw in rows.items() for c, cw in cols.items())
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)


def test_regrid_skips_missing_values():
    lat, lon = grid_coords(8, 16)
    da = xr.DataArray(np.ones((8, 16)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    da[3, 4] = np.nan
    for method in ("bilinear", "conservative"):
        out = regrid(da, *grid_coords(4, 8), method=method)
        np.testing.assert_allclose(out.values, 1.0)
    with pytest.raises(ValueError, match="method"):
        regrid(da, lat, lon, method="cubic")
