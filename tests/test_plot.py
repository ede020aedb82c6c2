"""Tests for xclimax.plot: figures render and show the right data."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402

from tests import as_backend  # noqa: E402
from xclimax import plot  # noqa: E402
from xclimax.exceptions import DataError  # noqa: E402
from xclimax.scoring.baselines import persistence  # noqa: E402
from xclimax.testing import synthetic_dataset  # noqa: E402


def _render(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def _meshes(fig, n):
    """QuadMeshes of the first ``n`` axes (colour bars come after them and hold meshes too)."""
    return [c for ax in fig.axes[:n] for c in ax.collections if isinstance(c, QuadMesh)]


@pytest.fixture
def truth():
    return synthetic_dataset(6, variables=["temperature", "2m_temperature"], levels=[500, 850], grid=(6, 12),
                             constants=False)


def test_maps(truth, backend):
    rng = np.random.default_rng(0)
    fc = persistence(truth, ["6h", "12h"])
    fc = fc + xr.DataArray(rng.standard_normal(fc["temperature"].shape), dims=fc["temperature"].dims)
    fc["temperature"].attrs = truth["temperature"].attrs
    # descending latitude, named "latitude": the maps are drawn south to north all the same
    fc_in = as_backend(fc, backend).isel(lat=slice(None, None, -1)).rename(lat="latitude")
    fig = plot.maps(fc_in, as_backend(truth, backend), "temperature", lead_time="12h", time=truth.time.values[1],
                    level=850)
    _render(fig)
    f = fc["temperature"].isel(time=1, lead_time=1).sel(level=850).values
    t = truth["temperature"].isel(time=3).sel(level=850).values
    meshes = _meshes(fig, 3)
    assert len(meshes) == 3
    for mesh, expected in zip(meshes, (f, t, f - t), strict=True):
        np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(expected.shape), expected, rtol=1e-6)
    assert meshes[0].norm.vmin == meshes[1].norm.vmin == pytest.approx(min(f.min(), t.min()))
    assert meshes[2].norm.vcenter == 0.0
    assert "[K]" in fig.axes[0].get_title()
    assert "valid 2000-01-01 18:00" in fig.get_suptitle()


def test_maps_errors(truth):
    fc = persistence(truth, "6h")
    with pytest.raises(DataError, match="level"):
        plot.maps(fc, truth, "temperature", lead_time="6h")
    with pytest.raises(DataError, match="truth has no time"):
        plot.maps(fc, truth, "2m_temperature", lead_time="6h", time=truth.time.values[-1])
    with pytest.raises(DataError, match="no variable"):
        plot.maps(fc, truth, "z500", lead_time="6h")
    with pytest.raises(DataError, match="one lead time"):
        plot.maps(fc, truth, "2m_temperature", lead_time=["6h", "12h"])


def _scores(values: dict, leads=("6h", "12h", "24h"), metric="rmse", units="K") -> xr.Dataset:
    lead = pd.to_timedelta(list(leads)).values
    data = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=float)
        dims = ("metric", "lead_time") if v.ndim == 1 else ("metric", "lead_time", "level")
        data[name] = xr.DataArray(v[None], dims=dims, attrs={f"{metric}_units": units})
    coords = {"metric": [metric], "lead_time": lead}
    if any(np.ndim(v) == 2 for v in values.values()):
        coords["level"] = [500.0, 850.0]
    return xr.Dataset(data, coords=coords)


def test_error_vs_lead():
    scores = _scores({"t2m": [1.0, 2.0, 3.0], "t": [[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]]})
    base = _scores({"t2m": [2.0, 2.5, 3.5]})
    fig = plot.error_vs_lead(scores, baselines={"persistence": base})
    _render(fig)
    assert [ax.get_title() for ax in fig.axes] == ["t2m", "t level=500", "t level=850"]
    model_line, base_line = fig.axes[0].get_lines()
    np.testing.assert_allclose(model_line.get_xdata(), [6, 12, 24])
    np.testing.assert_allclose(model_line.get_ydata(), [1, 2, 3])
    np.testing.assert_allclose(base_line.get_ydata(), [2, 2.5, 3.5])
    assert base_line.get_label() == "persistence"
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), [2, 3, 4])
    assert fig.axes[0].get_ylabel() == "rmse [K]"
    with pytest.raises(DataError, match="no metric 'acc'"):
        plot.error_vs_lead(scores, metric="acc")
    with pytest.raises(DataError, match="lacks variables"):
        plot.error_vs_lead(scores, variables=["z500"])


@pytest.mark.parametrize("metric", ["rmse", "acc"])
def test_scorecard(metric):
    scores = _scores({"t2m": [1.0, 2.0, 3.0], "u10": [2.0, 2.0, 2.0]}, metric=metric)
    ref = _scores({"t2m": [2.0, 2.0, 2.0], "u10": [1.0, 4.0, 2.0], "z500": [1, 1, 1]}, leads=("6h", "12h", "48h"),
                  metric=metric)
    fig = plot.scorecard(scores, ref, metric=metric)
    _render(fig)
    pct = 100 * np.array([[1 - 2, 2 - 2], [2 - 1, 2 - 4]]) / np.array([[2, 2], [1, 4]])  # rows t2m, u10; 6h, 12h
    sign = -1 if metric == "rmse" else 1  # positive = better = green
    (mesh,) = _meshes(fig, 1)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 2), sign * pct)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(f"{v:+.1f}" for v in pct.ravel())
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["t2m", "u10"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["6 h", "12 h"]
    assert mesh.cmap.name == "PiYG"


def test_scorecard_errors():
    with pytest.raises(DataError, match="share no variable"):
        plot.scorecard(_scores({"a": [1, 2, 3]}), _scores({"b": [1, 2, 3]}))
    with pytest.raises(DataError, match="share no lead time"):
        plot.scorecard(_scores({"a": [1, 2, 3]}), _scores({"a": [1, 2, 3]}, leads=("1h", "2h", "3h")))
