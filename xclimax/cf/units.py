"""Units: spellings found in the wild, explicit conversions to ClimaX's canonical units, vertical coordinates."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import xarray as xr

from .. import vocab

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# units

#: canonical unit key -> spellings found in the wild
_UNIT_ALIASES: dict[str, tuple[str, ...]] = {
    "K": ("K", "k", "kelvin", "Kelvin", "degK", "deg_K", "degrees_K", "degree_K"),
    "degC": ("degC", "C", "°C", "deg_C", "degrees_C", "degree_C", "celsius", "Celsius", "degrees_Celsius",
             "degree_Celsius", "degrees Celsius"),
    "m s-1": ("m s-1", "m/s", "m s**-1", "m s^-1", "m.s-1", "m.s**-1", "ms-1", "m s-1 ", "meter second-1",
              "metre second-1", "meters per second"),
    "m2 s-2": ("m2 s-2", "m**2 s**-2", "m^2 s^-2", "m^2/s^2", "m2/s2", "m2.s-2", "m**2/s**2", "m2s-2"),
    "m": ("m", "meter", "meters", "metre", "metres", "gpm", "m a.s.l.", "m above sea level"),
    "%": ("%", "percent", "pct"),
    "1": ("1", "", "-", "fraction", "dimensionless", "0-1", "(0 - 1)", "(0-1)"),
    "kg kg-1": ("kg kg-1", "kg/kg", "kg kg**-1", "kg kg^-1", "kg.kg-1"),
    "g kg-1": ("g kg-1", "g/kg", "g kg**-1", "g kg^-1"),
    "Pa": ("Pa", "pascal", "Pascal", "pascals"),
    "hPa": ("hPa", "hpa", "mbar", "millibar", "millibars", "mb", "hectopascal", "hectopascals"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres", "kg m-2", "kg m**-2", "kg/m2", "kg/m^2"),
    "J m-2": ("J m-2", "J m**-2", "J/m2", "J/m^2", "J m^-2"),
    "degrees_north": ("degrees_north", "degree_north", "degrees_N", "degree_N", "degreesN", "degreeN", "degrees"),
}
_UNIT_KEY = {alias: key for key, aliases in _UNIT_ALIASES.items() for alias in aliases}

#: (canonical, found) -> (scale, offset, description); value_canonical = value * scale + offset
_CONVERSIONS: dict[tuple[str, str], tuple[float, float, str]] = {
    ("m2 s-2", "m"): (vocab.G0, 0.0, f"geopotential height (m) -> geopotential (x {vocab.G0})"),
    ("m", "m2 s-2"): (1.0 / vocab.G0, 0.0, f"surface geopotential (m2 s-2) -> orography (m) (/ {vocab.G0})"),
    ("K", "degC"): (1.0, 273.15, "degC -> K (+ 273.15)"),
    ("%", "1"): (100.0, 0.0, "fraction (1) -> % (x 100)"),
    ("1", "%"): (0.01, 0.0, "% -> fraction (1) (x 0.01)"),
    ("kg kg-1", "1"): (1.0, 0.0, ""),
    ("kg kg-1", "g kg-1"): (1e-3, 0.0, "g kg-1 -> kg kg-1 (x 0.001)"),
    ("Pa", "hPa"): (100.0, 0.0, "hPa -> Pa (x 100)"),
    ("m", "mm"): (1e-3, 0.0, "mm (kg m-2 of water) -> m (x 0.001)"),
}


def _unit_key(units: Any) -> str | None:
    if units is None:
        return None
    text = str(units).strip()
    return _UNIT_KEY.get(text, _UNIT_KEY.get(text.replace("**", "").replace("^", ""), text))


def conversion(target: str, found: Any) -> tuple[float, float, str] | None:
    """(scale, offset, description) converting ``found`` units to ``target``; None if impossible."""
    t, f = _unit_key(target), _unit_key(found)
    if t == f:
        return 1.0, 0.0, ""
    return _CONVERSIONS.get((t, f))


#: names of vertical pressure coordinates (recognised by name when they have no units)
PRESSURE_NAMES = ("level", "isobaricInhPa", "plev", "pressure_level", "pressure", "lev")


def pressure_to_hpa(coord: xr.DataArray) -> np.ndarray | None:
    """Values of a vertical coordinate in hPa, or None if it is not a pressure coordinate."""
    if coord.dtype.kind not in "iuf":  # times (a cftime scalar), strings (member_id), ...: not a level
        return None
    units = _unit_key(coord.attrs.get("units"))
    values = np.asarray(coord.values, dtype=float)
    if units == "Pa":
        return values / 100.0
    if units == "hPa":
        return values
    if units is None and (coord.attrs.get("standard_name") == "air_pressure" or coord.name in PRESSURE_NAMES):
        # no units: hPa by name or by magnitude (Pa levels exceed 1100)
        if coord.name == "isobaricInhPa":
            return values
        if coord.name == "plev" or np.nanmax(np.abs(values), initial=0) > 1100:
            return values / 100.0
        return values
    return None


def is_height(coord: xr.DataArray) -> bool:
    if coord.dtype.kind not in "iuf":
        return False
    return coord.attrs.get("standard_name") == "height" or coord.name in ("height", "heightAboveGround")




def between(found: Any, target: Any) -> tuple[float, float, str] | None:
    """``(scale, offset, description)`` with ``target = found * scale + offset``, either way round; None if impossible.

    Examples
    --------
    >>> between("degC", "K")[:2]
    (1.0, 273.15)
    >>> between("K", "degC")[:2]
    (1.0, -273.15)
    >>> between("K", "m s-1") is None
    True
    """
    direct = conversion(target, found)
    if direct is not None:
        return direct
    reverse = conversion(found, target)
    if reverse is None or reverse[0] == 0:
        return None
    scale, offset, _ = reverse
    return 1.0 / scale, -offset / scale, f"{found} -> {target}"
