"""The ds.climax accessor is a thin alias layer: same signatures, same results, no state."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
import torch
import xarray as xr

import xclimax
from tests import as_backend
from xclimax.testing import synthetic_dataset

FUNCTIONS = ("forecast", "downscale", "pretrain", "finetune", "evaluate")


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_methods_mirror_the_public_functions(name):
    func = getattr(xclimax, name)
    ds = synthetic_dataset(2, variables=["2m_temperature"], constants=False)
    method = getattr(ds.climax, name)
    f_params = list(inspect.signature(func).parameters.values())[1:]  # drop the Dataset
    m_params = list(inspect.signature(method).parameters.values())
    assert [(p.name, p.kind, p.default) for p in m_params] == [(p.name, p.kind, p.default) for p in f_params]
    assert method.__doc__ == func.__doc__ and "Parameters" in method.__doc__  # help() shows the real docs
    assert len(m_params) > 3 and "kwargs" not in [p.name for p in m_params if p.kind is p.VAR_KEYWORD]


def test_accessor_holds_no_state_and_pickles():
    ds = synthetic_dataset(2, variables=["2m_temperature"], constants=False)
    acc = ds.climax
    assert set(vars(acc)) == {"_obj"}
    restored = pickle.loads(pickle.dumps(ds))
    assert restored.climax.variables == ds.climax.variables == {"lattitude": None, "2m_temperature": "2m_temperature"}


def test_check_reports_found_and_missing(backend):
    ds = as_backend(synthetic_dataset(2, variables=["temperature", "2m_temperature"], levels=(500, 850)), backend)
    model = xclimax.ClimaX(["temperature_850", "geopotential_500", "2m_temperature"], embed_dim=16, depth=1, num_heads=2)
    report = ds.climax.check(model)
    assert "geopotential_500" in report.missing
    assert {"temperature_850", "2m_temperature"} <= set(report.found)
    assert "geopotential_500" in repr(report)


def test_evaluate_and_pretrain_parity(backend):
    ds = as_backend(synthetic_dataset(12, variables=["2m_temperature"], constants=False), backend)
    fc = xclimax.baselines.persistence(ds.isel(time=slice(0, 6)), ["6h", "12h"])
    xr.testing.assert_identical(fc.climax.evaluate(ds), xclimax.evaluate(fc, ds))

    kwargs = dict(
        lead_times=("6h", "12h"), batch_size=2, max_steps=2, seed=1,
        model_kwargs=dict(embed_dim=16, depth=1, num_heads=2, decoder_depth=1),
    )
    m1, h1 = ds.climax.pretrain(**kwargs)
    m2, h2 = xclimax.pretrain(ds, **kwargs)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    np.testing.assert_array_equal(h1["loss"].values, h2["loss"].values)
