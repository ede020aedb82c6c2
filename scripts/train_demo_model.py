"""Train the bundled demo ClimaX (``xclimax/data/demo_model.safetensors``) on the demo data.

Reproducible: seeded, CPU, about 20-30 minutes on 2 threads.  Trains a small ClimaX with the
library's own :func:`xclimax.pretrain` on the training years of
``xclimax.tutorial.open_dataset()`` (2000-2001), lead time 24 h, inputs = outputs = all demo
variables (so that autoregressive rollouts work), then scores 24 h and 72 h (3 x 24 h) forecasts
of the held-out year (2002) through :func:`xclimax.forecast` against persistence and stores the
scores in the checkpoint metadata.

Usage::

    python scripts/train_demo_model.py [--steps 1700] [--out xclimax/data/demo_model.safetensors]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

import xclimax
from xclimax import tutorial
from xclimax.nn.checkpoint import save_checkpoint

log = logging.getLogger("train_demo_model")
ARCH = dict(patch_size=2, embed_dim=128, depth=3, decoder_depth=2, num_heads=4, mlp_ratio=4.0, drop_path=0.0, drop_rate=0.0)
SCORED = {  # ClimaX output name -> (dataset variable, level or None)
    "geopotential_500": ("geopotential", 500),
    "temperature_850": ("temperature", 850),
    "2m_temperature": ("2m_temperature", None),
    "10m_u_component_of_wind": ("10m_u_component_of_wind", None),
    "10m_v_component_of_wind": ("10m_v_component_of_wind", None),
}


def skill(model, test, steps: int = 3, every: int = 2) -> dict[str, dict[str, dict[str, float]]]:
    """Lat-weighted RMSE (physical units) of forecasts from every ``every``-th held-out time vs persistence."""
    init = test.isel(time=slice(0, test.sizes["time"] - 4 * steps, every))
    fc = xclimax.forecast(init, model, lead_time="24h", steps=steps)
    w = np.cos(np.deg2rad(test["lat"].values))[:, None]
    w = w / w.mean()
    out: dict = {}
    for k in range(steps):
        for name, (var, level) in SCORED.items():
            sel = {} if level is None else {"level": level}
            truth = test[var].sel(**sel).values[4 * (k + 1):][::every][: init.sizes["time"]].astype(np.float64)
            start = init[var].sel(**sel).values.astype(np.float64)
            pred = fc[var].sel(**sel).isel(lead_time=k).values.astype(np.float64)
            r_model = float(np.sqrt(np.mean((pred - truth) ** 2 * w)))
            r_pers = float(np.sqrt(np.mean((start - truth) ** 2 * w)))
            out.setdefault(f"{24 * (k + 1)}h", {})[name] = {"model": r_model, "persistence": r_pers}
            log.info("%3d h RMSE %-26s model %9.4g  persistence %9.4g  (%.0f%%)", 24 * (k + 1), name, r_model, r_pers,
                     100 * r_model / r_pers)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1700)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device (the shipped model was trained on cpu)")
    p.add_argument("--out", type=Path, default=tutorial.DEMO_MODEL_PATH)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    xclimax.set_options(progress=False)

    t0 = time.time()
    parts = tutorial.split(tutorial.open_dataset())
    log.info("demo data ready in %.1f s: train %s, test %s", time.time() - t0, dict(parts["train"].sizes),
             dict(parts["test"].sizes))
    t1 = time.time()

    def progress(step: int, loss: float) -> None:
        if step % 25 == 0 or step == args.steps:
            log.info("step %4d  loss %.4f  %.0f s", step, loss, time.time() - t1)

    model, history = xclimax.pretrain(
        parts["train"], lead_times=("24h", "24h"), batch_size=args.batch, max_steps=args.steps, lr=args.lr,
        warmup_steps=args.warmup, seed=args.seed, device=args.device, model_kwargs=ARCH, callback=progress,
    )
    train_seconds = time.time() - t1
    model = model.cpu().eval()
    save_checkpoint(model, args.out)  # keep the weights even if scoring fails
    scores = skill(model, parts["test"])
    model.metadata.update(
        name="xclimax demo model",
        description="small ClimaX trained on the SYNTHETIC xclimax demo dataset (xclimax.tutorial); not for real weather",
        time_step_hours=6,
        lead_time="24h",
        training={
            "script": "scripts/train_demo_model.py", "api": "xclimax.pretrain",
            "data": f"xclimax.tutorial.open_dataset() generator v{tutorial.VERSION}, seed 0",
            "train_years": [int(y) for y in np.unique(parts["train"]["time"].dt.year)],
            "held_out_years": [int(y) for y in np.unique(parts["test"]["time"].dt.year)],
            "steps": args.steps, "batch_size": args.batch, "lr": args.lr, "warmup_steps": args.warmup, "seed": args.seed,
            "architecture": ARCH, "final_loss": float(history["loss"][-20:].mean()),
            "seconds": round(train_seconds, 1), "device": args.device, "threads": args.threads,
            "xclimax_version": xclimax.__version__, "torch_version": torch.__version__,
        },
        validation_rmse=scores,
    )
    path = save_checkpoint(model, args.out)
    log.info("saved %s (%.2f MB); training took %.0f s", path, path.stat().st_size / 1e6, train_seconds)


if __name__ == "__main__":
    main()
