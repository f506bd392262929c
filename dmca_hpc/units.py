"""The one units module of dmca_hpc.

Every physical constant the package uses is defined here, from
``scipy.constants`` (CODATA 2018) and ``ase.units``-compatible definitions,
never retyped elsewhere.  Conventions (see shared/design/physics.md):

* DFT quantities are in atomic units (bohr, hartree).
* Momentum transfer q is in units of alpha*m_e (1 bohr^-1 == 1 alpha m_e,
  numerically 3.7289 keV).
* Energies and masses in natural units are in eV; velocities in km/s
  (or as a fraction of c where stated); cross sections in cm^2; rates in
  events / kg / year with year = 365.25 days.

Names carry their unit: ``HARTREE_EV`` is the number of eV in one hartree,
``KG_EV`` the number of eV in one kilogram (E = m c^2), and so on.
"""
from __future__ import annotations

import scipy.constants as _sc

#: fine-structure constant (dimensionless)
ALPHA = _sc.fine_structure
#: electron mass [eV]
M_E_EV = _sc.physical_constants["electron mass energy equivalent in MeV"][0] * 1e6
#: speed of light [km/s]
C_KM_S = _sc.c / 1e3
#: speed of light [cm/s]
C_CM_S = _sc.c * 1e2
#: one hartree [eV]
HARTREE_EV = _sc.physical_constants["Hartree energy in eV"][0]
#: one bohr [angstrom]
BOHR_ANGSTROM = _sc.physical_constants["Bohr radius"][0] * 1e10
#: one angstrom [bohr]
ANGSTROM_BOHR = 1.0 / BOHR_ANGSTROM
#: alpha * m_e [eV]; the unit of momentum transfer (== 1 bohr^-1 times hbar c)
ALPHA_ME_EV = ALPHA * M_E_EV
#: hbar * c [eV cm]
HBARC_EV_CM = _sc.hbar * _sc.c / _sc.e * 1e2
#: hbar * c [MeV fm]
HBARC_MEV_FM = _sc.hbar * _sc.c / _sc.e * 1e-6 * 1e15
#: one kilogram [eV] (m c^2)
KG_EV = _sc.c**2 / _sc.e
#: one atomic mass unit [eV]
AMU_EV = _sc.physical_constants["atomic mass constant energy equivalent in MeV"][0] * 1e6
#: one GeV [eV]
GEV_EV = 1e9
#: one MeV [eV]
MEV_EV = 1e6
#: one year [s] (Julian, 365.25 days)
YEAR_S = 365.25 * 86400.0
#: one day [s]
DAY_S = 86400.0
#: one angstrom [cm]
ANGSTROM_CM = 1e-8
#: eV^-1 in cm (length): 1/eV = hbar c / eV
EV_INV_CM = HBARC_EV_CM
#: one Rydberg [eV]
RYDBERG_EV = HARTREE_EV / 2.0


def km_s_to_c(v_km_s):
    """Velocity in km/s to a fraction of c (dimensionless)."""
    return v_km_s / C_KM_S


def gev_cm3_to_ev4(rho_gev_cm3):
    """Mass density in GeV/cm^3 to natural units eV^4 (hbar = c = 1)."""
    return rho_gev_cm3 * GEV_EV * HBARC_EV_CM**3


def cm2_to_ev_inv2(sigma_cm2):
    """Cross section in cm^2 to natural units eV^-2."""
    return sigma_cm2 / HBARC_EV_CM**2


def rate_natural_to_per_kg_year(rate):
    """Event rate per target mass in natural units to events / kg / year.

    In natural units (hbar = c = 1) time is measured in eV^-1 and mass in
    eV, so a rate per unit time per unit target mass is dimensionless: the
    number ``rate`` means ``rate`` events per (hbar/eV seconds) per (eV of
    target mass).  Multiply by eV/hbar [1/s], KG_EV [eV/kg] and YEAR_S [s/yr].
    """
    return rate / (_sc.hbar / _sc.e) * KG_EV * YEAR_S
