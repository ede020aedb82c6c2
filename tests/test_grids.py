"""Grids (issue 10): models know their grid, limited-area and odd-sized grids, regridding that never extrapolates.

Oracles: analytic fields (bilinear is exact on fields linear in latitude and longitude, conservative
remapping preserves area means computed from the cell bounds), xarray's own ``interp`` and
independent numpy computations; never the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xclimax
from tests import as_backend, raise_if_dask_computes
from xclimax.exceptions import GridError
from xclimax.testing import grid_coords, synthetic_dataset


def _field(lat, lon, f, time=2):
    """A DataArray ``f(lat, lon)`` (degrees) repeated over ``time`` steps, CF-annotated coordinates."""
    values = np.broadcast_to(f(lat[:, None], lon[None, :]), (time, lat.size, lon.size)).copy()
    return xr.DataArray(
        values, dims=("time", "lat", "lon"),
        coords={"time": np.arange(time), "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})},
        name="field",
    )


def _chunk(da, backend):
    return da.chunk({"time": 1}) if backend == "dask" else da


# ----------------------------------------------------------------------------- bilinear


@pytest.mark.parametrize("area", ["global", "regional"])
def test_bilinear_is_exact_on_bilinear_fields_and_lazy(backend, area):
    def f(la, lo):  # bilinear in (lat, lon), no wrap inside the targets used below
        return 3.0 + 0.5 * la - 0.2 * lo + 0.01 * la * lo

    if area == "global":
        lat, lon = grid_coords(16, 32)
        tlat, tlon = np.linspace(-80, 80, 7), np.linspace(2, 340, 9)
    else:  # 2 degree cells over a box; targets strictly between its outer centres
        lat, lon = np.arange(20.0, 51.0, 2.0), np.arange(230.0, 291.0, 2.0)
        tlat, tlon = np.linspace(20.5, 49.5, 6), np.linspace(230.3, 289.9, 7)
    src = _chunk(_field(lat, lon, f), backend)
    with raise_if_dask_computes():
        out = xclimax.grid.regrid(src, tlat, tlon, method="bilinear")
    assert (backend == "dask") == (out.chunks is not None)
    np.testing.assert_allclose(out.isel(time=0).values, f(tlat[:, None], tlon[None, :]), rtol=1e-12, atol=1e-9)


def test_bilinear_matches_xarray_interp_inside_and_is_nan_outside():
    """Regional source: inside its centres = xarray's interp; outside its cells NaN (never extrapolated)."""
    rng = np.random.default_rng(1)
    lat, lon = np.arange(15.0, 66.0, 2.5), np.arange(220.0, 301.0, 2.5)
    src = xr.DataArray(rng.normal(size=(lat.size, lon.size)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    glat, glon = grid_coords(32, 64)
    out = xclimax.grid.regrid(src, glat, glon)
    inside_lat = (glat >= lat[0]) & (glat <= lat[-1])
    inside_lon = (glon >= lon[0]) & (glon <= lon[-1])
    ref = src.interp(lat=glat[inside_lat], lon=glon[inside_lon])  # scipy's linear interpolation
    np.testing.assert_allclose(out.values[np.ix_(inside_lat, inside_lon)], ref.values, rtol=1e-12)
    # cells of the source reach half a spacing beyond its outer centres; beyond that: NaN
    cell_lat = (glat >= lat[0] - 1.25) & (glat <= lat[-1] + 1.25)
    cell_lon = (glon >= lon[0] - 1.25) & (glon <= lon[-1] + 1.25)
    assert np.isfinite(out.values[np.ix_(cell_lat, cell_lon)]).all()
    assert np.isnan(out.values[~cell_lat]).all() and np.isnan(out.values[:, ~cell_lon]).all()
    assert np.isnan(out.sel(lat=out.lat.min()).values).all()  # the South Pole is not 296 K


def test_bilinear_skips_missing_neighbours():
    lat, lon = grid_coords(8, 16)
    src = _field(lat, lon, lambda la, lo: 0 * la + 0 * lo + 5.0, time=1)
    src[0, 3, 4] = np.nan
    out = xclimax.grid.regrid(src, np.array([lat[3] + 1.0]), np.array([lon[4] + 2.0]))
    assert out.item() == pytest.approx(5.0)
    src[0, 3:5, 4:6] = np.nan  # every neighbour missing: NaN, not a made-up value
    assert np.isnan(xclimax.grid.regrid(src, np.array([lat[3] + 1.0]), np.array([lon[4] + 2.0])).item())


def test_regional_grid_crossing_the_meridian_stays_contiguous():
    lat = np.arange(40.0, 61.0, 5.0)
    lon_in = np.array([350.0, 355.0, 0.0, 5.0, 10.0])  # as many files store a box over Greenwich
    src = _field(lat, lon_in, lambda la, lo: la + ((lo + 180) % 360 - 180), time=1)
    norm, info = xclimax.grid.normalize_grid(src)
    assert norm["lon"].values.tolist() == [-10.0, -5.0, 0.0, 5.0, 10.0]
    assert xclimax.grid.restore_grid(norm, info).identical(src)
    out = xclimax.grid.regrid(src, np.array([50.0]), np.array([357.5, 2.5, 30.0]))  # (canonical order back)
    np.testing.assert_allclose(out.sel(lon=[357.5, 2.5, 30.0]).values[0, 0], [50 - 2.5, 50 + 2.5, np.nan])


# ----------------------------------------------------------------------------- conservative


def _band_areas(edges_lat, edges_lon):
    """Independent cell areas (unit sphere) from edges: dlon * dsin(lat)."""
    return np.outer(np.diff(np.sin(np.deg2rad(edges_lat))), np.deg2rad(np.diff(edges_lon)))


def test_conservative_honours_cf_bounds_and_preserves_area_means(backend):
    """A non-uniform (Gaussian-like) grid with CF bounds onto a regular one: global area mean preserved."""
    rng = np.random.default_rng(2)
    edges_lat = np.sort(np.concatenate([[-90.0, 90.0], rng.uniform(-89, 89, 23)]))  # 24 unequal bands
    edges_lon = np.linspace(0.0, 360.0, 37)
    lat = 0.5 * (edges_lat[1:] + edges_lat[:-1]) + 0.2 * np.diff(edges_lat) * rng.uniform(-1, 1, 24)  # off-centre
    lon = 0.5 * (edges_lon[1:] + edges_lon[:-1])
    values = rng.normal(280, 10, size=(2, lat.size, lon.size))
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), values),
         "lat_bnds": (("lat", "bnds"), np.stack([edges_lat[:-1], edges_lat[1:]], 1)),
         "lon_bnds": (("lon", "bnds"), np.stack([edges_lon[:-1], edges_lon[1:]], 1))},
        coords={"time": [0, 1], "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north",
                                                      "bounds": "lat_bnds"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east", "bounds": "lon_bnds"})},
    )
    if backend == "dask":  # (bounds, like coordinates, are read: they are small)
        ds = ds.assign(tas=ds["tas"].chunk({"time": 1}))
    tlat, tlon = grid_coords(12, 24)
    with raise_if_dask_computes():
        out = xclimax.grid.regrid(ds, tlat, tlon, method="conservative")
    a_src = _band_areas(edges_lat, edges_lon)
    a_dst = _band_areas(np.linspace(-90, 90, 13), np.linspace(-7.5, 352.5, 25))
    mean_src = (values * a_src).sum((1, 2)) / a_src.sum()
    mean_dst = (out["tas"].values * a_dst).sum((1, 2)) / a_dst.sum()
    np.testing.assert_allclose(mean_dst, mean_src, rtol=1e-12)
    assert "lat_bnds" not in out  # bounds of the old grid are dropped
    # the bounds matter: mid-point cells of these off-centre points are other cells (and miss the poles: NaN there)
    no_bounds = xclimax.grid.regrid(ds.drop_vars(["lat_bnds", "lon_bnds"]), tlat, tlon, method="conservative")
    inside = np.isfinite(no_bounds["tas"].values)
    assert inside.any() and not inside.all()
    assert not np.allclose(no_bounds["tas"].values[inside], out["tas"].values[inside], rtol=1e-3)


def test_conservative_block_mean_regional_and_nan_aware():
    """2x2 blocks of a limited area: the area-weighted block means; a missing cell is left out of its block."""
    rng = np.random.default_rng(3)
    edges_lat, edges_lon = np.arange(10.0, 51.0, 2.5), np.arange(200.0, 261.0, 2.5)
    lat, lon = edges_lat[:-1] + 1.25, edges_lon[:-1] + 1.25
    values = rng.normal(size=(1, lat.size, lon.size))
    values[0, 5, 7] = np.nan
    src = _field(lat, lon, lambda la, lo: 0 * la + 0 * lo, time=1).copy(data=values)
    tlat, tlon = edges_lat[:-1:2] + 2.5, edges_lon[:-1:2] + 2.5
    out = xclimax.grid.regrid(src, tlat, tlon, method="conservative").values[0]
    area = _band_areas(edges_lat, edges_lon)
    for i in range(tlat.size):
        for j in range(tlon.size):
            block = values[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            w = np.where(np.isnan(block), 0.0, area[2 * i:2 * i + 2, 2 * j:2 * j + 2])
            assert out[i, j] == pytest.approx(np.nansum(block * w) / w.sum(), rel=1e-12)
    # a target cell that sticks out of the source area is NaN (not a mean over the part inside)
    edge = xclimax.grid.regrid(src, np.array([lat[0] - 1.0, 30.0]), np.array([230.0, 232.5]), method="conservative")
    assert np.isnan(edge.values[0, 0]).all() and np.isfinite(edge.values[0, 1]).all()


# ----------------------------------------------------------------------------- models know their grid


def _regional(nt=24, grid=(9, 13), start_lat=30.0, start_lon=340.0, d=2.5, calendar=None):
    """A limited-area 2m temperature (odd sizes, crossing 0 E) from the synthetic dataset's wave fields."""
    glob = synthetic_dataset(nt, variables=["2m_temperature"], grid=(72, 144), constants=False, seed=3)
    lat = start_lat + d * np.arange(grid[0])
    lon = (start_lon + d * np.arange(grid[1])) % 360
    out = glob.interp(lat=lat, lon=lon)
    for c in ("lat", "lon"):
        out[c].attrs = glob[c].attrs
    out["2m_temperature"].attrs = glob["2m_temperature"].attrs
    return out


@pytest.fixture(scope="module")
def regional_model():
    data = _regional()
    torch.manual_seed(0)
    base = xclimax.ClimaX(["2m_temperature"], img_size=(9, 13), patch_size=2, embed_dim=16, depth=1, num_heads=2,
                          decoder_depth=1)
    model, _ = xclimax.finetune(data, base, lead_time="6h", batch_size=4, max_steps=3)
    return model, data


def test_limited_area_odd_sized_model_trains_records_and_saves_its_grid(regional_model, tmp_path):
    model, data = regional_model
    assert model.img_size == (9, 13) and model.padded_size == (10, 14)
    grid = model.metadata["grid"]
    np.testing.assert_allclose(grid["lat"], data["lat"].values)
    np.testing.assert_allclose(np.asarray(grid["lon"]) % 360, data["lon"].values)
    assert grid["lon"] == sorted(grid["lon"])  # contiguous across 0 E
    path = xclimax.save_checkpoint(model, tmp_path / "regional.safetensors")
    loaded = xclimax.load_checkpoint(path)
    assert loaded.metadata["grid"] == grid
    lat, lon = xclimax.grid.model_grid(loaded)
    np.testing.assert_allclose(lat, grid["lat"])


def test_forecast_checks_input_against_the_models_own_grid(regional_model, backend):
    model, data = regional_model
    ds = as_backend(data, backend)
    with raise_if_dask_computes():
        fc = xclimax.forecast(ds, model, lead_time="6h")
    assert fc["2m_temperature"].shape == (24, 1, 9, 13)
    assert np.isfinite(fc["2m_temperature"].values).all()
    np.testing.assert_allclose(fc["lon"].values, data["lon"].values)  # the input's conventions come back
    shifted = data.assign_coords(lat=data["lat"] + 1.0)
    with pytest.raises(GridError, match="lat"):
        xclimax.forecast(shifted, model, lead_time="6h")


def test_global_input_is_regridded_onto_a_regional_model_and_regional_input_refused_by_a_global_one(regional_model):
    model, data = regional_model
    glob = synthetic_dataset(4, variables=["2m_temperature"], grid=(72, 144), constants=False, seed=3)
    fc = xclimax.forecast(glob, model, lead_time="6h", regrid="bilinear", output_grid="model")
    by_hand = xclimax.grid.regrid(glob, *xclimax.grid.model_grid(model))
    ref = xclimax.forecast(by_hand, model, lead_time="6h")
    np.testing.assert_allclose(fc["2m_temperature"].values, ref["2m_temperature"].values, rtol=1e-5)
    # the other way round: a regional field onto a global model grid would need extrapolation
    global_model = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    global_model.stats = dict(model.stats)
    with pytest.raises(GridError) as info:
        xclimax.forecast(data, global_model, lead_time="6h", regrid="bilinear")
    text = str(info.value)
    assert "model grid (lat -90..90, all longitudes" in text and "input (lat 28.75..51.25" in text
    assert "extrapolation" in text


def test_official_checkpoints_get_the_global_climax_grid(tmp_path):
    net = xclimax.ClimaX(img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "official.ckpt")
    model = xclimax.load_checkpoint(tmp_path / "official.ckpt", num_heads=2)
    lat, lon = xclimax.grid.model_grid(model)
    np.testing.assert_allclose(model.metadata["grid"]["lat"], -90 + 11.25 + 22.5 * np.arange(8))
    np.testing.assert_allclose(lon, 22.5 * np.arange(16))
    again = xclimax.load_checkpoint(tmp_path / "official.ckpt", num_heads=2, img_size=(12, 24))
    np.testing.assert_allclose(again.metadata["grid"]["lat"], -90 + 7.5 + 15 * np.arange(12))


def test_padding_is_invisible_edge_replication_then_crop():
    """The odd-sized model equals a model on the padded grid fed edge-replicated input, cropped."""
    torch.manual_seed(0)
    odd = xclimax.ClimaX(["2m_temperature", "lattitude"], img_size=(9, 13), patch_size=2, embed_dim=16, depth=1,
                         num_heads=2).eval()
    even = xclimax.ClimaX(["2m_temperature", "lattitude"], img_size=(10, 14), patch_size=2, embed_dim=16, depth=1,
                          num_heads=2).eval()
    even.load_state_dict(odd.state_dict())
    x = torch.randn(3, 2, 9, 13)
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, 1), (0, 1)), mode="edge"))
    lead = torch.zeros(3)
    with torch.no_grad():
        out = odd(x, lead, odd.variables)
        ref = even(padded, lead, even.variables)[..., :9, :13]
    assert out.shape == (3, 2, 9, 13)
    torch.testing.assert_close(out, ref)
