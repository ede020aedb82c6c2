"""Throughput of xclimax's training pipeline vs xbatcher + torch DataLoader vs the model itself.

Builds a WeatherBench-2-shaped 5.625 deg zarr store (48 ClimaX channels, 32 x 64, 6-hourly,
time chunks of 16), then times, with batch size 16:

1. xbatcher ``BatchGenerator`` + ``xbatcher.loaders.torch.MapDataset`` + ``DataLoader(num_workers=0)``
   (and ``num_workers=2``, each worker on dask's synchronous scheduler: forked workers hang on the
   inherited thread pool otherwise) over (t, t + 6 h) pairs of the canonical array ``tokens.to_array(open_zarr(...))``
   (one dask compute per batch);
2. ``xclimax.batching.BatchLoader`` (random leads 6-168 h, block shuffle, normalisation, prefetch) on
   (a) the same canonical DataArray (what ``xclimax.train`` passes for in-memory data), (b) the Dataset
   from ``xr.open_zarr`` (dask; what ``xclimax.train`` passes for dask-backed data) and (c) the Dataset from ``xr.open_zarr(..., chunks=None)`` (no dask);
3. one training step of the default ``pretrain`` model (forward, backward, AdamW) on that data.

Run: ``python benchmarks/bench_pipeline.py [--times 512] [--batches 30] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
import xarray as xr


def build_store(path: str, nt: int) -> None:
    from xclimax.testing import synthetic_dataset

    ds = synthetic_dataset(nt, grid=(32, 64))
    ds.chunk({"time": 16}).to_zarr(path, mode="w")


def canonical(path: str) -> xr.DataArray:
    from xclimax import grid, tokens
    from xclimax.vocab import CLIMAX_VARIABLES

    ds, _ = grid.normalize_grid(xr.open_zarr(path))
    return tokens.to_array(ds, list(CLIMAX_VARIABLES))


def _synchronous_dask(_: int) -> None:
    """DataLoader worker set-up: forked workers hang on the dask thread pool inherited from the parent."""
    import dask

    dask.config.set(scheduler="synchronous")


def bench_xbatcher(da: xr.DataArray, n_batches: int, batch: int = 16, workers: int = 0) -> float:
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    x = da.isel(time=slice(0, -1)).drop_vars("time").rename("x")
    y = da.isel(time=slice(1, None)).drop_vars("time").rename("y")
    dims = {"time": batch, "variable": da.sizes["variable"], "lat": da.sizes["lat"], "lon": da.sizes["lon"]}
    loader = torch.utils.data.DataLoader(
        MapDataset(xbatcher.BatchGenerator(x, dims), xbatcher.BatchGenerator(y, dims)),
        batch_size=None, shuffle=True, num_workers=workers, timeout=60 if workers else 0,
        worker_init_fn=_synchronous_dask if workers else None,
    )
    it = iter(loader)
    next(it)  # warm-up
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        xb, yb = next(it)
        n += xb.shape[0]
    return n / (time.perf_counter() - t0)


def bench_xclimax(data: xr.DataArray | xr.Dataset, n_batches: int, batch: int = 16, **kwargs) -> float:
    from xclimax.loading import BatchLoader
    from xclimax.vocab import CLIMAX_VARIABLES

    stats = {v: (0.0, 1.0) for v in CLIMAX_VARIABLES}
    loader = BatchLoader(data, stats, lead_times=("6h", "168h"), batch_size=batch, seed=0, **kwargs)
    it, epoch = loader.epoch(0), 0
    next(it)  # warm-up, as for xbatcher (the first block is read here)
    n, t0 = 0, time.perf_counter()
    while n < n_batches * batch:
        for b in it:
            n += b.x.shape[0]
            if n >= n_batches * batch:
                break
        epoch += 1
        it = loader.epoch(epoch)
    return n / (time.perf_counter() - t0)


def bench_model(n_vars: int, device: str, steps: int, batch: int = 16) -> float:
    from xclimax.nn.model import ClimaX
    from xclimax.training import DEFAULT_MODEL, configure_optimizer
    from xclimax.vocab import CLIMAX_VARIABLES

    model = ClimaX(CLIMAX_VARIABLES[:n_vars], img_size=(32, 64), patch_size=2, **DEFAULT_MODEL).to(device).train()
    opt = configure_optimizer(model)
    x = torch.randn(batch, n_vars, 32, 64, device=device)
    lead = torch.full((batch,), 24.0, device=device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)

    def step():
        with ctx:
            loss = model(x, lead, model.variables).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def bench_pretrain(path: str, device: str, steps: int, batch: int = 16, skip: int = 16, **kwargs) -> float:
    """End to end: ``xclimax.pretrain`` on the ``open_zarr`` store (loader feeding the model), samples/s after
    ``skip`` warm-up steps (statistics pass and first block excluded)."""
    import xclimax

    stamps: list[float] = []
    xclimax.set_options(progress=False)
    precision = "bf16" if device.startswith("cuda") else None  # as the bare model step
    xclimax.pretrain(xr.open_zarr(path), lead_times=("6h", "168h"), batch_size=batch, max_steps=steps, device=device,
                     precision=precision,
                     callback=lambda step, loss: stamps.append(time.perf_counter()), **kwargs)
    return (len(stamps) - 1 - skip) * batch / (stamps[-1] - stamps[skip])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=512, help="time steps in the store")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per loader")
    parser.add_argument("--xbatcher-batches", type=int, default=8)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--readers", type=int, default=None, help="BatchLoader readers (default: its own)")
    parser.add_argument("--zarrs", action="store_true",
                        help="decode with the zarrs (Rust) codec pipeline: pip install zarrs")
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="also time xclimax.pretrain end to end on the store for this many steps (0: skip)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--store", default=None, help="zarr path (default: a temporary directory)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Consolidated metadata")
    if args.zarrs:
        import zarr

        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
        print("zarr codec pipeline: zarrs")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or f"{tmp}/wb2_5.625deg.zarr"
        t0 = time.perf_counter()
        build_store(path, args.times)
        da = canonical(path)
        print(f"store: {dict(da.sizes)} float32, time chunks of 16, built in {time.perf_counter() - t0:.1f} s")
        xb = bench_xbatcher(da, args.xbatcher_batches)
        print(f"xbatcher + DataLoader(num_workers=0):            {xb:8.1f} samples/s")
        xb2 = None
        try:
            xb2 = bench_xbatcher(da, args.xbatcher_batches, workers=2)
            print(f"xbatcher + DataLoader(num_workers=2):            {xb2:8.1f} samples/s")
        except Exception as err:  # e.g. a worker hangs (DataLoader timeout) or dies
            print(f"xbatcher + DataLoader(num_workers=2): failed ({type(err).__name__}: {err})")
        kw = {"readers": args.readers}
        results = {
            "BatchLoader(canonical DataArray)": bench_xclimax(da, args.batches, **kw),
            "BatchLoader(open_zarr Dataset, dask)": bench_xclimax(xr.open_zarr(path), args.batches, **kw),
            "BatchLoader(open_zarr Dataset, chunks=None)": bench_xclimax(xr.open_zarr(path, chunks=None), args.batches,
                                                                         **kw),
        }
        for name, ours in results.items():
            vs2 = f", {ours / xb2:.1f}x with 2 workers" if xb2 else ""
            print(f"{name + ':':48s} {ours:8.1f} samples/s  ({ours / xb:.1f}x xbatcher{vs2})")
        model = bench_model(da.sizes["variable"], args.device, args.model_steps)
        print(f"model training ({args.device}, default pretrain config): {model:8.2f} samples/s")
        for name, ours in results.items():
            print(f"{name} / model training: {ours / model:.1f}x")
        if args.pretrain_steps:
            e2e = bench_pretrain(path, args.device, args.pretrain_steps)
            print(f"xclimax.pretrain end to end ({args.device}, open_zarr store): {e2e:8.2f} samples/s "
                  f"({e2e / model:.2f} of the bare model step)")


if __name__ == "__main__":
    main()
