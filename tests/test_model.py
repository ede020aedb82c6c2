"""Tests of xclimax.model.ClimaX: official layout, initialisation and exact equivalence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xclimax.exceptions import GridError, XClimaxError
from xclimax.nn.model import ClimaX
from xclimax.vocab import CLIMAX_VARIABLES

GOLDEN = Path(__file__).parent / "data" / "golden_small"
V48 = list(CLIMAX_VARIABLES)
TINY = dict(img_size=(8, 16), patch_size=2, embed_dim=32, depth=2, decoder_depth=2, num_heads=4)


def official_keys(V, D, p, L, depth, decoder_depth, out):
    """The state_dict of the official serial ClimaX module, written out from its definition."""
    keys = {"var_embed": (1, V, D), "var_query": (1, 1, D), "pos_embed": (1, L, D)}
    for i in range(V):
        keys[f"token_embeds.{i}.proj.weight"] = (D, 1, p, p)
        keys[f"token_embeds.{i}.proj.bias"] = (D,)
    keys.update({"var_agg.in_proj_weight": (3 * D, D), "var_agg.in_proj_bias": (3 * D,),
                 "var_agg.out_proj.weight": (D, D), "var_agg.out_proj.bias": (D,),
                 "lead_time_embed.weight": (D, 1), "lead_time_embed.bias": (D,)})
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,), b + "attn.qkv.weight": (3 * D, D),
                     b + "attn.qkv.bias": (3 * D,), b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                     b + "norm2.weight": (D,), b + "norm2.bias": (D,), b + "mlp.fc1.weight": (4 * D, D),
                     b + "mlp.fc1.bias": (4 * D,), b + "mlp.fc2.weight": (D, 4 * D), b + "mlp.fc2.bias": (D,)})
    keys.update({"norm.weight": (D,), "norm.bias": (D,)})
    for i in range(decoder_depth):
        keys.update({f"head.{2 * i}.weight": (D, D), f"head.{2 * i}.bias": (D,)})
    keys.update({f"head.{2 * decoder_depth}.weight": (out, D), f"head.{2 * decoder_depth}.bias": (out,)})
    return keys


def randomise_(model, scale=1.0):
    """Random weights of a size that makes every path (query, biases, ...) matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.dim() >= 2 and "embed" not in name and name != "var_query" else 1
            p.copy_(torch.randn_like(p) * scale / math.sqrt(fan_in) * (1.0 if fan_in > 1 else 0.3))
    return model


def reference_forward(model, x, lead_hours, variables, out_variables=None):
    """The official computation, written plainly: per-variable conv, nn.MultiheadAttention, manual blocks."""
    sd = model.state_dict(keep_vars=True)  # per-variable views of the parameters, with autograd
    B, V, H, W = x.shape
    p, D = model.patch_size, model.pos_embed.shape[-1]
    ids = [model.variables.index(v) for v in variables]
    tokens = []
    for i, j in enumerate(ids):
        t = F.conv2d(x[:, i : i + 1], sd[f"token_embeds.{j}.proj.weight"], sd[f"token_embeds.{j}.proj.bias"], stride=p)
        tokens.append(t.flatten(2).transpose(1, 2) + model.var_embed[0, j])  # B, L, D
    tokens = torch.stack(tokens, 2)  # B, L, V, D
    L = tokens.shape[1]
    flat = tokens.reshape(B * L, V, D)
    query = model.var_query.expand(B * L, 1, D)
    t = model.var_agg(query, flat, flat, need_weights=False)[0].reshape(B, L, D)
    t = t + model.pos_embed + model.lead_time_embed((lead_hours / 100.0)[:, None])[:, None]
    for blk in model.blocks:
        nh = blk.attn.num_heads
        q, k, v = blk.attn.qkv(blk.norm1(t)).reshape(B, L, 3, nh, D // nh).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(D // nh)).softmax(-1)
        t = t + blk.attn.proj((att @ v).transpose(1, 2).reshape(B, L, D))
        t = t + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(t))))
    out = model.head(model.norm(t))  # B, L, Vall*p*p
    Vall = len(model.variables)
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(B, H // p, W // p, p, p, Vall)).reshape(B, Vall, H, W)
    return out[:, [model.variables.index(v) for v in (out_variables or model.variables)]]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_default_param_count_and_keys():
    with torch.device("meta"):
        model = ClimaX()
    assert sum(p.numel() for p in model.parameters()) == 108_088_512
    expected = official_keys(48, 1024, 2, 512, 8, 2, 192)
    sd = model.state_dict()
    assert len(sd) == 209
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_state_dict_layout_and_roundtrip(tmp_path):
    model = ClimaX(V48[:5], **TINY)
    sd = model.state_dict()
    expected = official_keys(5, 32, 2, 32, 2, 2, 20)
    assert list(sd) == list(expected)  # the official key order too
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # the exposed per-variable tensors are the stacked parameters' values, in separate storages
    assert torch.equal(sd["token_embeds.3.proj.weight"], model.token_embeds.weight[3])
    from safetensors.torch import load_file, save_file

    save_file(sd, tmp_path / "m.safetensors")
    other = randomise_(ClimaX(V48[:5], **TINY))
    other.load_state_dict(load_file(tmp_path / "m.safetensors"))
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the official parallel_patch_embed layout loads too
    par = {k: v for k, v in sd.items() if not k.startswith("token_embeds.")}
    par["token_embeds.proj_weights"] = torch.stack([sd[f"token_embeds.{i}.proj.weight"] for i in range(5)])
    par["token_embeds.proj_biases"] = torch.stack([sd[f"token_embeds.{i}.proj.bias"] for i in range(5)])
    other = randomise_(ClimaX(V48[:5], **TINY))
    other.load_state_dict(par)
    assert torch.equal(other.token_embeds.bias, model.token_embeds.bias)
    # a wrong number of variables is a size mismatch, not a silent partial load
    with pytest.raises(RuntimeError, match="token_embeds.weight"):
        ClimaX(V48[:6], **TINY).load_state_dict(sd)
    assert list(model.state_dict(keep_vars=True)["token_embeds.0.proj.weight"].shape) == [32, 1, 2, 2]


def test_initialisation():
    model = ClimaX(V48, img_size=(8, 16), patch_size=2, embed_dim=64, depth=2, num_heads=4)
    D, h, w = 64, 4, 8
    # pos_embed: channel k < D/2 encodes the column (sin then cos), the rest the row
    omega = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D / 4))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    r, c = rows.reshape(-1, 1) * omega, cols.reshape(-1, 1) * omega
    expected = torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], 1).float()
    torch.testing.assert_close(model.pos_embed[0].detach(), expected, rtol=0, atol=1e-6)
    omega = 1.0 / 10000 ** (torch.arange(D // 2, dtype=torch.float64) / (D / 2))
    v = torch.arange(48).reshape(-1, 1) * omega
    torch.testing.assert_close(model.var_embed[0].detach(), torch.cat([v.sin(), v.cos()], 1).float(), rtol=0, atol=1e-6)
    assert not model.var_query.detach().any()
    assert not model.var_agg.in_proj_bias.detach().any()
    bound = math.sqrt(6 / (D + 3 * D))  # xavier_uniform on [3D, D]
    w_in = model.var_agg.in_proj_weight.detach()
    assert w_in.abs().max() <= bound and abs(w_in.std() - bound / math.sqrt(3)) < 0.05 * bound
    sd = model.state_dict()
    for key in ["token_embeds.0.proj.weight", "var_agg.out_proj.weight", "blocks.1.mlp.fc1.weight", "head.4.weight"]:
        assert abs(sd[key].std().item() - 0.02) < 0.003, key
    conv_b = model.token_embeds.bias.detach()
    assert conv_b.abs().max() <= 0.5 and conv_b.std() > 0.2  # PyTorch conv default: U(-1/p, 1/p)
    for key in ["lead_time_embed.bias", "var_agg.out_proj.bias", "blocks.0.attn.qkv.bias", "head.4.bias", "norm.bias"]:
        assert not sd[key].any(), key
    assert torch.equal(sd["blocks.0.norm1.weight"], torch.ones(D))
    assert [b.drop_path for b in model.blocks] == [0.0, pytest.approx(0.1)]


@pytest.mark.parametrize("case", ["full", "subset_reordered", "out_subset", "shuffled_full_p4"])
def test_golden_official_outputs(case):
    """Outputs recorded from the official microsoft/ClimaX module (scripts/make_golden.py)."""
    from safetensors.torch import load_file

    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    data = load_file(str(GOLDEN) + ".safetensors")
    spec = meta["cases"][case]
    key = spec["model"]
    model = ClimaX(**meta["models"][key]).eval()
    prefix = f"model_{key}/"
    model.load_state_dict({k[len(prefix):]: v.float() for k, v in data.items() if k.startswith(prefix)})
    with torch.no_grad():
        out = model(data[f"{case}/x"].float(), data[f"{case}/lead_hours"], spec["variables"], spec["out_variables"])
    expected = data[f"{case}/out"]
    assert out.shape == expected.shape
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    model = randomise_(ClimaX(V48, **TINY)).double().eval()
    n_in = [48, 7, 1][seed]
    variables = [V48[i] for i in torch.randperm(48, generator=gen)[:n_in]]
    out_variables = [None, [V48[i] for i in torch.randperm(48, generator=gen)[:5]], V48[::-1]][seed]
    x = torch.randn(2, n_in, 8, 16, generator=gen, dtype=torch.float64)
    lead = torch.tensor([6.0, 120.0], dtype=torch.float64)
    with torch.no_grad():
        ours = model(x, lead, variables, out_variables)
        ref = reference_forward(model, x, lead, variables, out_variables)
    assert ours.shape == (2, len(out_variables or V48), 8, 16)
    assert rel_err(ours, ref) < 1e-10
    # the attention over variables is far from uniform: a zero query gives a different output
    with torch.no_grad():
        model.var_query.zero_()
        model.var_agg.in_proj_bias.zero_()
        assert rel_err(model(x, lead, variables, out_variables), ref) > 1e-3


def test_gradients_match_reference():
    model = randomise_(ClimaX(V48[:9], **TINY)).double().eval()
    variables = [V48[i] for i in (4, 0, 7, 2)]
    x = torch.randn(2, 4, 8, 16, dtype=torch.float64)
    lead = torch.tensor([6.0, 48.0], dtype=torch.float64)
    target = torch.randn(2, 3, 8, 16, dtype=torch.float64)
    grads = []
    for fn in (model, lambda *a: reference_forward(model, *a)):
        model.zero_grad()
        ((fn(x, lead, variables, V48[1:4]) - target) ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-7, atol=1e-12, msg=name)
    # unused input variables get no gradient, used ones do
    g_tok = grads[0]["token_embeds.weight"].flatten(1).abs().sum(1)
    assert (g_tok[[0, 2, 4, 7]] > 0).all() and not g_tok[[1, 3, 5, 6, 8]].any()


def test_training_step_all_parameters_get_gradients():
    model = ClimaX(V48[:6], **TINY).train()
    x = torch.randn(3, 6, 8, 16, requires_grad=False)
    out = model(x, torch.tensor([6.0, 12.0, 24.0]), V48[:6])
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "var_agg.in_proj_bias":  # the key-bias third has an exactly zero gradient (softmax shift)
            assert p.grad.abs().sum() > 0, name
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.step()


def test_dropout_and_drop_path_in_train_mode():
    model = ClimaX(V48[:4], **{**TINY, "drop_rate": 0.5, "drop_path": 0.5})
    x, lead = torch.randn(4, 4, 8, 16), torch.full((4,), 6.0)
    model.train()
    a, b = model(x, lead, V48[:4]), model(x, lead, V48[:4])
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x, lead, V48[:4]), model(x, lead, V48[:4]), rtol=0, atol=0)
    # without any dropout, train mode is the eval function
    model = ClimaX(V48[:4], **{**TINY, "drop_rate": 0.0, "drop_path": 0.0})
    torch.testing.assert_close(model.train()(x, lead, V48[:4]), model.eval()(x, lead, V48[:4]))


def test_aliases_single_patch_and_errors():
    model = ClimaX(["2m_temperature", "lattitude", "geopotential_500"], **TINY).eval()
    x, lead = torch.randn(2, 2, 8, 16), torch.tensor([6.0, 6.0])
    torch.testing.assert_close(
        model(x, lead, ["latitude", "2m_temperature"], ["latitude"]),
        model(x, lead, ["lattitude", "2m_temperature"])[:, 1:2],
    )
    with pytest.raises(XClimaxError, match="total_precipitation"):
        model(x, lead, ["total_precipitation", "2m_temperature"])
    with pytest.raises(XClimaxError, match="msl"):
        model(x, lead, ["lattitude", "2m_temperature"], ["msl"])
    with pytest.raises(XClimaxError, match="3 variable names"):
        model(x, lead, ["lattitude", "2m_temperature", "geopotential_500"])
    with pytest.raises(XClimaxError, match="lead time"):
        model(x, torch.tensor([6.0, 6.0, 6.0]), ["lattitude", "2m_temperature"])
    torch.testing.assert_close(model(x, torch.tensor(6.0), ["lattitude"] * 2), model(x, lead, ["lattitude"] * 2))
    with pytest.raises(GridError, match=r"\(8, 16\)"):
        model(torch.randn(2, 2, 8, 8), lead, ["lattitude", "2m_temperature"])
    # B * L == 1 (the official module's .squeeze() fails here)
    one = ClimaX(["2m_temperature", "lattitude"], img_size=(2, 2), patch_size=2, embed_dim=16, depth=1, num_heads=2)
    assert one.eval()(torch.randn(1, 2, 2, 2), torch.tensor([6.0]), ["2m_temperature", "lattitude"]).shape == (1, 2, 2, 2)


def test_bf16_autocast():
    model = randomise_(ClimaX(V48[:8], **TINY), scale=0.5).eval()
    x, lead = torch.randn(2, 8, 8, 16), torch.tensor([6.0, 24.0])
    with torch.no_grad():
        ref = model(x, lead, V48[:8])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, lead, V48[:8])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_err(out.float(), ref) < 0.1
