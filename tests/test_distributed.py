"""Scaling out on dask clusters (issue 13), through the public API on in-process LocalClusters.

* workers as threads of this process (fast): parity with in-process forecasts, chunking kept,
  model loads counted per worker across repeated calls, the bounded cache, zarr streaming;
* workers as processes (one shared cluster): a worker killed mid-forecast, data-parallel training
  (parity with single-process training, a lost worker, resume).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time

import dask
import numpy as np
import pytest
import torch
import xarray as xr

import xclimax
from tests import raise_if_dask_computes, requires_cuda
from xclimax.distributed import cache_info
from xclimax.exceptions import DataError
from xclimax.testing import synthetic_dataset

distributed = pytest.importorskip("distributed")

# zarr 3 says so on every consolidated write (xarray's default): not about xclimax
pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")

VARS = ["2m_temperature", "temperature"]


def _model(ds, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(embed_dim=32, depth=1, num_heads=4, decoder_depth=1, drop_path=0.0, drop_rate=0.0)
    cfg.update(kw)
    found = list(xclimax.tokens.find_variables(ds))
    model = xclimax.ClimaX(found, img_size=(ds.sizes["lat"], ds.sizes["lon"]), **cfg).eval()
    model.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(ds, variables=found))
    return model


def _ensemble(nt=6, grid=(8, 16)):
    """Two members along a ``member`` dimension."""
    a = synthetic_dataset(nt, variables=VARS, levels=[850], grid=grid, constants=False, seed=1)
    b = synthetic_dataset(nt, variables=VARS, levels=[850], grid=grid, constants=False, seed=2)
    return xr.concat([a, b], dim="member", data_vars="all", coords="minimal", compat="override").assign_coords(member=[0, 1])


def _assert_same_values(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        xr.testing.assert_identical(a[name].drop_attrs(), b[name].drop_attrs())
        np.testing.assert_array_equal(a[name].values, b[name].values)  # bit for bit


@pytest.fixture(scope="module")
def threads_cluster():
    """Two single-threaded workers as threads of this process (torch already imported: starts fast)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def process_cluster():
    """Two single-threaded workers, each its own process (restarted by its nanny when killed)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as cluster:
        with distributed.Client(cluster) as client:
            client.run(lambda: __import__("xclimax.distributed.ddp") and __import__("torch") and None)
        yield cluster


def _loads(client):
    return client.run(cache_info)


# ----------------------------------------------------------------------------- inference


def test_cluster_forecast_is_bit_identical_keeps_chunks_and_loads_once_per_worker(threads_cluster):
    ds = _ensemble(6).chunk({"time": 2, "member": 1})
    model = _model(ds)
    expected = xclimax.forecast(ds, model, lead_time="6h").compute(scheduler="threads")  # in-process, same tasks
    eager = xclimax.forecast(ds.compute(), model, lead_time="6h")
    with distributed.Client(threads_cluster) as client:
        before = _loads(client)
        for _ in range(3):
            fc = xclimax.forecast(ds, model, lead_time="6h")
            # one task per chunk-aligned batch: members stay separate chunks, time chunks are kept
            assert fc["2m_temperature"].chunksizes["member"] == (1, 1)
            assert fc["2m_temperature"].chunksizes["time"] == (2, 2, 2)
            _assert_same_values(fc.compute(), expected)
        after = _loads(client)
    xr.testing.assert_allclose(expected, eager, rtol=1e-5, atol=1e-4)
    n_tasks = 2 * 3
    used = {w: (after[w]["loads"] + after[w]["hits"]) - (before[w]["loads"] + before[w]["hits"]) for w in after}
    loads = {w: after[w]["loads"] - before[w]["loads"] for w in after}
    assert sum(used.values()) == 3 * n_tasks  # every task got the model from its worker's cache
    assert all(loads[w] == (1 if used[w] else 0) for w in after), (loads, used)


def test_the_graph_carries_a_reference_not_the_weights(threads_cluster):
    ds = _ensemble(4).chunk({"time": 2, "member": 1})
    big = _model(ds, embed_dim=128, depth=2)  # ~1 MB of weights
    weights = sum(p.numel() * 4 for p in big.parameters())
    with distributed.Client(threads_cluster):
        fc = xclimax.forecast(ds, big, lead_time="6h")
        graph = dict(fc["2m_temperature"].data.__dask_graph__())
        tasks = {k: v for k, v in graph.items() if "xclimax" in str(k)}
        size = len(pickle.dumps(tasks, protocol=5)) if tasks else 0
    assert tasks and size < weights / 20, (size, weights)


def test_worker_cache_is_bounded_and_evicts(threads_cluster):
    ds = _ensemble(2).chunk({"time": 1, "member": 1})
    a, b = _model(ds, seed=1), _model(ds, seed=2)
    with distributed.Client(threads_cluster) as client:
        worker = sorted(client.scheduler_info()["workers"])[0]
        run = lambda m: xclimax.forecast(ds, m, lead_time="6h").compute(workers=[worker])  # noqa: E731
        with xclimax.set_options(worker_cache_size=1):
            before = _loads(client)[worker]
            out_a = run(a)
            run(b)
            again = run(a)  # a was evicted by b: loaded again
            info = _loads(client)[worker]
        assert info["loads"] - before["loads"] == 3
        assert info["evictions"] - before["evictions"] >= 2
        assert len(info["resident"]) == 1
        with xclimax.set_options(worker_cache_size=2):
            before = _loads(client)[worker]
            run(b)
            run(a)
            run(b)  # both fit: nothing loaded again after the first
            info = _loads(client)[worker]
        assert info["loads"] - before["loads"] <= 1 and len(info["resident"]) == 2
    _assert_same_values(out_a, again)


def test_in_process_forecast_leaves_the_callers_model_alone(backend):
    ds = _ensemble(4)
    data = ds.chunk({"time": 2}) if backend == "dask" else ds
    model = _model(ds).train()  # dropout would make a forecast random: it must run in eval mode
    model_eval = _model(ds).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = xclimax.forecast(data, model, lead_time="6h").compute()
    b = xclimax.forecast(data, model_eval, lead_time="6h").compute()
    assert model.training and all(m.training for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    _assert_same_values(a, b)


def test_results_changing_options_are_captured_when_the_graph_is_built(threads_cluster):
    from xclimax.distributed.workers import prepare

    ds = _ensemble(2).chunk({"time": 1, "member": 1})
    model = _model(ds)
    with distributed.Client(threads_cluster) as client:
        with xclimax.set_options(device="cpu"):
            fc = xclimax.forecast(ds, model, lead_time="6h")
        # the workers use the options of when the graph was built, not of when it runs (a model on torch's
        # "meta" device has no values: the forecast would fail)
        with xclimax.set_options(device="meta"):
            out = fc.compute()
            with pytest.raises((RuntimeError, NotImplementedError)):
                xclimax.forecast(ds, model, lead_time="6h").compute()
        with xclimax.set_options(autocast="bf16", worker_cache_size=3):
            ref, payload = prepare(model, client=client)
    _assert_same_values(out, xclimax.forecast(ds, model, lead_time="6h", device="cpu").compute(scheduler="threads"))
    sent = pickle.loads(pickle.dumps(ref))
    assert (sent.autocast, sent.cache_size, sent.key, sent.local) == ("bf16", 3, ref.key, None)
    assert isinstance(payload, distributed.Future)


def test_device_is_resolved_on_the_worker(monkeypatch):
    """A dask-cuda worker sees its own GPU as the current device: "auto"/"cuda" resolve to it there."""
    from xclimax.distributed.workers import resolve_worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_worker_device("auto") == torch.device("cuda", 3)
    assert resolve_worker_device("cuda") == torch.device("cuda", 3)
    assert resolve_worker_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_worker_device("auto") == torch.device("cpu")
    with xclimax.set_options(device="cpu"):
        assert resolve_worker_device(None) == torch.device("cpu")


# ----------------------------------------------------------------------------- zarr


def test_lazy_forecast_streams_to_zarr(tmp_path):
    ds = _ensemble(6).chunk({"time": 2, "member": 1})
    model = _model(ds)
    with raise_if_dask_computes():
        fc = xclimax.forecast(ds, model, lead_time="6h", steps=2)
        delayed = fc.to_zarr(tmp_path / "fc.zarr", compute=False)
    dask.compute(delayed, scheduler="threads")
    back = xr.open_zarr(tmp_path / "fc.zarr").compute()
    _assert_same_values(back, fc.compute(scheduler="threads"))


def test_forecast_to_zarr_resumes_an_interrupted_write(tmp_path):
    ds = synthetic_dataset(12, variables=VARS, levels=[850], grid=(8, 16), constants=False).chunk({"time": 2})
    model = _model(ds)
    reference = xclimax.forecast(ds, model, lead_time="6h").compute(scheduler="threads")

    # the input of region 3 (times 8-11) is broken: the write stops there, regions 1-2 are kept
    broken = ds.copy(deep=True)
    broken["2m_temperature"][9] = np.nan
    store = tmp_path / "fc.zarr"
    with pytest.raises(DataError, match="NaN"):
        xclimax.forecast_to_zarr(broken, model, store, lead_time="6h", region_size=4)
    assert xclimax.distributed.zarr.regions_done(store).tolist() == [True, True, False]

    # resume with the input fixed; the already written regions' inputs are now broken too: they must be skipped
    fixed = ds.copy(deep=True)
    fixed["2m_temperature"][:8] = np.nan
    out = xclimax.forecast_to_zarr(fixed, model, store, lead_time="6h")  # (keeps the interrupted write's regions)
    assert xclimax.distributed.zarr.regions_done(store).all()
    _assert_same_values(out.compute(), reference)
    whole = xclimax.forecast_to_zarr(ds, model, tmp_path / "whole.zarr", lead_time="6h", region_size=4).compute()
    _assert_same_values(whole, reference)

    # a store holding another forecast is not resumed into
    other = _model(ds, seed=5)
    with pytest.raises(DataError, match="different"):
        xclimax.forecast_to_zarr(ds, other, store, lead_time="6h", region_size=4)
    replaced = xclimax.forecast_to_zarr(ds, other, store, lead_time="6h", region_size=4, resume=False)
    assert not np.array_equal(replaced["2m_temperature"].values, reference["2m_temperature"].values)


def test_forecast_to_zarr_on_a_cluster(threads_cluster, tmp_path):
    ds = _ensemble(8).chunk({"time": 2, "member": 1})
    model = _model(ds)
    reference = xclimax.forecast(ds, model, lead_time="6h").compute(scheduler="threads")
    with distributed.Client(threads_cluster):
        out = xclimax.forecast_to_zarr(ds, model, tmp_path / "fc.zarr", lead_time="6h", region_size=4)
        _assert_same_values(out.compute(), reference)


# ----------------------------------------------------------------------------- processes: worker death


def test_a_worker_killed_mid_forecast_is_replaced_and_the_result_is_complete(process_cluster):
    ds = synthetic_dataset(24, variables=VARS, levels=[850], grid=(32, 64), constants=False).chunk({"time": 1})
    model = _model(ds, embed_dim=64, depth=2, num_heads=4)
    expected = xclimax.forecast(ds, model, lead_time="6h").compute(scheduler="threads")
    with distributed.Client(process_cluster) as client:
        client.wait_for_workers(2)
        future = client.compute(xclimax.forecast(ds, model, lead_time="6h"))
        deadline = time.monotonic() + 120
        while True:  # kill a worker that holds forecast chunks while others are still being computed
            held = [ws for k, ws in client.who_has().items() if "xclimax-forecast" in str(k) and ws]
            if held or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert held and not future.done(), "the forecast ended before a worker could be killed"
        victim = held[0][0]
        os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
        result = future.result()
        assert victim not in client.scheduler_info()["workers"]
    _assert_same_values(result, expected)


def _mapped_bytes_of_a_4mib_buffer():
    """Bytes glibc serves by mmap for a new 4 MiB buffer in this process (mallinfo2), None where unknown."""
    import ctypes

    fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields]

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblkhd
    buffer = np.ones(1 << 19)  # 4 MiB, the size of an activation of the demo model
    mapped = libc.mallinfo2().hblkhd - before
    del buffer
    return int(mapped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_worker_processes_reuse_freed_buffers_once_they_run_a_model():
    ds = synthetic_dataset(4, variables=VARS, levels=[850], grid=(8, 16), constants=False).chunk({"time": 2})
    model = _model(ds)
    expected = xclimax.forecast(ds, model, lead_time="6h").compute(scheduler="threads")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as cluster, distributed.Client(cluster) as client:
        env = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
        if list(env.values()) != ["65536"] or None in client.run(_mapped_bytes_of_a_4mib_buffer).values():
            pytest.skip(f"not dask's default nanny environment on glibc >= 2.33 ({env})")
        # dask's MALLOC_TRIM_THRESHOLD_ fixes glibc's mmap threshold at 128 KiB: every large buffer is mapped afresh
        assert min(client.run(_mapped_bytes_of_a_4mib_buffer).values()) >= 4 << 20
        with xclimax.set_options(worker_allocator=False):  # the option travels with the tasks
            xclimax.forecast(ds, model, lead_time="6h").compute()
        assert min(client.run(_mapped_bytes_of_a_4mib_buffer).values()) >= 4 << 20
        _assert_same_values(xclimax.forecast(ds, model, lead_time="6h").compute(), expected)
        assert list(client.run(_mapped_bytes_of_a_4mib_buffer).values()) == [0]  # served from the heap, reused


# ----------------------------------------------------------------------------- processes: data-parallel training

DDP = dict(lead_times=("6h", "12h"), batch_size=5, seed=3, device="cpu",
           model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, drop_path=0.0, drop_rate=0.0))


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    """Training data in a zarr store: the ranks open it and read their own samples."""
    path = tmp_path_factory.mktemp("ddp") / "train.zarr"
    synthetic_dataset(20, variables=VARS, levels=[850], grid=(8, 16), constants=False).chunk({"time": 4}).to_zarr(path)
    return path


def _max_weight_difference(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_data_parallel_pretraining_equals_single_process_training(process_cluster, train_store, tmp_path):
    data = xr.open_zarr(train_store)
    single, h_single = xclimax.pretrain(data, max_steps=6, **DDP)
    steps = []
    with distributed.Client(process_cluster) as client:
        client.wait_for_workers(2)
        multi, h_multi = xclimax.pretrain(str(train_store), max_steps=6, client=client, checkpoint_dir=tmp_path / "ckpt",
                                          callback=lambda step, loss: steps.append(step), **DDP)
    diff = _max_weight_difference(single, multi)
    logging.getLogger(__name__).warning("DDP parity (2 ranks vs 1 process, 6 steps): max |weight difference| %.2e", diff)
    assert diff < 1e-5
    np.testing.assert_allclose(h_multi["loss"].values, h_single["loss"].values, rtol=1e-5)
    assert steps == [1, 2, 3, 4, 5, 6]  # rank 0's steps, reported here as they happened
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("state-*.pt"))[-1] == "state-000000006.pt"
    assert not multi.training and multi.stats == single.stats


def test_data_parallel_finetuning_of_in_memory_data_through_the_accessor(process_cluster):
    ds = synthetic_dataset(16, variables=VARS, levels=[850], grid=(8, 16), constants=False)
    torch.manual_seed(0)
    base = xclimax.ClimaX(["2m_temperature", "temperature_850", "lattitude"], img_size=(8, 16), embed_dim=32, depth=1,
                          num_heads=2, drop_path=0.0, drop_rate=0.0)
    kw = dict(lead_time="12h", batch_size=3, max_steps=4, seed=1, device="cpu")  # 3 samples over 2 ranks: 2 + 1
    single, _ = ds.climax.finetune(base, **kw)
    with distributed.Client(process_cluster) as client:
        client.wait_for_workers(2)
        multi, _ = ds.climax.finetune(base, client=client, **kw)
    assert _max_weight_difference(single, multi) < 1e-5
    assert _max_weight_difference(base, multi) > 1e-4  # it did train


def _exit_after_first_checkpoint(directory):
    """Run on a worker: end its process as soon as a checkpoint appears in ``directory``."""
    from pathlib import Path

    def watch():
        while not list(Path(directory).glob("state-*.pt")):
            time.sleep(0.002)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@pytest.mark.slow
def test_a_lost_worker_stops_training_with_a_clear_error_and_resume_continues(process_cluster, train_store, tmp_path):
    from xclimax.distributed.ddp import WorkerLostError

    data = xr.open_zarr(train_store)
    kw = dict(max_steps=8, checkpoint_every=3, checkpoint_dir=tmp_path / "ckpt", **DDP)
    reference, h_reference = xclimax.pretrain(data, **{k: v for k, v in kw.items() if k != "checkpoint_dir"})
    with distributed.Client(process_cluster) as client:
        client.wait_for_workers(2)
        victim = sorted(client.scheduler_info()["workers"])[1]  # rank 1 dies right after the first checkpoint
        client.run(_exit_after_first_checkpoint, str(tmp_path / "ckpt"), workers=[victim])
        with pytest.raises(WorkerLostError, match="resume=True"):
            xclimax.pretrain(data, client=client, **kw)
        assert victim not in client.scheduler_info()["workers"]
        client.wait_for_workers(2, timeout=120)  # the nanny starts a new worker
        resumed, history = xclimax.pretrain(data, client=client, resume=True, **kw)
    assert history.sizes["step"] == 8  # steps 1-3 from the checkpoint, 4-8 from the resumed run
    np.testing.assert_allclose(history["loss"].values, h_reference["loss"].values, rtol=1e-5)
    assert _max_weight_difference(reference, resumed) < 1e-5


# ----------------------------------------------------------------------------- demo data


def test_chunked_demo_data_are_computed_by_their_own_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIMAX_DATA_DIR", str(tmp_path))
    eager = xclimax.tutorial.open_dataset(years=[2000, 2001], days=1)  # 4 steps a year
    with raise_if_dask_computes():
        lazy = xclimax.tutorial.open_dataset(years=[2000, 2001], days=1, chunks={"time": 3})  # a chunk spans 2 years
    assert lazy["temperature"].chunksizes["time"] == (3, 3, 2)
    graph = len(pickle.dumps(dict(lazy.__dask_graph__())))
    assert graph < lazy.nbytes / 50, (graph, lazy.nbytes)  # file names and slices, not the data
    xr.testing.assert_identical(lazy.compute(), eager)


# ----------------------------------------------------------------------------- GPU workers (skipped without CUDA)


@requires_cuda
@pytest.mark.gpu
def test_gpu_worker_resolves_its_own_device_and_applies_the_captured_autocast():
    ds = _ensemble(4, grid=(32, 64)).chunk({"time": 2, "member": 1})
    model = _model(ds, embed_dim=64, depth=2)
    cpu = xclimax.forecast(ds, model, lead_time="6h", device="cpu").compute(scheduler="threads")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        fp32 = xclimax.forecast(ds, model, lead_time="6h").compute()  # device "auto": the worker's GPU
        with xclimax.set_options(autocast="bf16"):
            lazy = xclimax.forecast(ds, model, lead_time="6h")
        bf16 = lazy.compute()  # computed outside the options block: bf16 still applies
        info = client.run(cache_info)
    assert {d for i in info.values() for _, d in i["resident"]} == {"cuda:0"}
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays where it was
    xr.testing.assert_allclose(fp32, cpu, rtol=1e-3, atol=1e-2)
    diff = float(abs(bf16["2m_temperature"] - fp32["2m_temperature"]).max())
    assert 0 < diff < 5.0, diff  # bf16 rounding: different, but close


@requires_cuda
@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl data-parallel training needs 2 GPUs")
def test_data_parallel_training_on_two_gpus_with_nccl(train_store):
    data = xr.open_zarr(train_store)
    kw = dict(DDP, device=None, max_steps=6)
    single, _ = xclimax.pretrain(data, **kw)
    # one worker per GPU, each seeing only its own (what dask_cuda.LocalCUDACluster sets up)
    workers = {f"gpu{i}": {"cls": distributed.Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(i)}}}
               for i in range(2)}
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard_address": None}}
    with distributed.SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR) as cluster:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(2)
            devices = client.run(lambda: __import__("torch").cuda.current_device())
            multi, _ = xclimax.pretrain(data, client=client, **kw)
    assert sorted(devices.values()) == [0, 0]  # each worker's own GPU is its device 0
    assert _max_weight_difference(single, multi) < 1e-4
