"""The ClimaX variable vocabulary, as data.

``CLIMAX_VARIABLES`` is the official ordered list of the 48 ClimaX variables: its
order is the token index of the released checkpoints (including the upstream
``lattitude`` spelling).  ``VARIABLES`` describes each name with the CF criteria
used to find it in a Dataset: ``standard_name`` candidates, the pressure level in
hPa or the height above ground in m, and the canonical units the model expects.

This module holds data only and imports neither xarray nor torch.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = [
    "PRESSURE_LEVELS",
    "PRESSURE_VARIABLES",
    "CLIMAX_VARIABLES",
    "FORECAST_VARIABLES",
    "EXTRA_VARIABLES",
    "PROJECTION_VARIABLES",
    "VARIABLES",
    "ALIASES",
    "canonical_name",
    "G0",
]

#: Standard gravity used for geopotential <-> geopotential height (m s-2).
G0 = 9.80665

#: The pressure levels (hPa) of the official ClimaX variables.
PRESSURE_LEVELS: tuple[int, ...] = (50, 250, 500, 600, 700, 850, 925)

#: Base name -> (CF standard names, canonical units, long name) for pressure-level fields.
PRESSURE_VARIABLES: Mapping[str, tuple[tuple[str, ...], str, str]] = MappingProxyType(
    {
        "geopotential": (("geopotential", "geopotential_height"), "m2 s-2", "Geopotential"),
        "u_component_of_wind": (("eastward_wind",), "m s-1", "U component of wind"),
        "v_component_of_wind": (("northward_wind",), "m s-1", "V component of wind"),
        "temperature": (("air_temperature",), "K", "Temperature"),
        "relative_humidity": (("relative_humidity",), "%", "Relative humidity"),
        "specific_humidity": (("specific_humidity",), "kg kg-1", "Specific humidity"),
    }
)

_SINGLE = {
    # name: (kind, standard names, height in m or None, units, long name)
    "land_sea_mask": ("constant", ("land_binary_mask", "land_area_fraction", "land_sea_mask"), None, "1", "Land-sea mask"),
    "orography": ("constant", ("surface_altitude", "surface_geopotential"), None, "m", "Orography"),
    "lattitude": ("constant", ("latitude",), None, "degrees_north", "Latitude"),
    "2m_temperature": ("surface", ("air_temperature",), 2.0, "K", "2 metre temperature"),
    "10m_u_component_of_wind": ("surface", ("eastward_wind",), 10.0, "m s-1", "10 metre U wind component"),
    "10m_v_component_of_wind": ("surface", ("northward_wind",), 10.0, "m s-1", "10 metre V wind component"),
}


def _spec(kind, standard_names, level, height, units, long_name):
    return MappingProxyType(
        {
            "kind": kind,  # "constant", "surface" or "pressure"
            "standard_name": tuple(standard_names),
            "level": level,  # hPa, or None
            "height": height,  # m above ground, or None
            "units": units,  # canonical units expected by the model
            "long_name": long_name,
        }
    )


def _build() -> dict:
    out = {}
    for name, (kind, sn, height, units, long_name) in _SINGLE.items():
        out[name] = _spec(kind, sn, None, height, units, long_name)
    for base, (sn, units, long_name) in PRESSURE_VARIABLES.items():
        for level in PRESSURE_LEVELS:
            out[f"{base}_{level}"] = _spec("pressure", sn, level, None, units, f"{long_name} at {level} hPa")
    return out


#: Name -> CF criteria for each of the 48 official variables.
VARIABLES: Mapping[str, Mapping] = MappingProxyType(_build())

#: The 48 official ClimaX variables in checkpoint (token index) order.
CLIMAX_VARIABLES: tuple[str, ...] = tuple(VARIABLES)

#: The five variables ClimaX forecasts in the paper's global forecasting task.
FORECAST_VARIABLES: tuple[str, ...] = (
    "geopotential_500",
    "temperature_850",
    "2m_temperature",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
)

#: Well-known variables outside the 48 that users can add at fine-tuning
#: (``extra_variables=`` / ``xclimax.set_options(extra_variables=...)``).
EXTRA_VARIABLES: Mapping[str, Mapping] = MappingProxyType(
    {
        "mean_sea_level_pressure": _spec(
            "surface", ("air_pressure_at_mean_sea_level",), None, None, "Pa", "Mean sea level pressure"
        ),
        "surface_pressure": _spec("surface", ("surface_air_pressure",), None, None, "Pa", "Surface pressure"),
        "total_precipitation": _spec(
            "surface", ("precipitation_amount", "lwe_thickness_of_precipitation_amount"), None, None, "m",
            "Total precipitation",
        ),
        "toa_incident_solar_radiation": _spec(
            "surface", ("toa_incoming_shortwave_flux", "toa_incident_shortwave_flux"), None, None, "J m-2",
            "TOA incident solar radiation",
        ),
    }
)


def _named(spec: Mapping, *names: str) -> Mapping:
    """``spec`` plus the variable names that identify a field lacking a ``standard_name``."""
    return MappingProxyType({**spec, "names": tuple(names)})


#: Variables of the climate-projection task (ClimateBench's names): forcings (CO2 and CH4 as
#: global scalars, SO2 and black-carbon emission maps; optionally concentrations) and responses
#: (differences from a pre-industrial control). CF standard names where they exist; the others
#: are found by name (``names``). Merged into :data:`EXTRA_VARIABLES`, so they are always known.
PROJECTION_VARIABLES: Mapping[str, Mapping] = MappingProxyType(
    {
        "CO2": _named(_spec("forcing", (), None, None, "Gt", "Cumulative anthropogenic CO2 emissions (GtCO2)"),
                      "CO2", "co2", "cumulative_co2_emissions"),
        "CH4": _named(_spec("forcing", (), None, None, "Gt yr-1", "Anthropogenic CH4 emissions (GtCH4 per year)"),
                      "CH4", "ch4", "ch4_emissions"),
        "SO2": _named(_spec("forcing", ("tendency_of_atmosphere_mass_content_of_sulfur_dioxide_due_to_emission",),
                            None, None, "kg m-2 s-1", "Anthropogenic SO2 emissions"), "SO2", "so2", "emiso2"),
        "BC": _named(_spec("forcing", (
            "tendency_of_atmosphere_mass_content_of_elemental_carbon_dry_aerosol_particles_due_to_emission",),
            None, None, "kg m-2 s-1", "Anthropogenic black carbon emissions"), "BC", "bc", "emibc"),
        "co2_concentration": _named(_spec("forcing", ("mole_fraction_of_carbon_dioxide_in_air",), None, None, "1e-6",
                                          "CO2 concentration (ppm)"), "co2_concentration"),
        "ch4_concentration": _named(_spec("forcing", ("mole_fraction_of_methane_in_air",), None, None, "1e-9",
                                          "CH4 concentration (ppb)"), "ch4_concentration"),
        "tas": _named(_spec("surface", ("air_temperature_anomaly", "air_temperature"), None, 2.0, "K",
                            "Near-surface air temperature"), "tas"),
        "diurnal_temperature_range": _named(_spec("surface", (), None, None, "K", "Diurnal temperature range"),
                                            "diurnal_temperature_range", "dtr"),
        "pr": _named(_spec("surface", ("precipitation_flux",), None, None, "kg m-2 s-1", "Precipitation"), "pr"),
        "pr90": _named(_spec("surface", (), None, None, "kg m-2 s-1", "90th percentile of daily precipitation"),
                       "pr90"),
    }
)
EXTRA_VARIABLES = MappingProxyType({**EXTRA_VARIABLES, **PROJECTION_VARIABLES})

#: Alternative spellings accepted wherever a ClimaX variable name is expected.
ALIASES: Mapping[str, str] = MappingProxyType({"latitude": "lattitude", "dtr": "diurnal_temperature_range"})


def canonical_name(name: str) -> str:
    """Return the canonical ClimaX spelling of ``name`` (``"latitude"`` -> ``"lattitude"``).

    Examples
    --------
    >>> canonical_name("latitude")
    'lattitude'
    >>> canonical_name("2m_temperature")
    '2m_temperature'
    """
    return ALIASES.get(name, name)
