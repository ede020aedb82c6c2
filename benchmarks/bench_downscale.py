"""Downscaling with ClimaX against bilinear interpolation, and xclimax's regridding against xarray-regrid.

Three parts (``--part demo|real|regrid|all``, default all):

- ``demo``: the demo data (``xclimax.tutorial.open_dataset()``, 5.625 degrees), coarsened 2x and 4x by
  block means; :func:`xclimax.finetune` ``(task="downscale")`` of a small ClimaX on 2000-2001 (fine
  orography and land-sea mask as extra inputs), scored on the held-out year 2002 against bilinear
  interpolation of the coarse fields (:func:`xclimax.grid.regrid`).
- ``real``: real climate-model output shipped by ``iris-sample-data``: HadCM3 1.5 m air temperature
  over North America (37 x 49 points of 1.25 x 1.875 degrees, 240 years, 360-day calendar), scenario
  A1B. Coarsened 2x; the model grid is the 35 x 47 interior (padded to whole patches inside the
  model). Trained on 1860-2039 of A1B, scored on the held-out years 2040-2099 of A1B and of the
  other scenario, E1.
- ``regrid``: accuracy on analytic fields and speed (ratio within this run) of
  :func:`xclimax.grid.regrid` against ``xarray-regrid`` (``pip install xarray-regrid``).

Every score is ClimaX's latitude-weighted RMSE (per time ``sqrt(mean(w err^2))``, ``w = cos(lat) /
mean(cos(lat))``, averaged over times), in the variable's units.

Run: ``python benchmarks/bench_downscale.py [--part demo] [--steps 600] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import xarray as xr

import xclimax
from xclimax import tutorial

FIXED = ["geopotential_at_surface", "land_sea_mask"]


def lat_rmse(pred: xr.DataArray, truth: xr.DataArray) -> float:
    """ClimaX's latitude-weighted RMSE (dims of ``truth``; the last two are lat, lon)."""
    lat = truth[truth.dims[-2]].values
    w = np.cos(np.deg2rad(lat))
    w = w / w.mean()
    err = np.asarray(pred.transpose(*truth.dims).values, float) - np.asarray(truth.values, float)
    return float(np.sqrt((err**2 * w[:, None]).mean(axis=(-2, -1))).mean())


def table(rows: list[tuple[str, str, float, float]]) -> None:
    print(f"| {'case':34s} | {'variable':23s} | {'xclimax':>8s} | {'bilinear':>8s} | ratio |")
    print(f"|{'-' * 36}|{'-' * 25}|{'-' * 10}|{'-' * 10}|-------|")
    for case, var, ours, base in rows:
        print(f"| {case:34s} | {var:23s} | {ours:8.3f} | {base:8.3f} | {ours / base:5.2f} |")


def demo(args: argparse.Namespace) -> None:
    ds = tutorial.open_dataset(days=args.days)
    fine = ds[["2m_temperature", "temperature", "geopotential", "10m_u_component_of_wind", *FIXED]].sel(level=[500, 850])
    parts = tutorial.split(fine)
    rows = []
    for factor in args.factors:
        coarse = fine.drop_vars(FIXED).coarsen(lat=factor, lon=factor).mean(keep_attrs=True)
        cparts = tutorial.split(coarse)
        torch.manual_seed(args.seed)
        base = xclimax.ClimaX(
            ["2m_temperature", "temperature_500", "temperature_850", "geopotential_500", "geopotential_850",
             "10m_u_component_of_wind", "orography", "land_sea_mask", "lattitude"],
            img_size=(32, 64), patch_size=args.patch, embed_dim=args.embed_dim, depth=args.depth, decoder_depth=1,
            num_heads=4, drop_path=0.0, drop_rate=0.0)
        t0 = time.perf_counter()
        model, _ = xclimax.finetune(cparts["train"], base, task="downscale", target=parts["train"],
                                    outputs=["2m_temperature", "temperature_850", "geopotential_500",
                                             "10m_u_component_of_wind"],
                                    batch_size=16, max_steps=args.steps, lr=1e-3, warmup_steps=args.steps // 10,
                                    seed=args.seed)
        print(f"demo {factor}x: fine-tuned in {time.perf_counter() - t0:.0f} s ({args.steps} steps)")
        truth = parts["test"]
        down = xclimax.downscale(cparts["test"], model, static=truth[FIXED])
        bil = xclimax.grid.regrid(cparts["test"], truth["lat"].values, truth["lon"].values)
        for var, sel in (("2m_temperature", {}), ("temperature", {"level": 850}), ("geopotential", {"level": 500}),
                         ("10m_u_component_of_wind", {})):
            name = var if not sel else f"{var}_{sel['level']}"
            rows.append((f"demo {factor}x ({180 / 32 * factor:g} -> 5.625 deg), 2002", name,
                         lat_rmse(down[var].sel(sel), truth[var].sel(sel)),
                         lat_rmse(bil[var].sel(sel), truth[var].sel(sel))))
    table(rows)


def real(args: argparse.Namespace) -> None:
    try:
        import iris_sample_data
    except ImportError:
        print("real: skipped (pip install iris-sample-data)")
        return
    open_ = lambda name: xr.open_dataset(  # noqa: E731
        os.path.join(iris_sample_data.path, name), decode_times=xr.coders.CFDatetimeCoder(use_cftime=True)
    )[["air_temperature"]].load()
    coarsen = lambda ds: ds.isel(latitude=slice(0, 36), longitude=slice(0, 48)).coarsen(  # noqa: E731
        latitude=2, longitude=2).mean(keep_attrs=True)
    interior = lambda ds: ds.isel(latitude=slice(1, 36), longitude=slice(1, 48))  # noqa: E731
    a1b, e1 = open_("A1B_north_america.nc"), open_("E1_north_america.nc")
    train = a1b.time.dt.year < 2040
    torch.manual_seed(args.seed)
    base = xclimax.ClimaX(["2m_temperature", "lattitude"], img_size=(35, 47), patch_size=4, embed_dim=args.embed_dim,
                          depth=args.depth, decoder_depth=1, num_heads=4, drop_path=0.0, drop_rate=0.0)
    vmap = {"2m_temperature": "air_temperature"}
    t0 = time.perf_counter()
    model, _ = xclimax.finetune(coarsen(a1b).sel(time=train), base, task="downscale",
                                target=interior(a1b).sel(time=train), variable_map=vmap, batch_size=16,
                                max_steps=args.steps, lr=1e-3, warmup_steps=args.steps // 10, seed=args.seed)
    print(f"real: fine-tuned in {time.perf_counter() - t0:.0f} s ({args.steps} steps, {int(train.sum())} years)")
    rows = []
    for label, ds in (("HadCM3 A1B 2040-2099 (held out)", a1b), ("HadCM3 E1 2040-2099 (other scen.)", e1)):
        test = ds.time.dt.year >= 2040
        coarse, truth = coarsen(ds).sel(time=test), interior(ds).sel(time=test)["air_temperature"]
        down = xclimax.downscale(coarse, model, variable_map=vmap)["air_temperature"]
        bil = xclimax.grid.regrid(coarse, truth["latitude"].values, truth["longitude"].values)["air_temperature"]
        rows.append((label, "tas (1.5 m)", lat_rmse(down, truth), lat_rmse(bil.rename(lat="latitude", lon="longitude"),
                                                                         truth)))
    table(rows)


def regrid(args: argparse.Namespace) -> None:
    try:
        import xarray_regrid  # noqa: F401  (registers the .regrid accessor)
    except ImportError:
        print("regrid: skipped (pip install xarray-regrid)")
        return
    from xclimax.testing import grid_coords

    def field(lat, lon, f, nt=1):
        v = np.broadcast_to(f(lat[:, None], lon[None, :]), (nt, lat.size, lon.size)).copy()
        return xr.DataArray(v, dims=("time", "lat", "lon"), coords={"time": np.arange(nt), "lat": lat, "lon": lon},
                            name="f")

    def target(lat, lon):
        return xr.Dataset(coords={"lat": lat, "lon": lon})

    rows = []
    # 1. bilinear on a bilinear field, targets inside the source centres: both exact?
    slat, slon = grid_coords(90, 180)
    f = lambda la, lo: 3 + 0.5 * la - 0.2 * lo + 0.01 * la * lo  # noqa: E731
    src = field(slat, slon, f)
    tlat, tlon = np.linspace(-85, 85, 50), np.linspace(5, 350, 70)
    exact = f(tlat[:, None], tlon[None, :])
    ours = xclimax.grid.regrid(src, tlat, tlon).values[0]
    theirs = src.regrid.linear(target(tlat, tlon)).values[0]
    rows.append(("bilinear, max error on a bilinear field", np.abs(ours - exact).max(), np.abs(theirs - exact).max()))
    # 2. bilinear next to a missing value: NaN-aware?
    holey = src.copy()
    holey[0, 45, 90] = np.nan
    t1, t2 = np.array([slat[45] + 0.5, 60.0]), np.array([slon[90] + 0.5, 300.0])  # one point next to it, one far
    rows.append(("bilinear next to one NaN: NaN results", float(np.isnan(xclimax.grid.regrid(holey, t1, t2)).sum()),
                 float(np.isnan(holey.regrid.linear(target(t1, t2))).sum())))
    # 3. conservative 2 -> 5 degrees: global area mean preserved?
    rng = np.random.default_rng(0)
    src = field(slat, slon, lambda la, lo: 0 * la + 0 * lo) + rng.normal(size=(1, slat.size, slon.size))
    clat, clon = grid_coords(36, 72)
    area = lambda lat: np.diff(np.sin(np.deg2rad(np.linspace(-90, 90, lat.size + 1))))  # noqa: E731
    mean = lambda da, lat: float((da.values[0] * area(lat)[:, None]).sum() / (area(lat).sum() * da.shape[-1]))  # noqa: E731
    m0 = mean(src, slat)
    ours = xclimax.grid.regrid(src, clat, clon, method="conservative")
    theirs = src.regrid.conservative(target(clat, clon), latitude_coord="lat")
    rows.append(("conservative 2->5 deg: |mean error|", abs(mean(ours, clat) - m0), abs(mean(theirs, clat) - m0)))
    # 4. conservative onto a grid that reaches beyond a regional source: cells outside NaN?
    box = src.sel(lat=slice(20, 50), lon=slice(230, 290))
    out_o = xclimax.grid.regrid(box, clat, clon, method="conservative")
    out_t = box.regrid.conservative(target(clat, clon), latitude_coord="lat")
    inside = (clat > 20) & (clat < 50)
    rows.append(("regional->global: non-NaN rows outside box", float(np.isfinite(out_o.values[0][~inside]).any(1).sum()),
                 float(np.isfinite(out_t.values[0][~inside]).any(1).sum())))
    print(f"| {'regridding check':44s} | {'xclimax':>10s} | {'xarray-regrid':>13s} |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 15}|")
    for name, a, b in rows:
        print(f"| {name:44s} | {a:10.3g} | {b:13.3g} |")
    # 5. speed: 1 -> 2.5 degree conservative and bilinear, 48 dask-free time steps (ratio in this run)
    flat, flon = grid_coords(180, 360)
    big = field(flat, flon, lambda la, lo: np.cos(np.deg2rad(la)) + 0 * lo, nt=48)
    glat, glon = grid_coords(72, 144)
    for method, theirs_fn in (("conservative", lambda: big.regrid.conservative(target(glat, glon), latitude_coord="lat")),
                              ("bilinear", lambda: big.regrid.linear(target(glat, glon)))):
        times = {"xclimax": [], "xarray-regrid": []}
        for _ in range(3):
            t0 = time.perf_counter()
            _ = xclimax.grid.regrid(big, glat, glon, method=method).values
            times["xclimax"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _ = theirs_fn().values
            times["xarray-regrid"].append(time.perf_counter() - t0)
        a, b = min(times["xclimax"]), min(times["xarray-regrid"])
        print(f"speed, {method} 1 -> 2.5 deg, 48 steps: xclimax {a:.3f} s, xarray-regrid {b:.3f} s "
              f"(xarray-regrid / xclimax = {b / a:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["demo", "real", "regrid", "all"], default="all")
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per fine-tuning")
    p.add_argument("--days", type=float, default=None, help="days of each demo year (default: all)")
    p.add_argument("--factors", type=int, nargs="+", default=[2, 4], help="demo coarsening factors")
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    xclimax.set_options(progress=False)
    for part, fn in (("demo", demo), ("real", real), ("regrid", regrid)):
        if args.part in (part, "all"):
            fn(args)


if __name__ == "__main__":
    main()
