"""Activation checkpointing: the same outputs and gradients as a normal training step, less memory.

Speed and memory are measured in ``benchmarks/run_all.py`` (ratios within one run), never here.
"""

from __future__ import annotations

import torch

import xclimax
from xclimax.nn.model import ClimaX
from xclimax.testing import synthetic_dataset

VARS = ["2m_temperature", "geopotential_500", "temperature_850", "lattitude"]


def _step(model: ClimaX, x: torch.Tensor, lead: torch.Tensor, y: torch.Tensor, seed: int):
    """One training-mode forward (dropout and stochastic depth on) and backward; output and gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x, lead, VARS[:3])
    ((out - y) ** 2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointed_activations_give_identical_outputs_and_gradients():
    torch.manual_seed(0)
    model = ClimaX(VARS, img_size=(8, 16), patch_size=2, embed_dim=32, depth=2, num_heads=4,
                   drop_path=0.2, drop_rate=0.2).train()
    x, y = torch.randn(3, 3, 8, 16), torch.randn(3, 4, 8, 16)
    lead = torch.tensor([6.0, 24.0, 72.0])
    ref_out, ref_grad = _step(model, x, lead, y, seed=1)
    model.checkpoint_activations = True
    out, grad = _step(model, x, lead, y, seed=1)
    # the oracle: the same network without recomputation (dropout masks replayed from the saved RNG state)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    assert set(grad) == set(ref_grad)
    for name in ref_grad:
        torch.testing.assert_close(grad[name], ref_grad[name], rtol=1e-6, atol=1e-7, msg=name)
    # a different dropout draw changes the output: the equality above is not vacuous
    other, _ = _step(model, x, lead, y, seed=2)
    assert not torch.equal(other, ref_out)
    # evaluation and no_grad are untouched by the option; the state_dict layout is the official one
    model.eval()
    with torch.no_grad():
        a = model(x, lead, VARS[:3])
    model.checkpoint_activations = False
    with torch.no_grad():
        b = model(x, lead, VARS[:3])
    assert torch.equal(a, b)
    assert "token_embeds.0.proj.weight" in model.state_dict() and "checkpoint_activations" not in model.config


def test_pretrain_with_activation_checkpointing_trains_identically():
    """End to end through the public API: the same weights and losses with and without the option."""
    ds = synthetic_dataset(16, variables=["2m_temperature"], grid=(8, 16), constants=False)
    kw = dict(lead_times=("6h", "12h"), batch_size=4, max_steps=3, seed=3,
              model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, drop_path=0.1, drop_rate=0.1))
    with xclimax.set_options(progress=False):
        m1, h1 = xclimax.pretrain(ds, **kw)
        m2, h2 = xclimax.pretrain(ds, activation_checkpointing=True, **kw)
    assert not m1.checkpoint_activations and m2.checkpoint_activations
    assert h1.sizes["step"] == 3
    torch.testing.assert_close(torch.as_tensor(h2["loss"].values), torch.as_tensor(h1["loss"].values),
                               rtol=1e-5, atol=0)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=1e-5, atol=1e-6, msg=k)
