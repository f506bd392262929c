"""Stage ``bands``: Kohn-Sham bands on a dense Gamma-centred mesh, spread over MPI ranks.

With the converged density of the ``dft`` stage fixed, the Kohn-Sham
Hamiltonian at any k is known and each k-point is an independent
diagonalization (PySCF ``get_bands``, non-self-consistent).  That is where
MPI pays off: the dense mesh (and the band-structure path) is cut into
chunks of ``chunk_size`` k-points, the chunks are spread over the ranks with
:func:`dmca_hpc.hpc.parallel.map_units` (dynamic schedule by default), and every
chunk's eigenvalues and coefficients are written, the moment it finishes,
to its own atomic checkpoint file (:class:`dmca_hpc.hpc.checkpoint.UnitStore`).
Rank 0 then merges them into ``bands.h5``.

Checkpoint and restart: chunks are defined by the mesh and ``chunk_size``
only, never by the rank count, so a restart with any number of ranks reuses
every finished chunk and recomputes the rest; a chunk is bitwise the same
whichever rank computes it.  A unit file that is truncated, corrupt or
written for other inputs (its ``input_hash`` differs) counts as not done.

Conventions (shared/design/physics.md, :mod:`dmca_hpc.electronic.symmetry`):

* k order: C order of the mesh addresses, ``kpts_frac = (i0/n0, i1/n1, i2/n2)``
  in the reciprocal basis (same as ``Cell.make_kpts(kmesh)``); ``kpts``
  cartesian [bohr^-1] including 2 pi.
* ``energies`` [nk, nbands] hartree on the DFT scale; bands ``0..nocc-1``
  are the (doubly occupied) valence bands, then ``nbands - nocc``
  conduction bands.
* ``coeffs`` [nk, nao, nbands] complex: psi_nk(r) = sum_mu C[k, mu, n]
  phi^k_mu(r) with PySCF's Bloch AOs phi^k_mu(r) = sum_T e^{i k.T}
  chi_mu(r - T); orthonormal with the AO overlap S(k) (``cell.pbc_intor(
  'int1e_ovlp', kpts=...)``).
* Scissor to the experimental gap Delta_exp, with Delta = Delta_exp -
  Delta_DFT (indirect):
  ``qcdark``: conduction bands up by Delta, then everything shifted so the
  VBM is at 0 (QCDark); ``qedark``: valence down and conduction up by
  Delta/2 each, no reference shift (QEdark); ``none``.  The shifted
  eigenvalues are ``energies_scissored`` [hartree]; the shifts are attributes
  in eV.
* DOS: sum over the dense mesh (weights 1/nk) of Gaussians of width
  ``dos_sigma_ev``, spin included: states / eV / cell, on the DFT scale.

Output ``<stage_dir>/bands.h5`` (the contract with the form-factor stage):
root attrs ``cell`` (PySCF ``Cell.dumps()``), ``material``, ``xc``, ``basis``,
``nocc``, ``nbands``, ``kmesh``, ``gap_indirect_ev``, ``gap_direct_ev``,
``vbm_ev``, ``cbm_ev`` (DFT scale) with their k (``*_kpt_frac``), the
``scissor_*`` attrs; datasets ``kpts_frac``, ``kpts``, ``energies``,
``energies_scissored``, ``coeffs``, ``ibz_index``, ``ibz_weight``,
``full_to_ibz``, ``ibz_rotations``, ``ibz_umklapp``, ``ibz_time_reversal``,
``dos_energy_ev``, ``dos`` and group ``band_path`` (all with ``units``); plus
a band-structure plot along ASE's standard path and a DOS plot (PNG).
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BANDS_DEFAULTS", "BandsInputError", "choose_nbands", "apply_scissor",
           "density_of_states", "gap_summary", "run_stage", "chunk_units"]

#: defaults of the ``bands`` job section (config/schema/bands.schema.json holds the same)
BANDS_DEFAULTS: dict[str, Any] = {
    "kmesh": [4, 4, 4],
    "n_conduction": None,
    "energy_above_gap_ev": 50.0,
    "chunk_size": 4,
    "schedule": "dynamic",
    "scissor_convention": "qcdark",
    "scissor_gap_ev": None,
    "dos_sigma_ev": 0.1,
    "dos_step_ev": 0.02,
    "band_path": None,
    "band_path_npoints": 60,
    "plots": True,
    "symprec_angstrom": 1e-5,
}

#: keys that change what a unit (k-chunk) contains; the rest only change the merge
_UNIT_KEYS = ("kmesh", "n_conduction", "energy_above_gap_ev", "chunk_size", "band_path",
              "band_path_npoints")

STAGE = "bands"


class BandsInputError(ValueError):
    """Bad input of the bands stage (message names the job key)."""


def _validate(sec: dict):
    km = sec["kmesh"]
    if (not isinstance(km, (list, tuple)) or len(km) != 3
            or not all(isinstance(x, (int, np.integer)) and x >= 1 for x in km)):
        raise BandsInputError(f"bands.kmesh must be three positive integers, got {km!r}")
    if int(sec["chunk_size"]) < 1:
        raise BandsInputError(f"bands.chunk_size must be >= 1, got {sec['chunk_size']!r}")
    if sec["scissor_convention"] not in ("qcdark", "qedark", "none"):
        raise BandsInputError(f"bands.scissor_convention = {sec['scissor_convention']!r}: "
                              "expected 'qcdark', 'qedark' or 'none'")
    if sec["schedule"] not in ("static", "dynamic"):
        raise BandsInputError(f"bands.schedule = {sec['schedule']!r}: expected 'static' or 'dynamic'")
    nc = sec["n_conduction"]
    if nc is not None and int(nc) < 1:
        raise BandsInputError(f"bands.n_conduction must be >= 1 or null, got {nc!r}")
    if float(sec["energy_above_gap_ev"]) <= 0:
        raise BandsInputError("bands.energy_above_gap_ev must be > 0 eV, got "
                              f"{sec['energy_above_gap_ev']!r}")
    if float(sec["dos_sigma_ev"]) <= 0 or float(sec["dos_step_ev"]) <= 0:
        raise BandsInputError("bands.dos_sigma_ev and bands.dos_step_ev must be > 0 eV")
    if int(sec["band_path_npoints"]) < 0:
        raise BandsInputError("bands.band_path_npoints must be >= 0 (0: no band path)")


def choose_nbands(mo_energy, nocc: int, n_conduction: int | None = None,
                  energy_above_gap_ev: float = 50.0) -> tuple[int, str | None]:
    """Number of bands to keep (valence + conduction) and a warning or None.

    With ``n_conduction`` given, it is used (error above what the basis has).
    Otherwise every conduction band with a state (on the coarse SCF mesh)
    less than ``energy_above_gap_ev`` [eV] above the CBM is kept, so that
    all states up to that energy are present; if even the highest band of
    the basis has states below it, all bands are kept and a warning says how
    far the basis reaches.

    Args:
        mo_energy: [nk, nmo] eigenvalues [hartree] of the SCF.
        nocc: doubly occupied bands.
    """
    from dmca_hpc.units import HARTREE_EV
    e = np.sort(np.asarray(mo_energy), axis=1)
    nmo = e.shape[1]
    nc_max = nmo - nocc
    if nc_max < 1:
        raise BandsInputError(f"the basis has no conduction bands ({nmo} orbitals, {nocc} occupied)")
    if n_conduction is not None:
        if int(n_conduction) > nc_max:
            raise BandsInputError(f"bands.n_conduction = {n_conduction}: the basis has only "
                                  f"{nc_max} conduction bands ({nmo} orbitals, {nocc} valence)")
        return nocc + int(n_conduction), None
    cbm = e[:, nocc].min()
    target = cbm + float(energy_above_gap_ev) / HARTREE_EV
    mins = e[:, nocc:].min(axis=0)
    nc = int(np.sum(mins < target))
    warn = None
    reach = e[:, -1].min()  # above this energy, some k has no state left in the basis
    if reach < target:
        warn = (f"bands.energy_above_gap_ev = {energy_above_gap_ev} eV is not reached by the basis: "
                f"its highest band starts {(reach - cbm) * HARTREE_EV:.1f} eV above the CBM, so "
                f"states are complete only up to there; using all {nc_max} conduction bands "
                f"(use a larger basis, e.g. dft.basis gth-tzv2p or an all-electron basis, "
                f"to reach further)")
    return nocc + max(nc, 1), warn


def gap_summary(energies, nocc: int, kpts_frac) -> dict:
    """Indirect/direct gaps [eV], VBM/CBM [eV, DFT scale] and where they are
    (:func:`dmca_hpc.electronic.scf.band_gap_from` plus the k-points, fractional)."""
    from dmca_hpc.electronic.scf import band_gap_from
    g = band_gap_from(energies, nocc)
    out = {k: g[k] for k in ("vbm_ev", "cbm_ev", "gap_indirect_ev", "gap_direct_ev")}
    for name, key in (("vbm_kpt_frac", "vbm_k"), ("cbm_kpt_frac", "cbm_k"),
                      ("direct_gap_kpt_frac", "direct_k")):
        out[name] = np.asarray(kpts_frac[g[key]], float)
    return out


def apply_scissor(energies, nocc: int, vbm_ev: float, gap_dft_ev: float,
                  gap_target_ev: float | None, convention: str = "qcdark"):
    """Scissor-shifted eigenvalues [hartree] and a dict of what was done [eV].

    Args:
        energies: [nk, nbands] hartree (DFT scale).
        nocc: valence bands.
        vbm_ev, gap_dft_ev: DFT VBM and indirect gap [eV].
        gap_target_ev: experimental gap [eV] (None: no scissor).
        convention: ``qcdark`` (conduction up by Delta, VBM to 0), ``qedark``
            (valence down and conduction up by Delta/2) or ``none``.
    """
    from dmca_hpc.units import HARTREE_EV
    e = np.array(energies, dtype=float, copy=True)
    if convention == "none" or gap_target_ev is None:
        return e, {"convention": "none", "gap_target_ev": float("nan"), "delta_ev": 0.0,
                   "shift_valence_ev": 0.0, "shift_conduction_ev": 0.0, "reference_ev": 0.0}
    delta = float(gap_target_ev) - float(gap_dft_ev)
    if convention == "qcdark":
        sv, sc, ref = 0.0, delta, float(vbm_ev)
    elif convention == "qedark":
        sv, sc, ref = -delta / 2, delta / 2, 0.0
    else:
        raise BandsInputError(f"bands.scissor_convention = {convention!r}: expected 'qcdark', "
                              "'qedark' or 'none'")
    e[:, :nocc] += (sv - ref) / HARTREE_EV
    e[:, nocc:] += (sc - ref) / HARTREE_EV
    return e, {"convention": convention, "gap_target_ev": float(gap_target_ev), "delta_ev": delta,
               "shift_valence_ev": sv, "shift_conduction_ev": sc, "reference_ev": ref}


def density_of_states(energies_hartree, sigma_ev: float = 0.1, step_ev: float = 0.02,
                      weights=None):
    """Gaussian-broadened DOS [states / eV / cell, spin included] on an energy
    grid [eV] covering all bands +- 5 sigma; weights default to 1/nk."""
    from dmca_hpc.units import HARTREE_EV
    e = np.asarray(energies_hartree) * HARTREE_EV
    nk = e.shape[0]
    w = np.full(nk, 1.0 / nk) if weights is None else np.asarray(weights, float)
    grid = np.arange(e.min() - 5 * sigma_ev, e.max() + 5 * sigma_ev + step_ev, step_ev)
    dos = np.zeros_like(grid)
    norm = 2.0 / (np.sqrt(2 * np.pi) * sigma_ev)  # 2: spin
    for k in range(nk):
        x = (grid[:, None] - e[k][None, :]) / sigma_ev
        dos += w[k] * norm * np.exp(-0.5 * x * x).sum(axis=1)
    return grid, dos


def chunk_units(n_mesh: int, n_path: int, chunk_size: int) -> list[tuple]:
    """Units ``(kind, start, stop)``: mesh k-chunks first, then path chunks."""
    units = [("mesh", s, min(s + chunk_size, n_mesh)) for s in range(0, n_mesh, chunk_size)]
    units += [("path", s, min(s + chunk_size, n_path)) for s in range(0, n_path, chunk_size)]
    return units


def _band_path(atoms, path: str | None, npoints: int):
    bp = atoms.cell.bandpath(path=path, npoints=npoints)
    x, xs, labels = bp.get_linear_kpoint_axis()
    labels = [("Γ" if lb == "G" else lb) for lb in labels]
    # a path break ("K,U") gives two special points at the same x: one tick "K|U"
    mx, ml = [float(xs[0])], [labels[0]]
    for xv, lb in zip(xs[1:], labels[1:]):
        if abs(xv - mx[-1]) < 1e-12:
            ml[-1] = f"{ml[-1]}|{lb}"
        else:
            mx.append(float(xv))
            ml.append(lb)
    return bp, np.asarray(x), np.asarray(mx), ml


def _segment_of(x: float, xs, labels) -> tuple[str, float]:
    """Segment label ('Γ-X') and fractional position along it of path coordinate x."""
    for s in range(len(xs) - 1):
        if xs[s] <= x <= xs[s + 1] and xs[s + 1] > xs[s]:
            return f"{labels[s]}-{labels[s + 1]}", float((x - xs[s]) / (xs[s + 1] - xs[s]))
    return "?", float("nan")


# --------------------------------------------------------------------------- unit work

class _Worker:
    """Per-rank state for the k-chunks: the Kohn-Sham Hamiltonian of the
    converged density, rebuilt once from scf.h5, then diagonalized per k.

    Fast path (FFTDF, GTH pseudopotential, LDA/GGA, no exact exchange): the
    density, the Hartree potential (FFT Poisson solve) and the XC potential
    are put on the real-space grid once per rank; a chunk then needs only its
    AOs on the grid, PySCF's own core Hamiltonian (kinetic + pseudopotential)
    and overlap at its k-points, and one generalized eigenproblem per k.  It
    is the Hamiltonian PySCF's ``get_bands`` builds (same eigenvalues to
    1e-12 hartree, tests/test_bands.py) without recomputing the density from
    the coarse-mesh density matrices for every chunk, which made
    ``get_bands`` about 2.5x slower per chunk of 4 k-points (Si gth-dzvp).
    Anything else (hybrids, meta-GGA, GDF, all-electron) uses PySCF's
    ``get_bands`` with FFTDF (GDF would rebuild its 3-index integrals for
    every new k set).
    """

    def __init__(self, scf_path: str, nbands: int, fast: bool = True):
        self.scf_path, self.nbands, self.fast = scf_path, nbands, fast
        self._mf = None
        self.vloc = None

    def mf(self):
        if self._mf is None:
            from dmca_hpc.electronic.scf import load_scf, make_kmf
            d = load_scf(self.scf_path)
            sec = dict(d["sec"])
            sec["density_fit"] = "FFTDF"
            mf = make_kmf(d["cell"], d["kpts"], sec)
            mf.verbose = 0
            self._mf, self.dm, self.cell, self.kpts = mf, d["dm"], d["cell"], d["kpts"]
            ni = mf._numint
            self.xctype = ni._xc_type(mf.xc)
            omega, alpha, hyb = ni.rsh_and_hybrid_coeff(mf.xc, spin=self.cell.spin)
            self.use_fast = (self.fast and self.xctype in ("LDA", "GGA")
                             and abs(hyb) < 1e-14 and abs(alpha) < 1e-14 and abs(omega) < 1e-14
                             and bool(self.cell._pseudo)
                             and len(self.cell._pseudo) == len(set(self.cell.elements)))
            if self.use_fast:
                self._setup_potential()
        return self._mf

    def _setup_potential(self):
        """Density, then v_xc (as PySCF's weighted ``wv``) and v_Hartree on the
        uniform grid [hartree]."""
        from pyscf.pbc import tools
        mf, cell = self._mf, self.cell
        ni, grids = mf._numint, mf.grids
        grids.build(with_non0tab=True) if getattr(grids, "coords", None) is None else None
        nao = cell.nao_nr()
        deriv = 0 if self.xctype == "LDA" else 1
        make_rho, nset, _ = ni._gen_rho_evaluator(cell, np.asarray(self.dm), 1, False)
        ng = grids.weights.size
        nvar = 1 if self.xctype == "LDA" else 4
        rho = np.zeros((nvar, ng))
        p1 = 0
        for ao_k1, ao_k2, mask, weight, coords in ni.block_loop(cell, grids, nao, deriv,
                                                                 self.kpts, None, 2000):
            p0, p1 = p1, p1 + weight.size
            rho[:, p0:p1] = np.asarray(make_rho(0, ao_k2, mask, self.xctype).real).reshape(nvar, -1)
        rho_in = rho[0] if self.xctype == "LDA" else rho
        vxc = ni.eval_xc_eff(mf.xc, rho_in, 1, xctype=self.xctype, spin=0)[1]
        vxc = np.asarray(vxc).reshape(nvar, ng)
        mesh = mf.with_df.mesh
        coulG = tools.get_coulG(cell, mesh=mesh)
        vH = tools.ifft(coulG * tools.fft(rho[0], mesh), mesh).real
        wv = grids.weights * vxc
        wv[0] += grids.weights * vH
        self.wv = wv
        self.nelec_grid = float((rho[0] * grids.weights).sum())

    def hamiltonian(self, kpts_band):
        """(fock, overlap) [hartree, '1'] at ``kpts_band`` [bohr^-1] (fast path)."""
        mf, cell = self.mf(), self.cell
        ni, grids = mf._numint, mf.grids
        kb = np.asarray(kpts_band).reshape(-1, 3)
        nao = cell.nao_nr()
        deriv = 0 if self.xctype == "LDA" else 1
        vmat = np.zeros((len(kb), nao, nao), dtype=complex)
        shls_slice, ao_loc = (0, cell.nbas), cell.ao_loc
        p1 = 0
        for ao_k1, ao_k2, mask, weight, coords in ni.block_loop(cell, grids, nao, deriv, kb,
                                                                 None, 2000):
            p0, p1 = p1, p1 + weight.size
            wv = np.array(self.wv[:, p0:p1], copy=True)
            vmat += ni._vxc_mat(cell, ao_k1, wv, mask, self.xctype, shls_slice, ao_loc, 1)
        vmat = vmat + vmat.conj().transpose(0, 2, 1)
        # kinetic + pseudopotential exactly as in the SCF (FFTDF get_pp: local part on
        # the grid, nonlocal part in reciprocal space on the same mesh)
        hcore = np.asarray(mf.get_hcore(cell, kb)).reshape(len(kb), nao, nao)
        s = np.asarray(mf.get_ovlp(cell, kb)).reshape(len(kb), nao, nao)
        return hcore + vmat, s

    def bands(self, kpts_cart):
        """(energies [nk, nbands] hartree, coeffs [nk, nao, nbands])."""
        mf = self.mf()
        if self.use_fast:
            from pyscf.pbc.scf import hf as pbchf
            f, s = self.hamiltonian(kpts_cart)
            e, c = pbchf.eigh_with_canonical_orth(f, s)
        else:
            e, c = mf.get_bands(np.asarray(kpts_cart), dm_kpts=self.dm)
        e = np.asarray(e)[:, :self.nbands]
        c = np.asarray(c)[:, :, :self.nbands]
        return e, c


# --------------------------------------------------------------------------- stage

def _section(ctx) -> dict:
    sec = dict((ctx.job or {}).get("bands") or {})
    unknown = sorted(set(sec) - set(BANDS_DEFAULTS))
    if unknown:
        raise BandsInputError(f"bands: unknown key(s) {unknown}; expected a subset of "
                              f"{sorted(BANDS_DEFAULTS)}")
    out = copy.deepcopy(BANDS_DEFAULTS)
    out.update(sec)
    _validate(out)
    return out


def _scf_path(ctx) -> str:
    p = ((ctx.outputs or {}).get("dft") or {}).get("scf")
    if p is None:
        p = str(Path(ctx.stage_dir).parent / "dft" / "scf.h5")
    return str(p)


def run_stage(ctx) -> dict:
    """Pipeline stage ``bands`` (called on every rank).

    Returns on rank 0 ``{'bands': bands.h5, 'band_structure_plot': png,
    'dos_plot': png}`` (plots only with ``plots: true``), ``{}`` elsewhere.

    Raises:
        BandsInputError: bad section (every rank).
        RuntimeError: some k-chunks failed (their error is in telemetry; the
            finished ones are checkpointed, so a rerun only redoes those).
    """
    from dmca_hpc.hpc.checkpoint import UnitStore, config_hash, is_complete
    from dmca_hpc.electronic.scf import idle_barrier, material_name, set_threads
    from dmca_hpc.hpc.parallel import Progress, map_units, peak_memory_mb
    from dmca_hpc.units import HARTREE_EV
    comm = ctx.comm
    rank, size = comm.Get_rank(), comm.Get_size()
    sec = _section(ctx)
    name = material_name(ctx.material)
    stage_dir = Path(ctx.stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)

    # rank 0 reads the small SCF summary and decides; everyone gets the plan
    plan = None
    if rank == 0:
        try:
            plan = _plan(ctx, sec, name)
        except Exception as exc:
            plan = {"error": (type(exc).__name__, str(exc))}
    plan = comm.bcast(plan, root=0)
    if "error" in plan:
        etype, msg = plan["error"]
        raise (BandsInputError if etype == "BandsInputError" else RuntimeError)(msg)
    if plan["warning"] and rank == 0:
        warnings.warn(plan["warning"])
        print(f"dmca_hpc bands: WARNING: {plan['warning']}", file=sys.stderr)

    out_path = stage_dir / "bands.h5"
    outputs = {"bands": str(out_path)}
    if sec["plots"]:
        outputs["band_structure_plot"] = str(stage_dir / "band_structure.png")
        outputs["dos_plot"] = str(stage_dir / "dos.png")
    if plan["reuse"]:
        if rank == 0:
            ctx.telemetry.record(STAGE, f"{name}:merge", "skipped", 0.0, 0.0, peak_memory_mb(),
                                 physics={"material": name, "kpts": list(sec["kmesh"])})
        return outputs if rank == 0 else {}

    units = plan["units"]
    store = UnitStore(stage_dir / "units", plan["unit_hash"])
    if size > 1:
        set_threads(1)  # one core per rank: the k-chunks are the parallelism
    worker = _Worker(plan["scf"], plan["nbands"])
    kcart = {"mesh": plan["mesh_kpts"], "path": plan["path_kpts"]}
    progress = Progress(f"{name} bands", len(units), comm=comm)
    unit_pos = {tuple(u): j for j, u in enumerate(units)}

    def work(unit):
        kind, s, t = unit
        e, c = worker.bands(kcart[kind][s:t])
        i = unit_pos[tuple(unit)]
        store.save(i, {"energies": e, "coeffs": c, "k_index": np.arange(s, t)},
                   {"energies": "hartree", "coeffs": "1", "k_index": "1"},
                   attrs={"kind": kind, "start": s, "stop": t})
        nocc = plan["nocc"]
        return {"gap_direct_ev": float((e[:, nocc] - e[:, nocc - 1]).min() * HARTREE_EV)}

    def on_result(r):
        kind, s, t = r.unit
        phys = {"material": name, "kpts": int(t - s), "e_tot_hartree": plan["e_tot"]}
        if r.ok and r.value["gap_direct_ev"] >= 0:
            phys["band_gap_ev"] = r.value["gap_direct_ev"]
        ctx.telemetry.record_result(STAGE, r, physics=phys, unit=f"{name}:{kind}:{s}-{t}")
        if rank == 0:  # count every rank's finished files (names only: cheap)
            progress.update(sum(1 for _ in store.dir.glob("unit-*.h5")))

    results = map_units(work, units, comm=comm, schedule=sec["schedule"],
                        on_result=on_result, skip=plan["done"])
    failed = None
    if rank == 0:
        failed = [(r.index, str(r.unit), r.error) for r in results if not r.ok]
    failed = comm.bcast(failed, root=0)
    if failed:
        raise RuntimeError(f"bands: {len(failed)} of {len(units)} k-chunks failed for {name} "
                           f"(finished ones are checkpointed in {store.dir}); first: "
                           f"unit {failed[0][1]}: {failed[0][2]}")

    status = None
    if rank == 0:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            _merge(ctx, sec, plan, store, out_path, name)
            status = ("ok", None)
            ctx.telemetry.record(STAGE, f"{name}:merge", "ok", time.perf_counter() - t0,
                                 time.process_time() - c0, peak_memory_mb(),
                                 physics={"material": name, "kpts": list(sec["kmesh"]),
                                          "e_tot_hartree": plan["e_tot"]})
        except Exception as exc:
            status = ("error", f"{type(exc).__name__}: {exc}")
            ctx.telemetry.record(STAGE, f"{name}:merge", "failed", time.perf_counter() - t0,
                                 time.process_time() - c0, peak_memory_mb(), error=status[1])
            if size == 1:
                raise
    idle_barrier(comm)
    status = comm.bcast(status, root=0)
    if status[0] == "error":
        raise RuntimeError(f"bands merge failed: {status[1]}")
    return outputs if rank == 0 else {}


def _plan(ctx, sec: dict, name: str) -> dict:
    """Rank 0: read the SCF, choose nbands, build the k lists and units,
    find finished units.  Returns a picklable dict for every rank."""
    import h5py
    from dmca_hpc.hpc.checkpoint import UnitStore, config_hash, is_complete
    from dmca_hpc.electronic.symmetry import mesh_frac
    scf = _scf_path(ctx)
    if not is_complete(scf):
        raise RuntimeError(f"bands: SCF file {scf} is missing or incomplete; run the dft stage "
                           "first (ctx.outputs['dft']['scf'])")
    with h5py.File(scf, "r") as f:
        scf_hash = str(f.attrs["input_hash"])
        nocc = int(f.attrs["nocc"])
        e_tot = float(f.attrs["e_tot"])
        mo_energy = f["mo_energy"][()]
        cell_str = f.attrs["cell"]
        smat = {k: f["structure"][k][()] for k in ("cell", "positions", "numbers")}
    from ase import Atoms
    atoms = Atoms(numbers=smat["numbers"], positions=smat["positions"], cell=smat["cell"], pbc=True)
    nbands, warn = choose_nbands(mo_energy, nocc, sec["n_conduction"], sec["energy_above_gap_ev"])
    frac = mesh_frac(sec["kmesh"])
    from pyscf.pbc import gto
    cell = gto.loads(cell_str)
    mesh_kpts = cell.get_abs_kpts(frac)
    if int(sec["band_path_npoints"]) > 0:
        bp = atoms.cell.bandpath(path=sec["band_path"], npoints=int(sec["band_path_npoints"]))
        path_frac = np.asarray(bp.kpts)
    else:
        path_frac = np.zeros((0, 3))
    path_kpts = cell.get_abs_kpts(path_frac) if len(path_frac) else np.zeros((0, 3))
    units = chunk_units(len(frac), len(path_frac), int(sec["chunk_size"]))
    unit_hash = config_hash({"stage": STAGE, "ctx": ctx.input_hash, "scf": scf_hash,
                             "nbands": nbands,
                             "section": {k: sec[k] for k in _UNIT_KEYS}})
    out_hash = config_hash({"unit_hash": unit_hash, "section": sec,
                            "material_gap": _target_gap(ctx.material, sec)})
    out_path = Path(ctx.stage_dir) / "bands.h5"
    plots_ok = (not sec["plots"]) or all((Path(ctx.stage_dir) / p).exists()
                                         for p in ("band_structure.png", "dos.png"))
    reuse = is_complete(out_path, out_hash) and plots_ok
    done = sorted(UnitStore(Path(ctx.stage_dir) / "units", unit_hash).done(len(units))) \
        if not reuse else []
    return {"scf": scf, "scf_hash": scf_hash, "nocc": nocc, "nbands": nbands, "warning": warn,
            "e_tot": e_tot, "mesh_frac": frac, "mesh_kpts": mesh_kpts, "path_frac": path_frac,
            "path_kpts": path_kpts, "units": units, "unit_hash": unit_hash, "out_hash": out_hash,
            "reuse": reuse, "done": done, "atoms": atoms, "cell_str": cell_str}


def _target_gap(material, sec) -> float | None:
    if sec["scissor_gap_ev"] is not None:
        return float(sec["scissor_gap_ev"])
    for attr in ("scissor_gap_ev", "gap_ev"):
        v = getattr(material, attr, None)
        if v is not None:
            return float(v)
    return None


def _merge(ctx, sec, plan, store, out_path: Path, name: str):
    """Rank 0: gather the unit files into bands.h5 (+ plots), atomically."""
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    from dmca_hpc.electronic.symmetry import irreducible_mesh
    from dmca_hpc.units import HARTREE_EV
    units, nocc, nbands = plan["units"], plan["nocc"], plan["nbands"]
    nk, npath = len(plan["mesh_frac"]), len(plan["path_frac"])
    energies = coeffs = None
    path_e = np.zeros((npath, nbands))
    for i, (kind, s, t) in enumerate(units):
        arrays, attrs = store.load(i)
        if (attrs.get("kind"), int(attrs.get("start", -1)), int(attrs.get("stop", -1))) != (kind, s, t):
            raise RuntimeError(f"unit file {store.path(i)} holds {attrs.get('kind')} "
                               f"{attrs.get('start')}-{attrs.get('stop')}, expected {kind} {s}-{t}")
        if kind == "mesh":
            if energies is None:
                nao = arrays["coeffs"].shape[1]
                energies = np.zeros((nk, nbands))
                coeffs = np.zeros((nk, nao, nbands), dtype=complex)
            energies[s:t] = arrays["energies"]
            coeffs[s:t] = arrays["coeffs"]
        else:
            path_e[s:t] = arrays["energies"]
    gaps = gap_summary(energies, nocc, plan["mesh_frac"])
    target = _target_gap(ctx.material, sec)
    if target is None and sec["scissor_convention"] != "none":
        warnings.warn(f"bands: no experimental gap known for {name} (bands.scissor_gap_ev is "
                      "null and the material has none): no scissor applied")
    e_sc, sc = apply_scissor(energies, nocc, gaps["vbm_ev"], gaps["gap_indirect_ev"], target,
                             sec["scissor_convention"])
    ir = irreducible_mesh(plan["atoms"], sec["kmesh"], symprec=float(sec["symprec_angstrom"]))
    grid, dos = density_of_states(energies, float(sec["dos_sigma_ev"]), float(sec["dos_step_ev"]))
    path_info = {}
    if npath:
        bp, x, xs, labels = _band_path(plan["atoms"], sec["band_path"], int(sec["band_path_npoints"]))
        pv = path_e[:, nocc - 1].max()
        ic = int(np.argmin(path_e[:, nocc]))
        seg, fr = _segment_of(x[ic], xs, labels)
        path_info = {"x": x, "xs": xs, "labels": labels, "path": bp.path,
                     "cbm_segment": seg, "cbm_fraction": fr,
                     "gap_indirect_ev": float((path_e[:, nocc].min() - pv) * HARTREE_EV),
                     "vbm_ev": float(pv * HARTREE_EV)}

    with atomic_h5(out_path, input_hash=plan["out_hash"], stage=STAGE, prov=ctx.prov) as f:
        a = f.attrs
        a["cell"] = plan["cell_str"]
        a["material"] = name
        with __import__("h5py").File(plan["scf"], "r") as g:
            for k in ("xc", "basis", "pseudo", "e_tot", "e_tot_units", "density_fit"):
                a[k] = g.attrs[k]
            a["scf_kmesh"] = g.attrs["kmesh"]
        a["scf_file"] = plan["scf"]
        a["scf_input_hash"] = plan["scf_hash"]
        a["nocc"] = nocc
        a["nbands"] = nbands
        a["nk"] = nk
        a["kmesh"] = np.array(sec["kmesh"], dtype=int)
        a["kpts_order"] = ("C order of mesh addresses (i0,i1,i2), last fastest; kpts_frac = "
                           "i/n in [0,1), as Cell.make_kpts(kmesh)")
        a["energy_above_gap_ev"] = float(sec["energy_above_gap_ev"])
        a["nbands_warning"] = plan["warning"] or ""
        for k in ("gap_indirect_ev", "gap_direct_ev", "vbm_ev", "cbm_ev"):
            a[k] = gaps[k]
        for k in ("vbm_kpt_frac", "cbm_kpt_frac", "direct_gap_kpt_frac"):
            a[k] = gaps[k]
        a["energy_units"] = "hartree (datasets), eV (attributes named *_ev)"
        a["scissor_convention"] = sc["convention"]
        a["scissor_gap_ev"] = sc["gap_target_ev"]
        a["scissor_delta_ev"] = sc["delta_ev"]
        a["scissor_shift_valence_ev"] = sc["shift_valence_ev"]
        a["scissor_shift_conduction_ev"] = sc["shift_conduction_ev"]
        a["scissor_reference_ev"] = sc["reference_ev"]
        a["coeffs_convention"] = ("psi_nk(r) = sum_mu coeffs[k,mu,n] phi^k_mu(r), PySCF Bloch AOs "
                                  "phi^k_mu(r) = sum_T exp(i k.T) chi_mu(r-T)")
        a["spacegroup"] = ir.spacegroup
        write_dataset(f, "kpts_frac", plan["mesh_frac"], "1",
                      "k in the reciprocal-lattice basis, Gamma-centred mesh, see kpts_order")
        write_dataset(f, "kpts", plan["mesh_kpts"], "bohr^-1", "cartesian k (2 pi included)")
        write_dataset(f, "energies", energies, "hartree",
                      "Kohn-Sham eigenvalues, DFT scale; bands 0..nocc-1 valence")
        write_dataset(f, "energies_scissored", e_sc, "hartree",
                      f"eigenvalues after the {sc['convention']} scissor (see scissor_* attrs)")
        write_dataset(f, "coeffs", coeffs, "1", "AO coefficients C[k, mu, n] (see coeffs_convention)")
        write_dataset(f, "ibz_index", ir.ibz_index, "1", "indices into the full mesh of the IBZ points")
        write_dataset(f, "ibz_weight", ir.ibz_weight, "1", "IBZ weights (sum 1)")
        write_dataset(f, "full_to_ibz", ir.full_to_ibz, "1",
                      "position in ibz_index of each full-mesh k's representative")
        write_dataset(f, "ibz_rotations", ir.rotations, "1",
                      "integer R (reciprocal basis): kpts_frac[k] = R kpts_frac[ibz] + G")
        write_dataset(f, "ibz_umklapp", ir.umklapp, "1", "the integer G of that relation")
        write_dataset(f, "ibz_time_reversal", ir.time_reversal.astype(np.int8), "1",
                      "1 when R includes time reversal (psi_k = conj of the rotated state)")
        write_dataset(f, "dos_energy_ev", grid, "eV", "energy grid, DFT scale")
        write_dataset(f, "dos", dos, "eV^-1",
                      f"density of states per cell, spin included, Gaussian sigma "
                      f"{sec['dos_sigma_ev']} eV")
        f["dos"].attrs["sigma_ev"] = float(sec["dos_sigma_ev"])
        if npath:
            g = f.create_group("band_path")
            g.attrs["path"] = path_info["path"]
            g.attrs["labels"] = ",".join(path_info["labels"])
            g.attrs["cbm_segment"] = path_info["cbm_segment"]
            g.attrs["cbm_fraction"] = path_info["cbm_fraction"]
            g.attrs["gap_indirect_ev"] = path_info["gap_indirect_ev"]
            write_dataset(g, "kpts_frac", plan["path_frac"], "1", "ASE band path k (reciprocal basis)")
            write_dataset(g, "x", path_info["x"], "angstrom^-1",
                          "path coordinate (ASE get_linear_kpoint_axis, no 2 pi)")
            write_dataset(g, "special_x", path_info["xs"], "angstrom^-1", "special-point positions")
            write_dataset(g, "energies", path_e, "hartree", "eigenvalues along the path, DFT scale")
        a["cbm_path_segment"] = path_info.get("cbm_segment", "")
        a["cbm_path_fraction"] = path_info.get("cbm_fraction", float("nan"))
    if sec["plots"]:
        _plots(Path(ctx.stage_dir), name, plan, path_e, path_info, grid, dos, gaps, nocc, sc)


def _plots(stage_dir: Path, name, plan, path_e, path_info, grid, dos, gaps, nocc, sc):
    """Band structure along the ASE path and DOS, relative to the DFT VBM [eV]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from dmca_hpc.hpc.checkpoint import atomic_path
    from dmca_hpc.units import HARTREE_EV
    vbm = gaps["vbm_ev"]
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if path_info:
        e = path_e * HARTREE_EV - vbm
        x = path_info["x"]
        for n in range(e.shape[1]):
            ax.plot(x, e[:, n], color="C0" if n < nocc else "C3", lw=1)
            if n >= nocc and sc["convention"] != "none":
                ax.plot(x, e[:, n] + sc["delta_ev"], color="C3", lw=0.6, ls="--")
        for xv in path_info["xs"]:
            ax.axvline(xv, color="0.7", lw=0.5)
        ax.set_xticks(path_info["xs"])
        ax.set_xticklabels(path_info["labels"])
        ax.set_xlim(x[0], x[-1])
    ax.axhline(0, color="k", lw=0.5, ls=":")
    ax.set_ylim(-13, 12)
    ax.set_ylabel("E - E_VBM (DFT) [eV]")
    ax.set_title(f"{name} bands (dashed: conduction after {sc['convention']} scissor, "
                 f"{sc['delta_ev']:+.2f} eV)", fontsize=9)
    with atomic_path(stage_dir / "band_structure.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(grid - vbm, dos, color="k", lw=1)
    ax.set_xlabel("E - E_VBM (DFT) [eV]")
    ax.set_ylabel("DOS [states / eV / cell]")
    ax.set_title(f"{name} DOS, mesh {plan['mesh_frac'].shape[0]} k", fontsize=9)
    with atomic_path(stage_dir / "dos.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
