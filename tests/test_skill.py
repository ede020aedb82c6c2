"""A few CPU seconds of fine-tuning the bundled demo model give skill on the held-out year.

End-to-end through the public API: fine-tune :func:`xclimax.tutorial.load_model` with
:func:`xclimax.finetune` at a fixed lead on the demo training years, forecast the held-out year
directly at that lead with :func:`xclimax.forecast`, and compare the latitude-weighted RMSE of
:func:`xclimax.evaluate` with persistence and a smoothed day-of-year climatology of the training
years. To stay fast the data are the first 120 days of each demo year (2000-2001 train, 2002
held out); ``benchmarks/bench_skill.py --finetune`` runs the full-year version.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import xclimax
from xclimax import baselines, tutorial

#: Headline variables: ClimaX name -> (dataset variable, level selection).
HEADLINE = {
    "geopotential_500": ("geopotential", {"level": 500}),
    "temperature_850": ("temperature", {"level": 850}),
    "2m_temperature": ("2m_temperature", {}),
    "10m_u_component_of_wind": ("10m_u_component_of_wind", {}),
    "10m_v_component_of_wind": ("10m_v_component_of_wind", {}),
}
FIELDS = sorted({v for v, _ in HEADLINE.values()})
# Recipe (measured on 2 shared cores): 72 h, 100 steps of batch 4 in ~25 s; the worst
# model/climatology RMSE ratio (2m temperature) was 0.904 (seed 0; 0.897 and 0.922 with seeds 1
# and 2) and every ratio to the un-fine-tuned 72 h forecast <= 0.79. 24 h: the bundled model was pre-trained at 24 h, so a
# short, gentle fine-tune suffices.
RECIPE = {
    "72h": dict(max_steps=100, batch_size=4, lr=1e-3, warmup_steps=10),
    "24h": dict(max_steps=20, batch_size=4, lr=3e-4, warmup_steps=5),
}

pytestmark = pytest.mark.slow  # ~50 s: fine-tunes the demo model for two leads


@pytest.fixture(scope="module")
def demo():
    parts = tutorial.split(tutorial.open_dataset(days=120))
    train, test = parts["train"], parts["test"]
    init = test.isel(time=slice(0, test.sizes["time"] - 12, 4))  # every 24 h, leaving room for 72 h
    clim = baselines.climatology(train[FIELDS], by="dayofyear", smooth=15)
    return {"train": train, "test": test, "init": init, "clim": clim, "model": tutorial.load_model()}


def rmse(fcs: list, demo: dict) -> dict[str, float]:
    """Lat-weighted RMSE of each headline variable over the forecasts ``fcs`` (one lead each)."""
    out = {}
    for fc in fcs:
        scores = xclimax.evaluate(fc, demo["test"][[v for v in FIELDS if v in fc]], metrics=("rmse",),
                                  climatology=demo["clim"])
        for name, (var, sel) in HEADLINE.items():
            if var in scores and all(v in scores[var][k].values for k, v in sel.items()):
                out[name] = float(scores[var].sel(metric="rmse", **sel).squeeze())
    assert sorted(out) == sorted(HEADLINE)
    return out


def model_rmse(model, lead: str, demo: dict) -> dict[str, float]:
    fc = xclimax.forecast(demo["init"], model, lead_time=lead)  # geopotential on 500 hPa, temperature on 850 hPa
    return rmse([fc[[v for v in FIELDS if v in fc]]], demo)


def baseline_rmse(lead: str, demo: dict) -> dict[str, dict[str, float]]:
    init, leads = demo["init"], [np.timedelta64(int(lead[:-1]), "h")]
    return {
        "persistence": rmse([baselines.persistence(init[FIELDS], leads)], demo),
        "climatology": rmse([baselines.climatology_forecast(demo["clim"], init["time"], leads)], demo),
    }


@pytest.fixture(scope="module")
def tuned(demo):
    return {
        lead: xclimax.finetune(demo["train"], demo["model"], lead_time=lead, seed=0, **kw)
        for lead, kw in RECIPE.items()
    }


@pytest.fixture(scope="module")
def scores(demo, tuned):
    """RMSE per headline variable: ``{(what, lead): {name: rmse}}``."""
    out = {("untuned", "72h"): model_rmse(demo["model"], "72h", demo)}
    for lead in RECIPE:
        out["tuned", lead] = model_rmse(tuned[lead][0], lead, demo)
        for name, ref in baseline_rmse(lead, demo).items():
            out[name, lead] = ref
    return out


def ratios(scores: dict, a: tuple, b: tuple) -> dict[str, float]:
    return {v: scores[a][v] / scores[b][v] for v in HEADLINE}


@pytest.mark.parametrize("lead", ["24h", "72h"])
@pytest.mark.parametrize("baseline", ["persistence", "climatology"])
def test_finetuned_beats_baseline(tuned, scores, lead, baseline):
    model, history = tuned[lead]
    assert pd.Timedelta(model.metadata["lead_time"]) == pd.Timedelta(lead)
    assert history.sizes["step"] == RECIPE[lead]["max_steps"]
    r = ratios(scores, ("tuned", lead), (baseline, lead))
    # measured worst ratio: 0.92 at 72 h (2m temperature vs climatology), 0.79 at 24 h
    assert max(r.values()) < 0.97, r


def test_finetuning_is_what_gives_72h_skill(tuned, scores):
    """The un-fine-tuned model, asked for 72 h directly, loses to climatology; fine-tuning fixes that."""
    before = ratios(scores, ("untuned", "72h"), ("climatology", "72h"))
    assert max(before.values()) > 1.1, before  # measured 1.29 (2m temperature)
    gain = ratios(scores, ("tuned", "72h"), ("untuned", "72h"))
    assert max(gain.values()) < 0.9, gain
    loss = tuned["72h"][1]["loss"].values
    assert loss[-20:].mean() < 0.8 * loss[:10].mean()
