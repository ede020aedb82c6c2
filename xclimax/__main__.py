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
    import pandas as pd

    import xclimax
    from xclimax import baselines, plot, tutorial

    log = logging.getLogger("xclimax.demo")
    xclimax.set_options(progress=not args.no_progress)
    ds = tutorial.open_dataset()
    model = tutorial.load_model()
    test = tutorial.split(ds)["test"]
    init = test.isel(time=slice(0, None, args.every))
    if args.max_inits:
        init = init.isel(time=slice(0, args.max_inits))
    lead = pd.Timedelta(args.lead_time)
    log.info("forecasting %d initial times, lead %s x %d steps", init.sizes["time"], lead, args.steps)
    fc = xclimax.forecast(init, model, lead_time=lead, steps=args.steps)
    clim = baselines.climatology(tutorial.split(ds)["train"], by="dayofyear")
    variables = [v for v in fc.data_vars]
    truth = test[variables]
    leads = fc["lead_time"].values
    scores = xclimax.evaluate(fc, truth, metrics=("rmse", "acc"), climatology=clim)
    pers = xclimax.evaluate(baselines.persistence(init[variables], leads), truth, metrics=("rmse", "acc"), climatology=clim)
    climf = xclimax.evaluate(
        baselines.climatology_forecast(clim, init["time"], leads), truth, metrics=("rmse", "acc"), climatology=clim
    )
    scores, pers, climf = (s.compute() for s in (scores, pers, climf))

    rows = []
    for name in scores.data_vars:
        da = scores[name]
        extra = [d for d in da.dims if d not in ("metric", "lead_time")]
        for idx in (da.isel({d: 0 for d in []}) if not extra else da).groupby(extra[0]) if extra else [(None, da)]:
            key, sub = idx
            label = name if key is None else f"{name}@{key:g}"
            for lt in sub["lead_time"].values:
                sel = dict(lead_time=lt)
                if key is not None:
                    sel[extra[0]] = key
                r_m = float(scores[name].sel(metric="rmse", **sel))
                r_p = float(pers[name].sel(metric="rmse", **sel))
                r_c = float(climf[name].sel(metric="rmse", **sel))
                rows.append((label, pd.Timedelta(lt), r_m, r_p, r_c, scores[name].attrs.get("units", "")))
    print(f"xclimax {xclimax.__version__} demo: {init.sizes['time']} held-out initial times ({ds.attrs.get('title', 'demo data')})")
    print(f"{'variable':<28}{'lead':>8}{'ClimaX':>12}{'persistence':>13}{'climatology':>13}{'skill vs pers.':>16}  units")
    for label, lt, r_m, r_p, r_c, units in rows:
        hours = int(lt / pd.Timedelta("1h"))
        print(f"{label:<28}{hours:>7}h{r_m:>12.4g}{r_p:>13.4g}{r_c:>13.4g}{1 - r_m / r_p:>15.1%}  {units}")
    out = Path(args.output)
    var = args.variable if args.variable in fc else variables[0]
    fig = plot.maps(fc, ds, var, lead_time=leads[-1], time=fc["time"].values[0])
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"map of forecast, truth and error written to {out.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xclimax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="forecast on the bundled demo data and score it against baselines")
    demo.add_argument("--lead-time", default="24h", help="lead time of one step (default 24h)")
    demo.add_argument("--steps", type=int, default=3, help="autoregressive steps (default 3: 24, 48, 72 h)")
    demo.add_argument("--every", type=int, default=4, help="use every n-th held-out time as initial time (default 4: daily)")
    demo.add_argument("--max-inits", type=int, default=None, help="at most this many initial times")
    demo.add_argument("--variable", default="geopotential_500", help="variable to map")
    demo.add_argument("--output", default="xclimax_demo.png", help="PNG file for the map")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
