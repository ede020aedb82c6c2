"""Tests for xclimax.tokens: CF lookup, unit conversion, to_array/from_array."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xclimax
from tests import as_backend, raise_if_dask_computes
from xclimax import vocab
from xclimax.cf.report import CheckReport, check
from xclimax.cf.tokens import find_variables, from_array, mapping, to_array
from xclimax.exceptions import CFMappingError, DataError
from xclimax.testing import synthetic_dataset

GRID = (4, 8)
SOME = ["land_sea_mask", "orography", "lattitude", "2m_temperature", "geopotential_500", "temperature_850",
        "relative_humidity_50", "10m_u_component_of_wind"]


@pytest.fixture(scope="module")
def era5():
    return synthetic_dataset(3, grid=GRID)


@pytest.fixture(scope="module")
def cmip():
    return synthetic_dataset(3, grid=GRID, style="cmip")


def _values(da, name):
    return np.asarray(da.sel(variable=name).values, dtype=np.float64)


def test_era5_all_48_lazy(era5, backend):
    ds = as_backend(era5, backend)
    with raise_if_dask_computes():
        da = to_array(ds)
    assert da.dims == ("time", "variable", "lat", "lon")
    assert da.dtype == np.float32
    assert list(da["variable"].values) == list(vocab.CLIMAX_VARIABLES)
    assert (backend == "dask") == (da.chunks is not None)
    if backend == "dask":
        assert da.chunks[1] == (48,) and da.chunks[0] == (2, 1)
    # independent extraction
    np.testing.assert_allclose(_values(da, "temperature_850"), era5["temperature"].sel(level=850).values, rtol=1e-6)
    np.testing.assert_allclose(
        _values(da, "orography"), np.broadcast_to(era5["geopotential_at_surface"].values / 9.80665, (3, *GRID)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(_values(da, "land_sea_mask")[2], era5["land_sea_mask"].values)
    np.testing.assert_allclose(_values(da, "lattitude"), np.broadcast_to(era5["lat"].values[:, None], (3, *GRID)),
                               rtol=1e-6)


def test_cmip_style_units_and_plev(cmip, backend):
    ds = as_backend(cmip, backend)
    names = ["2m_temperature", "geopotential_500", "geopotential_50", "specific_humidity_925"]
    with raise_if_dask_computes():
        found = find_variables(ds, names)
        da = to_array(ds, names)
    assert found["geopotential_500"].source == "zg"
    assert found["geopotential_500"].level == 50000.0
    assert "9.80665" in found["geopotential_500"].conversion
    np.testing.assert_allclose(_values(da, "geopotential_500"), cmip["zg"].sel(plev=50000).values * 9.80665, rtol=1e-6)
    np.testing.assert_allclose(_values(da, "geopotential_50"), cmip["zg"].sel(plev=5000).values * 9.80665, rtol=1e-6)
    np.testing.assert_allclose(_values(da, "2m_temperature"), cmip["tas"].values)
    assert list(da["variable"].values) == names


def test_cmip_missing_constants_error_lists_all(cmip):
    with pytest.raises(CFMappingError) as err:
        to_array(cmip, ["land_sea_mask", "2m_temperature", "orography", "relative_humidity_333"])
    msg = str(err.value)
    assert "2 of 4" in msg
    assert "land_sea_mask" in msg and "orography" in msg
    assert "land_binary_mask" in msg and "surface_altitude" in msg  # what was searched
    assert "variable_map" in msg
    assert "relative_humidity_333: unknown ClimaX variable" in msg
    with pytest.raises(CFMappingError, match="relative_humidity_333: unknown ClimaX variable"):
        to_array(cmip, ["relative_humidity_333"])
    # strict=False returns only the found ones
    found = find_variables(cmip, ["land_sea_mask", "2m_temperature"])
    assert list(found) == ["2m_temperature"]
    with pytest.raises(CFMappingError, match="land_sea_mask"):
        find_variables(cmip, ["land_sea_mask", "2m_temperature"], strict=True)


def test_missing_level_says_levels_found():
    ds = synthetic_dataset(2, variables=["temperature"], levels=[500, 850], grid=GRID)
    with pytest.raises(CFMappingError, match=r"not 925 hPa"):
        to_array(ds, ["temperature_500", "temperature_925"])


def test_isobaricInhPa_and_level_without_units(backend):
    ds = synthetic_dataset(2, variables=["temperature"], grid=GRID)
    grib = ds.rename(level="isobaricInhPa")
    bare = ds.copy()
    bare["level"].attrs = {}
    pa_no_units = ds.assign_coords(level=ds["level"] * 100).rename(level="plev")
    pa_no_units["plev"].attrs = {}
    for other in (grib, bare, pa_no_units):
        out = to_array(as_backend(other, backend), ["temperature_850", "temperature_50"])
        np.testing.assert_array_equal(out.values, to_array(ds, ["temperature_850", "temperature_50"]).values)


def test_level_tolerance():
    ds = synthetic_dataset(2, variables=["temperature"], grid=GRID, style="cmip")
    ds = ds.assign_coords(plev=ds["plev"] + 0.5)  # float noise in Pa
    ds["plev"].attrs.update(units="Pa")
    assert to_array(ds, ["temperature_850"]).sizes["variable"] == 1


def test_degC_and_rh_fraction(backend):
    ds = synthetic_dataset(2, variables=["relative_humidity", "2m_temperature"], grid=GRID, constants=False)
    user = ds.copy()
    user["2m_temperature"] = (ds["2m_temperature"] - 273.15).assign_attrs(ds["2m_temperature"].attrs, units="degC")
    user["relative_humidity"] = (ds["relative_humidity"] / 100).assign_attrs(ds["relative_humidity"].attrs, units="1")
    names = ["2m_temperature", "relative_humidity_500"]
    got = to_array(as_backend(user, backend), names)
    ref = to_array(ds, names)
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5)
    found = find_variables(user, names)
    assert "273.15" in found["2m_temperature"].conversion
    assert "x 100" in found["relative_humidity_500"].conversion


def test_incompatible_units_error():
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=GRID, constants=False)
    ds["2m_temperature"].attrs["units"] = "furlongs"
    with pytest.raises(CFMappingError) as err:
        find_variables(ds, ["2m_temperature"])
    msg = str(err.value)
    assert "'2m_temperature'" in msg and "'furlongs'" in msg and "'K'" in msg
    report = check(ds, variables=["2m_temperature"])  # reported, not raised
    assert not report.ok and "2m_temperature" in report.problems


def test_constants_from_other_standard_names():
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=GRID)
    oro = (ds["geopotential_at_surface"] / 9.80665).assign_attrs(standard_name="surface_altitude", units="m")
    frac = (ds["land_sea_mask"] * 100).assign_attrs(standard_name="land_area_fraction", units="%")
    user = ds.drop_vars(["geopotential_at_surface", "land_sea_mask"]).assign(orog=oro, sftlf=frac)
    got = to_array(user, ["orography", "land_sea_mask"])
    ref = to_array(ds, ["orography", "land_sea_mask"])
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-4)


def test_height_coordinates():
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=GRID, style="cmip")
    assert float(ds["tas"]["height"]) == 2.0  # scalar height coordinate
    assert mapping(ds, ["2m_temperature"]) == {"2m_temperature": "tas"}
    wrong = ds.assign_coords(height=10.0)
    with pytest.raises(CFMappingError, match="not 2 m"):
        to_array(wrong, ["2m_temperature"])
    # a height dimension holding both 2 m and 10 m winds
    base = synthetic_dataset(2, variables=["10m_u_component_of_wind"], grid=GRID, constants=False)
    u = base["10m_u_component_of_wind"]
    wind = xr.concat([u * 0 + 1, u], dim=pd.Index([2.0, 10.0], name="height")).rename("wind")
    wind["height"].attrs = {"standard_name": "height", "units": "m"}
    user = xr.Dataset({"wind": wind.assign_attrs(standard_name="eastward_wind", units="m s-1")})
    got = to_array(user, ["10m_u_component_of_wind"])
    np.testing.assert_allclose(got.values[:, 0], u.values)
    assert got.dims == ("time", "variable", "lat", "lon")


def test_variable_map_and_options():
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=GRID, constants=False)
    user = xr.Dataset({"t2": ds["2m_temperature"].drop_attrs() if hasattr(xr.DataArray, "drop_attrs")
                       else ds["2m_temperature"].copy(deep=False).assign_attrs({})})
    user["t2"].attrs = {"units": "degC"}
    user["t2"] = user["t2"] - 273.15
    user["t2"].attrs = {"units": "degC"}
    with pytest.raises(CFMappingError):
        to_array(user, ["2m_temperature"])
    ref = ds["2m_temperature"].values
    got = to_array(user, ["2m_temperature"], variable_map={"2m_temperature": "t2"})
    np.testing.assert_allclose(got.values[:, 0], ref, rtol=1e-5)
    with xclimax.set_options(variable_map={"2m_temperature": "t2"}):
        got2 = to_array(user, ["2m_temperature"])
    np.testing.assert_array_equal(got.values, got2.values)
    with pytest.raises(CFMappingError, match="'nope'"):
        to_array(user, ["2m_temperature"], variable_map={"2m_temperature": "nope"})


def test_extra_variables():
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=GRID, constants=False)
    msl = (ds["2m_temperature"] * 0 + 101325.0).assign_attrs(standard_name="air_pressure_at_mean_sea_level", units="hPa")
    msl = msl / 100
    msl.attrs = {"standard_name": "air_pressure_at_mean_sea_level", "units": "hPa"}
    user = ds.assign(msl=msl)
    with pytest.raises(CFMappingError, match="unknown extra variable"):
        to_array(user, ["mean_sea_level_pressure"], extra_variables=["bogus"])
    da = to_array(user, ["2m_temperature", "mean_sea_level_pressure"], extra_variables=["mean_sea_level_pressure"])
    np.testing.assert_allclose(_values(da, "mean_sea_level_pressure"), 101325.0, rtol=1e-6)
    # custom criteria dict, also through the global option
    crit = {"my_index": {"standard_name": "air_pressure_at_mean_sea_level", "units": "hPa"}}
    da = to_array(user, ["my_index"], extra_variables=crit)
    np.testing.assert_allclose(_values(da, "my_index"), 1013.25, rtol=1e-6)
    with xclimax.set_options(extra_variables=crit):
        assert "my_index" in find_variables(user)


def test_batch_dims_and_constants_broadcast(backend):
    ds = synthetic_dataset(3, variables=["2m_temperature", "temperature"], grid=GRID)
    members = xr.concat([ds[["2m_temperature", "temperature"]], ds[["2m_temperature", "temperature"]] + 1],
                        dim=pd.Index([0, 1], name="member"))
    user = members.assign(land_sea_mask=ds["land_sea_mask"], geopotential_at_surface=ds["geopotential_at_surface"])
    with raise_if_dask_computes():
        da = to_array(as_backend(user, backend), ["land_sea_mask", "2m_temperature", "temperature_500"])
    assert da.dims == ("member", "time", "variable", "lat", "lon")
    assert da.shape == (2, 3, 3, *GRID)
    np.testing.assert_allclose(da.sel(member=1, variable="2m_temperature").values,
                               ds["2m_temperature"].values + 1, rtol=1e-6)
    lsm = da.sel(variable="land_sea_mask").values
    np.testing.assert_array_equal(lsm, np.broadcast_to(ds["land_sea_mask"].values, lsm.shape))


def test_no_time_dimension():
    ds = synthetic_dataset(1, variables=["2m_temperature"], grid=GRID).isel(time=0, drop=True)
    with pytest.raises(DataError, match="time"):
        to_array(ds, ["2m_temperature"])


def test_grid_conventions_are_normalised(era5):
    flipped = era5.isel(lat=slice(None, None, -1))
    flipped = flipped.assign_coords(lon=((flipped.lon + 180) % 360) - 180).sortby("lon").rename(lat="latitude")
    a = to_array(flipped, SOME)
    b = to_array(era5, SOME)
    xr.testing.assert_identical(a, b)


def test_round_trip_era5(era5, backend):
    ds = as_backend(era5, backend)
    with raise_if_dask_computes():
        da = to_array(ds)
        out = from_array(da, like=ds)
    out = out.compute()
    for name in ("temperature", "geopotential", "specific_humidity", "2m_temperature", "land_sea_mask"):
        xr.testing.assert_allclose(out[name], era5[name].broadcast_like(out[name]).reset_coords(drop=True),
                                   rtol=1e-6)
        assert out[name].attrs["units"] == era5[name].attrs["units"]
        assert out[name].attrs["standard_name"] == era5[name].attrs["standard_name"]
    # surface geopotential needed a conversion: it comes back as orography in m
    assert "geopotential_at_surface" not in out and out["orography"].attrs["units"] == "m"
    assert out["level"].values.tolist() == era5["level"].values.tolist()


def test_round_trip_cmip_like(cmip):
    found = find_variables(cmip)
    names = [n for n in vocab.CLIMAX_VARIABLES if n in found]
    da = to_array(cmip, names)
    canon = from_array(da, like=cmip)
    assert "plev" in canon.dims and canon["plev"].attrs["units"] == "Pa"
    assert canon["plev"].values.tolist() == cmip["plev"].values.tolist()
    assert "ta" in canon and "geopotential" in canon and "zg" not in canon
    assert canon["geopotential"].attrs["units"] == "m2 s-2"
    np.testing.assert_allclose(canon["geopotential"].values, cmip["zg"].values * 9.80665, rtol=1e-6)
    back = from_array(da, like=cmip, units="like")
    assert back["zg"].attrs["units"] == "m"
    np.testing.assert_allclose(back["zg"].values, cmip["zg"].values, rtol=1e-6)
    # without like: ClimaX names, level in hPa ascending
    plain = from_array(da)
    assert plain["level"].values.tolist() == list(vocab.PRESSURE_LEVELS)
    assert plain["temperature"].attrs == {"standard_name": "air_temperature", "units": "K", "long_name": "Temperature"}


def test_from_array_extra_dims():
    ds = synthetic_dataset(2, variables=["temperature", "2m_temperature"], grid=GRID)
    da = to_array(ds, ["temperature_500", "2m_temperature", "temperature_850"])
    da = da.expand_dims(member=2, lead_time=pd.to_timedelta(["6h", "12h", "18h"])).transpose(
        "member", "time", "lead_time", "variable", "lat", "lon")
    out = from_array(da)
    assert out["temperature"].dims == ("member", "time", "lead_time", "level", "lat", "lon")
    assert out["2m_temperature"].dims == ("member", "time", "lead_time", "lat", "lon")
    np.testing.assert_array_equal(out["temperature"].sel(level=850).values, da.sel(variable="temperature_850").values)
    with pytest.raises(DataError, match="variable"):
        from_array(da.isel(variable=0, drop=True))


def test_check_and_mapping_lazy(cmip, backend):
    ds = as_backend(cmip, backend)
    model = SimpleNamespace(variables=("land_sea_mask", "2m_temperature", "geopotential_500"))
    with raise_if_dask_computes():
        report = check(ds, model)
        m = mapping(ds)
    assert isinstance(report, CheckReport)
    assert list(report.found) == ["2m_temperature", "geopotential_500"]
    assert list(report.missing) == ["land_sea_mask"]
    assert report.converted == {"geopotential_500": report.found["geopotential_500"].conversion}
    text = repr(report)
    assert "2/3" in text and "Missing" in text and "zg[plev=50000]" in text
    assert m["geopotential_850"] == "zg" and m["lattitude"] is None and "land_sea_mask" not in m


def test_ambiguous_candidates():
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=GRID, constants=False)
    user = xr.Dataset({"ta_a": ds["2m_temperature"], "ta_b": ds["2m_temperature"] + 1})
    with pytest.raises(CFMappingError, match="ambiguous"):
        to_array(user, ["2m_temperature"])
    got = to_array(user, ["2m_temperature"], variable_map={"2m_temperature": "ta_b"})
    np.testing.assert_allclose(got.values[:, 0], ds["2m_temperature"].values + 1)


def test_does_not_modify_input(era5):
    before = era5.copy(deep=True)
    to_array(era5.isel(lat=slice(None, None, -1)), SOME)
    from_array(to_array(era5, SOME), like=era5)
    xr.testing.assert_identical(before, era5)


def test_names_without_cf_attributes_and_missing_units():
    """WeatherBench-2 style: ClimaX names, no standard_name ('unknown' counts as none); no units -> warning."""
    ds = synthetic_dataset(2, variables=["2m_temperature", "geopotential"], levels=[500], grid=GRID)
    bare = ds.copy()
    for name in bare.data_vars:
        bare[name].attrs = {"units": ds[name].attrs["units"], "standard_name": "unknown"}
    bare["2m_temperature"].attrs = {}
    names = ["2m_temperature", "geopotential_500", "orography", "land_sea_mask"]
    with pytest.warns(xclimax.XClimaxWarning, match="2m_temperature"):
        got = to_array(bare, names)
    xr.testing.assert_identical(got, to_array(ds, names))


@pytest.mark.parametrize("style", ["cmip", "era5"])
def test_single_pressure_level_is_not_a_near_surface_field(style, backend):
    """A size-1 plev/level dimension is a pressure level, never a 2 m / 10 m field."""
    ds = as_backend(synthetic_dataset(3, variables=["temperature", "u_component_of_wind"], levels=[850], grid=GRID,
                                      style=style), backend)
    src, lev = ("ta", "plev") if style == "cmip" else ("temperature", "level")
    with raise_if_dask_computes():
        found = find_variables(ds, ["2m_temperature", "10m_u_component_of_wind", "temperature_850", "u_component_of_wind_850"])
        report = check(ds, variables=["2m_temperature", "temperature_850"])
    assert list(found) == ["temperature_850", "u_component_of_wind_850"]
    assert found["temperature_850"].source == src and found["temperature_850"].selection == {lev: 0}
    assert f"pressure-level dimension {lev!r} (size 1)" in report.missing["2m_temperature"]
    with pytest.raises(CFMappingError, match="2m_temperature"):
        to_array(ds, ["2m_temperature"])
    # the same holds for a level dimension without a coordinate
    bare = ds.drop_vars(lev)
    assert "2m_temperature" not in find_variables(bare, ["2m_temperature"])
    # even an explicit variable_map cannot turn a pressure-level field into a 2 m one
    with pytest.raises(CFMappingError, match="not a 2 m field"):
        to_array(ds, ["2m_temperature"], variable_map={"2m_temperature": src})
    with raise_if_dask_computes():
        da = to_array(ds, ["temperature_850"])
    np.testing.assert_array_equal(da.values[:, 0], ds[src].values[:, 0])


@pytest.mark.parametrize("style", ["cmip", "era5"])
def test_scalar_pressure_coordinate_after_sel(style, backend):
    """``ds.sel(plev=85000)`` leaves a scalar plev shared by every variable: names decide, never the height rule."""
    full = synthetic_dataset(3, variables=["temperature", "2m_temperature"], levels=[500, 850], grid=GRID, style=style,
                             constants=False)
    src, sfc, lev, value = ("ta", "tas", "plev", 85000) if style == "cmip" else ("temperature", "2m_temperature", "level", 850)
    ds = as_backend(full, backend).sel({lev: value})
    assert lev in ds[sfc].coords and lev not in ds[sfc].dims  # the shared scalar coordinate
    with raise_if_dask_computes():
        assert mapping(ds, ["2m_temperature", "temperature_850", "temperature_500"]) == {
            "2m_temperature": sfc, "temperature_850": src}
        da = to_array(ds, ["2m_temperature", "temperature_850"])
    np.testing.assert_array_equal(da.values[:, 0], full[sfc].values)
    np.testing.assert_array_equal(da.values[:, 1], full[src].sel({lev: value}).values)
    # alone, the pressure-level variable is temperature_850 and not 2m_temperature
    alone = ds[[src]]
    found = find_variables(alone, ["2m_temperature", "temperature_850"])
    assert list(found) == ["temperature_850"] and found["temperature_850"].level == value
    assert "scalar pressure coordinate" in check(alone, variables=["2m_temperature"]).missing["2m_temperature"]
    # a user who knows better maps it explicitly
    got = to_array(alone, ["2m_temperature"], variable_map={"2m_temperature": src})
    np.testing.assert_array_equal(got.values[:, 0], full[src].sel({lev: value}).values)


def test_from_array_with_variables_on_different_levels_keeps_every_level(backend):
    """geopotential_500 + temperature_850: one level coordinate (the union), NaN where a variable has no level."""
    from tests import as_backend
    from xclimax.cf.tokens import from_array, to_array
    from xclimax.testing import synthetic_dataset

    ds = as_backend(synthetic_dataset(3, variables=["temperature", "geopotential"], grid=(4, 8), levels=(500, 850)),
                    backend)
    out = from_array(to_array(ds, ["geopotential_500", "temperature_850"]))
    assert out["level"].values.tolist() == [500, 850]
    np.testing.assert_array_equal(out["temperature"].sel(level=850).values, ds["temperature"].sel(level=850).values)
    np.testing.assert_array_equal(out["geopotential"].sel(level=500).values, ds["geopotential"].sel(level=500).values)
    assert np.isnan(out["temperature"].sel(level=500).values).all()
    assert np.isnan(out["geopotential"].sel(level=850).values).all()
    assert out["level"].attrs["units"] == "hPa"


# ----------------------------------------------------------------------------- the forecast's block stacker


def _stacker_cases():
    """Layouts the forecast's one-task-per-block stacker must reproduce exactly (input, ClimaX names)."""
    era5 = synthetic_dataset(6, grid=GRID)
    cmip = synthetic_dataset(6, grid=GRID, style="cmip")  # zg in m on plev in Pa: x 9.80665
    ds = synthetic_dataset(6, variables=["2m_temperature", "temperature"], grid=GRID, seed=3)
    members = xr.concat([ds[["2m_temperature", "temperature"]], ds[["2m_temperature", "temperature"]] + 1],
                        dim=pd.Index([0, 1], name="member"))
    members = members.assign(land_sea_mask=ds["land_sea_mask"],  # constants without member or time
                             geopotential_at_surface=ds["geopotential_at_surface"].expand_dims(time=ds["time"]))
    degc = ds.copy()
    degc["2m_temperature"] = (ds["2m_temperature"].astype("float64") - 273.15).assign_attrs(
        ds["2m_temperature"].attrs, units="degC")  # float64 with an offset
    degc["temperature"] = ds["temperature"].astype("float16").assign_attrs(ds["temperature"].attrs)
    renamed = ds.rename(time="t")  # a time dimension by another name
    noleap = synthetic_dataset(6, grid=GRID, style="cmip", calendar="noleap", start="2001-02-27")
    return {
        "era5, all 48": (era5, list(mapping(era5))),
        "cmip": (cmip, list(mapping(cmip))),
        "members, constants broadcast": (members, ["land_sea_mask", "orography", "lattitude", "2m_temperature",
                                                   "temperature_500", "temperature_850"]),
        "degC float64, float16": (degc, ["2m_temperature", "temperature_50", "lattitude"]),
        "time named t": (renamed, ["temperature_850", "2m_temperature"]),
        "cmip, noleap calendar": (noleap, ["2m_temperature", "geopotential_500", "temperature_850", "lattitude"]),
    }


@pytest.mark.parametrize("case", list(_stacker_cases()))
@pytest.mark.parametrize("source", ["numpy", "dask", "zarr"])
def test_stack_equals_to_array_with_one_task_per_block(case, source, tmp_path):
    import dask

    from xclimax.cf.grid import normalize_grid
    from xclimax.cf.tokens import stack

    ds, names = _stacker_cases()[case]
    expected = to_array(ds, names)  # the oracle: to_array's xarray operations on the whole Dataset
    tdim = "t" if "t" in ds.dims else "time"
    if source == "zarr":
        ds.chunk({tdim: 2}).to_zarr(tmp_path / "in.zarr")
        ds = xr.open_zarr(tmp_path / "in.zarr")
    elif source == "dask":
        ds = ds.chunk({tdim: 2})
    ds_n, _ = normalize_grid(ds)
    blocks = 3 if source == "dask" else None  # blocks of 3 times over chunks of 2 (a rechunk); the store's own
    with raise_if_dask_computes():
        got = stack(ds_n, names, find_variables(ds_n, names), time_chunks=blocks)
    assert got is not None
    computed = got.compute(scheduler="sync")
    xr.testing.assert_equal(computed, expected)  # values, dims, coordinates
    np.testing.assert_array_equal(computed.values, expected.values)  # bit for bit, NaN where NaN
    assert computed.dtype == expected.dtype and computed.name == expected.name and computed.attrs == expected.attrs
    nb = got.ndim - 4
    if source == "numpy":
        assert got.chunks is None
        return
    assert got.chunks[nb] == ((3, 3) if blocks else (2, 2, 2))
    assert got.chunks[nb + 1:] == ((len(names),), (GRID[0],), (GRID[1],))
    if source == "zarr":  # the reads run inside the stacking tasks: no task of their own after optimisation
        (opt,) = dask.optimize(got.data)
        prefixes = {dask.utils.key_split(k) for k in dict(opt.__dask_graph__())}
        assert not [p for p in prefixes if p.startswith("open_dataset")], prefixes


def test_stack_declines_a_grid_that_is_not_normalised():
    from xclimax.cf.tokens import stack

    ds = synthetic_dataset(4, variables=["2m_temperature"], grid=GRID, constants=False)
    flipped = ds.isel(lat=slice(None, None, -1))  # latitude descending: to_array reorders, stack must not guess
    assert stack(flipped, ["2m_temperature"]) is None
    assert stack(ds, ["2m_temperature"]) is not None
