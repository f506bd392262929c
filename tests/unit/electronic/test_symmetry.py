"""Irreducible wedge via spglib (dmca_hpc.electronic.symmetry).

Known numbers (not chosen by us): the Gamma-centred 4x4x4 and 8x8x8 meshes
of the fcc lattice with the full O_h point group (diamond Si, and with time
reversal also zincblende GaAs, T_d) have 8 and 29 irreducible points
(Monkhorst & Pack 1976 style counting; VASP/QE give the same numbers).
"""
import numpy as np
import pytest
from ase.build import bulk

from dmca_hpc.electronic.symmetry import irreducible_mesh, mesh_frac, mesh_index


@pytest.fixture(scope="module")
def si():
    return bulk("Si", "diamond", a=5.431)


@pytest.mark.parametrize("n, n_ibz", [(4, 8), (8, 29)])
def test_si_ibz_counts_and_weights(si, n, n_ibz):
    ir = irreducible_mesh(si, [n, n, n])
    assert ir.n_ibz == n_ibz
    assert ir.ibz_weight.sum() == pytest.approx(1.0, abs=1e-14)
    assert ir.spacegroup.startswith("Fd-3m")
    # multiplicities are integers and every full-mesh point has one representative
    mult = ir.ibz_weight * n**3
    assert np.allclose(mult, np.round(mult))
    assert np.array_equal(np.bincount(ir.full_to_ibz, minlength=ir.n_ibz), np.round(mult).astype(int))
    # Gamma is its own class of weight 1/nk
    assert ir.ibz_index[0] == 0 and ir.ibz_weight[0] == pytest.approx(1 / n**3)


@pytest.mark.parametrize("n", [4, 8])
def test_rotations_map_representatives_exactly(si, n):
    ir = irreducible_mesh(si, [n, n, n])
    k = ir.kpts_frac
    krep = k[ir.ibz_index[ir.full_to_ibz]]
    mapped = np.einsum("kij,kj->ki", ir.rotations, krep) + ir.umklapp
    assert np.abs(mapped - k).max() < 1e-12
    # rotations are orthogonal in cartesian coordinates (B R B^-1 with B the reciprocal basis)
    B = np.linalg.inv(np.asarray(si.cell)).T  # columns: reciprocal vectors (no 2 pi)
    for R in ir.rotations[:: max(1, len(k) // 20)]:
        Rc = B @ R @ np.linalg.inv(B)
        assert np.allclose(Rc @ Rc.T, np.eye(3), atol=1e-10)
    # diamond has inversion: time reversal is never needed
    assert not ir.time_reversal.any()


def test_zincblende_uses_time_reversal():
    """GaAs (T_d, no inversion): still 8 points on 4x4x4 thanks to k -> -k."""
    ir = irreducible_mesh(bulk("GaAs", "zincblende", a=5.653), [4, 4, 4])
    assert ir.n_ibz == 8 and ir.spacegroup.startswith("F-43m")
    assert ir.time_reversal.any()
    no_tr = irreducible_mesh(bulk("GaAs", "zincblende", a=5.653), [4, 4, 4], time_reversal=False)
    assert no_tr.n_ibz > 8


def test_mesh_order_is_pyscf_make_kpts_order(si):
    """The fixed full-mesh order equals PySCF's Cell.make_kpts (bands and
    formfactor rely on it)."""
    from pyscf.pbc import gto
    cell = gto.Cell(atom=[[s, p] for s, p in zip(si.get_chemical_symbols(), si.positions)],
                    a=np.asarray(si.cell), basis="gth-szv", pseudo="gth-pbe", unit="A", verbose=0)
    cell.build()
    for mesh in ([2, 3, 4], [4, 4, 4]):
        frac = mesh_frac(mesh)
        assert np.allclose(cell.get_scaled_kpts(cell.make_kpts(mesh, wrap_around=False)), frac)
        addr = np.rint(frac * mesh).astype(int)
        assert np.array_equal(mesh_index(addr, mesh), np.arange(len(frac)))
        assert np.array_equal(mesh_index(addr - np.array(mesh), mesh), np.arange(len(frac)))


def test_bad_mesh():
    with pytest.raises(ValueError, match="three positive integers"):
        mesh_frac([4, 0, 4])
