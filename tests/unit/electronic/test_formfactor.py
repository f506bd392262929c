"""Crystal form-factor engine (issue 4): physics checks on a small real Si case.

Bands come from the real dft + bands stages (dmca_hpc.electronic.scf / dmca_hpc.electronic.bands,
PySCF, Si gth-szv, 2x2x2, ke_cutoff 40 Ha), cached in pytest's cache
directory so that later runs skip the ~30-50 s SCF.  Coarse bins (dq = 0.2
alpha m_e, dE = 1 eV, q <= 6, E <= 30 eV) keep every test fast.
"""
import json
import os
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from si_cases import SMALL, cached_si_bands, make_si_bands  # noqa: F401  (shared Si cases)


@pytest.fixture(scope="session")
def si_bands(request, tmp_path_factory):
    return cached_si_bands(request, tmp_path_factory.mktemp)


@pytest.fixture(scope="session")
def bd(si_bands):
    from dmca_hpc.electronic.bands import load_bands
    return load_bands(si_bands)


def small(**kw):
    from dmca_hpc.electronic.formfactor import settings
    return settings({**SMALL, **kw})


@pytest.fixture(scope="session")
def wedge_table(bd, tmp_path_factory):
    from dmca_hpc.electronic.formfactor import compute_table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_table(bd, small(), tmp_path_factory.mktemp("wedge"), "h-wedge",
                             progress=False, gap_target_ev=1.11)


def test_import_is_cheap():
    # heavy libraries are imported lazily: importing the modules must not pull them in
    code = ("import sys, dmca_hpc.electronic.formfactor, dmca_hpc.electronic.kernels, dmca_hpc.electronic.matrix_elements;"
            "bad=[m for m in ('pyscf','numba','mpi4py','matplotlib') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fft_route_matches_aopair_route(bd):
    """FFT of u*u on the grid == analytic AO-pair Fourier transform + MO
    transform, at a k-pair without time-reversal symmetry (Gamma -> L) and a
    generic one (random coefficients at generic k, so no symmetry hides a
    sign error).  Tolerance 1e-6: the plane-wave expansion of the basis is
    cut at relative precision 1e-8 (amplitudes ~1e-8, we allow margin)."""
    from dmca_hpc.electronic.matrix_elements import GridEngine, aopair_matrix_elements, choose_mesh
    cell = bd.cell()
    mesh, info = choose_mesh(cell, 4.0, bd.kpts)
    eng = GridEngine(cell, mesh, info["G_wf"])
    rng = np.random.default_rng(7)
    cases = [(bd.kpts[0], bd.coeffs[0], bd.kpts[4], bd.coeffs[4]),
             (np.array([0.11, 0.23, -0.31]), rng.normal(size=(bd.nao, 3)) + 0j,
              np.array([-0.2, 0.05, 0.4]), rng.normal(size=(bd.nao, 2)) + 1j * rng.normal(size=(bd.nao, 2)))]
    for k, ck, kp, ckp in cases:
        M = eng.matrix_elements(k, ck, kp, ckp)
        sel = np.nonzero(np.linalg.norm(eng.Gv + kp - k, axis=1) < 4.0)[0][::29]
        ref = aopair_matrix_elements(cell, k, ck, kp, ckp, eng.Gv[sel])
        assert np.abs(M[:, :, sel] - ref).max() < 1e-6 * max(1.0, np.abs(ref).max())


def test_orthogonality_and_valence_charge(bd):
    """At q -> 0 (k' = k, G = 0) the matrix elements are the overlap matrix:
    1 on the diagonal, 0 between different bands (orthogonality, i.e. no
    spurious q -> 0 weight between valence and conduction), and the summed
    occupied norms give the valence electron count of the cell (8 for Si
    with GTH pseudopotentials: 4 valence electrons per atom)."""
    from dmca_hpc.electronic.matrix_elements import GridEngine, choose_mesh
    cell = bd.cell()
    mesh, info = choose_mesh(cell, 2.0, bd.kpts)
    eng = GridEngine(cell, mesh, info["G_wf"])
    g0 = int(np.argmin(np.linalg.norm(eng.Gv, axis=1)))
    charge = 0.0
    for k in range(bd.nk):
        u = eng.u_on_grid(bd.kpts[k], bd.coeffs[k])
        S = np.array([[eng.pair_fft(u[i], u[j:j + 1])[0, g0] for i in range(bd.nbands)]
                      for j in range(bd.nbands)])
        off = S - np.diag(np.diag(S))
        assert np.abs(off[bd.nocc:, :bd.nocc]).max() < 1e-7, "valence-conduction overlap"
        assert np.abs(off).max() < 1e-7
        assert np.abs(np.diag(S) - 1).max() < 1e-7
        charge += 2.0 / bd.nk * np.diag(S)[:bd.nocc].real.sum()
    assert cell.nelectron == 8
    assert charge == pytest.approx(cell.nelectron, rel=1e-8)


def test_wedge_equals_full_double_sum(bd, wedge_table, tmp_path):
    """k over the irreducible wedge (3 of 8 points) with its weights gives the
    full (k, k') double sum.  The two differ only by the numerical noise of
    the bands at symmetry-equivalent k (SCF converged to 1e-10 Ha), far below
    the 1e-7 relative tolerance."""
    from dmca_hpc.electronic.formfactor import compute_table, plan_units
    assert len(plan_units(bd, True, 8)) == 3 and len(plan_units(bd, False, 8)) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = compute_table(bd, small(use_symmetry=False), tmp_path, "h-full",
                             progress=False, gap_target_ev=1.11)
    a, b = wedge_table["f2"], full["f2"]
    assert a.sum() > 0
    assert np.abs(a - b).max() < 1e-7 * a.max()


def test_table_basic_physics(wedge_table):
    """No weight below the gap; the scissor moves the onset to 1.11 eV;
    f2 is finite and non-negative; the q -> 0 bin is empty (orthogonality)."""
    f2, eng = wedge_table["f2"], wedge_table["engine"]
    assert np.all(f2 >= 0) and np.all(np.isfinite(f2))
    assert eng.gap_ev == pytest.approx(1.11)
    e_lo = (np.arange(f2.shape[1])) * 1.0  # lower bin edges [eV]
    assert f2[:, e_lo + 1.0 <= 1.11].sum() == 0.0
    assert f2[0].sum() < 1e-12 * f2.max()


def test_bethe_f_sum_rule(bd, capsys):
    """sum_f (E_f - E_i) |<f|e^{iqr}|i>|^2 = q^2 / 2 (m_e = 1) for a complete
    set.  With the 4 conduction bands of gth-szv the ratio is below 1 and
    rises when bands are added (2 -> 4).  Valence-valence terms cancel in
    the average over +q and -q, so only conduction final states count."""
    from dmca_hpc.electronic.formfactor import bethe_sum_ratio
    r = bethe_sum_ratio(bd, [2, 4], n_shells=3)
    r2, r4 = r[2], r[4]
    shells = sorted(r4)
    assert len(shells) == 3
    with capsys.disabled():
        print("\nf-sum ratio (q [alpha m_e]: 2 bands, 4 bands):",
              {round(q, 3): (round(r2[q], 4), round(r4[q], 4)) for q in shells})
    for q in shells:
        assert 0 < r2[q] < r4[q] < 1.0, (q, r2[q], r4[q])


def test_round_trip_and_plot(bd, wedge_table, tmp_path):
    from dmca_hpc.electronic.formfactor import make_table
    from dmca_hpc.plots.electronic import plot_formfactor as plot_table
    from dmca_hpc.tables import read_table, write_table
    t = make_table(bd, wedge_table["engine"], wedge_table["f2"], small(), None, {"x": 1})
    p = write_table(tmp_path / "t.hdf5", t, input_hash="h")
    r = read_table(p)
    assert np.array_equal(r.f2, t.f2)
    assert (r.dq_ame, r.de_ev, r.gap_ev) == (t.dq_ame, t.de_ev, t.gap_ev)
    assert r.vcell_ev3 == t.vcell_ev3 and r.cell_mass_ev == t.cell_mass_ev
    assert r.metadata["kmesh"] == [2, 2, 2] and r.metadata["basis"] == "gth-szv"
    assert r.metadata["units"]["kpts"] == "bohr^-1"
    # cell mass: two Si atoms
    assert t.cell_mass_ev == pytest.approx(2 * 28.0855 * 931.494e6, rel=1e-4)
    import h5py
    with h5py.File(p) as f:
        def chk(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert "units" in obj.attrs, name
        f.visititems(chk)
    png = plot_table(t, tmp_path / "t.png")
    assert png.stat().st_size > 5000


_KILL_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
from dmca_hpc.electronic.bands import load_bands
from dmca_hpc.electronic.formfactor import settings, compute_table
s = settings({**%r, "kprime_block": 1})
compute_table(load_bands(sys.argv[1]), s, sys.argv[2], "h-kill", progress=False,
              gap_target_ev=1.11)
"""


def test_kill_and_restart_same_table(bd, si_bands, tmp_path):
    """A real kill -9 in the middle of a run, then a restart: finished units
    are reused, the rest recomputed, and the table equals an uninterrupted
    run to 1e-12 relative (in fact bitwise: the sum is in unit order)."""
    from dmca_hpc.electronic.formfactor import compute_table
    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT % (SMALL,), si_bands, str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "DMCA_HPC_MPI": "0"})
    t0 = time.time()
    while time.time() - t0 < 120:
        if len(list((work / "units").glob("unit-*.h5"))) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list((work / "units").glob("unit-*.h5")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = small(kprime_block=1)
        resumed = compute_table(bd, s, work, "h-kill", progress=False, gap_target_ev=1.11)
        fresh = compute_table(bd, s, tmp_path / "fresh", "h-kill", progress=False,
                              gap_target_ev=1.11)
    assert killed, "the run finished before it could be killed (machine too fast?)"
    assert 0 < resumed["n_reused"] < resumed["n_units"] == 24
    assert n_before >= resumed["n_reused"]
    ref = fresh["f2"]
    assert np.abs(resumed["f2"] - ref).max() <= 1e-12 * ref.max()


def test_analytic_route_resumes_to_the_same_table(bd, tmp_path):
    """The analytic route's units (one irreducible q each) go through the same
    checkpoint store as the FFT route's (whose real kill -9 is tested above; an
    analytic unit of this case takes ~0.1 s, too short to kill in): a lost unit
    file is recomputed, the others reused, and the table is bitwise the same."""
    from dmca_hpc.electronic.formfactor import compute_table
    s = small(route="analytic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = compute_table(bd, s, tmp_path / "w", "h-ana", progress=False, gap_target_ev=1.11)
        units = sorted((tmp_path / "w" / "units").glob("unit-*.h5"))
        assert len(units) == first["n_units"] >= 2
        units[1].unlink()
        again = compute_table(bd, s, tmp_path / "w", "h-ana", progress=False, gap_target_ev=1.11)
    assert again["n_reused"] == first["n_units"] - 1
    assert np.array_equal(again["f2"], first["f2"])


def test_run_stage_with_telemetry(bd, si_bands, tmp_path):
    from dmca_hpc.pipeline import make_context
    from dmca_hpc.stages import formfactor as ff_stage
    from dmca_hpc.materials import get_material
    from dmca_hpc.hpc.parallel import SerialComm
    job = {"formfactor": {**SMALL, "gap_ev": None}, "bands": {"kmesh": [2, 2, 2]}}
    ctx = make_context("formfactor", tmp_path, get_material("Si"), job,
                       outputs={"bands": {"bands": si_bands}}, comm=SerialComm())
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ff_stage.run_stage(ctx)
    assert Path(out["table"]).exists() and Path(out["plot"]).exists()
    from dmca_hpc.tables import read_table
    t = read_table(out["table"])
    assert t.gap_ev == pytest.approx(1.11)  # Si scissor gap from dmca_hpc.materials
    recs = [json.loads(l) for l in (tmp_path / "telemetry" / "rank-00000.jsonl").read_text().splitlines()]
    ff = [r for r in recs if r["hpc"]["stage"] == "formfactor"]
    assert len(ff) == 3
    assert all(r["physics"]["material"] == "Si" and r["physics"]["q_scan_points"] > 0
               and "form_factor_q0" in r["physics"] for r in ff)


def test_bad_input_named(bd, si_bands, tmp_path):
    from dmca_hpc.electronic.formfactor import Engine, FormFactorError, check_bands, settings
    from dmca_hpc.materials import get_material
    with pytest.raises(FormFactorError, match="material is 'Ge'"):
        check_bands(bd, get_material("Ge"))
    with pytest.raises(FormFactorError, match=r"kmesh \[2, 2, 2\].*bands.kmesh is \[4, 4, 4\]"):
        check_bands(bd, get_material("Si"), {"bands": {"kmesh": [4, 4, 4]}})
    with pytest.raises(ValueError, match="q_max = 6.000"):
        Engine(bd, small(mesh=[9, 9, 9]), 1.11)
    with pytest.warns(UserWarning, match="too few conduction bands"):
        Engine(bd, small(e_max=50.0), 1.11)
    with pytest.raises(FormFactorError, match="n_conduction = 9"):
        Engine(bd, small(n_conduction=9), 1.11)
    with pytest.raises(FormFactorError, match="unknown key"):
        settings({"qmax": 3})
    from dmca_hpc.electronic.bands import BandsFileError, load_bands
    import h5py
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["kpts"] = np.zeros((1, 3))
    with pytest.raises(BandsFileError, match="dataset 'kpts_frac' missing"):
        load_bands(bad)


def test_kernel_matches_numpy():
    """The Numba binning kernel equals a plain numpy histogram."""
    from dmca_hpc.electronic import kernels
    rng = np.random.default_rng(1)
    M = rng.normal(size=(5, 300)) + 1j * rng.normal(size=(5, 300))
    q = rng.uniform(0, 3, 300)
    idx, qb = kernels.q_bins(q, 0.1, 25)
    eb = kernels.e_bins(np.array([0.5, 2.2, -1.0, 9.9, 30.0]), 1.0, 10)
    assert list(eb) == [0, 2, -1, 9, -1]
    t = np.zeros((25, 10))
    kernels.bin_pair(t, M, idx, qb, eb, 0.5)
    ref = np.zeros((25, 10))
    kernels._numpy_kernel(ref, M, idx, qb, eb, 0.5)
    assert kernels.backend() == "numba"
    assert np.allclose(t, ref, rtol=1e-13, atol=0)


def test_cli_hook(si_bands, tmp_path):
    """``dmca-hpc formfactor`` hook (add_arguments / run_cli), in-process."""
    import argparse
    from dmca_hpc.cli import formfactor
    from dmca_hpc.tables import read_table
    p = argparse.ArgumentParser()
    formfactor.add_arguments(p)
    out = tmp_path / "si.hdf5"
    args = p.parse_args([si_bands, "--out", str(out), "--q-max", "4", "--dq", "0.5",
                         "--de", "2", "--e-max", "20", "--plot", str(tmp_path / "si.png")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert formfactor.run_cli(args) == 0
    t = read_table(out)
    assert t.f2.shape == (8, 10) and t.gap_ev == pytest.approx(1.11)
    assert (tmp_path / "si.png").exists()
    # --route picks the matrix-element route; the table records it (auto: fft on GTH)
    assert t.metadata["route"] == "fft"
    out2 = tmp_path / "si_ana.hdf5"
    args = p.parse_args([si_bands, "--out", str(out2), "--q-max", "4", "--dq", "0.5",
                         "--de", "2", "--e-max", "20", "--route", "analytic"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert formfactor.run_cli(args) == 0
    t2 = read_table(out2)
    assert t2.metadata["route"] == "analytic"
    # both routes are exact to their precision on a GTH basis (see the test below)
    assert np.allclose(t2.f2, t.f2, rtol=0, atol=1e-6 * t.f2.max())


def test_analytic_route_equals_fft_route(bd, wedge_table, tmp_path):
    """The analytic route (Gaussian plane-wave overlaps, no grid; q over the
    wedge against every k) and the FFT route (k over the wedge against every
    k') give the same table on a GTH basis, where both are exact to their
    precision (1e-8 on the AO matrices): agreement to 1e-6 of the largest bin
    is what that precision allows after squaring and summing ~1e3 terms."""
    from dmca_hpc.electronic.formfactor import compute_table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ana = compute_table(bd, small(route="analytic"), tmp_path / "ana", "h-ana",
                            progress=False, gap_target_ev=1.11)
        full = compute_table(bd, small(route="analytic", use_symmetry=False), tmp_path / "full",
                             "h-full", progress=False, gap_target_ev=1.11)
    ref = wedge_table["f2"]
    assert ana["engine"].route == "analytic" and wedge_table["engine"].route == "fft"
    assert ana["n_units"] == len(bd.ibz_index)          # one unit per irreducible q
    assert np.abs(ana["f2"] - ref).max() <= 1e-6 * ref.max()
    assert np.abs(full["f2"] - ana["f2"]).max() <= 1e-10 * ref.max()  # q-wedge = full q sum


def test_memory_beyond_the_machine_is_refused_with_numbers(bd):
    from dmca_hpc.electronic.formfactor import Engine, FormFactorError, check_memory
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = Engine(bd, small(), 1.11)
    check_memory(eng)  # the real machine: fine
    with pytest.raises(FormFactorError, match=r"needs about .* GiB per rank .* has 0.0001 GiB available"):
        check_memory(eng, available_bytes=0.0001 * 2 ** 30)


def test_huge_q_max_refused_before_the_engine_allocates(bd, tmp_path):
    """issue 17: q_max 1000 used to die in a bare MemoryError inside Engine() (the FFT
    grid for that q is ~2000^3 points), before check_memory could speak: the size-only
    estimate refuses it first, with the grid and the numbers."""
    from dmca_hpc.electronic.formfactor import FormFactorError, compute_table
    s = small()
    s["q_max"] = 1000.0
    with pytest.raises(FormFactorError, match=r"would need about .* GiB per rank .*FFT grid \d+x\d+x\d+"):
        compute_table(bd, s, tmp_path, "h", progress=False)
    assert not (tmp_path / "units").exists()


def test_bethe_ratio_same_by_both_routes(bd):
    from dmca_hpc.electronic.formfactor import bethe_sum_ratio
    fft = bethe_sum_ratio(bd, [4], q_targets=[1.0, 2.0], route="fft")[4]
    ana = bethe_sum_ratio(bd, [4], q_targets=[1.0, 2.0], route="analytic")[4]
    assert list(fft) == list(ana) and len(fft) == 2
    for q in fft:
        assert ana[q] == pytest.approx(fft[q], rel=1e-6, abs=1e-9)
