"""`python -m xclimax demo`: the README's main command, end to end on a short held-out period."""

from __future__ import annotations

import re

import matplotlib.image as mpimg
import pytest

from xclimax.__main__ import main


def test_demo_prints_skill_table_and_writes_maps(tmp_path, capsys):
    out = tmp_path / "demo.png"
    rc = main(["demo", "--days", "6", "--every", "4", "--steps", "2", "--output", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if re.match(r"^(geopotential_500|temperature_850|2m_temperature|10m_)", line)]
    # the five headline variables at two lead times (24 h, 48 h)
    assert len(rows) == 10, text
    for row in rows:
        model, pers, clim = (float(v) for v in row.split()[2:5])
        assert model > 0 and pers > 0 and clim > 0
    for png in (out, tmp_path / "demo_scores.png"):
        image = mpimg.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0.01  # not blank


def test_demo_rejects_bad_lead_time(tmp_path):
    with pytest.raises(ValueError, match="lead_time"):
        main(["demo", "--days", "2", "--lead-time", "soon", "--output", str(tmp_path / "x.png")])
