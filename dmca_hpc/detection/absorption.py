"""Absorption of bosonic dark matter: dark photons and axion-like particles.

Natural units (hbar = c = 1) inside; outputs in events / kg / year
(year = 365.25 days), masses in eV, densities in GeV/cm^3 and g/cm^3.

* **Dark photon** (kinetic mixing kappa), in-medium mixing included through
  the energy-loss function of the optical dielectric function (An, Pospelov,
  Pradler & Ritz, PLB 747, 331 (2015); Hochberg, Lin & Zurek, PRD 95, 023013
  (2017); DarkELF ``R_absorption``)::

      R = kappa^2 (rho_chi / rho_T) Im[-1 / eps(q -> 0, w = m)]

  A non-relativistic dark photon carries q = m v ~ 1e-3 m, so the optical
  limit is the right eps.  Reach: kappa such that R * exposure = N events.
* **ALP** (axioelectric, coupling g_ae to electrons): absorption rate per
  particle Gamma = g_ae^2 (3 m^2 / (4 m_e^2 e^2)) sigma_1(m) with
  e^2 = 4 pi alpha and the optical conductivity sigma_1(w) = w Im eps(w)
  (Heaviside-Lorentz natural units, eps = 1 + i sigma/w), so::

      R = (rho_chi / rho_T) g_ae^2 (3 m / (4 m_e^2 e^2)) sigma_1(m)

  (Hochberg, Lin & Zurek 2017, eq. for R_ALP; the same as the axioelectric
  cross section sigma_ae = sigma_pe 3 m^2 g_ae^2 / (16 pi alpha m_e^2) of
  Pospelov, Ritz & Voloshin 2008 with sigma_1 = n_T sigma_pe).  Mitridate,
  Trickle, Zhang & Zurek (2021) show in-medium effects are negligible for
  the pseudoscalar, so no screening factor enters.  Reach: g_ae for N events.

The dielectric input is a :class:`dmca_hpc.response.dielectric.DielectricFunction`;
its target density is rho_T = M_cell / V_cell of the table.
"""
from __future__ import annotations

import math

import numpy as np

from dmca_hpc import units as U

__all__ = ["density_ev4", "dark_photon_rate", "dark_photon_kappa_reach", "optical_conductivity_ev",
           "alp_rate", "alp_gae_reach", "absorption_curves", "curves_to_datasets", "reach_at"]


def density_ev4(rho_g_cm3: float) -> float:
    """Mass density [g/cm^3] in natural units [eV^4]."""
    ev_per_g = U.KG_EV / 1e3
    return rho_g_cm3 * ev_per_g * U.HBARC_EV_CM**3


def _ratio(rho_chi_gev_cm3: float, rho_t_g_cm3: float) -> float:
    """rho_chi / rho_T (dimensionless in natural units)."""
    return U.gev_cm3_to_ev4(rho_chi_gev_cm3) / density_ev4(rho_t_g_cm3)


def dark_photon_rate(elf, rho_t_g_cm3: float, kappa: float = 1.0,
                     rho_chi_gev_cm3: float = 0.3):
    """Dark-photon absorption rate [events/kg/year].

    Args:
        elf: Im[-1/eps(q -> 0, w = m)] at the dark-photon masses (array).
        rho_t_g_cm3: target density [g/cm^3].
        kappa: kinetic mixing.
        rho_chi_gev_cm3: local DM density [GeV/cm^3].
    """
    r = kappa**2 * _ratio(rho_chi_gev_cm3, rho_t_g_cm3) * np.asarray(elf, dtype=float)
    return U.rate_natural_to_per_kg_year(r)


def dark_photon_kappa_reach(elf, rho_t_g_cm3: float, exposure_kg_year: float = 1.0,
                            n_events: float = 3.0, rho_chi_gev_cm3: float = 0.3):
    """kappa giving ``n_events`` for ``exposure_kg_year`` (inf where the ELF is 0)."""
    r1 = dark_photon_rate(elf, rho_t_g_cm3, 1.0, rho_chi_gev_cm3) * exposure_kg_year
    with np.errstate(divide="ignore"):
        return np.where(r1 > 0, np.sqrt(n_events / np.where(r1 > 0, r1, 1.0)), np.inf)


def optical_conductivity_ev(w_ev, im_eps):
    """Real optical conductivity sigma_1(w) = w Im eps(w) [eV] (Heaviside-Lorentz
    natural units; in Gaussian units sigma_1 = w Im eps / (4 pi))."""
    return np.asarray(w_ev, dtype=float) * np.asarray(im_eps, dtype=float)


def alp_rate(m_ev, sigma1_ev, rho_t_g_cm3: float, g_ae: float = 1.0,
             rho_chi_gev_cm3: float = 0.3):
    """ALP (axioelectric) absorption rate [events/kg/year].

    Args:
        m_ev: ALP masses [eV].
        sigma1_ev: optical conductivity sigma_1(m) [eV].
        rho_t_g_cm3: target density [g/cm^3].
        g_ae: ALP-electron coupling (dimensionless).
    """
    m = np.asarray(m_ev, dtype=float)
    e2 = 4.0 * math.pi * U.ALPHA
    r = (_ratio(rho_chi_gev_cm3, rho_t_g_cm3) * g_ae**2 * 3.0 * m / (4.0 * U.M_E_EV**2 * e2)
         * np.asarray(sigma1_ev, dtype=float))
    return U.rate_natural_to_per_kg_year(r)


def alp_gae_reach(m_ev, sigma1_ev, rho_t_g_cm3: float, exposure_kg_year: float = 1.0,
                  n_events: float = 3.0, rho_chi_gev_cm3: float = 0.3):
    """g_ae giving ``n_events`` for ``exposure_kg_year`` (inf where sigma_1 = 0)."""
    r1 = alp_rate(m_ev, sigma1_ev, rho_t_g_cm3, 1.0, rho_chi_gev_cm3) * exposure_kg_year
    with np.errstate(divide="ignore"):
        return np.where(r1 > 0, np.sqrt(n_events / np.where(r1 > 0, r1, 1.0)), np.inf)


def absorption_curves(d, mass_min_ev: float = 1.0, mass_max_ev: float = 50.0, n_masses: int = 200,
                      rho_chi_gev_cm3: float = 0.3, exposure_kg_year: float = 1.0,
                      n_events: float = 3.0, kappa_ref: float = 1e-15, g_ae_ref: float = 1e-12) -> dict:
    """Rates and reach on a log mass grid from a DielectricFunction ``d``.

    Masses outside the table's energy range are dropped (no extrapolation).
    Returns a dict of arrays (mass_ev, elf, sigma1_ev, rate_dp_per_kg_year at
    kappa_ref, rate_alp_per_kg_year at g_ae_ref, kappa_reach, g_ae_reach) and
    the scalar settings.
    """
    if not (mass_max_ev > mass_min_ev > 0):
        raise ValueError(f"absorption masses: need 0 < mass_min_ev < mass_max_ev, got "
                         f"{mass_min_ev}, {mass_max_ev}")
    m = np.geomspace(mass_min_ev, mass_max_ev, int(n_masses))
    m = m[(m >= d.e_ev[0]) & (m <= d.e_ev[-1])]
    if m.size == 0:
        raise ValueError(f"absorption masses [{mass_min_ev}, {mass_max_ev}] eV lie outside the "
                         f"dielectric table's range [{d.e_ev[0]}, {d.e_ev[-1]}] eV")
    eps = d.eps0_at(m)
    elf = np.clip(np.imag(-1.0 / eps), 0.0, None)
    sigma1 = optical_conductivity_ev(m, np.clip(eps.imag, 0.0, None))
    rho_t = d.density_g_cm3
    return {
        "mass_ev": m, "elf": elf, "sigma1_ev": sigma1,
        "rate_dp_per_kg_year": dark_photon_rate(elf, rho_t, kappa_ref, rho_chi_gev_cm3),
        "rate_alp_per_kg_year": alp_rate(m, sigma1, rho_t, g_ae_ref, rho_chi_gev_cm3),
        "kappa_reach": dark_photon_kappa_reach(elf, rho_t, exposure_kg_year, n_events, rho_chi_gev_cm3),
        "g_ae_reach": alp_gae_reach(m, sigma1, rho_t, exposure_kg_year, n_events, rho_chi_gev_cm3),
        "kappa_ref": kappa_ref, "g_ae_ref": g_ae_ref, "rho_chi_gev_cm3": rho_chi_gev_cm3,
        "rho_t_g_cm3": rho_t, "exposure_kg_year": exposure_kg_year, "n_events": n_events,
        "material": d.material,
    }


def curves_to_datasets(res: dict) -> dict:
    """{name: (array, units, description)} for HDF5 output."""
    return {
        "mass_ev": (res["mass_ev"], "eV", "dark-photon / ALP mass"),
        "elf": (res["elf"], "1", "Im[-1/eps(q->0, w=m)]"),
        "sigma1_ev": (res["sigma1_ev"], "eV", "optical conductivity sigma_1 = w Im eps (HL natural units)"),
        "rate_darkphoton": (res["rate_dp_per_kg_year"], "events/kg/year",
                            f"dark-photon absorption rate at kappa = {res['kappa_ref']:g}, "
                            f"rho_chi = {res['rho_chi_gev_cm3']:g} GeV/cm^3"),
        "rate_alp": (res["rate_alp_per_kg_year"], "events/kg/year",
                     f"ALP absorption rate at g_ae = {res['g_ae_ref']:g}"),
        "kappa_reach": (res["kappa_reach"], "1",
                        f"kappa for {res['n_events']:g} events in {res['exposure_kg_year']:g} kg year"),
        "g_ae_reach": (res["g_ae_reach"], "1",
                       f"g_ae for {res['n_events']:g} events in {res['exposure_kg_year']:g} kg year"),
    }


def reach_at(res: dict, mass_ev: float) -> dict:
    """kappa and g_ae reach at ``mass_ev`` (log-interpolated; None outside
    the mass range or where the reach is infinite)."""
    m = res["mass_ev"]
    out = {"kappa": None, "g_ae": None}
    if not (m[0] <= mass_ev <= m[-1]):
        return out
    for key, name in (("kappa_reach", "kappa"), ("g_ae_reach", "g_ae")):
        y = res[key]
        ok = np.isfinite(y) & (y > 0)
        if ok.sum() >= 2:
            v = float(np.exp(np.interp(math.log(mass_ev), np.log(m[ok]), np.log(y[ok]))))
            out[name] = v
    return out
