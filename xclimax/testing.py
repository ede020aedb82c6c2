"""Helpers for tests, docs and examples: small synthetic CF-annotated datasets.

The fields are smooth travelling waves around realistic climatological values. They are
for exercising code paths (mapping, batching, shapes), not for learning weather: use
:func:`xclimax.tutorial.open_dataset` for data with real dynamics.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .cf.grid import grid_coords
from .vocab import G0, PRESSURE_LEVELS

__all__ = ["synthetic_dataset", "grid_coords"]

# base name -> (ERA5/WB2 name, CMIP name, standard_name, units, typical value (func of level), amplitude)
_PRESSURE = {
    "geopotential": ("geopotential", "zg", "geopotential", "m2 s-2", lambda p: G0 * 16000 * np.log(1000 / p) / 1.0 * 0.45, 800.0),
    "u_component_of_wind": ("u_component_of_wind", "ua", "eastward_wind", "m s-1", lambda p: 5 + 10 * (1000 - p) / 1000, 8.0),
    "v_component_of_wind": ("v_component_of_wind", "va", "northward_wind", "m s-1", lambda p: 0 * p, 6.0),
    "temperature": ("temperature", "ta", "air_temperature", "K", lambda p: 288 * (p / 1000) ** 0.19, 8.0),
    "relative_humidity": ("relative_humidity", "hur", "relative_humidity", "%", lambda p: 30 + 40 * p / 1000, 15.0),
    "specific_humidity": ("specific_humidity", "hus", "specific_humidity", "kg kg-1", lambda p: 1e-2 * (p / 1000) ** 3, 1e-3),
}
_SURFACE = {
    "2m_temperature": ("2m_temperature", "tas", "air_temperature", "K", 2.0, 285.0, 12.0),
    "10m_u_component_of_wind": ("10m_u_component_of_wind", "uas", "eastward_wind", "m s-1", 10.0, 1.0, 5.0),
    "10m_v_component_of_wind": ("10m_v_component_of_wind", "vas", "northward_wind", "m s-1", 10.0, 0.0, 4.0),
}


def _wave(rng, t_hours, lat, lon, amplitude):
    """Sum of a few travelling zonal waves modulated in latitude: shape (time, lat, lon)."""
    out = np.zeros((t_hours.size, lat.size, lon.size))
    latr, lonr = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    for _ in range(3):
        k = rng.integers(1, 6)
        m = rng.integers(1, 4)
        c = rng.uniform(-10, 10)  # degrees per day
        phase = rng.uniform(0, 2 * np.pi)
        a = rng.uniform(0.3, 1.0)
        shift = np.deg2rad(c * t_hours / 24.0)[:, None, None]
        out += a * np.cos(k * (lonr[None] - shift) + phase) * np.cos(latr[None]) ** m
    return amplitude * out / 2


def synthetic_dataset(
    nt: int = 8,
    *,
    variables: Iterable[str] | None = None,
    levels: Sequence[int] = PRESSURE_LEVELS,
    grid: tuple[int, int] = (32, 64),
    style: str = "era5",
    freq: str = "6h",
    start: str = "2000-01-01",
    constants: bool = True,
    chunks: dict | None = None,
    seed: int = 0,
    calendar: str | None = None,
) -> xr.Dataset:
    """A small CF-annotated dataset shaped like WeatherBench 2 ERA5 or CMIP6 output.

    Parameters
    ----------
    nt : int
        Number of time steps.
    variables : iterable of str, optional
        ClimaX base names to include (``"geopotential"``, ``"2m_temperature"``, ...); default all.
    levels : sequence of int
        Pressure levels in hPa.
    grid : (int, int)
        Number of latitudes and longitudes (global, equiangular, cell centres).
    style : {"era5", "cmip"}
        ``"era5"``: WeatherBench 2 names, ``level`` in hPa, geopotential in m2 s-2.
        ``"cmip"``: CMIP6 names (``zg``, ``ta``, ...), ``plev`` in Pa, geopotential *height* in m.
    freq : str
        Time step.
    constants : bool
        Include land-sea mask and orography (era5 style only).
    chunks : dict, optional
        If given, the result is chunked with dask.
    seed : int
        Random seed.
    calendar : str, optional
        A CF calendar (``"noleap"``, ``"360_day"``, ``"julian"``, ...): times are cftime objects of that
        calendar. Default: numpy datetime64 (proleptic Gregorian).

    Examples
    --------
    >>> ds = synthetic_dataset(4, variables=["temperature", "2m_temperature"])
    >>> ds["temperature"].dims
    ('time', 'level', 'lat', 'lon')
    >>> ds["temperature"].attrs["standard_name"]
    'air_temperature'
    >>> synthetic_dataset(2, variables=["2m_temperature"], start="2000-02-30", freq="1D", calendar="360_day").time.values[1]
    cftime.Datetime360Day(2000, 3, 1, 0, 0, 0, 0, has_year_zero=True)
    """
    if style not in ("era5", "cmip"):
        raise ValueError(f"style must be 'era5' or 'cmip'; got {style!r}")
    rng = np.random.default_rng(seed)
    lat, lon = grid_coords(*grid)
    if calendar is None:
        time = pd.date_range(start, periods=nt, freq=freq)
    else:
        time = xr.date_range(start, periods=nt, freq=freq, calendar=calendar, use_cftime=True)
    t_hours = (time - time[0]) / pd.Timedelta("1h")
    t_hours = np.asarray(t_hours, dtype=float)
    wanted = set(variables) if variables is not None else set(_PRESSURE) | set(_SURFACE)
    cmip = style == "cmip"
    levname = "plev" if cmip else "level"
    levvals = np.asarray(levels, dtype=float) * (100.0 if cmip else 1.0)
    coords = {
        "time": ("time", time, {"standard_name": "time", "axis": "T"}),
        "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
    }
    if wanted & set(_PRESSURE):
        coords[levname] = (
            levname,
            levvals,
            {
                "standard_name": "air_pressure",
                "units": "Pa" if cmip else "hPa",
                "positive": "down",
                "axis": "Z",
                "long_name": "pressure level",
            },
        )
    ds = xr.Dataset(coords={k: xr.Variable(*v) for k, v in coords.items()})
    for base, (era_name, cmip_name, sn, units, mean, amp) in _PRESSURE.items():
        if base not in wanted:
            continue
        data = np.stack([mean(p) + _wave(rng, t_hours, lat, lon, amp) for p in levels], axis=1)
        if base in ("specific_humidity",):
            data = np.abs(data)
        attrs = {"standard_name": sn, "units": units, "long_name": base.replace("_", " ").capitalize()}
        if cmip and base == "geopotential":
            data = data / G0
            attrs.update(standard_name="geopotential_height", units="m")
        ds[cmip_name if cmip else era_name] = (("time", levname, "lat", "lon"), data.astype("float32"), attrs)
    for base, (era_name, cmip_name, sn, units, height, mean, amp) in _SURFACE.items():
        if base not in wanted:
            continue
        data = mean + _wave(rng, t_hours, lat, lon, amp)
        name = cmip_name if cmip else era_name
        attrs = {"standard_name": sn, "units": units, "long_name": base.replace("_", " ")}
        if cmip and height == 2.0 and not wanted & {"10m_u_component_of_wind", "10m_v_component_of_wind"}:
            # CMIP puts the height on a scalar coordinate named "height" (one per file). A scalar coordinate is
            # shared by every variable of a Dataset, so it is only added when tas is the only surface field.
            da = xr.DataArray(data.astype("float32"), dims=("time", "lat", "lon"), attrs=attrs)
            da = da.assign_coords(height=xr.Variable((), height, {"standard_name": "height", "units": "m", "axis": "Z", "positive": "up"}))
            ds[name] = da
        else:
            ds[name] = (("time", "lat", "lon"), data.astype("float32"), attrs)
    if constants and not cmip:
        lsm = (np.cos(3 * np.deg2rad(lon))[None, :] * np.cos(np.deg2rad(lat))[:, None] > 0.2).astype("float32")
        oro = (2000 * lsm * np.cos(np.deg2rad(lat))[:, None] ** 2).astype("float32")
        ds["land_sea_mask"] = (("lat", "lon"), lsm, {"standard_name": "land_binary_mask", "units": "1"})
        ds["geopotential_at_surface"] = (
            ("lat", "lon"), oro * G0, {"standard_name": "surface_geopotential", "units": "m2 s-2"},
        )
    if chunks:
        ds = ds.chunk(chunks)
    return ds
