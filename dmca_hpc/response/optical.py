"""Optical limit eps(q -> 0, w) from the DFT states (issue 8).

Physics (RPA without local-field effects, longitudinal, spin-degenerate;
Hartree atomic units inside, eV and bohr at the interfaces)::

    Im eps(w) = (8 pi^2 / V) sum_k w_k sum_{v,c} |d_cv(k)|^2 delta(w - w_cv(k))
    |d_cv(k)|^2 = lim_{q->0} (1/3) sum_alpha |<c, k+q e_alpha| exp(i q e_alpha . r) |v, k>|^2 / q^2

with V the cell volume [bohr^3], w_k the irreducible-wedge weights
(sum 1), w_cv = e_c - e_v (+ scissor).  This is Adler-Wiser's eps(q, w) at
q -> 0, averaged over three Cartesian directions (the trace is invariant
under the point group, so irreducible k with their weights suffice; for a
cubic crystal it is the isotropic eps).  The static limit follows without
broadening or Kramers-Kronig::

    eps_inf = 1 + (16 pi / V) sum_k w_k sum_{v,c} |d_cv|^2 / w_cv

**Why the density matrix element at small finite q and not p / w.**  With
a nonlocal (GTH) pseudopotential the velocity is p + i[V_nl, r]; the bare
momentum matrix element misses the commutator (on Si gth-dzvp it gives
|d|^2 about 10% too large).  The density matrix element between exact
eigenstates of the nonlocal Hamiltonian at k and k + q is what the
longitudinal response is made of, and it needs no commutator.  With a
scissor shift the position-like matrix elements d_cv stay unchanged (Del
Sole & Girlanda, PRB 48, 11789 (1993)): only w_cv moves.

**How the matrix element is computed.**  For PySCF's Bloch AOs
phi_{mu,k}(r) = sum_T e^{ik.T} chi_mu(r - T),

    int_cell phi*_{mu,k+q} e^{iq.r} phi_{nu,k} = sum_T e^{ik.T} int chi_mu(r) e^{iq.r} chi_nu(r-T) dr
                                              = S_{mu nu}(k) + i q . R_{mu nu}(k) + O(q^2)

with S and R = sum_T e^{ik.T} <chi_mu|r|chi_nu(.-T)> from ``cell.pbc_intor``
('int1e_ovlp', 'int1e_r').  The bands at k + q come from the same
Kohn-Sham Hamiltonian as the bands stage (:class:`dmca_hpc.electronic.bands.BandWorker`),
so M_cv = C_{k+q}^dagger (S + i q.R) C_k.  The neglected q^2 term biases
|d|^2 by ~ c q^2: against PySCF's analytic AO-pair Fourier transform
(``ft_aopair_kpts``, exact in q, ~1.6 s per call) it is 0.14% at the default
q = 1e-4 bohr^-1 and 0.03% at 3e-5 (round-off grows as 1/q below that);
the integrals cost ~0.02 s per k (tests/unit/response/test_optical.py checks both,
benchmarks/bench_optical.py times them).

**Broadening.**  Each transition is a Gaussian of width ``sigma_ev``
integrated over the output energy bins (bin centres w_b, width dE), so
sum_b Im eps_b dE holds the exact oscillator strength: the f-sum of the
spectrum equals the f-sum of the transitions.

Work units: chunks of irreducible k points, dealt to MPI ranks by
:func:`dmca_hpc.hpc.parallel.map_units`, each checkpointed in a
:class:`dmca_hpc.hpc.checkpoint.UnitStore` (a killed run resumes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmca_hpc import units as U
from dmca_hpc.response.kramers_kronig import DEFAULT_TAIL_EXPONENT, kk_real_from_imag

__all__ = ["OpticalError", "OpticalTransitions", "transitions_at_k",
           "compute_transitions", "im_eps_on_bins", "eps_static_from_transitions",
           "fsum_ratio_transitions",
           "optical_from_scf"]


class OpticalError(ValueError):
    """Bad input to the optical-limit computation (names the key/file)."""


@dataclass
class OpticalTransitions:
    """All interband transitions of the optical limit.

    Attributes:
        omega_ev: [n] transition energies w_cv [eV] without scissor.
        strength_bohr2: [n] w_k |d_cv|^2 [bohr^2] (k weight included).
        band_c: [n] conduction-band index of each transition (0 = lowest).
        vcell_bohr3: cell volume [bohr^3].
        n_electrons: valence electrons per cell.
        meta: kmesh, n_ibz, dq_bohr, nbands, gap_dft_ev, method.
    """

    omega_ev: np.ndarray
    strength_bohr2: np.ndarray
    band_c: np.ndarray
    vcell_bohr3: float
    n_electrons: float
    meta: dict = field(default_factory=dict)


def _density_matrix_elements(cell, k, c_k, c_kq, qvec, nocc: int, s=None, r=None):
    """<c, k+q| exp(i q.r) |v, k> [nc, nv] to first order in q [bohr^-1]:
    C_{k+q}^dagger (S(k) + i q.R(k)) C_k (module docstring)."""
    from dmca_hpc.electronic.bands import accurate_intor
    if s is None:
        s = accurate_intor(cell, "int1e_ovlp", k)
    if r is None:
        r = accurate_intor(cell, "int1e_r", k, comp=3)
    op = s + 1j * np.einsum("x,xab->ab", np.asarray(qvec, float), r)
    return c_kq[:, nocc:].conj().T @ (op @ c_k[:, :nocc])


def transitions_at_k(worker, cell, k_cart, nocc: int, dq_bohr: float):
    """(w_cv [nc, nv] hartree, |d_cv|^2 [nc, nv] bohr^2) at one k [bohr^-1].

    ``worker`` is a :class:`dmca_hpc.electronic.bands.BandWorker` (bands at any k)."""
    k = np.asarray(k_cart, float).reshape(3)
    ks = np.vstack([k, k + dq_bohr * np.eye(3)])
    e, c = worker.bands(ks)
    from dmca_hpc.electronic.bands import accurate_intor
    # the S the states are orthonormal with: its error enters <c|S|v>, divided by dq
    s = accurate_intor(cell, "int1e_ovlp", k)
    r = accurate_intor(cell, "int1e_r", k, comp=3)
    d2 = 0.0
    for a in range(3):
        m = _density_matrix_elements(cell, k, c[0], c[a + 1], dq_bohr * np.eye(3)[a], nocc, s, r)
        d2 = d2 + np.abs(m) ** 2
    d2 = d2 / (3.0 * dq_bohr ** 2)
    w = e[0][nocc:, None] - e[0][None, :nocc]
    return w, d2


def compute_transitions(scf_path, kmesh, nbands: int | None = None, dq_bohr: float = 1e-4,
                        comm=None, workdir=None, input_hash: str = "", chunk: int = 4,
                        on_unit=None, label: str = "") -> OpticalTransitions | None:
    """Transitions on the irreducible wedge of a Gamma-centred ``kmesh``.

    Args:
        scf_path: scf.h5 of the dft stage.
        kmesh: three ints (the optical mesh; denser than the form-factor mesh
            is cheap: only k and k + q e_alpha, never k-pairs).
        nbands: bands per k (default: all the basis has).
        dq_bohr: the small q [bohr^-1] of the finite difference.
        comm: communicator (default serial); workdir: unit checkpoints
            (None: no checkpoints); input_hash: invalidates old units.
        chunk: irreducible k per work unit.
        on_unit: called on the rank that ran it with each finished unit's
            :class:`dmca_hpc.hpc.parallel.UnitResult` (``unit`` = (first, end)
            irreducible k index), e.g. to record telemetry.
        label: material name in the progress line (default: the scf file's).
    Returns:
        :class:`OpticalTransitions` on rank 0, None elsewhere.
    Raises:
        OpticalError: bad mesh / dq; RuntimeError: some units failed (the
        finished ones stay checkpointed).
    """
    from dmca_hpc.electronic.bands import BandWorker
    from dmca_hpc.hpc.checkpoint import UnitStore
    from dmca_hpc.electronic.scf import load_scf
    from dmca_hpc.hpc.parallel import Progress, SerialComm, map_units
    from dmca_hpc.electronic.symmetry import irreducible_mesh
    comm = comm or SerialComm()
    rank = comm.Get_rank()
    km = [int(x) for x in np.ravel(kmesh)]
    if len(km) != 3 or min(km) < 1:
        raise OpticalError(f"dielectric.optical_kmesh: expected three positive integers, got {kmesh}")
    if not 0 < dq_bohr <= 1e-2:
        raise OpticalError(f"dielectric.optical_dq_bohr: expected 0 < dq <= 1e-2 bohr^-1 "
                           f"(first-order expansion in q), got {dq_bohr}")
    d = load_scf(scf_path)
    cell, atoms = d["cell"], d["atoms"]
    label = label or str(d["attrs"].get("material", "") or atoms.get_chemical_formula())
    nelec = int(round(cell.nelectron))
    if nelec % 2:
        raise OpticalError(f"{scf_path}: {nelec} electrons per cell; the optical limit needs a "
                           "closed-shell insulator")
    nocc = nelec // 2
    nb = int(nbands or cell.nao_nr())
    if nb <= nocc:
        raise OpticalError(f"dielectric: nbands = {nb} leaves no conduction bands (nocc = {nocc})")
    ibz = irreducible_mesh(atoms, km)
    kcart = ibz.kpts_frac[ibz.ibz_index] @ cell.reciprocal_vectors()
    weights = ibz.ibz_weight
    units = [(s, min(s + chunk, len(kcart))) for s in range(0, len(kcart), chunk)]
    store = UnitStore(Path(workdir), input_hash) if workdir is not None else None
    worker = BandWorker(str(scf_path), nb)

    def work(unit):
        s, t = unit
        ws, ss, bs = [], [], []
        for i in range(s, t):
            w, d2 = transitions_at_k(worker, cell, kcart[i], nocc, dq_bohr)
            ws.append(w.ravel() * U.HARTREE_EV)
            ss.append(d2.ravel() * weights[i])
            bs.append(np.repeat(np.arange(w.shape[0]), w.shape[1]))
        arr = {"omega_ev": np.concatenate(ws), "strength_bohr2": np.concatenate(ss),
               "band_c": np.concatenate(bs), "gap_direct_ev": np.array([min(x.min() for x in ws)])}
        if store is not None:
            store.save(units.index(unit), arr, {"omega_ev": "eV", "strength_bohr2": "bohr^2",
                                                "band_c": "1", "gap_direct_ev": "eV"})
        return arr

    def on_result(r):
        if on_unit is not None:
            on_unit(r)
        if rank == 0 and store is not None:  # every rank's units of this run
            progress.update(len(done) + store.written_since(t_files, len(units)))
        elif rank == 0:
            progress.advance()

    # rank 0 decides what is done (other ranks could see its new files)
    done = comm.bcast(store.done(len(units)) if (store is not None and rank == 0) else set(),
                      root=0)
    # resumed units count as done but not in the eta's rate; files of other inputs
    # (a run with another mesh in the same directory) not at all
    progress = Progress(f"{label or 'optical'} optical limit", len(units), comm=comm,
                        done=len(done))
    t_files = time.time()
    results = map_units(work, units, comm=comm, schedule="dynamic", on_result=on_result, skip=done)
    failed = None
    if rank == 0:
        failed = [(r.unit, r.error) for r in results if not r.ok]
    failed = comm.bcast(failed, root=0)
    if failed:
        where = f" (finished ones are checkpointed in {store.dir})" if store is not None else ""
        raise RuntimeError(f"optical limit: {len(failed)} of {len(units)} k-chunks failed{where}; "
                           f"first: {failed[0][0]}: {failed[0][1]}")
    if rank != 0:
        return None
    parts = {}
    for r in results:
        if r.ok and r.value is not None:
            parts[r.index] = r.value
    for i in done:
        parts[i] = store.load(i)[0]
    om = np.concatenate([parts[i]["omega_ev"] for i in range(len(units))])
    st = np.concatenate([parts[i]["strength_bohr2"] for i in range(len(units))])
    bc = np.concatenate([parts[i]["band_c"] for i in range(len(units))]).astype(int)
    gap = float(min(float(np.ravel(parts[i]["gap_direct_ev"])[0]) for i in range(len(units))))
    meta = {"method": "density matrix elements <c,k+q|e^{iq.r}|v,k>/q at q = optical_dq_bohr, "
                      "3 Cartesian directions, irreducible wedge",
            "kmesh": km, "n_ibz": int(len(kcart)), "dq_bohr": float(dq_bohr), "nbands": nb,
            "nocc": nocc, "gap_direct_dft_ev": gap, "scf": str(scf_path),
            "basis": str(d["sec"]["basis"]), "xc": str(d["sec"]["xc"])}
    return OpticalTransitions(omega_ev=om, strength_bohr2=st, band_c=bc, vcell_bohr3=float(cell.vol),
                              n_electrons=float(nelec), meta=meta)


def im_eps_on_bins(tr: OpticalTransitions, e_ev, sigma_ev: float = 0.15,
                   scissor_ev: float = 0.0) -> np.ndarray:
    """Im eps(q -> 0) on bin centres ``e_ev`` [eV] (uniform bins), each
    transition a Gaussian of ``sigma_ev`` [eV] integrated over the bins,
    transition energies shifted by ``scissor_ev`` [eV]."""
    from scipy.special import ndtr
    e = np.asarray(e_ev, float)
    de = float(e[1] - e[0])
    if sigma_ev <= 0:
        raise OpticalError(f"dielectric.optical_sigma_ev: expected > 0 eV, got {sigma_ev}")
    edges = np.concatenate([e - de / 2, [e[-1] + de / 2]])
    w = tr.omega_ev + scissor_ev
    out = np.zeros(len(e))
    # blocks of transitions keep the [n, nbins] temporaries small
    for s in range(0, len(w), 4096):
        cdf = ndtr((edges[None, :] - w[s:s + 4096, None]) / sigma_ev)
        out += tr.strength_bohr2[s:s + 4096] @ np.diff(cdf, axis=1)
    # delta in 1/hartree -> per bin [1/eV] * HARTREE_EV
    return 8.0 * math.pi ** 2 / tr.vcell_bohr3 * out / de * U.HARTREE_EV


def eps_static_from_transitions(tr: OpticalTransitions, scissor_ev: float = 0.0) -> float:
    """eps_inf = 1 + (16 pi / V) sum w_k |d|^2 / w_cv (exact sum, no broadening)."""
    w_ha = (tr.omega_ev + scissor_ev) / U.HARTREE_EV
    return float(1.0 + 16.0 * math.pi / tr.vcell_bohr3 * np.sum(tr.strength_bohr2 / w_ha))


def fsum_ratio_transitions(tr: OpticalTransitions, scissor_ev: float = 0.0,
                           n_conduction: int | None = None) -> float:
    """f-sum (Thomas-Reiche-Kuhn) ratio of the transitions:
    int w Im eps dw / ((pi/2) w_p^2) = (4 / N_e) sum_k w_k sum_cv w_cv |d_cv|^2
    (atomic units; w_p^2 = 4 pi N_e / V).  Below 1 for a finite band set,
    rising toward 1 as bands are added (above 1 with a positive scissor,
    which moves w_cv but keeps d_cv: Del Sole & Girlanda 1993).
    ``n_conduction``: keep only the lowest conduction bands."""
    sel = slice(None) if n_conduction is None else tr.band_c < n_conduction
    w_ha = (tr.omega_ev[sel] + scissor_ev) / U.HARTREE_EV
    return float(4.0 / tr.n_electrons * np.sum(w_ha * tr.strength_bohr2[sel]))


def optical_from_scf(scf_path, e_ev, kmesh=(12, 12, 12), sigma_ev: float = 0.15,
                     scissor_ev: float = 0.0, nbands=None, dq_bohr: float = 1e-4, comm=None,
                     workdir=None, input_hash: str = "", chunk: int = 4, on_unit=None,
                     label: str = "", tail: str = "power",
                     tail_exponent: float = DEFAULT_TAIL_EXPONENT):
    """Optical eps on the bins ``e_ev``: dict with ``eps_im``, ``eps_re``
    (Kramers-Kronig of the broadened Im eps), ``eps_static`` (exact sum),
    ``transitions`` and ``meta`` on rank 0; None on other ranks.  Arguments
    as :func:`compute_transitions`, :func:`im_eps_on_bins` and
    :func:`dmca_hpc.response.kramers_kronig.kk_real_from_imag`."""
    t0 = time.perf_counter()
    tr = compute_transitions(scf_path, kmesh, nbands=nbands, dq_bohr=dq_bohr, comm=comm,
                             workdir=workdir, input_hash=input_hash, chunk=chunk,
                             on_unit=on_unit, label=label)
    if tr is None:
        return None
    im = im_eps_on_bins(tr, e_ev, sigma_ev, scissor_ev)
    re = kk_real_from_imag(e_ev, im, tail=tail, tail_exponent=tail_exponent)
    meta = {**tr.meta, "sigma_ev": float(sigma_ev), "scissor_shift_ev": float(scissor_ev),
            "wall_s": time.perf_counter() - t0}
    meta["fsum_ratio"] = fsum_ratio_transitions(tr, scissor_ev)
    meta["fsum_ratio_no_scissor"] = fsum_ratio_transitions(tr, 0.0)
    return {"eps_im": im, "eps_re": re, "eps_static": eps_static_from_transitions(tr, scissor_ev),
            "transitions": tr, "meta": meta}
