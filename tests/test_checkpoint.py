"""Tests for xclimax.checkpoint: formats, variable remapping, grid changes and safety."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from xclimax import CheckpointError, ClimaX, XClimaxWarning, load_checkpoint, save_checkpoint
from xclimax import checkpoint as ckpt
from xclimax.vocab import CLIMAX_VARIABLES

VARS = ["2m_temperature", "geopotential_500", "temperature_850", "lattitude", "10m_u_component_of_wind"]
TINY = dict(img_size=(8, 16), patch_size=2, embed_dim=32, depth=1, num_heads=4, drop_path=0.0, drop_rate=0.0)


def tiny(variables=VARS, **kw) -> ClimaX:
    """A tiny model with all parameters perturbed (so that zero-initialised ones matter too)."""
    model = ClimaX(variables=variables, **{**TINY, **kw})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.stats = {v: (float(i), 1.0 + i) for i, v in enumerate(model.variables)}
    model.metadata = {"grid": "tiny", "time_step_hours": 6, "nested": {"a": [1, 2]}}
    return model.eval()


def run(model, variables, out=None, img=(8, 16), seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, len(variables), *img, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([6.0, 72.0]), variables, out_variables=out)


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def lightning(state_dict, prefix="net.", rename=True) -> dict:
    """A dict shaped like the released PyTorch Lightning checkpoints (primitive extras only)."""
    sd = {}
    for k, v in state_dict.items():
        if rename:
            k = k.replace("var_embed", "channel_embed").replace("var_query", "channel_query")
            k = k.replace("var_agg.", "channel_agg.")
        sd[prefix + k] = v.clone()
    n = len(sd)
    return {
        "epoch": 99,
        "global_step": 200000,
        "pytorch-lightning_version": "1.8.0",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 100}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/w_rmse'}": {
                "best_model_score": torch.tensor(0.5),
                "best_model_path": "/ckpt/best.ckpt",
            }
        },
        "optimizer_states": [
            {
                "state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)} for i in range(n)},
                "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.95), "weight_decay": 1e-5, "params": list(range(n))}],
            }
        ],
        "lr_schedulers": [{"warmup_epochs": 10000, "max_epochs": 200000, "last_epoch": 200000, "base_lrs": [5e-4]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "lr": 5e-4,
            "beta_1": 0.9,
            "beta_2": 0.95,
            "weight_decay": 1e-5,
            "pretrained_path": "",
            "warmup_epochs": 10000,
        },
    }


def official_tiny() -> ClimaX:
    return tiny(CLIMAX_VARIABLES)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_roundtrip(tmp_path, suffix):
    model = tiny()
    path = save_checkpoint(model, tmp_path / f"m{suffix}")
    assert path == tmp_path / f"m{suffix}"
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file left behind
    before = digest(path)
    loaded = load_checkpoint(path)
    assert digest(path) == before
    assert not loaded.training
    assert loaded.config == model.config and loaded.variables == model.variables
    assert loaded.stats == model.stats and loaded.metadata == model.metadata
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    torch.testing.assert_close(run(loaded, VARS[:3]), run(model, VARS[:3]), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_overwrite_is_atomic(tmp_path, suffix, monkeypatch):
    path = save_checkpoint(tiny(), tmp_path / f"m{suffix}")
    before = digest(path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny(VARS[:2]), path)
    assert digest(path)[0] == before[0]
    assert os.listdir(tmp_path) == [path.name]
    monkeypatch.undo()
    save_checkpoint(tiny(VARS[:2]), path)  # a complete new file does replace it
    assert load_checkpoint(path).variables == tuple(VARS[:2])


def test_save_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tiny(), tmp_path / "missing" / "m.pt")
    model = tiny()
    model.metadata = {"when": object()}
    with pytest.raises(CheckpointError, match="metadata"):
        save_checkpoint(model, tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def test_newer_format_version_refused(tmp_path):
    model = tiny()
    payload = {
        "format": "xclimax",
        "format_version": 99,
        "config": model.config,
        "variables": list(model.variables),
        "stats": {},
        "metadata": {},
        "state_dict": model.state_dict(),
    }
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "new.pt")


# ----------------------------------------------------------------------------- official formats
@pytest.mark.parametrize(
    "kind", ["lightning-channel", "lightning-var", "plain-net", "plain", "plain-safetensors", "parallel-embed"]
)
def test_official_formats(tmp_path, kind):
    model = official_tiny()
    sd = model.state_dict()
    path = tmp_path / "x.ckpt"
    if kind.startswith("lightning"):
        torch.save(lightning(sd, rename=kind == "lightning-channel"), path)
    elif kind == "plain-net":
        torch.save({"net." + k: v for k, v in sd.items()}, path)
    elif kind == "plain":
        torch.save(dict(sd), path)
    elif kind == "plain-safetensors":
        path = tmp_path / "x.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:  # official ParallelVarPatchEmbed keys
        par = {k: v for k, v in sd.items() if not k.startswith("token_embeds.")}
        par["token_embeds.proj_weights"] = torch.stack([sd[f"token_embeds.{i}.proj.weight"] for i in range(48)])
        par["token_embeds.proj_biases"] = torch.stack([sd[f"token_embeds.{i}.proj.bias"] for i in range(48)])
        torch.save(lightning(par), path)
    before = digest(path)
    loaded = load_checkpoint(path, num_heads=4, drop_path=0.0, drop_rate=0.0)  # grid inferred (1:2) -> 8x16
    assert digest(path) == before
    assert loaded.config == model.config
    assert loaded.variables == CLIMAX_VARIABLES
    assert loaded.metadata["source_format"] in ("lightning", "state_dict")
    ins = ["2m_temperature", "geopotential_500", "lattitude", "specific_humidity_850"]
    torch.testing.assert_close(run(loaded, ins), run(model, ins), rtol=0, atol=0)


def test_official_defaults_and_overrides(tmp_path):
    torch.save(lightning(official_tiny().state_dict()), tmp_path / "x.ckpt")
    loaded = load_checkpoint(tmp_path / "x.ckpt")
    assert loaded.config["num_heads"] == 16  # cannot be inferred: official value
    assert (loaded.config["drop_path"], loaded.config["drop_rate"]) == (0.1, 0.1)
    with pytest.raises(CheckpointError, match="embed_dim"):
        load_checkpoint(tmp_path / "x.ckpt", embed_dim=64)
    with pytest.raises(CheckpointError, match="patch"):
        load_checkpoint(tmp_path / "x.ckpt", patch_size=4)
    with pytest.raises(CheckpointError, match="num_heads"):
        load_checkpoint(tmp_path / "x.ckpt", num_heads=5)
    with pytest.raises(TypeError, match="bogus"):
        load_checkpoint(tmp_path / "x.ckpt", bogus=1)


def test_infer_config_given_img_size(tmp_path):
    """embed 64, depth 3, p4, mlp_ratio 2, one decoder layer, 8x12 token grid (not 1:2), 3 unnamed variables."""
    names = ["2m_temperature", "geopotential_500", "land_sea_mask"]
    model = tiny(names, img_size=(32, 48), patch_size=4, embed_dim=64, depth=3, decoder_depth=1, mlp_ratio=2.0)
    torch.save({"net." + k: v for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="checkpoint_variables"):
        load_checkpoint(tmp_path / "sd.pt", img_size=(32, 48))
    with pytest.raises(CheckpointError, match="source_img_size"):
        load_checkpoint(tmp_path / "sd.pt", checkpoint_variables=names)
    loaded = load_checkpoint(
        tmp_path / "sd.pt", img_size=(32, 48), checkpoint_variables=names, num_heads=4, drop_path=0.0, drop_rate=0.0
    )
    assert loaded.config == model.config
    torch.testing.assert_close(run(loaded, names, img=(32, 48)), run(model, names, img=(32, 48)), rtol=0, atol=0)
    # the stored grid can also be given explicitly, then the model is interpolated to img_size
    other = load_checkpoint(
        tmp_path / "sd.pt", img_size=(16, 16), source_img_size=(32, 48), checkpoint_variables=names, num_heads=4
    )
    assert other.img_size == (16, 16) and other.state_dict()["pos_embed"].shape == (1, 16, 64)


def _official_layout(embed=1024, depth=8, heads_out=192, tokens=512, p=2, hidden=4096) -> dict:
    """Shapes of the released checkpoint's state dict (climax.md §2.1), as meta tensors, Lightning names."""
    D = embed
    shapes = {}
    for i in range(48):
        shapes[f"token_embeds.{i}.proj.weight"] = (D, 1, p, p)
        shapes[f"token_embeds.{i}.proj.bias"] = (D,)
    shapes.update(
        {
            "channel_embed": (1, 48, D),
            "channel_query": (1, 1, D),
            "channel_agg.in_proj_weight": (3 * D, D),
            "channel_agg.in_proj_bias": (3 * D,),
            "channel_agg.out_proj.weight": (D, D),
            "channel_agg.out_proj.bias": (D,),
            "pos_embed": (1, tokens, D),
            "lead_time_embed.weight": (D, 1),
            "lead_time_embed.bias": (D,),
            "norm.weight": (D,),
            "norm.bias": (D,),
            "head.0.weight": (D, D),
            "head.0.bias": (D,),
            "head.2.weight": (D, D),
            "head.2.bias": (D,),
            "head.4.weight": (heads_out, D),
            "head.4.bias": (heads_out,),
        }
    )
    for b in range(depth):
        block = {
            "norm1.weight": (D,),
            "norm1.bias": (D,),
            "attn.qkv.weight": (3 * D, D),
            "attn.qkv.bias": (3 * D,),
            "attn.proj.weight": (D, D),
            "attn.proj.bias": (D,),
            "norm2.weight": (D,),
            "norm2.bias": (D,),
            "mlp.fc1.weight": (hidden, D),
            "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (D, hidden),
            "mlp.fc2.bias": (D,),
        }
        shapes.update({f"blocks.{b}.{k}": v for k, v in block.items()})
    return {"net." + k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.mark.parametrize(
    "layout, params, grid",
    [(dict(), 108_088_512, (16, 32)), (dict(heads_out=768, tokens=2048, p=4), 110_841_600, (32, 64))],
)
def test_official_layout_inferred_from_shapes(layout, params, grid):
    sd = _official_layout(**layout)
    assert len(sd) == 209
    assert sum(t.numel() for t in sd.values()) == params
    norm = ckpt._normalise_keys(sd)
    cfg = ckpt._infer_config(norm)
    p = layout.get("p", 2)
    assert cfg == dict(
        embed_dim=1024, n_vars=48, patch_size=p, depth=8, decoder_depth=2, mlp_ratio=4.0, n_tokens=grid[0] * grid[1]
    )
    assert ckpt._token_grid(cfg["n_tokens"], p, None, None, "") == grid
    shapes = ckpt._official_shapes(48, 1024, 8, 2, 4.0, p, cfg["n_tokens"])
    assert shapes == {k: tuple(v.shape) for k, v in norm.items()}


def test_official_shapes_match_the_model():
    model = ClimaX(
        variables=VARS[:3],
        img_size=(8, 12),
        patch_size=2,
        embed_dim=32,
        depth=2,
        decoder_depth=3,
        num_heads=4,
        mlp_ratio=3.0,
    )
    expected = ckpt._official_shapes(3, 32, 2, 3, 3.0, 2, 24)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


# ----------------------------------------------------------------------------- variables by name
def test_variable_subset_and_reorder(tmp_path):
    model = tiny()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    sub_vars = ["10m_u_component_of_wind", "latitude", "2m_temperature"]
    sub = load_checkpoint(path, variables=sub_vars)
    canon = ("10m_u_component_of_wind", "lattitude", "2m_temperature")
    assert sub.variables == canon
    assert sub.stats == {v: model.stats[v] for v in canon}
    for ins in (list(canon), ["2m_temperature", "10m_u_component_of_wind"]):
        torch.testing.assert_close(run(sub, ins, out=list(canon)), run(model, ins, out=list(canon)))


def test_head_and_embedding_rows_by_name(tmp_path):
    model = tiny()
    path = save_checkpoint(model, tmp_path / "m.pt")
    targets = ["temperature_850", "2m_temperature", "10m_u_component_of_wind"]
    sd, sub = model.state_dict(), load_checkpoint(path, variables=targets).state_dict()
    p, V, Vt = 2, len(VARS), len(targets)
    src = [VARS.index(v) for v in targets]
    # independent computation of the strided head layout: feature f = (a * p + b) * V + v
    for name in ("weight", "bias"):
        full = sd[f"head.4.{name}"]
        expected = torch.empty((p * p * Vt,) + full.shape[1:])
        for a in range(p):
            for b in range(p):
                for j, i in enumerate(src):
                    expected[(a * p + b) * Vt + j] = full[(a * p + b) * V + i]
        assert torch.equal(sub[f"head.4.{name}"], expected)
    for j, i in enumerate(src):
        assert torch.equal(sub["var_embed"][0, j], sd["var_embed"][0, i])
        assert torch.equal(sub[f"token_embeds.{j}.proj.weight"], sd[f"token_embeds.{i}.proj.weight"])
        assert torch.equal(sub[f"token_embeds.{j}.proj.bias"], sd[f"token_embeds.{i}.proj.bias"])
    shared = [k for k in sd if not k.startswith(("token_embeds", "var_embed", "head.4"))]
    assert all(torch.equal(sd[k], sub[k]) for k in shared)


def test_new_variables_get_fresh_weights(tmp_path):
    model = tiny()
    path = save_checkpoint(model, tmp_path / "m.pt")
    targets = ["geopotential_500", "total_precipitation", "2m_temperature"]
    torch.manual_seed(123)
    with pytest.warns(XClimaxWarning, match="total_precipitation"):
        loaded = load_checkpoint(path, variables=targets)
    torch.manual_seed(123)
    fresh = ClimaX(variables=targets, **TINY).state_dict()
    got, sd = loaded.state_dict(), model.state_dict()
    assert loaded.stats == {v: model.stats[v] for v in ("geopotential_500", "2m_temperature")}
    for key in ("token_embeds.1.proj.weight", "token_embeds.1.proj.bias"):
        assert torch.equal(got[key], fresh[key])
    assert torch.equal(got["var_embed"][0, 1], fresh["var_embed"][0, 1])
    new_rows = [(c * 3 + 1) for c in range(4)]
    assert torch.equal(got["head.4.weight"][new_rows], fresh["head.4.weight"][new_rows])
    assert torch.equal(got["token_embeds.0.proj.weight"], sd["token_embeds.1.proj.weight"])
    assert torch.equal(got["token_embeds.2.proj.weight"], sd["token_embeds.0.proj.weight"])


def test_bad_variable_requests(tmp_path):
    path = save_checkpoint(tiny(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="distinct"):
        load_checkpoint(path, variables=["2m_temperature", "2m_temperature"])
    with pytest.raises(CheckpointError, match="contradicts"):
        load_checkpoint(path, checkpoint_variables=VARS[::-1])


# ----------------------------------------------------------------------------- grids
def test_pos_embed_interpolation(tmp_path):
    model = tiny()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    pe = model.state_dict()["pos_embed"]  # 4 x 8 tokens
    same = load_checkpoint(path, img_size=(8, 16))
    assert torch.equal(same.state_dict()["pos_embed"], pe)
    big = load_checkpoint(path, img_size=(12, 22))  # 6 x 11 tokens, not 1:2
    grid = pe.reshape(1, 4, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 11), mode="bicubic", align_corners=False)
    torch.testing.assert_close(big.state_dict()["pos_embed"], expected.permute(0, 2, 3, 1).reshape(1, 66, -1))
    assert big.img_size == (12, 22) and big.config["img_size"] == [12, 22]
    assert run(big, VARS[:2], img=(12, 22)).shape == (2, 5, 12, 22)
    # everything else is untouched
    sd, sd2 = model.state_dict(), big.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd if k != "pos_embed")


def test_pos_embed_interpolation_official_file(tmp_path):
    model = official_tiny()
    torch.save(lightning(model.state_dict()), tmp_path / "x.ckpt")
    loaded = load_checkpoint(tmp_path / "x.ckpt", img_size=(16, 32), num_heads=4)
    grid = model.state_dict()["pos_embed"].reshape(1, 4, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(loaded.state_dict()["pos_embed"], expected.permute(0, 2, 3, 1).reshape(1, 128, -1))


def test_grid_errors(tmp_path):
    path = save_checkpoint(tiny(), tmp_path / "m.pt")
    odd = load_checkpoint(path, img_size=(9, 16))  # not a multiple of the patch size: padded internally
    assert odd.img_size == (9, 16) and odd.padded_size[0] % odd.patch_size == 0 and odd.padded_size[0] >= 9
    with pytest.raises(CheckpointError, match="img_size"):
        load_checkpoint(path, img_size=(8,))


# ----------------------------------------------------------------------------- safety and corruption
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    payload = {"state_dict": official_tiny().state_dict(), "hyper_parameters": _Evil(marker)}
    path = tmp_path / "evil.ckpt"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_and_missing_files(tmp_path):
    good = save_checkpoint(tiny(), tmp_path / "good.pt")
    good_st = save_checkpoint(tiny(), tmp_path / "good.safetensors")
    cases = {
        "missing.pt": None,
        "empty.pt": b"",
        "half.pt": good.read_bytes()[: good.stat().st_size // 2],
        "half.safetensors": good_st.read_bytes()[: good_st.stat().st_size // 2],
        "noise.bin": os.urandom(256),
        "text.pt": b"this is not a checkpoint",
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        before = digest(tmp_path / name) if data is not None else None
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)
        if data is not None:
            assert digest(tmp_path / name) == before
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_checkpoint(tmp_path / "other.pt")


def test_wrong_shapes_and_missing_keys(tmp_path):
    sd = dict(official_tiny().state_dict())
    wrong = {**sd, "blocks.0.attn.proj.weight": torch.zeros(32, 16)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.proj\.weight: expected \(32, 32\), found \(32, 16\)"):
        load_checkpoint(tmp_path / "wrong.pt", num_heads=4)
    torch.save({**sd, "head.4.weight": torch.zeros(10, 32)}, tmp_path / "head.pt")
    with pytest.raises(CheckpointError, match="head.4.weight"):
        load_checkpoint(tmp_path / "head.pt", num_heads=4)

    partial = {k: v for k, v in sd.items() if k != "blocks.0.mlp.fc2.bias"}
    partial["time_query"] = torch.zeros(1, 1, 32)  # e.g. a ClimateBench checkpoint
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing keys blocks\.0\.mlp\.fc2\.bias.*unexpected keys time_query"):
        load_checkpoint(tmp_path / "partial.pt", num_heads=4)
    with pytest.warns(XClimaxWarning) as record:
        loaded = load_checkpoint(tmp_path / "partial.pt", num_heads=4, strict=False)
    messages = " | ".join(str(w.message) for w in record)
    assert "blocks.0.mlp.fc2.bias" in messages and "time_query" in messages
    got = loaded.state_dict()
    assert torch.equal(got["blocks.0.mlp.fc2.bias"], torch.zeros(32))  # fresh initialisation
    assert torch.equal(got["blocks.0.mlp.fc1.weight"], sd["blocks.0.mlp.fc1.weight"])


# ----------------------------------------------------------------------------- remap_variables (in memory)
def test_remap_variables_keeps_known_predictions():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = ["10m_u_component_of_wind", "total_precipitation", "latitude", "2m_temperature", "geopotential_500"]
    with pytest.warns(XClimaxWarning, match="total_precipitation"):
        wide = ckpt.remap_variables(model, targets)
    canon = ("10m_u_component_of_wind", "total_precipitation", "lattitude", "2m_temperature", "geopotential_500")
    assert wide.variables == canon and wide.config == {**model.config, "variables": list(canon)}
    assert wide.stats == {v: model.stats[v] for v in canon if v in model.stats}
    assert wide.metadata == model.metadata and wide.metadata is not model.metadata
    assert wide.metadata["nested"] is not model.metadata["nested"]
    assert not wide.training  # mode of the source model
    known = [v for v in canon if v in VARS]
    for ins in (known, ["geopotential_500", "2m_temperature"]):
        torch.testing.assert_close(run(wide, ins, out=known), run(model, ins, out=known))
    # the source model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a subset drops variables and their stats, silently
    sub = ckpt.remap_variables(model, ["temperature_850"])
    assert sub.variables == ("temperature_850",) and set(sub.stats) == {"temperature_850"}
    torch.testing.assert_close(run(sub, ["temperature_850"]), run(model, ["temperature_850"], out=["temperature_850"]))


def test_remap_variables_rows_by_name_and_fresh_rows():
    model = tiny()
    targets = ["temperature_850", "mean_sea_level_pressure", "2m_temperature"]
    torch.manual_seed(7)
    got = ckpt.remap_variables(model, targets, warn=False).state_dict()
    torch.manual_seed(7)
    fresh = ClimaX(variables=targets, **TINY).state_dict()
    sd, p, V, Vt = model.state_dict(), 2, len(VARS), len(targets)
    src = [VARS.index(v) if v in VARS else None for v in targets]
    # independent computation of the strided head layout: feature f = (a * p + b) * V + v
    for name in ("weight", "bias"):
        expected = torch.empty_like(fresh[f"head.4.{name}"])
        for a in range(p):
            for b in range(p):
                for j, i in enumerate(src):
                    row = (a * p + b) * Vt + j
                    expected[row] = fresh[f"head.4.{name}"][row] if i is None else sd[f"head.4.{name}"][(a * p + b) * V + i]
        assert torch.equal(got[f"head.4.{name}"], expected)
    for j, i in enumerate(src):
        ref, k = (fresh, j) if i is None else (sd, i)
        assert torch.equal(got["var_embed"][0, j], ref["var_embed"][0, k])
        for name in ("weight", "bias"):
            assert torch.equal(got[f"token_embeds.{j}.proj.{name}"], ref[f"token_embeds.{k}.proj.{name}"])
    shared = [k for k in sd if not k.startswith(("token_embeds", "var_embed", "head.4"))]
    assert all(torch.equal(sd[k], got[k]) for k in shared)
    assert not any(torch.equal(sd[k], fresh[k]) for k in shared if sd[k].numel() > 1)  # the comparison can fail


def test_remap_variables_same_as_loading_and_bad_input(tmp_path):
    model = tiny(decoder_depth=1)
    targets = ["geopotential_500", "2m_temperature"]
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"), variables=targets)
    mem = ckpt.remap_variables(model, targets)
    a, b = loaded.state_dict(), mem.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "head.2.weight" in b and b["head.2.weight"].shape[0] == 4 * len(targets)
    assert ckpt.remap_variables(model.train(), targets).training
    with pytest.raises(CheckpointError, match="distinct"):
        ckpt.remap_variables(model, ["2m_temperature", "2m_temperature"])
    with pytest.raises(CheckpointError, match="distinct"):
        ckpt.remap_variables(model, [])
    with pytest.raises(CheckpointError, match="ClimaX model"):
        ckpt.remap_variables(model.state_dict(), VARS)
