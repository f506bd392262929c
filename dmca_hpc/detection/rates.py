"""DM-electron scattering rates from a crystal form-factor table.

Formula (shared/design/physics.md, QCDark / Essig et al. 2016):

    dR/dln E_e = (rho_chi / m_chi) (1 / M_cell) sigma_e alpha (m_e / mu_chie)^2
                 * Int dq (E_e / q^2) eta(v_min(q, E_e)) |F_DM(q)|^2 |f_crystal(q, E_e)|^2
    v_min = q / (2 m_chi) + E_e / q

evaluated exactly as the table is binned: q and E at bin centres, the q
integral as the sum over q bins times dq (the midpoint rule on the table's own
grid), dR/dE_e = (dR/dln E_e) / E_e, totals as the sum over E bins times dE.
F_DM = 1 (``heavy`` mediator) or (alpha m_e / q)^2 (``light``); the rate uses
|F_DM|^2.  Optional screening divides the integrand by |epsilon(q, E)|^2.

Ionization (step model): Q = 1 + floor((E_e - E_gap) / eps_pair) for
E_e >= E_gap, with E_e the bin centre; R_Q = sum of dR/dE_e dE over the bins
of that Q.  Gap and pair energy are inputs (defaults: the table's gap and
:func:`default_pair_energy`, from the materials library).

Units: masses in eV internally (MeV on the command line), sigma_e in cm^2,
rho in GeV/cm^3, rates in events / kg / year (year = 365.25 d), dR/dE_e in
events / kg / year / eV.

Speed: for the closed-form SHM the q sum for all (mass, E) runs in one
Numba kernel (imported lazily; pure numpy when Numba is missing), skipping
the q range where v_min > v_esc + v_E analytically; one mass costs a few ms
for a 1000 x 500 table.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dmca_hpc import units as U

FDM_CHOICES = ("heavy", "light")


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

    @numba.njit(cache=True, fastmath=False, parallel=True)
    def kernel(w, q, e, masses, v0, ve, vesc, out):
        """out[m, b] = sum_a w[a, b] eta_c(v_min(q_a, e_b, m)) for the SHM
        (velocities as fractions of c; eta in 1/c).  Each mass is one
        thread's work, summed in a fixed order: results do not depend on
        the thread count."""
        nq, ne = w.shape
        z = vesc / v0
        y = ve / v0
        sq = math.sqrt(math.pi)
        ez = math.exp(-z * z)
        norm = math.erf(z) - 2.0 * z * ez / sq
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
                    x = vmin / v0
                    if x >= z + y:
                        continue
                    if x < z - y:
                        num = math.erf(x + y) - math.erf(x - y) - 4.0 * y * ez / sq
                    else:
                        num = math.erf(z) - math.erf(x - y) - 2.0 * (z + y - x) * ez / sq
                    eta = num / (2.0 * norm * y * v0)
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


def default_pair_energy(table) -> float:
    """Electron-hole pair energy [eV] of the table's material, from the
    materials library (dmca_hpc.materials; physics.md values)."""
    from dmca_hpc.materials import LIBRARY, MaterialError, get_material
    mat = getattr(table, "material", "") or ""
    try:
        eps = get_material(mat).pair_energy_ev if mat else None
    except MaterialError:
        eps = None
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
        pair_energy_ev: eps per pair [eV] (default by material).
        screening: None or |eps(q, E)|^2 array of the table's shape.
        n_q_max: number of Q bins reported (default: all up to the table's E range).
    """
    from dmca_hpc.detection.halo import get_halo
    from dmca_hpc.tables import load
    table = load(table)
    h = get_halo(halo)
    if fdm not in FDM_CHOICES:
        raise ValueError(f"fdm must be one of {FDM_CHOICES}, got {fdm!r}")
    if not (sigma_e_cm2 > 0):
        raise ValueError(f"sigma_e must be > 0 cm^2, got {sigma_e_cm2}")
    masses = np.atleast_1d(np.asarray(masses_ev, dtype=float))
    if np.any(~np.isfinite(masses)) or np.any(masses <= 0):
        raise ValueError(f"DM masses must be positive and finite, got {masses}")
    gap = table.gap_ev if gap_ev is None else float(gap_ev)
    eps = default_pair_energy(table) if pair_energy_ev is None else float(pair_energy_ev)
    w = _weights(table, fdm, screening)
    s = _q_sums(table, w, masses, h)
    pref = rate_prefactor_per_kg_year(masses, table.cell_mass_ev, h.rho_gev_cm3, sigma_e_cm2)
    dq_ev = table.dq_ame * U.ALPHA_ME_EV
    dr_de = pref[:, None] * dq_ev * s
    total = dr_de.sum(axis=1) * table.de_ev
    qb = q_bins(table.e_ev, gap, eps)
    nQ = int(qb.max()) if n_q_max is None else int(n_q_max)
    dr_dq = np.zeros((masses.size, max(nQ, 0)))
    for k in range(1, nQ + 1):
        sel = qb == k
        if sel.any():
            dr_dq[:, k - 1] = dr_de[:, sel].sum(axis=1) * table.de_ev
    notes = []
    emax = max_energy_transfer_ev(masses, h.v_max_km_s)
    for i, m in enumerate(masses):
        n = []
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


# ---------------------------------------------------------------------------
# command line: dmca-hpc rates
# ---------------------------------------------------------------------------

def add_arguments(parser):
    """Arguments of ``dmca-hpc rates``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", help="form-factor table (our HDF5, QCDark HDF5 or QEdark text)")
    src.add_argument("--material", help="use the shipped table of this material")
    parser.add_argument("--mass-mev", type=float, required=True, help="DM mass [MeV]")
    parser.add_argument("--fdm", choices=FDM_CHOICES, default="heavy",
                        help="DM form factor: heavy (F=1) or light ((alpha m_e/q)^2) mediator")
    parser.add_argument("--halo", default="shm-2021",
                        help="halo model: shm-2021, qedark-2016, legacy, shm++")
    parser.add_argument("--sigma-e", type=float, default=1e-39,
                        help="DM-electron cross section [cm^2] (default 1e-39)")
    parser.add_argument("--gap", type=float, default=None, help="band gap for Q [eV] (default: table's)")
    parser.add_argument("--pair-energy", type=float, default=None,
                        help="energy per electron-hole pair [eV] (default: the materials library, e.g. Si 3.6, Ge 2.9, GaAs 4.7)")
    parser.add_argument("--screening", choices=("none", "rpa", "tf"), default="none",
                        help="divide the integrand by |eps(q, E)|^2: rpa = our RPA epsilon "
                             "(from --dielectric, else built from the table), tf = Thomas-Fermi-like "
                             "model of Si/Ge (Cappellini et al. 1993); default none")
    parser.add_argument("--dielectric", metavar="PATH", default=None,
                        help="dielectric.h5 of the dielectric stage (for --screening rpa)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def screening_eps2(table, model: str, dielectric=None):
    """|eps(q, E)|^2 on the table's bins for ``model`` ('none' -> None), from
    :func:`dmca_hpc.response.dielectric.screening_factor` (RPA from ``dielectric``, a
    dielectric.h5 path, or else built from the table itself)."""
    if model in (None, "none"):
        return None
    from dmca_hpc.response.dielectric import screening_factor
    src = dielectric if (model == "rpa" and dielectric) else table
    return screening_factor(src, table.q_ame, table.e_ev, model=model, material=table.material or None)


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
        "convention": "physics.md: E bin centres, midpoint q sum, "
                      "Q = 1 + floor((E - gap)/pair_energy)",
    }


def run_cli(args) -> int:
    """``dmca-hpc rates``: print a table (or JSON) of rates for one mass."""
    from dmca_hpc.tables import TableFormatError, load
    try:
        table = load(args.table, args.material)
        eps2 = screening_eps2(table, args.screening, args.dielectric)
        r = electron_rates(table, [args.mass_mev * U.MEV_EV], fdm=args.fdm, halo=args.halo,
                           sigma_e_cm2=args.sigma_e, gap_ev=args.gap,
                           pair_energy_ev=args.pair_energy, screening=eps2)
        r.inputs["screening_model"] = args.screening
    except (FileNotFoundError, TableFormatError, ValueError, KeyError) as exc:
        print(f"dmca-hpc rates: error: {exc}", file=sys.stderr)
        return 2
    out = rates_json(r)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    inp = r.inputs
    print(f"DM-electron rates: {inp['material'] or 'table'} ({inp['table_source']})")
    print(f"  m_chi = {args.mass_mev:g} MeV, F_DM = {args.fdm}, sigma_e = {args.sigma_e:g} cm^2, "
          f"halo = {inp['halo']['name']}")
    print(f"  gap = {inp['gap_ev']:g} eV, pair energy = {inp['pair_energy_ev']:g} eV")
    for n in out["notes"]:
        print(f"  note: {n}")
    print(f"  total           {out['total_per_kg_year']:12.5g} events/kg/year")
    for k, v in zip(out["Q"], out["Q_per_kg_year"]):
        if k <= 10 or v > 0:
            print(f"  Q = {k:<3d}         {v:12.5g} events/kg/year")
    return 0


# ---------------------------------------------------------------------------
# pipeline stage
# ---------------------------------------------------------------------------

def _section_table(ctx, sec):
    from dmca_hpc.tables import load, table_for_material
    if sec.get("table"):
        return load(sec["table"])
    ff = (ctx.outputs or {}).get("formfactor", {})
    if ff.get("table"):
        return load(ff["table"])
    name = sec.get("material") or (ctx.material.name if ctx.material is not None else None)
    if name:
        return load(table_for_material(name))
    raise ValueError("rates stage: no form-factor table: run the formfactor stage, or set "
                     "rates.table (path) or rates.material (shipped table)")


def _screening(sec, table, ctx=None):
    path = sec.get("screening_file")
    model = sec.get("screening", "none")
    if not path and model != "none":
        diel = ((ctx.outputs or {}).get("dielectric") or {}).get("dielectric") if ctx else None
        return screening_eps2(table, model, diel)
    if not path:
        return None
    import h5py
    key = sec.get("screening_dataset", "eps2")
    with h5py.File(path, "r") as f:
        if key not in f:
            raise ValueError(f"{path}: dataset {key!r} (|eps(q,E)|^2 [nq, nE]) missing")
        return f[key][()]


def run_stage(ctx) -> dict:
    """Pipeline stage ``rates``: spectra for the section's masses and F_DM,
    plus (when ``exposure_kg_year`` > 0) reach curves with uncertainty bands.

    Writes ``rates.h5`` (units on every dataset), ``dRdE.png``, ``dRdQ.png``
    and, with reach, ``reach.h5`` / ``reach.png``.  All ranks call it; the
    (mass, fdm) units are spread over ranks with :func:`map_units`.
    """
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    from dmca_hpc.hpc.parallel import map_units, peak_memory_mb
    sec = dict(ctx.job.get("rates", {}))
    comm = ctx.comm
    rank = comm.Get_rank()
    table = _section_table(ctx, sec)
    if ctx.material is not None and not table.material:
        table.material = ctx.material.name
    screening = _screening(sec, table, ctx)
    masses_mev = list(sec.get("masses_mev", [10.0, 100.0, 1000.0]))
    fdms = list(sec.get("fdm", ["heavy", "light"]))
    halo = sec.get("halo", "shm-2021")
    sigma = float(sec.get("sigma_e_cm2", 1e-39))
    gap = sec.get("gap_ev")
    eps = sec.get("pair_energy_ev")
    if eps is None and ctx.material is not None and getattr(ctx.material, "pair_energy_ev", None):
        eps = ctx.material.pair_energy_ev
    units_ = [(f, m) for f in fdms for m in masses_mev]

    def work(u):
        f, m = u
        r = electron_rates(table, [m * U.MEV_EV], fdm=f, halo=halo, sigma_e_cm2=sigma,
                           gap_ev=gap, pair_energy_ev=eps)
        return r

    def on_result(res):
        phys = {"material": table.material or "unknown", "band_gap_ev": float(table.gap_ev),
                "q_scan_points": int(table.nq), "mass_mev": float(res.unit[1]),
                "fdm": res.unit[0], "sigma_e_cm2": sigma}
        if res.ok:
            phys["rate_total_per_kg_year"] = float(res.value.total[0])
            phys["computation_time_sec"] = res.wall_s
        ctx.telemetry.record_result("rates", res, physics=phys,
                                    unit=f"{table.material}:{res.unit[0]}:{res.unit[1]:g}MeV")

    results = map_units(work, units_, comm=comm, schedule="static", on_result=on_result)
    outputs: dict = {}
    reach_out = {}
    if float(sec.get("exposure_kg_year", 0.0)) > 0:
        from dmca_hpc.detection.reach import stage_reach
        reach_out = stage_reach(ctx, sec, table, screening, gap, eps)
    if rank != 0:
        return {}
    failed = [r for r in results if not r.ok]
    ok = [r for r in results if r.ok]
    summary = "; ".join(f"{r.unit}: {r.error}" for r in failed)
    if not ok:
        raise RuntimeError(f"rates stage: every unit failed: {summary}")
    # the finished units are written even when others failed (NaN rows mark
    # the failed ones), then the stage reports the failure
    path = ctx.stage_dir / "rates.h5"
    with atomic_h5(path, input_hash=ctx.input_hash, stage="rates", prov=ctx.prov) as f:
        f.attrs["material"] = table.material
        f.attrs["convention"] = ("physics.md: E bin centres, midpoint q sum, "
                                 "Q = 1 + floor((E - gap)/pair_energy)")
        f.attrs["halo"] = json.dumps(ok[0].value.inputs["halo"])
        f.attrs["failed_units"] = json.dumps([[list(r.unit), r.error] for r in failed])
        write_dataset(f, "E", table.e_ev, "eV", "energy bin centres")
        for fdm in fdms:
            rr = [r for r in results if r.unit[0] == fdm]
            vals = [r.value for r in rr if r.ok]
            nQ = max((v.dr_dq.shape[1] for v in vals), default=1)
            de = np.full((len(rr), table.ne), np.nan)
            tot = np.full(len(rr), np.nan)
            dq = np.full((len(rr), nQ), np.nan)
            for i, r in enumerate(rr):
                if r.ok:
                    de[i], tot[i] = r.value.dr_de[0], r.value.total[0]
                    dq[i] = 0.0
                    dq[i, :r.value.dr_dq.shape[1]] = r.value.dr_dq[0]
            g = f.create_group(fdm)
            write_dataset(g, "mass", np.array([r.unit[1] for r in rr], dtype=float), "MeV")
            write_dataset(g, "dR_dE", de, "1/(kg*year*eV)",
                          "dR/dE_e at sigma_e, rows = masses (NaN: unit failed)")
            write_dataset(g, "total", tot, "1/(kg*year)")
            write_dataset(g, "dR_dQ", dq, "1/(kg*year)", "rate in Q = 1, 2, ... (columns)")
            g.attrs["sigma_e_cm2"] = sigma
            g.attrs["notes"] = json.dumps([r.value.notes[0] if r.ok else f"failed: {r.error}"
                                           for r in rr])
    outputs["rates"] = str(path)
    outputs.update(plot_spectra(ok, fdms, ctx.stage_dir, table.material))
    outputs.update(reach_out)
    if failed:
        raise RuntimeError(f"rates stage: {len(failed)} of {len(results)} units failed (the "
                           f"finished ones are in {path}): {summary}")
    return outputs


def plot_spectra(results, fdms, out_dir, material="") -> dict:
    """dR/dE and dR/dQ plots (matplotlib Agg) -> {label: path}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = {}
    for kind in ("dRdE", "dRdQ"):
        fig, axes = plt.subplots(1, len(fdms), figsize=(5 * len(fdms), 4), squeeze=False)
        for ax, fdm in zip(axes[0], fdms):
            for res in results:
                if res.unit[0] != fdm:
                    continue
                r = res.value
                lab = f"{res.unit[1]:g} MeV"
                if kind == "dRdE":
                    y = np.where(r.dr_de[0] > 0, r.dr_de[0], np.nan)
                    ax.plot(r.e_ev, y, label=lab)
                    ax.set_xlabel("E_e [eV]")
                    ax.set_ylabel("dR/dE_e [events/kg/year/eV]")
                else:
                    y = np.where(r.dr_dq[0] > 0, r.dr_dq[0], np.nan)
                    ax.step(r.q_values, y, where="mid", label=lab)
                    ax.set_xlabel("Q [electrons]")
                    ax.set_ylabel("rate [events/kg/year]")
            ax.set_yscale("log")
            ax.set_title(f"{material} F_DM {fdm}, sigma_e = {results[0].value.inputs['sigma_e_cm2']:g} cm^2")
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = Path(out_dir) / f"{kind}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out[kind] = str(p)
    return out
