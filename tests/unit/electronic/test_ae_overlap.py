"""Analytic all-electron plane-wave matrix elements (dmca_hpc.electronic.ae_overlap).

Checked against pyscf's C kernel ``pyscf.pbc.df.ft_ao.ft_aopair_kpts`` (via
``matrix_elements.ft_aopair_bloch`` / ``aopair_matrix_elements``, whose sign
conventions the FFT-route tests pin down) on Si def2-svp (s, p and d shells,
all-electron), and against a real GDF SCF (solid Ne def2-svp) for orthonormality.
"""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pyscf")
pytest.importorskip("numba")

from dmca_hpc.electronic import ae_overlap as ae  # noqa: E402


def _si(basis="def2-svp", precision=1e-10):
    from pyscf.pbc import gto
    cell = gto.Cell()
    cell.atom = "Si 0 0 0; Si 1.3575 1.3575 1.3575"
    cell.a = np.array([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]])
    cell.basis = basis
    cell.pseudo = None
    cell.precision = precision
    cell.verbose = 0
    cell.build()
    return cell


@pytest.fixture(scope="module")
def si():
    return _si()


@pytest.fixture(scope="module")
def si_kpts(si):
    return si.make_kpts([2, 2, 2])


def _q_set(cell, q, q_small=4.0, n_large=24, seed=1):
    """All Q = q + G with |Q| <= q_small plus a sample with 10 <= |Q| <= 20."""
    Qa, _ = ae.q_plus_g(cell, q, q_small)
    Qb, _ = ae.q_plus_g(cell, q, 20.0)
    nb = np.linalg.norm(Qb, axis=1)
    far = Qb[nb >= 10.0]
    rng = np.random.default_rng(seed)
    pick = far[rng.choice(len(far), n_large, replace=False)]
    return np.concatenate([Qa, pick, Qb[-2:]])  # include the largest |Q|


def _reference(cell, kpts, q, Qv):
    """[nk, nQ, nao, nao] = ft_aopair_bloch(cell, Q - q, k, k + q) for every k
    (one ft_aopair_kpts call for all k, same arguments)."""
    from pyscf.pbc.df import ft_ao
    from dmca_hpc.electronic.matrix_elements import ft_aopair_bloch
    ref = np.asarray(ft_ao.ft_aopair_kpts(cell, -(Qv - q), q=-q, kptjs=kpts))
    one = ft_aopair_bloch(cell, Qv[:3] - q, kpts[1], kpts[1] + q)
    assert np.abs(one - ref[1, :3]).max() < 1e-12  # same convention as the package's helper
    return ref


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_import_is_light():
    code = ("import sys, dmca_hpc.electronic.ae_overlap; "
            "print(any(m in sys.modules for m in ('pyscf', 'numba', 'mpi4py', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_supergrid_lattices():
    a = 5.0
    fcc = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    bcc = 0.5 * a * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])
    hexa = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 1.6 * a]])
    # bcc points (a/2) m with all m of one parity: index 4 in the a/2 grid
    for lat, D in ((fcc, 2), (bcc, 4), (np.eye(3) * a, 1), (hexa, 2)):
        h, N, g = ae.orthorhombic_supergrid(lat)
        assert len(g) == D
        assert np.allclose(N * h, lat)
    rng = np.random.default_rng(0)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert ae.orthorhombic_supergrid(fcc @ rot.T) is None  # rotated: direct route


def test_q_plus_g_complete(si):
    q = np.array([0.1, -0.2, 0.05])
    Qv, m = ae.q_plus_g(si, q, 6.0)
    assert np.all(np.linalg.norm(Qv, axis=1) <= 6.0)
    assert np.allclose(Qv, q + m @ si.reciprocal_vectors())
    # a brute-force count on a larger box finds the same set
    n = np.arange(-12, 13)
    mm = np.stack(np.meshgrid(n, n, n, indexing="ij"), -1).reshape(-1, 3)
    ref = np.linalg.norm(q + mm @ si.reciprocal_vectors(), axis=1) <= 6.0
    assert len(Qv) == ref.sum()
    assert np.all(np.diff(np.linalg.norm(Qv, axis=1)) >= -1e-12)


@pytest.mark.parametrize("iq", [0, 5])
def test_ao_matrices_match_ft_aopair_kpts(si, si_kpts, iq):
    """AO level, every k of 2x2x2, all G up to |Q| <= 4 and |Q| in 10..20: the
    analytic route equals pyscf's ft_aopair_kpts (precision 1e-10) to 1e-6
    relative (it reaches ~1e-9)."""
    q = si_kpts[iq] - si_kpts[0]
    Qv = _q_set(si, q)
    eng = ae.AnalyticEngine(si, precision=1e-8)
    assert eng.lattice_sum == "factorized"
    S = eng.ao_matrices(si_kpts, Qv)
    ref = _reference(si, si_kpts, q, Qv)
    assert S.shape == (len(si_kpts), len(Qv), si.nao, si.nao)
    assert _rel(S, ref) < 1e-6
    assert np.abs(S - ref).max() < 1e-7
    # large |Q| are resolved too (only compact pairs survive there)
    far = np.linalg.norm(Qv, axis=1) >= 10
    assert np.abs(ref[:, far]).max() > 1e-3
    assert np.abs(S[:, far] - ref[:, far]).max() < 1e-8 + 1e-6 * np.abs(ref[:, far]).max()


def test_direct_route_and_no_transpose_agree(si, si_kpts):
    """The explicit image sum (any lattice) and the factorized sum without the
    transpose symmetry give the same AO matrices."""
    q = si_kpts[3] - si_kpts[0]
    Qv = _q_set(si, q, q_small=1.5, n_large=6)
    kp = si_kpts[[0, 3, 6]]  # partners missing: the transpose symmetry switches off
    ref = _reference(si, kp, q, Qv)
    direct = ae.AnalyticEngine(si, precision=1e-8, lattice_sum="direct").ao_matrices(kp, Qv)
    fact = ae.AnalyticEngine(si, precision=1e-8, use_transpose=False).ao_matrices(kp, Qv)
    assert _rel(direct, ref) < 1e-6
    assert _rel(fact, ref) < 1e-6


def test_mo_matrix_elements_match_aopair(si, si_kpts):
    """MO level against matrix_elements.aopair_matrix_elements (random bands)."""
    from dmca_hpc.electronic.matrix_elements import aopair_matrix_elements
    q = si_kpts[5] - si_kpts[0]
    Qv = _q_set(si, q, q_small=2.5, n_large=8)
    rng = np.random.default_rng(3)
    nk, nao = len(si_kpts), si.nao
    C = rng.normal(size=(nk, nao, 6)) + 1j * rng.normal(size=(nk, nao, 6))
    # bra coefficients belong to k + q; any array works for the identity
    Cq = rng.normal(size=(nk, nao, 9)) + 1j * rng.normal(size=(nk, nao, 9))
    eng = ae.AnalyticEngine(si, precision=1e-8)
    M = eng.matrix_elements(si_kpts, Qv, C[:, :, :4], Cq, batch=17)
    assert M.shape == (nk, len(Qv), 9, 4)
    for k in (0, 3, 7):
        ref = aopair_matrix_elements(si, si_kpts[k], C[k, :, :4], si_kpts[k] + q, Cq[k],
                                     Qv - q)
        assert _rel(M[k].transpose(1, 2, 0), ref) < 1e-6


def test_precision_knob(si, si_kpts):
    """A looser precision gives a bounded error (<= 10x precision) and is faster
    or equal in work."""
    q = si_kpts[2] - si_kpts[0]
    Qv = _q_set(si, q, q_small=3.0, n_large=12)
    ref = _reference(si, si_kpts, q, Qv)
    errs = {}
    for prec in (1e-4, 1e-6, 1e-8):
        S = ae.AnalyticEngine(si, precision=prec).ao_matrices(si_kpts, Qv)
        errs[prec] = np.abs(S - ref).max()
        assert errs[prec] <= 10 * prec, (prec, errs[prec])
    assert errs[1e-8] < errs[1e-4]
    with pytest.raises(ValueError):
        ae.AnalyticEngine(si, precision=0.0)


def test_memory_bytes(si):
    eng = ae.AnalyticEngine(si)
    kpts = si.make_kpts([2, 2, 2])
    Qv, _ = ae.q_plus_g(si, kpts[1] - kpts[0], 6.0)
    b = eng.memory_bytes(nk=8, batch=64, nQ_total=len(Qv), nbands=14, nbands_p=22)
    eng._plan_factorized(kpts, Qv)
    assert 8 * 64 * 38 * 38 * 16 + eng.last_plan_bytes < b < 2 ** 30


@pytest.fixture(scope="module")
def ne_scf():
    """Solid neon (fcc, a = 4.46 A), all-electron def2-svp (s, p, d), LDA, GDF,
    2x2x2 k: ~2 s.  (LiH def2-svp would be nearly linearly dependent:
    min eig S(k) ~ 1e-11.)"""
    from pyscf.pbc import dft, gto
    cell = gto.Cell()
    cell.atom = "Ne 0 0 0"
    h = 4.46 / 2
    cell.a = np.array([[0, h, h], [h, 0, h], [h, h, 0]])
    cell.basis = "def2-svp"
    cell.pseudo = None
    cell.verbose = 0
    cell.build()
    kpts = cell.make_kpts([2, 2, 2])
    mf = dft.KRKS(cell, kpts).density_fit()
    mf.xc = "lda,vwn"
    mf.conv_tol = 1e-10
    mf.kernel()
    assert mf.converged
    return cell, kpts, np.asarray(mf.mo_coeff), np.asarray(mf.mo_occ)


def test_orthonormality_and_charge_at_q0(ne_scf):
    """At Q = 0: C_k^dagger S(k, 0) C_k = 1 for the SCF bands (all of them) and
    sum_k w_k sum_occ <ik|ik> * 2 = N_electrons; S(k, 0) is pyscf's overlap."""
    cell, kpts, C, occ = ne_scf
    eng = ae.AnalyticEngine(cell, precision=1e-8)
    Q0 = np.zeros((1, 3))
    S = eng.ao_matrices(kpts, Q0)[:, 0]
    ovlp = np.asarray(cell.pbc_intor("int1e_ovlp", kpts=kpts))
    assert np.abs(S - ovlp).max() < 1e-8
    M = eng.matrix_elements(kpts, Q0, C, C)[:, 0]
    nk, nb = C.shape[0], C.shape[2]
    assert np.abs(M - np.eye(nb)[None]).max() < 1e-7
    nocc = int(round(occ[0].sum() / 2))
    charge = 2 * sum(np.trace(M[k, :nocc, :nocc]).real for k in range(nk)) / nk
    assert abs(charge - cell.nelectron) < 1e-6
    # q = G (k' = k): off-diagonal elements at G != 0 are finite, |M| <= 1
    Qg, _ = ae.q_plus_g(cell, np.zeros(3), 3.0)
    Mg = eng.matrix_elements(kpts, Qg, C[:, :, :nocc], C)
    assert np.abs(Mg).max() <= 1 + 1e-8


@pytest.mark.parametrize("basis,pseudo", [("gth-dzvp", "gth-pade"), ("cc-pvdz", None)])
def test_other_bases(basis, pseudo):
    """GTH basis with its pseudopotential (general contractions, nctr = 2) and
    cc-pVDZ (general contractions up to nctr = 3): same agreement."""
    from pyscf.pbc import gto
    cell = gto.Cell()
    cell.atom = "Si 0 0 0; Si 1.3575 1.3575 1.3575"
    cell.a = np.array([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]])
    cell.basis = basis
    cell.pseudo = pseudo
    cell.precision = 1e-10
    cell.verbose = 0
    cell.build()
    kpts = cell.make_kpts([2, 2, 2])
    q = kpts[6] - kpts[0]
    Qv = _q_set(cell, q, q_small=2.0, n_large=6)
    S = ae.AnalyticEngine(cell).ao_matrices(kpts, Qv)
    assert _rel(S, _reference(cell, kpts, q, Qv)) < 1e-6


@pytest.mark.parametrize("lattice", ["hexagonal", "bcc"])
def test_other_lattices(lattice):
    """Hexagonal (D = 2, non-cubic grid steps) and bcc (D = 4) cells through the
    factorized sum; a k mesh whose partners -k-q exist only in part."""
    from pyscf.pbc import gto
    cell = gto.Cell()
    cell.unit = "B"
    if lattice == "hexagonal":
        c = 4.65
        cell.a = np.array([[c, 0, 0], [-c / 2, c * np.sqrt(3) / 2, 0], [0, 0, 1.63 * c]])
        cell.atom = f"Be 0 0 0; Be 0 {c / np.sqrt(3)} {1.63 * c / 2}"
        cell.basis, mesh, D = "6-31g", [2, 2, 1], 2
    else:
        cell.a = 3.3 * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])
        cell.atom = "Li 0 0 0"
        cell.spin = 1
        cell.basis, mesh, D = "def2-svp", [2, 2, 2], 4
    cell.pseudo = None
    cell.precision = 1e-10
    cell.verbose = 0
    cell.build()
    kpts = cell.make_kpts(mesh)
    q = kpts[-1] - kpts[0]
    Qv = _q_set(cell, q, q_small=3.0, n_large=6)
    eng = ae.AnalyticEngine(cell)
    assert eng.lattice_sum == "factorized" and len(eng.grid[2]) == D
    S = eng.ao_matrices(kpts, Qv)
    assert _rel(S, _reference(cell, kpts, q, Qv)) < 1e-6
