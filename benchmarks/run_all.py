"""All of xclimax's performance figures in one run, as one table of ratios measured in the same process.

Usage::

    python benchmarks/run_all.py                      # CPU, small configurations: ~5 minutes on 2 cores
    python benchmarks/run_all.py --big                # larger models and batches, more rounds
    python benchmarks/run_all.py --only model,flops   # some sections
    python benchmarks/run_all.py --device cuda --big  # on a GPU (benchmarks/gpu_check.sh runs this)
    XCLIMAX_OFFICIAL_SRC=/tmp/climax_official/src python benchmarks/run_all.py   # + the official module

Sections (``--only``):

``model``
    ``xclimax.ClimaX`` (folded tokenizer) against (a) ``Unfolded``, the same network written the
    straightforward way in this file (per-variable patch convolutions, ``[B, V, L, D]`` tokens, the
    learned query attending over the variables with ``nn.MultiheadAttention``; same weights), and
    (b) the official ``climax.arch.ClimaX`` when ``$XCLIMAX_OFFICIAL_SRC`` points at a checkout's
    ``src`` directory (needs timm 0.6.12). Outputs are compared first; timings alternate round by round.
``flops``
    FLOPs per sample of the folded model, counted by :class:`torch.utils.flop_counter.FlopCounterMode`
    on the ``meta`` device (no memory, no compute) and by the closed form :func:`analytic_flops`, for the
    5.625 deg default (32 x 64, patch 2, 48 variables, D 1024, depth 8: 512 tokens) and the 1.40625 deg
    configuration (128 x 256, patch 4: 2,048 tokens). On CUDA, the bf16 training step is timed and the
    model FLOP utilisation (MFU) reported against ``--peak-tflops`` (H200 bf16 dense: 989).
``pipeline``
    ``BatchLoader`` on an ``xr.open_zarr`` store against xbatcher + torch ``DataLoader`` (bench_pipeline.py).
``e2e``
    ``xclimax.pretrain`` on that zarr store against the bare training step (forward, ClimaX loss, backward,
    clipping, AdamW, schedule) on batches of the same store already in memory.
``forecast``
    ``ds.climax.forecast`` on numpy- and dask-backed Datasets against the raw model on the same tensors.
``memory``
    Peak memory per sample (host RSS, ``VmHWM``, and ``torch.cuda.max_memory_allocated`` on CUDA) of
    inference and of a training step, with and without activation checkpointing, each case in a fresh
    process; checks that checkpointing fits twice the batch in the memory of one; its speed cost; and the
    estimate of ``xclimax.nn.memory`` for the same cases.
``rollout``
    Peak memory of ``xclimax.forecast`` with 5, 20 and 40 autoregressive steps (fresh processes): beyond
    the result itself, it must not grow with the number of steps.
``precision``
    bf16 (and fp16 on CUDA) against fp32 training on the demo recipe (``xclimax.tutorial`` data): the loss
    curves' end points.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_model import Runner, sync  # noqa: E402

from xclimax.nn.model import ClimaX  # noqa: E402
from xclimax.vocab import CLIMAX_VARIABLES, VARIABLES  # noqa: E402

SECTIONS = ("model", "flops", "pipeline", "e2e", "forecast", "memory", "rollout", "precision")
MODEL_CONFIGS = {
    "small": dict(embed_dim=256, depth=4, num_heads=8),  # the default pretrain model (3.8 M parameters)
    "default": dict(embed_dim=1024, depth=8, num_heads=16),  # ClimaX's (108 M parameters)
}
FLOP_CONFIGS = {
    "5.625 deg (32x64, p2, 512 tokens)": dict(img_size=(32, 64), patch_size=2),
    "1.40625 deg (128x256, p4, 2048 tokens)": dict(img_size=(128, 256), patch_size=4),
}
ROWS: list[dict] = []


def row(section: str, what: str, value: str, ratio: float | str | None = None, target: str = "", met: bool | None = None,
        note: str = "") -> None:
    """Record (and print at once) one line of the final table."""
    r = dict(section=section, what=what, value=value, ratio=ratio, target=target, met=met, note=note)
    ROWS.append(r)
    rs = f"{ratio:.2f}" if isinstance(ratio, float) else (ratio or "")
    print(f"  [{section}] {what}: {value}  {rs}  {target} {'' if met is None else ('MET' if met else 'NOT MET')} {note}",
          flush=True)


def alternate(runners: dict, rounds: int, warmup: int = 1, inner: int = 1, device: str = "cpu") -> dict:
    """Median seconds per call of each runner; runners alternate round by round (shared, noisy machines)."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                run()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- the straightforward baseline


class Unfolded(ClimaX):
    """The same network with the variable tokenisation written the straightforward (official) way.

    Per-variable ``Conv2d(1, D, p, stride=p)`` patch embeddings, ``+ var_embed``, the ``[B, V, L, D]``
    token tensor, and ``nn.MultiheadAttention`` of the learned query over the ``V`` tokens of each patch.
    Same parameters (and state_dict) as :class:`ClimaX`, so the same weights load into both.
    """

    def aggregate(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        B, V, H, W = x.shape
        p, D = self.patch_size, self.pos_embed.shape[-1]
        w = self.token_embeds.weight.index_select(0, ids)  # V, D, 1, p, p
        b = self.token_embeds.bias.index_select(0, ids)
        tokens = torch.stack([F.conv2d(x[:, i : i + 1], w[i], b[i], stride=p).flatten(2).transpose(1, 2)
                              for i in range(V)], 1)  # B, V, L, D
        tokens = tokens + self.var_embed[:, ids].unsqueeze(2)
        L = tokens.shape[2]
        tokens = tokens.permute(0, 2, 1, 3).reshape(B * L, V, D)
        query = self.var_query.expand(B * L, -1, -1)
        out, _ = self.var_agg(query, tokens, tokens, need_weights=False)
        return out.reshape(B, L, D)


def _official_class():
    src = os.environ.get("XCLIMAX_OFFICIAL_SRC")
    if not src:
        return None, "set XCLIMAX_OFFICIAL_SRC=<ClimaX checkout>/src (timm 0.6.12) to compare"
    if not Path(src, "climax", "arch.py").is_file():
        return None, f"no climax/arch.py under XCLIMAX_OFFICIAL_SRC={src!r}"
    from make_golden import import_official_climax

    return import_official_climax(src), ""


def section_model(args) -> None:
    dev = args.device
    Official, why = _official_class()
    configs = ["small", "default"] if args.big else ["small"]
    for name in configs:
        cfg = dict(MODEL_CONFIGS[name], img_size=(32, 64), patch_size=2)
        batch = (args.batch_gpu if name == "small" else args.batch_gpu // 4) if dev.startswith("cuda") else \
            (args.model_batch if name == "small" else 2)
        torch.manual_seed(0)
        ours = ClimaX(CLIMAX_VARIABLES, **cfg).to(dev)
        with torch.no_grad():  # a non-zero query and key/value biases exercise every path of the folding
            ours.var_query.normal_()
            ours.var_agg.in_proj_bias.normal_(0, 0.1)
        base = Unfolded(CLIMAX_VARIABLES, **cfg).to(dev)
        base.load_state_dict(ours.state_dict())
        models = {"xclimax": (ours, False), "unfolded": (base, False)}
        if Official is not None:
            off = Official(list(CLIMAX_VARIABLES), **cfg).to(dev)
            off.load_state_dict(ours.state_dict())
            models["official"] = (off, True)
        x = torch.randn(batch, 48, 32, 64, device=dev)
        lead = torch.full((batch,), 72.0, device=dev)
        y = torch.randn(batch, 48, 32, 64, device=dev)
        with torch.no_grad():
            ref = ours.eval()(x, lead, list(CLIMAX_VARIABLES))
            for label, (m, official) in models.items():
                if label != "xclimax":
                    out = Runner(m.eval(), official, "infer", (x, lead, y), None, dev).forward()
                    err = float((out - ref).abs().max() / ref.abs().max())
                    row("model", f"{name}: max abs difference xclimax vs {label} (relative)", f"{err:.1e}", target="< 1e-4", met=err < 1e-4)
        precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if dev.startswith("cuda") else [])
        for prec, dtype in precisions:
            for mode in ("infer", "train"):
                runners = {label: Runner(m, official, mode, (x, lead, y), dtype, dev) for label, (m, official) in models.items()}
                med = alternate(runners, args.rounds, warmup=1, inner=args.inner, device=dev)
                for label in runners:
                    if label == "xclimax":
                        continue
                    row("model", f"{name} {prec} {mode}: xclimax vs {label} (batch {batch})",
                        f"{batch / med['xclimax']:.1f} vs {batch / med[label]:.1f} samples/s",
                        med[label] / med["xclimax"], target="> 1", met=med[label] > med["xclimax"])
    if Official is None:
        row("model", "official microsoft/ClimaX", "not compared", note=why)


# ----------------------------------------------------------------------------- FLOPs and MFU


def analytic_flops(img_size=(32, 64), patch_size=2, n_vars=48, embed_dim=1024, depth=8, num_heads=16, mlp_ratio=4.0,
                   decoder_depth=2, n_out=None) -> dict:
    """Forward FLOPs per sample of the folded model (a multiply-add = 2 FLOPs), by part.

    ``L = HW / p^2`` tokens, ``K = p^2 + 1``: the folded aggregation (scores ``2 L V K heads`` and the
    ``[L, heads V K] x [heads V K, D]`` product), the blocks (``qkv`` + ``proj`` + MLP ``2 L D^2 (4 + 2 r)``
    and attention ``4 L^2 D`` each), the head (``2 L D^2`` per decoder layer + ``2 L D V p^2``). The
    folding of the weights (independent of the batch), norms, softmax and elementwise work are left out
    (under 1 %). Training (forward + backward) is about 3x the forward.

    Examples
    --------
    >>> round(analytic_flops()["total"] / 1e9, 1)   # 5.625 deg ClimaX: GFLOP per sample, forward
    118.0
    """
    H, W = img_size
    p, D, V = patch_size, embed_dim, n_vars
    n_out = V if n_out is None else n_out
    L, K = (H // p) * (W // p), p * p + 1
    parts = {
        "aggregation": 2 * L * V * K * num_heads + 2 * L * num_heads * V * K * D,
        "blocks": depth * (2 * L * D * D * (4 + 2 * mlp_ratio) + 4 * L * L * D),
        "head": decoder_depth * 2 * L * D * D + 2 * L * D * n_out * p * p,
        "lead": 2 * D,
    }
    parts["total"] = sum(parts.values())
    return parts


def counted_flops(cfg: dict, training: bool) -> float:
    """FLOPs per sample counted by ``FlopCounterMode`` on the meta device (batch 2, divided by 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = ClimaX(CLIMAX_VARIABLES, **cfg)
        x = torch.randn(2, 48, *cfg["img_size"])
        lead = torch.full((2,), 24.0)
    counter = FlopCounterMode(display=False)
    model.train(training)
    with counter, (contextlib.nullcontext() if training else torch.no_grad()):
        out = model(x, lead, model.variables)
        if training:
            out.pow(2).mean().backward()
    return counter.get_total_flops() / 2


def section_flops(args) -> None:
    dev = args.device
    for label, grid in FLOP_CONFIGS.items():
        cfg = dict(MODEL_CONFIGS["default"], **grid)
        fwd, train = counted_flops(cfg, False), counted_flops(cfg, True)
        ana = analytic_flops(**grid, embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"])
        row("flops", f"{label}: forward GFLOP/sample (counter; formula)", f"{fwd / 1e9:.1f}; {ana['total'] / 1e9:.1f}",
            fwd / ana["total"], note=f"blocks {ana['blocks'] / ana['total']:.0%}, aggregation "
                                     f"{ana['aggregation'] / ana['total']:.1%}")
        row("flops", f"{label}: training GFLOP/sample (fwd+bwd)", f"{train / 1e9:.1f}", train / fwd, note="ratio: vs forward")
        if not dev.startswith("cuda"):
            row("flops", f"{label}: MFU bf16", "unmeasured (no GPU this session)", target="> 40% at 1.40625 deg",
                note="benchmarks/gpu_check.sh measures it")
            continue
        batch = args.batch_gpu // 4 if "128x256" in label else args.batch_gpu
        times = _train_step_times(cfg, batch, args)
        torch.cuda.empty_cache()
        for how, t in times.items():
            achieved = train * batch / t
            mfu = achieved / (args.peak_tflops * 1e12)
            row("flops", f"{label}: MFU bf16 training ({how}), batch {batch} ({torch.cuda.get_device_name()})",
                f"{achieved / 1e12:.0f} TFLOP/s of {args.peak_tflops:.0f}; {batch / t:.0f} samples/s", mfu,
                target="> 0.40 at 1.40625 deg", met=(mfu > 0.40) if "128x256" in label else None)


def _train_step_times(cfg: dict, batch: int, args) -> dict:
    """Seconds per bf16 training step (forward, MSE, backward, fused AdamW) on CUDA, eager (and compiled)."""
    dev = args.device
    torch.manual_seed(0)
    model = ClimaX(CLIMAX_VARIABLES, **cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, 48, *cfg["img_size"], device=dev)
    y, lead = torch.randn_like(x), torch.full((batch,), 24.0, device=dev)

    def make_step(net):
        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = (net(x, lead, model.variables).float() - y).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    variants = {"eager": make_step(model)}
    if args.compile:
        variants["torch.compile"] = make_step(torch.compile(model))
    return alternate(variants, rounds=args.rounds, warmup=3, inner=args.inner, device=dev)


# ----------------------------------------------------------------------------- pipeline and end to end


def _store(tmp: str, nt: int) -> str:
    from bench_pipeline import build_store

    path = f"{tmp}/wb2_5.625deg.zarr"
    if not Path(path).exists():
        build_store(path, nt)
    return path


def section_pipeline(args, tmp: str) -> None:
    import xarray as xr
    from bench_pipeline import bench_xbatcher, bench_xclimax, canonical

    path = _store(tmp, args.times)
    da = canonical(path)
    try:
        xb = bench_xbatcher(da, args.xbatcher_batches)
    except ImportError:
        row("pipeline", "xbatcher + DataLoader", "not installed (pip install xbatcher)")
        xb = None
    ours = bench_xclimax(xr.open_zarr(path), args.loader_batches)
    if xb:
        row("pipeline", "BatchLoader(open_zarr) vs xbatcher + DataLoader(0 workers), batch 16",
            f"{ours:.0f} vs {xb:.0f} samples/s", ours / xb, target=">= 10", met=ours / xb >= 10)


class _BareStep:
    """What ``training.fit`` does per batch, without the loop around it: the reference of the e2e ratio."""

    def __init__(self, model: ClimaX, batches: list, lat: np.ndarray, device: str, precision: str | None) -> None:
        from xclimax.training.fit import weighted_sq_error
        from xclimax.training.optim import LinearWarmupCosine, configure_optimizer
        from xclimax.training.prepare import lat_weights

        self.model, self.device = model.to(device).train(), device
        self.batches = [b.to(device) for b in batches]
        self.opt = configure_optimizer(model)
        self.sched = LinearWarmupCosine(self.opt, 10, 10_000)
        self.wmap = torch.as_tensor(lat_weights(lat)[:, None] * np.ones((1, model.img_size[1])), dtype=torch.float32,
                                    device=device)
        self.loss_fn = weighted_sq_error
        self.amp = torch.bfloat16 if precision == "bf16" else None
        self.i = 0
        self.losses: list[torch.Tensor] = []

    def __call__(self) -> None:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        with torch.autocast(self.device.split(":")[0], dtype=self.amp) if self.amp else contextlib.nullcontext():
            pred = self.model(b.x, b.lead_hours, b.variables, b.out_variables)
        loss = self.loss_fn(pred, b.y, self.wmap).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.losses.append(loss.detach())  # read at the end: the bare step never waits for the device


def section_e2e(args, tmp: str) -> None:
    import xarray as xr

    import xclimax
    from xclimax.loading import BatchLoader

    dev, path = args.device, _store(tmp, args.times)
    precision = "bf16" if dev.startswith("cuda") else None
    batch = args.e2e_batch
    kwargs = dict(MODEL_CONFIGS["small"]) if (args.big or dev.startswith("cuda")) else \
        dict(embed_dim=128, depth=2, num_heads=4)
    from bench_pipeline import canonical

    ds = xr.open_zarr(path)
    da = canonical(path)
    names = [str(v) for v in da["variable"].values]
    outs = [v for v in names if VARIABLES.get(v, {}).get("kind") != "constant"]  # as pretrain
    loader = BatchLoader(ds, {v: (0.0, 1.0) for v in names}, lead_times=("6h", "168h"), batch_size=batch, seed=0,
                         outputs=outs)
    it = loader.epoch(0)
    batches = [b for _, b in zip(range(8), it)]
    it.close()
    lat = np.asarray(da["lat"].values, float)
    n, skip = args.e2e_steps, max(4, args.e2e_steps // 8)  # (the first steps: statistics pass, first blocks, warm-up)
    variants = {"pretrain(open_zarr)": {}}
    for extra in filter(None, args.e2e_variants.split(",")):  # e.g. prefetch=0 (batches read in the training thread)
        key, value = extra.split("=")
        variants[f"pretrain(open_zarr, {extra})"] = {key: int(value)}
    rates: dict[str, list[float]] = {k: [] for k in [*variants, "bare"]}
    cpu: dict[str, list[float]] = {k: [] for k in [*variants, "bare"]}  # samples per CPU-second of this process
    steps_s: dict[str, list[float]] = {k: [] for k in [*variants, "bare"]}  # seconds of each step
    xclimax.set_options(progress=False)
    for _ in range(args.e2e_rounds):
        for label, extra in variants.items():
            stamps: list[tuple[float, float]] = []
            xclimax.pretrain(ds, lead_times=("6h", "168h"), batch_size=batch, max_steps=skip + n, device=dev,
                             precision=precision, model_kwargs=kwargs, seed=0, **extra,
                             callback=lambda step, loss, s=stamps: s.append((time.perf_counter(), time.process_time())))
            sync(dev)
            rates[label].append((len(stamps) - 1 - skip) * batch / (stamps[-1][0] - stamps[skip][0]))
            cpu[label].append((len(stamps) - 1 - skip) * batch / (stamps[-1][1] - stamps[skip][1]))
            steps_s[label] += np.diff([w for w, _ in stamps[skip:]]).tolist()
        torch.manual_seed(0)
        bare = _BareStep(ClimaX(names, img_size=(32, 64), patch_size=2, **kwargs), batches, lat, dev, precision)
        for _ in range(skip):
            bare()
        sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            t1 = time.perf_counter()
            bare()
            if not dev.startswith("cuda"):  # (asynchronous on CUDA: only the total counts)
                steps_s["bare"].append(time.perf_counter() - t1)
        float(torch.stack(bare.losses).sum())
        sync(dev)
        rates["bare"].append(n * batch / (time.perf_counter() - t0))
        cpu["bare"].append(n * batch / (time.process_time() - c0))
    for label in variants:
        ratios = [a / b for a, b in zip(rates[label], rates["bare"])]
        ratio = statistics.median(ratios)
        row("e2e", f"{label} vs bare step, batch {batch}, {kwargs}, {'bf16' if precision else 'fp32'}",
            f"{statistics.median(rates[label]):.2f} vs {statistics.median(rates['bare']):.2f} samples/s", ratio,
            target=">= 0.95", met=ratio >= 0.95, note="per round: " + ", ".join(f"{r:.2f}" for r in ratios)
            + "; in CPU time of this process: " + ", ".join(f"{a / b:.2f}" for a, b in zip(cpu[label], cpu["bare"]))
            + ("; median step time bare / e2e: "
               f"{statistics.median(steps_s['bare']) / statistics.median(steps_s[label]):.2f}"
               if steps_s["bare"] else ""))


# ----------------------------------------------------------------------------- forecast overhead


def section_forecast(args) -> None:
    import xarray as xr  # noqa: F401

    import xclimax
    from xclimax.testing import synthetic_dataset

    dev = args.device
    nt = args.forecast_times
    batch = args.batch_gpu if dev.startswith("cuda") else 8
    ds = synthetic_dataset(nt, grid=(32, 64))
    torch.manual_seed(0)
    kwargs = dict(MODEL_CONFIGS["default" if args.big else "small"])
    model = ClimaX(CLIMAX_VARIABLES, img_size=(32, 64), patch_size=2, **kwargs).eval()
    model.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(ds))
    xclimax.set_options(progress=False)
    probe = xclimax.forecast(ds.isel(time=slice(0, 1)), model, lead_time="6h", device=dev, names="climax")
    in_vars = probe.attrs["xclimax_input_variables"].split()
    out_vars = [v for v in model.variables if v in in_vars and VARIABLES.get(v, {}).get("kind") != "constant"]
    arr = xclimax.tokens.to_array(xclimax.grid.normalize_grid(ds)[0], in_vars).transpose("time", "variable", "lat", "lon")
    mean = np.array([model.stats[v][0] for v in in_vars], np.float32)[:, None, None]
    std = np.array([model.stats[v][1] for v in in_vars], np.float32)[:, None, None]
    x_all = torch.as_tensor((arr.values - mean) / std, dtype=torch.float32)
    dsk = ds.chunk({"time": batch})
    ref_model = model.to(dev)

    def raw() -> None:  # the model alone on the same (already normalised) tensors, same batches
        with torch.inference_mode():
            for s in range(0, nt, batch):
                x = x_all[s : s + batch].to(dev)
                y = ref_model(x, torch.full((x.shape[0],), 6.0, device=dev), in_vars, out_vars)
                y.cpu()

    def numpy_input() -> None:
        xclimax.forecast(ds, model, lead_time="6h", batch_size=batch, device=dev)

    def dask_input() -> None:
        import dask

        with dask.config.set(scheduler="threads"):
            dsk.climax.forecast(model, lead_time="6h", batch_size=batch, device=dev).compute()

    def accessor_numpy() -> None:
        ds.climax.forecast(model, lead_time="6h", batch_size=batch, device=dev)

    med = alternate({"raw": raw, "numpy": accessor_numpy, "dask": dask_input}, rounds=args.rounds, warmup=1, device=dev)
    for label in ("numpy", "dask"):
        slow = med[label] / med["raw"]
        row("forecast", f"ds.climax.forecast ({label} input) / raw model, {nt} times, batch {batch}, {kwargs}",
            f"{med[label]:.2f} s vs {med['raw']:.2f} s", slow, target="<= 1.10", met=slow <= 1.10)


# ----------------------------------------------------------------------------- memory (fresh processes)


def _child(spec: dict) -> dict:
    """One memory case in this (fresh) process: peak host RSS increase and CUDA peak, in bytes."""
    import xclimax  # noqa: F401

    torch.set_num_threads(spec.get("threads", 1))
    dev = spec["device"]

    def status(key: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return 0

    def reset() -> int:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
        return status("VmRSS")

    out: dict = {}
    if spec["kind"] == "rollout":
        from xclimax.testing import synthetic_dataset

        xclimax.set_options(progress=False)
        ds = synthetic_dataset(spec["times"], grid=(32, 64))
        torch.manual_seed(0)
        model = ClimaX(CLIMAX_VARIABLES, img_size=(32, 64), patch_size=2, **spec["cfg"]).eval()
        model.stats = xclimax.normalize.stats_to_dict(xclimax.compute_stats(ds))
        xclimax.forecast(ds.isel(time=slice(0, 1)), model, lead_time="6h", steps=2, device=dev)  # warm-up
        base = reset()
        fc = xclimax.forecast(ds, model, lead_time="6h", steps=spec["steps"], device=dev, batch_size=spec["batch"])
        out["peak"] = status("VmHWM") - base
        out["result"] = int(sum(v.nbytes for v in fc.data_vars.values()))
    else:
        cfg = spec["cfg"]
        torch.manual_seed(0)
        model = ClimaX(CLIMAX_VARIABLES, img_size=tuple(cfg["img_size"]), **{k: v for k, v in cfg.items() if k != "img_size"},
                       checkpoint_activations=spec.get("ckpt", False)).to(dev)
        b = spec["batch"]
        x = torch.randn(b, 48, *cfg["img_size"], device=dev)
        lead = torch.full((b,), 24.0, device=dev)
        training = spec["kind"] == "train"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if training else None

        def once() -> None:
            if training:
                model.train()
                loss = (model(x, lead, model.variables) - x).square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                model.eval()
                with torch.inference_mode():
                    model(x, lead, model.variables)

        if training:  # AdamW's moments exist from the first step on: the measured step is the second
            once()
        base = reset()
        t0 = time.perf_counter()
        once()
        sync(dev)
        out["seconds"] = time.perf_counter() - t0
        out["peak"] = status("VmHWM") - base
    if dev.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def measure(spec: dict) -> dict:
    # a fixed mmap threshold: glibc then returns every freed tensor buffer (> 64 KiB) to the system at once, so
    # the peak RSS follows the live tensors instead of what malloc's arenas happen to keep cached
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"memory case {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_memory(args) -> None:
    from xclimax.nn import memory

    dev = args.device
    cuda = dev.startswith("cuda")
    key = "cuda_peak" if cuda else "peak"
    where = "device" if cuda else "host RSS"
    name = "default" if (args.big or cuda) else "small"
    cfg = dict(MODEL_CONFIGS[name], img_size=[32, 64], patch_size=2, drop_path=0.1, drop_rate=0.1)
    b = args.mem_batch * (4 if cuda else 1)
    full = {**cfg, "variables": list(CLIMAX_VARIABLES)}
    res = {}
    for kind, ckpt, batch in [("infer", False, b), ("infer", False, 2 * b), ("train", False, b), ("train", False, 2 * b),
                              ("train", True, b), ("train", True, 2 * b)]:
        res[kind, ckpt, batch] = measure(dict(kind=kind, ckpt=ckpt, batch=batch, cfg=cfg, device=dev))
    per = {}
    for kind, ckpt in [("infer", False), ("train", False), ("train", True)]:
        per[kind, ckpt] = (res[kind, ckpt, 2 * b][key] - res[kind, ckpt, b][key]) / b
        try:
            est = memory.estimate_memory(full, 1, training=kind == "train", checkpointing=ckpt).per_sample
        except TypeError:  # an estimate without the checkpointing option
            est = memory.estimate_memory(full, 1, training=kind == "train").per_sample
        label = {"infer": "inference", "train": "training"}[kind] + (" + activation checkpointing" if ckpt else "")
        row("memory", f"{name} config, {label}: {where} per sample",
            f"{per[kind, ckpt] / 2**20:.1f} MiB", est / max(per[kind, ckpt], 1),
            target=">= 1 (the estimate is an upper bound)", met=est >= per[kind, ckpt],
            note=f"ratio: xclimax.nn.memory estimate {est / 2**20:.1f} MiB / measured")
        if cuda:
            hkey = "peak"
            hper = (res[kind, ckpt, 2 * b][hkey] - res[kind, ckpt, b][hkey]) / b
            row("memory", f"{name} config, {label}: host RSS per sample", f"{hper / 2**20:.1f} MiB")
    gain = per["train", False] / max(per["train", True], 1)
    row("memory", "activation checkpointing: per-sample training memory without / with", f"{gain:.2f}x", gain,
        target=">= 2", met=gain >= 2)
    a, c = res["train", False, b][key], res["train", True, 2 * b][key]
    row("memory", f"peak of a training step: batch {2 * b} with checkpointing vs batch {b} without",
        f"{c / 2**20:.0f} vs {a / 2**20:.0f} MiB", c / a, target="<= 1 (twice the batch fits)", met=c <= a)
    # speed cost, in this process, alternating
    torch.manual_seed(0)
    m1 = ClimaX(CLIMAX_VARIABLES, **{k: v for k, v in cfg.items()}).to(dev)
    m2 = ClimaX(CLIMAX_VARIABLES, **{k: v for k, v in cfg.items()}, checkpoint_activations=True).to(dev)
    m2.load_state_dict(m1.state_dict())
    x = torch.randn(b, 48, 32, 64, device=dev)
    lead, y = torch.full((b,), 24.0, device=dev), torch.randn(b, 48, 32, 64, device=dev)
    dtype = torch.bfloat16 if cuda else None
    med = alternate({"plain": Runner(m1, False, "train", (x, lead, y), dtype, dev),
                     "ckpt": Runner(m2, False, "train", (x, lead, y), dtype, dev)}, rounds=args.rounds, device=dev,
                    inner=args.inner)
    row("memory", f"activation checkpointing: training step time with / without (batch {b})",
        f"{med['ckpt'] * 1e3:.0f} vs {med['plain'] * 1e3:.0f} ms", med["ckpt"] / med["plain"], note="the speed cost")


def section_rollout(args) -> None:
    dev = args.device
    cfg = dict(embed_dim=128, depth=2, num_heads=4)
    res = {s: measure(dict(kind="rollout", steps=s, times=4, batch=4, cfg=cfg, device=dev)) for s in (5, 20, 40)}
    key = "cuda_peak" if dev.startswith("cuda") else "peak"
    for s, r in res.items():
        row("rollout", f"forecast of 4 initial times, {s} steps: peak {'device' if key == 'cuda_peak' else 'host'} "
            f"memory (result {r['result'] / 2**20:.1f} MiB)", f"{r[key] / 2**20:.1f} MiB")
    # beyond the result (which holds every step), the working memory must stay flat
    if key == "cuda_peak":
        growth = res[40][key] / res[5][key]
        row("rollout", "device peak at 40 steps / at 5 steps", f"{growth:.2f}", growth, target="~1 (flat)",
            met=growth < 1.1)
    else:
        # the model's output buffer and the labelled Dataset built from it both hold every step: beyond those
        # two copies of the result, nothing may grow with the number of steps
        extra = {s: r["peak"] - r["result"] for s, r in res.items()}
        row("rollout", "host peak minus the result at 5 / 20 / 40 steps",
            " / ".join(f"{extra[s] / 2**20:.1f}" for s in (5, 20, 40)) + " MiB")
        per_step = (res[40]["peak"] - res[5]["peak"]) / (res[40]["result"] - res[5]["result"])
        row("rollout", "growth of the peak from 5 to 40 steps / growth of the result", f"{per_step:.2f}", per_step,
            target="<= 2 (the result and its labelled copy)", met=per_step <= 2.0)


# ----------------------------------------------------------------------------- precision


def section_precision(args) -> None:
    import xclimax
    from xclimax import tutorial

    dev = args.device
    train = tutorial.open_dataset(years=[2000], days=args.precision_days)  # a training year's first days
    arch = dict(patch_size=2, embed_dim=64, depth=2, num_heads=4, drop_path=0.0, drop_rate=0.0)
    steps = args.precision_steps
    precisions = ["fp32", "bf16"] + (["fp16"] if dev.startswith("cuda") else [])
    ends, seconds, curves = {}, {}, {}
    xclimax.set_options(progress=False)
    for prec in precisions:
        t0 = time.perf_counter()
        _, hist = xclimax.pretrain(train, lead_times=("24h", "24h"), batch_size=args.precision_batch, max_steps=steps, lr=1e-3,
                                   warmup_steps=steps // 10, seed=0, model_kwargs=arch, device=dev,
                                   precision=None if prec == "fp32" else prec)
        seconds[prec] = time.perf_counter() - t0
        loss = hist["loss"].values
        ends[prec] = (float(loss[:10].mean()), float(loss[-10:].mean()))
        curves[prec] = loss
    for prec in precisions:
        first, last = ends[prec]
        ratio = last / ends["fp32"][1]
        row("precision", f"demo recipe, {steps} steps, batch {args.precision_batch}, {arch['embed_dim']}-dim: {prec} loss first 10 -> last 10",
            f"{first:.5f} -> {last:.5f} ({seconds[prec]:.0f} s)", ratio if prec != "fp32" else None,
            target="" if prec == "fp32" else "end within 5% of fp32",
            met=None if prec == "fp32" else abs(ratio - 1) <= 0.05)
    for prec in precisions[1:]:
        dev_max = float(np.max(np.abs(curves[prec] / curves["fp32"] - 1)))
        row("precision", f"{prec}: largest relative difference from the fp32 loss at any step", f"{dev_max:.2%}")
    if not dev.startswith("cuda"):
        row("precision", "fp16 (needs CUDA)", "unmeasured (no GPU this session)", note="benchmarks/gpu_check.sh")


# ----------------------------------------------------------------------------- main


def print_table(args) -> None:
    print()
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"xclimax benchmarks ({dev}; torch {torch.__version__}; ratios measured within this run)")
    print()
    print("| section | measurement | value | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in ROWS:
        ratio = f"{r['ratio']:.2f}" if isinstance(r["ratio"], float) else (r["ratio"] or "")
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        note = f" ({r['note']})" if r["note"] else ""
        print(f"| {r['section']} | {r['what']}{note} | {r['value']} | {ratio} | {r['target']} | {met} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--big", action="store_true", help="larger models and batches (the 108 M ClimaX where it fits)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--inner", type=int, default=1, help="calls per timed round (10+ on a GPU)")
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--batch-gpu", type=int, default=64)
    parser.add_argument("--times", type=int, default=512, help="time steps of the zarr store")
    parser.add_argument("--xbatcher-batches", type=int, default=6)
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--e2e-batch", type=int, default=8)
    parser.add_argument("--e2e-steps", type=int, default=24)
    parser.add_argument("--e2e-rounds", type=int, default=2)
    parser.add_argument("--e2e-variants", default="", help="extra pretrain settings to time, e.g. prefetch=0")
    parser.add_argument("--forecast-times", type=int, default=32)
    parser.add_argument("--mem-batch", type=int, default=4)
    parser.add_argument("--precision-steps", type=int, default=60)
    parser.add_argument("--precision-batch", type=int, default=4)
    parser.add_argument("--precision-days", type=int, default=120, help="days of the demo year 2000 trained on")
    parser.add_argument("--compile", action="store_true", help="on CUDA, also the MFU of torch.compile(model)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H200: 989)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Consolidated metadata")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    if args.big:
        args.model_batch, args.e2e_steps, args.forecast_times = 8, max(args.e2e_steps, 48), 64
        args.precision_steps, args.precision_batch, args.rounds = 200, 8, max(args.rounds, 3)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            fn = globals()[f"section_{name}"]
            try:
                fn(args, tmp) if name in ("pipeline", "e2e") else fn(args)
            except Exception as err:  # one failing section must not hide the others
                row(name, "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
            print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
            if args.json:  # after every section: a run cut short by a time limit keeps what it measured
                Path(args.json).write_text(json.dumps(dict(device=args.device, rows=ROWS), indent=1, default=str))
    print_table(args)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
