"""Write tests/data/golden_small.{safetensors,json}: outputs of the OFFICIAL ClimaX module.

The official code is not part of xclimax or its test suite. This script imports it from a
checkout and records, for small random models, inputs / weights / outputs that
``tests/test_model.py`` compares ``xclimax.ClimaX`` against.

Usage::

    mkdir -p /tmp/climax_official
    git -C /path/to/ClimaX archive HEAD | tar -x -C /tmp/climax_official    # microsoft/ClimaX @6d5d354
    pip install timm==0.6.12 --no-deps
    CLIMAX_SRC=/tmp/climax_official/src python scripts/make_golden.py

The official module needs timm 0.6.12 (``Block(..., drop=...)``) and ``np.float`` (removed in
NumPy 1.24). timm 0.6.12 imports torchvision and its ``timm.models`` package fails to import on
Python 3.11, so :func:`import_official_climax` patches ``np.float`` and installs minimal
import shims (in this process only) before importing ``climax.arch``.

Inputs and weights are rounded to float16-representable values (stored as float16, exact in
float32) to keep the file small; outputs are float32.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from xclimax.vocab import CLIMAX_VARIABLES  # noqa: E402

OUT = ROOT / "tests" / "data" / "golden_small"


class _Anything(type):
    """A stand-in class whose attributes are their own names (for ``InterpolationMode.NEAREST``...)."""

    def __getattr__(cls, attr: str) -> str:
        return attr


def _stand_in(attr: str):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Anything(attr, (), {})


class _TorchvisionShim(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import torchvision[.x.y]`` succeed with empty stand-ins (timm imports it eagerly)."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _stand_in
        return module

    def exec_module(self, module):
        pass


def import_official_climax(src: str | os.PathLike):
    """Import and return the official ``climax.arch.ClimaX`` class from a checkout's ``src`` dir."""
    src = Path(src)
    if not (src / "climax" / "arch.py").is_file():
        raise FileNotFoundError(f"no climax/arch.py under {src} (point CLIMAX_SRC/--official at the checkout's src/)")
    np.float = float  # removed in NumPy 1.24, used by climax.utils.pos_embed
    shim = _TorchvisionShim() if importlib.util.find_spec("torchvision") is None else None
    if shim is not None:
        sys.meta_path.insert(0, shim)
    spec = importlib.util.find_spec("timm")
    if spec is None:
        raise ImportError("the official ClimaX needs timm==0.6.12: pip install timm==0.6.12 --no-deps")
    # skip timm/__init__ and timm/models/__init__ (they import every model; maxxvit fails on Python 3.11)
    root = os.path.dirname(spec.origin)
    for name, folder in (("timm", root), ("timm.models", os.path.join(root, "models"))):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [folder]
            module.__version__ = "0.6.12"
            sys.modules[name] = module
    sys.path.insert(0, str(src))
    try:
        from climax.arch import ClimaX
    finally:  # the stand-ins must not confuse later imports (torch probes for torchvision)
        if shim is not None:
            sys.meta_path.remove(shim)
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
    return ClimaX


def randomise_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random float16-representable weights, large enough that every path matters.

    (The official initialisation has a zero query and zero biases, which would make the
    variable aggregation a plain average.)
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                value = 1 + 0.2 * torch.randn(p.shape, generator=gen)
            elif p.dim() >= 2 and name not in ("var_embed", "var_query", "pos_embed"):
                fan_in = p[0].numel() if p.dim() > 1 else 1
                value = torch.randn(p.shape, generator=gen) * 1.5 / fan_in**0.5
            else:
                value = torch.randn(p.shape, generator=gen) * (1.0 if name == "var_query" else 0.3)
            p.copy_(value.half().float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", default=os.environ.get("CLIMAX_SRC", "/tmp/climax_official/src"))
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    Official = import_official_climax(args.official)
    from safetensors.torch import save_file

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    V = list(CLIMAX_VARIABLES)
    models = {
        "a": dict(img_size=[16, 32], patch_size=2, embed_dim=64, depth=2, decoder_depth=2, num_heads=4),
        "b": dict(img_size=[16, 32], patch_size=4, embed_dim=32, depth=1, decoder_depth=1, num_heads=2),
    }
    perm = [V[i] for i in torch.randperm(48, generator=gen)]
    cases = {
        "full": ("a", V, None),
        "subset_reordered": ("a", perm[:20], None),
        "out_subset": ("a", perm[5:35], [V[i] for i in torch.randperm(48, generator=gen)[:7]]),
        "shuffled_full_p4": ("b", perm, [V[i] for i in torch.randperm(48, generator=gen)[:11]]),
    }
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"models": {}, "cases": {}}
    nets = {}
    for key, cfg in models.items():
        net = Official(V, **cfg).eval()
        randomise_(net, gen)
        nets[key] = net
        meta["models"][key] = {**cfg, "variables": V}
        for name, value in net.state_dict().items():
            tensors[f"model_{key}/{name}"] = value.half()
    for name, (key, variables, out_variables) in cases.items():
        B = 2
        x = torch.randn(B, len(variables), 16, 32, generator=gen).half()
        lead_hours = torch.tensor([6.0, 240.0])
        with torch.no_grad():
            _, out = nets[key](x.float(), None, lead_hours / 100.0, variables, out_variables or V, None, None)
        tensors[f"{name}/x"] = x
        tensors[f"{name}/lead_hours"] = lead_hours
        tensors[f"{name}/out"] = out.contiguous()
        meta["cases"][name] = {"model": key, "variables": list(variables), "out_variables": out_variables}
    try:
        commit = subprocess.run(["git", "-C", args.official, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    meta["provenance"] = {
        "official": "microsoft/ClimaX src/climax/arch.py" + (f" @{commit}" if commit else " @6d5d354 (git archive)"),
        "timm": "0.6.12",
        "torch": torch.__version__,
        "note": "weights and x are float16-representable, run in float32 eval mode; lead_hours / 100 fed to the official module",
    }
    save_file(tensors, args.out + ".safetensors")
    Path(args.out + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    size = os.path.getsize(args.out + ".safetensors")
    print(f"wrote {args.out}.safetensors ({size / 1e6:.2f} MB) and .json with {len(cases)} cases")


if __name__ == "__main__":
    main()
