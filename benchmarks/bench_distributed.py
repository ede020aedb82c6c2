"""Forecast throughput on a dask LocalCluster: 2 workers vs 1 worker vs in-process, and per-task overhead.

Writes a demo-sized input (the 5.625 deg grid, all demo variables) to a temporary zarr store,
opens it lazily (``time`` chunks of ``--chunk``) and times ``xclimax.forecast(...).compute()``:

1. in-process, dask's synchronous scheduler, one torch thread (the same compute as one
   single-threaded worker);
2. ``LocalCluster(n_workers=1, threads_per_worker=1)``;
3. ``LocalCluster(n_workers=2, threads_per_worker=1)``;
4. (unless ``--no-profile-off``) set-up 2 with dask's statistical worker profiler turned off
   (``distributed.worker.profile.enabled: False``): it samples the running thread's Python stack
   every 10 ms, which the network's deep module stack makes cost several per cent.

Workers are separate processes (``processes=True``), each with one torch thread (dask's nanny
sets ``OMP_NUM_THREADS=1``). All clusters are started first and stay up; each set-up runs once
untimed (worker start, model load: the model then stays resident on each worker), then
``--repeats`` rounds run every set-up back to back, and the ratios are medians of the per-round
ratios (so a slow stretch of a shared machine hits both sides of a ratio). Targets: 2 workers
>= 1.7x one worker, one worker within 10 % of in-process.

Per-task overhead: the same set-ups on a tiny model and grid with one initial time per task
(``--tiny-tasks`` tasks), where nearly all the time is overhead:
``(time per task on 1 worker) - (time per task in-process)``.

Run: ``python benchmarks/bench_distributed.py [--times 64] [--chunk 4] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr

import xclimax
from xclimax.testing import synthetic_dataset


def _model(ds: xr.Dataset, size: str) -> xclimax.ClimaX:
    torch.manual_seed(0)
    found = list(xclimax.tokens.mapping(ds))
    if size == "tiny":
        model = xclimax.ClimaX(found, img_size=(8, 16), embed_dim=16, depth=1, num_heads=2, decoder_depth=1)
    else:
        model = xclimax.ClimaX(found, img_size=(32, 64), embed_dim=256, depth=4, num_heads=8, decoder_depth=2)
    model.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(ds))
    return model.eval()


@contextlib.contextmanager
def _clusters(profile_off: bool):
    """The clusters of the comparison, started together and kept alive (idle ones cost a few heartbeats)."""
    import distributed

    specs = {"1 worker": (1, {}), "2 workers": (2, {})}
    if profile_off:
        specs["1 worker, profiler off"] = (1, {"distributed.worker.profile.enabled": False})
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, (n, cfg) in specs.items():
            with dask.config.set(cfg):  # the nanny hands this configuration to its worker
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=logging.ERROR))
            clients[name] = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        yield clients


def _on(client: Any):
    """Run on ``client`` (None: in-process, dask's synchronous scheduler, one torch thread)."""
    stack = contextlib.ExitStack()
    if client is None:
        stack.enter_context(dask.config.set(scheduler="synchronous"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        stack.callback(torch.set_num_threads, threads)
    else:
        stack.enter_context(client.as_current())
        stack.enter_context(dask.config.set(scheduler=client))
    return stack


def run(path: str, model: xclimax.ClimaX, chunk: int, repeats: int, clients: dict[str, Any]) -> dict[str, list[float]]:
    """Times of every set-up, round by round (set-ups interleaved within each round)."""

    def forecast() -> None:
        ds = xr.open_zarr(path, chunks={"time": chunk})
        xclimax.forecast(ds, model, lead_time="6h").compute()

    setups = {"in-process": None, **clients}
    for client in setups.values():  # untimed: worker start-up, model scattered and loaded once per worker
        with _on(client):
            forecast()
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(repeats):
        for name, client in setups.items():
            with _on(client):
                t0 = time.perf_counter()
                forecast()
                times[name].append(time.perf_counter() - t0)
    return times


def _ratio(times: dict[str, list[float]], a: str, b: str) -> str:
    """Median over rounds of time[a] / time[b] (each round's set-ups ran back to back), with the rounds."""
    ratios = [x / y for x, y in zip(times[a], times[b])]
    return f"{statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--times", type=int, default=64, help="initial times of the demo-sized run")
    parser.add_argument("--chunk", type=int, default=4, help="initial times per task")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (set-ups interleaved within a round)")
    parser.add_argument("--tiny-tasks", type=int, default=64)
    parser.add_argument("--no-profile-off", action="store_true",
                        help="skip the extra 1-worker cluster with dask's worker profiler turned off")
    args = parser.parse_args()
    xclimax.set_options(progress=False, device="cpu")
    with tempfile.TemporaryDirectory() as tmp, _clusters(not args.no_profile_off) as clients:
        big = Path(tmp) / "big.zarr"
        ds = synthetic_dataset(args.times, grid=(32, 64))
        ds.chunk({"time": args.chunk}).to_zarr(big, mode="w")
        tiny = Path(tmp) / "tiny.zarr"
        ds_t = synthetic_dataset(args.tiny_tasks, grid=(8, 16), variables=["2m_temperature"], constants=False)
        ds_t.chunk({"time": 1}).to_zarr(tiny, mode="w")

        model = _model(ds, "demo")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"demo-sized forecast: {args.times} initial times, {args.times // args.chunk} tasks of {args.chunk}, "
              f"{n_params / 1e6:.1f} M parameters, {len(model.variables)} variables, 32 x 64; "
              f"{args.repeats} interleaved rounds, medians")
        t = run(str(big), model, args.chunk, args.repeats, clients)
        for k, v in t.items():
            m = statistics.median(v)
            print(f"  {k:>22}: {m:6.2f} s  ({args.times / m:6.1f} forecasts/s)")
        print(f"  2 workers vs 1 worker: {_ratio(t, '1 worker', '2 workers')}x (target >= 1.7x)")
        print(f"  1 worker vs in-process: {_ratio(t, '1 worker', 'in-process')} of the time (target <= 1.10)")
        if "1 worker, profiler off" in t:
            print(f"  1 worker with dask's worker profiler off vs in-process: "
                  f"{_ratio(t, '1 worker, profiler off', 'in-process')} of the time")

        tiny_model = _model(ds_t, "tiny")
        print(f"\nper-task overhead: tiny model, {args.tiny_tasks} tasks of one initial time (8 x 16 grid)")
        tt = run(str(tiny), tiny_model, 1, args.repeats, clients)
        for k, v in tt.items():
            print(f"  {k:>22}: {1e3 * statistics.median(v) / args.tiny_tasks:6.2f} ms per task")
        over = statistics.median(a - b for a, b in zip(tt["1 worker"], tt["in-process"])) / args.tiny_tasks
        task = statistics.median(t["1 worker"]) / (args.times // args.chunk)
        print(f"  overhead of a worker task over an in-process task: {1e3 * over:.2f} ms "
              f"({100 * over / task:.1f} % of a demo-sized task of {1e3 * task:.0f} ms)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
