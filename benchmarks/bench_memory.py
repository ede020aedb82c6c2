"""Calibrate xclimax.nn.memory's peak-memory estimate against measured peaks.

Usage::

    python benchmarks/bench_memory.py                 # CPU: peak RSS (VmHWM) of a fresh process per case
    python benchmarks/bench_memory.py --device cuda   # GPU: torch.cuda.max_memory_allocated

Each case runs in its own process: build the model, reset the kernel's peak-RSS counter
(``/proc/self/clear_refs``) or CUDA's peak statistics, run one forward pass under
``inference_mode`` (inference) or forward + MSE + backward + ``AdamW.step()`` (training), and
read the peak. The measured increase over the state after building the model is compared with
the estimate of the same increase (activations, plus gradients and AdamW moments when
training). The ratio estimate / measured must stay >= 1 (the estimate is an upper bound); the
factors ``INFERENCE_FACTOR`` / ``TRAINING_FACTOR`` in ``xclimax/nn/memory.py`` are set from the
smallest ratio seen here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    # name, config, batch
    ("tiny 8x16", dict(img_size=[8, 16], patch_size=2, embed_dim=64, depth=2, num_heads=4, decoder_depth=1), 64),
    ("demo 32x64", dict(img_size=[32, 64], patch_size=2, embed_dim=128, depth=3, num_heads=4, decoder_depth=2), 16),
    ("small 32x64", dict(img_size=[32, 64], patch_size=2, embed_dim=256, depth=4, num_heads=8, decoder_depth=2), 8),
    ("default 32x64", dict(img_size=[32, 64], patch_size=2, embed_dim=1024, depth=8, num_heads=16, decoder_depth=2), 4),
    ("p4 64x128", dict(img_size=[64, 128], patch_size=4, embed_dim=256, depth=4, num_heads=8, decoder_depth=2), 8),
]
N_VARS = 48

CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
from xclimax.nn.model import ClimaX
from xclimax.vocab import CLIMAX_VARIABLES
cfg, batch, training, device = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(1)
names = list(CLIMAX_VARIABLES[:{n}])
model = ClimaX(names, drop_path=0.0, drop_rate=0.0, **cfg).to(device)
x = torch.randn(batch, len(names), *cfg["img_size"], device=device)
lead = torch.full((batch,), 24.0, device=device)
opt = torch.optim.AdamW(model.parameters()) if training else None
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5"); base = rss()
if training:
    model.train()
    y = model(x, lead, names)
    loss = ((y - x) ** 2).mean()
    loss.backward()
    opt.step()
else:
    model.eval()
    with torch.inference_mode():
        y = model(x, lead, names)
if device == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated()
else:
    peak = hwm()
print(json.dumps(peak - base))
"""


def measure(cfg: dict, batch: int, training: bool, device: str) -> int:
    code = CHILD.format(root=str(ROOT), n=N_VARS)
    out = subprocess.run([sys.executable, "-c", code, json.dumps([cfg, batch, training, device])],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from xclimax.nn import memory
    from xclimax.vocab import CLIMAX_VARIABLES

    print(f"device {args.device}; factors: inference {memory.INFERENCE_FACTOR}, training {memory.TRAINING_FACTOR}")
    print(f"{'case':<14} {'mode':<9} {'batch':>5} {'measured MiB':>13} {'estimate MiB':>13} {'ratio':>6}")
    ratios = {False: [], True: []}
    for name, cfg, batch in CASES:
        full = {**cfg, "variables": list(CLIMAX_VARIABLES[:N_VARS])}
        for training in (False, True):
            b = max(1, batch // 4) if training else batch
            measured = measure(cfg, b, training, args.device)
            est = memory.estimate_memory(full, b, training=training)
            expected = est.total - memory.parameter_count(full) * 4  # the weights exist before the measurement
            ratio = expected / max(measured, 1)
            ratios[training].append(ratio)
            print(f"{name:<14} {'training' if training else 'inference':<9} {b:>5} {measured / 2**20:>13.1f} "
                  f"{expected / 2**20:>13.1f} {ratio:>6.2f}")
    for training, values in ratios.items():
        print(f"{'training' if training else 'inference'}: estimate / measured from {min(values):.2f} to {max(values):.2f}")


if __name__ == "__main__":
    main()
