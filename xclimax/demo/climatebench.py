"""Synthetic ClimateBench-like data: forcing pathways -> FaIR -> spatial climate responses.

:func:`open_climatebench` returns data with the structure of ClimateBench (Watson-Parris et al.,
2022): yearly, 1850-2014 historical followed by 2015-2100 SSP scenarios (ssp126, ssp245, ssp370,
ssp585); inputs CO2 (cumulative anthropogenic emissions) and CH4 (annual emissions) as global
scalars and SO2 and black-carbon (BC) emission maps; outputs surface air temperature (``tas``),
diurnal temperature range, precipitation (``pr``) and its 90th percentile of daily values
(``pr90``) as maps of differences from a pre-industrial control. The values are **synthetic**.

How they are made:

1. Stylised emission pathways (global CO2 fossil and land-use, CH4 and N2O; SO2 and BC from
   eight source regions with their own histories and futures) loosely follow the CMIP6
   historical record and the SSP marker scenarios; the historical part is shared.
2. The FaIR simple climate model (``pip install fair``, v2; :func:`fair_response`) turns
   them into concentrations, effective radiative forcing and the global temperature of a
   three-layer energy balance model, once with all emissions and once without anthropogenic
   aerosols (the aerosol contribution is the difference). Its output is cached on disk.
3. Maps: the greenhouse-gas warming follows a land-sea / polar-amplification pattern, the
   deep-ocean temperature adds a slow pattern (Southern Ocean, North Atlantic), Arctic
   amplification saturates with warming, the aerosol cooling is concentrated downwind of the
   *current* source regions, precipitation has a fast (negative) response to CO2 forcing, a
   southward ITCZ shift under Northern-Hemisphere aerosol cooling and local drying by absorbing
   aerosol, and every field has spatially correlated, autocorrelated internal variability.
   The response is therefore **not** a linear pattern scaling of any one global quantity, so a
   pattern-scaling baseline is not the generating model (it is a good approximation for
   ``tas``, as in reality).

Nothing is downloaded: FaIR's own AR6 species defaults ship with the package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .._utils import atomic_write
from .._version import __version__
from ..cf.grid import grid_coords
from ..exceptions import DataError
from .atmosphere import _land_fraction

__all__ = [
    "SCENARIOS", "FORCINGS", "RESPONSES", "VERSION", "HISTORICAL_YEARS", "SCENARIO_YEARS", "TEST_YEARS",
    "open_climatebench", "fair_response", "emission_pathways",
]

logger = logging.getLogger(__name__)

#: Version of the generator: bump whenever its output changes (it keys the cache).
VERSION = 1
#: The future scenarios (each preceded by the shared historical period).
SCENARIOS: tuple[str, ...] = ("ssp126", "ssp245", "ssp370", "ssp585")
#: Input (forcing) variables, as in ClimateBench.
FORCINGS: tuple[str, ...] = ("CO2", "SO2", "CH4", "BC")
#: Output (response) variables, as in ClimateBench.
RESPONSES: tuple[str, ...] = ("tas", "diurnal_temperature_range", "pr", "pr90")
#: First and last year of the historical period and of the scenarios.
HISTORICAL_YEARS: tuple[int, int] = (1850, 2014)
SCENARIO_YEARS: tuple[int, int] = (2015, 2100)
#: ClimateBench's evaluation window (on the held-out ssp245).
TEST_YEARS: tuple[int, int] = (2080, 2100)

_SECONDS_PER_YEAR = 365.25 * 86400.0
_EARTH_AREA = 4.0 * np.pi * 6.371e6**2

# --------------------------------------------------------------------------- pathways
# (year, value) anchors, linearly interpolated; "hist" is shared, each scenario continues from 2014.
_GLOBAL = {
    # GtCO2 / yr
    "CO2 FFI": {
        "hist": [(1850, 0.2), (1900, 2.0), (1950, 6.0), (1970, 15.0), (1990, 22.5), (2000, 25.0), (2014, 36.0)],
        "ssp126": [(2020, 38.0), (2030, 30.0), (2050, 10.0), (2070, 0.0), (2080, -5.0), (2100, -9.0)],
        "ssp245": [(2020, 39.0), (2040, 42.0), (2060, 38.0), (2080, 24.0), (2100, 10.0)],
        "ssp370": [(2020, 40.0), (2050, 58.0), (2075, 70.0), (2100, 83.0)],
        "ssp585": [(2020, 41.0), (2050, 80.0), (2080, 120.0), (2100, 124.0)],
    },
    "CO2 AFOLU": {
        "hist": [(1850, 2.5), (1950, 4.5), (2000, 4.5), (2014, 4.2)],
        "ssp126": [(2050, -1.0), (2100, -3.0)],
        "ssp245": [(2050, 1.5), (2100, 0.0)],
        "ssp370": [(2050, 4.0), (2100, 3.0)],
        "ssp585": [(2050, 2.5), (2100, -0.5)],
    },
    # Mt CH4 / yr (anthropogenic)
    "CH4": {
        "hist": [(1850, 30.0), (1900, 70.0), (1950, 140.0), (1980, 300.0), (2000, 330.0), (2014, 380.0)],
        "ssp126": [(2030, 280.0), (2050, 200.0), (2100, 130.0)],
        "ssp245": [(2030, 400.0), (2050, 390.0), (2100, 240.0)],
        "ssp370": [(2030, 450.0), (2050, 550.0), (2100, 750.0)],
        "ssp585": [(2030, 450.0), (2050, 600.0), (2070, 650.0), (2100, 550.0)],
    },
    # Mt N2O / yr
    "N2O": {
        "hist": [(1850, 1.0), (1950, 3.0), (2014, 10.0)],
        "ssp126": [(2100, 6.0)],
        "ssp245": [(2100, 12.0)],
        "ssp370": [(2100, 17.0)],
        "ssp585": [(2100, 14.0)],
    },
}

#: Aerosol source regions: (lat, lon, sigma_lat, sigma_lon) in degrees.
_REGIONS = {
    "europe": (50.0, 15.0, 7.0, 15.0),
    "north_america": (40.0, 275.0, 7.0, 15.0),
    "east_asia": (32.0, 112.0, 7.0, 10.0),
    "south_asia": (24.0, 80.0, 6.0, 8.0),
    "africa": (5.0, 20.0, 10.0, 14.0),
    "south_america": (-15.0, 310.0, 10.0, 8.0),
    "middle_east": (28.0, 48.0, 5.0, 8.0),
    "southeast_asia": (5.0, 105.0, 6.0, 10.0),
}

# Mt SO2 / yr (anthropogenic) per region
_SO2 = {
    "europe": {"hist": [(1850, 1.0), (1900, 12.0), (1950, 30.0), (1975, 50.0), (1990, 35.0), (2005, 12.0), (2014, 6.0)],
               "ssp126": [(2030, 1.5), (2100, 0.5)], "ssp245": [(2030, 3.0), (2100, 1.5)],
               "ssp370": [(2030, 5.0), (2100, 4.0)], "ssp585": [(2030, 2.5), (2100, 1.0)]},
    "north_america": {"hist": [(1850, 0.5), (1900, 8.0), (1950, 22.0), (1975, 30.0), (1990, 25.0), (2005, 18.0),
                               (2014, 6.0)],
                      "ssp126": [(2030, 1.5), (2100, 0.5)], "ssp245": [(2030, 3.0), (2100, 1.5)],
                      "ssp370": [(2030, 5.0), (2100, 4.0)], "ssp585": [(2030, 2.5), (2100, 1.0)]},
    "east_asia": {"hist": [(1850, 0.3), (1950, 2.0), (1980, 12.0), (2000, 25.0), (2006, 38.0), (2014, 30.0)],
                  "ssp126": [(2030, 8.0), (2050, 3.0), (2100, 1.0)], "ssp245": [(2030, 18.0), (2050, 10.0), (2100, 4.0)],
                  "ssp370": [(2030, 32.0), (2050, 30.0), (2100, 20.0)], "ssp585": [(2030, 15.0), (2050, 7.0), (2100, 3.0)]},
    "south_asia": {"hist": [(1850, 0.1), (1950, 1.0), (1990, 5.0), (2014, 14.0)],
                   "ssp126": [(2025, 12.0), (2050, 3.0), (2100, 1.0)], "ssp245": [(2030, 18.0), (2050, 14.0), (2100, 5.0)],
                   "ssp370": [(2040, 26.0), (2070, 28.0), (2100, 24.0)],
                   "ssp585": [(2030, 17.0), (2050, 10.0), (2100, 3.0)]},
    "africa": {"hist": [(1850, 0.05), (1950, 1.0), (2014, 4.0)],
               "ssp126": [(2030, 3.5), (2100, 0.8)], "ssp245": [(2050, 8.0), (2100, 6.0)],
               "ssp370": [(2050, 12.0), (2100, 18.0)], "ssp585": [(2050, 6.0), (2100, 2.0)]},
    "south_america": {"hist": [(1850, 0.05), (1950, 1.0), (1990, 4.0), (2014, 5.0)],
                      "ssp126": [(2100, 0.5)], "ssp245": [(2050, 5.0), (2100, 2.0)],
                      "ssp370": [(2100, 8.0)], "ssp585": [(2100, 2.0)]},
    "middle_east": {"hist": [(1850, 0.05), (1950, 1.0), (1990, 6.0), (2014, 9.0)],
                    "ssp126": [(2100, 1.0)], "ssp245": [(2100, 5.0)], "ssp370": [(2100, 11.0)], "ssp585": [(2100, 4.0)]},
    "southeast_asia": {"hist": [(1850, 0.05), (1950, 0.5), (2014, 5.0)],
                       "ssp126": [(2100, 0.5)], "ssp245": [(2050, 7.0), (2100, 3.0)],
                       "ssp370": [(2100, 10.0)], "ssp585": [(2100, 3.0)]},
}

# Mt BC / yr (anthropogenic) per region
_BC = {
    "europe": {"hist": [(1850, 0.3), (1950, 0.8), (1990, 0.6), (2014, 0.35)],
               "ssp126": [(2100, 0.05)], "ssp245": [(2100, 0.15)], "ssp370": [(2100, 0.3)], "ssp585": [(2100, 0.1)]},
    "north_america": {"hist": [(1850, 0.2), (1950, 0.5), (1990, 0.4), (2014, 0.25)],
                      "ssp126": [(2100, 0.05)], "ssp245": [(2100, 0.12)], "ssp370": [(2100, 0.25)],
                      "ssp585": [(2100, 0.08)]},
    "east_asia": {"hist": [(1850, 0.3), (1950, 0.8), (2000, 1.8), (2014, 2.0)],
                  "ssp126": [(2050, 0.6), (2100, 0.2)], "ssp245": [(2050, 1.2), (2100, 0.5)],
                  "ssp370": [(2050, 2.0), (2100, 1.5)], "ssp585": [(2050, 0.8), (2100, 0.3)]},
    "south_asia": {"hist": [(1850, 0.2), (1950, 0.5), (2014, 1.3)],
                   "ssp126": [(2050, 0.5), (2100, 0.2)], "ssp245": [(2050, 1.3), (2100, 0.6)],
                   "ssp370": [(2050, 1.8), (2100, 1.8)], "ssp585": [(2050, 1.0), (2100, 0.4)]},
    "africa": {"hist": [(1850, 0.2), (1950, 0.5), (2014, 1.5)],
               "ssp126": [(2050, 1.0), (2100, 0.4)], "ssp245": [(2050, 2.0), (2100, 1.5)],
               "ssp370": [(2050, 2.5), (2100, 3.0)], "ssp585": [(2050, 1.5), (2100, 0.8)]},
    "south_america": {"hist": [(1850, 0.1), (1950, 0.3), (2014, 0.6)],
                      "ssp126": [(2100, 0.15)], "ssp245": [(2100, 0.4)], "ssp370": [(2100, 0.8)], "ssp585": [(2100, 0.3)]},
    "middle_east": {"hist": [(1850, 0.02), (2014, 0.15)],
                    "ssp126": [(2100, 0.03)], "ssp245": [(2100, 0.1)], "ssp370": [(2100, 0.2)], "ssp585": [(2100, 0.08)]},
    "southeast_asia": {"hist": [(1850, 0.1), (2014, 0.6)],
                       "ssp126": [(2100, 0.15)], "ssp245": [(2100, 0.5)], "ssp370": [(2100, 0.9)], "ssp585": [(2100, 0.3)]},
}

_ALL_SCENARIOS = ("historical", *SCENARIOS)


def _years() -> np.ndarray:
    return np.arange(HISTORICAL_YEARS[0], SCENARIO_YEARS[1] + 1)


def _path(anchors: Mapping[str, list], scenario: str) -> np.ndarray:
    """Yearly values 1850-2100 through the historical anchors then the scenario's (historical: held flat)."""
    points = list(anchors["hist"])
    if scenario != "historical":
        points += list(anchors[scenario])
    x, y = np.array(points, dtype=float).T
    return np.interp(_years(), x, y)


def _check_scenario(scenario: str) -> str:
    if scenario not in _ALL_SCENARIOS:
        raise DataError(f"unknown scenario {scenario!r}; expected one of {list(_ALL_SCENARIOS)}")
    return scenario


def emission_pathways(scenario: str) -> dict[str, Any]:
    """The stylised yearly emissions of ``scenario`` (1850-2100; the historical part is shared).

    Returns
    -------
    dict
        ``"year"``; global ``"CO2 FFI"``, ``"CO2 AFOLU"`` (GtCO2/yr), ``"CH4"`` (Mt/yr),
        ``"N2O"`` (Mt/yr); regional ``"SO2"`` and ``"BC"`` (Mt/yr, dicts region -> series).
        For ``"historical"`` the values after 2014 are held at their 2014 level.

    Examples
    --------
    >>> a, b = emission_pathways("ssp126"), emission_pathways("ssp585")
    >>> bool(np.array_equal(a["CH4"][:165], b["CH4"][:165])), int(a["year"][164])
    (True, 2014)
    >>> float(b["CO2 FFI"][-1]) > float(a["CO2 FFI"][-1])
    True
    """
    _check_scenario(scenario)
    out: dict[str, Any] = {"year": _years()}
    for name, anchors in _GLOBAL.items():
        out[name] = _path(anchors, scenario)
    out["SO2"] = {r: _path(a, scenario) for r, a in _SO2.items()}
    out["BC"] = {r: _path(a, scenario) for r, a in _BC.items()}
    return out


# --------------------------------------------------------------------------- FaIR
def cache_dir() -> Path:
    """Directory of cached generator output (the tutorial's: ``$XCLIMAX_DATA_DIR`` or ``~/.cache/xclimax``)."""
    from .tutorial import cache_dir as _cache_dir

    return _cache_dir()


def _fair_key() -> str:
    params = {"version": VERSION, "global": _GLOBAL, "so2": _SO2, "bc": _BC}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _run_fair() -> dict[str, np.ndarray]:
    """Run FaIR for every scenario, with and without anthropogenic aerosols."""
    try:
        from fair import FAIR
        from fair.interface import fill, initialise
        from fair.io import read_properties
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the ClimateBench demo data are generated with the FaIR simple climate model: "
            "pip install fair (or pip install xclimax[climatebench])"
        ) from err
    species = ["CO2 FFI", "CO2 AFOLU", "CO2", "CH4", "N2O", "Sulfur", "BC",
               "Aerosol-radiation interactions", "Aerosol-cloud interactions"]
    species, properties = read_properties(species=species)
    runs = [(s, aer) for s in _ALL_SCENARIOS for aer in (True, False)]
    names = [f"{s}|{'all' if aer else 'noaer'}" for s, aer in runs]
    f = FAIR(ch4_method="thornhill2021")
    f.define_time(HISTORICAL_YEARS[0], SCENARIO_YEARS[1] + 1, 1)
    f.define_scenarios(names)
    f.define_configs(["central"])
    f.define_species(species, properties)
    f.allocate()
    f.fill_species_configs()
    baseline = f.species_configs["baseline_emissions"].sel(config="central")
    for (scenario, aerosols), name in zip(runs, names, strict=True):
        e = emission_pathways(scenario)
        for specie in ("CO2 FFI", "CO2 AFOLU", "CH4", "N2O"):
            fill(f.emissions, e[specie], scenario=name, config="central", specie=specie)
        for specie, key in (("Sulfur", "SO2"), ("BC", "BC")):
            anthro = sum(e[key].values()) if aerosols else np.zeros(len(e["year"]))
            fill(f.emissions, float(baseline.sel(specie=specie)) + anthro, scenario=name, config="central", specie=specie)
    fill(f.climate_configs["ocean_heat_transfer"], [1.1, 1.6, 0.9], config="central")
    fill(f.climate_configs["ocean_heat_capacity"], [8.0, 14.0, 100.0], config="central")
    fill(f.climate_configs["deep_ocean_efficacy"], 1.1, config="central")
    initialise(f.concentration, 278.3, specie="CO2")
    initialise(f.concentration, 729.2, specie="CH4")
    initialise(f.concentration, 270.1, specie="N2O")
    initialise(f.forcing, 0)
    initialise(f.temperature, 0)
    initialise(f.cumulative_emissions, 0)
    initialise(f.airborne_emissions, 0)
    f.run(progress=False)

    def annual(da: xr.DataArray) -> np.ndarray:  # time bounds -> annual means (mean of the two bounds)
        v = np.asarray(da.values, dtype=float)
        return 0.5 * (v[:-1] + v[1:])

    out: dict[str, np.ndarray] = {}
    for scenario in _ALL_SCENARIOS:
        full = {k: v.sel(scenario=f"{scenario}|all", config="central") for k, v in
                (("T", f.temperature), ("F", f.forcing), ("C", f.concentration))}
        noaer = f.temperature.sel(scenario=f"{scenario}|noaer", config="central")
        out[f"{scenario}/tas"] = annual(full["T"].sel(layer=0))
        out[f"{scenario}/tas_deep"] = annual(full["T"].sel(layer=2))
        out[f"{scenario}/tas_noaer"] = annual(noaer.sel(layer=0))
        out[f"{scenario}/erf_co2"] = annual(full["F"].sel(specie="CO2"))
        out[f"{scenario}/co2_ppm"] = annual(full["C"].sel(specie="CO2"))
        out[f"{scenario}/ch4_ppb"] = annual(full["C"].sel(specie="CH4"))
    return out


def fair_response(*, cache: bool = True) -> dict[str, np.ndarray]:
    """FaIR's global response to every pathway (cached on disk).

    Returns
    -------
    dict
        ``"<scenario>/<name>"`` -> yearly series 1850-2100 for scenario in
        ``("historical", *SCENARIOS)`` and name in ``tas`` (surface temperature anomaly, K),
        ``tas_deep`` (deep-ocean layer, K), ``tas_noaer`` (without anthropogenic aerosols, K),
        ``erf_co2`` (W m-2), ``co2_ppm``, ``ch4_ppb``.

    Examples
    --------
    >>> r = fair_response()
    >>> bool(1.0 < r["ssp245/tas"][-1] < r["ssp585/tas"][-1] < 7.0)
    True
    """
    path = cache_dir() / f"climatebench-fair-v{VERSION}-{_fair_key()}.npz"
    if cache and path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    logger.info("running FaIR for %d pathways (with and without aerosols)", len(_ALL_SCENARIOS))
    out = _run_fair()
    if cache:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **out)

        atomic_write(path, write)  # readers see the old or the whole new file
    return out


# --------------------------------------------------------------------------- maps
def _blob(lat: np.ndarray, lon: np.ndarray, la: float, lo: float, sla: float, slo: float) -> np.ndarray:
    dlon = (lon[None, :] - lo + 180.0) % 360.0 - 180.0
    return np.exp(-0.5 * ((lat[:, None] - la) / sla) ** 2 - 0.5 * (dlon / slo) ** 2)


def _area_mean(field: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Area-weighted mean over the last two axes (lat, lon); ``w`` = cos(lat) weights."""
    return (field * w[:, None]).sum((-2, -1)) / (w.sum() * field.shape[-1])


class _Geography:
    """Patterns on one grid."""

    def __init__(self, nlat: int, nlon: int) -> None:
        lat, lon = grid_coords(nlat, nlon)
        self.lat, self.lon = lat, lon
        self.w = np.cos(np.deg2rad(lat))
        land = _land_fraction(lat, lon)
        self.land = land
        s = np.sin(np.deg2rad(lat))[:, None] * np.ones((1, nlon))
        mean = lambda f: float(_area_mean(f, self.w))  # noqa: E731
        # fast greenhouse warming per K of global warming: land > ocean, Arctic amplification,
        # slow Southern Ocean and North Atlantic
        a = (0.75 + 0.55 * land) * (1.0 + 1.1 * np.clip(s, 0, None) ** 4)
        a *= 1.0 - 0.5 * np.exp(-0.5 * ((lat[:, None] + 55.0) / 10.0) ** 2)
        a *= 1.0 - 0.6 * _blob(lat, lon, 55.0, 330.0, 8.0, 15.0)
        self.fast = a / mean(a)
        # slow pattern of the deep-ocean warming (zero global mean)
        b = 2.0 * np.exp(-0.5 * ((lat[:, None] + 55.0) / 10.0) ** 2) * np.ones((1, nlon))
        b += 2.0 * _blob(lat, lon, 55.0, 330.0, 8.0, 15.0)
        self.slow = b - mean(b)
        # saturating Arctic amplification (zero global mean)
        arc = np.clip(s, 0, None) ** 6 * (0.6 + 0.4 * land)
        self.arctic = arc / max(arc.max(), 1e-12) - mean(arc / max(arc.max(), 1e-12))
        # Northern-Hemisphere weighting of the remote aerosol cooling (mean 1)
        nh = 1.0 + 0.8 * np.tanh(lat[:, None] / 20.0) * np.ones((1, nlon))
        self.nh = nh / mean(nh)
        # precipitation: hydrological sensitivity (mean 1), fast CO2 adjustment (mean 1), ITCZ dipole
        itcz = np.exp(-0.5 * ((lat[:, None] - 5.0) / 8.0) ** 2)
        subtrop = np.exp(-0.5 * ((np.abs(lat[:, None]) - 25.0) / 7.0) ** 2)
        highlat = np.clip(np.abs(s) - 0.7, 0, None) * 3.0
        h = np.clip(1.0 + 1.6 * itcz - 0.9 * subtrop + 0.8 * highlat, 0.1, None) * np.ones((1, nlon))
        self.hydro = h / mean(h)
        fco2 = (1.3 - 0.6 * land)
        self.fast_pr = fco2 / mean(fco2)
        self.dipole = (np.exp(-0.5 * ((lat[:, None] - 8.0) / 8.0) ** 2)
                       - np.exp(-0.5 * ((lat[:, None] + 8.0) / 8.0) ** 2)) * np.ones((1, nlon))
        ext = 1.0 + 0.3 * itcz * np.ones((1, nlon))
        self.extreme = ext / mean(ext)
        # emission kernels (per m2, unit global integral) and downwind aerosol kernels (mean 1)
        cell = (np.deg2rad(180.0 / nlat) * np.deg2rad(360.0 / nlon) * 6.371e6**2) * self.w[:, None]
        self.kernels, self.plumes = {}, {}
        for region, (la, lo, sla, slo) in _REGIONS.items():
            k = _blob(lat, lon, la, lo, sla, slo) * (0.3 + 0.7 * land)
            self.kernels[region] = k / (k * cell).sum()
            p = _blob(lat, lon, la + 3.0, lo + 15.0, 1.8 * sla, 1.8 * slo)
            self.plumes[region] = p / mean(p)
        # smooth random fields: Gaussian bumps at quasi-uniform points (Fibonacci sphere)
        n = 96
        k = np.arange(n) + 0.5
        plat = np.rad2deg(np.arcsin(1 - 2 * k / n))
        plon = (np.rad2deg(np.pi * (1 + 5**0.5) * k)) % 360.0
        basis = np.stack([_blob(lat, lon, a, o, 15.0, 15.0 / max(np.cos(np.deg2rad(a)), 0.3)) for a, o in zip(plat, plon)])
        self.noise_basis = basis / np.sqrt((basis**2).sum(0).mean())


def _noise(geo: _Geography, scenario: str, variable: str, seed: int, n_hist: int, n_total: int,
           rho: float = 0.4) -> np.ndarray:
    """AR(1) smooth noise (unit variance), the historical part shared by all scenarios."""
    def draws(tag: str, n: int) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(f"{tag}/{variable}".encode())])
        return rng.standard_normal((n, geo.noise_basis.shape[0]))

    eps = draws("historical", n_hist)
    if n_total > n_hist:
        eps = np.concatenate([eps, draws(scenario, n_total - n_hist)])
    coef = np.empty_like(eps)
    coef[0] = eps[0]
    scale = np.sqrt(1 - rho**2)
    for t in range(1, len(eps)):
        coef[t] = rho * coef[t - 1] + scale * eps[t]
    return np.einsum("tk,kij->tij", coef, geo.noise_basis)


def _fields(scenario: str, geo: _Geography, fair: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Yearly inputs and responses (1850-2100) of one scenario on ``geo``'s grid."""
    e = emission_pathways(scenario)
    years = e["year"]
    n = len(years)
    n_hist = HISTORICAL_YEARS[1] - HISTORICAL_YEARS[0] + 1
    to_flux = 1e9 / _SECONDS_PER_YEAR  # Mt/yr -> kg/s
    so2 = sum(e["SO2"][r][:, None, None] * geo.kernels[r][None] for r in _REGIONS) * to_flux
    bc = sum(e["BC"][r][:, None, None] * geo.kernels[r][None] for r in _REGIONS) * to_flux
    so2_total = sum(e["SO2"].values())
    bc_total = sum(e["BC"].values())
    # aerosol burden patterns downwind of the current sources (global mean 1)
    plume_s = sum(e["SO2"][r][:, None, None] * geo.plumes[r][None] for r in _REGIONS) / so2_total[:, None, None]
    plume_b = sum(e["BC"][r][:, None, None] * geo.plumes[r][None] for r in _REGIONS) / bc_total[:, None, None]

    t_all = fair[f"{scenario}/tas"]
    t_ghg = fair[f"{scenario}/tas_noaer"]
    t_aer = t_all - t_ghg
    t_deep = fair[f"{scenario}/tas_deep"]
    erf_co2 = fair[f"{scenario}/erf_co2"]
    col = lambda v: v[:, None, None]  # noqa: E731

    def noise(name: str, std: float) -> np.ndarray:
        return std * _noise(geo, scenario, name, seed, min(n_hist, n), n)

    tas = (col(t_ghg) * geo.fast[None] + 1.5 * col(t_deep) * geo.slow[None]
           + 2.0 * col(1.0 - np.exp(-np.clip(t_ghg, 0, None) / 1.5)) * geo.arctic[None]
           + col(t_aer) * (0.4 * geo.nh[None] + 0.6 * plume_s) + noise("tas", 0.18))
    dtr = (-0.08 * col(t_ghg) * (0.2 + geo.land)[None] + 0.08 * col(t_aer) * plume_s * (0.3 + geo.land)[None]
           + noise("diurnal_temperature_range", 0.05))
    bc_anthro = col(bc_total)
    pr = (0.073 * col(t_all) * geo.hydro[None] - 0.02 * col(erf_co2) * geo.fast_pr[None]
          + 0.5 * col(t_aer) * geo.dipole[None] - 0.004 * bc_anthro * plume_b + noise("pr", 0.07))
    pr90 = (0.55 * col(t_all) * geo.extreme[None] - 0.05 * col(erf_co2) * geo.fast_pr[None]
            + 1.0 * col(t_aer) * geo.dipole[None] - 0.01 * bc_anthro * plume_b + noise("pr90", 0.25))
    co2_cum = np.cumsum(e["CO2 FFI"] + e["CO2 AFOLU"])
    return {
        "CO2": co2_cum, "CH4": e["CH4"] / 1000.0, "SO2": so2, "BC": bc,
        "tas": tas, "diurnal_temperature_range": dtr, "pr": pr / 86400.0, "pr90": pr90 / 86400.0,
        "co2_concentration": fair[f"{scenario}/co2_ppm"], "ch4_concentration": fair[f"{scenario}/ch4_ppb"],
    }


_ATTRS = {
    "CO2": {"units": "Gt", "long_name": "cumulative anthropogenic CO2 emissions since 1850 (as GtCO2)",
            "comment": "global total, fossil and land use, as ClimateBench"},
    "CH4": {"units": "Gt yr-1", "long_name": "anthropogenic CH4 emissions (as GtCH4 per year)",
            "comment": "global total, as ClimateBench"},
    "SO2": {"standard_name": "tendency_of_atmosphere_mass_content_of_sulfur_dioxide_due_to_emission",
            "units": "kg m-2 s-1", "long_name": "anthropogenic SO2 emissions"},
    "BC": {"standard_name": "tendency_of_atmosphere_mass_content_of_elemental_carbon_dry_aerosol_particles_due_to_emission",
           "units": "kg m-2 s-1", "long_name": "anthropogenic black carbon emissions"},
    "tas": {"standard_name": "air_temperature_anomaly", "units": "K",
            "long_name": "near-surface (2 m) air temperature, difference from pre-industrial control",
            "cell_methods": "time: mean"},
    "diurnal_temperature_range": {"units": "K", "cell_methods": "time: mean",
                                  "long_name": "diurnal temperature range (tasmax - tasmin), difference from pre-industrial control"},
    "pr": {"standard_name": "precipitation_flux", "units": "kg m-2 s-1", "cell_methods": "time: mean",
           "long_name": "precipitation, difference from pre-industrial control"},
    "pr90": {"units": "kg m-2 s-1", "cell_methods": "time: mean",
             "long_name": "90th percentile of daily precipitation, difference from pre-industrial control"},
    "co2_concentration": {"standard_name": "mole_fraction_of_carbon_dioxide_in_air", "units": "1e-6",
                          "long_name": "global mean CO2 concentration (FaIR)"},
    "ch4_concentration": {"standard_name": "mole_fraction_of_methane_in_air", "units": "1e-9",
                          "long_name": "global mean CH4 concentration (FaIR)"},
}


def _time_axis(years: np.ndarray, calendar: str) -> xr.Variable:
    """Mid-year (1 July) time stamps of ``years`` in ``calendar`` (datetime64 for "standard")."""
    if calendar in ("standard", "gregorian"):
        values: Any = pd.to_datetime([f"{y:04d}-07-01" for y in years])
    else:
        import cftime

        try:
            values = np.array([cftime.datetime(int(y), 7, 1, calendar=calendar) for y in years])
        except (ValueError, TypeError) as err:
            raise DataError(f"unknown calendar {calendar!r}: expected a CF calendar such as 'noleap'") from err
    attrs = {"standard_name": "time", "long_name": "time", "axis": "T", "comment": "annual means stamped at 1 July"}
    return xr.Variable("time", values, attrs)


def open_climatebench(
    scenarios: str | Sequence[str] = SCENARIOS,
    *,
    grid: tuple[int, int] = (32, 64),
    calendar: str = "standard",
    seed: int = 0,
    chunks: Mapping[str, int] | None = None,
    cache: bool = True,
) -> xr.Dataset:
    """Open synthetic data with ClimateBench's structure (see the module docstring).

    Parameters
    ----------
    scenarios : str or sequence of str
        Any of ``"historical"``, ``"ssp126"``, ``"ssp245"``, ``"ssp370"``, ``"ssp585"``. A
        scenario series runs 1850-2100: the shared historical period, then the scenario from
        2015 (as ClimaX concatenates ClimateBench's files). ``"historical"`` alone covers
        1850-2014. A list gives a ``scenario`` dimension (``"historical"`` is NaN after 2014);
        a single name gives no such dimension (a scalar ``scenario`` coordinate).
    grid : (int, int)
        Number of latitudes and longitudes (global, cell centres; ClimaX's 32 x 64 by default).
    calendar : str
        CF calendar of the yearly time axis (stamped at 1 July): ``"standard"`` gives
        datetime64, others (``"noleap"``, ``"360_day"``, ...) cftime objects.
    seed : int
        Seed of the internal variability (the forced response does not depend on it).
    chunks : dict, optional
        Chunk the result with dask.
    cache : bool
        Cache FaIR's output in :func:`cache_dir` (the maps are recomputed, which is fast).

    Returns
    -------
    xarray.Dataset
        Inputs ``CO2`` (Gt, cumulative; dims ``time``), ``CH4`` (Gt yr-1; ``time``), ``SO2`` and
        ``BC`` (kg m-2 s-1; ``time, lat, lon``); outputs ``tas``, ``diurnal_temperature_range``
        (K), ``pr`` and ``pr90`` (kg m-2 s-1), all differences from a pre-industrial control;
        auxiliary ``co2_concentration`` (ppm) and ``ch4_concentration`` (ppb) from FaIR.
        float32, CF-annotated, with a leading ``scenario`` dimension when several are asked for.

    Raises
    ------
    DataError
        Unknown scenario or calendar, or a bad grid.

    Examples
    --------
    >>> ds = open_climatebench("ssp245", grid=(8, 16), calendar="noleap")
    >>> dict(ds.sizes), ds["tas"].attrs["units"], ds.time.dt.calendar
    ({'time': 251, 'lat': 8, 'lon': 16}, 'K', 'noleap')
    >>> late = ds["tas"].sel(time=ds.time.dt.year >= 2080).mean()
    >>> 1.5 < float(late) < 4.0
    True
    """
    single = isinstance(scenarios, str)
    names = [scenarios] if single else list(scenarios)
    if not names or len(set(names)) != len(names):
        raise DataError(f"scenarios must be distinct names from {list(_ALL_SCENARIOS)}; got {names}")
    for s in names:
        _check_scenario(s)
    nlat, nlon = (int(g) for g in grid)
    if nlat < 2 or nlon < 4 or nlat > 512 or nlon > 1024:
        raise DataError(f"grid must be (nlat, nlon) with 2 <= nlat <= 512 and 4 <= nlon <= 1024; got {grid}")
    fair = fair_response(cache=cache)
    geo = _Geography(nlat, nlon)
    years = _years()
    n_hist = HISTORICAL_YEARS[1] - HISTORICAL_YEARS[0] + 1
    per = []
    for s in names:
        fields = _fields(s, geo, fair, seed)
        if s == "historical":  # the historical experiment ends in 2014
            if single:
                fields = {k: v[:n_hist] for k, v in fields.items()}
            else:
                fields = {k: np.concatenate([v[:n_hist], np.full_like(v[n_hist:], np.nan)]) for k, v in fields.items()}
        per.append(fields)
    yrs = years[:n_hist] if (single and names[0] == "historical") else years
    coords = {
        "time": _time_axis(yrs, calendar),
        "lat": xr.Variable("lat", geo.lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y",
                                             "long_name": "latitude"}),
        "lon": xr.Variable("lon", geo.lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X",
                                             "long_name": "longitude"}),
    }
    ds = xr.Dataset(coords=coords)
    lead = () if single else ("scenario",)
    for var, attrs in _ATTRS.items():
        data = per[0][var] if single else np.stack([p[var] for p in per])
        dims = lead + (("time",) if data.ndim == len(lead) + 1 else ("time", "lat", "lon"))
        ds[var] = xr.Variable(dims, data.astype(np.float32), dict(attrs))
    ds = ds.assign_coords(scenario=names[0] if single else ("scenario", names))
    ds["scenario"].attrs = {"long_name": "experiment: historical (1850-2014) followed by the scenario (2015-2100)"}
    ds.attrs = {
        "title": "xclimax ClimateBench-like dataset (SYNTHETIC)",
        "source": (
            "stylised CMIP6/SSP-like emission pathways -> FaIR v2 simple climate model (global response) -> "
            "idealised spatial patterns, aerosol plumes and internal variability (xclimax.demo.climatebench)"
        ),
        "synthetic": "yes",
        "institution": "xclimax",
        "history": f"created by xclimax {__version__} xclimax.tutorial.open_climatebench (generator version {VERSION}, "
                   f"seed {seed})",
        "Conventions": "CF-1.8",
        "forcings": ",".join(FORCINGS),
        "responses": ",".join(RESPONSES),
        "scenario_start_year": str(SCENARIO_YEARS[0]),
        "test_scenario": "ssp245",
        "test_years": f"{TEST_YEARS[0]}-{TEST_YEARS[1]}",
        "note": "outputs are differences from a pre-industrial control, as in ClimateBench",
    }
    if chunks:
        ds = ds.chunk(dict(chunks))
    return ds
