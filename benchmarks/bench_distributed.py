"""Forecast throughput on a dask LocalCluster: 2 workers vs 1 worker vs in-process, and per-task overhead.

Writes a demo-sized input (the 5.625 deg grid, all demo variables) to a temporary zarr store,
opens it lazily (``time`` chunks of ``--chunk``) and times ``xclimax.forecast(...).compute()``:

1. in-process, dask's synchronous scheduler, one torch thread (the same compute as one
   single-threaded worker);
2. ``LocalCluster(n_workers=1, threads_per_worker=1)``;
3. ``LocalCluster(n_workers=2, threads_per_worker=1)``.

Workers are separate processes (``processes=True``), each with one torch thread (dask's nanny
sets ``OMP_NUM_THREADS=1``). Each set-up runs once untimed (worker start, model load: the model
then stays resident on each worker) and then ``--repeats`` timed runs (median reported), so the
ratios are those of a long-lived cluster. Targets: 2 workers >= 1.7x one worker, one worker
within 10 % of in-process.

Per-task overhead: the same three set-ups on a tiny model and grid with one initial time per
task (``--tiny-tasks`` tasks), where nearly all the time is overhead:
``(time per task on 1 worker) - (time per task in-process)``.

Run: ``python benchmarks/bench_distributed.py [--times 64] [--chunk 4] [--repeats 3]``. On a
machine shared with other jobs the numbers are noisy; the ratios come from one run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

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


def _timed(fn, repeats: int) -> float:
    fn()  # untimed: worker start-up, model scattered and loaded once per worker
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(path: str, model: xclimax.ClimaX, chunk: int, repeats: int) -> dict[str, float]:
    import distributed

    def forecast() -> None:
        ds = xr.open_zarr(path, chunks={"time": chunk})
        xclimax.forecast(ds, model, lead_time="6h").compute()

    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with dask.config.set(scheduler="synchronous"):
            out["in-process"] = _timed(forecast, repeats)
    finally:
        torch.set_num_threads(threads)
    for n in (1, 2):
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, distributed.Client(cluster):
            out[f"{n} worker{'s' if n > 1 else ''}"] = _timed(forecast, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--times", type=int, default=64, help="initial times of the demo-sized run")
    parser.add_argument("--chunk", type=int, default=4, help="initial times per task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny-tasks", type=int, default=64)
    args = parser.parse_args()
    xclimax.set_options(progress=False, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.zarr"
        ds = synthetic_dataset(args.times, grid=(32, 64))
        ds.chunk({"time": args.chunk}).to_zarr(big, mode="w")
        tiny = Path(tmp) / "tiny.zarr"
        ds_t = synthetic_dataset(args.tiny_tasks, grid=(8, 16), variables=["2m_temperature"], constants=False)
        ds_t.chunk({"time": 1}).to_zarr(tiny, mode="w")

        model = _model(ds, "demo")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"demo-sized forecast: {args.times} initial times, {args.times // args.chunk} tasks of {args.chunk}, "
              f"{n_params / 1e6:.1f} M parameters, {len(model.variables)} variables, 32 x 64")
        t = run(str(big), model, args.chunk, args.repeats)
        for k, v in t.items():
            print(f"  {k:>11}: {v:6.2f} s  ({args.times / v:6.1f} forecasts/s)")
        print(f"  2 workers vs 1 worker: {t['1 worker'] / t['2 workers']:.2f}x (target >= 1.7x)")
        print(f"  1 worker vs in-process: {t['1 worker'] / t['in-process']:.3f} of the time (target <= 1.10)")

        tiny_model = _model(ds_t, "tiny")
        print(f"\nper-task overhead: tiny model, {args.tiny_tasks} tasks of one initial time (8 x 16 grid)")
        tt = run(str(tiny), tiny_model, 1, args.repeats)
        for k, v in tt.items():
            print(f"  {k:>11}: {1e3 * v / args.tiny_tasks:6.2f} ms per task")
        over = (tt["1 worker"] - tt["in-process"]) / args.tiny_tasks
        task = t["1 worker"] / (args.times // args.chunk)
        print(f"  overhead of a worker task over an in-process task: {1e3 * over:.2f} ms "
              f"({100 * over / task:.1f} % of a demo-sized task of {1e3 * task:.0f} ms)")

if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
