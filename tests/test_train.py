"""Tests of pretrain/finetune: recipe pieces, metrics, sources, checkpoints and resumption, skill."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xclimax
from tests import as_backend, record_loaders
from xclimax import finetune, pretrain
from xclimax.exceptions import DataError, XClimaxWarning
from xclimax.nn.model import ClimaX
from xclimax.testing import grid_coords, synthetic_dataset
from xclimax.training import LinearWarmupCosine, configure_optimizer, region_mask
from xclimax.training.fit import ValidationScores, weighted_sq_error


@pytest.fixture(autouse=True)
def _one_thread():
    """Training tests are timed on a small shared machine: avoid thread oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(embed_dim=32, depth=1, decoder_depth=1, num_heads=2, drop_path=0.0, drop_rate=0.0)


def _ds(nt=24, variables=("2m_temperature",), **kw):
    kw.setdefault("grid", (8, 16))
    kw.setdefault("constants", False)
    return synthetic_dataset(nt, variables=list(variables), **kw)


def test_schedule_matches_formula():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = LinearWarmupCosine(opt, warmup_steps=5, max_steps=20)
    got = []
    for _ in range(22):
        got.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    for s, lr in enumerate(got):
        want = 1e-8 + (0.1 - 1e-8) * s / 5 if s < 5 else 1e-8 + (0.1 - 1e-8) * 0.5 * (1 + math.cos(math.pi * min(s - 5, 15) / 15))
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_optimizer_groups():
    model = ClimaX(["2m_temperature", "geopotential_500"], img_size=(8, 16), **TINY)
    opt = configure_optimizer(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    assert no_decay == {id(model.var_embed), id(model.pos_embed)}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert len(opt.param_groups[0]["params"]) + 2 == len(list(model.parameters()))


def test_weighted_loss_and_scores_against_direct_formulas():
    rng = np.random.default_rng(0)
    lat, _ = grid_coords(8, 16)
    pred, y = rng.normal(size=(2, 5, 3, 8, 16))
    w = np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean()
    mask = np.zeros((8, 16), bool)
    mask[2:6, 4:10] = True
    wmap = torch.tensor(w[:, None] * mask, dtype=torch.float32)
    got = weighted_sq_error(torch.tensor(pred), torch.tensor(y, dtype=torch.float32), wmap)
    want = [(w[:, None] * (pred[:, v] - y[:, v]) ** 2)[:, mask].sum() / (5 * mask.sum()) for v in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)

    scores = ValidationScores(torch.tensor(w)[:, None], torch.tensor(mask))
    for k in range(0, 5, 2):  # several batches
        scores.add("a", torch.tensor(pred[k : k + 2, 0]), torch.tensor(y[k : k + 2, 0]))
    rmse, acc = scores.result()["a"]
    p, t = pred[:, 0], y[:, 0]
    ww = np.broadcast_to(w[:, None], mask.shape)[mask]
    want_rmse = np.mean([np.sqrt((ww * (p[b][mask] - t[b][mask]) ** 2).mean()) for b in range(5)])
    clim = t.mean(0)
    pa, ta = (p - clim)[:, mask], (t - clim)[:, mask]
    pa, ta = pa - pa.mean(), ta - ta.mean()
    want_acc = (ww * pa * ta).sum() / np.sqrt((ww * pa**2).sum() * (ww * ta**2).sum())
    assert rmse == pytest.approx(want_rmse, rel=1e-10) and acc == pytest.approx(want_acc, rel=1e-10)


def test_region_mask_orientation_and_wrap():
    lat, lon = grid_coords(32, 64)
    m = region_mask(lat, lon, "Europe", 2)
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert lat[rows].min() >= 30 and lat[rows].max() <= 65  # northern band: not the mirrored southern one
    assert lon[cols].min() >= 0 and lon[cols].max() <= 40
    for i in range(0, 32, 2):  # a patch is in iff all its pixels are in the box
        for j in range(0, 64, 2):
            inside = all(30 <= lat[a] <= 65 and 0 <= lon[b] <= 40 for a in (i, i + 1) for b in (j, j + 1))
            assert m[i, j] == inside
    wrap = region_mask(lat, lon, {"lat": (-10, 10), "lon": (-20, 20)}, 2)
    assert wrap[:, 0].any() and wrap[:, -1].any() and not wrap[:, 32].any()
    with pytest.raises(DataError, match="unknown region"):
        region_mask(lat, lon, "Atlantis", 2)
    with pytest.raises(DataError, match="no whole"):
        region_mask(lat, lon, {"lat": (0, 1), "lon": (0, 1)}, 2)


def test_pretrain_heterogeneous_sources_pooled_stats(backend):
    era = as_backend(_ds(20, ("2m_temperature", "temperature"), levels=[500, 850]), backend)
    cmip = as_backend(_ds(16, ("temperature",), levels=[500, 850], style="cmip", seed=1), backend)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XClimaxWarning)
        model, hist = pretrain({"era": era, "cmip": cmip}, lead_times=("6h", "12h"), batch_size=4, max_steps=6,
                               model_kwargs=TINY, val=0.25, callback=lambda step, loss: seen.append(step))
    assert set(model.variables) == {"lattitude", "2m_temperature", "temperature_500", "temperature_850"}
    assert seen == list(range(1, 7)) and hist.sizes["step"] == 6 and np.isfinite(hist.loss).all()
    # pooled statistics of temperature_850 over both sources' training times (15 + 12 steps)
    a = era["temperature"].sel(level=850).isel(time=slice(0, 15)).values.astype(float)
    b = cmip["ta"].sel(plev=85000).isel(time=slice(0, 12)).values.astype(float)
    both = np.concatenate([a.ravel(), b.ravel()])
    mean, std = model.stats["temperature_850"]
    assert mean == pytest.approx(both.mean(), rel=1e-6) and std == pytest.approx(both.std(), rel=1e-4)
    # training loss by variable has NaN where a batch's source lacks the variable
    assert hist.var_loss.sel(variable="2m_temperature").isnull().any()
    assert "val_rmse" in hist and set(hist.val_variable.values) == {"2m_temperature", "temperature_500", "temperature_850"}


def test_dataset_and_its_canonical_array_train_identically(backend, monkeypatch):
    """Dask-backed Datasets go to the loader's Dataset reader, DataArrays (and in-memory Datasets, whose canonical
    array to_array has already built) to its array reader: same batches, same weights."""
    from xclimax import grid, tokens

    made = record_loaders(monkeypatch)
    ds = _ds(20, ("2m_temperature", "temperature"), levels=[850], seed=4).isel(lat=slice(None, None, -1))
    # a variable outside the 48, under a name that only variable_map resolves
    ds["pmsl"] = (1013.25 + 0.3 * (ds["2m_temperature"] - 285.0)).assign_attrs(units="hPa")
    ds = as_backend(ds, backend)
    mapping = dict(extra_variables=["mean_sea_level_pressure"], variable_map={"mean_sea_level_pressure": "pmsl"})
    norm = grid.normalize_grid(ds)[0]
    da = tokens.to_array(norm, list(tokens.find_variables(norm, **mapping)), **mapping)
    kw = dict(lead_times=("6h", "12h"), batch_size=4, max_steps=4, model_kwargs=TINY, val=0.25, seed=3, prefetch=0)
    runs = [pretrain(ds, **kw, **mapping), pretrain(da, **kw)]
    base = runs[0][0]
    runs += [finetune(ds, base, outputs=["mean_sea_level_pressure"], lead_time="12h", batch_size=4, max_steps=3, seed=1,
                      val=0.25, prefetch=0, **mapping),
             finetune(da, base, outputs=["mean_sea_level_pressure"], lead_time="12h", batch_size=4, max_steps=3, seed=1,
                      val=0.25, prefetch=0)]
    kinds = [type(loader.sources[0].reader).__name__ for loader in made]
    fed = "DatasetReader" if backend == "dask" else "ArrayReader"
    assert kinds == [fed] * 2 + ["ArrayReader"] * 2 + [fed] * 2 + ["ArrayReader"] * 2
    assert base.variables == ("lattitude", "2m_temperature", "temperature_850", "mean_sea_level_pressure")
    for (m1, h1), (m2, h2) in (runs[:2], runs[2:]):
        for k, v in m1.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k]), k  # both paths normalise the same float32 values the same way
        xr.testing.assert_identical(h1, h2)
    for one, other in ((made[0], made[2]), (made[1], made[3]), (made[4], made[6]), (made[5], made[7])):
        assert one.sources[0].inputs == other.sources[0].inputs and one.sources[0].outputs == other.sources[0].outputs
        for b1, b2 in zip(one.epoch(0), other.epoch(0), strict=True):
            assert torch.equal(b1.x, b2.x) and torch.equal(b1.y, b2.y) and torch.equal(b1.lead_hours, b2.lead_hours)
    # the hPa values were converted to Pa
    assert base.stats["mean_sea_level_pressure"][0] == pytest.approx(float(ds.pmsl[:15].mean()) * 100, rel=1e-5)


def test_zarr_stores_train_like_memory_without_loading_the_store(tmp_path, monkeypatch):
    """``open_zarr`` data (dask or ``chunks=None``) are fed as Datasets, read straight from the store (nothing
    loaded whole, no dask compute by the loader), and give the weights of the same data in memory."""
    made = record_loaders(monkeypatch)
    path = tmp_path / "train.zarr"
    _ds(20, ("2m_temperature", "temperature"), levels=[850], seed=4).chunk({"time": 8}).to_zarr(path)
    kw = dict(lead_times=("6h", "12h"), batch_size=4, max_steps=4, model_kwargs=TINY, val=0.25, seed=3, prefetch=0)
    ref, _ = pretrain(xr.open_zarr(path).compute().chunk({"time": 8}), **kw)  # in memory, same statistics' chunks
    assert made[-1].sources[0].reader.direct is None
    for chunks in (None, {}):
        ds = xr.open_zarr(path, chunks=chunks)
        model, _ = pretrain(ds, **kw)
        assert all(not v.variable._in_memory for v in ds.data_vars.values())  # the user's Dataset stays lazy
        assert [type(m.sources[0].reader.direct).__name__ for m in made[-2:]] == ["ZarrDirect"] * 2
        for k, v in ref.state_dict().items():
            assert torch.equal(v, model.state_dict()[k]), k


def test_pretrain_beats_persistence_on_held_out_times():
    """A tiny model learns travelling waves: 24 h forecasts beat persistence on later, unseen times."""
    ds = _ds(160, ("2m_temperature",), seed=3)
    val = slice(str(ds.time.values[120])[:19], None)
    model, hist = pretrain(ds, lead_times=("24h", "24h"), batch_size=16, max_steps=200, lr=2e-3, warmup_steps=20,
                           model_kwargs=dict(embed_dim=64, depth=2, decoder_depth=1, num_heads=4, drop_path=0.0,
                                             drop_rate=0.0), val=val, prefetch=0)
    w = np.cos(np.deg2rad(ds.lat.values))[:, None]
    w = w / w.mean()  # ClimaX's latitude weights, computed independently
    x = ds["2m_temperature"].isel(time=slice(120, None)).values.astype(float)
    persistence = np.mean([np.sqrt((w * (x[i + 4] - x[i]) ** 2).mean()) for i in range(len(x) - 4)])
    rmse = float(hist.val_rmse.sel(val_variable="2m_temperature")[-1])
    assert rmse < 0.7 * persistence, (rmse, persistence)  # measured: 0.76 K vs 1.50 K
    assert hist.loss[-20:].mean() < 0.1 * hist.loss[:20].mean()


def _official_checkpoint(path):
    model = ClimaX(img_size=(8, 16), **TINY)  # the 48 official variables
    rename = {"var_embed": "channel_embed", "var_query": "channel_query", "var_agg": "channel_agg"}
    sd = {}
    for k, v in model.state_dict().items():
        head, _, tail = k.partition(".")
        sd["net." + ".".join([rename.get(head, head)] + ([tail] if tail else []))] = v
    torch.save({"state_dict": sd, "epoch": 0}, path)
    return model


def test_finetune_official_checkpoint_on_a_new_variable(tmp_path):
    ref = _official_checkpoint(tmp_path / "official.ckpt")
    base = xclimax.load_checkpoint(tmp_path / "official.ckpt", drop_path=0.0, drop_rate=0.0)
    assert torch.equal(base.var_embed, ref.var_embed)
    ds = synthetic_dataset(40, grid=(8, 16), seed=2)
    wave = synthetic_dataset(40, variables=["2m_temperature"], grid=(8, 16), constants=False, seed=7)["2m_temperature"]
    ds["msl"] = (101325.0 + 40 * (wave - 285.0)).assign_attrs(standard_name="air_pressure_at_mean_sea_level", units="Pa")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XClimaxWarning)
        tuned, hist = finetune(ds, base, outputs=["2m_temperature", "mean_sea_level_pressure"], lead_time="6h",
                               extra_variables=["mean_sea_level_pressure"], batch_size=8, max_steps=80, lr=2e-3,
                               warmup_steps=4, prefetch=0)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    assert tuned.variables == base.variables + ("mean_sea_level_pressure",)
    assert tuned.metadata["out_variables"] == ["2m_temperature", "mean_sea_level_pressure"]
    assert tuned.stats["mean_sea_level_pressure"][0] == pytest.approx(float(ds.msl.mean()), rel=1e-6)
    msl = hist.var_loss.sel(variable="mean_sea_level_pressure").values
    assert msl[-10:].mean() < 0.7 * msl[:5].mean()


def test_finetune_freeze_region_and_tasks(backend):
    ds = as_backend(_ds(24, ("2m_temperature", "temperature"), levels=[850]), backend)
    base = ClimaX(["2m_temperature", "temperature_850"], img_size=(8, 16), **TINY)
    base.stats = {"2m_temperature": (280.0, 10.0), "temperature_850": (270.0, 5.0)}
    tuned, hist = finetune(ds, base, inputs=["2m_temperature", "temperature_850"], outputs=["temperature_850"],
                           lead_time="12h", freeze="encoder", region={"lat": (-60, 60), "lon": (90, 270)},
                           batch_size=4, max_steps=3, val=0.3)
    old, new = base.state_dict(), tuned.state_dict()
    for k in old:
        same = torch.equal(old[k], new[k])
        assert same == (not k.startswith("head.")), k
    assert tuned.stats == base.stats and tuned.metadata["region"]["lat"] == [-60, 60]
    assert all(p.requires_grad for p in tuned.parameters())
    assert hist.val_rmse.sizes == {"val_step": 1, "val_variable": 1}
    with pytest.raises(DataError, match="task='downscale' needs target="):  # (tests/test_downscale.py trains it)
        finetune(ds, base, task="downscale")
    with pytest.raises(DataError, match="unknown task"):
        finetune(ds, base, task="nowcast")
    with pytest.raises(DataError, match="freeze"):
        finetune(ds, base, freeze="decoder_blocks", max_steps=1)


def test_history_plots():
    import matplotlib

    matplotlib.use("Agg")
    _, hist = pretrain(_ds(12), lead_times="6h", batch_size=4, max_steps=2, model_kwargs=TINY, val=0.3)
    hist.loss.plot()
    hist.val_rmse.plot.line(x="val_step")
    assert hist.lr.attrs["long_name"] == "learning rate" and (hist.lr > 0).all()


_RUN = textwrap.dedent(
    """
    import os, sys, torch, xclimax
    torch.set_num_threads(1)
    from xclimax.testing import synthetic_dataset
    ds = synthetic_dataset(30, variables=["2m_temperature"], grid=(8, 16), constants=False)
    kill = int(os.environ.get("KILL_AT", "0"))
    def callback(step, loss):
        if step == kill:
            os._exit(17)  # hard kill, after the checkpoint of this step was written
    with xclimax.set_options(progress=False):
        xclimax.pretrain(ds, lead_times=("6h", "18h"), batch_size=4, max_steps=9, accumulate=2, epochs=None,
                         model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, drop_path=0.2, drop_rate=0.2),
                         checkpoint_dir=sys.argv[1], checkpoint_every=2, callback=callback, val=0.2, resume=True)
    """
)


def test_resume_after_kill_is_bitwise_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_RUN)
    env = {**os.environ, "KILL_AT": "5", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ck")], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 17, proc.stderr.decode()[-2000:]
    assert sorted(p.name for p in (tmp_path / "ck").glob("state-*.pt")) == ["state-000000002.pt", "state-000000004.pt"]
    ds = synthetic_dataset(30, variables=["2m_temperature"], grid=(8, 16), constants=False)
    kw = dict(lead_times=("6h", "18h"), batch_size=4, max_steps=9, accumulate=2, val=0.2,
              model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, drop_path=0.2, drop_rate=0.2), checkpoint_every=2)
    resumed, h1 = pretrain(ds, checkpoint_dir=tmp_path / "ck", resume=True, **kw)
    straight, h2 = pretrain(ds, checkpoint_dir=tmp_path / "other", **kw)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    xr.testing.assert_identical(h1, h2)
    state = torch.load(tmp_path / "ck" / "state-000000009.pt", weights_only=True)
    assert state["step"] == 9 and set(state["rng"]) == {"torch", "numpy", "python"}
