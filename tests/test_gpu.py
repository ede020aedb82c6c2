"""CUDA paths: model and forecast equal the CPU's, fp16 training goes through a GradScaler, batches are pinned.

Skipped without a CUDA device (CI has none); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xclimax
from tests import record_loaders, requires_cuda
from xclimax import ClimaX
from xclimax.loading import BatchLoader
from xclimax.testing import synthetic_dataset

pytestmark = [requires_cuda, pytest.mark.gpu]

TINY = dict(embed_dim=64, depth=2, decoder_depth=1, num_heads=4, drop_path=0.0, drop_rate=0.0)


@pytest.fixture(autouse=True)
def _exact_cuda_matmuls():
    """No TF32 in these comparisons (the CPU computes in full float32)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _ds(nt=40, seed=0):
    return synthetic_dataset(nt, grid=(8, 16), levels=(500, 850), variables=["2m_temperature", "temperature"], seed=seed)


def test_model_on_cuda_equals_cpu():
    model = ClimaX(("2m_temperature", "temperature_850", "10m_u_component_of_wind"), img_size=(8, 16), patch_size=2, **TINY).eval()
    x = torch.randn(3, 3, 8, 16)
    lead = torch.tensor([6.0, 24.0, 72.0])
    with torch.no_grad():
        cpu = model(x, lead, model.variables)
        gpu = model.to("cuda")(x.cuda(), lead.cuda(), model.variables).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(x.cuda(), lead.cuda(), model.variables).float().cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)
    assert (half - cpu).abs().max() < 0.1 * cpu.abs().max()  # bf16: close, not equal


def test_forecast_on_cuda_equals_cpu():
    ds = _ds()
    model, _ = xclimax.pretrain(ds, lead_times=("6h", "6h"), batch_size=4, max_steps=2, model_kwargs=TINY, prefetch=0)
    cpu = xclimax.forecast(ds.isel(time=slice(0, 4)), model, lead_time="6h", steps=2, device="cpu")
    gpu = xclimax.forecast(ds.isel(time=slice(0, 4)).chunk({"time": 2}), model, lead_time="6h", steps=2,
                           device="cuda").compute()
    xr.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_on_cuda(precision, monkeypatch):
    scaled = []
    original = torch.amp.GradScaler

    class Recording(original):
        def scale(self, outputs):
            scaled.append(self.is_enabled())
            return super().scale(outputs)

    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    ds = _ds(80)
    model, hist = xclimax.pretrain(ds, lead_times=("6h", "6h"), batch_size=8, max_steps=80, lr=2e-3, warmup_steps=8,
                                   model_kwargs=TINY, precision=precision, device="cuda", val=0.25)
    assert scaled and all(scaled) == (precision == "fp16")  # fp16 goes through an enabled GradScaler, bf16 not
    loss = hist["loss"].values
    assert np.isfinite(loss).all() and loss[-10:].mean() < 0.8 * loss[:10].mean()
    assert next(model.parameters()).dtype == torch.float32  # master weights stay float32


def test_training_batches_are_pinned_on_cuda(monkeypatch):
    made = record_loaders(monkeypatch)
    xclimax.pretrain(_ds(), lead_times="6h", batch_size=4, max_steps=2, model_kwargs=TINY, device="cuda")
    assert made and made[0].pin_memory
    batch = next(iter(made[0].epoch(0)))
    assert batch.x.is_pinned() and batch.y.is_pinned() and batch.lead_hours.is_pinned()
    on_gpu = batch.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert on_gpu.x.is_cuda and torch.equal(on_gpu.x.cpu(), batch.x)


def test_pinned_loader_values_equal_unpinned():
    ds = _ds()
    stats = {v: (1.0, 2.0) for v in ("2m_temperature", "temperature_850", "temperature_500")}
    kw = dict(lead_times=("6h", "12h"), batch_size=4, seed=1, variables=list(stats))
    for a, b in zip(BatchLoader(ds, stats, pin_memory=True, **kw).epoch(0), BatchLoader(ds, stats, **kw).epoch(0)):
        assert a.x.is_pinned() and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
