"""Train the bundled demo ClimaX (``xclimax/data/demo_model.safetensors``) on the demo data.

Reproducible: seeded, CPU, a few minutes.  Trains a small ClimaX on the training years of
``xclimax.tutorial.open_dataset()`` (2000-2002) with random lead times of 6..72 h (6 h steps),
inputs = outputs = all 48 ClimaX variables of the demo dataset, lat-weighted MSE in normalised
units, then scores 24 h forecasts on the held-out year (2003) against persistence and stores
the scores in the checkpoint metadata.

Usage::

    python scripts/train_demo_model.py [--steps 700] [--out xclimax/data/demo_model.safetensors]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

import xclimax
from xclimax import tutorial
from xclimax.checkpoint import save_checkpoint
from xclimax.model import ClimaX
from xclimax.normalize import compute_stats, stats_to_dict
from xclimax.tokens import to_array
from xclimax.vocab import CLIMAX_VARIABLES, FORECAST_VARIABLES

log = logging.getLogger("train_demo_model")
STEP_HOURS = 6
LEADS = np.arange(1, 13)  # 6 h .. 72 h in time steps
ARCH = dict(patch_size=2, embed_dim=128, depth=3, decoder_depth=2, num_heads=4, mlp_ratio=4.0, drop_path=0.0, drop_rate=0.0)


def load(part) -> tuple[np.ndarray, np.ndarray]:
    """Canonical-layout array (time, variable, lat, lon) float32 and the year of each time."""
    da = to_array(part, CLIMAX_VARIABLES)
    return np.ascontiguousarray(da.values, dtype=np.float32), part["time"].dt.year.values


def pairs(years: np.ndarray, leads: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random (input index, lead in steps) pairs whose target lies in the same year (years are independent runs)."""
    i = rng.integers(0, years.size, 4 * n)
    k = rng.choice(leads, 4 * n)
    ok = (i + k < years.size) & (years[np.minimum(i + k, years.size - 1)] == years[i])
    return i[ok][:n], k[ok][:n]


def lat_weights(lat: np.ndarray) -> torch.Tensor:
    w = np.cos(np.deg2rad(lat))
    return torch.tensor(w / w.mean(), dtype=torch.float32)[:, None]


def rmse(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Lat-weighted RMSE per variable of (sample, variable, lat, lon) arrays (square root after the mean)."""
    return np.sqrt((((a - b) ** 2) * w[None, None, :, None]).mean(axis=(0, 2, 3)) / w.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=tutorial.DEMO_MODEL_PATH)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    xclimax.set_options(progress=False)

    t0 = time.time()
    ds = tutorial.open_dataset()
    parts = tutorial.split(ds)
    log.info("demo data ready in %.1f s: %s", time.time() - t0, dict(ds.sizes))
    stats_ds = compute_stats(parts["train"], variables=CLIMAX_VARIABLES)
    stats = stats_to_dict(stats_ds.compute())
    mean = np.array([stats[v][0] for v in CLIMAX_VARIABLES], np.float32)[:, None, None]
    std = np.array([stats[v][1] for v in CLIMAX_VARIABLES], np.float32)[:, None, None]
    train, train_years = load(parts["train"])
    train -= mean
    train /= std
    lat = ds["lat"].values
    w = lat_weights(lat)

    model = ClimaX(CLIMAX_VARIABLES, img_size=(32, 64), **ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-5, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    x_all = torch.from_numpy(train)
    t1 = time.time()
    model.train()
    for step in range(args.steps):
        i, k = pairs(train_years, LEADS, rng, args.batch)
        x, y = x_all[i], x_all[i + k]
        lead = torch.tensor(k * STEP_HOURS, dtype=torch.float32)
        pred = model(x, lead, CLIMAX_VARIABLES)
        loss = (((pred - y) ** 2) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            log.info("step %4d  loss %.4f  lr %.2e  %.0f s", step, loss.item(), sched.get_last_lr()[0], time.time() - t1)
    train_seconds = time.time() - t1
    del x_all, train

    # validation: 24 h forecasts on the held-out year vs persistence, in physical units
    test, test_years = load(parts["test"])
    vrng = np.random.default_rng(1234)
    i, k = pairs(test_years, np.array([24 // STEP_HOURS]), vrng, 64)
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy((test[i] - mean) / std)
        pred = model(x, torch.full((i.size,), 24.0), CLIMAX_VARIABLES).numpy() * std + mean
    wn = np.cos(np.deg2rad(lat))
    r_model, r_persist = rmse(pred, test[i + k], wn), rmse(test[i], test[i + k], wn)
    skill = {}
    for v in FORECAST_VARIABLES + ("geopotential_250", "temperature_500", "specific_humidity_850", "u_component_of_wind_250"):
        j = CLIMAX_VARIABLES.index(v)
        skill[v] = {"model": float(r_model[j]), "persistence": float(r_persist[j])}
        log.info("24 h RMSE %-28s model %10.4g  persistence %10.4g  (%.0f%%)", v, r_model[j], r_persist[j], 100 * r_model[j] / r_persist[j])
    dynamic = [j for j, v in enumerate(CLIMAX_VARIABLES) if v not in ("land_sea_mask", "orography", "lattitude")]
    ratio = float(np.mean(r_model[dynamic] / r_persist[dynamic]))
    log.info("mean RMSE ratio model/persistence over %d time-varying variables: %.3f", len(dynamic), ratio)

    model.stats = stats
    model.metadata = {
        "name": "xclimax demo model",
        "description": "small ClimaX trained on the SYNTHETIC xclimax demo dataset (xclimax.tutorial); not for real weather",
        "grid": {"lat": lat.tolist(), "lon": ds["lon"].values.tolist(), "type": "equiangular 5.625 degree"},
        "time_step_hours": STEP_HOURS,
        "lead_times_hours": (LEADS * STEP_HOURS).tolist(),
        "in_variables": list(CLIMAX_VARIABLES),
        "out_variables": list(CLIMAX_VARIABLES),
        "training": {
            "data": f"xclimax.tutorial.open_dataset() generator v{tutorial.VERSION}, train years {ds.attrs['train_years']}",
            "held_out_years": ds.attrs["test_years"],
            "steps": args.steps, "batch_size": args.batch, "lr": args.lr, "seed": args.seed,
            "loss": "lat-weighted MSE, normalised units", "seconds": round(train_seconds, 1),
            "xclimax_version": xclimax.__version__, "torch_version": torch.__version__,
        },
        "validation_24h_rmse": skill,
        "validation_24h_mean_rmse_ratio": ratio,
    }
    path = save_checkpoint(model, args.out)
    log.info("saved %s (%.2f MB); training took %.0f s", path, path.stat().st_size / 1e6, train_seconds)


if __name__ == "__main__":
    main()
