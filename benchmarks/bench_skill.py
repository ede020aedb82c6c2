"""Skill of a ClimaX trained for a few CPU minutes on the demo data, against persistence and climatology.

Trains a small ClimaX with :func:`xclimax.pretrain` on the demo data's training years (24 h lead),
forecasts the held-out year with :func:`xclimax.forecast` (24 h steps, rolled out to 72 h) and
scores model, persistence and a smoothed day-of-year climatology of the training years with
:func:`xclimax.evaluate` (WeatherBench 2 lat-weighted RMSE). Prints the RMSE table and the
model/baseline ratios (< 1: the model is better).

Run: ``python benchmarks/bench_skill.py [--steps 300] [--threads 2]``
(``--pretrained`` scores the bundled demo model instead of training a new one).
"""

from __future__ import annotations

import argparse
import time

import torch

import xclimax
from xclimax import baselines, tutorial

HEADLINE = {
    "geopotential_500": ("geopotential", {"level": 500}),
    "temperature_850": ("temperature", {"level": 850}),
    "2m_temperature": ("2m_temperature", {}),
    "10m_u_component_of_wind": ("10m_u_component_of_wind", {}),
    "10m_v_component_of_wind": ("10m_v_component_of_wind", {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300: a few CPU minutes)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=8, help="every n-th held-out time is an initial time")
    p.add_argument("--pretrained", action="store_true", help="score the bundled demo model instead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    xclimax.set_options(progress=False)

    parts = tutorial.split(tutorial.open_dataset())
    train, test = parts["train"], parts["test"]
    t0 = time.perf_counter()
    if args.pretrained:
        model = tutorial.load_model()
        label = "bundled demo model"
    else:
        arch = dict(patch_size=2, embed_dim=128, depth=3, num_heads=4, drop_path=0.0, drop_rate=0.0)
        model, _ = xclimax.pretrain(
            train, lead_times=("24h", "24h"), batch_size=args.batch, max_steps=args.steps, lr=1e-3,
            warmup_steps=min(50, args.steps // 5), seed=0, model_kwargs=arch,
        )
        model.metadata["out_variables"] = [v for v in model.variables if v not in ("land_sea_mask", "orography", "lattitude")]
        label = f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s"

    init = test.isel(time=slice(0, test.sizes["time"] - 12, args.every))
    fc = xclimax.forecast(init, model, lead_time="24h", steps=3)
    variables = sorted({v for v, _ in HEADLINE.values()})
    truth = test[variables]
    clim = baselines.climatology(train[variables], by="dayofyear", smooth=15)
    leads = fc["lead_time"].values
    runs = {
        "ClimaX": fc[variables],
        "persistence": baselines.persistence(init[variables], leads),
        "climatology": baselines.climatology_forecast(clim, init["time"], leads),
    }
    scores = {k: xclimax.evaluate(v, truth, metrics=("rmse",), climatology=clim).compute() for k, v in runs.items()}

    print(f"xclimax skill benchmark ({label}); {init.sizes['time']} initial times of the held-out year; lat-weighted RMSE")
    print(f"{'variable':<26}{'lead':>6}{'ClimaX':>10}{'persist.':>10}{'clim.':>10}{'/persist.':>11}{'/clim.':>9}")
    for name, (var, sel) in HEADLINE.items():
        for lead in (24, 72):
            r = {k: float(s[var].sel(metric="rmse", lead_time=f"{lead}h", **sel)) for k, s in scores.items()}
            print(
                f"{name:<26}{lead:>5}h{r['ClimaX']:>10.4g}{r['persistence']:>10.4g}{r['climatology']:>10.4g}"
                f"{r['ClimaX'] / r['persistence']:>11.2f}{r['ClimaX'] / r['climatology']:>9.2f}"
            )


if __name__ == "__main__":
    main()
