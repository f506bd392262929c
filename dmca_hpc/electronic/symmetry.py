"""Irreducible wedge of a Gamma-centred k-mesh, via spglib.

Conventions (shared by :mod:`dmca_hpc.electronic.bands` and the form-factor stage):

* Full-mesh order: for a mesh ``(n0, n1, n2)`` the point with integer
  address ``(i0, i1, i2)``, ``0 <= ij < nj``, has index
  ``i = (i0 * n1 + i1) * n2 + i2`` (C order, last axis fastest) and
  fractional coordinates ``(i0/n0, i1/n1, i2/n2)`` in the basis of the
  reciprocal lattice vectors b_j (b_i . a_j = 2 pi delta_ij).  This is the
  order of ``pyscf.pbc.gto.Cell.make_kpts(mesh)`` (with
  ``wrap_around=False``), so a coarse SCF mesh that divides the dense mesh
  is a subset of it.
* Symmetry operations act on fractional k as integer 3x3 matrices ``R``
  (reciprocal basis).  For a real-space operation ``x -> W x + t``
  (fractional, as spglib gives it) a Bloch state of k becomes one of
  ``W^-T k``; since the set {W^-T} equals {W^T} over a group, the matrices
  stored are the transposes ``W^T`` (spglib's own convention for
  ``get_ir_reciprocal_mesh``).  With time reversal, ``-W^T`` is also
  allowed; such a k is flagged ``time_reversal`` (psi_k = conj(psi_-k)).
* For every full-mesh k:  ``k_frac == R @ k_ibz_frac + G`` with the stored
  integer umklapp vector ``G``.

spglib is imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["IrreducibleMesh", "mesh_frac", "mesh_index", "irreducible_mesh",
           "spglib_cell", "reciprocal_rotations", "atoms_from_cell", "mesh_rotations",
           "cell_mesh_rotations", "pair_kset"]


@contextlib.contextmanager
def _quiet_spglib():
    """spglib 2.x warns (DeprecationWarning) about its error-handling mode on
    every call; we check its None returns ourselves, so silence that locally
    instead of flipping spglib's global switch under other modules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def mesh_frac(mesh) -> np.ndarray:
    """Fractional coordinates [nk, 3] (dimensionless, reciprocal basis) of a
    Gamma-centred mesh in the module's fixed order (C order, values in [0, 1))."""
    n = np.asarray(mesh, dtype=int).reshape(3)
    if np.any(n < 1):
        raise ValueError(f"k-mesh must be three positive integers, got {list(mesh)}")
    grid = np.indices(n).reshape(3, -1).T
    return grid / n


def mesh_index(address, mesh) -> np.ndarray:
    """Index in the fixed full-mesh order of integer addresses [..., 3]
    (any integers: they are wrapped modulo the mesh)."""
    n = np.asarray(mesh, dtype=int).reshape(3)
    a = np.mod(np.asarray(address, dtype=int), n)
    return (a[..., 0] * n[1] + a[..., 1]) * n[2] + a[..., 2]


def spglib_cell(atoms):
    """(lattice [angstrom], scaled positions, atomic numbers) of an
    ``ase.Atoms`` for spglib."""
    return (np.asarray(atoms.cell, dtype=float), np.asarray(atoms.get_scaled_positions(), float),
            np.asarray(atoms.numbers, dtype=int))


def reciprocal_rotations(atoms, symprec: float = 1e-5, time_reversal: bool = True):
    """Integer rotation matrices acting on fractional k, and a time-reversal
    flag per matrix: ``W^T`` for each space-group operation ``W``, then
    ``-W^T`` (flag True) when ``time_reversal``.  Duplicates (e.g. -W^T that
    is already a group element's W^T with inversion) are kept once, the
    non-time-reversed one first."""
    with _quiet_spglib():
        import spglib
        ds = spglib.get_symmetry_dataset(spglib_cell(atoms), symprec=symprec)
    if ds is None:
        raise ValueError("spglib could not determine the space group of the structure "
                         f"(symprec={symprec} angstrom)")
    rots, flags, seen = [], [], set()
    cands = [(np.asarray(w, dtype=int).T, False) for w in ds.rotations]
    if time_reversal:
        cands += [(-np.asarray(w, dtype=int).T, True) for w in ds.rotations]
    for r, tr in cands:
        key = r.tobytes()
        if key in seen:
            continue
        seen.add(key)
        rots.append(r)
        flags.append(tr)
    return np.array(rots), np.array(flags, dtype=bool), ds


@dataclass
class IrreducibleMesh:
    """The irreducible wedge of a Gamma-centred mesh.

    Attributes:
        mesh: the mesh (3 ints).
        kpts_frac: [nk, 3] fractional k of the full mesh (fixed order, '1').
        ibz_index: [n_ibz] indices into the full mesh of the representatives.
        ibz_weight: [n_ibz] weights (multiplicity / nk; they sum to 1).
        full_to_ibz: [nk] position in ``ibz_index`` of each full-mesh k's
            representative.
        rotations: [nk, 3, 3] int, ``k = R k_ibz + G`` (fractional).
        umklapp: [nk, 3] int, the G of that relation.
        time_reversal: [nk] bool, True when R includes time reversal.
        spacegroup: international symbol (e.g. ``Fd-3m``) and number.
    """

    mesh: tuple
    kpts_frac: np.ndarray
    ibz_index: np.ndarray
    ibz_weight: np.ndarray
    full_to_ibz: np.ndarray
    rotations: np.ndarray
    umklapp: np.ndarray
    time_reversal: np.ndarray
    spacegroup: str

    @property
    def nk(self) -> int:
        return len(self.kpts_frac)

    @property
    def n_ibz(self) -> int:
        return len(self.ibz_index)


def irreducible_mesh(atoms, mesh, symprec: float = 1e-5,
                     time_reversal: bool = True) -> IrreducibleMesh:
    """Irreducible wedge of the Gamma-centred ``mesh`` for the crystal ``atoms``.

    Uses ``spglib.get_ir_reciprocal_mesh`` (no shift) for the wedge and maps
    spglib's own grid order onto this module's fixed order, then finds for
    every k a rotation taking its representative onto it.

    Args:
        atoms: ``ase.Atoms`` (angstrom).
        mesh: three positive ints.
        symprec: spglib tolerance [angstrom].
        time_reversal: use k -> -k (valid without spin-orbit coupling).

    Returns:
        :class:`IrreducibleMesh`.
    """
    n = np.asarray(mesh, dtype=int).reshape(3)
    if np.any(n < 1):
        raise ValueError(f"k-mesh must be three positive integers, got {list(mesh)}")
    with _quiet_spglib():
        import spglib
        res = spglib.get_ir_reciprocal_mesh(n, spglib_cell(atoms), is_shift=[0, 0, 0],
                                            is_time_reversal=time_reversal, symprec=symprec)
    if res is None:
        raise ValueError(f"spglib could not find the irreducible wedge of mesh {n.tolist()} "
                         f"(symprec={symprec} angstrom)")
    mapping, grid = res
    mapping = np.asarray(mapping)
    grid = np.asarray(grid)
    # spglib index s -> our index
    ours = mesh_index(grid, n)
    nk = int(np.prod(n))
    rep_of = np.empty(nk, dtype=int)          # our index -> our index of representative
    rep_of[ours] = ours[mapping]
    reps = np.unique(rep_of)                   # sorted, deterministic
    pos = {int(r): j for j, r in enumerate(reps)}
    full_to_ibz = np.array([pos[int(r)] for r in rep_of], dtype=int)
    counts = np.bincount(full_to_ibz, minlength=len(reps))
    weight = counts / nk

    frac = mesh_frac(n)
    addr = np.indices(n).reshape(3, -1).T     # integer addresses, our order
    rots, flags, ds = reciprocal_rotations(atoms, symprec, time_reversal)
    rot_k = np.empty((nk, 3, 3), dtype=int)
    umk = np.empty((nk, 3), dtype=int)
    trf = np.empty(nk, dtype=bool)
    for i in range(nk):
        a_rep = addr[rep_of[i]]
        # R applied to the representative's address (integer arithmetic: exact)
        cand = np.einsum("rij,j->ri", rots, a_rep)
        diff = addr[i][None, :] - cand
        ok = np.all(np.mod(diff, n) == 0, axis=1)
        if not ok.any():
            raise RuntimeError(f"no symmetry operation maps the representative "
                               f"{frac[rep_of[i]]} onto k = {frac[i]} (mesh {n.tolist()}); "
                               "is the mesh compatible with the lattice symmetry?")
        j = int(np.argmax(ok))
        rot_k[i] = rots[j]
        umk[i] = diff[j] // n                  # k = R k_rep + G, G integer
        trf[i] = flags[j]
    return IrreducibleMesh(mesh=tuple(int(x) for x in n), kpts_frac=frac,
                           ibz_index=reps.astype(int), ibz_weight=weight,
                           full_to_ibz=full_to_ibz, rotations=rot_k, umklapp=umk,
                           time_reversal=trf,
                           spacegroup=f"{ds.international} ({ds.number})")


def atoms_from_cell(cell):
    """``ase.Atoms`` (angstrom) of a pyscf Cell: its lattice, atoms and
    elements (ghost atoms and basis labels dropped), for spglib."""
    import ase
    from pyscf.data.elements import charge
    from pyscf.data.nist import BOHR
    a = np.asarray(cell.lattice_vectors(), float) * BOHR
    pos = np.asarray(cell.atom_coords(), float) * BOHR
    return ase.Atoms(numbers=[charge(cell.atom_symbol(i)) for i in range(cell.natm)],
                     positions=pos, cell=a, pbc=True)


def mesh_rotations(rotations, mesh) -> np.ndarray:
    """The rotations [n, 3, 3] (reciprocal basis, as :func:`reciprocal_rotations`
    gives them) that map the Gamma-centred ``mesh`` onto itself (all of them for
    an n x n x n mesh; fewer when the divisions differ between coupled axes)."""
    n = np.asarray(mesh, dtype=int).reshape(3)
    keep = []
    for r in np.asarray(rotations, dtype=int):
        # R (a / n) must again be (integer) / n: R_ij n_i / n_j integer where R_ij != 0
        s = r * n[:, None] / n[None, :]
        if np.all(np.abs(s - np.round(s)) < 1e-9):
            keep.append(r)
    return np.array(keep, dtype=int).reshape(-1, 3, 3)


def cell_mesh_rotations(cell, mesh) -> np.ndarray:
    """:func:`mesh_rotations` of a pyscf Cell's space group (time reversal
    included) for the Gamma-centred ``mesh``: the operations :func:`pair_kset` uses."""
    return mesh_rotations(reciprocal_rotations(atoms_from_cell(cell))[0], mesh)


def pair_kset(rotations, mesh, iq: int, conjugate: bool | None = None):
    """k points of the mesh that represent every k of the pairs (k, k + q) for
    one mesh point q, with their multiplicities.

    A function of k that the little group of q leaves unchanged (the binned
    |<k+q| e^{iQ.r} |k>|^2 summed over the Q = q + G of a sphere and over
    whole degenerate band sets: ``F(Rk, q) = F(k, q)`` for ``R q = q`` mod G,
    the time-reversed operations ``-W^T`` included) needs one k per orbit.
    The analytic engine shares work between k and its partner ``-k - q``
    (``S(k, Q)^T = S(-k-q, Q)``) and, when ``2q`` is a reciprocal lattice
    vector, ``-k`` (``S(k, -Q) = conj(S(-k, Q))``), so the set returned is
    closed under those maps; members of one orbit share its multiplicity.

    Args:
        rotations: [n, 3, 3] int (:func:`reciprocal_rotations`, filtered by
            :func:`mesh_rotations`).
        mesh: the Gamma-centred mesh (3 ints), full-mesh order of this module.
        iq: mesh index of q.
        conjugate: close the set under k -> -k too (default: when 2q = 0 mod G).

    Returns:
        ``(ks [m] int, weight [m] float)``: sum of ``weight * F(k)`` over the
        set equals the sum of F over the whole mesh (``weight.sum() == nk``).
    """
    n = np.asarray(mesh, dtype=int).reshape(3)
    nk = int(np.prod(n))
    addr = np.indices(n).reshape(3, -1).T
    qa = addr[iq]
    rots = np.asarray(rotations, dtype=int).reshape(-1, 3, 3)
    little = [r for r in rots if np.all(np.mod(r @ qa - qa, n) == 0)]
    if not little:
        little = [np.eye(3, dtype=int)]
    img = np.stack([mesh_index(addr @ r.T, n) for r in little])   # [nG, nk]
    orbit_id = img.min(axis=0)                                    # canonical label
    orbit_size = np.bincount(orbit_id, minlength=nk)
    if conjugate is None:
        conjugate = bool(np.all(np.mod(2 * qa, n) == 0))
    partner = mesh_index(-addr - qa, n)
    negk = mesh_index(-addr, n)
    covered = np.zeros(nk, dtype=bool)
    ks, ws = [], []
    for k in range(nk):
        if covered[orbit_id[k]]:
            continue
        closure, todo = [k], [k]
        while todo:
            x = todo.pop()
            for y in ((partner[x], negk[x]) if conjugate else (partner[x],)):
                y = int(y)
                if y not in closure:
                    closure.append(y)
                    todo.append(y)
        by_orbit: dict = {}
        for x in closure:
            by_orbit.setdefault(int(orbit_id[x]), []).append(x)
        for o, members in by_orbit.items():
            if covered[o]:
                # the maps commute with the little group, so a closure never
                # reaches an orbit another closure has covered
                raise RuntimeError("pair_kset: inconsistent orbits (is the mesh symmetric?)")
            covered[o] = True
            for x in members:
                ks.append(x)
                ws.append(orbit_size[o] / len(members))
    order = np.argsort(ks, kind="stable")
    ks = np.asarray(ks, dtype=int)[order]
    ws = np.asarray(ws, dtype=float)[order]
    if abs(ws.sum() - nk) > 1e-9 * nk:
        raise RuntimeError(f"pair_kset: weights sum to {ws.sum()}, not {nk}")
    return ks, ws
