"""Which momentum transfers a k mesh samples, and the correction for it.

A table built on an N1 x N2 x N3 k mesh holds momentum transfers only on the
fine reciprocal lattice {sum_i n_i b_i/N_i} (every k' - k + G lies on it), so
the low-q bins are either empty or hold one shell of that lattice with a
weight ~ n_shell/(4 pi q^2 dq) that is far from the continuum.  We count the
fine-lattice points in every q bin (:func:`fine_lattice_counts`) and the
dielectric code divides Im eps by n_disc/n_cont (:func:`sampling_correction`;
exact for integrands smooth in q); empty bins carry no information.  The
q = 0 point (k' = k, G = 0) is excluded: its matrix elements vanish by
orthogonality and it carries no longitudinal response.  On the shipped
QCDark Ge table the populated bins predicted this way coincide with the
non-zero bins of the file.

Units: cells in angstrom, q in alpha m_e (= bohr^-1).  Only numpy is imported.
"""
from __future__ import annotations

import math

import numpy as np

from dmca_hpc import units as U
from dmca_hpc.response import DielectricError

__all__ = ["fine_lattice_counts", "infer_kmesh", "sampling_correction", "table_geometry"]


def _fine_lattice_norms(cell_angstrom, kmesh, q_max_ame):
    """|q| [alpha m_e = bohr^-1] of every non-zero point of the lattice
    {sum_i n_i b_i / N_i} with |q| < q_max (b_i reciprocal vectors of the cell)."""
    cell = np.asarray(cell_angstrom, dtype=float) * U.ANGSTROM_BOHR
    if cell.shape != (3, 3) or abs(np.linalg.det(cell)) < 1e-12:
        raise DielectricError(f"cell must be a non-singular 3x3 matrix [angstrom], got {cell.shape}")
    kmesh = np.asarray(kmesh, dtype=int).reshape(-1)
    if kmesh.size == 1:
        kmesh = np.repeat(kmesh, 3)
    if kmesh.size != 3 or np.any(kmesh < 1):
        raise DielectricError(f"kmesh must be 3 positive integers, got {kmesh.tolist()}")
    recip = 2.0 * math.pi * np.linalg.inv(cell).T          # rows b_i [bohr^-1]
    fine = recip / kmesh[:, None]
    # bound on |n_i|: |q| >= |n_i| * (distance between lattice planes of the fine lattice)
    dual = np.linalg.inv(fine).T                            # rows: dual vectors
    nmax = np.ceil(q_max_ame * np.linalg.norm(dual, axis=1)).astype(int) + 1
    out = []
    r0 = np.arange(-nmax[0], nmax[0] + 1)
    r1 = np.arange(-nmax[1], nmax[1] + 1)
    r2 = np.arange(-nmax[2], nmax[2] + 1)
    base12 = (r1[:, None, None] * fine[1] + r2[None, :, None] * fine[2]).reshape(-1, 3)
    for n0 in r0:  # slab by slab keeps memory at O(n^2)
        pts = base12 + n0 * fine[0]
        qn = np.sqrt(np.einsum("ij,ij->i", pts, pts))
        out.append(qn[(qn > 1e-12) & (qn < q_max_ame)])
    return np.concatenate(out)


def fine_lattice_counts(cell_angstrom, kmesh, dq_ame: float, nq: int, q_min_ame: float = 0.0):
    """Number of momentum-transfer vectors k' - k + G per k in every q bin.

    For a uniform (Gamma-centred or shifted) N1 x N2 x N3 mesh every
    k' - k + G is a point of the fine lattice {sum n_i b_i/N_i}, each point
    once per k; the q = 0 point is excluded.

    Args:
        cell_angstrom: lattice vectors (rows) [angstrom].
        kmesh: (N1, N2, N3) or one integer.
        dq_ame, nq, q_min_ame: the table's q binning [alpha m_e].
    Returns:
        (n_disc, n_cont): float arrays [nq]: the lattice count and the
        continuum expectation 4 pi q^2 dq / V_fine.
    """
    q_hi = q_min_ame + nq * dq_ame
    qn = _fine_lattice_norms(cell_angstrom, kmesh, q_hi)
    idx = np.floor((qn - q_min_ame) / dq_ame).astype(int)
    idx = idx[(idx >= 0) & (idx < nq)]
    n_disc = np.bincount(idx, minlength=nq)[:nq].astype(float)
    cell = np.asarray(cell_angstrom, dtype=float) * U.ANGSTROM_BOHR
    km = np.broadcast_to(np.asarray(kmesh, dtype=int).reshape(-1), (3,))
    v_fine = (2.0 * math.pi) ** 3 / (abs(np.linalg.det(cell)) * float(np.prod(km)))
    q = q_min_ame + (np.arange(nq) + 0.5) * dq_ame
    # exact shell volume of the bin rather than 4 pi q^2 dq (matters in the first bins)
    lo, hi = q - 0.5 * dq_ame, q + 0.5 * dq_ame
    n_cont = 4.0 * math.pi / 3.0 * (hi**3 - lo**3) / v_fine
    return n_disc, n_cont


def infer_kmesh(f2, cell_angstrom, dq_ame: float, q_min_ame: float = 0.0,
                q_probe_ame: float = 1.0, n_max: int = 24):
    """Guess an isotropic N x N x N k mesh from which q bins of a table are
    populated (the populated bins below ``q_probe_ame`` must be exactly the
    non-empty ones; the first N that matches wins).  Returns N or None."""
    f2 = np.asarray(f2)
    nprobe = min(f2.shape[0], int(round((q_probe_ame - q_min_ame) / dq_ame)))
    nonzero = f2[:nprobe].sum(axis=1) > 0
    best, best_score = None, -1.0
    for n in range(1, n_max + 1):
        n_disc, _ = fine_lattice_counts(cell_angstrom, n, dq_ame, nprobe, q_min_ame)
        pop = n_disc > 0
        # bin 0 can hold the excluded q = 0 point: ignore it in the comparison
        agree = np.mean(pop[1:] == nonzero[1:]) if nprobe > 1 else 0.0
        if agree > best_score + 1e-12:
            best, best_score = n, agree
        if agree == 1.0:
            return n
    return best if best_score > 0.98 else None


def sampling_correction(n_disc, n_cont):
    """n_cont/n_disc per bin (NaN where the bin holds no lattice vector)."""
    n_disc = np.asarray(n_disc, dtype=float)
    out = np.full(n_disc.shape, np.nan)
    ok = n_disc > 0
    out[ok] = np.asarray(n_cont)[ok] / n_disc[ok]
    return out


def table_geometry(table, material=None, kmesh=None):
    """(cell [angstrom] 3x3, kmesh (3,), how) of a FormFactorTable: the cell
    from its metadata ('a' or 'cell_angstrom') or ``material``; the k mesh
    given, else from its metadata or k points, else inferred from its
    populated q bins (:func:`infer_kmesh`); ``how`` says which.  A missing
    cell or mesh gives None in its place and the reason in ``how``."""
    meta = getattr(table, "metadata", {}) or {}
    cell = None
    if "a" in meta:
        cell = np.asarray(meta["a"], dtype=float)
    elif "cell_angstrom" in meta:
        cell = np.asarray(meta["cell_angstrom"], dtype=float)
    elif material is not None:
        cell = np.asarray(material.atoms().cell, dtype=float)
    if cell is None or cell.shape != (3, 3):
        return None, None, "no cell in the table metadata ('a') and no material"
    how = ""
    if kmesh is None:
        for key in ("kmesh", "kpts_mesh", "bands_kmesh"):
            if key in meta and np.size(meta[key]) in (1, 3):
                kmesh, how = np.broadcast_to(np.asarray(meta[key], int).reshape(-1), (3,)), f"metadata {key}"
                break
    if kmesh is None and "kpts" in meta:
        kp = np.asarray(meta["kpts"], dtype=float)
        if kp.ndim == 2 and kp.shape[1] == 3:
            frac = kp @ (cell * U.ANGSTROM_BOHR).T / (2.0 * math.pi)
            ks = []
            for ax in range(3):
                d = np.abs(frac[:, ax][:, None] - frac[:, ax][None, :])
                d = np.abs(d - np.round(d))
                d = d[d > 1e-6]
                ks.append(int(round(1.0 / d.min())) if d.size else 1)
            if int(np.prod(ks)) == len(kp):
                kmesh, how = np.array(ks), "from the table's k points"
    if kmesh is None:
        n = infer_kmesh(table.f2, cell, table.dq_ame, getattr(table, "q_min_ame", 0.0))
        if n is not None:
            kmesh, how = np.array([n, n, n]), "inferred from the populated q bins"
    elif not how:
        how = "given"
    if kmesh is None:
        return cell, None, "k mesh unknown (set dielectric.kmesh)"
    return cell, np.broadcast_to(np.asarray(kmesh, int).reshape(-1), (3,)).copy(), how

