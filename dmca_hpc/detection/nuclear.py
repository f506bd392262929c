"""Nuclear recoil: WIMP spin-independent scattering and sterile-neutrino
coherent scattering, with the Helm form factor.

WIMP SI (shared/design/physics.md; Lewin & Smith 1996):

    dR/dE_R = (rho / m_chi) (sigma_n A^2 / (2 mu_n^2)) F^2(q) eta(v_min)   per target mass,
    v_min = sqrt(m_N E_R / (2 mu_N^2)),  q = sqrt(2 m_N E_R)

(the 1/m_N of "per target mass" and the m_N of dsigma/dE_R = m_N sigma_N F^2 /
(2 mu_N^2 v^2) cancel).  Helm: F = 3 j1(q r_n)/(q r_n) exp(-(q s)^2/2),
r_n^2 = c^2 + (7/3) pi^2 a^2 - 5 s^2, c = 1.23 A^(1/3) - 0.60 fm, a = 0.52 fm,
s = 0.9 fm.

Conventions (stated because peers differ by up to a few %): natural targets
use the standard atomic weight A (e.g. Xe 131.293) for both the Helm radius
and the nucleus mass m_N = A u; the nucleon mass in mu_n is the atomic mass
unit u (as wimprates; Lewin & Smith's 0.932 GeV); compounds (NaI, CsI, GaAs)
sum their elements weighted by mass fraction.

Sterile neutrino: a Dirac neutral lepton that couples to the Z like an
active neutrino, suppressed by an effective coupling factor ``coupling``
(e.g. |U|^4 for active-sterile mixing |U|^2 in both vertices), scatters
coherently through the weak charge Q_W = N - (1 - 4 sin^2 theta_W) Z with
sigma_N(0) = coupling * G_F^2 mu_N^2 Q_W^2 / (8 pi) (Goodman & Witten 1985
for a heavy Dirac neutrino), the same Helm F^2 and

    dR/dE_R = rho sigma_N(0) F^2 eta(v_min) / (2 m_chi mu_N^2)   per target mass.

A Majorana state has no vector coupling and no coherent rate.

Units: masses in GeV on the command line, keV recoil energies, cm^2 cross
sections, rates in events / tonne / year / keV (tonne = 1000 kg).
"""
from __future__ import annotations

import math

import numpy as np

from dmca_hpc import units as U

#: sin^2 theta_W at Q -> 0 (MS-bar, PDG 2022 electroweak review), the CEvNS value
SIN2_THETA_W_LOW_Q = 0.23857

#: elements: symbol -> (Z, standard atomic weight [u])  (IUPAC 2021)
ELEMENTS = {
    "Xe": (54, 131.293), "Ar": (18, 39.948), "Ge": (32, 72.630), "Si": (14, 28.085),
    "Na": (11, 22.98976928), "I": (53, 126.90447), "Cs": (55, 132.90545196),
    "Ga": (31, 69.723), "As": (33, 74.921595),
}
#: compounds: name -> {element: atoms per formula unit}
COMPOUNDS = {"NaI": {"Na": 1, "I": 1}, "CsI": {"Cs": 1, "I": 1}, "GaAs": {"Ga": 1, "As": 1}}


def known_targets() -> list[str]:
    return sorted(ELEMENTS) + sorted(COMPOUNDS)


def canonical_target(name: str) -> str:
    """The known target spelled as :func:`known_targets` spells it (``xe`` ->
    ``Xe``, ``NAI`` -> ``NaI``): names are case-insensitive, as material names
    are; unknown names list the known ones."""
    for k in known_targets():
        if k.lower() == str(name).lower():
            return k
    raise ValueError(f"unknown target {name!r}; known targets: {', '.join(known_targets())} "
                     "(any case)")


def target_composition(name: str) -> list[tuple[str, float]]:
    """[(element, mass fraction)] of a target (case-insensitive name); unknown
    names list the known ones."""
    name = canonical_target(name)
    if name in ELEMENTS:
        return [(name, 1.0)]
    parts = COMPOUNDS[name]
    tot = sum(ELEMENTS[e][1] * n for e, n in parts.items())
    return [(e, ELEMENTS[e][1] * n / tot) for e, n in parts.items()]


def helm_form_factor(q_mev, a_mass_number: float):
    """Helm form factor F(q) (not squared) for momentum transfer q [MeV]."""
    a_mass_number = float(a_mass_number)
    if not a_mass_number > 0:
        raise ValueError(f"mass number must be > 0, got {a_mass_number}")
    q = np.asarray(q_mev, dtype=float) / U.HBARC_MEV_FM  # fm^-1
    c = 1.23 * a_mass_number ** (1.0 / 3.0) - 0.60
    a, s = 0.52, 0.9
    rn = math.sqrt(c * c + (7.0 / 3.0) * math.pi**2 * a * a - 5.0 * s * s)
    x = q * rn
    with np.errstate(invalid="ignore", divide="ignore"):
        j1 = np.sin(x) / x**2 - np.cos(x) / x
        f = np.where(x > 1e-6, 3.0 * j1 / x, 1.0 - x * x / 10.0)
    return f * np.exp(-0.5 * (q * s) ** 2)


def nucleus_mass_ev(a: float) -> float:
    return a * U.AMU_EV


def weak_charge(z: int, a: float) -> float:
    """Q_W = N - (1 - 4 sin^2 theta_W) Z with N = A - Z (A: atomic weight)."""
    return (a - z) - (1.0 - 4.0 * SIN2_THETA_W_LOW_Q) * z


def _rate_element(el, mass_gev, e_kev, halo, sigma_n_cm2, model, coupling):
    from dmca_hpc.detection.halo import get_halo
    h = get_halo(halo)
    z, a = ELEMENTS[el]
    m = mass_gev * U.GEV_EV
    mn = nucleus_mass_ev(a)
    mu_N = m * mn / (m + mn)
    er = np.asarray(e_kev, dtype=float) * 1e3  # eV
    q = np.sqrt(2.0 * mn * er)  # eV
    vmin_c = np.sqrt(mn * er / (2.0 * mu_N**2))
    f2 = helm_form_factor(q / U.MEV_EV, a) ** 2
    eta_c = h.eta_c(vmin_c)  # 1/c
    rho = U.gev_cm3_to_ev4(h.rho_gev_cm3)
    if model == "wimp":
        mu_n = m * U.AMU_EV / (m + U.AMU_EV)
        sig = U.cm2_to_ev_inv2(sigma_n_cm2)
        nat = rho / m * sig * a * a / (2.0 * mu_n**2) * f2 * eta_c  # per eV recoil
    elif model == "sterile-neutrino":
        gf = _fermi_constant_ev2()
        sig0 = coupling * gf**2 * mu_N**2 * weak_charge(z, a) ** 2 / (8.0 * math.pi)
        nat = rho * sig0 * f2 * eta_c / (2.0 * m * mu_N**2)
    else:
        raise ValueError(f"model must be 'wimp' or 'sterile-neutrino', got {model!r}")
    # natural -> events/kg/year/eV, then per tonne per keV
    return U.rate_natural_to_per_kg_year(nat) * 1e3 * 1e3


def _fermi_constant_ev2() -> float:
    import scipy.constants as sc
    return sc.physical_constants["Fermi coupling constant"][0] * 1e-18  # GeV^-2 -> eV^-2


def recoil_rate(target: str, mass_gev: float, e_kev, sigma_n_cm2: float = 1e-45,
                halo="shm-2021", model: str = "wimp", coupling: float = 1.0):
    """dR/dE_R [events / tonne / year / keV] at recoil energies ``e_kev``.

    Args:
        target: element (Xe, Ar, Ge, Si, Na, I, Cs, Ga, As) or compound (NaI, CsI, GaAs),
            any case (``xe`` = ``Xe``).
        mass_gev: DM mass [GeV].
        sigma_n_cm2: WIMP-nucleon SI cross section [cm^2] (model ``wimp``).
        halo: halo preset / object.
        model: ``wimp`` or ``sterile-neutrino``.
        coupling: sterile neutrino's coupling factor relative to an active
            Dirac neutrino's Z coupling squared (dimensionless).
    """
    if not (mass_gev > 0 and np.isfinite(mass_gev)):
        raise ValueError(f"DM mass must be > 0 GeV, got {mass_gev}")
    if model == "wimp" and not sigma_n_cm2 > 0:
        raise ValueError(f"sigma_n must be > 0 cm^2, got {sigma_n_cm2}")
    e = np.asarray(e_kev, dtype=float)
    if np.any(e < 0) or not np.all(np.isfinite(e)):
        raise ValueError(f"recoil energies must be >= 0 keV, got {e_kev}")
    out = 0.0
    for el, frac in target_composition(target):
        out = out + frac * _rate_element(el, mass_gev, e, halo, sigma_n_cm2, model, coupling)
    return out


def total_rate(target, mass_gev, e_min_kev, e_max_kev, n: int = 400, **kw) -> float:
    """Integral of dR/dE_R over [e_min, e_max] keV [events / tonne / year]
    (Gauss-Legendre with ``n`` nodes; the integrand is smooth)."""
    x, w = np.polynomial.legendre.leggauss(n)
    e = 0.5 * (e_max_kev - e_min_kev) * x + 0.5 * (e_max_kev + e_min_kev)
    return float(0.5 * (e_max_kev - e_min_kev) * np.sum(w * recoil_rate(target, mass_gev, e, **kw)))
