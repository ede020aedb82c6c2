"""A small spectral model of the atmosphere that generates the synthetic demo data.

The model is a forced-dissipative **shallow-water model on the sphere** (vorticity-divergence
form, triangular truncation T21, 32 x 64 Gaussian grid, semi-implicit leapfrog time stepping with
a Robert-Asselin filter).  It stands for the mid-troposphere (500 hPa) of an equivalent-barotropic
atmosphere and is driven by

* Newtonian relaxation of the free surface to a seasonally varying, radiative-equilibrium-like
  zonal profile (strong jet at 35 degrees in winter, weaker and poleward in summer),
* flow over the orography of a simple analytic land-sea mask (Rockies, Andes, Tibet, ...),
* weak, short-memory (AR(1), 6 h) vorticity forcing at large synoptic scales in the mid-latitude
  storm tracks, which stands in for baroclinic eddy generation,
* linear drag and a del^8 hyperdiffusion.

Weather systems develop, are advected by the jets and decay over weeks: most of their day-to-day
change is deterministic dynamics, so they are predictable a few days ahead.
:func:`derive_fields` turns the model state into ERA5-like fields on pressure levels with an
equivalent-barotropic vertical structure ``A(p)`` (winds and geopotential anomalies scale with
``A``) and hydrostatic temperature ``T = -(1/R) d(Phi)/d(ln p)``, so temperature is consistent
with thickness and wind shear with the temperature gradient (thermal wind).

Everything is plain numpy and deterministic for a given seed.  All data made here are
**synthetic**; they look like, but are not, ERA5.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..options import OPTIONS
from ..vocab import G0

__all__ = [
    "EARTH_RADIUS",
    "OMEGA",
    "R_DRY",
    "SphericalHarmonics",
    "AtmosphereConfig",
    "ShallowWaterModel",
    "land_sea_mask",
    "orography",
    "simulate_year",
    "derive_fields",
    "vertical_structure",
]

logger = logging.getLogger(__name__)

EARTH_RADIUS = 6.371e6  # m
OMEGA = 7.292e-5  # s-1
R_DRY = 287.05  # J kg-1 K-1
_DAY = 86400.0


# --------------------------------------------------------------------------------------------
# spherical harmonics
# --------------------------------------------------------------------------------------------
def _legendre(trunc: int, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal associated Legendre functions and (1 - mu^2) dP/dmu.

    Returns ``P[m, n, j]`` and ``H[m, n, j]`` for ``0 <= m <= n <= trunc`` (zero for ``n < m``),
    normalised so that ``int_{-1}^{1} P_n^m P_n'^m dmu = delta_nn'``.
    """
    mu = np.asarray(mu, dtype=np.float64)
    N = trunc + 2  # one extra degree for the derivative recurrence
    P = np.zeros((trunc + 1, N + 1, mu.size))
    sin = np.sqrt(1.0 - mu**2)
    pmm = np.full(mu.size, np.sqrt(0.5))
    for m in range(trunc + 1):
        if m > 0:
            pmm = pmm * np.sqrt((2 * m + 1) / (2 * m)) * sin
        P[m, m] = pmm
        if m + 1 <= N:
            P[m, m + 1] = np.sqrt(2 * m + 3) * mu * pmm
        for n in range(m + 2, N + 1):
            a = np.sqrt((4 * n * n - 1) / (n * n - m * m))
            b = np.sqrt((4 * (n - 1) ** 2 - 1) / ((n - 1) ** 2 - m * m))
            P[m, n] = a * (mu * P[m, n - 1] - P[m, n - 2] / b)
    n = np.arange(N + 1)[None, :]
    m = np.arange(trunc + 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = np.where(n > m, np.sqrt(np.clip(n * n - m * m, 0, None) / (4.0 * n * n - 1)), 0.0)
    H = np.zeros_like(P)
    # (1 - mu^2) dP_n/dmu = -n eps_{n+1} P_{n+1} + (n + 1) eps_n P_{n-1}
    H[:, :-1] = -n[:, :-1, None] * eps[:, 1:, None] * P[:, 1:]
    H[:, 1:-1] += (n[:, 1:-1, None] + 1) * eps[:, 1:-1, None] * P[:, :-2]
    return P[:, : trunc + 1], H[:, : trunc + 1]


class SphericalHarmonics:
    """Spectral transforms (triangular truncation) on a Gaussian grid.

    Spectral arrays have shape ``(..., trunc + 1, trunc + 1)`` indexed ``[m, n]`` (complex, zero
    where ``n < m``); a real field is ``f = sum_{m=-M}^{M} sum_n f_n^m P_n^m(sin lat) exp(i m lon)``.
    Grid arrays have shape ``(..., nlat, nlon)`` with latitude ascending (south to north).

    Parameters
    ----------
    trunc : int
        Triangular truncation (21 for T21).
    nlat, nlon : int
        Gaussian grid size; ``nlat >= (3 trunc + 1) / 2`` and ``nlon >= 3 trunc + 1`` for
        alias-free quadratic products.
    radius : float
        Sphere radius in m.

    Examples
    --------
    >>> sh = SphericalHarmonics(21, 32, 64)
    >>> f = np.cos(np.deg2rad(sh.lat))[:, None] * np.cos(np.deg2rad(sh.lon))[None, :]
    >>> bool(np.allclose(sh.to_grid(sh.to_spec(f)), f))
    True
    """

    def __init__(self, trunc: int = 21, nlat: int = 32, nlon: int = 64, radius: float = EARTH_RADIUS) -> None:
        if nlon < 2 * trunc + 1 or nlat < trunc + 1:
            raise ValueError(f"grid {nlat}x{nlon} is too coarse for truncation T{trunc}")
        self.trunc, self.nlat, self.nlon, self.radius = trunc, nlat, nlon, radius
        mu, w = np.polynomial.legendre.leggauss(nlat)
        self.mu, self.weights = mu, w
        self.lat = np.rad2deg(np.arcsin(mu))
        self.lon = 360.0 / nlon * np.arange(nlon)
        P, H = _legendre(trunc, mu)
        self._P = P.astype(complex)  # [m, n, j] synthesis
        self._H = H.astype(complex)
        wa = (w / (radius * (1 - mu**2)))[None, :, None]
        self._Pw = np.ascontiguousarray(np.swapaxes(P, 1, 2) * w[None, :, None]).astype(complex)  # [m, j, n]
        self._Pd = np.ascontiguousarray(np.swapaxes(P, 1, 2) * wa).astype(complex)
        self._Hd = np.ascontiguousarray(np.swapaxes(H, 1, 2) * wa).astype(complex)
        m = np.arange(trunc + 1)[:, None]
        n = np.arange(trunc + 1)[None, :]
        self.mask = n >= m  # valid coefficients
        self.im = 1j * m * np.ones((1, trunc + 1))
        self.n = np.broadcast_to(n, (trunc + 1, trunc + 1))
        #: spectral Laplacian factor -n(n+1)/a^2
        self.lap = np.where(self.mask, -n * (n + 1) / radius**2, 0.0)
        with np.errstate(divide="ignore"):
            self.invlap = np.where(self.lap != 0, 1.0 / np.where(self.lap != 0, self.lap, 1.0), 0.0)
        self._cache: dict = {}

    # ---- core transforms on stacks of fields -------------------------------------------
    def _fourier_to_grid(self, fm: np.ndarray) -> np.ndarray:
        """``fm[..., m, j]`` -> grid ``[..., j, lon]`` (m = 0..trunc)."""
        shape = fm.shape[:-2] + (fm.shape[-1], self.nlon // 2 + 1)
        full = np.zeros(shape, dtype=complex)
        full[..., : self.trunc + 1] = np.swapaxes(fm, -1, -2)
        return np.fft.irfft(full, n=self.nlon, axis=-1) * self.nlon

    def _grid_to_fourier(self, f: np.ndarray) -> np.ndarray:
        """grid ``[F, j, lon]`` -> ``[m, F, j]``."""
        fm = np.fft.rfft(f, axis=-1)[..., : self.trunc + 1] / self.nlon
        return np.moveaxis(fm, -1, 0)

    def _legendre_at(self, lat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if lat is None:
            return self._P, self._H
        key = np.asarray(lat, dtype=float).tobytes()
        if key not in self._cache:
            P, H = _legendre(self.trunc, np.sin(np.deg2rad(np.asarray(lat, dtype=float))))
            self._cache[key] = (P.astype(complex), H.astype(complex))
        return self._cache[key]

    def to_grid(self, spec: np.ndarray, lat: np.ndarray | None = None) -> np.ndarray:
        """Synthesis: spectral ``(..., M, N)`` -> grid ``(..., nlat, nlon)``.

        With ``lat`` (degrees), the spectral field is evaluated exactly at those latitudes (and the
        ``nlon`` equally spaced longitudes from 0).
        """
        P, _ = self._legendre_at(lat)
        spec = np.asarray(spec)
        lead = spec.shape[:-2]
        s = spec.reshape((-1,) + spec.shape[-2:])  # F, m, n
        fm = np.matmul(np.swapaxes(s, 0, 1), P)  # m, F, j
        return self._fourier_to_grid(np.moveaxis(fm, 0, 1)).reshape(lead + (P.shape[-1], self.nlon))

    def to_spec(self, grid: np.ndarray) -> np.ndarray:
        """Analysis: grid ``(..., nlat, nlon)`` on the Gaussian grid -> spectral ``(..., M, N)``."""
        grid = np.asarray(grid, dtype=float)
        lead = grid.shape[:-2]
        fm = self._grid_to_fourier(grid.reshape((-1,) + grid.shape[-2:]))  # m, F, j
        out = np.matmul(fm, self._Pw)  # m, F, n
        return np.swapaxes(out, 0, 1).reshape(lead + self.mask.shape) * self.mask

    def uv(self, vort: np.ndarray, div: np.ndarray, lat: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Winds ``(u, v)`` in m/s on the grid from spectral vorticity and divergence."""
        P, H = self._legendre_at(lat)
        psi, chi = vort * self.invlap / self.radius, div * self.invlap / self.radius
        s1 = np.stack([self.im * chi, self.im * psi])  # F, m, n
        s2 = np.stack([psi, chi])
        a = self._fourier_to_grid(np.moveaxis(np.matmul(np.swapaxes(s1, 0, 1), P), 0, 1))
        b = self._fourier_to_grid(np.moveaxis(np.matmul(np.swapaxes(s2, 0, 1), H), 0, 1))
        coslat = np.cos(np.deg2rad(self.lat if lat is None else np.asarray(lat, dtype=float)))[:, None]
        return (a[0] - b[0]) / coslat, (a[1] + b[1]) / coslat

    def vortdiv(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spectral vorticity and divergence of grid winds ``(u, v)`` (m/s)."""
        cos = np.sqrt(1 - self.mu**2)[:, None]
        U, V = u * cos, v * cos
        return self.div_form(V, -U), self.div_form(U, V)

    def div_form(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """Spectral coefficients of ``[dA/dlon + (1 - mu^2) dB/dmu] / (a (1 - mu^2))``.

        For ``A = u cos(lat) q`` and ``B = v cos(lat) q`` this is the divergence of ``q V``.
        ``A`` and ``B`` are grid fields ``(..., nlat, nlon)``.
        """
        A, B = np.asarray(A, float), np.asarray(B, float)
        lead = A.shape[:-2]
        k = int(np.prod(lead, dtype=int))
        fm = self._grid_to_fourier(np.concatenate([A.reshape((k,) + A.shape[-2:]), B.reshape((k,) + B.shape[-2:])]))
        pa = np.matmul(fm[:, :k], self._Pd)  # m, F, n
        hb = np.matmul(fm[:, k:], self._Hd)
        out = self.im[:, None, :] * pa - hb
        return (np.swapaxes(out, 0, 1) * self.mask).reshape(lead + self.mask.shape)

    def integrate(self, grid: np.ndarray) -> np.ndarray:
        """Area integral over the sphere of a grid field (m^2 times the field's units)."""
        return np.einsum("...jk,j->...", grid, self.weights) * (2 * np.pi / self.nlon) * self.radius**2


# --------------------------------------------------------------------------------------------
# geography
# --------------------------------------------------------------------------------------------
_CONTINENTS = [  # (lat, lon, sigma_lat, sigma_lon) of smooth land blobs
    (50, 260, 14, 24), (30, 258, 9, 12), (64, 245, 8, 30), (-8, 300, 14, 12), (-33, 292, 12, 6),
    (55, 60, 14, 45), (55, 115, 14, 35), (28, 80, 10, 20), (46, 15, 8, 16), (8, 18, 12, 22),
    (-14, 27, 12, 11), (-25, 134, 8, 15), (72, 318, 8, 12),
]
_MOUNTAINS = [  # (lat, lon, sigma_lat, sigma_lon, height m)
    (45, 248, 12, 6, 2200), (-20, 291, 20, 3.5, 3200), (33, 88, 6, 16, 4800), (72, 318, 6, 9, 2400),
    (0, 37, 8, 8, 1300), (47, 10, 3, 6, 1500), (60, 100, 10, 25, 700),
]


def _blobs(lat: np.ndarray, lon: np.ndarray, blobs) -> list[np.ndarray]:
    la, lo = np.asarray(lat, float)[:, None], np.asarray(lon, float)[None, :]
    out = []
    for b in blobs:
        dlon = (lo - b[1] + 180) % 360 - 180
        out.append(np.exp(-0.5 * ((la - b[0]) / b[2]) ** 2 - 0.5 * (dlon / b[3]) ** 2))
    return out


def _land_fraction(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Smooth land indicator in [0, 1] (continents as Gaussian blobs, plus Antarctica)."""
    f = sum(_blobs(lat, lon, _CONTINENTS)) + np.exp(-0.5 * ((np.asarray(lat, float)[:, None] + 90) / 16) ** 2)
    return np.clip(2 * (f - 0.25), 0, 1)


def land_sea_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Binary land-sea mask (1 = land) of the demo planet, an idealised Earth.

    Examples
    --------
    >>> lsm = land_sea_mask(np.array([-85.0, 0.0, 50.0]), np.array([0.0, 180.0, 260.0]))
    >>> lsm.astype(int).tolist()
    [[1, 1, 1], [1, 0, 0], [1, 0, 1]]
    """
    return (_land_fraction(lat, lon) >= 0.5).astype(np.float64)


def orography(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Surface altitude in m (>= 0, zero over the ocean) of the demo planet.

    Examples
    --------
    >>> z = orography(np.array([33.0, 0.0]), np.array([88.0, 180.0]))
    >>> bool(z[0, 0] > 4000 and z[1, 1] == 0)
    True
    """
    la = np.asarray(lat, float)[:, None]
    h = sum(b[4] * g for b, g in zip(_MOUNTAINS, _blobs(lat, lon, _MOUNTAINS)))
    h = h + 2800 * np.exp(-0.5 * ((la + 90) / 14) ** 2)  # Antarctic plateau
    return h * land_sea_mask(lat, lon)


# --------------------------------------------------------------------------------------------
# the shallow-water model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AtmosphereConfig:
    """Parameters of :class:`ShallowWaterModel` (SI units unless the name says otherwise)."""

    trunc: int = 21
    nlat: int = 32
    nlon: int = 64
    dt: float = 3600.0  # time step (s)
    phibar: float = 3.0e4  # mean geopotential depth of the layer (m2 s-2): equivalent depth ~3 km
    orography_scale: float = 0.15  # fraction of g * surface altitude felt by the 500 hPa layer
    relax_days: float = 15.0  # Newtonian relaxation time of the free surface
    drag_days: float = 200.0  # linear drag on vorticity and divergence
    hyperdiff_hours: float = 2.0  # e-folding time of del^8 diffusion at the truncation scale
    jet_drop_winter: float = 12000.0  # equator-to-pole drop of the equilibrium geopotential (m2 s-2)
    jet_drop_summer: float = 7000.0
    jet_lat_winter: float = 35.0  # degrees
    jet_lat_summer: float = 47.0
    jet_width: float = 13.0  # degrees
    # short-memory stochastic forcing at large synoptic scales: the eddies it seeds live for weeks
    # and are carried along by the jets, so most of a day's change is deterministic dynamics (a twin
    # run with other noise differs from the truth after 24 h by 0.3-0.55x the persistence error in
    # the geopotential and 0.25-0.55x in the winds; see tests/test_atmosphere.py)
    forcing_amplitude: float = 1.0e-10  # rms of the stochastic vorticity forcing (s-2)
    forcing_days: float = 0.25  # its decorrelation time
    forcing_band: tuple[int, int] = (3, 6)  # total wavenumbers forced
    storm_track_lat: float = 45.0
    robert_filter: float = 0.04
    divergent: bool = True  # False: non-divergent barotropic vorticity equation
    forced: bool = True  # False: no relaxation, drag or stochastic forcing

    def to_dict(self) -> dict:
        """JSON-serialisable dict of the parameters."""
        d = asdict(self)
        d["forcing_band"] = list(d["forcing_band"])
        return d


def _winter_weight(day_of_year: float) -> tuple[float, float]:
    """Weights in [0, 1] of northern and southern winter (1 = mid-January for the north)."""
    w = 0.5 * (1 + np.cos(2 * np.pi * (day_of_year - 15.0) / 365.25))
    return w, 1.0 - w


class ShallowWaterModel:
    """Forced-dissipative spectral shallow-water model on the sphere.

    Prognostic variables (spectral): relative vorticity ``vort``, divergence ``div`` and the
    geopotential-depth anomaly ``phi`` (the depth is ``phibar + phi``; the free surface is
    ``phibar + phi + phis``).  ``step()`` advances one leapfrog step of ``config.dt`` seconds.

    Parameters
    ----------
    config : AtmosphereConfig
    seed : int or sequence of int
        Seed of the stochastic forcing and of the initial perturbation.
    start_day : float
        Day of year of the initial state (sets the phase of the seasonal cycle).

    Examples
    --------
    >>> m = ShallowWaterModel(AtmosphereConfig(), seed=0)
    >>> m.run(hours=6)
    >>> bool(np.isfinite(m.vort).all())
    True
    """

    def __init__(self, config: AtmosphereConfig | None = None, seed: int | Sequence[int] = 0, start_day: float = 0.0) -> None:
        self.config = c = config or AtmosphereConfig()
        self.sh = sh = SphericalHarmonics(c.trunc, c.nlat, c.nlon)
        self.rng = np.random.default_rng(seed)
        self.day = float(start_day)  # day of year (may run past 365)
        lat, lon = sh.lat, sh.lon
        self.f = 2 * OMEGA * sh.mu[:, None] * np.ones((1, c.nlon))
        phis = c.orography_scale * G0 * orography(lat, lon)
        self.phis_grid = phis - sh.integrate(phis) / (4 * np.pi * sh.radius**2)
        self.phis = sh.to_spec(self.phis_grid)
        self.land = _land_fraction(lat, lon)
        n = sh.n
        ntr = c.trunc * (c.trunc + 1)
        self.hyper = np.where(sh.mask, (n * (n + 1) / ntr) ** 4 / (c.hyperdiff_hours * 3600.0), 0.0)
        band = (n >= c.forcing_band[0]) & (n <= c.forcing_band[1]) & sh.mask
        self._band = band
        self.forcing = np.zeros(sh.mask.shape, complex)
        # initial state: rest with the equilibrium free surface, plus a small seeded perturbation
        self.phi = self.equilibrium(self.day)
        self.vort = self._noise(band) * 1e-6
        self.div = np.zeros_like(self.vort)
        if not c.divergent:
            self.phi = np.zeros_like(self.phi)
        self._prev = None  # (vort, div, phi) at the previous time level
        self.nsteps = 0
        self._sgn = np.array([-1.0, 1.0])[None, :, None]
        self._buf = np.zeros((4, sh.nlat, sh.nlon // 2 + 1), complex)
        self._half_sec2 = 0.5 / (1 - sh.mu**2)[:, None]
        self._eq = self.phi
        self._since_forcing = np.inf

    # -- forcing ---------------------------------------------------------------------------
    def equilibrium(self, day: float) -> np.ndarray:
        """Spectral radiative-equilibrium depth anomaly for a day of year (free surface minus orography)."""
        c, sh = self.config, self.sh
        wn, ws = _winter_weight(day)
        prof = np.zeros(sh.nlat)
        for sign, w in ((1, wn), (-1, ws)):
            drop = c.jet_drop_summer + (c.jet_drop_winter - c.jet_drop_summer) * w
            lat0 = c.jet_lat_summer + (c.jet_lat_winter - c.jet_lat_summer) * w
            hemi = sign * sh.lat > 0
            prof = np.where(hemi, -0.5 * drop * (1 + np.tanh((np.abs(sh.lat) - lat0) / c.jet_width)), prof)
        prof = prof - np.sum(prof * sh.weights) / 2.0  # zero global mean
        return sh.to_spec(prof[:, None] * np.ones((1, sh.nlon)) - self.phis_grid)

    def _noise(self, band: np.ndarray) -> np.ndarray:
        z = self.rng.standard_normal(band.shape) + 1j * self.rng.standard_normal(band.shape)
        z[0] = z[0].real * np.sqrt(2)
        return z * band

    def _update_forcing(self, hours: float) -> None:
        c, sh = self.config, self.sh
        r = np.exp(-hours / 24.0 / c.forcing_days)
        # red noise in spectral space, then shaped by the storm tracks (winter stronger, oceans stronger)
        self._white = getattr(self, "_white", self._noise(self._band))
        self._white = r * self._white + np.sqrt(1 - r * r) * self._noise(self._band)
        g = sh.to_grid(self._white)
        wn, ws = _winter_weight(self.day)
        lat = sh.lat[:, None]
        track = sum(
            (0.6 + 0.4 * w) * np.exp(-0.5 * ((sign * lat - c.storm_track_lat + 5 * w) / 12.0) ** 2)
            for sign, w in ((1, wn), (-1, ws))
        )
        g = g * track * (1 - 0.5 * self.land)
        g = g / np.sqrt(np.mean(g**2) + 1e-30) * c.forcing_amplitude * np.sqrt(np.mean(track**2))
        self.forcing = sh.to_spec(g)
        self._eq = self.equilibrium(self.day)

    # -- dynamics --------------------------------------------------------------------------
    def tendencies(self, vort: np.ndarray, div: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, ...]:
        """Explicit (nonlinear) tendencies; the linear gravity-wave terms are left out.

        This is the hot loop, written as a few batched transforms (see :class:`SphericalHarmonics`
        for the plain versions).
        """
        sh = self.sh
        psi, chi = vort * sh.invlap / sh.radius, div * sh.invlap / sh.radius
        x = np.matmul(np.stack([vort, phi, sh.im * chi, sh.im * psi], axis=1), sh._P)  # m, 4, j
        y = np.matmul(np.stack([psi, chi], axis=1), sh._H)  # m, 2, j
        x[:, 2:] += y * self._sgn
        self._buf[..., : sh.trunc + 1] = x.transpose(1, 2, 0)
        zeta, ph, U, V = np.fft.irfft(self._buf, n=sh.nlon, axis=-1) * sh.nlon  # U = u cos(lat)
        eta = zeta + self.f
        etaU, etaV = eta * U, eta * V
        prod = np.stack([etaU, etaV, ph * U, etaV, -etaU, ph * V, (U * U + V * V) * self._half_sec2])
        fm = np.moveaxis(np.fft.rfft(prod, axis=-1)[..., : sh.trunc + 1], -1, 0) / sh.nlon  # m, 7, j
        pa = np.matmul(fm[:, 0:3], sh._Pd)
        out = sh.im[:, None, :] * pa - np.matmul(fm[:, 3:6], sh._Hd)  # m, 3, n
        if not self.config.divergent:
            return -out[:, 0], None, None
        energy = np.matmul(fm[:, 6:7], sh._Pw)[:, 0]
        return -out[:, 0], out[:, 1] - sh.lap * (energy + self.phis), -out[:, 2]

    def step(self) -> None:
        """Advance by one time step (semi-implicit leapfrog, Robert-Asselin filtered)."""
        c, sh = self.config, self.sh
        dt = c.dt
        if c.forced and self._since_forcing * dt >= 6 * 3600.0:
            self._update_forcing(self._since_forcing * dt / 3600.0 if np.isfinite(self._since_forcing) else 6.0)
            self._since_forcing = 0
        prev = self._prev if self._prev is not None else (self.vort, self.div, self.phi)
        first = self._prev is None
        tdt = dt if first else 2 * dt  # forward step to start
        vo0, dv0, ph0 = prev
        nv, nd, nph = self.tendencies(self.vort, self.div, self.phi)
        if c.forced:
            nv = nv + self.forcing - vo0 / (c.drag_days * _DAY)
        vort1 = (vo0 + tdt * nv) / (1 + tdt * self.hyper)
        if c.divergent:
            if c.forced:
                nd = nd - dv0 / (c.drag_days * _DAY)
                nph = nph + (self._eq - ph0) / (c.relax_days * _DAY)
            h = 0.5 * tdt
            L, pb = sh.lap, c.phibar
            # trapezoidal gravity-wave terms:  d(div)/dt += -lap phi,  d(phi)/dt += -phibar div
            div1 = (dv0 * (1 + h * h * L * pb) + tdt * nd - tdt * L * ph0 - tdt * h * L * nph) / (1 - h * h * L * pb)
            phi1 = ph0 + tdt * nph - h * pb * (div1 + dv0)
            div1 = div1 / (1 + tdt * self.hyper)
            phi1 = phi1 / (1 + tdt * self.hyper)
        else:
            div1, phi1 = self.div, self.phi
        if not first:
            a = c.robert_filter
            self.vort = self.vort + a * (vo0 - 2 * self.vort + vort1)
            if c.divergent:
                self.div = self.div + a * (dv0 - 2 * self.div + div1)
                self.phi = self.phi + a * (ph0 - 2 * self.phi + phi1)
        self._prev = (self.vort, self.div, self.phi)
        self.vort, self.div, self.phi = vort1 * sh.mask, div1 * sh.mask, phi1 * sh.mask
        self.day += dt / _DAY
        self._since_forcing += 1
        self.nsteps += 1

    def run(self, hours: float) -> None:
        """Integrate for ``hours`` (rounded to whole time steps)."""
        for _ in range(int(round(hours * 3600.0 / self.config.dt))):
            self.step()

    def diagnostics(self) -> dict[str, float]:
        """Global mass, total energy and max wind of the current state (for sanity checks)."""
        sh, c = self.sh, self.config
        u, v = sh.uv(self.vort, self.div)
        depth = c.phibar + sh.to_grid(self.phi)
        if not c.divergent:
            energy = sh.integrate(0.5 * (u * u + v * v))
        else:
            energy = sh.integrate(0.5 * depth * (u * u + v * v) + 0.5 * depth**2 + depth * self.phis_grid)
        return {"mass": float(sh.integrate(depth)), "energy": float(energy), "max_wind": float(np.hypot(u, v).max())}


# --------------------------------------------------------------------------------------------
# one year of model output on an output grid
# --------------------------------------------------------------------------------------------
def simulate_year(
    year: int,
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    seed: int = 0,
    config: AtmosphereConfig | None = None,
    spinup_days: float = 30.0,
    freq_hours: int = 6,
    days: float | None = None,
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Integrate the model through one calendar year and sample it on an output grid.

    Each year is an independent realisation: the model starts from rest ``spinup_days`` before
    1 January (seeded by ``(seed, year)``) and runs to 31 December.

    Parameters
    ----------
    year : int
    lat, lon : numpy.ndarray
        Output grid in degrees (``lon`` must be ``len(lon)`` equally spaced values from 0, as the
        model's); the spectral fields are evaluated exactly there.
    seed : int
    config : AtmosphereConfig, optional
    spinup_days : float
    freq_hours : int
        Output interval.
    days : float, optional
        Stop after this many days (default: the whole year).

    Returns
    -------
    time : pandas.DatetimeIndex
    state : dict
        ``zprime`` (free-surface geopotential anomaly, m2 s-2), ``u``, ``v`` (m s-1), ``vort``,
        ``div`` (s-1): float32 arrays ``(time, lat, lon)``.

    Examples
    --------
    >>> from xclimax.testing import grid_coords
    >>> t, s = simulate_year(2000, *grid_coords(32, 64), spinup_days=1, days=0.5)
    >>> len(t), s["u"].shape
    (2, (2, 32, 64))
    """
    config = config or AtmosphereConfig()
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if lon.size != config.nlon or not np.allclose(lon, 360.0 / lon.size * np.arange(lon.size)):
        raise ValueError(f"lon must be {config.nlon} equally spaced values from 0; got {lon.size} values from {lon[0]}")
    start = pd.Timestamp(f"{year}-01-01")
    end = pd.Timestamp(f"{year}-12-31T18:00") if days is None else start + pd.Timedelta(days=days) - pd.Timedelta(hours=freq_hours)
    time = pd.date_range(start, end, freq=f"{freq_hours}h")
    model = ShallowWaterModel(config, seed=[seed, year], start_day=-spinup_days)
    sh = model.sh
    per = int(round(freq_hours * 3600 / config.dt))
    model.run(spinup_days * 24)
    out = {k: np.empty((time.size, lat.size, lon.size), np.float32) for k in ("zprime", "u", "v", "vort", "div")}
    for i in tqdm(range(time.size), desc=f"demo atmosphere {year}", disable=not OPTIONS["progress"]):
        if i:
            for _ in range(per):
                model.step()
        z, vo, dv = sh.to_grid(np.stack([model.phi + model.phis, model.vort, model.div]), lat=lat)
        u, v = sh.uv(model.vort, model.div, lat=lat)
        out["zprime"][i], out["vort"][i], out["div"][i], out["u"][i], out["v"][i] = z, vo, dv, u, v
    if not all(np.isfinite(a).all() for a in out.values()):
        raise FloatingPointError(f"the demo atmosphere blew up in {year}")
    logger.info("simulated %s: %d steps of %.0f s", year, model.nsteps, config.dt)
    return time, out


# --------------------------------------------------------------------------------------------
# ERA5-like fields
# --------------------------------------------------------------------------------------------
_SIGMA = 1.6  # ln(1000/p) of the level where the wind profile peaks (~200 hPa)
_ALPHA, _BETA = 0.15, 1.347


def vertical_structure(p_hpa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equivalent-barotropic structure ``A(p)`` (1 at 500 hPa) and its derivative ``dA/d ln(1000/p)``.

    Examples
    --------
    >>> a, da = vertical_structure(np.array([500.0, 850.0]))
    >>> round(float(a[0]), 3), bool(da[1] > 0)
    (1.0, True)
    """
    x = np.log(1000.0 / np.asarray(p_hpa, float))
    e = np.exp(-0.5 * (x / _SIGMA) ** 2)
    x5 = np.log(2.0)
    scale = 1.0 / (_ALPHA + _BETA * x5 * np.exp(-0.5 * (x5 / _SIGMA) ** 2))
    return scale * (_ALPHA + _BETA * x * e), scale * _BETA * e * (1 - x**2 / _SIGMA**2)


def _reference(p_hpa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference geopotential and temperature (a standard-atmosphere-like, hydrostatic profile)."""
    t0, p0, gamma, pt = 288.15, 1013.25, 0.0065, 200.0  # surface T, p, lapse rate, tropopause p (hPa)
    k = R_DRY * gamma / G0
    p = np.asarray(p_hpa, float)
    tt = t0 * (pt / p0) ** k
    trop = p >= pt
    t = np.where(trop, t0 * (p / p0) ** k, tt)
    z_t = t0 / gamma * (1 - (pt / p0) ** k)
    z = np.where(trop, t0 / gamma * (1 - (p / p0) ** k), z_t + R_DRY * tt / G0 * np.log(pt / p))
    return G0 * z + 1000.0, t


def _qsat(t: np.ndarray, p_pa: np.ndarray | float) -> np.ndarray:
    es = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))  # Bolton (1980), Pa
    return 0.622 * es / np.maximum(p_pa - 0.378 * es, 0.5 * p_pa)


def derive_fields(
    time: pd.DatetimeIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    state: dict[str, np.ndarray],
    levels: Sequence[float] = (250, 500, 850),
) -> dict[str, np.ndarray]:
    """ERA5-like fields from the model state of :func:`simulate_year`.

    Pressure-level fields (``geopotential``, ``temperature``, ``u_component_of_wind``,
    ``v_component_of_wind``, ``specific_humidity``) have shape ``(time, level, lat, lon)``:

    * ``Phi(p) = Phi_ref(p) + A(p) Z'`` and ``(u, v)(p) = A(p) (u, v)_500``;
    * ``T(p) = -(1/R) dPhi/d ln p = T_ref(p) + Z' A'(p) / R`` (hydrostatic);
    * ``q = RH q_sat(T, p)`` with RH raised by cyclonic vorticity and upper-level divergence (ascent).

    Surface fields (``2m_temperature``, ``10m_u/v_component_of_wind``) have shape
    ``(time, lat, lon)``: the 925 hPa temperature brought to the surface with a 6.5 K/km lapse rate,
    plus a land seasonal cycle (no diurnal cycle: ClimaX has no time-of-day input); 10 m winds are 925 hPa winds reduced by surface friction
    and turned towards low pressure.  Constants ``land_sea_mask`` and ``geopotential_at_surface``
    have shape ``(lat, lon)``.  All arrays are float32.

    Examples
    --------
    >>> from xclimax.testing import grid_coords
    >>> lat, lon = grid_coords(32, 64)
    >>> t, s = simulate_year(2000, lat, lon, spinup_days=1, days=0.25)
    >>> f = derive_fields(t, lat, lon, s, levels=[500, 850])
    >>> f["temperature"].shape, f["2m_temperature"].shape
    ((1, 2, 32, 64), (1, 32, 64))
    """
    f32 = np.float32
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    p = np.asarray(levels, float)
    # small coefficient arrays in float32 so that the big arrays stay float32
    lev = (None, slice(None), None, None)
    A, dA = (a.astype(f32)[lev] for a in vertical_structure(p))
    phi_ref, t_ref = (a.astype(f32)[lev] for a in _reference(p))
    (a925,), (da925,) = vertical_structure(np.array([925.0]))
    (phi925,), (t925_ref,) = _reference(np.array([925.0]))
    z = state["zprime"].astype(f32)
    us, vs = state["u"].astype(f32), state["v"].astype(f32)
    geo = phi_ref + A * z[:, None]
    temp = t_ref + dA * (z[:, None] / f32(R_DRY))
    # humidity: relative humidity from a climatological profile modulated by the weather
    lat2 = lat[:, None]
    lsm = land_sea_mask(lat, lon)
    sgn = np.sign(lat2)
    cyclonic = np.tanh(state["vort"] * (sgn / 4e-5).astype(f32))[:, None]
    ascent = np.tanh(state["div"] * f32(1 / 3e-6))[:, None]
    rh0 = (0.2 + 0.55 * (p / 1000.0) ** 2)[lev] * (1 + 0.25 * np.exp(-0.5 * (lat2 / 15.0) ** 2)) * (1 - 0.2 * lsm)
    rh = np.clip(rh0.astype(f32) * (1 + f32(0.35) * (cyclonic + ascent)), f32(0.02), f32(1.0))
    q = rh * _qsat(temp, (p[lev] * 100.0).astype(f32))
    # surface: 925 hPa temperature brought down (or up) to the surface with a 6.5 K/km lapse rate
    zs = orography(lat, lon)
    t925 = f32(t925_ref) + f32(da925 / R_DRY) * z
    z925 = f32(phi925 / G0) + f32(a925 / G0) * z
    doy = np.asarray(time.day_of_year, float)[:, None, None]
    summer = -np.cos(2 * np.pi * (doy - 15.0) / 365.25) * np.sin(np.deg2rad(lat2))  # >0 in local summer
    t2m = t925 + f32(0.0065) * (z925 - zs.astype(f32)) + (lsm * 7.0 * summer - 2.0 * lsm * (zs > 2000)).astype(f32)
    # 10 m winds: 925 hPa winds slowed by friction and turned towards low pressure
    turn = np.deg2rad(20.0) * sgn  # to the left in the north, to the right in the south
    red = 1.0 - 0.2 * lsm
    cu, su = (a925 * red * np.cos(turn)).astype(f32), (a925 * red * np.sin(turn)).astype(f32)
    return {
        "geopotential": geo,
        "temperature": temp,
        "u_component_of_wind": A * us[:, None],
        "v_component_of_wind": A * vs[:, None],
        "specific_humidity": q.astype(f32),
        "2m_temperature": t2m.astype(f32),
        "10m_u_component_of_wind": cu * us - su * vs,
        "10m_v_component_of_wind": su * us + cu * vs,
        "land_sea_mask": lsm.astype(f32),
        "geopotential_at_surface": (G0 * zs).astype(f32),
    }
