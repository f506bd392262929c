"""Kohn-Sham bands on a dense Gamma-centred mesh, spread over MPI ranks by the
``bands`` stage (:mod:`dmca_hpc.stages.bands`).

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
  chi_mu(r - T); orthonormal with the AO overlap S(k) the states were solved
  with, PySCF's ``pbc.scf.hf.get_ovlp`` (:func:`accurate_intor`): for a nearly
  linearly dependent basis (CsI def2-SVP: smallest eigenvalue of S(Gamma) 1.6e-6,
  |C|^2 up to 5e5) the default-precision ``cell.pbc_intor('int1e_ovlp')`` is 1.4e-10
  off and C^H S C then 2.7e-6 from 1, against 3.4e-10 with the accurate S.
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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BandsInputError", "accurate_intor", "choose_nbands", "apply_scissor", "density_of_states",
           "gap_summary", "chunk_units", "band_path", "segment_of", "BandWorker", "write_bands",
           "validate_section", "fast_hamiltonian", "symmetry_kpoints", "unfold_states",
           "BandData", "BandsFileError", "load_bands"]

#: keys that change what a unit (k-chunk) contains; the rest only change the merge
_UNIT_KEYS = ("kmesh", "n_conduction", "energy_above_gap_ev", "chunk_size", "band_path",
              "band_path_npoints", "irreducible_only")

STAGE = "bands"


class BandsInputError(ValueError):
    """Bad input of the bands stage (message names the job key)."""


def validate_section(sec: dict):
    """Check a ``bands`` section with defaults applied (raises BandsInputError)."""
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


def band_path(atoms, path: str | None, npoints: int):
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


def segment_of(x: float, xs, labels) -> tuple[str, float]:
    """Segment label ('Γ-X') and fractional position along it of path coordinate x."""
    for s in range(len(xs) - 1):
        if xs[s] <= x <= xs[s + 1] and xs[s + 1] > xs[s]:
            return f"{labels[s]}-{labels[s + 1]}", float((x - xs[s]) / (xs[s + 1] - xs[s]))
    return "?", float("nan")


# --------------------------------------------------------------------------- unit work

class BandWorker:
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
    Anything else (hybrids, meta-GGA) uses PySCF's ``get_bands`` (for hybrids
    with the exchange singularity treated alike at SCF and non-SCF k,
    :mod:`dmca_hpc.electronic.exchange`): with FFTDF
    for GTH pseudopotentials (GDF would rebuild its 3-index integrals for
    every new k set), with GDF for all-electron bases (4.8 s per k for Si
    def2-svp, 41 s with def2-tzvp: hence ``irreducible_only``).
    """

    def __init__(self, scf_path: str, nbands: int, fast: bool = True):
        self.scf_path, self.nbands, self.fast = scf_path, nbands, fast
        self._mf = None
        self.vloc = None

    def mf(self):
        if self._mf is None:
            from dmca_hpc.electronic.scf import all_pseudo, load_scf, make_kmf
            d = load_scf(self.scf_path)
            sec = dict(d["sec"])
            if d["cell"]._pseudo:
                # GTH: FFTDF needs no rebuild for new k (GDF rebuilds its 3-index integrals)
                sec["density_fit"] = "FFTDF"
            # all-electron: the SCF's GDF (an FFT mesh for the core shells cannot exist)
            mf = make_kmf(d["cell"], d["kpts"], sec)
            mf.verbose = 0
            self._mf, self.dm, self.cell, self.kpts = mf, d["dm"], d["cell"], d["kpts"]
            ni = mf._numint
            self.xctype = ni._xc_type(mf.xc)
            omega, alpha, hyb = ni.rsh_and_hybrid_coeff(mf.xc, spin=self.cell.spin)
            self.use_fast = (self.fast and self.xctype in ("LDA", "GGA")
                             and abs(hyb) < 1e-14 and abs(alpha) < 1e-14 and abs(omega) < 1e-14
                             and all_pseudo(self.cell))
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

    def _exact_exchange_bands(self, kpts_cart):
        """PySCF's ``get_bands`` with the off-mesh exchange singularity treated
        alike at every band k (:mod:`dmca_hpc.electronic.exchange`): the
        exchange without PySCF's mesh-only Madelung term, then the occupied
        eigenvalues moved by the offset's own term.  Range-separated hybrids
        with a long-range part are refused off the SCF mesh."""
        from pyscf import lib

        from dmca_hpc.electronic.exchange import (offmesh_occupied_shift, on_scf_mesh,
                                                  singular_exchange_weight)
        mf = self.mf()
        c_x, kind = singular_exchange_weight(mf.xc, spin=self.cell.spin)
        if kind == "none" or mf.exxdiv not in ("ewald", None):
            # no singular exchange, or a truncated Coulomb kernel (vcut_*) that has none
            return mf.get_bands(kpts_cart, dm_kpts=self.dm)
        if kind == "long-range":
            if on_scf_mesh(self.cell, self.kpts, kpts_cart).all():
                return mf.get_bands(kpts_cart, dm_kpts=self.dm)
            raise BandsInputError(
                f"dft.xc = {mf.xc!r} has long-range exact exchange, whose Coulomb singularity "
                "bands off the SCF mesh do not treat; use a global hybrid (PBE0) or a "
                "short-range one (HSE06), or bands.kmesh equal to dft.kmesh")
        shift = offmesh_occupied_shift(self.cell, self.kpts, kpts_cart, c_x, mf.exxdiv)
        with lib.temporary_env(mf, exxdiv=None):
            e, c = mf.get_bands(kpts_cart, dm_kpts=self.dm)
        e = np.array(e, dtype=float)
        nocc = self.cell.nelectron // 2
        e[:, :nocc] += shift[:, None]
        return e, c

    def bands(self, kpts_cart):
        """(energies [nk, nbands] hartree, coeffs [nk, nao, nbands])."""
        mf = self.mf()
        if self.use_fast:
            from pyscf.pbc.scf import hf as pbchf
            f, s = self.hamiltonian(kpts_cart)
            e, c = pbchf.eigh_with_canonical_orth(f, s)
        else:
            e, c = self._exact_exchange_bands(np.asarray(kpts_cart))
        e = np.asarray(e)[:, :self.nbands]
        c = np.asarray(c)[:, :, :self.nbands]
        return e, c


def accurate_intor(cell, name: str, kpts, comp: int | None = None):
    """One-electron lattice-summed integrals ``name`` (``int1e_ovlp``, ``int1e_r``) at
    ``kpts`` [bohr^-1] as accurately as PySCF computes the overlap the SCF and the
    bands diagonalize with (``pbc.scf.hf.get_ovlp``: precision 1e-6 of the cell's, the
    matching rcut, no prescreening of the lattice sum).  The default
    ``cell.pbc_intor`` is ~1e-10 off, which an ill-conditioned all-electron basis
    amplifies by |C|^2 (module docstring)."""
    from pyscf import lib
    from pyscf.pbc import gto as pbcgto
    precision = cell.precision * 1e-6
    rcut = max(cell.rcut, pbcgto.estimate_rcut(cell, precision))
    kw = {} if comp is None else {"comp": comp}
    with lib.temporary_env(cell, rcut=rcut, precision=precision):
        return np.asarray(cell.pbc_intor(name, hermi=0, kpts=kpts, pbcopt=lib.c_null_ptr(), **kw))


def fast_hamiltonian(xc: str, pseudo: str | None, density_fit: str) -> bool:
    """True when :class:`BandWorker` can build H(k) from the potential on the
    grid (FFTDF, GTH pseudopotentials, LDA/GGA without exact exchange), so a
    k-point costs one diagonalization; otherwise each k needs PySCF's
    ``get_bands`` (GDF integrals, exchange), which is what the irreducible
    wedge saves."""
    from pyscf.dft import libxc
    if density_fit != "FFTDF" or pseudo in (None, "", "none"):
        return False
    try:
        return libxc.xc_type(xc) in ("LDA", "GGA") and abs(libxc.hybrid_coeff(xc)) < 1e-14 \
            and not libxc.is_hybrid_xc(xc)
    except (KeyError, ValueError):
        return False


def symmetry_kpoints(cell_str: str, kmesh):
    """PySCF ``KPoints`` (space group + time reversal) of the Gamma-centred
    ``kmesh``: its ``kpts`` are the full mesh in :func:`symmetry.mesh_frac`
    order, ``kpts_ibz`` the irreducible points whose states are rotated."""
    from pyscf.pbc import gto
    cell = gto.loads(cell_str)
    cell.verbose = 0
    cell.space_group_symmetry = True
    cell.symmorphic = False
    cell.build(dump_input=False, parse_arg=False)
    return cell.make_kpts([int(x) for x in kmesh], space_group_symmetry=True,
                          time_reversal_symmetry=True)


def unfold_states(kp, energies_ibz, coeffs_ibz):
    """(energies [nk, nb] hartree, coeffs [nk, nao, nb]) on the full mesh of
    ``kp`` from the states at its irreducible points: for k = S k_ibz,
    psi_{n,Sk}(r) = psi_{n,k_ibz}(S^-1 r) through PySCF's AO rotation matrices
    (complex conjugate under time reversal); energies are copied.  The states
    are Kohn-Sham eigenvectors at every k (tested), with a gauge that differs
    from a direct diagonalization only by phases and unitary mixing within
    degenerate sets, which every observable of the package sums over."""
    e = np.asarray(kp.transform_mo_energy([np.asarray(x) for x in energies_ibz]))
    c = np.asarray(kp.transform_mo_coeff([np.asarray(x) for x in coeffs_ibz]))
    return e, c


# --------------------------------------------------------------------------- bands.h5

def write_bands(path, *, input_hash: str, prov: dict | None, cell_str: str, material: str,
                scf_path: str, scf_hash: str, kmesh, energy_above_gap_ev: float,
                nbands_warning: str | None, kpts_frac, kpts, energies, energies_scissored, coeffs,
                nocc: int, scissor: dict, gaps: dict, ibz, dos_energy_ev, dos, dos_sigma_ev: float,
                band_path: dict | None = None) -> Path:
    """Write ``bands.h5`` atomically (the file the module docstring describes).

    Args:
        energies, energies_scissored: [nk, nbands] hartree; coeffs [nk, nao, nbands].
        kpts_frac [nk, 3] reciprocal basis; kpts [nk, 3] bohr^-1.
        scissor: the dict of :func:`apply_scissor`; gaps: of :func:`gap_summary` [eV].
        ibz: :class:`dmca_hpc.electronic.symmetry.IrreducibleMesh` of the mesh.
        dos_energy_ev [eV], dos [states / eV / cell], dos_sigma_ev [eV].
        band_path: None or a dict with ``kpts_frac``, ``energies`` [hartree], ``x``,
            ``xs`` [angstrom^-1], ``labels``, ``path``, ``cbm_segment``,
            ``cbm_fraction``, ``gap_indirect_ev``.
    """
    import h5py
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    path = Path(path)
    nbands = int(np.asarray(energies).shape[1])
    nk = len(kpts_frac)
    with atomic_h5(path, input_hash=input_hash, stage=STAGE, prov=prov) as f:
        a = f.attrs
        a["cell"] = cell_str
        a["material"] = material
        with h5py.File(scf_path, "r") as g:
            for k in ("xc", "basis", "pseudo", "e_tot", "e_tot_units", "density_fit"):
                a[k] = g.attrs[k]
            a["scf_kmesh"] = g.attrs["kmesh"]
        a["scf_file"] = scf_path
        a["scf_input_hash"] = scf_hash
        a["nocc"] = nocc
        a["nbands"] = nbands
        a["nk"] = nk
        a["kmesh"] = np.array(kmesh, dtype=int)
        a["kpts_order"] = ("C order of mesh addresses (i0,i1,i2), last fastest; kpts_frac = "
                           "i/n in [0,1), as Cell.make_kpts(kmesh)")
        a["energy_above_gap_ev"] = float(energy_above_gap_ev)
        a["nbands_warning"] = nbands_warning or ""
        for k in ("gap_indirect_ev", "gap_direct_ev", "vbm_ev", "cbm_ev"):
            a[k] = gaps[k]
        for k in ("vbm_kpt_frac", "cbm_kpt_frac", "direct_gap_kpt_frac"):
            a[k] = gaps[k]
        a["energy_units"] = "hartree (datasets), eV (attributes named *_ev)"
        a["scissor_convention"] = scissor["convention"]
        a["scissor_gap_ev"] = scissor["gap_target_ev"]
        a["scissor_delta_ev"] = scissor["delta_ev"]
        a["scissor_shift_valence_ev"] = scissor["shift_valence_ev"]
        a["scissor_shift_conduction_ev"] = scissor["shift_conduction_ev"]
        a["scissor_reference_ev"] = scissor["reference_ev"]
        a["coeffs_convention"] = ("psi_nk(r) = sum_mu coeffs[k,mu,n] phi^k_mu(r), PySCF Bloch AOs "
                                  "phi^k_mu(r) = sum_T exp(i k.T) chi_mu(r-T)")
        a["spacegroup"] = ibz.spacegroup
        write_dataset(f, "kpts_frac", kpts_frac, "1",
                      "k in the reciprocal-lattice basis, Gamma-centred mesh, see kpts_order")
        write_dataset(f, "kpts", kpts, "bohr^-1", "cartesian k (2 pi included)")
        write_dataset(f, "energies", energies, "hartree",
                      "Kohn-Sham eigenvalues, DFT scale; bands 0..nocc-1 valence")
        write_dataset(f, "energies_scissored", energies_scissored, "hartree",
                      f"eigenvalues after the {scissor['convention']} scissor (see scissor_* attrs)")
        write_dataset(f, "coeffs", coeffs, "1", "AO coefficients C[k, mu, n] (see coeffs_convention)")
        write_dataset(f, "ibz_index", ibz.ibz_index, "1", "indices into the full mesh of the IBZ points")
        write_dataset(f, "ibz_weight", ibz.ibz_weight, "1", "IBZ weights (sum 1)")
        write_dataset(f, "full_to_ibz", ibz.full_to_ibz, "1",
                      "position in ibz_index of each full-mesh k's representative")
        write_dataset(f, "ibz_rotations", ibz.rotations, "1",
                      "integer R (reciprocal basis): kpts_frac[k] = R kpts_frac[ibz] + G")
        write_dataset(f, "ibz_umklapp", ibz.umklapp, "1", "the integer G of that relation")
        write_dataset(f, "ibz_time_reversal", ibz.time_reversal.astype(np.int8), "1",
                      "1 when R includes time reversal (psi_k = conj of the rotated state)")
        write_dataset(f, "dos_energy_ev", dos_energy_ev, "eV", "energy grid, DFT scale")
        write_dataset(f, "dos", dos, "eV^-1",
                      f"density of states per cell, spin included, Gaussian sigma "
                      f"{dos_sigma_ev} eV")
        f["dos"].attrs["sigma_ev"] = float(dos_sigma_ev)
        if band_path is not None:
            g = f.create_group("band_path")
            g.attrs["path"] = band_path["path"]
            g.attrs["labels"] = ",".join(band_path["labels"])
            g.attrs["cbm_segment"] = band_path["cbm_segment"]
            g.attrs["cbm_fraction"] = band_path["cbm_fraction"]
            g.attrs["gap_indirect_ev"] = band_path["gap_indirect_ev"]
            write_dataset(g, "kpts_frac", band_path["kpts_frac"], "1", "ASE band path k (reciprocal basis)")
            write_dataset(g, "x", band_path["x"], "angstrom^-1",
                          "path coordinate (ASE get_linear_kpoint_axis, no 2 pi)")
            write_dataset(g, "special_x", band_path["xs"], "angstrom^-1", "special-point positions")
            write_dataset(g, "energies", band_path["energies"], "hartree", "eigenvalues along the path, DFT scale")
        a["cbm_path_segment"] = (band_path or {}).get("cbm_segment", "")
        a["cbm_path_fraction"] = (band_path or {}).get("cbm_fraction", float("nan"))
    return path


# --------------------------------------------------------------------------- reading bands.h5

#: datasets and attributes a bands.h5 file must carry (the contract with the form factor)
BANDS_DATASETS = ("kpts_frac", "kpts", "energies", "coeffs", "ibz_index",
                  "ibz_weight", "full_to_ibz")
BANDS_ATTRS = ("cell", "material", "nocc", "nbands", "kmesh")


class BandsFileError(ValueError):
    """A bands file is missing an item or disagrees with the job (the message
    names the file, the item and the expected value)."""


@dataclass
class BandData:
    """Bands of one material on a full Gamma-centred k mesh (atomic units).

    Attributes:
        path: the bands.h5 file read.
        cell_dump: pyscf ``cell.dumps()`` string.
        material: material name.
        xc, basis: functional and basis set names ("" if absent).
        nocc: number of (doubly occupied) valence bands per k.
        nbands: bands per k in the file.
        kmesh: (n1, n2, n3).
        kpts_frac: [nk, 3] fractional k points.
        kpts: [nk, 3] cartesian k points [bohr^-1].
        energies: [nk, nbands] band energies [hartree] (unshifted DFT).
        coeffs: [nk, nao, nbands] complex AO coefficients.
        ibz_index: [n_ibz] indices of the irreducible k into the full mesh.
        ibz_weight: [n_ibz] weights (sum 1).
        full_to_ibz: [nk] index of each full-mesh k's irreducible representative.
        attrs: all root attributes (gaps etc.).
    """

    path: str
    cell_dump: str
    material: str
    xc: str
    basis: str
    nocc: int
    nbands: int
    kmesh: tuple
    kpts_frac: np.ndarray
    kpts: np.ndarray
    energies: np.ndarray
    coeffs: np.ndarray
    ibz_index: np.ndarray
    ibz_weight: np.ndarray
    full_to_ibz: np.ndarray
    attrs: dict = field(default_factory=dict)
    _cell: Any = None

    @property
    def nk(self) -> int:
        return len(self.kpts)

    @property
    def nao(self) -> int:
        return self.coeffs.shape[1]

    def cell(self):
        """The pyscf Cell (rebuilt from the dump, cached)."""
        if self._cell is None:
            from pyscf.pbc import gto
            self._cell = gto.loads(self.cell_dump)
            self._cell.verbose = 0
        return self._cell

    @property
    def vbm_ha(self) -> float:
        """Valence band maximum over the mesh [hartree]."""
        return float(self.energies[:, self.nocc - 1].max())

    @property
    def cbm_ha(self) -> float:
        """Conduction band minimum over the mesh [hartree]."""
        return float(self.energies[:, self.nocc].min())


def load_bands(path) -> BandData:
    """Read a bands.h5 file (layout: see module docstring of dmca_hpc.electronic.bands).

    Raises :class:`BandsFileError` naming the file and the missing item."""
    import h5py
    path = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise BandsFileError(f"{path}: cannot open bands file ({exc})") from exc
    with f:
        for k in BANDS_DATASETS:
            if k not in f:
                raise BandsFileError(f"{path}: dataset {k!r} missing (expected a bands "
                                     f"file from the bands stage with {', '.join(BANDS_DATASETS)})")
        for k in BANDS_ATTRS:
            if k not in f.attrs:
                raise BandsFileError(f"{path}: root attribute {k!r} missing")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        d = {k: f[k][()] for k in BANDS_DATASETS}
    bd = BandData(path=path, cell_dump=str(attrs["cell"]), material=str(attrs["material"]),
                  xc=str(attrs.get("xc", "")), basis=str(attrs.get("basis", "")),
                  nocc=int(attrs["nocc"]), nbands=int(attrs["nbands"]),
                  kmesh=tuple(int(x) for x in np.ravel(attrs["kmesh"])),
                  kpts_frac=np.asarray(d["kpts_frac"], float), kpts=np.asarray(d["kpts"], float),
                  energies=np.asarray(d["energies"], float),
                  coeffs=np.asarray(d["coeffs"], complex),
                  ibz_index=np.asarray(d["ibz_index"], int),
                  ibz_weight=np.asarray(d["ibz_weight"], float),
                  full_to_ibz=np.asarray(d["full_to_ibz"], int), attrs=attrs)
    nk = int(np.prod(bd.kmesh))
    checks = [("kpts", bd.kpts.shape, (nk, 3)), ("kpts_frac", bd.kpts_frac.shape, (nk, 3)),
              ("energies", bd.energies.shape, (nk, bd.nbands)),
              ("coeffs", bd.coeffs.shape[::2], (nk, bd.nbands)),
              ("full_to_ibz", bd.full_to_ibz.shape, (nk,)),
              ("ibz_weight", bd.ibz_weight.shape, bd.ibz_index.shape)]
    for name, got, want in checks:
        if tuple(got) != tuple(want):
            raise BandsFileError(f"{path}: {name} has shape {tuple(got)}, expected {tuple(want)} "
                                 f"for kmesh {bd.kmesh} and nbands {bd.nbands}")
    if not 0 < bd.nocc < bd.nbands:
        raise BandsFileError(f"{path}: nocc = {bd.nocc} must lie in 1..nbands-1 "
                             f"(nbands = {bd.nbands}): no conduction bands")
    if abs(bd.ibz_weight.sum() - 1.0) > 1e-8:
        raise BandsFileError(f"{path}: ibz_weight sums to {bd.ibz_weight.sum():.12g}, expected 1")
    return bd


# --------------------------------------------------------------------------- resource estimate
# Used by the run's preflight (dmca_hpc.stages.preflight): sizes only, nothing allocated.

#: size [bytes] of a UnitStore checkpoint (atomic_h5 with its provenance attributes)
#: holding one empty dataset, and of each further dataset's header: measured 6144 B
#: and 14336 B for a 4-k chunk of Si gth-szv (three datasets, 4384 B of data)
UNIT_FILE_BYTES = 6144
UNIT_DATASET_BYTES = 2048
#: memory bound [MiB] BandWorker passes to PySCF's block_loop (its blocks of AO values)
WORKER_BLOCK_MB = 2000
#: Python bookkeeping per work unit on every rank [bytes]: the unit tuple in the plan and
#: its pickled broadcast copy, the index dict, the result object (a rough figure)
UNIT_BOOKKEEPING_BYTES = 400
#: wall time per k of the fast path [s]: BANDS_T0_S + BANDS_S_PER_POINT * ngrid * nao,
#: fitted to Si on this machine (one thread): 0.071 s per k for gth-szv at 10 hartree
#: (ngrid 13^3, nao 8; quickstart telemetry) and 0.31 s per band evaluation for gth-dzvp
#: at 25 hartree (19^3, nao 26; benchmarks/optical_results.json, 4 evaluations per k)
BANDS_T0_S = 0.045
BANDS_S_PER_POINT = 1.49e-6
#: PySCF get_bands instead of the fast path: 2.5x per k with FFTDF (BandWorker docstring);
#: GDF: 4.8 s per k for Si def2-svp (36 AOs), 41 s with def2-tzvp (74 AOs), 2 threads
#: (shared/design/allelectron.md): t = 4.8 s (nao / 36)^3.37
BANDS_SLOW_FACTOR = 2.5
BANDS_GDF_REF = (4.8, 36, 3.37)
#: merge on rank 0: 0.8 s (the quickstart's, mostly the two plots) plus reading the unit
#: files and writing bands.h5 at an assumed 100 MB/s
MERGE_T0_S = 0.8
MERGE_BYTES_PER_S = 100e6


def unit_file_bytes(data_bytes: float, n_datasets: int) -> float:
    """Size [bytes] of one :class:`dmca_hpc.hpc.checkpoint.UnitStore` file holding
    ``data_bytes`` of uncompressed data in ``n_datasets`` datasets."""
    return UNIT_FILE_BYTES + UNIT_DATASET_BYTES * max(n_datasets - 1, 0) + float(data_bytes)


def time_per_k(ngrid: int, nao: int, route: str = "fast") -> float:
    """Model wall time [s] of the Kohn-Sham states at one k: ``route`` 'fast'
    (:class:`BandWorker`'s grid Hamiltonian), 'get_bands' (PySCF's, FFTDF) or 'gdf'."""
    if route == "gdf":
        t0, n0, p = BANDS_GDF_REF
        return t0 * (nao / n0) ** p
    t = BANDS_T0_S + BANDS_S_PER_POINT * ngrid * nao
    return t * (BANDS_SLOW_FACTOR if route == "get_bands" else 1.0)


def bvk_cells(scf_kmesh, bands_kmesh, nimgs=None) -> int:
    """Cells of the Born-von Karman supercell on which PySCF's GDF builds its lattice
    sums for band k of ``bands_kmesh`` against the SCF's ``scf_kmesh`` (Gamma-centred
    meshes): ``pyscf.pbc.tools.k2gamma.kpts_to_kmesh`` of the union.  Per axis that is
    the least common multiple of the two meshes (3 and 10: 30; 3 and 6: 6) as long as
    both fit PySCF's bound ``2 nimgs + 1`` (``cell.nimgs``, the lattice images the basis
    reaches); a mesh finer than the bound makes PySCF fall back to the bound itself,
    whose supercell already spans every image the sums need (measured with
    kpts_to_kmesh: Si def2-SVP, nimgs 5: 3 and 10 -> 30, 3 and 12 or 14 -> 11; CsI
    def2-SVP, nimgs 7: 3 and 14 -> 42).  Without ``nimgs`` the bound is not applied."""
    import math
    caps = [None] * 3 if nimgs is None else [2 * int(n) + 1 for n in nimgs]
    cells = 1
    for a, b, cap in zip(scf_kmesh, bands_kmesh, caps):
        a, b = int(a), int(b)
        cells *= cap if cap is not None and max(a, b) > cap else math.lcm(a, b)
    return int(cells)


#: bytes of PySCF's GDF translation table per pair of supercell images (3 float64):
#: measured, the Si 10x10x10 bands against a 3x3x3 SCF asked numpy for "65.2 GiB for an
#: array with shape (54000, 54000, 3)": (2 x 30^3)^2 x 24 B
BVK_TABLE_BYTES_PER_PAIR = 24.0


def worker_memory_bytes(ngrid: int, nao: int, nk_scf: int, n_k: int, nbands: int,
                        ncomp: int = 4, naux: int = 0, route: str = "fast",
                        max_memory_mb: float = 4000.0, off_mesh: bool = False,
                        bvk: int = 0) -> dict:
    """Per-rank arrays [bytes] of a :class:`BandWorker` evaluating ``n_k`` k-points at
    once: the SCF density matrices [nk_scf, nao, nao] complex; the grid's coordinates,
    weights, density and potential (``ngrid (4 + 2 ncomp) 8 B``); the AO values of the
    chunk on the grid (``n_k ngrid nao ncomp 16 B``, at most WORKER_BLOCK_MB, or PySCF's
    ``max_memory`` for get_bands); the nonlocal pseudopotential's Fourier transforms of one
    k (``2 ngrid nao 16 B``, FFT grids only); H, S and v_xc of the chunk; the states
    returned.  ``ngrid``: the XC grid (:func:`dmca_hpc.electronic.scf.estimate_scf`).  With GDF
    and ``off_mesh`` k (the band path), PySCF's 3-index integrals of the chunk against the
    SCF k (``3 nk_scf n_k nao^2 naux 16 B``, the figure stages/bands checks the band path
    with; chunks of the dense mesh ran within memory: si_ae_ccpvtz, 16 k per chunk).  With
    GDF, PySCF's translation table on the common supercell of the SCF and band meshes
    (``bvk`` cells, :func:`bvk_cells`): ``(2 bvk)^2 24 B`` (4.5 MB for 6^3 bands on a 3^3
    SCF, 65 GiB for 10^3: a bands mesh that is a multiple of the SCF mesh keeps it small)."""
    block = WORKER_BLOCK_MB if route == "fast" else max_memory_mb
    parts = {"SCF density": 16.0 * nk_scf * nao * nao,
             "grid": 8.0 * ngrid * (4 + 2 * ncomp),
             "AO blocks": min(16.0 * n_k * ngrid * nao * ncomp, block * 2 ** 20),
             "pseudopotential": 0.0 if route == "gdf" else 32.0 * ngrid * nao,
             "H, S": 48.0 * n_k * nao * nao + 24.0 * n_k * nao * nbands}
    if route == "gdf" and off_mesh:
        parts["GDF integrals"] = 3.0 * nk_scf * n_k * nao * nao * naux * 16
    if route == "gdf" and bvk:
        parts["GDF supercell translations"] = BVK_TABLE_BYTES_PER_PAIR * (2.0 * bvk) ** 2
    return parts


def estimate_bands(nk: int, n_work: int, n_path: int, chunk_size: int, nao: int, nbands: int,
                   nk_scf: int, ngrid: int, route: str = "fast", irreducible: bool = False,
                   plots: bool = True, ncomp: int = 4, naux: int = 0,
                   max_memory_mb: float = 4000.0, bvk: int = 0) -> dict:
    """Memory, disk and time of the bands stage from sizes only.

    Args:
        nk: k-points of the dense mesh; n_work: k diagonalized (nk, or the irreducible
            ones); n_path: band-path k-points; chunk_size: k per unit.
        nao, nbands: AOs and bands kept (valence + conduction); nk_scf: SCF k-points;
            ngrid: FFT grid points of the SCF cell; route: see :func:`time_per_k`.

    Memory [bytes per rank; rank 0, the largest]: the plan every rank holds (k lists,
    ``24 B`` per k, twice: rank 0's and the pickled broadcast, and UNIT_BOOKKEEPING_BYTES
    per unit), then the larger of the worker's
    arrays (:func:`worker_memory_bytes`) and rank 0's merge: the full-mesh states
    ``nk nao nbands 16 B`` (twice when irreducible states are rotated to the full
    mesh), eigenvalues and the wedge's maps (~140 B per k).  Disk [bytes]: one unit file
    per chunk (:func:`unit_file_bytes`: eigenvalues, coefficients, k indices), bands.h5
    (two eigenvalue arrays, coefficients, k lists and maps, band path, DOS, 25 kB of
    attributes) and the two plots (130 kB measured).  Time [s, one rank]: per unit
    ``chunk time_per_k``, and the merge.

    Returns a dict: units, unit_time_s, merge_time_s, time_per_k_s, memory_bytes (rank 0),
    other_rank_bytes (plan and worker), disk_bytes, checkpoint_bytes, unit_bytes,
    bands_h5_bytes, parts (named components of rank 0's figure [bytes])."""
    units = -(-n_work // chunk_size) + -(-n_path // chunk_size)
    states = 16.0 * nao * nbands
    plan = 24.0 * (2 * nk + n_work + n_path) * 2 + UNIT_BOOKKEEPING_BYTES * units
    worker = worker_memory_bytes(ngrid, nao, nk_scf, min(chunk_size, max(n_work, 1)), nbands,
                                 ncomp, naux, route, max_memory_mb, bvk=bvk)
    if n_path and route == "gdf":
        path = worker_memory_bytes(ngrid, nao, nk_scf, min(chunk_size, n_path), nbands, ncomp,
                                   naux, route, max_memory_mb, off_mesh=True)
        worker = max(worker, path, key=lambda p: sum(p.values()))
    merge = {"states (merge)": states * nk * (2 if irreducible else 1),
             "eigenvalues, maps (merge)": nk * (24.0 * nbands + 140.0)}
    wsum, msum = sum(worker.values()), sum(merge.values())
    parts = {"plan": plan, **(worker if wsum >= msum else merge)}
    unit_bytes = unit_file_bytes(chunk_size * (8.0 * nbands + states + 8.0), 3)
    checkpoints = units * unit_bytes
    bands_h5 = (25e3 + nk * (16.0 * nbands + states + 48 + 105) + 16.0 * n_work
                + n_path * (8.0 * nbands + 32) + 21e3)
    disk = checkpoints + bands_h5 + (130e3 if plots else 0.0)
    t_k = time_per_k(ngrid, nao, route)
    merge_t = MERGE_T0_S + (checkpoints + bands_h5) / MERGE_BYTES_PER_S
    return {"units": units, "unit_time_s": chunk_size * t_k, "merge_time_s": merge_t,
            "time_per_k_s": t_k, "memory_bytes": plan + max(wsum, msum),
            "other_rank_bytes": plan + wsum, "disk_bytes": disk,
            "checkpoint_bytes": checkpoints, "unit_bytes": unit_bytes, "bands_h5_bytes": bands_h5,
            "parts": parts}
