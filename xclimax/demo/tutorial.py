"""Bundled demo data and demo model.

:func:`open_dataset` returns a **synthetic** ERA5-like dataset (global 5.625 degrees, 6-hourly,
WeatherBench 2 names and CF attributes) generated on the fly by :mod:`xclimax.atmosphere`, a
forced-dissipative spectral shallow-water model with an equivalent-barotropic vertical
structure.  Nothing is downloaded; the model output is cached on disk (``XCLIMAX_DATA_DIR`` or
``~/.cache/xclimax``).  :func:`load_model` returns a small ClimaX trained on the demo training
years by ``scripts/train_demo_model.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .._utils import atomic_write
from .._version import __version__
from ..cf.grid import grid_coords
from ..exceptions import DataError
from ..vocab import PRESSURE_VARIABLES
from . import atmosphere
from .climatebench import open_climatebench  # ClimateBench-like projection data (FaIR-driven)

__all__ = [
    "DEMO_YEARS", "DEMO_LEVELS", "SPLITS", "VERSION", "cache_dir", "open_dataset", "split", "load_model", "DEMO_MODEL_PATH",
    "open_climatebench",
]

logger = logging.getLogger(__name__)

#: Version of the demo data generator: bump when :mod:`xclimax.atmosphere` output changes.
VERSION = 3
#: The calendar years of the default demo dataset (each an independent realisation).
DEMO_YEARS: tuple[int, ...] = (2000, 2001, 2002)
#: The pressure levels (hPa) of the demo dataset, a subset of the ClimaX levels.
DEMO_LEVELS: tuple[int, ...] = (250, 500, 850)
#: Train / held-out split of the default dataset (time slices, usable with ``ds.sel(time=...)``).
SPLITS: dict[str, slice] = {
    "train": slice("2000-01-01", "2001-12-31T18:00"),
    "test": slice("2002-01-01", "2002-12-31T18:00"),
}
#: The bundled demo model, written by ``scripts/train_demo_model.py``.
DEMO_MODEL_PATH = Path(__file__).parent.parent / "data" / "demo_model.safetensors"

_SURFACE_ATTRS = {
    "2m_temperature": ("air_temperature", "K", "2 metre temperature"),
    "10m_u_component_of_wind": ("eastward_wind", "m s-1", "10 metre U wind component"),
    "10m_v_component_of_wind": ("northward_wind", "m s-1", "10 metre V wind component"),
    "land_sea_mask": ("land_binary_mask", "1", "Land-sea mask"),
    "geopotential_at_surface": ("surface_geopotential", "m2 s-2", "Geopotential at surface"),
}


def cache_dir() -> Path:
    """Directory of cached demo data: ``$XCLIMAX_DATA_DIR`` or ``~/.cache/xclimax``.

    Examples
    --------
    >>> cache_dir().name in ("xclimax", os.environ.get("XCLIMAX_DATA_DIR", "xclimax").rstrip("/").split("/")[-1])
    True
    """
    return Path(os.environ.get("XCLIMAX_DATA_DIR") or Path.home() / ".cache" / "xclimax")


def _key(seed: int, days: float | None) -> str:
    params = {
        "version": VERSION, "seed": seed, "days": days, "config": atmosphere.AtmosphereConfig().to_dict(),
        "geography": [atmosphere._CONTINENTS, atmosphere._MOUNTAINS],
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _state_path(year: int, seed: int, days: float | None) -> Path:
    return cache_dir() / f"demo-v{VERSION}-{_key(seed, days)}-{year}.nc"


def _year_state(year: int, seed: int, days: float | None, cache: bool) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Model state of one year, from the cache or freshly integrated (then cached atomically)."""
    path = _state_path(year, seed, days)
    if cache and path.exists():
        with xr.open_dataset(path) as f:
            f = f.load()
        return pd.DatetimeIndex(f["time"].values), {k: f[k].values for k in f.data_vars}
    lat, lon = grid_coords(32, 64)
    time, state = atmosphere.simulate_year(year, lat, lon, seed=seed, days=days)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = xr.Dataset({k: (("time", "lat", "lon"), v) for k, v in state.items()}, coords={"time": time})
        out.attrs = {"description": f"xclimax.atmosphere state for the demo year {year} (synthetic)"}
        atomic_write(path, out.to_netcdf)  # readers see the old or the whole new file
    return time, state


def _year_file(year: int, seed: int, days: float | None) -> tuple[pd.DatetimeIndex, Path]:
    """The times and the cached state file of one year (integrated and written first when missing)."""
    path = _state_path(year, seed, days)
    if not path.exists():
        _year_state(year, seed, days, True)
    with xr.open_dataset(path) as f:
        return pd.DatetimeIndex(f["time"].values), path


def _derive_piece(parts: tuple[tuple[str, int, int], ...]) -> dict[str, np.ndarray]:
    """The demo fields of time steps ``[a, b)`` of cached state files (a task of ``open_dataset(chunks=...)``)."""
    lat, lon = grid_coords(32, 64)
    out = []
    for path, a, b in parts:
        with xr.open_dataset(path) as f:
            f = f.isel(time=slice(a, b)).load()
        state = {k: f[k].values for k in f.data_vars}
        out.append(atmosphere.derive_fields(pd.DatetimeIndex(f["time"].values), lat, lon, state, levels=DEMO_LEVELS))
    return {k: np.concatenate([o[k] for o in out]) if out[0][k].ndim > 2 else out[0][k] for k in out[0]}


def _time_chunk(chunks: Any, n: int) -> int | None:
    """The time chunk of ``open_dataset(chunks=...)``: an int, the whole axis, or None (other forms)."""
    if not isinstance(chunks, dict):
        return None
    step = chunks.get("time", -1)
    if step is None or step == -1:
        return n
    return int(step) if isinstance(step, (int, np.integer)) and not isinstance(step, bool) and step > 0 else None


def _lazy_fields(paths: Sequence[Path], sizes: Sequence[int], step: int) -> dict[str, Any]:
    """Dask-backed demo fields: one task per time chunk derives that chunk from the cached state files.

    The graph holds file names and slices, never the data: a cluster's workers compute their
    chunks themselves (they must see :func:`cache_dir`) instead of receiving them from the client.
    """
    import dask
    import dask.array as dsa

    probe = _derive_piece(((str(paths[0]), 0, 1),))  # shapes, dtypes and the constant fields
    offsets = np.cumsum([0, *sizes])
    pieces = []
    for a in range(0, int(offsets[-1]), step):
        b = min(int(offsets[-1]), a + step)
        parts = tuple((str(p), int(max(a, lo) - lo), int(min(b, hi) - lo))
                      for p, lo, hi in zip(paths, offsets[:-1], offsets[1:]) if a < hi and b > lo)
        pieces.append((b - a, dask.delayed(_derive_piece, pure=True)(parts)))
    out: dict[str, Any] = {}
    for var, value in probe.items():
        if value.ndim == 2:
            out[var] = value
        else:
            out[var] = dsa.concatenate([dsa.from_delayed(d[var], (m, *value.shape[1:]), dtype=value.dtype)
                                        for m, d in pieces])
    return out


def _years(years: int | Sequence[int]) -> list[int]:
    if isinstance(years, (int, np.integer)) and not isinstance(years, bool):
        if not 1 <= years <= 50:
            raise DataError(f"years must be a number of years between 1 and 50 or a list of calendar years; got {years}")
        return [DEMO_YEARS[0] + i for i in range(int(years))]
    try:
        out = [int(y) for y in ([years] if isinstance(years, str) else years)]
    except (TypeError, ValueError):
        raise DataError(f"years must be a number of years or a list of calendar years; got {years!r}") from None
    if not out or len(set(out)) != len(out) or any(not 1900 <= y <= 2200 for y in out):
        raise DataError(f"years must be distinct calendar years between 1900 and 2200; got {list(years)}")
    return sorted(out)


def open_dataset(
    name: str = "demo",
    *,
    years: int | Sequence[int] = len(DEMO_YEARS),
    chunks: dict[str, int] | None = None,
    cache: bool = True,
    seed: int = 0,
    days: float | None = None,
) -> xr.Dataset:
    """Open the synthetic ERA5-like demo dataset.

    The data come from :mod:`xclimax.atmosphere`, a forced-dissipative spectral (T21) shallow-water
    model of the atmosphere with seasonal forcing, orography and storm-track eddies, evaluated on
    the ClimaX 5.625 degree grid (32 x 64) every 6 hours.  They are **synthetic**: ERA5-like in
    names, units and magnitudes, not real weather.  Each calendar year is an independent
    realisation (the model is spun up from rest for 30 days before 1 January), so the series is
    not continuous across 31 December -> 1 January.

    Parameters
    ----------
    name : {"demo"}
        The dataset.
    years : int or sequence of int
        Number of years from 2000 (default 3: 2000-2002, see :data:`SPLITS`) or a list of calendar
        years, e.g. ``[2002]`` for the held-out year alone.  A year is the same whatever else is
        requested.
    chunks : dict, optional
        Chunk the result with dask (e.g. ``{"time": 124}``). With ``cache`` each time chunk is
        one task that derives its fields from the cached model output, so the task graph stays
        small (nothing large is sent to a dask cluster; its workers must see :func:`cache_dir`).
    cache : bool
        Read and write the model output in :func:`cache_dir` (files keyed by generator version and
        parameters, written atomically).
    seed : int
        Seed of the stochastic forcing.
    days : float, optional
        Keep only the first ``days`` days of each year (quick examples and tests); they equal the
        first ``days`` days of the full year.

    Returns
    -------
    xarray.Dataset
        ``geopotential``, ``temperature``, ``u_component_of_wind``, ``v_component_of_wind`` and
        ``specific_humidity`` on ``level`` (:data:`DEMO_LEVELS`: 250, 500, 850 hPa);
        ``2m_temperature``, ``10m_u_component_of_wind``, ``10m_v_component_of_wind``; constants
        ``land_sea_mask`` and ``geopotential_at_surface``.  float32, CF-annotated (about 215 MB a year).

    Raises
    ------
    DataError
        For an unknown name or bad ``years``.

    Examples
    --------
    >>> ds = open_dataset(years=[2000], days=0.5, cache=False)
    >>> dict(ds.sizes)
    {'time': 2, 'level': 3, 'lat': 32, 'lon': 64}
    >>> ds["geopotential"].attrs["standard_name"], ds.attrs["synthetic"]
    ('geopotential', 'yes')
    """
    if name != "demo":
        raise DataError(f"unknown tutorial dataset {name!r}; expected 'demo'")
    wanted = _years(years)
    lat, lon = grid_coords(32, 64)
    times, fields, paths = [], [], []
    lazy = bool(chunks) and cache and _time_chunk(chunks, 1) is not None  # chunks derived by their own tasks
    for year in wanted:
        if lazy:
            time, path = _year_file(year, seed, days)
            paths.append(path)
        else:
            time, state = _year_state(year, seed, days, cache)
            fields.append(atmosphere.derive_fields(time, lat, lon, state, levels=DEMO_LEVELS))
        times.append(time)
    time = times[0].append(times[1:]) if len(times) > 1 else times[0]
    if lazy:
        fields = [_lazy_fields(paths, [len(t) for t in times], _time_chunk(chunks, len(time)))]
    coords = {
        "time": ("time", time, {"standard_name": "time", "long_name": "time", "axis": "T"}),
        "level": ("level", np.asarray(DEMO_LEVELS, dtype=np.int64), {
            "standard_name": "air_pressure", "units": "hPa", "positive": "down", "axis": "Z", "long_name": "pressure level",
        }),
        "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y", "long_name": "latitude"}),
        "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X", "long_name": "longitude"}),
    }
    ds = xr.Dataset(coords={k: xr.Variable(*v) for k, v in coords.items()})
    for var in fields[0]:
        if var in PRESSURE_VARIABLES:
            sn, units, long_name = PRESSURE_VARIABLES[var]
            attrs, dims = {"standard_name": sn[0], "units": units, "long_name": long_name}, ("time", "level", "lat", "lon")
        else:
            sn, units, long_name = _SURFACE_ATTRS[var]
            attrs = {"standard_name": sn, "units": units, "long_name": long_name}
            dims = ("lat", "lon") if var in ("land_sea_mask", "geopotential_at_surface") else ("time", "lat", "lon")
        data = fields[0][var] if len(dims) == 2 else np.concatenate([f[var] for f in fields])
        ds[var] = xr.Variable(dims, data, attrs)
    held_out = wanted[-1:] if len(wanted) > 1 else []
    ds.attrs = {
        "title": "xclimax demo dataset (SYNTHETIC, ERA5-like)",
        "source": (
            "generated by xclimax.atmosphere, a forced-dissipative spectral (T21) shallow-water model of the "
            "atmosphere with an equivalent-barotropic vertical structure; synthetic data, not ERA5 or any observation"
        ),
        "synthetic": "yes",
        "institution": "xclimax",
        "history": f"created by xclimax {__version__} xclimax.tutorial.open_dataset (generator version {VERSION}, seed {seed})",
        "Conventions": "CF-1.8",
        "grid": "global 5.625 degree equiangular, cell centres (ClimaX 32x64 grid)",
        "years": ",".join(map(str, wanted)),
        "train_years": ",".join(str(y) for y in wanted if y not in held_out),
        "test_years": ",".join(map(str, held_out)),
        "note": "each calendar year is an independent realisation: no continuity across 31 Dec -> 1 Jan",
        "generator_config": json.dumps(atmosphere.AtmosphereConfig().to_dict()),
    }
    if chunks and not lazy:
        ds = ds.chunk(chunks)
    elif lazy and any(k != "time" for k in chunks):
        ds = ds.chunk({k: v for k, v in chunks.items() if k != "time"})
    return ds


def split(ds: xr.Dataset) -> dict[str, xr.Dataset]:
    """Split a demo dataset into its ``"train"`` years and its held-out ``"test"`` year (the last).

    Examples
    --------
    >>> ds = open_dataset(years=[2000, 2001], days=0.25, cache=False)
    >>> parts = split(ds)
    >>> int(parts["train"].time.dt.year[0]), int(parts["test"].time.dt.year[0])
    (2000, 2001)
    """
    try:
        train = [int(y) for y in ds.attrs["train_years"].split(",") if y]
        test = [int(y) for y in ds.attrs["test_years"].split(",") if y]
    except (KeyError, ValueError) as err:
        raise DataError(f"expected a demo dataset with 'train_years'/'test_years' attrs; found attrs {sorted(ds.attrs)}") from err
    year = ds["time"].dt.year
    return {"train": ds.sel(time=year.isin(train)), "test": ds.sel(time=year.isin(test))}


def load_model(path: str | os.PathLike[str] | None = None) -> Any:
    """Load the bundled demo ClimaX (trained on the demo dataset's training years).

    The model takes all demo variables (5 fields on 3 levels, 3 surface fields, plus
    ``land_sea_mask``, ``orography`` and ``lattitude``) and predicts the 18 time-varying ones
    (``model.metadata["out_variables"]``) 24 h ahead; roll it out with
    ``xclimax.forecast(ds, model, lead_time="24h", steps=n)``.  ``model.stats`` holds its
    normalisation statistics and ``model.metadata`` its training provenance and its scores on the
    held-out year.

    Parameters
    ----------
    path : str or path-like, optional
        Another checkpoint to load instead (default: :data:`DEMO_MODEL_PATH`).

    Examples
    --------
    >>> model = load_model()
    >>> model.img_size, model.metadata["time_step_hours"], model.metadata["lead_time"]
    ((32, 64), 6, '24h')
    """
    from ..nn.checkpoint import load_checkpoint

    return load_checkpoint(DEMO_MODEL_PATH if path is None else path)
