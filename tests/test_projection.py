"""Climate projection (ClimateBench): the model, the NRMSE scores, the baselines and the task end to end."""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

import xclimax
from xclimax.exceptions import CFMappingError, CheckpointError, DataError
from xclimax.nn.climatebench import ClimaXClimateBench
from xclimax.scoring.climatebench import global_mean, mean_response, nrmse, pattern_scaling

from . import raise_if_dask_computes

GRID = (8, 16)
FORCINGS = ["CO2", "SO2", "CH4", "BC"]
RESPONSES = ["tas", "diurnal_temperature_range", "pr", "pr90"]
TRAIN, TEST = ["ssp126", "ssp370", "ssp585"], "ssp245"
WINDOW = (2080, 2100)


@pytest.fixture(scope="module", autouse=True)
def quiet():
    with xclimax.set_options(progress=False):
        yield


@pytest.fixture(scope="module")
def data():
    return xclimax.tutorial.open_climatebench(["historical", *TRAIN, TEST], grid=GRID)


@pytest.fixture(scope="module")
def trained(data):
    """A tiny ClimaX encoder fine-tuned for projection on three scenarios (ssp245 held out)."""
    torch.manual_seed(0)
    base = xclimax.ClimaX(["2m_temperature", "CO2"], img_size=GRID, embed_dim=32, depth=1, num_heads=4,
                          drop_rate=0.0, drop_path=0.0)
    model, history = xclimax.finetune(
        data.sel(scenario=["historical", *TRAIN]), base, task="projection", inputs=FORCINGS, outputs=RESPONSES,
        history=10, max_steps=120, warmup_steps=12, lr=3e-3, batch_size=16, seed=0,
    )
    return base, model, history


# ----------------------------------------------------------------------------- the network
def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan = p[0].numel() if p.dim() >= 2 and "embed" not in name else 1
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan) * (1.0 if fan > 1 else 0.3))
    return model


def _reference(model: ClimaXClimateBench, x: torch.Tensor, variables: list[str]) -> torch.Tensor:
    """The official ClimaXClimateBench.forward_encoder + head, written plainly (per-variable convs, nn.MHA)."""
    sd = model.state_dict()
    B, T, V, H, W = x.shape
    p, D = model.patch_size, model.pos_embed.shape[-1]
    flat = x.reshape(B * T, V, H, W)
    tokens = []
    for i, name in enumerate(variables):
        j = model.variables.index(name)
        t = F.conv2d(flat[:, i : i + 1], sd[f"token_embeds.{j}.proj.weight"], sd[f"token_embeds.{j}.proj.bias"], stride=p)
        tokens.append(t.flatten(2).transpose(1, 2) + sd["var_embed"][0, j])
    tokens = torch.stack(tokens, 2)  # BT, L, V, D
    L = tokens.shape[1]
    kv = tokens.reshape(B * T * L, V, D)
    agg = model.var_agg(sd["var_query"].expand(B * T * L, 1, D), kv, kv, need_weights=False)[0].reshape(B * T, L, D)
    agg = agg + sd["pos_embed"]
    agg = agg.reshape(B, T, L, D) + sd["time_pos_embed"][:, :, None]
    agg = agg + model.lead_time_embed(torch.zeros(1, 1))[:, None, None]
    t = agg.reshape(B * T, L, D)
    for blk in model.blocks:
        nh = blk.attn.num_heads
        q, k, v = blk.attn.qkv(blk.norm1(t)).reshape(B * T, L, 3, nh, D // nh).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(D // nh)).softmax(-1)
        t = t + blk.attn.proj((att @ v).transpose(1, 2).reshape(B * T, L, D))
        t = t + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(t))))
    t = model.norm(t).reshape(B, T, L, D).mean(2)
    q = sd["time_query"].expand(B, 1, D)
    t = model.time_agg(q, t, t, need_weights=False)[0]
    return model.head(t).reshape(B, len(model.out_variables), H, W)


def test_network_matches_official_computation_and_layout():
    model = ClimaXClimateBench(FORCINGS, ["tas", "pr"], img_size=(4, 8), history=3, embed_dim=16, depth=2,
                               num_heads=2, drop_rate=0.0, drop_path=0.0)
    _randomise(model).eval()
    x = torch.randn(2, 3, 4, 4, 8)
    order = ["BC", "CO2", "SO2", "CH4"]
    with torch.no_grad():
        got = model(x, order)
        want = _reference(model, x, order)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
        assert torch.allclose(model(x, order, ["pr"]), want[:, 1:], atol=1e-4, rtol=1e-4)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["time_pos_embed"] == (1, 3, 16) and shapes["time_query"] == (1, 1, 16)
    assert shapes["head.weight"] == (2 * 4 * 8, 16) and shapes["time_agg.in_proj_weight"] == (48, 16)
    assert not any(k.startswith("head.0") or k.startswith("head.2") for k in shapes)
    fresh = ClimaXClimateBench(["CO2"], ["tas"], img_size=(4, 8), history=4, embed_dim=16, depth=1, num_heads=2)
    assert torch.allclose(fresh.time_pos_embed[0, 1, :8], torch.sin(torch.ones(8) / 10000 ** (torch.arange(8) / 8)))
    with pytest.raises(xclimax.XClimaxError, match="expected 3 yearly steps"):
        model(torch.randn(1, 2, 4, 4, 8))


def test_from_climax_copies_the_encoder_and_freezes_blocks_but_layernorms(tmp_path):
    base = xclimax.ClimaX(["2m_temperature", "CO2"], img_size=(4, 8), embed_dim=16, depth=2, num_heads=2)
    _randomise(base)
    bench = ClimaXClimateBench.from_climax(base, ["SO2", "CO2"], ["tas"], history=2, img_size=(8, 16))
    src, dst = base.state_dict(), bench.state_dict()
    for key in src:
        if key.startswith(("blocks.", "norm.", "var_agg.", "var_query", "lead_time_embed")):
            assert torch.equal(src[key], dst[key]), key
    assert torch.equal(dst["token_embeds.1.proj.weight"], src["token_embeds.1.proj.weight"])  # CO2 kept by name
    assert not torch.equal(dst["token_embeds.0.proj.weight"], src["token_embeds.0.proj.weight"])
    assert dst["pos_embed"].shape == (1, 32, 16)  # interpolated to the 4 x 8 token grid
    trainable = {n for n, p in bench.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("blocks.")} == {
        f"blocks.{i}.{ln}.{w}" for i in range(2) for ln in ("norm1", "norm2") for w in ("weight", "bias")}
    assert {"head.weight", "time_query", "time_agg.in_proj_weight", "token_embeds.weight"} <= trainable
    # saved and loaded through xclimax's checkpoint format, as the same kind of model
    path = xclimax.save_checkpoint(bench, tmp_path / "bench.safetensors")
    again = xclimax.load_checkpoint(path)
    assert isinstance(again, ClimaXClimateBench) and again.history == 2 and again.variables == ("SO2", "CO2")
    x = torch.randn(1, 2, 2, 8, 16)
    with torch.no_grad():
        assert torch.equal(again(x), bench.eval()(x))
    with pytest.raises(CheckpointError, match="ClimateBench"):
        xclimax.load_checkpoint(path, variables=["CO2"])


# ----------------------------------------------------------------------------- scores
def _numpy_nrmse(pred: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> tuple[float, float, float]:
    """ClimateBench's definitions written out for arrays [time, lat, lon]."""
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones(truth.shape[-1])[None, :]
    w = w / w.sum()
    gmean = lambda a: (a * w).sum((-2, -1))  # noqa: E731
    norm = abs(np.mean(gmean(truth)))
    spatial = math.sqrt((w * (pred.mean(0) - truth.mean(0)) ** 2).sum()) / norm
    glob = math.sqrt(np.mean((gmean(pred) - gmean(truth)) ** 2)) / norm
    return spatial, glob, spatial + 5 * glob


def test_nrmse_matches_an_independent_computation_over_the_whole_window():
    rng = np.random.default_rng(3)
    t = xr.date_range("2080-07-01", periods=21, freq="YS-JUL", calendar="360_day", use_cftime=True)
    lat, lon = np.linspace(-80, 80, 9), np.arange(0, 360, 30.0)
    base = 2.0 + rng.normal(size=(21, 9, 12)).cumsum(0) * 0.1
    coords = {"time": t, "lat": lat, "lon": lon}
    truth = xr.Dataset({"tas": (("time", "lat", "lon"), base)}, coords)
    pred = xr.Dataset({"tas": (("time", "lat", "lon"), base + rng.normal(0.3, 0.5, size=base.shape))}, coords)
    want = _numpy_nrmse(pred["tas"].values, truth["tas"].values, lat)
    got = xclimax.evaluate(pred, truth, metrics=["nrmse_s", "nrmse_g", "nrmse_t"])
    np.testing.assert_allclose(got["tas"].values, want, rtol=1e-10)
    # the whole window, not a mean of per-year (batch size 1) scores as in the official code
    per_year = np.mean([_numpy_nrmse(pred["tas"].values[i : i + 1], truth["tas"].values[i : i + 1], lat)[0]
                        for i in range(21)])
    assert abs(per_year - want[0]) > 0.05
    # lazy on dask (time chunked: same numbers), descending latitudes accepted
    lazy_pred = pred.chunk(time=5).isel(lat=slice(None, None, -1))
    with raise_if_dask_computes():
        lazy = nrmse(lazy_pred, truth.chunk(time=7), check_finite=False)
    np.testing.assert_allclose(lazy["tas"].values, want, rtol=1e-10)
    # a window selection by calendar years and a batch dim give one score per element
    two = xr.concat([pred, truth], dim="scenario")
    scores = nrmse(two, truth, years=(2085, 2090))
    sel = slice(5, 11)
    np.testing.assert_allclose(scores["tas"].isel(scenario=0).values,
                               _numpy_nrmse(pred["tas"].values[sel], truth["tas"].values[sel], lat), rtol=1e-10)
    np.testing.assert_allclose(scores["tas"].isel(scenario=1).values, 0.0, atol=1e-12)
    with pytest.raises(DataError, match="NaN"):
        nrmse(pred.where(pred.time != t[3]), truth)


def test_baselines_against_numpy(data):
    train, test = data.sel(scenario=TRAIN), data.sel(scenario=TEST)
    mean = mean_response(train, test, outputs=["tas"])
    np.testing.assert_allclose(mean["tas"].isel(time=-1).values, train["tas"].values.mean((0, 1)), rtol=1e-5)
    assert mean["tas"].sizes["time"] == test.sizes["time"]
    fit = pattern_scaling(train, test, outputs=["tas"])  # regression on cumulative CO2
    x, y = train["CO2"].values.ravel(), train["tas"].values.reshape(-1, GRID[0] * GRID[1])
    slope, intercept = np.polyfit(x.astype(float), y.astype(float), 1)
    want = (test["CO2"].values[:, None] * slope + intercept).reshape(-1, *GRID)
    np.testing.assert_allclose(fit["tas"].values, want, rtol=1e-4, atol=1e-4)
    lazy = pattern_scaling(train, test.chunk(time=50), outputs=["tas"])
    assert lazy["tas"].chunks is not None
    np.testing.assert_allclose(lazy["tas"].values, want, rtol=1e-4, atol=1e-4)


def test_demo_data_have_climatebench_structure_and_are_not_pattern_scaled(data):
    assert set(FORCINGS + RESPONSES) <= set(data.data_vars)
    assert data["CO2"].dims == ("scenario", "time") and data["SO2"].dims == ("scenario", "time", "lat", "lon")
    assert data["SO2"].attrs["standard_name"] == "tendency_of_atmosphere_mass_content_of_sulfur_dioxide_due_to_emission"
    hist = data["tas"].sel(scenario="historical")
    assert bool(hist.sel(time=hist.time.dt.year > 2014).isnull().all())
    early = data["tas"].sel(time=data.time.dt.year <= 2014)
    np.testing.assert_array_equal(early.sel(scenario="ssp126").values, early.sel(scenario="ssp585").values)
    late = data.sel(time=data.time.dt.year >= 2080).mean("time")
    warm = [float(global_mean(late["tas"].sel(scenario=s))) for s in
            ("ssp126", "ssp245", "ssp370", "ssp585")]
    assert warm == sorted(warm) and 1.0 < warm[0] and warm[-1] < 7.0
    # the pattern-scaling baseline is not the generating model: its error on the held-out scenario
    # clearly exceeds the internal-variability floor (another realisation of the same scenario)
    other = xclimax.tutorial.open_climatebench(TEST, grid=GRID, seed=1)
    truth = data.sel(scenario=TEST)[RESPONSES]
    floor = nrmse(other[RESPONSES], truth, years=WINDOW)
    ps = nrmse(pattern_scaling(data.sel(scenario=TRAIN), truth.assign(CO2=data["CO2"].sel(scenario=TEST)),
                               outputs=RESPONSES), truth, years=WINDOW)
    assert float(ps["tas"].sel(metric="nrmse_t")) > 2 * float(floor["tas"].sel(metric="nrmse_t"))


# ----------------------------------------------------------------------------- the task
def test_projection_beats_the_mean_response_on_the_held_out_scenario(data, trained):
    base, model, history = trained
    assert isinstance(model, ClimaXClimateBench) and not isinstance(base, ClimaXClimateBench)
    assert model.metadata["task"] == "projection" and model.history == 10
    assert history.sizes["step"] == 120 and "val_loss" in history
    test = data.sel(scenario=TEST)
    out = xclimax.project(test, model)
    assert list(out.data_vars) == RESPONSES
    assert out["tas"].dims == ("time", "lat", "lon") and np.array_equal(out.time.values, test.time.values)
    assert bool(out["tas"].isel(time=slice(0, 9)).isnull().all()) and bool(out["tas"].isel(time=slice(9, None)).notnull().all())
    assert out["tas"].attrs["units"] == "K" and out["pr"].attrs["standard_name"] == "precipitation_flux"
    truth = test[RESPONSES]
    ours = nrmse(out, truth, years=WINDOW)
    mean = nrmse(mean_response(data.sel(scenario=["historical", *TRAIN]), test, outputs=RESPONSES), truth, years=WINDOW)
    for name in RESPONSES:
        assert float(ours[name].sel(metric="nrmse_t")) < float(mean[name].sel(metric="nrmse_t")), name
    # dask input: lazy graph, same numbers; the accessor is the same function
    chunked = data.sel(scenario=[TEST, "ssp126"]).chunk(scenario=1)
    with raise_if_dask_computes():
        lazy = chunked.climax.project(model)
    assert lazy["tas"].chunks is not None
    np.testing.assert_allclose(lazy["tas"].sel(scenario=TEST).values, out["tas"].values, rtol=1e-5, atol=1e-6)


def test_finetune_on_dask_input_equals_numpy_and_leaves_the_base_model_alone(data):
    small = data.sel(scenario=["ssp126"]).isel(time=slice(150, 180))
    torch.manual_seed(0)
    base = xclimax.ClimaX(["CO2"], img_size=GRID, embed_dim=16, depth=1, num_heads=2)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    kwargs = dict(task="projection", outputs=["tas", "pr"], history=3, max_steps=3, batch_size=4, seed=0)
    eager, _ = xclimax.finetune(small, base, **kwargs)
    lazy, _ = xclimax.finetune(small.chunk(time=7, lat=4), base, **kwargs)
    for key, value in eager.state_dict().items():
        assert torch.equal(value, lazy.state_dict()[key]), key
    assert eager.stats == lazy.stats and eager.stats["tas"][1] > 0
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert not isinstance(base, ClimaXClimateBench)


def test_any_calendar_and_target_grid(data, trained):
    _, model, _ = trained
    test = data.sel(scenario=TEST).isel(time=slice(200, None))
    ref = xclimax.project(test, model)
    for calendar in ("noleap", "360_day"):
        other = xclimax.tutorial.open_climatebench(TEST, grid=GRID, calendar=calendar).isel(time=slice(200, None))
        out = xclimax.project(other, model)
        assert out.time.dt.calendar == calendar and np.array_equal(out.time.values, other.time.values)
        np.testing.assert_allclose(out["pr"].values, ref["pr"].values, rtol=1e-5, atol=1e-12)
    coarse = xr.Dataset(coords={"lat": [-45.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]})
    regridded = xclimax.project(test, model, target_grid=coarse, regrid_method="conservative")
    assert dict(regridded["tas"].sizes) == {"time": 51, "lat": 2, "lon": 4}
    gm = global_mean
    np.testing.assert_allclose(gm(regridded["tas"]).values[10:], gm(ref["tas"]).values[10:], rtol=1e-4)


def test_bad_inputs_are_refused_with_the_reason(data, trained):
    base, model, _ = trained
    test = data.sel(scenario=TEST)
    with pytest.raises(CheckpointError, match="not trained for climate projection"):
        xclimax.project(test, base)
    with pytest.raises(CFMappingError, match="SO2"):
        xclimax.project(test.drop_vars("SO2"), model)
    with pytest.raises(DataError, match="history=10"):
        xclimax.project(test.isel(time=slice(0, 6)), model)
    with pytest.raises(DataError, match="history=12 needs at least 12 yearly steps"):
        xclimax.finetune(test.isel(time=slice(0, 8)), base, task="projection", history=12, max_steps=1)
    monthly = test.isel(time=slice(0, 12)).assign_coords(
        time=xr.date_range("2000-01-01", periods=12, freq="MS", use_cftime=False))
    with pytest.raises(DataError, match="yearly"):
        xclimax.project(monthly, model)
    with pytest.raises(DataError, match="does not take"):
        xclimax.finetune(test, base, task="projection", region="Europe", max_steps=1)
    with pytest.raises(DataError, match="both inputs and outputs"):
        xclimax.finetune(test, base, task="projection", inputs=["CO2", "tas"], outputs=["tas"], max_steps=1)
    with pytest.raises(xclimax.GridError):
        xclimax.project(xclimax.tutorial.open_climatebench(TEST, grid=(4, 8)), model)


def test_project_leaves_the_callers_model_as_it_was_and_is_lazy_on_dask(data, trained):
    _, model, _ = trained
    test = data.sel(scenario=TEST).isel(time=slice(200, None))
    ref = xclimax.project(test, model)
    model.train()
    try:
        again = xclimax.project(test, model)
        assert model.training  # not switched to eval mode behind the caller's back
    finally:
        model.eval()
    np.testing.assert_array_equal(again["tas"].values, ref["tas"].values)  # the eval-mode output all the same

    def refuse(*args, **kwargs):
        raise AssertionError("computed while building the graph")

    with dask.config.set(scheduler=refuse):
        lazy = xclimax.project(test.chunk({"time": -1}), model)
    assert lazy["tas"].chunks is not None
    np.testing.assert_allclose(lazy["tas"].values, ref["tas"].values, rtol=1e-6, atol=1e-6)
