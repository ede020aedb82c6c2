"""Make the picture shown in the README (``python docs/images/make_figures.py``; offline, ~1 CPU minute).

A 3-day forecast of the bundled demo model from a held-out initial time, next to what happened and the error.
"""

from pathlib import Path

import xclimax

xclimax.set_options(progress=False)
ds = xclimax.tutorial.open_dataset(years=[2002])  # the held-out demo year
model = xclimax.tutorial.load_model()
fc = ds.sel(time=["2002-03-01T00:00"]).climax.forecast(model, lead_time="24h", steps=3)
fig = xclimax.plot.maps(fc, ds, "geopotential", level=500, lead_time="72h")
fig.savefig(Path(__file__).with_name("forecast-z500-72h.png"), dpi=80, bbox_inches="tight")
