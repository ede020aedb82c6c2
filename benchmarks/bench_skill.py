"""Skill of a ClimaX trained for a few CPU minutes on the demo data, against persistence and climatology.

Three modes, all scored on the held-out year 2002 of ``xclimax.tutorial.open_dataset()`` with
:func:`xclimax.evaluate` (WeatherBench 2 lat-weighted RMSE) against persistence and a smoothed
(15-day) day-of-year climatology of the training years 2000-2001; the table gives the
model/baseline ratios (< 1: the model is better):

- ``--finetune`` (the ClimaX workflow: pre-train once, fine-tune cheaply): fine-tunes a copy of
  the bundled demo model (:func:`xclimax.tutorial.load_model`, pre-trained at 24 h) with
  :func:`xclimax.finetune` on the training years, once per lead (24 h and 72 h), and forecasts
  each lead directly (one step). Prints the wall time of each fine-tune.
- ``--pretrained``: the bundled demo model, rolled out in 24 h steps to 72 h.
- default: trains a small ClimaX from scratch with :func:`xclimax.pretrain` (24 h lead, rolled out).

Run: ``python benchmarks/bench_skill.py --finetune [--steps 500] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import xarray as xr

import xclimax
from xclimax import baselines, tutorial

HEADLINE = {
    "geopotential_500": ("geopotential", {"level": 500}),
    "temperature_850": ("temperature", {"level": 850}),
    "2m_temperature": ("2m_temperature", {}),
    "10m_u_component_of_wind": ("10m_u_component_of_wind", {}),
    "10m_v_component_of_wind": ("10m_v_component_of_wind", {}),
}
FIELDS = sorted({v for v, _ in HEADLINE.values()})
#: Fine-tuning learning rate per lead: the bundled model already forecasts 24 h, so it moves less.
FINETUNE_LR = {24: 3e-4, 72: 1e-3}


def forecast(init: xr.Dataset, model, lead: int, steps: int) -> list[xr.Dataset]:
    """Forecasts of the headline fields (a one-element list; ``rmse`` takes several).

    A model fine-tuned on the headline variables predicts geopotential at 500 hPa only and
    temperature at 850 hPa only: both come back on levels (500, 850), NaN where not predicted.
    """
    fc = xclimax.forecast(init, model, lead_time=f"{lead}h", steps=steps)
    return [fc[[v for v in FIELDS if v in fc]]]


def rmse(fcs: list[xr.Dataset], truth: xr.Dataset, clim: xr.Dataset) -> dict[tuple[str, int], float]:
    """``{(headline name, lead hours): lat-weighted RMSE}`` of the forecasts ``fcs``."""
    out = {}
    for fc in fcs:
        s = xclimax.evaluate(fc, truth[list(fc.data_vars)], metrics=("rmse",), climatology=clim).compute()
        for name, (var, sel) in HEADLINE.items():
            if var not in s or not all(v in s[var][k].values for k, v in sel.items()):
                continue
            for lead in s["lead_time"].values:
                out[name, int(lead // np.timedelta64(1, "h"))] = float(s[var].sel(metric="rmse", lead_time=lead, **sel))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--finetune", action="store_true", help="fine-tune the bundled demo model per lead (24 h, 72 h)")
    mode.add_argument("--pretrained", action="store_true", help="score the bundled demo model (24 h rollout)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default: 500 per lead with --finetune, 300 from scratch: a few CPU minutes)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 4 with --finetune, 16 from scratch)")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default: {FINETUNE_LR} with --finetune, 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=8, help="every n-th held-out time is an initial time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    xclimax.set_options(progress=False)

    parts = tutorial.split(tutorial.open_dataset())
    train, test = parts["train"], parts["test"]
    init = test.isel(time=slice(0, test.sizes["time"] - 12, args.every))
    truth = test[FIELDS]
    clim = baselines.climatology(train[FIELDS], by="dayofyear", smooth=15)
    leads = [24, 72]

    scores: dict[tuple[str, int], float] = {}
    if args.finetune:
        steps, batch = args.steps or 500, args.batch or 4
        base = tutorial.load_model()
        notes = []
        for lead in leads:
            lr = args.lr or FINETUNE_LR[lead]
            t0 = time.perf_counter()
            model, history = xclimax.finetune(train, base, lead_time=f"{lead}h", max_steps=steps, batch_size=batch, lr=lr,
                                              warmup_steps=min(10, steps // 10), seed=args.seed)
            seconds = time.perf_counter() - t0
            loss = history["loss"].values
            notes.append(f"{lead} h: {seconds:.0f} s (lr {lr:g}, loss {loss[:10].mean():.3f} -> {loss[-20:].mean():.3f})")
            scores.update({k: v for k, v in rmse(forecast(init, model, lead, 1), truth, clim).items() if k[1] == lead})
        label = (f"bundled demo model fine-tuned per lead, {steps} steps of batch {batch}, {args.threads} threads; "
                 f"direct forecasts; fine-tune wall time {'; '.join(notes)}")
    else:
        steps, batch = args.steps or 300, args.batch or 16
        t0 = time.perf_counter()
        if args.pretrained:
            model = tutorial.load_model()
            label = "bundled demo model, 24 h steps"
        else:
            arch = dict(patch_size=2, embed_dim=128, depth=3, num_heads=4, drop_path=0.0, drop_rate=0.0)
            model, _ = xclimax.pretrain(
                train, lead_times=("24h", "24h"), batch_size=batch, max_steps=steps, lr=args.lr or 1e-3,
                warmup_steps=min(50, steps // 5), seed=args.seed, model_kwargs=arch,
            )
            model.metadata["out_variables"] = [v for v in model.variables if v not in ("land_sea_mask", "orography", "lattitude")]
            label = f"trained from scratch {steps} steps in {time.perf_counter() - t0:.0f} s, 24 h steps"
        scores = rmse(forecast(init, model, 24, 3), truth, clim)
    lead_td = [np.timedelta64(h, "h") for h in leads]
    ref = {
        "persistence": rmse([baselines.persistence(init[FIELDS], lead_td)], truth, clim),
        "climatology": rmse([baselines.climatology_forecast(clim, init["time"], lead_td)], truth, clim),
    }

    print(f"xclimax skill benchmark ({label})")
    print(f"{init.sizes['time']} initial times of the held-out year; lat-weighted RMSE")
    print(f"{'variable':<26}{'lead':>6}{'ClimaX':>10}{'persist.':>10}{'clim.':>10}{'/persist.':>11}{'/clim.':>9}")
    for name in HEADLINE:
        for lead in leads:
            r, rp, rc = scores[name, lead], ref["persistence"][name, lead], ref["climatology"][name, lead]
            print(f"{name:<26}{lead:>5}h{r:>10.4g}{rp:>10.4g}{rc:>10.4g}{r / rp:>11.2f}{r / rc:>9.2f}")


if __name__ == "__main__":
    main()
