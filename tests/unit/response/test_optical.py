"""Optical limit eps(q -> 0, w) from the DFT states (dmca_hpc.response.optical, issue 8)
and the consistency of Im eps from matrix elements with Im eps from |f|^2.

Reference numbers come from outside the team: the experimental Si
eps_inf = 11.7 and plasmon 16.7 eV, the Thomas-Reiche-Kuhn (f-sum) rule,
PySCF's analytic AO-pair Fourier transform, and the Adler-Wiser RPA formula
Im eps(q, w) = (8 pi^2 / (V q^2)) (1/N_k) sum_k sum_vc |<c,k+q|e^{iq.r}|v,k>|^2
delta(w - w_cv), written out directly in the last test.
"""
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from si_cases import shared_si_scf

ROOT = Path(__file__).resolve().parents[3]
SI_TABLE = ROOT / "dmca_hpc" / "data" / "tables" / "Si_gth.hdf5"
# the SCF of the shipped Si table (jobs/si_reference.yaml)
SI_REF_DFT = {"basis": "gth-dzvp", "pseudo": "gth-pbe", "xc": "PBE", "kmesh": [3, 3, 3],
              "ke_cutoff_hartree": 25.0, "conv_tol_hartree": 1e-9, "max_cycles": 60}


@pytest.fixture(scope="module")
def si_scf(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return shared_si_scf(tmp_path_factory, SI_REF_DFT, tag="si_dzvp_333_25")[1]


@pytest.fixture(scope="module")
def si_table():
    if not SI_TABLE.exists():
        pytest.skip(f"no shipped Si table ({SI_TABLE})")
    from dmca_hpc.tables import read_table
    return read_table(SI_TABLE)


@pytest.fixture(scope="module")
def si_transitions(si_scf, tmp_path_factory):
    # 12x12x12 (72 irreducible k): eps_inf of Si converges slowly with the mesh
    # (8x8x8 is still ~7% high); ~1 min on one core
    from dmca_hpc.response.optical import compute_transitions
    return compute_transitions(si_scf, [12, 12, 12],
                               workdir=tmp_path_factory.mktemp("optical_units"), input_hash="t")


def test_density_matrix_element_matches_ao_pair_transform(si_scf):
    """S + i q.R expansion == PySCF's analytic ft_aopair_kpts at small q, and
    the q -> 0 limit is converged at the default q = 1e-4 bohr^-1."""
    from dmca_hpc.electronic.bands import BandWorker
    from dmca_hpc.electronic.scf import load_scf
    from dmca_hpc.electronic.matrix_elements import aopair_matrix_elements
    from dmca_hpc.response.optical import transitions_at_k
    d = load_scf(si_scf)
    cell = d["cell"]
    nb = cell.nao_nr()
    w = BandWorker(str(si_scf), nb)
    k = np.array([0.1, 0.2, 0.3]) @ cell.reciprocal_vectors()  # general k, no symmetry
    _, d2 = transitions_at_k(w, cell, k, 4, 1e-4)
    _, d2b = transitions_at_k(w, cell, k, 4, 3e-5)
    # q convergence: the neglected second-order term of exp(iq.r) biases
    # |d|^2 by ~ c q^2 (measured against the exact transform below: 0.03% at
    # q = 3e-5, 0.14% at 1e-4, 0.8% at 3e-4, 7% at 1e-3); round-off grows as
    # 1/q, so the weak transitions are compared through the sum
    strong = d2 > 1e-2 * d2.max()
    np.testing.assert_allclose(d2b[strong], d2[strong], rtol=3e-3)
    assert d2b.sum() == pytest.approx(d2.sum(), rel=2e-3)
    # the analytic Fourier transform of AO pairs (exact in q), x direction only
    dq = 1e-4
    e, c = w.bands(np.vstack([k, k + [dq, 0, 0]]))
    m = aopair_matrix_elements(cell, k, c[0], k + [dq, 0, 0], c[1], np.zeros((1, 3)))[..., 0]
    ref = np.abs(m[4:, :4]) ** 2 / dq ** 2
    from dmca_hpc.response.optical import _density_matrix_elements
    ours = np.abs(_density_matrix_elements(cell, k, c[0], c[1], np.array([dq, 0, 0]), 4)) ** 2 / dq ** 2
    # ft_aopair_kpts's lattice sums are converged to ~1e-6 in M (its overlap at
    # q = 0 is orthonormal to 2e-6): a few % of M ~ q d ~ 3e-5 for a transition
    # with |d|^2 ~ 0.1, so element-wise only the strong ones, all through the sum
    big = ref > 1e-1 * ref.max()
    assert big.sum() >= 5
    np.testing.assert_allclose(ours[big], ref[big], rtol=5e-3)
    assert ours.sum() == pytest.approx(ref.sum(), rel=3e-3)  # the 0.14% bias above


def test_si_static_dielectric_constant_from_states(si_transitions, si_table):
    """Issue 8: eps_inf of Si within 15% of the measured 11.7 (RPA, no local
    fields, PBE + the shipped table's scissor)."""
    from dmca_hpc.response.optical import eps_static_from_transitions, im_eps_on_bins
    from dmca_hpc.response.kramers_kronig import kk_real_from_imag
    shift = si_table.metadata["scissor_shift_ev"]
    eps = eps_static_from_transitions(si_transitions, shift)
    eps_pbe = eps_static_from_transitions(si_transitions, 0.0)
    print(f"Si eps_inf: {eps:.2f} with scissor {shift:.3f} eV, {eps_pbe:.2f} plain PBE "
          "(RPA without local fields: PBE lands near 14, local fields lower it by ~10%)")
    assert abs(eps / 11.7 - 1) < 0.15
    # the scissor lowers eps (larger denominators, same d_cv)
    assert eps < eps_pbe
    # Kramers-Kronig of the broadened spectrum agrees with the exact sum
    im = im_eps_on_bins(si_transitions, si_table.e_ev, 0.15, shift)
    re = kk_real_from_imag(si_table.e_ev, im)
    assert re[0] == pytest.approx(eps, rel=1e-2)


def test_si_plasmon_from_states(si_transitions, si_table):
    """Issue 8: bulk plasmon of Si near the measured 16.7 eV (15%, as eps_0)."""
    from dmca_hpc.response import dielectric as D
    from dmca_hpc.response.kramers_kronig import kk_real_from_imag
    from dmca_hpc.response.optical import eps_static_from_transitions, im_eps_on_bins
    shift = si_table.metadata["scissor_shift_ev"]
    im = im_eps_on_bins(si_transitions, si_table.e_ev, 0.15, shift)
    optical = {"eps_im": im, "eps_re": kk_real_from_imag(si_table.e_ev, im),
               "eps_static": eps_static_from_transitions(si_transitions, shift),
               "meta": {"kmesh": [12, 12, 12], "sigma_ev": 0.15, "scissor_shift_ev": shift}}
    d = D.dielectric_from_table(si_table, optical=optical)
    peak = d.plasmon_peak_ev()
    print(f"Si plasmon (ELF peak, 1 eV smoothing): {peak:.2f} eV")
    assert abs(peak / 16.7 - 1) < 0.15
    assert d.meta["optical_route"] == "states"
    assert d.static_dielectric_constant() == pytest.approx(optical["eps_static"])
    # Im eps at the E2 peak (4.2-4.3 eV measured, ~45-50) is where the spectrum lives
    e2 = si_table.e_ev[np.argmax(d.eps0_im)]
    assert 3.5 < e2 < 5.0


def test_fsum_rises_with_bands(si_transitions):
    """f-sum (TRK) ratio of the optical limit below 1 and rising toward 1 with
    conduction bands (plain PBE: a scissor moves w_cv and breaks the rule)."""
    from dmca_hpc.response.optical import fsum_ratio_transitions
    nc = int(si_transitions.band_c.max()) + 1
    counts = [2, 4, 8, 16, nc]
    r = [fsum_ratio_transitions(si_transitions, 0.0, n) for n in counts]
    print("f-sum ratio by conduction bands:", dict(zip(counts, np.round(r, 4))))
    assert all(b > a for a, b in zip(r, r[1:]))
    # GTH valence f-sum is N_e up to the nonlocal-pseudopotential correction
    # (a few %); the truncated Gaussian basis stays below it
    assert 0.8 < r[-1] < 1.02


def test_im_eps_matrix_elements_vs_f2_table(tmp_path, request, tmp_path_factory):
    """Issue 8 consistency: Im eps from |f|^2 (DarkELF relation + q-sampling
    correction) equals Im eps written directly from the band-pair matrix
    elements (Adler-Wiser, PySCF's analytic AO-pair transform) on the first
    populated q bin of a 2x2x2 Si table."""
    from si_cases import cached_si_bands
    from dmca_hpc.response import dielectric as D
    from dmca_hpc.response.qsampling import fine_lattice_counts
    from dmca_hpc import units as U
    from dmca_hpc.electronic.formfactor import compute_table, settings
    from dmca_hpc.electronic.bands import load_bands
    from dmca_hpc.electronic.matrix_elements import aopair_matrix_elements
    from pyscf.pbc import gto
    bd = load_bands(cached_si_bands(request, tmp_path_factory.mktemp))
    dq, de = 0.01, 0.5
    s = settings({"q_max": 1.0, "dq": dq, "de": de, "e_max": 30.0, "scissor": "none"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f2 = compute_table(bd, s, tmp_path / "ff", "h", progress=False)["f2"]
    cell = gto.loads(bd.cell_dump)
    nq = f2.shape[0]
    q = (np.arange(nq) + 0.5) * dq
    vcell_ev3 = cell.vol / U.ALPHA_ME_EV ** 3   # bohr^3 -> eV^-3 (a0 = 1/(alpha m_e))
    n_disc, n_cont = fine_lattice_counts(np.asarray(cell.lattice_vectors()) * U.BOHR_ANGSTROM,
                                           bd.kmesh, dq, nq)
    a = int(np.nonzero(n_disc > 0)[0][0])
    from_table = D.im_eps_from_f2(f2[a], q[a], vcell_ev3) * n_cont[a] / n_disc[a]

    # direct: every (k, k', G) with |k' - k + G| in bin a
    nk, nocc = len(bd.kpts), bd.nocc
    b = cell.reciprocal_vectors()
    ns = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T
    gvecs = ns @ b
    direct = np.zeros(f2.shape[1])
    n_vec = 0
    for i in range(nk):
        for j in range(nk):
            qv = bd.kpts[j] - bd.kpts[i] + gvecs
            qn = np.linalg.norm(qv, axis=1)        # bohr^-1 == alpha m_e
            sel = (qn >= a * dq) & (qn < (a + 1) * dq)
            if not sel.any():
                continue
            n_vec += int(sel.sum())
            m = aopair_matrix_elements(cell, bd.kpts[i], bd.coeffs[i], bd.kpts[j], bd.coeffs[j],
                                       gvecs[sel])                      # [b', b, G]
            m2 = np.abs(m[nocc:, :nocc, :]) ** 2
            w = (bd.energies[j][nocc:, None] - bd.energies[i][None, :nocc]) * U.HARTREE_EV
            idx = np.floor(w / de).astype(int)
            for g, qq in enumerate(qn[sel]):
                pre = 8 * math.pi ** 2 / (cell.vol * qq ** 2) / nk / (de / U.HARTREE_EV)
                ok = idx < len(direct)
                np.add.at(direct, idx[ok], pre * m2[:, :, g][ok])
    assert n_vec == n_disc[a] * nk           # each k sees the whole fine lattice once
    direct /= n_disc[a]
    # the table takes 1/q^2 at the bin centre, the direct sum at each vector's
    # |q|: they differ by up to 2 (dq/2) / q; nothing else may differ
    tol = 2 * (dq / 2) / q[a] + 1e-6
    big = direct > 1e-3 * direct.max()
    assert big.sum() >= 5
    np.testing.assert_allclose(from_table[big], direct[big], rtol=tol)
    assert abs(from_table.sum() / direct.sum() - 1) < tol


def test_killed_run_resumes_from_unit_checkpoints(tmp_path, request, tmp_path_factory):
    """Units lost (as after a kill) are recomputed; the finished ones are read
    back; the result equals an uninterrupted run."""
    from si_cases import cached_si_bands
    from dmca_hpc.response.optical import compute_transitions
    scf = Path(cached_si_bands(request, tmp_path_factory.mktemp)).parents[1] / "dft" / "scf.h5"
    full = compute_transitions(scf, [4, 4, 4], chunk=2, workdir=tmp_path / "u", input_hash="a")
    files = sorted((tmp_path / "u").glob("unit-*.h5"))
    assert len(files) == 4
    files[1].unlink()
    files[3].write_bytes(b"truncated")            # a half-written file from the kill
    again = compute_transitions(scf, [4, 4, 4], chunk=2, workdir=tmp_path / "u", input_hash="a")
    np.testing.assert_array_equal(again.omega_ev, full.omega_ev)
    np.testing.assert_array_equal(again.strength_bohr2, full.strength_bohr2)
    # other inputs (hash) never reuse the units
    other = compute_transitions(scf, [4, 4, 4], chunk=2, workdir=tmp_path / "u", input_hash="b")
    np.testing.assert_array_equal(other.strength_bohr2, full.strength_bohr2)


def test_bad_optical_input_names_the_key(si_scf):
    from dmca_hpc.response.optical import OpticalError, compute_transitions
    with pytest.raises(OpticalError, match="optical_kmesh"):
        compute_transitions(si_scf, [4, 0, 4])
    with pytest.raises(OpticalError, match="optical_dq_bohr"):
        compute_transitions(si_scf, [4, 4, 4], dq_bohr=0.5)


@pytest.mark.parametrize("route", ["auto", "states"])
def test_stage_distrusts_states_when_the_functional_closes_the_gap(route, tmp_path, request,
                                                                   tmp_path_factory, si_table, capsys):
    """A direct DFT gap below dielectric.optical_min_gap_ev (PBE Ge at Gamma:
    0.06 eV, eps_inf ~ 275 from the states) is flagged; 'auto' falls back to
    the table's q -> 0 extrapolation, 'states' keeps the states and warns.
    Real Si states with the threshold set above their 2.5 eV direct gap."""
    from types import SimpleNamespace
    from si_cases import cached_si_bands
    from dmca_hpc.response import dielectric as D
    from dmca_hpc.stages.dielectric import run_stage
    from dmca_hpc.materials import get_material
    from dmca_hpc.hpc.parallel import SerialComm
    from dmca_hpc.monitoring.telemetry import Telemetry
    scf = Path(cached_si_bands(request, tmp_path_factory.mktemp)).parents[1] / "dft" / "scf.h5"
    job = {"dielectric": {"optical_route": route, "optical_kmesh": [2, 2, 2],
                          "optical_min_gap_ev": 100.0, "absorption": False}}
    ctx = SimpleNamespace(job=job, material=get_material("Si"), stage_dir=tmp_path,
                          input_hash="h", comm=SerialComm(), prov={}, seed=1,
                          telemetry=Telemetry(tmp_path / "tel", rank=0, job_id="t"),
                          outputs={"formfactor": {"table": str(SI_TABLE)}, "dft": {"scf": str(scf)}})
    outs = run_stage(ctx)
    d = D.read_dielectric(outs["dielectric"])
    assert "optical_min_gap_ev" in d.meta["optical_states_warning"]
    assert "optical_min_gap_ev" in capsys.readouterr().err
    assert d.meta["optical_route"] == ("table" if route == "auto" else "states")
