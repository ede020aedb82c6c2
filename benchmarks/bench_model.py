"""Speed of xclimax.ClimaX against the official microsoft/ClimaX module, same weights, same run.

Usage::

    python benchmarks/bench_model.py --official /tmp/climax_official/src           # CPU, both configs
    python benchmarks/bench_model.py --official ... --configs small --bf16 --compile
    python benchmarks/bench_model.py --official ... --device cuda

The official module is imported with the shims of ``scripts/make_golden.py`` (timm 0.6.12 must be
installed). Without it, only xclimax is timed. Both models get the official model's weights;
outputs are compared before timing. Inference = eval-mode forward under no_grad; training =
train-mode forward + MSE loss + backward + AdamW step (default foreach implementation for both).
Official and xclimax timings alternate round by round; the median round is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from xclimax.nn.model import ClimaX  # noqa: E402
from xclimax.vocab import CLIMAX_VARIABLES  # noqa: E402

CONFIGS = {
    "small": dict(embed_dim=256, depth=4, num_heads=8),
    "default": dict(embed_dim=1024, depth=8, num_heads=16),
}


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class Runner:
    """One model's inference or training step as a zero-argument callable."""

    def __init__(self, model, official: bool, mode: str, batch, dtype, device: str):
        """``dtype``: the autocast dtype (e.g. ``torch.bfloat16``), or None for float32."""
        self.model, self.official, self.mode, self.batch, self.device = model, official, mode, batch, device
        self.dtype = dtype
        if mode == "train":
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward(self):
        x, lead, y = self.batch
        variables = list(CLIMAX_VARIABLES)
        ctx = torch.autocast(self.device.split(":")[0], dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with ctx:
            if self.official:
                return self.model(x, None, lead / 100.0, variables, variables, None, None)[1]
            return self.model(x, lead, variables)

    def __call__(self):
        if self.mode == "infer":
            self.model.eval()
            with torch.no_grad():
                self.forward()
        else:
            self.model.train()
            self.opt.zero_grad(set_to_none=True)
            loss = (self.forward().float() - self.batch[2]).square().mean()
            loss.backward()
            self.opt.step()


def time_rounds(runners: dict, rounds: int, warmup: int, inner: int = 1, device: str = "cpu") -> dict:
    """Median over ``rounds`` (models alternating) of the time per step, ``inner`` steps per round."""
    for _ in range(warmup):
        for run in runners.values():
            run()
            sync(device)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                run()
                sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_config(name: str, args, Official) -> None:
    cfg = dict(CONFIGS[name], img_size=[32, 64], patch_size=2)
    batch_size = args.batch_small if name == "small" else args.batch_default
    dev = args.device
    torch.manual_seed(0)
    ours = ClimaX(CLIMAX_VARIABLES, **cfg).to(dev)
    off = None
    if Official is not None:
        off = Official(list(CLIMAX_VARIABLES), **cfg).to(dev)
        with torch.no_grad():  # non-trivial query/biases so the comparison exercises every path
            off.var_query.normal_()
            off.var_agg.in_proj_bias.normal_(0, 0.1)
        ours.load_state_dict(off.state_dict())
    x = torch.randn(batch_size, 48, 32, 64, device=dev)
    lead = torch.full((batch_size,), 72.0, device=dev)
    y = torch.randn(batch_size, 48, 32, 64, device=dev)
    batch = (x, lead, y)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"\n== {name}: {cfg}, batch {batch_size}, {n_params:,} params, device {dev}, threads {torch.get_num_threads()}")
    if off is not None:
        with torch.no_grad():
            a = ours.eval()(x, lead, list(CLIMAX_VARIABLES))
            b = off.eval()(x, None, lead / 100.0, list(CLIMAX_VARIABLES), list(CLIMAX_VARIABLES), None, None)[1]
        print(f"max |ours - official| / max |official| = {((a - b).abs().max() / b.abs().max()).item():.2e}")
    variants = {"xclimax": (ours, False)}
    if args.bf16:
        variants["xclimax-bf16"] = (ours, True)
    if args.compile:
        variants["xclimax-compiled"] = (torch.compile(ours), False)
    for mode in ("infer", "train"):
        runners = {}
        if off is not None:
            runners["official"] = Runner(off, True, mode, batch, None, dev)
            if args.bf16:
                runners["official-bf16"] = Runner(off, True, mode, batch, torch.bfloat16, dev)
        for label, (model, amp) in variants.items():
            runners[label] = Runner(model, False, mode, batch, torch.bfloat16 if amp else None, dev)
        med = time_rounds(runners, args.rounds, args.warmup, args.inner, dev)
        for label, t in med.items():
            base = "official-bf16" if label.endswith("bf16") else "official"
            ratio = f"  x{med[base] / t:.2f} vs {base}" if base in med and not label.startswith("official") else ""
            print(f"{mode:5s} {label:18s} {batch_size / t:9.2f} samples/s  ({t * 1e3:8.1f} ms/step){ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", default="/tmp/climax_official/src", help="the official checkout's src/ dir")
    parser.add_argument("--configs", default="small,default", help="comma-separated: small, default")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-small", type=int, default=8)
    parser.add_argument("--batch-default", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--inner", type=int, default=1, help="steps timed per round (use 10+ on a GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help="also time both models under bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(xclimax)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Official = None
    if Path(args.official, "climax", "arch.py").is_file():
        from make_golden import import_official_climax

        Official = import_official_climax(args.official)
    else:
        print(f"official ClimaX not found under {args.official!r} (pass --official <checkout>/src): timing xclimax only")
    for name in args.configs.split(","):
        bench_config(name.strip(), args, Official)


if __name__ == "__main__":
    main()
