"""Halo models against obscura's own test values and the SHM's invariants."""
import numpy as np
import pytest

from dmca_hpc.detection import halo


@pytest.fixture
def obscura_shm():
    # obscura tests/test_DM_Halo_Models.cpp: galactic frame (v_obs = 0), v0 = 220, v_esc = 544
    return halo.SHM(v0_km_s=220.0, v_earth_km_s=0.0, v_esc_km_s=544.0, rho_gev_cm3=0.4)


def test_obscura_cdf_mean_eta(obscura_shm):
    # obscura quotes 15 digits for the CDF and eta (closed forms); both are closed
    # forms here too, so agreement to 1e-12 tests the same formula, not luck.
    assert obscura_shm.speed_cdf(300.0) == pytest.approx(0.711273889588767, rel=1e-12)
    assert obscura_shm.mean_speed() == pytest.approx(245.97191, abs=5e-6)  # 8 digits stated
    assert obscura_shm.eta(300.0) == pytest.approx(7.9276427680802335e-4, rel=1e-12)


@pytest.mark.parametrize("name", ["shm-2021", "qedark-2016", "legacy"])
def test_eta_monotone_and_zero_above_vmax(name):
    h = halo.get_halo(name)
    v = np.linspace(0, h.v_max_km_s * 1.2, 5001)
    eta = h.eta(v)
    assert np.all(np.diff(eta) <= 1e-18)
    assert np.all(eta[v >= h.v_max_km_s] == 0.0)
    assert np.all(eta[v < h.v_max_km_s - 1] > 0)
    # eta(0) = <1/v> must equal the integral of f(v)/v (speed pdf integrates to 1)
    from scipy.integrate import quad
    kink = [h.v_esc_km_s - h.v_earth_km_s]  # f(v) has a kink there: tell quad
    assert quad(h.speed_pdf, 0, h.v_max_km_s, points=kink, limit=200)[0] == pytest.approx(1, rel=1e-9)
    inv = quad(lambda x: h.speed_pdf(x) / x, 1e-9, h.v_max_km_s, points=kink, limit=200)[0]
    assert h.eta(0.0) == pytest.approx(inv, rel=1e-7)


@pytest.mark.parametrize("v_earth", [250.2, 0.0])
def test_eta_point_equals_eta_shm(v_earth):
    """halo.eta_shm_point (plain floats, what the Numba rate kernel compiles)
    is the closed form of halo.eta_shm: the same arithmetic with math.erf for
    scipy's erf, so equal to 1e-12 relative (absolute 1e-12 eta(0) where eta
    cancels to ~0 just below v_max), both branches and the v_E = 0 limit."""
    import math
    v0, vesc = 238.0, 544.0
    v = np.linspace(0.0, (vesc + v_earth) * 1.05, 4001)
    ref = halo.eta_shm(v, v0, v_earth, vesc)
    z, y = vesc / v0, v_earth / v0
    ez, norm = math.exp(-z * z), halo.norm_esc(z)
    pt = np.array([halo.eta_shm_point(vm / v0, y, z, ez, norm, v0) for vm in v])
    np.testing.assert_allclose(pt, ref, rtol=1e-12, atol=1e-12 * ref[0])
    assert np.all(pt[v >= vesc + v_earth] == 0.0)


def test_presets_match_physics_md():
    h = halo.get_halo("shm-2021")
    assert (h.v0_km_s, h.v_earth_km_s, h.v_esc_km_s, h.rho_gev_cm3) == (238, 250.2, 544, 0.3)
    h = halo.get_halo("qedark-2016")
    assert (h.v0_km_s, h.v_earth_km_s, h.v_esc_km_s, h.rho_gev_cm3) == (220, 232, 544, 0.4)
    h = halo.get_halo("legacy")
    assert (h.v0_km_s, h.v_earth_km_s, h.v_esc_km_s, h.rho_gev_cm3) == (230, 240, 600, 0.4)
    c = halo.get_halo("custom", v0_km_s=200, v_earth_km_s=210, v_esc_km_s=500, rho_gev_cm3=0.5)
    assert c.v_max_km_s == 710


def test_unknown_halo_lists_known():
    with pytest.raises(ValueError, match="shm-2021.*") as e:
        halo.get_halo("nfw-2000")
    for n in ("shm-2021", "qedark-2016", "legacy", "shm++"):
        assert n in str(e.value)


def test_annual_modulation():
    days = np.arange(0, 365)
    v = halo.earth_speed_km_s(days, 238.0)
    peak = days[np.argmax(v)]
    # Earth's speed through the halo peaks around June 1 (day ~150), minimum in December;
    # amplitude ~ V_orbit cos(60 deg) ~ 15 km/s (Lee, Lisanti & Safdi 2013)
    assert 140 <= peak <= 160
    assert (v.max() - v.min()) / 2 == pytest.approx(14.5, abs=1.0)
    h = halo.get_halo("shm-2021")
    june, dec = h.on_day(152), h.on_day(335)
    assert june.v_earth_km_s > h.v_earth_km_s > dec.v_earth_km_s
    assert np.mean([h.on_day(d).v_earth_km_s for d in days]) == pytest.approx(250.2, abs=0.05)


def test_shm_plus_plus():
    # with no sausage the tabulated SHM++ machinery must reproduce the closed form
    h0 = halo.shm_plus_plus(eta_s=0.0)
    ref = halo.SHM(233.0, h0.params()["v_earth_km_s"], 528.0, 0.55)
    v = np.array([0.0, 100.0, 300.0, 500.0, 650.0])
    assert np.allclose(h0.eta(v), ref.eta(v), rtol=2e-4)  # grid of 1200 speeds, linear interp
    hp = halo.get_halo("shm++")
    assert hp.params()["eta_s"] == 0.2 and hp.rho_gev_cm3 == 0.55
    e = hp.eta(np.linspace(0, 800, 400))
    assert np.all(np.diff(e) <= 1e-15) and e[-1] == 0.0
    # the sausage changes the shape (not a rescaling of the round halo)
    assert abs(hp.eta(50.0) / h0.eta(50.0) - hp.eta(400.0) / h0.eta(400.0)) > 0.01
    with pytest.raises(ValueError, match="beta"):
        halo.shm_plus_plus(beta=1.5)
