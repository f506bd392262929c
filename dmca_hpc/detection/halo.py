"""Dark-matter halo models: velocity distributions and eta(v_min).

Conventions (shared/design/physics.md):

* velocities in km/s unless a name ends in ``_c`` (fraction of c);
  densities in GeV/cm^3;
* ``eta(v_min) = Int d^3v f_E(v) / v Theta(v - v_min)`` in the Earth frame,
  in s/km (``eta``) or in units of 1/c (``eta_c``, what the rate formulas use);
* the Standard Halo Model (SHM) is a Maxwellian of dispersion parameter v0
  truncated at v_esc in the galactic frame (Lewin & Smith 1996), boosted by
  the Earth velocity v_E; its eta has a closed form (:func:`eta_shm`, and
  :func:`eta_shm_point`, the same formula for one point, which the Numba
  rate kernel compiles).

Presets (physics.md table): ``shm-2021`` (Baxter et al. 2021, QCDark),
``qedark-2016`` (Essig et al. 2016), ``legacy`` (EXCEED-DM), and ``shm++``
(Evans, O'Hare & McCabe 2019: round SHM plus an anisotropic "sausage"
component of fraction eta_s = 0.2 and anisotropy beta = 0.9, with
v0 = 233, v_esc = 528 km/s, rho = 0.55 GeV/cm^3).

Annual modulation: :func:`earth_velocity` gives the Earth's velocity vector
in galactic coordinates versus day of year (Lee, Lisanti & Safdi 2013,
circular orbit); :meth:`SHM.on_day` returns the SHM with v_E(day) =
preset v_E + (|v_E(day)| - annual mean), so the annual mean stays the
preset's number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from dmca_hpc import units as U

_SQRT_PI = math.sqrt(math.pi)

#: presets: name -> (v0, v_E, v_esc [km/s], rho [GeV/cm^3], description)
PRESETS = {
    "shm-2021": (238.0, 250.2, 544.0, 0.3,
                 "Baxter et al. 2021 recommended SHM (QCDark default)"),
    "qedark-2016": (220.0, 232.0, 544.0, 0.4, "Essig et al. 2016 (QEdark)"),
    "legacy": (230.0, 240.0, 600.0, 0.4, "EXCEED-DM default"),
}
#: SHM++ parameters (Evans, O'Hare & McCabe, PRD 99, 023012 (2019), table I)
SHMPP = {"v0": 233.0, "v_esc": 528.0, "rho": 0.55, "eta_s": 0.2, "beta": 0.9}

#: solar peculiar velocity (Schoenrich, Binney & Dehnen 2010) [km/s], galactic (U, V, W)
V_PECULIAR_KM_S = np.array([11.1, 12.24, 7.25])
#: Earth's mean orbital speed [km/s]
V_ORBIT_KM_S = 29.8
#: ecliptic basis vectors in galactic coordinates (Lee, Lisanti & Safdi 2013)
_E1 = np.array([0.9940, 0.1095, 0.003116])
_E2 = np.array([-0.05173, 0.4945, -0.8677])
#: day of year (1 = Jan 1) of the March equinox, phase of the orbit
_T_EQUINOX_DAY = 80.0
_DAYS_PER_YEAR = 365.25


def known_halos() -> list[str]:
    return sorted(list(PRESETS) + ["shm++"])


def norm_esc(z: float) -> float:
    """Normalization of the truncated Maxwellian, N_esc = erf(z) -
    2 z exp(-z^2)/sqrt(pi), z = v_esc/v0 (Lewin & Smith eq. A1a / pi^1.5 v0^3)."""
    return math.erf(z) - 2.0 * z * math.exp(-z * z) / _SQRT_PI


def eta_shm(vmin_km_s, v0: float, v_e: float, v_esc: float):
    """Closed-form eta(v_min) of the SHM [s/km], vectorized over ``vmin_km_s``.

    Lewin & Smith / Savage et al.: with x = v_min/v0, y = v_E/v0, z = v_esc/v0,
    N = erf(z) - 2 z e^{-z^2}/sqrt(pi),
      x < z - y:       eta = [erf(x+y) - erf(x-y) - 4 y e^{-z^2}/sqrt(pi)] / (2 N y v0)
      z - y <= x < z + y: eta = [erf(z) - erf(x-y) - 2 (z+y-x) e^{-z^2}/sqrt(pi)] / (2 N y v0)
      x >= z + y:      eta = 0.
    For v_E -> 0 the y -> 0 limit 2 (e^{-x^2} - e^{-z^2}) / (sqrt(pi) N v0) is used.
    """
    from scipy.special import erf
    vmin = np.asarray(vmin_km_s, dtype=float)
    x = vmin / v0
    z = v_esc / v0
    y = v_e / v0
    n = norm_esc(z)
    ez = math.exp(-z * z)
    if y < 1e-8:
        out = np.where(x < z, 2.0 * (np.exp(-x * x) - ez) / (_SQRT_PI * n * v0), 0.0)
        return np.maximum(out, 0.0)
    low = erf(x + y) - erf(x - y) - 4.0 * y * ez / _SQRT_PI
    mid = erf(z) - erf(x - y) - 2.0 * (z + y - x) * ez / _SQRT_PI
    out = np.where(x < z - y, low, np.where(x < z + y, mid, 0.0)) / (2.0 * n * y * v0)
    # tiny negative values from round-off near x = z + y
    return np.maximum(out, 0.0)


def eta_shm_point(x: float, y: float, z: float, ez: float, norm: float, v0: float) -> float:
    """The closed form of :func:`eta_shm` at one point, for compiled kernels.

    Plain floats and :mod:`math` only, so Numba compiles it into the rate
    kernel of :mod:`dmca_hpc.detection.rates` (one copy of the SHM's eta:
    the kernel no longer carries its own).  Arguments in reduced units:
    x = v_min/v0, y = v_E/v0, z = v_esc/v0, with ez = exp(-z^2) and
    norm = :func:`norm_esc` (z) precomputed once per halo; v0 in the unit
    the caller works in (fraction of c in the rate kernel).  Returns eta in
    1/[v0], clipped at 0 (round-off near x = z + y), like :func:`eta_shm`;
    the same arithmetic, but math.erf instead of scipy's erf, so the two
    agree to round-off (~1e-15 relative), not bit for bit.
    """
    if y < 1e-8:
        if x >= z:
            return 0.0
        eta = 2.0 * (math.exp(-x * x) - ez) / (_SQRT_PI * norm * v0)
        return eta if eta > 0.0 else 0.0
    if x >= z + y:
        return 0.0
    if x < z - y:
        num = math.erf(x + y) - math.erf(x - y) - 4.0 * y * ez / _SQRT_PI
    else:
        num = math.erf(z) - math.erf(x - y) - 2.0 * (z + y - x) * ez / _SQRT_PI
    eta = num / (2.0 * norm * y * v0)
    return eta if eta > 0.0 else 0.0


@dataclass(frozen=True)
class SHM:
    """Standard Halo Model (isotropic truncated Maxwellian).

    Args:
        v0_km_s: dispersion parameter (the most probable galactic speed) [km/s].
        v_earth_km_s: Earth speed in the galactic frame [km/s].
        v_esc_km_s: galactic escape speed [km/s].
        rho_gev_cm3: local DM density [GeV/cm^3].
        name: label used in outputs.
    """

    v0_km_s: float
    v_earth_km_s: float
    v_esc_km_s: float
    rho_gev_cm3: float
    name: str = "custom"

    def __post_init__(self):
        for k in ("v0_km_s", "v_esc_km_s", "rho_gev_cm3"):
            v = getattr(self, k)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"halo {self.name}: {k} must be positive, got {v!r}")
        if not (np.isfinite(self.v_earth_km_s) and self.v_earth_km_s >= 0):
            raise ValueError(f"halo {self.name}: v_earth_km_s must be >= 0, "
                             f"got {self.v_earth_km_s!r}")

    closed_form = True

    @property
    def v_max_km_s(self) -> float:
        """Largest DM speed in the Earth frame, v_esc + v_E [km/s]."""
        return self.v_esc_km_s + self.v_earth_km_s

    def eta(self, vmin_km_s):
        """eta(v_min) [s/km]."""
        return eta_shm(vmin_km_s, self.v0_km_s, self.v_earth_km_s, self.v_esc_km_s)

    def eta_c(self, vmin_c):
        """eta(v_min) in units of 1/c, for v_min given as a fraction of c."""
        return self.eta(np.asarray(vmin_c) * U.C_KM_S) * U.C_KM_S

    def speed_pdf(self, v_km_s):
        """Earth-frame speed distribution f(v) [s/km], normalized to 1."""
        v = np.asarray(v_km_s, dtype=float)
        v0, ve, vesc = self.v0_km_s, self.v_earth_km_s, self.v_esc_km_s
        n = norm_esc(vesc / v0)
        if ve < 1e-8:
            f = 4.0 * v * v / (_SQRT_PI * n * v0**3) * np.exp(-(v / v0) ** 2)
            return np.where((v >= 0) & (v < vesc), f, 0.0)
        upper = np.minimum(v + ve, vesc)
        f = v / (_SQRT_PI * n * v0 * ve) * (np.exp(-((v - ve) / v0) ** 2)
                                             - np.exp(-(upper / v0) ** 2))
        return np.where((v >= 0) & (v < vesc + ve), np.maximum(f, 0.0), 0.0)

    def speed_cdf(self, v_km_s) -> float:
        """P(speed < v) in the Earth frame.  Closed form for v_E = 0, else quadrature."""
        v = float(v_km_s)
        if self.v_earth_km_s < 1e-8:
            if v >= self.v_esc_km_s:
                return 1.0
            x = v / self.v0_km_s
            return norm_esc(x) / norm_esc(self.v_esc_km_s / self.v0_km_s)
        from scipy.integrate import quad
        return quad(self.speed_pdf, 0.0, min(v, self.v_max_km_s), epsabs=1e-13, epsrel=1e-12,
                    limit=200)[0]

    def mean_speed(self) -> float:
        """<v> in the Earth frame [km/s].  Closed form for v_E = 0:
        <v> = 2 v0 [1 - (1 + z^2) e^{-z^2}] / (sqrt(pi) N_esc)."""
        v0, z = self.v0_km_s, self.v_esc_km_s / self.v0_km_s
        if self.v_earth_km_s < 1e-8:
            return 2.0 * v0 * (1.0 - (1.0 + z * z) * math.exp(-z * z)) / (_SQRT_PI * norm_esc(z))
        from scipy.integrate import quad
        return quad(lambda v: v * self.speed_pdf(v), 0.0, self.v_max_km_s,
                    epsabs=1e-12, epsrel=1e-12, limit=200)[0]

    def with_params(self, **kw) -> "SHM":
        """Copy with some parameters replaced (keyword names as the fields)."""
        return replace(self, **kw)

    def on_day(self, day_of_year: float) -> "SHM":
        """The same halo seen on ``day_of_year`` (annual modulation)."""
        vmod = earth_speed_km_s(day_of_year, self.v0_km_s) - mean_earth_speed_km_s(self.v0_km_s)
        return replace(self, v_earth_km_s=self.v_earth_km_s + vmod,
                       name=f"{self.name}@day{day_of_year:g}")

    def params(self) -> dict:
        return {"model": "shm", "name": self.name, "v0_km_s": self.v0_km_s,
                "v_earth_km_s": self.v_earth_km_s, "v_esc_km_s": self.v_esc_km_s,
                "rho_gev_cm3": self.rho_gev_cm3}


def earth_velocity(day_of_year, v_circ_km_s: float = 238.0) -> np.ndarray:
    """Earth velocity in the galactic rest frame, galactic coordinates
    (x to the Galactic centre, y along rotation, z to the north pole) [km/s].

    v = (0, v_circ, 0) + v_peculiar + V_orbit (e1 cos w(t-t_eq) + e2 sin w(t-t_eq))
    (Lee, Lisanti & Safdi, JCAP 11 (2013) 033, circular orbit).
    ``day_of_year`` may be an array; returns shape (..., 3)."""
    t = np.asarray(day_of_year, dtype=float)
    phase = 2.0 * np.pi * (t - _T_EQUINOX_DAY) / _DAYS_PER_YEAR
    orb = V_ORBIT_KM_S * (np.cos(phase)[..., None] * _E1 + np.sin(phase)[..., None] * _E2)
    return np.array([0.0, v_circ_km_s, 0.0]) + V_PECULIAR_KM_S + orb


def earth_speed_km_s(day_of_year, v_circ_km_s: float = 238.0):
    """|v_E(day)| [km/s]."""
    return np.linalg.norm(earth_velocity(day_of_year, v_circ_km_s), axis=-1)


def mean_earth_speed_km_s(v_circ_km_s: float = 238.0) -> float:
    """Annual mean of |v_E| [km/s] (mean over 365 equally spaced days)."""
    days = np.arange(365) * _DAYS_PER_YEAR / 365.0
    return float(np.mean(earth_speed_km_s(days, v_circ_km_s)))


@dataclass(frozen=True)
class TabulatedHalo:
    """A halo whose eta(v_min) is tabulated on a fine speed grid (models
    without a closed form, e.g. SHM++).  eta is interpolated linearly.

    Args:
        v_km_s: increasing speed grid [km/s], from 0 to v_max.
        eta_s_km: eta on that grid [s/km].
        rho_gev_cm3: local density [GeV/cm^3].
    """

    v_km_s: np.ndarray
    eta_s_km: np.ndarray
    rho_gev_cm3: float
    name: str = "tabulated"
    extra: tuple = ()

    closed_form = False

    @property
    def v_max_km_s(self) -> float:
        return float(self.v_km_s[-1])

    def eta(self, vmin_km_s):
        return np.interp(np.asarray(vmin_km_s, dtype=float), self.v_km_s, self.eta_s_km,
                         left=float(self.eta_s_km[0]), right=0.0)

    def eta_c(self, vmin_c):
        return self.eta(np.asarray(vmin_c) * U.C_KM_S) * U.C_KM_S

    def params(self) -> dict:
        d = {"model": "tabulated", "name": self.name, "rho_gev_cm3": self.rho_gev_cm3,
             "v_max_km_s": self.v_max_km_s}
        d.update(dict(self.extra))
        return d


def _earth_frame_speed_pdf(fgal: Callable, v_e_vec: np.ndarray, v_grid: np.ndarray,
                           n_mu: int = 96, n_phi: int = 96) -> np.ndarray:
    """f(v) = v^2 Int dOmega f_gal(v n + v_E) on ``v_grid`` (unnormalized),
    by Gauss-Legendre in cos(theta) and the trapezoid (exact for periodic
    functions) in phi."""
    mu, wmu = np.polynomial.legendre.leggauss(n_mu)
    phi = np.arange(n_phi) * (2 * np.pi / n_phi)
    st = np.sqrt(1 - mu * mu)
    n = np.stack([np.outer(st, np.cos(phi)), np.outer(st, np.sin(phi)),
                  np.outer(mu, np.ones_like(phi))], axis=-1)  # (n_mu, n_phi, 3)
    w = np.outer(wmu, np.full(n_phi, 2 * np.pi / n_phi))
    out = np.empty_like(v_grid)
    for i, v in enumerate(v_grid):
        vg = v * n + v_e_vec
        out[i] = v * v * np.sum(w * fgal(vg))
    return out


def shm_plus_plus(eta_s: float = SHMPP["eta_s"], beta: float = SHMPP["beta"],
                  v0_km_s: float = SHMPP["v0"], v_esc_km_s: float = SHMPP["v_esc"],
                  rho_gev_cm3: float = SHMPP["rho"], day_of_year: float | None = None,
                  n_v: int = 1200) -> TabulatedHalo:
    """SHM++ (Evans, O'Hare & McCabe 2019): f = (1 - eta_s) f_round + eta_s f_sausage.

    f_round is the SHM; f_sausage is a Gaussian with radial and tangential
    dispersions sigma_r^2 = 3 v0^2 / (2 (3 - 2 beta)), sigma_t^2 = 3 v0^2
    (1 - beta) / (2 (3 - 2 beta)), truncated at v_esc; both components are
    normalized numerically after truncation.  The radial direction at the Sun
    is the galactic x axis.  The Earth velocity is the vector of
    :func:`earth_velocity` (annual mean if ``day_of_year`` is None, i.e. the
    Sun's velocity).  eta is tabulated on ``n_v`` speeds.
    """
    if not 0.0 <= eta_s <= 1.0:
        raise ValueError(f"shm++: sausage fraction eta_s must be in [0, 1], got {eta_s}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"shm++: anisotropy beta must be in [0, 1), got {beta}")
    if day_of_year is None:
        v_e_vec = np.array([0.0, v0_km_s, 0.0]) + V_PECULIAR_KM_S
    else:
        v_e_vec = earth_velocity(day_of_year, v0_km_s)
    ve = float(np.linalg.norm(v_e_vec))
    sr2 = 3 * v0_km_s**2 / (2 * (3 - 2 * beta))
    st2 = 3 * v0_km_s**2 * (1 - beta) / (2 * (3 - 2 * beta))

    def f_round(vg):
        v2 = np.sum(vg * vg, axis=-1)
        return np.where(v2 < v_esc_km_s**2, np.exp(-v2 / v0_km_s**2), 0.0)

    def f_saus(vg):
        v2 = np.sum(vg * vg, axis=-1)
        e = vg[..., 0] ** 2 / (2 * sr2) + (vg[..., 1] ** 2 + vg[..., 2] ** 2) / (2 * st2)
        return np.where(v2 < v_esc_km_s**2, np.exp(-e), 0.0)

    vmax = v_esc_km_s + ve
    v = np.linspace(0.0, vmax, n_v)
    fr = _earth_frame_speed_pdf(f_round, v_e_vec, v)
    fs = _earth_frame_speed_pdf(f_saus, v_e_vec, v) if eta_s > 0 else np.zeros_like(v)
    from scipy.integrate import trapezoid, cumulative_trapezoid
    fr /= trapezoid(fr, v)
    if eta_s > 0:
        fs /= trapezoid(fs, v)
    f = (1 - eta_s) * fr + eta_s * fs
    g = np.zeros_like(v)
    g[1:] = f[1:] / v[1:]
    # eta(vmin) = Int_{vmin}^{vmax} f(v)/v dv (f(v)/v -> 0 at v = 0 since f ~ v^2)
    cum = cumulative_trapezoid(g, v, initial=0.0)
    eta = cum[-1] - cum
    return TabulatedHalo(v_km_s=v, eta_s_km=np.maximum(eta, 0.0), rho_gev_cm3=rho_gev_cm3,
                         name="shm++", extra=(("eta_s", eta_s), ("beta", beta),
                                              ("v0_km_s", v0_km_s), ("v_esc_km_s", v_esc_km_s),
                                              ("v_earth_km_s", ve)))


def get_halo(name="shm-2021", **overrides):
    """A halo by preset name (``shm-2021``, ``qedark-2016``, ``legacy``,
    ``shm++``, ``custom``) with optional parameter overrides (v0_km_s,
    v_earth_km_s, v_esc_km_s, rho_gev_cm3; for shm++ also eta_s, beta,
    day_of_year).  An SHM or TabulatedHalo instance is returned unchanged.
    Unknown names raise ValueError listing the known ones."""
    if isinstance(name, (SHM, TabulatedHalo)):
        return name
    if isinstance(name, dict):
        d = dict(name)
        return get_halo(d.pop("name", "shm-2021"), **{**d, **overrides})
    overrides = {k: v for k, v in overrides.items() if v is not None}
    key = str(name).lower()
    if key == "shm++":
        kw = {}
        for src, dst in (("v0_km_s", "v0_km_s"), ("v_esc_km_s", "v_esc_km_s"),
                         ("rho_gev_cm3", "rho_gev_cm3"), ("eta_s", "eta_s"), ("beta", "beta"),
                         ("day_of_year", "day_of_year")):
            if src in overrides:
                kw[dst] = overrides.pop(src)
        if overrides:
            raise ValueError(f"halo shm++: unknown parameters {sorted(overrides)}")
        return shm_plus_plus(**kw)
    day = overrides.pop("day_of_year", None)
    if key == "custom":
        missing = [k for k in ("v0_km_s", "v_earth_km_s", "v_esc_km_s", "rho_gev_cm3")
                   if k not in overrides]
        if missing:
            raise ValueError(f"custom halo needs {', '.join(missing)}")
        h = SHM(name="custom", **overrides)
    elif key in PRESETS:
        v0, ve, vesc, rho, _ = PRESETS[key]
        base = dict(v0_km_s=v0, v_earth_km_s=ve, v_esc_km_s=vesc, rho_gev_cm3=rho)
        bad = set(overrides) - set(base)
        if bad:
            raise ValueError(f"halo {key}: unknown parameters {sorted(bad)} "
                             f"(known: {sorted(base)})")
        base.update(overrides)
        h = SHM(name=key, **base)
    else:
        raise ValueError(f"unknown halo {name!r}; known halos: "
                         f"{', '.join(known_halos() + ['custom'])}")
    return h.on_day(day) if day is not None else h
