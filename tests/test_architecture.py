"""The package's shape: layered imports (import-linter), documented layout, no process-wide side effects."""

from __future__ import annotations

import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import xclimax
from xclimax.testing import synthetic_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """`lint-imports` checks the layers of setup.cfg: imports only go down; nn never imports xarray; no test helpers."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e .[test])")
    res = subprocess.run([exe, "setup.cfg"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout and "3 kept, 0 broken" in res.stdout


def test_contracts_name_every_subpackage_and_the_design_page_describes_them():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    layers = cfg["importlinter:contract:layers"]["layers"]
    design = (ROOT / "docs" / "design.md").read_text()
    packages = sorted(p.name for p in (ROOT / "xclimax").iterdir() if (p / "__init__.py").exists())
    assert packages, "no subpackages found"
    for name in packages:
        assert name in layers, f"xclimax/{name}/ is in no layer of the import contract"
        assert f"{name}/" in design, f"docs/design.md does not describe xclimax/{name}/"


def test_import_is_light_and_has_no_side_effects():
    """`import xclimax` imports neither torch nor the model, and changes no process-wide state."""
    code = (
        "import os, sys; m0 = os.umask(0o022); os.umask(m0); import xclimax; "
        "m1 = os.umask(0o022); os.umask(m1); assert m0 == m1; "
        "assert 'torch' not in sys.modules, 'torch imported eagerly'; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_writes_do_not_change_the_umask(tmp_path):
    before = os.umask(0o022)
    os.umask(before)
    model = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    xclimax.save_checkpoint(model, tmp_path / "m.safetensors")
    after = os.umask(0o022)
    os.umask(after)
    assert before == after
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~before


@pytest.mark.parametrize("training", [False, True])
def test_forecast_leaves_the_callers_model_as_it_was(training):
    ds = synthetic_dataset(2, variables=["2m_temperature"], grid=(8, 16), constants=False)
    model = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2,
                           drop_path=0.0, drop_rate=0.0)
    model.stats = {"2m_temperature": (280.0, 10.0)}
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fc = xclimax.forecast(ds, model, lead_time="6h")
    assert model.training is training
    assert next(model.parameters()).device == torch.device("cpu")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # the forecast is the model's own eval-mode output, whichever mode the caller left it in
    model.eval()
    again = xclimax.forecast(ds, model, lead_time="6h")
    np.testing.assert_array_equal(fc["2m_temperature"].values, again["2m_temperature"].values)


def test_public_module_names_still_resolve():
    assert xclimax.tutorial.open_dataset is not None
    assert callable(xclimax.grid.regrid) and callable(xclimax.tokens.find_variables)
    assert callable(xclimax.normalize.stats_to_dict) and callable(xclimax.baselines.persistence)
    # importable as modules in a fresh interpreter, before any attribute access
    code = ("from xclimax.baselines import persistence; import xclimax.tutorial as t; from xclimax.grid import regrid; "
            "import xclimax.normalize; assert persistence.__module__ == 'xclimax.scoring.baselines'; "
            "assert t.__name__ == 'xclimax.demo.tutorial'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_finetune_with_new_variables_is_reproducible():
    """Fresh weights of variables the model has never seen come from the seed, not the global RNG state."""
    ds = synthetic_dataset(12, variables=["2m_temperature", "temperature"], levels=[850], grid=(8, 16), constants=False)
    base = xclimax.ClimaX(["2m_temperature"], img_size=(8, 16), embed_dim=16, depth=1, num_heads=2)
    runs = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # a different global RNG state before each call
        tuned, _ = xclimax.finetune(ds, base, inputs=["2m_temperature"], outputs=["temperature_850"],
                                    lead_time="6h", batch_size=2, max_steps=1, seed=3)
        runs.append(tuned.state_dict())
    for k, v in runs[0].items():
        torch.testing.assert_close(v, runs[1][k], rtol=0, atol=0, msg=k)
