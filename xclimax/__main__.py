"""Command line: ``python -m xclimax demo``.

Runs the bundled demo end to end: opens the demo data and the small demo model, forecasts
from held-out initial times, prints the skill against persistence and climatology per variable
and writes a PNG map of forecast, truth and error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import xclimax
    from xclimax import baselines, plot, tutorial
    from xclimax.cf.time import as_lead_times

    log = logging.getLogger("xclimax.demo")
    xclimax.set_options(progress=not args.no_progress)
    lead = as_lead_times(args.lead_time)[0]  # fail fast on a bad lead time
    held_out = tutorial.DEMO_YEARS[-1]  # the model never saw this year
    ds = tutorial.open_dataset(years=[held_out], days=args.days)
    model = tutorial.load_model()
    init = ds.isel(time=slice(0, None, args.every))
    if args.max_inits:
        init = init.isel(time=slice(0, args.max_inits))
    log.info("forecasting %d initial times, lead %s x %d steps", init.sizes["time"], lead, args.steps)
    fc = xclimax.forecast(init, model, lead_time=lead, steps=args.steps)
    variables = list(fc.data_vars)
    truth = ds[variables]
    leads = fc["lead_time"].values
    # ClimaX's convention: the climatology is the time mean of the evaluated period
    clim = baselines.climatology(truth, by="mean")
    kwargs = dict(metrics=("rmse", "acc"), climatology=clim)
    scores = xclimax.evaluate(fc, truth, **kwargs)
    pers = xclimax.evaluate(baselines.persistence(init[variables], leads), truth, **kwargs)
    climf = xclimax.evaluate(baselines.climatology_forecast(clim, init["time"], leads), truth, **kwargs)
    scores, pers, climf = (s.compute() for s in (scores, pers, climf))

    print(f"xclimax {xclimax.__version__} demo: {init.sizes['time']} initial times from the held-out year {held_out}")
    print(ds.attrs.get("title", ""))
    print(f"{'variable':<30}{'lead':>6}{'ClimaX':>11}{'persistence':>13}{'climatology*':>13}{'vs persistence':>16}  units")
    for label, lead_h, values, units in _rows(scores, pers, climf):
        if not args.all_variables and label not in xclimax.FORECAST_VARIABLES:
            continue
        model_rmse, pers_rmse, clim_rmse = values
        gain = 1 - model_rmse / pers_rmse
        print(f"{label:<30}{lead_h:>5}h{model_rmse:>11.4g}{pers_rmse:>13.4g}{clim_rmse:>13.4g}{gain:>+16.1%}  {units}")
    print("* climatology: the held-out period's time mean (ClimaX's convention); lat-weighted RMSE as WeatherBench 2")
    out = Path(args.output)
    var = args.variable if args.variable in fc else variables[0]
    level = {"level": args.level} if "level" in fc[var].dims else {}
    fig = plot.maps(fc, ds, var, lead_time=leads[-1], time=fc["time"].values[0], **level)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"map of forecast, truth and error written to {out.resolve()}")
    curve = out.with_name(out.stem + "_scores" + out.suffix)
    fig = plot.error_vs_lead(scores, metric="rmse", baselines={"persistence": pers, "climatology": climf})
    fig.savefig(curve, dpi=110, bbox_inches="tight")
    print(f"RMSE against lead time written to {curve.resolve()}")
    return 0


def _rows(*scores):
    """Yield (label, lead hours, [rmse of each score set], units) for every variable, level and lead time."""
    import pandas as pd

    first = scores[0]
    for name in first.data_vars:
        da = first[name].sel(metric="rmse")
        levels = [d for d in da.dims if d != "lead_time"]
        stacked = da.stack(_point=levels) if levels else da.expand_dims(_point=[None])
        for point in stacked["_point"].values:
            sel = dict(zip(levels, point if isinstance(point, tuple) else (point,))) if levels else {}
            suffix = "".join(f"_{v:g}" if isinstance(v, (int, float)) else f"_{v}" for v in sel.values())
            for lead in da["lead_time"].values:
                values = [float(s[name].sel(metric="rmse", lead_time=lead, **sel)) for s in scores]
                yield f"{name}{suffix}", int(pd.Timedelta(lead) / pd.Timedelta("1h")), values, first[name].attrs.get("rmse_units", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xclimax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="forecast on the bundled demo data and score it against baselines")
    demo.add_argument("--lead-time", default="24h", help="lead time of one step (default 24h)")
    demo.add_argument("--steps", type=int, default=3, help="autoregressive steps (default 3: 24, 48, 72 h)")
    demo.add_argument("--every", type=int, default=4, help="use every n-th held-out time as initial time (default 4: daily)")
    demo.add_argument("--days", type=float, default=None, help="use only the first DAYS days of the held-out year")
    demo.add_argument("--max-inits", type=int, default=None, help="at most this many initial times")
    demo.add_argument("--variable", default="geopotential", help="variable to map (default geopotential)")
    demo.add_argument("--level", type=float, default=500, help="pressure level (hPa) to map (default 500)")
    demo.add_argument("--output", default="xclimax_demo.png", help="PNG file for the map")
    demo.add_argument("--all-variables", action="store_true", help="score every variable, not only the headline five")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
