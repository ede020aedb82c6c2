"""Tests for xclimax.plot: figures render and show the right data."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
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
    assert [ax.get_title() for ax in fig.axes] == ["t2m", "t 500 hPa", "t 850 hPa"]
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
    ref.attrs["forecast"] = "persistence"
    fig = plot.scorecard(scores, ref, metric=metric)
    _render(fig)
    m, r = np.array([[1.0, 2.0], [2.0, 2.0]]), np.array([[2.0, 2.0], [1.0, 4.0]])  # rows t2m, u10; 6h, 12h
    # errors: % difference; ACC (bounded by 1): the plain difference, never "+692 %"
    change = 100 * (m - r) / r if metric == "rmse" else m - r
    better = -change if metric == "rmse" else change  # positive = better = green
    lim = np.percentile(np.abs(better), 95)  # the colours are clipped there, the numbers are not
    (mesh,) = _meshes(fig, 1)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 2), np.clip(better, -lim, lim))
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    fmt = (lambda v: f"{v:+.0f}" if abs(v) >= 99.5 else f"{v:+.1f}") if metric == "rmse" else (lambda v: f"{v:+.2f}")
    assert texts == sorted(fmt(v).replace("-", "\N{MINUS SIGN}") for v in change.ravel())
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["t2m", "u10"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["6 h", "12 h"]
    assert mesh.cmap.name == "PiYG"
    title = fig.axes[0].get_title()
    assert "forecast against persistence" in title  # the reference is named
    assert ("% difference" in title) == (metric == "rmse")


def _extents(artists, renderer):
    return np.array([a.get_window_extent(renderer).extents for a in artists if a.get_text()])


def _overlaps(boxes: np.ndarray) -> int:
    """Number of pairs of boxes (x0, y0, x1, y1) that overlap by more than half a pixel."""
    x0, y0, x1, y1 = (boxes[:, i][:, None] for i in range(4))
    ox = np.minimum(x1, x1.T) - np.maximum(x0, x0.T)
    oy = np.minimum(y1, y1.T) - np.maximum(y0, y0.T)
    hit = (ox > 0.5) & (oy > 0.5)
    np.fill_diagonal(hit, False)
    return int(hit.sum() // 2)


@pytest.mark.parametrize("rows, cols", [(1, 3), (8, 10), (40, 12), (5, 20)])
def test_scorecard_is_readable(rows, cols):
    """Sized to its cells: numbers, tick labels and title fit without overlapping, for 1 to 40 rows."""
    rng = np.random.default_rng(0)
    leads = [f"{6 * (k + 1)}h" for k in range(cols)]
    names = [f"geopotential {k}" if k % 2 else f"10m_u_component_of_wind {k}" for k in range(rows)]
    s = _scores({n: rng.uniform(0.5, 3, cols) for n in names}, leads=leads)
    r = _scores({n: rng.uniform(0.01, 3, cols) for n in names}, leads=leads)  # up to +30000 %
    fig = plot.scorecard(s, r)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert len(ax.texts) == rows * cols
    assert _overlaps(_extents(ax.texts, renderer)) == 0
    assert _overlaps(_extents(ax.get_xticklabels(), renderer)) == 0
    assert _overlaps(_extents(ax.get_yticklabels(), renderer)) == 0
    # every text inside its cell, the title and labels inside the figure
    for text in ax.texts:
        x, y = text.get_position()
        cell = ax.transData.transform([[int(x), int(y)], [int(x) + 1, int(y) + 1]])
        box = text.get_window_extent(renderer)
        assert cell[:, 0].min() - 1 <= box.x0 and box.x1 <= cell[:, 0].max() + 1, text.get_text()
    figbox = fig.bbox
    for artist in [ax.title, *ax.get_yticklabels(), *ax.get_xticklabels()]:
        box = artist.get_window_extent(renderer)
        assert figbox.x0 - 1 <= box.x0 and box.x1 <= figbox.x1 + 1 and box.y1 <= figbox.y1 + 1, artist.get_text()
    # the figure grows with its rows and columns
    w, h = fig.get_size_inches()
    assert h < 4 if rows == 1 else h > 0.25 * rows
    assert w >= 0.55 * cols
    # lead ticks in whole hours or days
    assert all(t.get_text().endswith((" h", " d")) for t in ax.get_xticklabels())
    plt.close("all")


def test_pyplot_savefig_after_maps_saves_the_figure(truth, tmp_path):
    """xarray's convention: the plot functions draw on pyplot's current figure, so plt.savefig works."""
    plt.close("all")
    panels = plot.maps(persistence(truth, "6h"), truth, "temperature", lead_time="6h", level=500)
    assert panels.fig is plt.gcf()
    plt.savefig(tmp_path / "maps.png")
    image = plt.imread(tmp_path / "maps.png")
    assert image[..., :3].std() > 0.05  # not blank
    assert [ax.get_title().splitlines()[0] for ax in panels.axes] == ["forecast", "truth", "forecast \N{MINUS SIGN} truth"]
    assert "500 hPa" in panels.fig.get_suptitle()
    # an empty current figure is drawn on (its size kept); a figure of one's own with fig=
    fig = plt.figure(figsize=(9, 3))
    assert plot.maps(persistence(truth, "6h"), truth, "2m_temperature", lead_time="6h").fig is fig
    assert tuple(fig.get_size_inches()) == (9, 3)
    from matplotlib.figure import Figure

    own = Figure()
    assert plot.scorecard(_scores({"a": [1.0, 2.0, 3.0]}), _scores({"a": [2.0, 2.0, 2.0]}), fig=own).fig is own
    plt.close("all")


def test_scorecard_errors():
    with pytest.raises(DataError, match="share no variable"):
        plot.scorecard(_scores({"a": [1, 2, 3]}), _scores({"b": [1, 2, 3]}))
    with pytest.raises(DataError, match="share no lead time"):
        plot.scorecard(_scores({"a": [1, 2, 3]}), _scores({"a": [1, 2, 3]}, leads=("1h", "2h", "3h")))
