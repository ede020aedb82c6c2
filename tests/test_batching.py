"""Tests of the sample index, block-shuffled plans and the prefetching batch loader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests import as_backend, raise_if_dask_computes
from xclimax.exceptions import DataError
from xclimax.loading import BatchLoader, lead_choices, sample_index, split_times, time_step

H6 = np.timedelta64(6, "h")


def _canonical(nt=40, nvar=3, members=None, seed=0):
    rng = np.random.default_rng(seed)
    dims, shape = ("time", "variable", "lat", "lon"), (nt, nvar, 4, 8)
    if members:
        dims, shape = ("member",) + dims, (members,) + shape
    coords = {"time": pd.date_range("2000-01-01", periods=nt, freq="6h"), "variable": [f"v{i}" for i in range(nvar)]}
    return xr.DataArray(rng.normal(size=shape).astype("float32") * 3 + 10, dims=dims, coords=coords)


STATS = {"v0": (10.0, 3.0), "v1": (9.0, 2.0), "v2": (11.0, 4.0)}


def test_sample_index_matches_brute_force_with_gaps_and_mask():
    t = pd.date_range("2000-01-01", periods=30, freq="6h").delete([7, 8, 20])  # gaps
    mask = np.ones(t.size, bool)
    mask[-4:] = False
    idx = sample_index(t, ("6h", "18h"), mask=mask)
    expected = [
        (i, j) for i in range(t.size) for j in range(t.size)
        if mask[i] and mask[j] and pd.Timedelta(6, "h") <= t[j] - t[i] <= pd.Timedelta(18, "h")
    ]
    assert list(zip(idx.input.tolist(), idx.target.tolist())) == expected
    np.testing.assert_array_equal(idx.lead, (t[idx.target] - t[idx.input]).values)
    assert set(idx.lead_hours) == {6.0, 12.0, 18.0}


def test_lead_choices_and_errors():
    np.testing.assert_array_equal(lead_choices("12h", H6), [np.timedelta64(12, "h")])
    np.testing.assert_array_equal(lead_choices(("5h", "13h"), H6) / H6, [1, 2])
    with pytest.raises(DataError, match="no multiple"):
        lead_choices("7h", H6)
    with pytest.raises(DataError, match="positive"):
        lead_choices(("12h", "6h"), H6)
    with pytest.raises(DataError, match="at least 2"):
        time_step(pd.date_range("2000", periods=1))
    with pytest.raises(DataError, match="increasing"):
        time_step(pd.DatetimeIndex(["2000-01-02", "2000-01-01"]))


def test_split_times():
    t = pd.date_range("2000-01-01", periods=20, freq="D")
    train, val = split_times(t, slice("2000-01-16", None))
    assert val.sum() == 5 and not (train & val).any() and val[-5:].all()
    train, val = split_times(t, 0.25)
    assert val.sum() == 5 and val[-1] and not val[0]
    with pytest.raises(DataError, match="non-empty"):
        split_times(t, slice("2001", "2002"))
    with pytest.raises(DataError, match="slice"):
        split_times(t, 3)


@pytest.mark.parametrize("members", [None, 2])
def test_loader_covers_every_input_once_with_correct_values(backend, members):
    da = _canonical(members=members)
    if backend == "dask":
        da = da.chunk({"time": 3})
    loader = BatchLoader(da, STATS, lead_times=("6h", "24h"), batch_size=5, outputs=["v2", "v0"], seed=1)
    mean = np.array([STATS[v][0] for v in ("v0", "v1", "v2")], np.float32)[:, None, None]
    std = np.array([STATS[v][1] for v in ("v0", "v1", "v2")], np.float32)[:, None, None]
    ref = ((da.values - mean) / std).reshape(-1, *da.shape[-4:])  # [series, time, var, lat, lon]
    seen, crossing, batches = [], 0, list(loader.epoch(0))
    assert len(batches) == len(loader)
    plan = loader.plan(0)
    for b, planned in zip(batches, plan):
        assert b.variables == ("v0", "v1", "v2") and b.out_variables == ("v2", "v0")
        for k, (unit, i, j, lead) in enumerate(planned):
            series = loader._units[unit][1]
            np.testing.assert_allclose(b.x[k].numpy(), ref[series, i], rtol=1e-6)
            np.testing.assert_allclose(b.y[k].numpy(), ref[series, j][[2, 0]], rtol=1e-6)
            assert float(b.lead_hours[k]) == 6.0 * (j - i) == lead
            assert 1 <= j - i <= 4 and b.time[k] == da.time.values[i]
            seen.append((series, i))
            crossing += i // 3 != j // 3
    n_series = members or 1
    assert sorted(seen) == [(s, i) for s in range(n_series) for i in range(da.sizes["time"] - 1)]
    assert crossing > 0  # pairs across chunk boundaries are used


def test_plan_is_seeded_and_resumable():
    da = _canonical(nt=60).chunk({"time": 4})
    loader = BatchLoader(da, STATS, lead_times=("6h", "30h"), batch_size=4, seed=3, prefetch=0)
    assert loader.plan(0) == loader.plan(0)
    assert loader.plan(0) != loader.plan(1)
    leads = {s[3] for b in loader.plan(0) for s in b}
    assert leads == {6.0, 12.0, 18.0, 24.0, 30.0}  # the upper bound is inclusive
    full = list(loader.epoch(2))
    tail = list(BatchLoader(da, STATS, lead_times=("6h", "30h"), batch_size=4, seed=3).epoch(2, start=5))
    assert len(tail) == len(full) - 5
    for a, b in zip(full[5:], tail):
        assert np.array_equal(a.x.numpy(), b.x.numpy()) and np.array_equal(a.y.numpy(), b.y.numpy())
    unshuffled = BatchLoader(da, STATS, lead_times="12h", batch_size=4, shuffle=False).plan(0)
    assert [s[1] for b in unshuffled for s in b] == list(range(58))


def test_each_block_read_with_one_compute():
    da = _canonical(nt=48).chunk({"time": 8})
    loader = BatchLoader(da, STATS, lead_times=("6h", "12h"), batch_size=4, prefetch=0)
    with raise_if_dask_computes(max_computes=len(loader._units)):
        n = sum(b.x.shape[0] for b in loader.epoch(0))
    assert n == 47


def test_memory_is_bounded_by_a_few_blocks():
    da = _canonical(nt=200).chunk({"time": 10})
    loader = BatchLoader(da, STATS, lead_times=("6h", "12h"), batch_size=4, block_size=10, buffer_size=8, prefetch=0)
    plan = loader.plan(0)
    first = {}
    last = {}
    for b, batch in enumerate(plan):
        for s in batch:
            first.setdefault(s[0], b)
            last[s[0]] = b
    alive = max(sum(first[u] <= b <= last[u] for u in first) for b in range(len(plan)))
    assert len(loader._units) == 20 and alive <= 6


def test_sources_with_different_variables_never_mix():
    a = _canonical(nt=30)
    b = _canonical(nt=20, nvar=2, seed=1).assign_coords(variable=["v0", "v2"])
    loader = BatchLoader({"a": a, "b": b}, STATS, lead_times="6h", batch_size=4, seed=0)
    got = {"a": 0, "b": 0}
    for batch in loader.epoch(0):
        assert batch.variables == (("v0", "v1", "v2") if batch.source == "a" else ("v0", "v2"))
        got[batch.source] += batch.x.shape[0]
    assert got == {"a": 29, "b": 19}


def test_per_source_stats_and_errors():
    a = _canonical(nt=10)
    loader = BatchLoader({"a": a}, {"a": {k: (0.0, 1.0) for k in STATS}}, lead_times="6h", batch_size=20, prefetch=0)
    batch = next(iter(loader.epoch(0)))
    np.testing.assert_allclose(np.sort(batch.x.numpy(), axis=0), np.sort(a.values[:-1], axis=0))
    with pytest.raises(DataError, match="statistics"):
        BatchLoader(a, {"v0": (0, 1)}, lead_times="6h", batch_size=2)
    with pytest.raises(DataError, match="positive"):
        BatchLoader(a, {**STATS, "v1": (0.0, 0.0)}, lead_times="6h", batch_size=2)
    with pytest.raises(DataError, match="no \\(input, target\\) pair"):
        BatchLoader(a, STATS, lead_times="120h", batch_size=2)
    with pytest.raises(DataError, match="missing"):
        BatchLoader(a.rename(lat="y"), STATS, lead_times="6h", batch_size=2)
    bad = a.copy()
    bad[3, 1, 0, 0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        list(BatchLoader(bad, STATS, lead_times="6h", batch_size=2).epoch(0))


def test_dataset_backends_give_identical_batches(backend):
    da = as_backend(_canonical(nt=16).to_dataset(name="x"), backend)["x"]
    ref = list(BatchLoader(_canonical(nt=16), STATS, lead_times=("6h", "12h"), batch_size=4, seed=5).epoch(0))
    got = list(BatchLoader(da, STATS, lead_times=("6h", "12h"), batch_size=4, seed=5, block_size=16).epoch(0))
    assert [b.time.tolist() for b in ref] == [b.time.tolist() for b in got]
    for r, g in zip(ref, got):
        assert np.array_equal(r.y.numpy(), g.y.numpy())


# ----------------------------------------------------------------------------- Dataset sources, cache


def _reference(ds, names, stats, member=None, **mapping):
    """Normalised canonical values the slow way: tokens.to_array, then normalize.normalize."""
    from xclimax import normalize, tokens

    da = tokens.to_array(ds, names, **mapping)
    if member is not None:
        da = da.isel(member=member)
    st = xr.Dataset({"mean": ("variable", [stats[n][0] for n in names]), "std": ("variable", [stats[n][1] for n in names])},
                    coords={"variable": names})
    return normalize.normalize(da, st).transpose("time", "variable", "lat", "lon").values


def _check_batches(loader, ref, series_ref=None):
    n = 0
    for b, planned in zip(loader.epoch(0), loader.plan(0)):
        for k, (unit, i, j, _) in enumerate(planned):
            r = ref if series_ref is None else series_ref[loader._units[unit][1]]
            np.testing.assert_allclose(b.x[k].numpy(), r[i][loader.sources[0].in_ids], rtol=2e-6, atol=2e-6)
            np.testing.assert_allclose(b.y[k].numpy(), r[j][loader.sources[0].out_ids], rtol=2e-6, atol=2e-6)
            n += 1
    return n


@pytest.mark.parametrize("style", ["era5", "cmip"])
def test_dataset_source_equals_to_array_then_normalize(backend, style):
    from xclimax.testing import synthetic_dataset

    levels = (50, 500, 850)
    ds = synthetic_dataset(12, grid=(4, 8), levels=levels, style=style, seed=2)
    ds = ds.isel(lat=slice(None, None, -1))  # descending latitudes: the grid is normalised
    if backend == "dask":
        ds = ds.chunk({"time": 5})
    names = ["2m_temperature", "geopotential_500", "temperature_850", "specific_humidity_50", "lattitude"]
    if style == "era5":
        names += ["land_sea_mask", "orography"]  # constants, orography converted from surface geopotential
    else:
        names += ["geopotential_850"]  # zg in m on plev in Pa -> m2 s-2
    rng = np.random.default_rng(0)
    stats = {n: (float(rng.normal()), float(rng.uniform(0.5, 2))) for n in names}
    original = ds.copy(deep=True)
    loader = BatchLoader(ds, stats, lead_times=("6h", "18h"), inputs=names, outputs=names[1:4], batch_size=3, seed=4)
    assert loader.sources[0].chunks == ((5, 5, 2) if backend == "dask" else (12,))
    assert _check_batches(loader, _reference(ds, names, stats)) == 11
    xr.testing.assert_identical(ds, original)  # input untouched


def test_variables_and_user_mappings_reach_the_dataset_reader(backend):
    from xclimax.exceptions import CFMappingError
    from xclimax.testing import synthetic_dataset

    ds = synthetic_dataset(10, variables=["2m_temperature"], grid=(4, 8), constants=False)
    ds["pmsl"] = (1013.25 + 0.3 * (ds["2m_temperature"] - 285.0)).assign_attrs(units="hPa")
    ds = as_backend(ds, backend)
    names = ["mean_sea_level_pressure", "2m_temperature"]
    mapping = dict(extra_variables=["mean_sea_level_pressure"], variable_map={"mean_sea_level_pressure": "pmsl"})
    stats = {"2m_temperature": (280.0, 10.0), "mean_sea_level_pressure": (1.0e5, 300.0), "v0": (10.0, 3.0)}
    da = _canonical(nt=10)
    loader = BatchLoader({"ds": ds, "da": da}, stats, lead_times="6h", batch_size=3, seed=2, prefetch=0,
                         variables={"ds": names, "da": ["v0"]}, **mapping)
    assert [s.inputs for s in loader.sources] == [tuple(names), ("v0",)]
    assert loader.sources[1].reader.names == ("v0",)  # the DataArray is narrowed to its listed variables
    one = BatchLoader(ds, stats, lead_times="6h", batch_size=3, variables=names, **mapping)
    assert _check_batches(one, _reference(ds, names, stats, **mapping)) == 9
    ref = ds["pmsl"].values[1:] * 100  # hPa -> Pa, by hand
    got = np.concatenate([b.y[:, 0].numpy() for b in BatchLoader(ds, stats, lead_times="6h", batch_size=3, shuffle=False,
                                                                  variables=names, **mapping).epoch(0)])
    np.testing.assert_allclose(got * 300.0 + 1.0e5, ref, rtol=1e-6)
    with pytest.raises(CFMappingError, match="mean_sea_level_pressure"):
        BatchLoader(ds, stats, lead_times="6h", batch_size=3, variables=names)  # no mapping: not found
    with pytest.raises(DataError, match="not in the DataArray"):
        BatchLoader(da, stats, lead_times="6h", batch_size=3, variables=["v0", "msl"])


def test_dataset_source_with_member_dimension_and_lazy_files(tmp_path):
    from xclimax.testing import synthetic_dataset

    names = ["2m_temperature", "temperature_850", "lattitude", "orography"]
    ds = xr.concat([synthetic_dataset(10, grid=(4, 8), levels=(850,), seed=s, variables=["2m_temperature", "temperature"],
                                      constants=False) for s in (0, 1)], dim="member", data_vars="all")
    ds["geopotential_at_surface"] = synthetic_dataset(1, grid=(4, 8))["geopotential_at_surface"]
    stats = {n: (1.0, 2.0) for n in names}
    loader = BatchLoader(ds, stats, lead_times=("6h", "12h"), inputs=names, outputs=names, batch_size=4, seed=1)
    assert loader.sources[0].series_shape == (2,)
    refs = [_reference(ds, names, stats, member=m) for m in range(2)]
    assert _check_batches(loader, None, refs) == 2 * 9
    path = tmp_path / "ds.zarr"
    synthetic_dataset(20, grid=(4, 8), levels=(850,)).chunk({"time": 8}).to_zarr(path)
    lazy = xr.open_zarr(path, chunks=None)  # no dask: reads follow the chunks on disk
    loader = BatchLoader(lazy, stats, lead_times="6h", inputs=names, outputs=names, batch_size=4, prefetch=0)
    assert loader.sources[0].chunks == (8, 8, 4)
    ref = _reference(xr.open_zarr(path), names, stats)
    with raise_if_dask_computes():
        assert _check_batches(loader, ref) == 19


def test_small_cache_rereads_chunks_and_stays_correct(backend):
    da = _canonical(nt=60)
    if backend == "dask":
        da = da.chunk({"time": 4})
    step = da.isel(time=0).nbytes
    reads = []
    loader = BatchLoader(da, STATS, lead_times=("6h", "30h"), batch_size=4, seed=2, cache_bytes=6 * 4 * step)
    original = loader._read
    loader._read = lambda s, r, cs: reads.append(len(cs)) or original(s, r, cs)
    mean = np.array([v[0] for v in STATS.values()], np.float32)[:, None, None]
    std = np.array([v[1] for v in STATS.values()], np.float32)[:, None, None]
    assert _check_batches(loader, (da.values - mean) / std) == 59
    if backend == "dask":  # 15 chunks: each read at least once, some again after being dropped
        assert sum(reads) > 15
        big = BatchLoader(da, STATS, lead_times=("6h", "30h"), batch_size=4, seed=2)
        reads.clear()
        original = big._read
        big._read = lambda s, r, cs: reads.append(len(cs)) or original(s, r, cs)
        list(big.epoch(0))
        assert sum(reads) == 15  # a big enough cache decodes every chunk once per epoch


def test_closing_an_epoch_early_stops_the_threads():
    import threading

    loader = BatchLoader(_canonical(nt=60).chunk({"time": 4}), STATS, lead_times="6h", batch_size=4, block_size=4)
    it = loader.epoch(0)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("xclimax-prefetch", "xclimax-read"))]


@pytest.mark.parametrize("pipeline", ["zarr", "zarrs"])
@pytest.mark.parametrize("chunks", [None, {}])
def test_zarr_store_is_read_directly_with_the_same_values(tmp_path, chunks, pipeline):
    """Datasets opened from zarr are read with zarr's async API (no dask compute), values as xarray's,
    with zarr's codec pipeline or zarrs'."""
    import xclimax
    from xclimax.testing import synthetic_dataset

    if pipeline == "zarrs":
        pytest.importorskip("zarrs")

    names = ["2m_temperature", "temperature_850", "geopotential_500", "lattitude", "orography"]
    stats = {n: (1.0, 2.0) for n in names}
    src = synthetic_dataset(30, grid=(4, 8), levels=(500, 850))
    src = src.isel(lat=slice(None, None, -1))  # stored north to south: the loader flips it back
    path = tmp_path / "ds.zarr"
    src.chunk({"time": 8}).to_zarr(path)
    subsets = [lambda d: d, lambda d: d.isel(time=slice(3, 27)).sel(level=[850, 500])]  # map onto the store
    for subset in subsets:
        ds = subset(xr.open_zarr(path, chunks=chunks))
        with xclimax.set_options(zarrs=pipeline == "zarrs"):
            loader = BatchLoader(ds, stats, lead_times=("6h", "18h"), inputs=names, outputs=names, batch_size=4,
                                 prefetch=0)
        direct = loader.sources[0].reader.direct
        assert direct is not None
        used = {type(a.codec_pipeline).__module__.split(".")[0] for a in direct._arrays.values()}
        assert used == {pipeline}
        ref = _reference(subset(xr.open_zarr(path)).compute(), names, stats)
        with raise_if_dask_computes():
            assert _check_batches(loader, ref) == ds.sizes["time"] - 1


def test_zarr_direct_reads_step_aside_for_modified_or_encoded_data(tmp_path):
    from xclimax.testing import synthetic_dataset

    names = ["2m_temperature", "lattitude"]
    stats = {n: (1.0, 2.0) for n in names}
    path = tmp_path / "ds.zarr"
    src = synthetic_dataset(12, grid=(4, 8), variables=["2m_temperature"], constants=False)
    src["2m_temperature"] += np.random.default_rng(0).normal(size=src["2m_temperature"].shape).astype("float32")
    src.chunk({"time": 4}).to_zarr(path)  # noise: no field is symmetric, so relabelled data are noticed
    ds = xr.open_zarr(path)
    cases = {
        "arithmetic": ds.assign({"2m_temperature": ds["2m_temperature"] + 1.0}),
        "relabelled": ds.assign_coords(lat=ds["lat"].values[::-1].copy()),  # labels flipped, data not
    }
    for case, data in cases.items():
        loader = BatchLoader(data, stats, lead_times="6h", inputs=names, outputs=names, batch_size=4, prefetch=0)
        assert loader.sources[0].reader.direct is None, case
        assert _check_batches(loader, _reference(data.compute(), names, stats)) == 11
    packed = tmp_path / "packed.zarr"
    enc = {"2m_temperature": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32768}}
    synthetic_dataset(12, grid=(4, 8), variables=["2m_temperature"], constants=False).to_zarr(packed, encoding=enc)
    loader = BatchLoader(xr.open_zarr(packed), stats, lead_times="6h", inputs=names, outputs=names, batch_size=4)
    assert loader.sources[0].reader.direct is None  # CF-packed data are decoded by xarray


def test_dropping_an_epoch_early_stops_the_threads():
    import gc
    import threading

    loader = BatchLoader(_canonical(nt=60).chunk({"time": 4}), STATS, lead_times="6h", batch_size=4, block_size=4)
    for _ in loader.epoch(0):
        break  # no close(): the iterator is simply dropped
    gc.collect()
    for t in threading.enumerate():
        if t.name.startswith("xclimax-prefetch"):
            t.join(timeout=5)
    assert not [t for t in threading.enumerate() if t.name.startswith(("xclimax-prefetch", "xclimax-read"))]


def test_several_readers_give_the_same_batches_and_read_each_chunk_once():
    da = _canonical(nt=80).chunk({"time": 4})
    kw = dict(lead_times=("6h", "30h"), batch_size=4, seed=3, block_size=8)
    one = [(b.x, b.y) for b in BatchLoader(da, STATS, readers=1, **kw).epoch(1)]
    loader = BatchLoader(da, STATS, readers=3, **kw)
    reads = []
    original = loader._read
    loader._read = lambda s, r, cs: reads.extend(cs) or original(s, r, cs)
    many = [(b.x, b.y) for b in loader.epoch(1)]
    assert len(one) == len(many) and all(torch_equal(a, b) for a, b in zip(one, many))
    assert sorted(reads) == list(range(20))  # 20 chunks, each decoded once although 3 blocks are read at a time
    with pytest.raises(DataError, match="readers"):
        BatchLoader(da, STATS, readers=0, **kw)


def torch_equal(a, b):
    import torch

    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
