"""Physics sanity of the demo-data atmosphere model (xclimax.atmosphere)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from xclimax.demo.atmosphere import (
    EARTH_RADIUS,
    OMEGA,
    R_DRY,
    AtmosphereConfig,
    ShallowWaterModel,
    SphericalHarmonics,
    derive_fields,
    land_sea_mask,
    orography,
    simulate_year,
    vertical_structure,
)
from xclimax.testing import grid_coords

LAT, LON = grid_coords(32, 64)
UNFORCED = dict(forced=False, hyperdiff_hours=1e12, orography_scale=0.0, robert_filter=0.01)


@pytest.fixture(scope="module")
def sh():
    return SphericalHarmonics(21, 32, 64)


def _random_spec(sh, seed=0):
    rng = np.random.default_rng(seed)
    c = (rng.standard_normal(sh.mask.shape) + 1j * rng.standard_normal(sh.mask.shape)) * sh.mask
    c[0] = c[0].real  # m = 0 coefficients of a real field are real
    return c


def test_legendre_orthonormal(sh):
    P = sh._P.real  # [m, n, j]
    gram = np.einsum("mnj,mkj,j->mnk", P, P, sh.weights)
    np.testing.assert_allclose(gram, np.eye(22)[None] * sh.mask[:, :, None], atol=1e-12)


def test_transform_round_trip(sh):
    c = _random_spec(sh)
    np.testing.assert_allclose(sh.to_spec(sh.to_grid(c)), c, atol=1e-10)
    g = sh.to_grid(c)
    np.testing.assert_allclose(sh.to_grid(sh.to_spec(g)), g, atol=1e-10)


def test_exact_evaluation_on_output_grid(sh):
    # an analytic field of degree <= 21 evaluated off the Gaussian grid, on the ClimaX grid
    def f(lat, lon):
        la, lo = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
        return np.sin(la) * np.cos(la) * np.cos(lo) + np.cos(la) ** 5 * np.sin(5 * lo) + 0.3 * np.sin(la) ** 3

    c = sh.to_spec(f(sh.lat, sh.lon))
    np.testing.assert_allclose(sh.to_grid(c, lat=LAT), f(LAT, LON), atol=1e-12)


def test_winds_from_vorticity_and_divergence(sh):
    # solid-body rotation: vorticity 2 u0 sin(lat) / a, no divergence
    u0 = 20.0
    la = np.deg2rad(sh.lat)[:, None] * np.ones((1, 64))
    u, v = u0 * np.cos(la), np.zeros_like(la)
    vort, div = sh.vortdiv(u, v)
    np.testing.assert_allclose(sh.to_grid(vort), 2 * u0 / EARTH_RADIUS * np.sin(la), atol=1e-18)
    np.testing.assert_allclose(sh.to_grid(div), 0.0, atol=1e-18)
    uo, vo = sh.uv(vort, div, lat=LAT)
    np.testing.assert_allclose(uo, u0 * np.cos(np.deg2rad(LAT))[:, None] * np.ones((1, 64)), atol=1e-10)
    np.testing.assert_allclose(vo, 0.0, atol=1e-10)
    # a purely divergent field: chi = Y_2^0-like -> v only, u = 0
    chi = sh.to_spec(EARTH_RADIUS * 1e-6 * np.sin(la) ** 2)
    u2, v2 = sh.uv(np.zeros_like(chi), sh.lap * chi)
    # v = (1/a) d(chi)/d(lat) = 1e-6 * 2 sin cos * a / a
    np.testing.assert_allclose(v2, 2e-6 * np.sin(la) * np.cos(la), atol=1e-12)
    np.testing.assert_allclose(u2, 0.0, atol=1e-12)


def test_rossby_haurwitz_phase_speed():
    """Non-divergent Rossby-Haurwitz wave (R = 4) travels at Haurwitz's analytic angular speed."""
    R, omega, K = 4, 7.848e-6, 7.848e-6
    m = ShallowWaterModel(AtmosphereConfig(divergent=False, dt=1800.0, **UNFORCED))
    sh = m.sh
    la, lo = np.deg2rad(sh.lat)[:, None], np.deg2rad(sh.lon)[None, :]
    zeta = 2 * omega * np.sin(la) - K * np.sin(la) * np.cos(la) ** R * (R**2 + 3 * R + 2) * np.cos(R * lo)
    m.vort = sh.to_spec(zeta)
    c0 = m.vort[R, R + 1]
    m.run(hours=48)
    nu = (R * (3 + R) * omega - 2 * OMEGA) / ((1 + R) * (2 + R))
    phase = np.angle(m.vort[R, R + 1] / c0)
    speed = -phase / R / (48 * 3600)
    assert speed == pytest.approx(nu, rel=2e-3)
    assert abs(m.vort[R, R + 1]) == pytest.approx(abs(c0), rel=1e-3)  # shape preserved


def _williamson2(m, u0=2 * np.pi * EARTH_RADIUS / (12 * 86400)):
    sh = m.sh
    la = np.deg2rad(sh.lat)[:, None] * np.ones((1, sh.nlon))
    m.vort, m.div = sh.vortdiv(u0 * np.cos(la), np.zeros_like(la))
    m.phi = sh.to_spec(-(EARTH_RADIUS * OMEGA * u0 + 0.5 * u0**2) * np.sin(la) ** 2)


def test_steady_geostrophic_flow():
    """Williamson et al. (1992) test 2: zonal flow in nonlinear balance stays steady."""
    m = ShallowWaterModel(AtmosphereConfig(phibar=2.94e4, **UNFORCED))
    _williamson2(m)
    phi0 = m.sh.to_grid(m.phi)
    m.run(hours=48)
    err = np.abs(m.sh.to_grid(m.phi) - phi0).max() / np.abs(phi0).max()
    assert err < 1e-6
    assert np.abs(m.sh.to_grid(m.div)).max() < 1e-12


def test_unforced_inviscid_conserves_mass_and_energy():
    m = ShallowWaterModel(AtmosphereConfig(phibar=2.94e4, **UNFORCED))
    _williamson2(m)
    la, lo = np.deg2rad(m.sh.lat)[:, None], np.deg2rad(m.sh.lon)[None, :]
    m.vort = m.vort + m.sh.to_spec(2e-5 * np.cos(la) ** 6 * np.sin(la) * np.cos(6 * lo))  # unbalanced eddies
    d0 = m.diagnostics()
    m.run(hours=72)
    d1 = m.diagnostics()
    assert d1["mass"] == pytest.approx(d0["mass"], rel=1e-12)
    assert d1["energy"] == pytest.approx(d0["energy"], rel=1e-4)
    assert np.abs(m.sh.to_grid(m.div)).max() > 1e-8  # the flow is really divergent


def test_forced_model_determinism_and_weather():
    a = simulate_year(2001, LAT, LON, seed=3, spinup_days=6, days=2)
    b = simulate_year(2001, LAT, LON, seed=3, spinup_days=6, days=2)
    c = simulate_year(2001, LAT, LON, seed=4, spinup_days=6, days=2)
    for k in a[1]:
        assert np.isfinite(a[1][k]).all()
        np.testing.assert_array_equal(a[1][k], b[1][k])
    assert not np.array_equal(a[1]["vort"], c[1]["vort"])
    assert len(a[0]) == 8
    u = a[1]["u"]
    assert 15 < u.max() < 100  # spun-up jets
    # weather evolves: 6-hourly changes are smaller than 18-hourly ones
    z = a[1]["zprime"]
    assert 0 < np.abs(z[1:] - z[:-1]).mean() < np.abs(z[4:] - z[:-4]).mean()


def test_geography():
    lsm, oro = land_sea_mask(LAT, LON), orography(LAT, LON)
    assert set(np.unique(lsm)) == {0.0, 1.0}
    assert 0.2 < lsm.mean() < 0.45  # roughly Earth's land fraction (unweighted)
    assert (oro >= 0).all() and oro.max() > 4000
    assert (oro[lsm == 0] < 500).all()


def test_derived_fields_hydrostatic_and_ranges():
    rng = np.random.default_rng(0)
    la = np.deg2rad(LAT)[None, :, None]
    shape = (2, 32, 64)
    state = {
        "zprime": (3000 - 8000 * np.sin(la) ** 2 + 500 * rng.standard_normal(shape)).astype(np.float32),
        "u": (20 * np.cos(la) + rng.standard_normal(shape)).astype(np.float32),
        "v": rng.standard_normal(shape).astype(np.float32),
        "vort": (1e-5 * rng.standard_normal(shape)).astype(np.float32),
        "div": (1e-6 * rng.standard_normal(shape)).astype(np.float32),
    }
    time = pd.date_range("2000-01-01", periods=2, freq="6h")
    levels = np.linspace(500, 850, 301)
    f = derive_fields(time, LAT, LON, state, levels=levels)
    # hypsometric equation: Phi(500) - Phi(850) = R int T dln p (trapezoid on a fine level grid)
    thick = f["geopotential"][:, 0].astype(float) - f["geopotential"][:, -1]
    lnp = np.log(levels)
    t = f["temperature"].astype(float)
    integral = R_DRY * np.sum(0.5 * (t[:, 1:] + t[:, :-1]) * np.diff(lnp)[None, :, None, None], axis=1)
    np.testing.assert_allclose(thick, integral, rtol=1e-4)
    # thermal wind: winds grow with height where the atmosphere is baroclinic
    a, _ = vertical_structure(np.array([250.0, 500.0, 850.0]))
    assert a[0] > a[1] > a[2] > 0 and a[1] == pytest.approx(1.0)
    f = derive_fields(time, LAT, LON, state)
    assert f["specific_humidity"].min() > 0 and f["specific_humidity"].max() < 0.03
    assert "relative_humidity" not in f
    assert 200 < f["temperature"].min() and f["temperature"].max() < 320
    assert np.all(np.isfinite(f["2m_temperature"]))


def test_no_diurnal_cycle():
    """The same state at 00 and 12 UTC gives the same 2 m temperature (up to half a day of season)."""
    rng = np.random.default_rng(1)
    one = {k: rng.standard_normal((1, 32, 64)).astype(np.float32) * s
           for k, s in [("zprime", 500.0), ("u", 10.0), ("v", 5.0), ("vort", 1e-5), ("div", 1e-6)]}
    state = {k: np.concatenate([v, v]) for k, v in one.items()}
    time = pd.DatetimeIndex(["2000-07-01T00:00", "2000-07-01T12:00"])
    t2m = derive_fields(time, LAT, LON, state)["2m_temperature"]
    assert np.abs(t2m[1] - t2m[0]).max() < 0.05


def test_weather_is_mostly_deterministic_at_24h():
    """Twin experiment: other stochastic forcing changes a day's evolution much less than the flow does."""
    m = ShallowWaterModel(AtmosphereConfig(), seed=[0, 2000], start_day=-20)
    m.run(20 * 24)
    sh = m.sh
    w = sh.weights[:, None] / sh.weights.mean()

    def fields(x):
        return np.stack([sh.to_grid(x.phi + x.phis), *sh.uv(x.vort, x.div)])

    start = fields(m)
    twin = copy.deepcopy(m)
    twin.rng = np.random.default_rng(99)
    twin._white = twin._noise(twin._band)  # a fresh forcing history too
    m.run(24)
    twin.run(24)
    truth = fields(m)

    def rms(a):
        return np.sqrt(np.mean(a**2 * w, axis=(1, 2)))

    persistence, noise = rms(truth - start), rms(fields(twin) - truth)
    assert (noise < 0.7 * persistence).all(), (noise, persistence)
    assert persistence[0] > 300  # z' changes by more than 30 gpm rms in a day
