"""Periodic Kohn-Sham ground state with PySCF (``pyscf.pbc`` KRKS); the ``dft``
stage (:mod:`dmca_hpc.stages.dft`) runs it.

Conventions (shared/design/physics.md):

* Atomic units inside: lengths in bohr, k in bohr^-1 (cartesian, including
  the 2 pi), energies in hartree.  Structures come in angstrom (ASE).
* Gamma-centred coarse mesh in the order of ``Cell.make_kpts(kmesh)``
  (C order, last axis fastest; see :mod:`dmca_hpc.electronic.symmetry`).
* Default level of theory: GTH pseudopotentials (gth-pbe), gth-dzvp basis,
  PBE.  Hybrids (PBE0, HSE06) and all-electron bases (``pseudo: null``) are
  allowed.  Semilocal gaps are too small by design; the physical gap comes
  from the scissor in the bands stage, never from tuning the functional.
* Density fitting: FFTDF by default.  For Si gth-dzvp on 2 cores, FFTDF was
  about 2x faster than GDF for the 2x2x2 SCF (47 s vs 91 s at the default
  cutoff on a loaded 2-core machine) and it is exact for the given FFT mesh,
  and the non-self-consistent bands on new k-points need no rebuild of the
  fitting basis (GDF rebuilds its 3-index integrals for every new k set:
  52 s vs 9.6 s for 8 k-points).  GDF stays selectable.

Output ``<stage_dir>/scf.h5`` (the contract with :mod:`dmca_hpc.electronic.bands` and
the form-factor stage), written atomically (temporary file renamed into
place, ``attrs['complete']`` set last):

* attrs: ``cell`` (``Cell.dumps()``), ``e_tot`` with ``e_tot_units='hartree'``,
  ``xc``, ``basis``, ``pseudo``, ``ecp`` (see below), ``converged``, ``kmesh``, ``nelectron``,
  ``nocc`` (doubly occupied bands), ``density_fit``, ``ke_cutoff_hartree``,
  ``fft_mesh``, ``material``, ``n_cycles``, ``chkfile``, ``input_hash``.
* datasets: ``kpts`` [nk,3] bohr^-1, ``kpts_frac`` [nk,3] '1', ``mo_energy``
  [nk,nmo] hartree, ``mo_occ`` [nk,nmo] '1', ``mo_coeff`` [nk,nao,nmo] '1',
  ``dm`` [nk,nao,nao] '1' (the converged AO density matrices, from which the
  bands stage rebuilds the Kohn-Sham potential), ``structure/cell``
  [3,3] angstrom, ``structure/positions`` [natom,3] angstrom,
  ``structure/numbers`` [natom] '1'.

Effective core potentials: with ``pseudo: null`` and a def2 basis, the elements
for which that basis is defined with a Stuttgart-Koeln small-core relativistic
ECP (Rb and heavier: I 28 core electrons, Cs 46) get it (``cell.ecp``); PySCF
does not attach it from ``cell.basis`` alone, and the def2 valence basis of
those elements is meaningless without it.  The ECP is how the scalar-relativistic
core enters (``pyscf.pbc.x2c`` has no periodic GDF).  Lighter elements stay
all-electron.  ``attrs['ecp']`` names them, e.g. ``'Cs:def2-svp(ECP46);
I:def2-svp(ECP28)'`` (element, basis the ECP comes from, core electrons it
replaces), or ``'none'``; ``nelectron`` counts the electrons left outside the ECP
cores (NaI def2-svp: 11 + 25 = 36).

Restart: the converged state is reused when ``scf.h5`` is complete and was
written for the same input hash.  While the SCF runs, PySCF writes its
orbitals every cycle to a chkfile whose name is the hash of the inputs that
change the converged state (not ``max_cycles`` or ``conv_tol_hartree``), so
an SCF that was killed or stopped by ``max_cycles`` restarts from its last
orbitals.

PySCF is imported inside the functions (it takes seconds to import).
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

__all__ = ["DFTInputError", "SCFNotConvergedError", "section_with_defaults", "validate_section",
           "check_structure", "check_basis", "build_cell", "make_kmf", "run_scf", "load_scf",
           "band_gap_from", "scf_keys", "pbe_band_gap_ev", "basis_ecp", "ecp_label",
           "overlap_conditioning", "conditioning_note"]

#: keys that do not change the converged state (excluded from the chkfile key)
_NON_PHYSICS_KEYS = ("max_cycles", "conv_tol_hartree", "restart_from_chkfile", "pyscf_verbose")

_XC_ALLOWED = ("LDA", "PBE", "PBE0", "HSE06", "B3LYP", "PBESOL", "SCAN")

#: basis families whose heavy elements are defined together with an ECP that PySCF's
#: basis file carries but ``cell.basis`` does not attach (def2: Weigend & Ahlrichs,
#: PCCP 7, 3297 (2005), Rb-Rn with Stuttgart-Koeln small-core ECPs)
_ECP_BASIS_PREFIXES = ("def2",)


class DFTInputError(ValueError):
    """Bad input of the dft stage (message names the job key and expected value)."""


class SCFNotConvergedError(RuntimeError):
    """The SCF did not converge within ``dft.max_cycles``."""


# --------------------------------------------------------------------------- input

def section_with_defaults(section: dict | None) -> dict:
    """The ``dft`` job section over its defaults (:mod:`dmca_hpc.settings`);
    an unknown key is a :class:`DFTInputError`."""
    from dmca_hpc import settings
    return settings.with_defaults("dft", section, error=DFTInputError)


def validate_section(sec: dict):
    """Check a ``dft`` section with defaults applied (raises DFTInputError)."""
    _validate_section(sec)


def check_structure(atoms, min_distance_angstrom: float = 0.5, name: str = "structure"):
    """:func:`dmca_hpc.materials.check_structure` as a :class:`DFTInputError`
    naming ``dft.min_distance_angstrom``."""
    from dmca_hpc.materials import StructureError
    from dmca_hpc.materials import check_structure as check
    try:
        check(atoms, min_distance_angstrom, name, key="dft.min_distance_angstrom")
    except StructureError as exc:
        raise DFTInputError(str(exc)) from None


def check_basis(symbols, basis: str, pseudo: str | None):
    """Raise :class:`DFTInputError` naming ``dft.basis`` / ``dft.pseudo`` when
    PySCF has no such basis or pseudopotential for one of the elements."""
    from pyscf.pbc import gto as pgto
    from pyscf import gto
    if not isinstance(basis, str) or not basis:
        raise DFTInputError(f"dft.basis must be a basis-set name such as 'gth-dzvp', got {basis!r}")
    for el in sorted(set(symbols)):
        try:
            b = gto.basis.load(basis, el) if not basis.lower().startswith("gth") else \
                pgto.basis.load(basis, el)
        except Exception as exc:  # pyscf raises several types (KeyError, BasisNotFoundError...)
            raise DFTInputError(
                f"dft.basis = {basis!r}: PySCF has no such basis for element {el} ({exc}); "
                "expected e.g. 'gth-szv', 'gth-dzvp', 'gth-tzv2p' (with dft.pseudo 'gth-pbe') "
                "or an all-electron basis such as 'def2-tzvp' (with dft.pseudo null)") from None
        if not b:
            raise DFTInputError(f"dft.basis = {basis!r}: empty basis for element {el}")
        if pseudo is not None:
            try:
                pp = pgto.pseudo.load(pseudo, el)
            except Exception as exc:
                raise DFTInputError(
                    f"dft.pseudo = {pseudo!r}: PySCF has no such pseudopotential for element "
                    f"{el} ({exc}); expected e.g. 'gth-pbe', 'gth-lda', or null for an "
                    "all-electron basis") from None
            if not pp:
                raise DFTInputError(f"dft.pseudo = {pseudo!r}: empty pseudopotential for {el}")
    if basis.lower().startswith("gth") and pseudo is None:
        raise DFTInputError(f"dft.basis = {basis!r} is a GTH valence basis: it needs "
                            "dft.pseudo (e.g. 'gth-pbe'), got null")


def basis_ecp(symbols, basis, pseudo) -> dict:
    """``{element: basis}`` for the elements of ``symbols`` that get the ECP their
    basis is defined with: only with ``pseudo`` None (a GTH pseudopotential already
    replaces the core) and a def2 basis, and only for the elements PySCF's copy of
    that basis gives an ECP (def2: Z > 36).  ``{}`` otherwise, also for an element
    the basis lacks (:func:`check_basis` reports that).  PySCF is imported only
    when the basis is a def2 one."""
    if pseudo is not None or not isinstance(basis, str) \
            or not basis.lower().startswith(_ECP_BASIS_PREFIXES):
        return {}
    from pyscf import gto
    out = {}
    for el in sorted(set(symbols)):
        try:
            ecp = gto.basis.load_ecp(basis, el)
        except Exception:  # no such basis/element: check_basis / cell.build name it
            continue
        if ecp:
            out[el] = basis
    return out


def ecp_label(cell) -> str:
    """Units-free record of the ECPs of a built ``cell``: ``'<el>:<name>(ECP<n>)'``
    per element, ``n`` the core electrons replaced, joined by ``'; '`` in element
    order; ``'none'`` for an all-electron (or GTH) cell."""
    ecp = getattr(cell, "ecp", None) or {}
    if isinstance(ecp, str):  # one name for every element
        ecp = {el: ecp for el in sorted(set(cell.elements))}
    parts = []
    for el in sorted(getattr(cell, "_ecp", {}) or {}):
        ncore = int(cell._ecp[el][0])
        name = ecp.get(el, "?") if isinstance(ecp, dict) else "?"
        if not isinstance(name, str):  # explicit parameters instead of a library name
            name = "custom"
        if ncore > 0:
            parts.append(f"{el}:{name}(ECP{ncore})")
    return "; ".join(parts) if parts else "none"


def _validate_section(sec: dict):
    km = sec["kmesh"]
    if (not isinstance(km, (list, tuple)) or len(km) != 3
            or not all(isinstance(x, (int, np.integer)) and x >= 1 for x in km)):
        raise DFTInputError(f"dft.kmesh must be three positive integers, got {km!r}")
    if str(sec["xc"]).upper() not in _XC_ALLOWED:
        raise DFTInputError(f"dft.xc = {sec['xc']!r}: expected one of {list(_XC_ALLOWED)}")
    if sec["density_fit"] not in ("auto", "FFTDF", "GDF"):
        raise DFTInputError(f"dft.density_fit = {sec['density_fit']!r}: expected 'auto', 'FFTDF' "
                            "or 'GDF'")
    if int(sec["max_cycles"]) < 1:
        raise DFTInputError(f"dft.max_cycles must be >= 1, got {sec['max_cycles']!r}")
    if float(sec["conv_tol_hartree"]) <= 0:
        raise DFTInputError(f"dft.conv_tol_hartree must be > 0, got {sec['conv_tol_hartree']!r}")
    ke = sec["ke_cutoff_hartree"]
    if ke is not None and float(ke) <= 0:
        raise DFTInputError(f"dft.ke_cutoff_hartree must be > 0 or null, got {ke!r}")
    sm = sec["smearing_hartree"]
    if sm is not None and float(sm) <= 0:
        raise DFTInputError(f"dft.smearing_hartree must be > 0 or null, got {sm!r}")
    if sec["smearing_method"] not in ("fermi", "gaussian"):
        raise DFTInputError(f"dft.smearing_method = {sec['smearing_method']!r}: expected "
                            "'fermi' or 'gaussian'")


# --------------------------------------------------------------------------- pyscf

def build_cell(atoms, sec: dict, output: str | os.PathLike | None = None):
    """PySCF ``pbc.gto.Cell`` of ``atoms`` (angstrom) with the basis, pseudo
    and cutoff of the section ``sec`` (defaults applied), and the ECPs of
    :func:`basis_ecp` (``pseudo: null`` with a def2 basis: Rb and heavier).
    ``cell.dumps()`` / ``pbc.gto.loads`` keep the ECP (tested)."""
    from pyscf.pbc import gto
    cell = gto.Cell()
    cell.atom = [[s, tuple(float(x) for x in p)]
                 for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)]
    cell.a = np.asarray(atoms.cell, dtype=float)
    cell.unit = "A"
    cell.basis = sec["basis"]
    if sec["pseudo"] is not None:
        cell.pseudo = sec["pseudo"]
    ecp = basis_ecp(atoms.get_chemical_symbols(), sec["basis"], sec["pseudo"])
    if ecp:
        cell.ecp = ecp
    if sec["ke_cutoff_hartree"] is not None:
        cell.ke_cutoff = float(sec["ke_cutoff_hartree"])
    cell.verbose = 0
    cell.build(dump_input=False, parse_arg=False)
    if output:
        # log through the SCF object, appended (never PySCF's cell.output, which
        # prints to stdout and truncates the log of an interrupted run)
        cell.verbose = int(sec.get("pyscf_verbose", 4))
        cell.stdout = open(output, "a")
    if cell.nelectron % 2:
        raise DFTInputError(f"structure has an odd number of electrons ({cell.nelectron}): "
                            "spin-polarized (KUKS) cells are not supported by the dft stage")
    return cell


def all_pseudo(cell) -> bool:
    """True when every element of ``cell`` has a (GTH) pseudopotential: its
    products of orbitals are smooth enough for FFT grids; False for
    all-electron cells, whose core shells are not."""
    pseudo = getattr(cell, "_pseudo", None) or {}
    return bool(pseudo) and len(pseudo) == len(set(cell.elements))


def resolve_density_fit(sec: dict, cell) -> str:
    """``dft.density_fit`` with ``auto`` resolved: FFTDF when every element has
    a GTH pseudopotential (the density is smooth, the FFT mesh small), GDF for
    all-electron bases, whose core shells would need an FFT mesh of
    thousands of points per axis (Si def2-svp: 2263^3)."""
    df = str(sec["density_fit"])
    if df != "auto":
        return df
    return "FFTDF" if all_pseudo(cell) else "GDF"


def fftdf_bytes(cell) -> float:
    """Lower bound of the memory FFTDF needs [bytes]: the grid coordinates
    (3 float64 per point) and one density and one potential on the mesh."""
    return float(np.prod(np.asarray(cell.mesh, dtype=float))) * 8.0 * 5


def preflight(cell, sec: dict, available_bytes: float | None = None) -> None:
    """Refuse, before PySCF allocates anything, an SCF whose FFT mesh cannot fit
    in memory (``available_bytes``: default the machine's available memory)."""
    if resolve_density_fit(sec, cell) != "FFTDF":
        return
    need = fftdf_bytes(cell)
    if available_bytes is None:
        import psutil
        available_bytes = float(psutil.virtual_memory().available)
    if need > 0.8 * available_bytes:
        mesh = "x".join(str(int(m)) for m in cell.mesh)
        raise DFTInputError(
            f"dft.density_fit = {sec['density_fit']!r} with basis {sec['basis']!r}: FFTDF needs an "
            f"FFT mesh of {mesh} points, at least {need / 2**30:.3g} GiB, and this machine has "
            f"{available_bytes / 2**30:.3g} GiB available; use dft.density_fit: GDF (or auto, "
            "which picks GDF for all-electron bases), or a GTH basis with dft.pseudo")


def make_kmf(cell, kpts, sec: dict):
    """KRKS object for ``cell`` at ``kpts`` [bohr^-1] with xc, density fitting,
    smearing and exxdiv of ``sec``."""
    from pyscf.pbc import dft as pdft
    mf = pdft.KRKS(cell, kpts, xc=str(sec["xc"]), exxdiv=sec.get("exxdiv", "ewald"))
    if resolve_density_fit(sec, cell) == "GDF":
        mf = mf.density_fit()
    if sec["smearing_hartree"] is not None:
        from pyscf.pbc.scf.addons import smearing_
        mf = smearing_(mf, sigma=float(sec["smearing_hartree"]), method=sec["smearing_method"])
    mf.conv_tol = float(sec["conv_tol_hartree"])
    mf.max_cycle = int(sec["max_cycles"])
    return mf


def band_gap_from(mo_energy, nocc: int) -> dict:
    """Indirect and direct gap [eV] of eigenvalues [nk, nbands] (hartree) with
    ``nocc`` doubly occupied bands; also VBM/CBM [eV] and their k indices."""
    from dmca_hpc.units import HARTREE_EV
    e = np.asarray(mo_energy)
    if e.shape[1] <= nocc:
        return {"gap_indirect_ev": float("nan"), "gap_direct_ev": float("nan")}
    v, c = e[:, nocc - 1], e[:, nocc]
    iv, ic = int(np.argmax(v)), int(np.argmin(c))
    direct = c - v
    idr = int(np.argmin(direct))
    return {"vbm_ev": float(v[iv] * HARTREE_EV), "cbm_ev": float(c[ic] * HARTREE_EV),
            "gap_indirect_ev": float((c[ic] - v[iv]) * HARTREE_EV),
            "gap_direct_ev": float(direct[idr] * HARTREE_EV),
            "vbm_k": iv, "cbm_k": ic, "direct_k": idr}


#: PySCF's "Singularity detected in the overlap matrix" threshold on cond(S) (pbc.scf.khf)
OVERLAP_COND_WARN = 1e10


def overlap_conditioning(s_kpts) -> dict:
    """What PySCF's canonical orthogonalization does with the overlaps
    ``s_kpts`` [nk, nao, nao] (dimensionless): its largest condition number,
    how many eigenvectors it drops per k (eigenvalues below
    ``pyscf.scf.hf.overlap_zero_eigenvalue_threshold``) and the smallest
    eigenvalue it keeps (the amplification of rounding in the coefficients is
    about its inverse square root)."""
    from pyscf.scf import hf as mol_hf
    thr = float(mol_hf.overlap_zero_eigenvalue_threshold)
    cond, dropped, kept = [], [], []
    for sk in np.asarray(s_kpts):
        e = np.abs(np.linalg.eigvalsh(sk))
        cond.append(float(e.max() / e.min()))
        drop = e <= thr if mol_hf.remove_overlap_zero_eigenvalue else np.zeros(len(e), bool)
        dropped.append(int(drop.sum()))
        kept.append(float(e[~drop].min()))
    return {"cond_max": max(cond), "dropped_per_k": dropped, "min_kept_eigenvalue": min(kept),
            "threshold": thr, "nao": int(np.shape(s_kpts)[-1])}


def conditioning_note(info: dict, basis: str, material: str) -> str | None:
    """The line that explains PySCF's overlap-singularity warning (cond(S) >
    1e10 at some k) or its silent dropping of overlap eigenvectors (below
    1e-6: the SCF then solves in fewer functions than the basis has); None
    when neither happens."""
    d = np.asarray(info["dropped_per_k"])
    warned = info["cond_max"] > OVERLAP_COND_WARN
    if not warned and d.max() == 0:
        return None
    cond = (f"cond(S) up to {info['cond_max']:.1e} > 1e10, which is what PySCF's 'Singularity "
            "detected in the overlap matrix' means" if warned
            else f"cond(S) up to {info['cond_max']:.1e} (below PySCF's 1e10 warning)")
    what = (f"drops {int(d.min())}-{int(d.max())} overlap eigenvectors below "
            f"{info['threshold']:g} at {int((d > 0).sum())} of {len(d)} k (it solves in "
            f"{info['nao'] - int(d.max())}-{info['nao'] - int(d.min())} of the {info['nao']} "
            "functions there)" if d.max() > 0
            else f"drops none (every eigenvalue is above {info['threshold']:g})")
    return (f"dft: the {basis} basis is nearly linearly dependent in {material}: {cond}; "
            f"PySCF's canonical orthogonalization {what}; smallest eigenvalue kept "
            f"{info['min_kept_eigenvalue']:.1e}. The SCF converged; the states' orthonormality "
            "C^H S C = 1 is what to check (tests/reference records it per target). A basis "
            "with fewer diffuse functions avoids it.")


def _structure_key(atoms) -> dict:
    return {"numbers": atoms.numbers.tolist(),
            "positions_angstrom": np.round(atoms.positions, 10).tolist(),
            "cell_angstrom": np.round(np.asarray(atoms.cell), 10).tolist()}


def scf_keys(atoms, sec: dict, ctx_hash: str = "") -> tuple[str, str]:
    """(input hash of scf.h5, key of the restart chkfile).  The chkfile key
    leaves out the settings that do not change the converged state, so a run
    stopped by ``max_cycles`` or a tighter ``conv_tol`` restarts from it."""
    from dmca_hpc.hpc.checkpoint import config_hash
    phys = {k: v for k, v in sec.items() if k not in _NON_PHYSICS_KEYS}
    struct = _structure_key(atoms)
    full = {"stage": "dft", "ctx": ctx_hash, "section": sec, "structure": struct}
    chk = {"stage": "dft-chk", "section": phys, "structure": struct}
    ecp = basis_ecp(atoms.get_chemical_symbols(), sec.get("basis"), sec.get("pseudo"))
    if ecp:
        # a file written before the ECP was attached (same section, all-electron
        # potential on a valence basis) must not be reused; cells without an ECP
        # keep the keys they always had
        full["ecp"] = chk["ecp"] = ecp
    return config_hash(full), config_hash(chk)


def run_scf(atoms, sec: dict, out_path: str | os.PathLike, input_hash: str,
            prov: dict | None = None, chkfile: str | os.PathLike | None = None,
            log_path: str | os.PathLike | None = None, material: str = "unknown",
            threads: int | None = None) -> dict:
    """Run the KRKS SCF of ``atoms`` and write ``out_path`` (scf.h5) atomically.

    Args:
        atoms: ``ase.Atoms`` (angstrom), already checked.
        sec: dft section with defaults.
        out_path: where scf.h5 goes.
        input_hash: stamped into scf.h5 (reuse key).
        prov: provenance dict stamped into the file.
        chkfile: PySCF chkfile for per-cycle restart (read if it exists and
            ``restart_from_chkfile``).
        log_path: PySCF log file.
        material: name recorded in the file.
        threads: OpenMP threads for PySCF (None: leave as is).

    Returns:
        Summary dict: ``e_tot_hartree``, ``converged``, ``n_cycles``,
        ``gap_indirect_ev``, ``gap_direct_ev``, ``nk``, ``restarted``.

    Raises:
        SCFNotConvergedError: when ``max_cycles`` is reached (the chkfile
            keeps the last orbitals, so a rerun with more cycles continues).
    """
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    from dmca_hpc.hpc.parallel import set_threads
    set_threads(threads)
    cell = build_cell(atoms, sec, output=log_path)
    preflight(cell, sec)
    sec = {**sec, "density_fit": resolve_density_fit(sec, cell)}
    kmesh = [int(x) for x in sec["kmesh"]]
    kpts = cell.make_kpts(kmesh, wrap_around=False)
    mf = make_kmf(cell, kpts, sec)
    dm0, restarted = None, False
    if chkfile is not None:
        chkfile = str(chkfile)
        if sec.get("restart_from_chkfile", True) and os.path.exists(chkfile):
            try:
                dm0 = mf.from_chk(chkfile)
                restarted = True
            except Exception as exc:  # a chkfile cut by a kill: start afresh
                warnings.warn(f"dft: restart chkfile {chkfile} is unreadable ({exc}); "
                              "starting the SCF from the default guess")
                dm0 = None
        mf.chkfile = chkfile
    ncyc = {"n": 0}

    def _count(envs):
        ncyc["n"] += 1

    mf.callback = _count
    try:
        e_tot = float(mf.kernel(dm0=dm0))
    finally:
        if log_path is not None and cell.stdout is not sys.stdout:
            cell.stdout.close()
            cell.stdout = mf.stdout = sys.stdout
            cell.verbose = mf.verbose = 0
    gap = band_gap_from(mf.mo_energy, cell.nelectron // 2)
    summary = {"e_tot_hartree": e_tot, "converged": bool(mf.converged), "n_cycles": ncyc["n"],
               "nk": len(kpts), "restarted": restarted, **gap}
    if not mf.converged:
        raise SCFNotConvergedError(
            f"dft: SCF for {material} not converged within dft.max_cycles = {sec['max_cycles']} "
            f"cycles (conv_tol {sec['conv_tol_hartree']} hartree, last E = {e_tot:.10f} hartree); "
            f"raise dft.max_cycles or dft.smearing_hartree; the last orbitals are kept in "
            f"{chkfile} and a rerun continues from them")
    cond = overlap_conditioning(mf.get_ovlp())
    note = conditioning_note(cond, str(sec["basis"]), material)
    if note is not None:
        warnings.warn(note)
    dm = np.asarray(mf.make_rdm1())
    mo_energy = np.asarray(mf.mo_energy)
    mo_coeff = np.asarray(mf.mo_coeff)
    mo_occ = np.asarray(mf.mo_occ)
    with atomic_h5(out_path, input_hash=input_hash, stage="dft", prov=prov) as f:
        f.attrs["cell"] = cell.dumps()
        f.attrs["e_tot"] = e_tot
        f.attrs["e_tot_units"] = "hartree"
        f.attrs["xc"] = str(sec["xc"])
        f.attrs["basis"] = str(sec["basis"])
        f.attrs["pseudo"] = "none" if sec["pseudo"] is None else str(sec["pseudo"])
        f.attrs["ecp"] = ecp_label(cell)
        f.attrs["converged"] = True
        f.attrs["n_cycles"] = ncyc["n"]
        f.attrs["restarted_from_chkfile"] = bool(restarted)
        f.attrs["kmesh"] = np.array(kmesh, dtype=int)
        f.attrs["nelectron"] = int(cell.nelectron)
        f.attrs["nocc"] = int(cell.nelectron // 2)
        f.attrs["nao"] = int(cell.nao_nr())
        f.attrs["density_fit"] = str(sec["density_fit"])
        f.attrs["ke_cutoff_hartree"] = float(cell.ke_cutoff) if cell.ke_cutoff is not None \
            else float("nan")
        f.attrs["fft_mesh"] = np.array(cell.mesh, dtype=int)
        f.attrs["smearing_hartree"] = float("nan") if sec["smearing_hartree"] is None \
            else float(sec["smearing_hartree"])
        f.attrs["smearing_method"] = str(sec["smearing_method"])
        f.attrs["exxdiv"] = str(sec.get("exxdiv"))
        f.attrs["conv_tol_hartree"] = float(sec["conv_tol_hartree"])
        f.attrs["material"] = material
        f.attrs["chkfile"] = chkfile or ""
        f.attrs["gap_indirect_ev"] = gap.get("gap_indirect_ev", float("nan"))
        f.attrs["gap_direct_ev"] = gap.get("gap_direct_ev", float("nan"))
        # the overlap conditioning PySCF's canonical orthogonalization saw (unitless)
        f.attrs["overlap_cond_max"] = cond["cond_max"]
        f.attrs["overlap_eigvecs_dropped_per_k"] = np.array(cond["dropped_per_k"], dtype=int)
        f.attrs["overlap_min_kept_eigenvalue"] = cond["min_kept_eigenvalue"]
        write_dataset(f, "kpts", np.asarray(kpts), "bohr^-1",
                      "cartesian k-points (2 pi included), Cell.make_kpts(kmesh) order")
        write_dataset(f, "kpts_frac", cell.get_scaled_kpts(kpts), "1",
                      "k in the reciprocal-lattice basis")
        write_dataset(f, "mo_energy", mo_energy, "hartree", "Kohn-Sham eigenvalues")
        write_dataset(f, "mo_occ", mo_occ, "1", "occupations (0..2, spin included)")
        write_dataset(f, "mo_coeff", mo_coeff, "1", "AO coefficients C[k, mu, n]")
        write_dataset(f, "dm", dm, "1",
                      "converged AO density matrices D[k, mu, nu] (spin summed); they "
                      "define the Kohn-Sham potential used for non-SCF bands")
        g = f.create_group("structure")
        write_dataset(g, "cell", np.asarray(atoms.cell), "angstrom", "lattice vectors (rows)")
        write_dataset(g, "positions", atoms.positions, "angstrom", "cartesian positions")
        write_dataset(g, "numbers", atoms.numbers, "1", "atomic numbers")
    return summary


def load_scf(path: str | os.PathLike) -> dict:
    """Read scf.h5 back: the section-like settings and arrays plus the
    rebuilt ``cell`` (pyscf Cell) and ``atoms`` (ase.Atoms)."""
    import h5py
    from ase import Atoms
    from pyscf.pbc import gto
    from dmca_hpc.hpc.checkpoint import is_complete
    if not is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete scf.h5 (run the dft stage first)")
    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
        d = {k: f[k][()] for k in ("kpts", "kpts_frac", "mo_energy", "mo_occ", "dm")}
        s = {k: f["structure"][k][()] for k in ("cell", "positions", "numbers")}
    cell = gto.loads(a["cell"] if isinstance(a["cell"], str) else a["cell"].decode())
    cell.verbose = 0
    cell.output = None
    cell.stdout = sys.stdout
    atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=True)

    def _f(x):
        x = float(x)
        return None if np.isnan(x) else x

    sec = {"basis": str(a["basis"]), "pseudo": None if a["pseudo"] == "none" else str(a["pseudo"]),
           "xc": str(a["xc"]), "kmesh": [int(x) for x in a["kmesh"]],
           "density_fit": str(a["density_fit"]), "smearing_hartree": _f(a["smearing_hartree"]),
           "smearing_method": str(a["smearing_method"]), "exxdiv": str(a["exxdiv"]),
           "ke_cutoff_hartree": _f(a["ke_cutoff_hartree"]),
           "conv_tol_hartree": float(a["conv_tol_hartree"]), "max_cycles": 1}
    if sec["exxdiv"] == "None":
        sec["exxdiv"] = None
    return {"attrs": a, "cell": cell, "atoms": atoms, "sec": sec, **d}


def pbe_band_gap_ev(material: str = "Si", basis: str = "gth-dzvp", kmesh=(3, 3, 3),
                    ke_cutoff_hartree: float = 25.0, npoints: int = 40) -> float:
    """Kohn-Sham indirect band gap [eV] of a library material with PBE.

    SCF on the Gamma-centred ``kmesh``, then non-self-consistent bands along
    ASE's standard band path of the lattice (``npoints`` k); the gap is the
    lowest conduction level minus the highest valence level over the path
    and the mesh, so an indirect minimum between mesh points (Si: ~0.85 of
    Gamma-X) is found.  Used for the cross-check against pw.x (the oracle).
    """
    from dmca_hpc.materials import get_material
    atoms = get_material(material).atoms()
    sec = section_with_defaults({"basis": basis, "kmesh": list(kmesh), "xc": "PBE",
                                 "ke_cutoff_hartree": float(ke_cutoff_hartree)})
    cell = build_cell(atoms, sec)
    kpts = cell.make_kpts(list(kmesh), wrap_around=False)
    mf = make_kmf(cell, kpts, sec)
    mf.kernel()
    if not mf.converged:
        raise SCFNotConvergedError(f"{material}: PBE SCF did not converge in {sec['max_cycles']} cycles")
    bp = atoms.cell.bandpath(npoints=int(npoints))
    e_path, _ = mf.get_bands(cell.get_abs_kpts(bp.kpts))
    e = np.vstack([np.asarray(mf.mo_energy), np.asarray(e_path)])
    return band_gap_from(e, cell.nelectron // 2)["gap_indirect_ev"]


# --------------------------------------------------------------------------- resource estimate
# Used by the run's preflight (dmca_hpc.stages.preflight) before anything runs; nothing here
# allocates a k-mesh: a mesh that cannot fit is exactly what it has to report.

#: [nk, nao, nao] complex matrices a KRKS SCF holds at once besides DIIS, read off PySCF
#: 2.x's ``pyscf.scf.hf.kernel`` / ``pbc.scf.khf``: hcore, overlap, dm, dm_last, veff,
#: vhf_last, fock, mo_coeff and two temporaries of get_fock / get_veff
SCF_MATRIX_COPIES = 10
#: vectors CDIIS keeps (``pyscf.scf.diis.CDIIS.space``: 8 Fock matrices and 8 error
#: vectors) and PySCF's size [elements] above which it keeps them in an HDF5 file in its
#: scratch directory instead of memory (``pyscf.lib.diis.INCORE_SIZE``)
DIIS_SPACE = 8
DIIS_INCORE_ELEMENTS = 10_000_000
#: FFTDF SCF wall time t = SCF_T0_S + SCF_S_PER_POINT * nk * ngrid * nao [s], fitted to two
#: runs on this 2-core machine (loaded, one thread): Si gth-szv 2x2x2 at 10 hartree
#: (ngrid 13^3, nao 8) 4.1 s in the quickstart's telemetry, and Si gth-dzvp 2x2x2 at the
#: default cutoff (35^3, nao 26) 47 s (this module's docstring)
SCF_T0_S = 3.45
SCF_S_PER_POINT = 4.88e-6
#: GDF (all-electron) SCF: 50 s for Si def2-svp (36 AOs) on 3x3x3, 176 s with def2-tzvp
#: (74 AOs), PBE, 2 threads (shared/design/allelectron.md): t = 50 s (nk/27) (nao/36)^1.75
SCF_GDF_REF = (50.0, 27, 36, 1.75)
#: XC integration points per atom of the Becke grids PySCF's KRKS uses with GDF (its
#: default level, images of the cell included): a rough figure for the estimate
BECKE_POINTS_PER_ATOM = 50_000


def gdf_naux(cell) -> int:
    """Auxiliary basis functions of PySCF's default GDF fitting basis for ``cell``."""
    from pyscf.pbc.df import df, incore
    return int(incore.make_auxcell(cell, df.GDF(cell).auxbasis).nao_nr())


def estimate_scf(cell, sec: dict, max_memory_mb: float | None = None) -> dict:
    """Memory, disk and time of :func:`run_scf` for ``cell`` and the dft section ``sec``
    (defaults applied), from sizes only (no k-points are built).

    Memory [bytes] (the SCF runs on rank 0): ``SCF_MATRIX_COPIES`` copies of the
    [nk, nao, nao] complex matrices, the 2 x DIIS_SPACE DIIS vectors when PySCF keeps
    them in memory, PySCF's blocked buffers (AO values on the grid for every k,
    ``nk ngrid nao 16 B x`` 1 (LDA), 4 (GGA) or 10 (meta-GGA) components, plus for GDF
    the 3-index tensor) up to PySCF's ``max_memory`` (it sizes its blocks by it), and
    the FFT-grid arrays of :func:`fftdf_bytes`.  Scratch [bytes] (PySCF's TMPDIR): the
    DIIS vectors above DIIS_INCORE_ELEMENTS and the GDF 3-index tensor,
    ``n_pairs naux nao^2 16 B`` with n_pairs = nk (pure functionals: Coulomb only) or
    nk (nk + 1) / 2 (hybrids).  Disk [bytes]: scf.h5 (mo_coeff, dm, eigenvalues,
    occupations, k-points) and the restart chkfile, with the per-file overhead measured
    on the quickstart (13 kB and 22 kB).  Time [s]: the fits SCF_T0_S / SCF_S_PER_POINT
    (FFTDF) and SCF_GDF_REF (GDF), times nk for a hybrid (the exchange couples every
    pair of k): a rough guide, not a promise.

    ngrid is the XC grid: the FFT mesh (FFTDF) or BECKE_POINTS_PER_ATOM per atom (GDF).

    Returns a dict: nk, nao, ngrid, density_fit, hybrid, matrix_bytes (one [nk, nao, nao]
    complex copy), memory_bytes, scratch_bytes, disk_bytes, time_s, parts (named
    components [bytes]).
    """
    from pyscf.dft import libxc
    if max_memory_mb is None:
        from pyscf import lib
        max_memory_mb = float(lib.param.MAX_MEMORY)
    nk = int(np.prod([int(x) for x in sec["kmesh"]]))
    nao = int(cell.nao_nr())
    df = resolve_density_fit(sec, cell)
    # the XC grid: the FFT mesh with FFTDF; with GDF PySCF integrates on Becke grids
    ngrid = (int(np.prod(np.asarray(cell.mesh, dtype=float))) if df == "FFTDF"
             else BECKE_POINTS_PER_ATOM * int(cell.natm))
    xc = str(sec["xc"])
    try:
        hybrid = bool(libxc.is_hybrid_xc(xc))
        ncomp = {"LDA": 1, "GGA": 4, "MGGA": 10}.get(libxc.xc_type(xc), 4)
    except (KeyError, ValueError):
        hybrid, ncomp = False, 4
    mat = 16.0 * nk * nao * nao
    diis = 2.0 * DIIS_SPACE * mat
    diis_in_memory = nk * nao * nao < DIIS_INCORE_ELEMENTS
    j3c = 0.0
    naux = 0
    if df == "GDF":
        naux = gdf_naux(cell)
        pairs = nk * (nk + 1) / 2 if hybrid else nk
        j3c = 16.0 * pairs * naux * nao * nao
    buffers = min(16.0 * nk * ngrid * nao * ncomp + j3c, max_memory_mb * 2 ** 20)
    grid = fftdf_bytes(cell) if df == "FFTDF" else 0.0
    parts = {"k-mesh matrices": SCF_MATRIX_COPIES * mat,
             "DIIS": diis if diis_in_memory else 0.0,
             "PySCF blocks": buffers, "FFT grid": grid}
    scratch = (0.0 if diis_in_memory else diis) + j3c
    disk = (13e3 + 2 * mat + nk * (2 * 8 * nao + 6 * 8)  # scf.h5: mo_coeff, dm, e, occ, k
            + 22e3 + mat + nk * 2 * 8 * nao              # chkfile: mo_coeff, e, occ
            + 10e3)                                      # PySCF log
    if df == "GDF":
        t0, k0, n0, p = SCF_GDF_REF
        t = t0 * (nk / k0) * (nao / n0) ** p
    else:
        t = SCF_T0_S + SCF_S_PER_POINT * nk * ngrid * nao
    if hybrid:
        t *= nk
    return {"nk": nk, "nao": nao, "ngrid": ngrid, "density_fit": df, "hybrid": hybrid,
            "naux": naux, "matrix_bytes": mat, "memory_bytes": float(sum(parts.values())),
            "scratch_bytes": float(scratch), "disk_bytes": float(disk), "time_s": float(t),
            "parts": parts, "gdf_tensor_bytes": j3c,
            "diis_bytes": diis, "diis_in_memory": diis_in_memory}
