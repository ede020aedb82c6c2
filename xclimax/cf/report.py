"""``check``: what a Dataset offers a model (found, converted, missing), computing nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import xarray as xr

from .tokens import VariableSource, resolve_variables

__all__ = ["CheckReport", "check"]

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """Result of :func:`check`: which ClimaX variables were found, converted or missing.

    Attributes
    ----------
    found : dict of str to VariableSource
    missing : dict of str to str
        Name -> what was searched.
    problems : dict of str to str
        Name -> unit or ambiguity problem.
    requested : list of str
    """

    found: dict[str, VariableSource]
    missing: dict[str, str]
    problems: dict[str, str]
    requested: list[str]

    @property
    def ok(self) -> bool:
        """True when every requested variable was found and usable."""
        return not self.missing and not self.problems

    @property
    def converted(self) -> dict[str, str]:
        """Name -> unit conversion applied, for variables that need one."""
        return {k: v.conversion for k, v in self.found.items() if v.conversion}

    def __repr__(self) -> str:
        lines = [f"<CheckReport: {len(self.found)}/{len(self.requested)} variables found"
                 f"{', OK' if self.ok else ''}>"]
        if self.found:
            lines.append("Found:")
            lines += [f"  {v.describe()}" for v in self.found.values()]
        if self.problems:
            lines.append("Problems:")
            lines += [f"  {p}" for p in self.problems.values()]
        if self.missing:
            lines.append("Missing:")
            lines += [f"  {k}: searched {v}" for k, v in self.missing.items()]
        return "\n".join(lines)


def check(
    ds: xr.Dataset,
    model: Any = None,
    *,
    variables: Iterable[str] | None = None,
    extra_variables: Any = None,
    variable_map: Mapping[str, str] | None = None,
) -> CheckReport:
    """Report which ClimaX variables ``ds`` provides (for ``model.variables`` if a model is given).

    Never raises for missing variables or bad units (they are listed) and computes nothing.

    Examples
    --------
    >>> from xclimax.testing import synthetic_dataset
    >>> report = check(synthetic_dataset(2, variables=["2m_temperature"]), variables=["2m_temperature", "orography"])
    >>> report.ok, list(report.missing)
    (True, [])
    >>> print(report)  # doctest: +NORMALIZE_WHITESPACE
    <CheckReport: 2/2 variables found, OK>
    ...
    """
    if variables is None and model is not None:
        variables = list(model.variables)
    names, found, missing, bad = resolve_variables(ds, variables, extra_variables, variable_map)
    return CheckReport(found, missing, bad, names)
