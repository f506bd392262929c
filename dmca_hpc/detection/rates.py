"""DM-electron scattering rates from a crystal form-factor table.

Formula (shared/design/physics.md, QCDark / Essig et al. 2016):

    dR/dln E_e = (rho_chi / m_chi) (1 / M_cell) sigma_e alpha (m_e / mu_chie)^2
                 * Int dq (E_e / q^2) eta(v_min(q, E_e)) |F_DM(q)|^2 |f_crystal(q, E_e)|^2
    v_min = q / (2 m_chi) + E_e / q

evaluated exactly as the table is binned: q and E at bin centres, the q
integral as the sum over q bins times dq (the midpoint rule on the table's own
grid), dR/dE_e = (dR/dln E_e) / E_e, totals as the sum over E bins times dE.
F_DM = 1 (``heavy`` mediator) or (alpha m_e / q)^2 (``light``); the rate uses
|F_DM|^2.  Optional screening divides the integrand by |epsilon(q, E)|^2
(an array on the table's bins, e.g. from :mod:`dmca_hpc.response.screening`).

Ionization (step model): Q = 1 + floor((E_e - E_gap) / eps_pair) for
E_e >= E_gap, with E_e the bin centre; R_Q = sum of dR/dE_e dE over the bins
of that Q.  Gap and pair energy are inputs (defaults: the table's gap and
:func:`default_pair_energy`, from the materials library).

Units: masses in eV internally (MeV on the command line), sigma_e in cm^2,
rho in GeV/cm^3, rates in events / kg / year (year = 365.25 d), dR/dE_e in
events / kg / year / eV.

Speed: for the closed-form SHM the q sum for all (mass, E) runs in one
Numba kernel (imported lazily; pure numpy when Numba is missing) that
compiles the halo's own eta (:func:`dmca_hpc.detection.halo.eta_shm_point`), skipping
the q range where v_min > v_esc + v_E analytically; one mass costs a few ms
for a 1000 x 500 table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dmca_hpc import units as U

FDM_CHOICES = ("heavy", "light")
#: how the rates are evaluated (the attribute of rates.h5 and the --json output)
CONVENTION = "physics.md: E bin centres, midpoint q sum, Q = 1 + floor((E - gap)/pair_energy)"


def fdm_squared(q_ev, fdm: str):
    """|F_DM(q)|^2: 1 (heavy mediator) or (alpha m_e / q)^4 (light mediator)."""
    if fdm == "heavy":
        return np.ones_like(np.asarray(q_ev, dtype=float))
    if fdm == "light":
        return (U.ALPHA_ME_EV / np.asarray(q_ev, dtype=float)) ** 4
    raise ValueError(f"fdm must be one of {FDM_CHOICES}, got {fdm!r}")


def reduced_mass(m1, m2):
    return m1 * m2 / (m1 + m2)


def rate_prefactor_per_kg_year(mass_ev, cell_mass_ev, rho_gev_cm3, sigma_e_cm2):
    """(rho/m) (1/M_cell) sigma_e alpha (m_e/mu)^2, converted so that
    prefactor * [q-integral in eV^-1, eta in 1/c] = events/kg/year/eV."""
    m = np.asarray(mass_ev, dtype=float)
    mu = reduced_mass(m, U.M_E_EV)
    nat = (U.gev_cm3_to_ev4(rho_gev_cm3) / m / cell_mass_ev * U.cm2_to_ev_inv2(sigma_e_cm2)
           * U.ALPHA * (U.M_E_EV / mu) ** 2)
    return U.rate_natural_to_per_kg_year(nat)


def max_energy_transfer_ev(mass_ev, v_max_km_s):
    """Largest E_e a DM particle of speed v_max can deposit: m v^2 / 2 [eV]
    (v_min(q, E) is smallest at q = sqrt(2 m E), where it equals sqrt(2E/m))."""
    return 0.5 * np.asarray(mass_ev, dtype=float) * U.km_s_to_c(v_max_km_s) ** 2


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------

_KERNEL = None
_ETA_POINT = _NORM_ESC = None  # halo's closed forms, compiled by _get_kernel


def _get_kernel():
    """Numba kernel (compiled once, cached on disk); None if Numba is absent."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency, but stay usable
        _KERNEL = False
        return _KERNEL

    from dmca_hpc.detection.halo import eta_shm_point, norm_esc
    # the SHM's eta is halo's, compiled (one copy of the closed form); module
    # globals, not closure variables, so that the kernel's disk cache works.
    # Numba's cache checks only this file's time stamp: after editing
    # halo.eta_shm_point, touch this file (or clear __pycache__) to recompile.
    global _ETA_POINT, _NORM_ESC
    _ETA_POINT = numba.njit(cache=True, inline="always")(eta_shm_point)
    _NORM_ESC = numba.njit(cache=True)(norm_esc)

    @numba.njit(cache=True, fastmath=False, parallel=True)
    def kernel(w, q, e, masses, v0, ve, vesc, out):
        """out[m, b] = sum_a w[a, b] eta_c(v_min(q_a, e_b, m)) for the SHM
        (velocities as fractions of c; eta in 1/c).  Each mass is one
        thread's work, summed in a fixed order: results do not depend on
        the thread count."""
        nq, ne = w.shape
        z = vesc / v0
        y = ve / v0
        ez = math.exp(-z * z)
        norm = _NORM_ESC(z)
        vmax = vesc + ve
        q0 = q[0]
        dq = q[1] - q[0] if nq > 1 else 1.0
        for im in numba.prange(masses.shape[0]):
            m = masses[im]
            for b in range(ne):
                eb = e[b]
                disc = (m * vmax) ** 2 - 2.0 * m * eb
                if disc <= 0.0:
                    out[im, b] = 0.0
                    continue
                sd = math.sqrt(disc)
                qlo = m * vmax - sd
                qhi = m * vmax + sd
                alo = int(math.floor((qlo - q0) / dq)) - 1
                ahi = int(math.ceil((qhi - q0) / dq)) + 2
                if alo < 0:
                    alo = 0
                if ahi > nq:
                    ahi = nq
                acc = 0.0
                for a in range(alo, ahi):
                    wab = w[a, b]
                    if wab == 0.0:
                        continue
                    qa = q[a]
                    vmin = qa / (2.0 * m) + eb / qa
                    eta = _ETA_POINT(vmin / v0, y, z, ez, norm, v0)
                    if eta > 0.0:
                        acc += wab * eta
                out[im, b] = acc

    _KERNEL = kernel
    return _KERNEL


def _weights(table, fdm: str, screening=None) -> np.ndarray:
    """w[a, b] = |f|^2 |F_DM|^2 / q^2 / |eps|^2 [eV^-2], the mass-independent
    part of the q integrand of dR/dE_e."""
    q = table.q_ev
    w = table.f2 * (fdm_squared(q, fdm) / q**2)[:, None]
    if screening is not None:
        eps2 = np.asarray(screening, dtype=float)
        if eps2.shape != table.f2.shape:
            raise ValueError(f"screening |eps|^2 array has shape {eps2.shape}, expected the "
                             f"table's [nq, nE] = {table.f2.shape}")
        if not np.all(np.isfinite(eps2)) or np.any(eps2 <= 0):
            raise ValueError("screening |eps|^2 must be finite and > 0 everywhere")
        w = w / eps2
    return np.ascontiguousarray(w)


def _q_sums(table, w, masses_ev, halo) -> np.ndarray:
    """S[m, b] = sum_a w[a, b] eta_c(v_min) [eV^-2 / c]."""
    masses = np.ascontiguousarray(np.atleast_1d(np.asarray(masses_ev, dtype=float)))
    out = np.zeros((masses.size, table.ne))
    q, e = table.q_ev, table.e_ev
    if getattr(halo, "closed_form", False):
        kern = _get_kernel()
        if kern:
            kern(w, q, e, masses, U.km_s_to_c(halo.v0_km_s), U.km_s_to_c(halo.v_earth_km_s),
                 U.km_s_to_c(halo.v_esc_km_s), out)
            return out
    for i, m in enumerate(masses):  # generic halos (tabulated eta) or no Numba
        vmin = q[:, None] / (2.0 * m) + e[None, :] / q[:, None]
        out[i] = np.sum(w * halo.eta_c(vmin), axis=0)
    return out


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def q_bins(e_ev, gap_ev: float, pair_energy_ev: float) -> np.ndarray:
    """Charge Q of each energy (bin centre): 1 + floor((E - gap)/eps) for
    E >= gap, 0 below the gap.  A relative 1e-9 guards against round-off
    putting an exact boundary (E - gap = k eps) in the lower bin."""
    if not (pair_energy_ev > 0):
        raise ValueError(f"pair energy must be > 0 eV, got {pair_energy_ev}")
    e = np.asarray(e_ev, dtype=float)
    x = (e - gap_ev) / pair_energy_ev
    qv = 1 + np.floor(x + 1e-9)
    return np.where(e >= gap_ev, qv, 0).astype(int)


@dataclass
class ElectronRates:
    """Rates for several masses from one table, one F_DM and one halo.

    Attributes:
        masses_ev: [nm] DM masses [eV].
        e_ev: [nE] energy bin centres [eV].
        dr_de: [nm, nE] dR/dE_e [events / kg / year / eV].
        total: [nm] sum over all E bins [events / kg / year].
        dr_dq: [nm, nQ] rate in Q = 1..nQ [events / kg / year].
        notes: per-mass list of notes (e.g. below the kinematic threshold).
        inputs: dict of every input, with units in the key names.
    """

    masses_ev: np.ndarray
    e_ev: np.ndarray
    dr_de: np.ndarray
    total: np.ndarray
    dr_dq: np.ndarray
    notes: list
    inputs: dict

    @property
    def q_values(self) -> np.ndarray:
        return np.arange(1, self.dr_dq.shape[1] + 1)


def default_pair_energy(table, required: bool = True) -> float | None:
    """Electron-hole pair energy [eV] of the table's material, from the
    materials library (dmca_hpc.materials; physics.md values).  A material
    without one (the scintillators NaI and CsI) raises ValueError, or gives
    None when not ``required``."""
    from dmca_hpc.materials import LIBRARY, MaterialError, get_material
    mat = getattr(table, "material", "") or ""
    try:
        eps = get_material(mat).pair_energy_ev if mat else None
    except MaterialError:
        eps = None
    if eps is None and not required:
        return None
    if eps is None:
        known = {k: m.pair_energy_ev for k, m in LIBRARY.items() if m.pair_energy_ev}
        raise ValueError(f"no default pair energy for material {mat!r} (known [eV]: {known}); "
                         "give pair_energy_ev / --pair-energy")
    return eps


def electron_rates(table, masses_ev, fdm: str = "heavy", halo="shm-2021",
                   sigma_e_cm2: float = 1e-39, gap_ev: float | None = None,
                   pair_energy_ev: float | None = None, screening=None,
                   n_q_max: int | None = None) -> ElectronRates:
    """dR/dE_e, totals and dR/dQ for every mass in ``masses_ev`` [eV].

    Args:
        table: a :class:`dmca_hpc.tables.FormFactorTable` or a table path.
        fdm: ``"heavy"`` or ``"light"``.
        halo: preset name, dict or halo object (:func:`dmca_hpc.detection.halo.get_halo`).
        sigma_e_cm2: reference DM-electron cross section [cm^2].
        gap_ev: gap for the Q model (default: the table's).
        pair_energy_ev: eps per pair [eV] (default by material).  A material with
            none in the library (a scintillator: NaI, CsI) and none given gets no
            Q spectrum (``dr_dq`` with 0 columns, a note): the total and dR/dE
            need no pair energy.
        screening: None or |eps(q, E)|^2 array of the table's shape.
        n_q_max: number of Q bins reported (default: all up to the table's E range).
    """
    from dmca_hpc.detection.halo import get_halo
    from dmca_hpc.tables import load
    table = load(table)
    h = get_halo(halo)
    if fdm not in FDM_CHOICES:
        raise ValueError(f"fdm must be one of {FDM_CHOICES}, got {fdm!r}")
    if not (0 < sigma_e_cm2 < np.inf):
        raise ValueError(f"sigma_e must be a finite number > 0 cm^2, got {sigma_e_cm2}")
    masses = np.atleast_1d(np.asarray(masses_ev, dtype=float))
    if np.any(~np.isfinite(masses)) or np.any(masses <= 0):
        # masses arrive in eV; users give MeV (command line, job files): say both
        bad = masses[~(np.isfinite(masses) & (masses > 0))]
        raise ValueError("DM masses must be positive (> 0 MeV) and finite, got "
                         + ", ".join(f"{m / U.MEV_EV:g}" for m in bad) + " MeV ("
                         + ", ".join(f"{m:g}" for m in bad) + " eV)")
    gap = table.gap_ev if gap_ev is None else float(gap_ev)
    eps = (default_pair_energy(table, required=False) if pair_energy_ev is None
           else float(pair_energy_ev))
    # a negative gap would count deposits below zero energy as charge ("max deposit -3.5 eV")
    if not (0 <= gap < np.inf):
        raise ValueError(f"gap must be a finite number >= 0 eV, got {gap}")
    if eps is not None and not (0 < eps < np.inf):
        raise ValueError(f"pair energy must be a finite number > 0 eV, got {eps}")
    w = _weights(table, fdm, screening)
    s = _q_sums(table, w, masses, h)
    pref = rate_prefactor_per_kg_year(masses, table.cell_mass_ev, h.rho_gev_cm3, sigma_e_cm2)
    dq_ev = table.dq_ame * U.ALPHA_ME_EV
    dr_de = pref[:, None] * dq_ev * s
    total = dr_de.sum(axis=1) * table.de_ev
    qb = q_bins(table.e_ev, gap, eps) if eps is not None else np.zeros(table.e_ev.shape, int)
    nQ = (int(qb.max()) if n_q_max is None else int(n_q_max)) if eps is not None else 0
    dr_dq = np.zeros((masses.size, max(nQ, 0)))
    for k in range(1, nQ + 1):
        sel = qb == k
        if sel.any():
            dr_dq[:, k - 1] = dr_de[:, sel].sum(axis=1) * table.de_ev
    notes = []
    emax = max_energy_transfer_ev(masses, h.v_max_km_s)
    # the table's own validity (formfactor metadata): bins above e_complete_ev miss final
    # states of the finite basis; bins above q_complete_ame miss the matrix elements' reach
    meta = table.metadata or {}
    e_ok = meta.get("e_complete_ev")
    frac_e = (dr_de[:, table.e_ev > float(e_ok)].sum(axis=1) * table.de_ev / np.where(total > 0, total, 1)
              if e_ok is not None and float(e_ok) < table.e_ev[-1] else np.zeros(masses.size))
    q_ok = meta.get("q_complete_ame")
    frac_q = np.zeros(masses.size)
    if q_ok is not None and float(q_ok) < table.q_ame[-1]:
        s_in = _q_sums(table, np.where(table.q_ame[:, None] <= float(q_ok), w, 0.0), masses, h)
        frac_q = 1.0 - (pref[:, None] * dq_ev * s_in).sum(axis=1) * table.de_ev / np.where(total > 0, total, 1)
    # physics.md's bin-centre rule gives Q = 0 to the bin that straddles the gap when its
    # centre lies below it (Ge 0.67 eV: [0.6, 0.7); diamond 5.47, SiC 2.36 eV), although a
    # scissored table holds only transitions at E >= gap there: the total (all E bins)
    # counts that bin, the Q spectrum does not; say so where it matters (near threshold)
    q0_bins = (qb == 0) & (table.e_ev + table.de_ev / 2 > gap) & (eps is not None)
    frac_q0 = (dr_de[:, q0_bins].sum(axis=1) * table.de_ev / np.where(total > 0, total, 1)
               if q0_bins.any() else np.zeros(masses.size))
    ae = meta.get("all_electron")
    # a def2 small-core ECP (meta 'ecp' names it) keeps the semicore shells: no note
    pseudo_table = ((ae is False and "ECP" not in str(meta.get("ecp", "")))
                    or (ae is None and str(meta.get("basis", "")).lower().startswith("gth")))
    for i, m in enumerate(masses):
        n = []
        if eps is None:
            n.append(f"no electron-hole pair energy for {table.material or 'this material'} "
                     f"(a scintillator: the library has none): no Q spectrum; the total "
                     f"(every deposit above the {gap:g} eV gap) and dR/dE need none; give "
                     f"--pair-energy / pair_energy_ev for a Q binning")
        if frac_e[i] > 0.01:
            n.append(f"{100 * frac_e[i]:.0f}% of this rate comes from E > {float(e_ok):.1f} eV, where "
                     f"the table is incomplete (its basis has no more final states there): "
                     f"an underestimate")
        if frac_q[i] > 0.01:
            n.append(f"{100 * frac_q[i]:.0f}% of this rate comes from q > {float(q_ok):.2f} alpha m_e, "
                     f"beyond the table's stated q validity")
        if frac_q0[i] > 0.01:
            lo = float(table.e_ev[q0_bins][0] - table.de_ev / 2)
            n.append(f"{100 * frac_q0[i]:.0f}% of the total lies in the E bin "
                     f"[{lo:.3g}, {lo + table.de_ev:.3g}) eV that straddles the gap {gap:g} eV: "
                     f"its centre is below the gap, so the bin-centre convention (physics.md, "
                     f"QCDark) gives it Q = 0 and the Q spectrum leaves it out")
        if pseudo_table and fdm == "heavy" and m > 30 * U.MEV_EV:
            n.append("pseudopotential table (no core or semicore structure): heavy-mediator rates "
                     "above ~30 MeV draw on high q and semicore shells and are underestimated "
                     "(GTH Ge: 0.2-0.5x the all-electron rate); use an all-electron table")
        if emax[i] < gap:
            n.append(f"m_chi = {m / U.MEV_EV:g} MeV is below the kinematic threshold: the "
                     f"largest energy transfer m v_max^2/2 = {emax[i]:.3g} eV is below the gap "
                     f"{gap:g} eV; rate is zero")
        elif emax[i] > table.e_ev[-1] + table.de_ev / 2:
            n.append(f"energy transfers up to {emax[i]:.3g} eV are kinematically allowed but "
                     f"the table stops at {table.e_ev[-1] + table.de_ev / 2:g} eV")
        notes.append(n)
    inputs = {"material": table.material, "fdm": fdm, "halo": h.params(),
              "sigma_e_cm2": sigma_e_cm2, "gap_ev": gap, "pair_energy_ev": eps,
              "screening": screening is not None, "table_dq_alpha_me": table.dq_ame,
              "table_de_ev": table.de_ev, "table_shape": list(table.f2.shape),
              "table_source": table.metadata.get("source_file", "")}
    return ElectronRates(masses_ev=masses, e_ev=table.e_ev, dr_de=dr_de, total=total,
                         dr_dq=dr_dq, notes=notes, inputs=inputs)


def rate_in_q_range(rates: ElectronRates, q_min: int = 1, q_max: int | None = None) -> np.ndarray:
    """Sum of dR/dQ over Q in [q_min, q_max] per mass [events / kg / year]."""
    if q_min < 1:
        raise ValueError(f"Q threshold must be >= 1, got {q_min}")
    hi = rates.dr_dq.shape[1] if q_max is None else min(int(q_max), rates.dr_dq.shape[1])
    return rates.dr_dq[:, q_min - 1:hi].sum(axis=1)


def rates_json(r: ElectronRates, i: int = 0) -> dict:
    """The ``--json`` object for mass index ``i``."""
    return {
        "mass_mev": r.masses_ev[i] / U.MEV_EV,
        "total_per_kg_year": float(r.total[i]),
        "Q_per_kg_year": [float(x) for x in r.dr_dq[i]],
        "Q": [int(k) for k in r.q_values],
        "notes": r.notes[i],
        "inputs": r.inputs,
        "units": {"total_per_kg_year": "events / kg / year",
                  "Q_per_kg_year": "events / kg / year in Q = 1, 2, ...",
                  "mass_mev": "MeV", "sigma_e_cm2": "cm^2", "gap_ev": "eV",
                  "pair_energy_ev": "eV", "halo velocities": "km/s", "rho": "GeV/cm^3"},
        "convention": CONVENTION,
    }
