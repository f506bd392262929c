"""bands stage: dense-mesh non-SCF bands of Si from the dft stage's density.

Sizes (stated): the SCF of tests/test_dft.py (Si gth-dzvp/PBE, 2x2x2,
ke_cutoff 10 hartree, conv_tol 1e-10), dense Gamma-centred 4x4x4 mesh (it
contains the 2x2x2 SCF points), 40 points on ASE's standard fcc band path.
"""
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from dmca_hpc.electronic import bands

from dmca_hpc.electronic import scf as dft
from dmca_hpc.hpc.checkpoint import UnitStore, is_complete
from dmca_hpc.materials import get_material
from dmca_hpc.units import HARTREE_EV
from dmca_hpc.pipeline import make_context
from dmca_hpc.stages import bands as bands_stage

from si_cases import SI_DFT, shared_si_scf

SI_BANDS = {"kmesh": [4, 4, 4], "chunk_size": 8, "band_path_npoints": 40}


def _run_bands(out, section=SI_BANDS, scf=None):
    job = {"dft": dict(SI_DFT), "bands": dict(section)}
    outputs = {"dft": {"scf": str(scf)}} if scf else {}
    return bands_stage.run_stage(make_context("bands", out, get_material("Si"), job, outputs=outputs))


@pytest.fixture(scope="module")
def si_bands(tmp_path_factory):
    out, scf = shared_si_scf(tmp_path_factory)
    with pytest.warns(UserWarning, match="energy_above_gap_ev = 50.0 eV is not reached"):
        res = _run_bands(out, scf=scf)
    return out, scf, res


def test_contract(si_bands):
    out, scf, res = si_bands
    assert set(res) == {"bands", "band_structure_plot", "dos_plot"}
    for k in ("band_structure_plot", "dos_plot"):
        assert Path(res[k]).stat().st_size > 5000
        assert Path(res[k]).read_bytes()[:4] == b"\x89PNG"
    with h5py.File(res["bands"], "r") as f:
        a = f.attrs
        assert a["complete"] and a["material"] == "Si" and a["xc"] == "PBE"
        assert a["basis"] == "gth-dzvp" and list(a["kmesh"]) == [4, 4, 4]
        nocc, nb = int(a["nocc"]), int(a["nbands"])
        assert nocc == 4 and nb == 26  # the basis cannot reach 50 eV: every band kept
        units = {"kpts_frac": "1", "kpts": "bohr^-1", "energies": "hartree", "coeffs": "1",
                 "ibz_index": "1", "ibz_weight": "1", "full_to_ibz": "1", "dos_energy_ev": "eV",
                 "dos": "eV^-1", "energies_scissored": "hartree"}
        for name, u in units.items():
            assert f[name].attrs["units"] == u, name
        assert f["energies"].shape == (64, nb) and f["coeffs"].shape == (64, 26, nb)
        assert np.iscomplexobj(f["coeffs"][()])
        assert len(f["ibz_index"]) == 8 and f["ibz_weight"][()].sum() == pytest.approx(1.0)
        from dmca_hpc.electronic.symmetry import mesh_frac
        assert np.allclose(f["kpts_frac"][()], mesh_frac([4, 4, 4]))
        for k in ("gap_indirect_ev", "gap_direct_ev", "vbm_ev", "cbm_ev", "scissor_gap_ev",
                  "scissor_convention", "cell"):
            assert k in a
        # every dataset in the file carries units
        bad = []
        f.visititems(lambda n, o: bad.append(n) if isinstance(o, h5py.Dataset)
                     and "units" not in o.attrs else None)
        assert not bad


def test_bloch_states_orthonormal_and_charge(si_bands):
    """C^H S(k) C = 1 for every k (the coefficient convention is PySCF's
    Bloch AOs), and the valence DOS integrates to the 8 valence electrons."""
    out, scf, res = si_bands
    from pyscf.pbc import gto
    with h5py.File(res["bands"], "r") as f:
        cell = gto.loads(f.attrs["cell"])
        k, c = f["kpts"][()], f["coeffs"][()]
        s = np.asarray(cell.pbc_intor("int1e_ovlp", 1, 1, k))
        o = np.einsum("kmi,kmn,knj->kij", c.conj(), s, c)
        dev = np.abs(o - np.eye(c.shape[2]))
        # valence and low conduction bands: orthonormal to 1e-7 (measured 2e-8); the
        # top bands of the nearly linearly dependent diffuse basis only to ~5e-6 (the
        # overlap's lattice sums are cut at cell.precision = 1e-8 and the smallest
        # S(k) eigenvalues amplify that), hence 1e-5 for the full block
        assert dev[:, :8, :8].max() < 1e-7
        assert dev.max() < 1e-5
        e, d, vbm = f["dos_energy_ev"][()], f["dos"][()], f.attrs["vbm_ev"]
        gap = f.attrs["gap_indirect_ev"]
        m = e < vbm + gap / 2
        assert np.trapezoid(d[m], e[m]) == pytest.approx(8.0, abs=1e-3)


def test_pbe_gap_indirect_and_cbm_along_gamma_x(si_bands):
    """PBE Si: indirect gap, VBM at Gamma, CBM about 85% of the way to X.
    Known PBE gap: 0.5-0.6 eV with converged plane waves (e.g. 0.58 eV,
    Heyd, Peralta, Scuseria, Martin, JCP 123, 174101 (2005)); the gth-dzvp
    basis shifts it by a few 0.01 eV, hence the issue's 'about 0.5 to 0.7 eV'.
    It is far below the 1.17 eV experiment, which only the scissor fixes."""
    out, scf, res = si_bands
    with h5py.File(res["bands"], "r") as f:
        a = f.attrs
        p = f["band_path"].attrs
        assert np.allclose(a["vbm_kpt_frac"], 0)
        assert a["gap_direct_ev"] > a["gap_indirect_ev"] + 1.0  # direct gap at Gamma ~2.5 eV
        # on the 4x4x4 mesh the lowest conduction point is X itself
        assert np.allclose(sorted(a["cbm_kpt_frac"]), [0, 0.5, 0.5])
        assert 0.5 <= a["gap_indirect_ev"] <= 0.7
        # the true minimum, along the band path, lies on Gamma-X near 0.85
        assert p["cbm_segment"] == "Γ-X"
        assert 0.7 < p["cbm_fraction"] < 0.95
        assert 0.45 <= p["gap_indirect_ev"] <= 0.7
        assert abs(p["gap_indirect_ev"] - 1.17) > 0.4


def test_dense_mesh_reproduces_scf_eigenvalues(si_bands):
    """At the coarse SCF k-points (all on the 4x4x4 mesh) the non-SCF bands
    equal the SCF eigenvalues.  Tolerance 2e-6 hartree: PySCF's final SCF
    eigenvalues come from the Fock matrix of the second-to-last density, and
    with conv_tol 1e-10 the last density step changes them by ~1e-6 hartree
    (sqrt(conv_tol) scale, PySCF's default gradient criterion)."""
    out, scf, res = si_bands
    with h5py.File(res["bands"], "r") as b, h5py.File(scf, "r") as s:
        kb, ks = b["kpts_frac"][()], s["kpts_frac"][()]
        idx = [int(np.argmin(np.abs((kb - k + 0.5) % 1 - 0.5).sum(1))) for k in ks]
        assert np.abs((kb[idx] - ks + 0.5) % 1 - 0.5).max() < 1e-12
        nb = b["energies"].shape[1]
        diff = np.abs(b["energies"][()][idx] - s["mo_energy"][()][:, :nb]).max()
    assert diff < 2e-6


def test_fast_hamiltonian_equals_pyscf_get_bands(si_bands):
    """The per-rank cached potential gives PySCF get_bands' eigenvalues
    (arbitrary k, off the mesh) to 1e-10 hartree."""
    out, scf, res = si_bands
    w = bands.BandWorker(str(scf), 26)
    mf = w.mf()
    assert w.use_fast
    k = w.cell.get_abs_kpts(np.array([[0.1, 0.2, 0.3], [0.5, 0.25, 0.75], [0.37, 0.0, 0.37]]))
    e, c = w.bands(k)
    e2, _ = mf.get_bands(k, dm_kpts=w.dm)
    assert np.abs(e - np.asarray(e2)).max() < 1e-10
    assert w.nelec_grid == pytest.approx(8.0, abs=1e-6)


def test_symmetry_equivalent_k_have_equal_bands(si_bands):
    """Eigenvalues at k and at its IBZ representative agree (checks the
    full->IBZ map against the physics).  Tolerance 3e-3 hartree: with the
    13^3 FFT mesh of the 10-hartree test cutoff the real-space XC grid is not
    invariant under the cubic rotations (egg-box effect, measured 1.4e-3
    hartree); a wrong map would mismatch by ~0.1 hartree."""
    out, scf, res = si_bands
    with h5py.File(res["bands"], "r") as f:
        e = f["energies"][()]
        rep = f["ibz_index"][()][f["full_to_ibz"][()]]
    assert np.abs(e - e[rep]).max() < 3e-3
    # the valence bands only (smooth, well converged) agree much better
    assert np.abs(e[:, :4] - e[rep, :4]).max() < 3e-3


def test_scissor_conventions():
    e = np.array([[-0.1, 0.0, 0.05, 0.2], [-0.2, -0.01, 0.04, 0.3]])  # hartree, nocc=2
    vbm, gap = 0.0, 0.04 * HARTREE_EV
    qc, info = bands.apply_scissor(e, 2, vbm, gap, 1.11, "qcdark")
    g = bands.gap_summary(qc, 2, np.zeros((2, 3)))
    assert g["vbm_ev"] == pytest.approx(0.0, abs=1e-12)
    assert g["gap_indirect_ev"] == pytest.approx(1.11)
    assert info["shift_valence_ev"] == 0 and info["shift_conduction_ev"] == pytest.approx(1.11 - gap)
    qe, info = bands.apply_scissor(e, 2, vbm, gap, 1.11, "qedark")
    g = bands.gap_summary(qe, 2, np.zeros((2, 3)))
    assert g["gap_indirect_ev"] == pytest.approx(1.11)
    assert info["shift_valence_ev"] == pytest.approx(-info["shift_conduction_ev"])
    mid = lambda x: (x[:, 1].max() + x[:, 2].min()) / 2
    assert mid(qe) == pytest.approx(mid(e))  # QEdark keeps the mid-gap
    none, info = bands.apply_scissor(e, 2, vbm, gap, 1.11, "none")
    assert np.array_equal(none, e)
    with pytest.raises(bands.BandsInputError, match="scissor_convention"):
        bands.apply_scissor(e, 2, vbm, gap, 1.11, "bogus")


def test_scissor_stored(si_bands):
    out, scf, res = si_bands
    with h5py.File(res["bands"], "r") as f:
        a = f.attrs
        assert a["scissor_convention"] == "qcdark" and a["scissor_gap_ev"] == pytest.approx(1.11)
        g = bands.gap_summary(f["energies_scissored"][()], 4, f["kpts_frac"][()])
    assert g["gap_indirect_ev"] == pytest.approx(1.11, abs=1e-9)
    assert g["vbm_ev"] == pytest.approx(0.0, abs=1e-9)


def test_choose_nbands():
    e = np.array([[-0.3, 0.0, 0.1, 0.5, 1.0, 3.0]] * 2)  # hartree
    nb, warn = bands.choose_nbands(e, 2, None, 0.45 * HARTREE_EV)
    assert nb == 4 and warn is None  # bands starting at 0.1 and 0.5 (< 0.1 + 0.45)
    nb, warn = bands.choose_nbands(e, 2, None, 10 * HARTREE_EV)
    assert nb == 6 and "not reached by the basis" in warn
    assert bands.choose_nbands(e, 2, 3)[0] == 5
    with pytest.raises(bands.BandsInputError, match="bands.n_conduction = 9"):
        bands.choose_nbands(e, 2, 9)


def test_resume_corrupt_and_foreign_units(si_bands, tmp_path):
    """Serial restart: a truncated unit file and one written for other
    inputs are recomputed, the others reused; result identical."""
    out, scf, res = si_bands
    sec = dict(SI_BANDS, band_path_npoints=0, plots=False)
    with pytest.warns(UserWarning):
        r1 = _run_bands(tmp_path, sec, scf=scf)
    with h5py.File(r1["bands"], "r") as f:
        e_ref, c_ref = f["energies"][()], f["coeffs"][()]
        uh = None
    units = sorted((tmp_path / "bands" / "units").glob("unit-*.h5"))
    assert len(units) == 8
    # truncate unit 1, re-stamp unit 2 with another input hash, drop the merged file
    data = units[1].read_bytes()
    units[1].write_bytes(data[: len(data) // 3])
    with h5py.File(units[2], "a") as f:
        f.attrs["input_hash"] = "something-else"
    (tmp_path / "bands" / "bands.h5").unlink()
    n_before = len(_records(tmp_path))
    with pytest.warns(UserWarning):
        r2 = _run_bands(tmp_path, sec, scf=scf)
    new = [r for r in _records(tmp_path)[n_before:] if ":mesh:" in r["hpc"]["unit"]]
    assert sorted(r["hpc"]["unit"] for r in new) == ["Si:mesh:16-24", "Si:mesh:8-16"]
    with h5py.File(r2["bands"], "r") as f:
        assert np.abs(f["energies"][()] - e_ref).max() < 1e-10
        assert np.abs(f["coeffs"][()] - c_ref).max() < 1e-10
    # a changed input that alters the units (chunk size) invalidates them all
    n_before = len(_records(tmp_path))
    with pytest.warns(UserWarning):
        _run_bands(tmp_path, dict(sec, chunk_size=16), scf=scf)
    new = [r for r in _records(tmp_path)[n_before:] if ":mesh:" in r["hpc"]["unit"]]
    assert len(new) == 4 and all(r["hpc"]["status"] == "ok" for r in new)
    # telemetry physics block of a k-chunk
    assert new[0]["physics"]["material"] == "Si" and new[0]["physics"]["kpts"] == 16
    assert new[0]["physics"]["e_tot_hartree"] < -7


def test_rerun_reuses_bands_file(si_bands):
    out, scf, res = si_bands
    mtime = Path(res["bands"]).stat().st_mtime_ns
    with pytest.warns(UserWarning):
        res2 = _run_bands(out, scf=scf)
    assert res2 == res and Path(res["bands"]).stat().st_mtime_ns == mtime


def test_bad_bands_input(si_bands, tmp_path):
    out, scf, res = si_bands
    with pytest.raises(bands.BandsInputError, match=r"bands\.kmesh"):
        _run_bands(tmp_path, {"kmesh": [4, 4]}, scf=scf)
    with pytest.raises(bands.BandsInputError, match=r"unknown key"):
        _run_bands(tmp_path, {"kmesh_dense": [4, 4, 4]}, scf=scf)
    with pytest.raises(RuntimeError, match="run the dft stage first"):
        _run_bands(tmp_path, SI_BANDS, scf=tmp_path / "nope.h5")


def _records(out_dir):
    recs = []
    for p in sorted((Path(out_dir) / "telemetry").glob("rank-*.jsonl")):
        recs += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return recs


def test_irreducible_only_rotates_eigenstates_to_the_full_mesh(si_bands, tmp_path):
    """bands.irreducible_only: diagonalize at the 8 irreducible k of the 4x4x4
    mesh and rotate to all 64 with PySCF's space-group operations.  The rotated
    states must be Kohn-Sham eigenvectors at every k (C^H S C = 1 to 1e-10;
    H C = S C E and the energies of a direct diagonalization to within the
    symmetry breaking of the Hamiltonian itself, measured here as the spread
    of the directly computed energies over each star of symmetry-equivalent
    k: the XC potential on the 10-hartree FFT grid is not exactly cubic, so
    no rotation can do better); the form factor, which sums |M|^2 over
    degenerate sets, agrees to the same relative order."""
    from dmca_hpc.electronic.formfactor import compute_table, settings
    from dmca_hpc.electronic.bands import load_bands
    out, scf, res = si_bands
    sec = dict(SI_BANDS, band_path_npoints=0, plots=False, n_conduction=8)
    direct = load_bands(_run_bands(tmp_path / "direct", dict(sec, irreducible_only=False), scf=scf)["bands"])
    rot = load_bands(_run_bands(tmp_path / "rot", dict(sec, irreducible_only=True), scf=scf)["bands"])
    recs = [json.loads(x) for x in (tmp_path / "rot" / "telemetry" / "rank-00000.jsonl").read_text().splitlines()]
    assert sum(1 for x in recs if x["hpc"]["stage"] == "bands" and ":mesh:" in x["hpc"]["unit"]) == 1  # 8 k: 1 chunk
    assert rot.energies.shape == direct.energies.shape == (64, 12)
    spread = max(float(np.ptp(direct.energies[direct.full_to_ibz == i], axis=0).max())
                 for i in range(len(direct.ibz_index)))
    print(f"grid symmetry breaking of the direct energies: {spread:.2e} hartree")
    assert spread < 1e-3
    assert np.abs(rot.energies - direct.energies).max() <= 2 * spread + 1e-10
    w = bands.BandWorker(str(scf), 12)
    w.mf()
    assert w.use_fast
    for k in (1, 5, 22, 63):
        h, s = w.hamiltonian(rot.kpts[k])
        c = rot.coeffs[k]
        assert np.abs(c.conj().T @ s[0] @ c - np.eye(12)).max() < 1e-10, k
        resid = h[0] @ c - s[0] @ c * rot.energies[k][None, :]
        assert np.abs(resid).max() <= 4 * spread + 1e-10, k
    s_ff = settings({"q_max": 4.0, "dq": 0.5, "de": 1.0, "e_max": 20.0, "gap_ev": 1.11, "n_conduction": 8})
    f_rot = compute_table(rot, s_ff, tmp_path / "ff_rot", "r", progress=False, gap_target_ev=1.11)["f2"]
    f_dir = compute_table(direct, s_ff, tmp_path / "ff_dir", "d", progress=False, gap_target_ev=1.11)["f2"]
    # bins are 1 eV wide: an energy shift of `spread` moves weight only at a bin edge
    assert np.abs(f_rot - f_dir).sum() <= 1e-2 * f_dir.sum()


def test_gdf_band_path_beyond_memory_is_refused_with_numbers():
    """All-electron (GDF) band-path chunks rebuild 3-index integrals against
    every SCF k; a chunk that cannot fit (Si cc-pVTZ, 27 x 16 k: 23 GB was
    measured before an OOM kill) is refused up front with the estimate and the
    keys that fix it."""
    from dmca_hpc import settings
    from dmca_hpc.stages.bands import _check_gdf_path_memory
    sec = settings.with_defaults("dft", {"basis": "def2-svp", "pseudo": None})
    cell = dft.build_cell(get_material("Si").atoms(), sec)
    _check_gdf_path_memory(cell, 27, 4, 1, available_bytes=64 * 2 ** 30)
    with pytest.raises(bands.BandsInputError, match=r"needs about [\d.]+ GiB per rank .* set "
                                                     r"bands.band_path_npoints: 0 or bands.chunk_size <= \d+"):
        _check_gdf_path_memory(cell, 27, 16, 2, available_bytes=4 * 2 ** 30)
