"""Dielectric function, Kramers-Kronig, sum rules and screening.

Reference numbers come from outside the team: the analytic Lorentz
oscillator, the f-sum (Bethe) rule, the QCDark Ge table (shared/reference),
the Cappellini et al. (1993) model-dielectric parameters QCDark uses for Ge,
and experimental eps_inf / plasmon energies (Si 11.7 / 16.7 eV; Ge 16.0 /
16.0 eV).
"""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dmca_hpc.response import DielectricError
from dmca_hpc.response import dielectric as D
from dmca_hpc.response import kramers_kronig as K
from dmca_hpc.response import qsampling as QS
from dmca_hpc.response import screening as S

ROOT = Path(__file__).resolve().parents[3]
GE_TABLE = ROOT.parent / "shared" / "reference" / "qcdark" / "Ge_final.hdf5"
SI_TABLE = ROOT / "dmca_hpc" / "data" / "tables" / "Si_gth.hdf5"

needs_ge = pytest.mark.skipif(not GE_TABLE.exists(), reason=f"QCDark Ge reference table absent ({GE_TABLE})")


@pytest.fixture(scope="module")
def ge_table():
    if not GE_TABLE.exists():
        pytest.skip(f"QCDark Ge reference table absent ({GE_TABLE})")
    from dmca_hpc.tables import read_table
    return read_table(GE_TABLE)


@pytest.fixture(scope="module")
def ge_eps(ge_table):
    return D.dielectric_from_table(ge_table)


# ---------------------------------------------------------------- Kramers-Kronig

@pytest.mark.parametrize("w0, gamma, wp", [(5.0, 1.0, 10.0), (4.0, 0.5, 16.0), (16.0, 3.0, 16.0)])
def test_kk_round_trip_lorentz_oscillator(w0, gamma, wp):
    """Im -> Re -> Im on the tables' bin-centre grid (0.05 eV bins to 100 eV)
    reproduces the analytic oscillator to 1e-3 of its peak (issue 8)."""
    w = (np.arange(2000) + 0.5) * 0.05
    eps = K.lorentz_oscillator(w, w0, gamma, wp)
    re = K.kk_real_from_imag(w, eps.imag)
    im = K.kk_imag_from_real(w, re)
    assert np.max(np.abs(re - eps.real)) / np.max(np.abs(eps.real - 1)) < 1e-3
    assert np.max(np.abs(im - eps.imag)) / np.max(eps.imag) < 1e-3


def test_kk_general_grid_converges():
    """The piecewise-linear closed-form kernel (any ascending grid) is second
    order: halving the step divides the error by about 4 (>= 3 asserted)."""
    errs = []
    for h in (0.2, 0.1):
        w = np.arange(h, 60.0 + h / 2, h)  # starts at h, not at h/2: general path
        eps = K.lorentz_oscillator(w, 5.0, 1.5, 10.0)
        re = K.kk_real_from_imag(w, eps.imag)
        errs.append(np.max(np.abs(re - eps.real)))
    assert errs[0] / errs[1] > 3.0


def test_f2_im_eps_relation_round_trip():
    q = (np.arange(50) + 0.5) * 0.02
    f2 = np.random.default_rng(1).random((50, 7))
    im = D.im_eps_from_f2(f2, q, 5.9e-9)
    np.testing.assert_allclose(D.f2_from_im_eps(im, q, 5.9e-9), f2, rtol=1e-12)


# ---------------------------------------------------------------- q sampling

@needs_ge
def test_fine_lattice_predicts_populated_bins(ge_table):
    """Every k'-k+G lies on the fine lattice sum n_i b_i/6: the bins it
    populates below 2 alpha m_e are exactly the non-zero bins of the QCDark
    file (bin 0 excepted: it holds the q = 0 point we exclude)."""
    n_disc, n_cont = QS.fine_lattice_counts(ge_table.metadata["a"], 6, ge_table.dq_ame, 100)
    nonzero = ge_table.f2[:100].sum(axis=1) > 0
    assert np.array_equal((n_disc > 0)[1:], nonzero[1:])
    # at large q the lattice fills the shells: count/continuum -> 1 on average
    n_disc, n_cont = QS.fine_lattice_counts(ge_table.metadata["a"], 6, ge_table.dq_ame, ge_table.nq)
    assert abs(n_disc[500:].sum() / n_cont[500:].sum() - 1) < 1e-3


@needs_ge
def test_kmesh_from_table_and_inferred(ge_table, ge_eps):
    assert ge_eps.meta["kmesh"] == [6, 6, 6]
    assert QS.infer_kmesh(ge_table.f2, ge_table.metadata["a"], ge_table.dq_ame) == 6


# ---------------------------------------------------------------- sum rules, Ge physics

@needs_ge
def test_fsum_rule_ge(ge_table, ge_eps):
    """f-sum: N_eff(50 eV) = (m V/(2 pi^2 alpha)) int w Im eps dw.

    QCDark Ge is all-electron: numval = 32 occupied orbitals = 64 electrons
    per cell, of which 8 are 4s4p valence and 20 are 3d (binding ~29 eV).  Up
    to 50 eV the spectrum must exhaust (almost) the 8 valence electrons and
    part of the 3d, but not more than 4s4p + 3d = 28, and the ratio to all 64
    electrons is < 1 (finite conduction bands and a 50 eV window)."""
    numval = int(ge_table.metadata["numval"])
    assert numval == 32
    neff = D.n_eff(ge_eps.e_ev, ge_eps.eps0_im, ge_eps.vcell_ev3)
    ratio_all = D.fsum_ratio(ge_eps.e_ev, ge_eps.eps0_im, ge_eps.vcell_ev3, 2 * numval)
    print(f"Ge N_eff(50 eV) = {neff[-1]:.2f} electrons/cell; f-sum ratio vs 64 e = {ratio_all:.3f}, "
          f"vs 8 valence e = {neff[-1] / 8:.3f}")
    assert np.all(np.diff(neff) >= 0)
    assert 0.9 * 8 < neff[-1] < 28
    assert ratio_all < 1.0


@needs_ge
def test_fsum_independent_of_q(ge_eps):
    """The Bethe sum rule holds at every q: N_eff over the populated bins with
    q <= 0.9 alpha m_e (Bethe ridge q^2/2m <= 11 eV, well inside the 50 eV
    window) must be q independent.  Without the fine-lattice sampling
    correction single shells are off by factors of 2-10; with it the spread
    is ~+-6%; 15% allows for 3d strength moving above 50 eV as q grows."""
    sel = np.nonzero(ge_eps.populated & (ge_eps.q_ame <= 0.9))[0]
    ne = np.array([D.n_eff(ge_eps.e_ev, ge_eps.eps_im[i], ge_eps.vcell_ev3)[-1] for i in sel])
    assert ne.max() / ne.min() < 1.15


@needs_ge
def test_ge_static_eps_matches_cappellini_model_at_finite_q(ge_eps):
    """eps(q, 0) in the populated bins 0.3 <= q <= 0.9 alpha m_e against the
    Cappellini et al. (1993) model with QCDark's Ge parameters (eps0 = 14,
    q_TF = 3.99 keV, w_p = 15.2 eV, alpha = 1.563), numbers nobody on this
    team chose.  Measured: 2-10% at q <= 0.5, growing to ~20% at q = 0.9
    (ours higher).  The 25% bound was set after seeing these numbers: this is
    a regression guard (a sampling-correction or normalization error moves
    eps(q, 0) by factors of 2 or more), not a precision claim; the 10% check
    below covers the lowest shells, where screening matters most."""
    from dmca_hpc import units as U
    sel = np.nonzero(ge_eps.populated & (ge_eps.q_ame >= 0.3) & (ge_eps.q_ame <= 0.9))[0]
    ours = np.array([K.kk_real_at_zero(ge_eps.e_ev, ge_eps.eps_im[i], "power", 3.0) for i in sel])
    model = S.tf_epsilon(ge_eps.q_ame[sel] * U.ALPHA_ME_EV, 0.0, "Ge")
    dev = ours / model - 1
    print("q, eps_ours, eps_model:", np.round(np.c_[ge_eps.q_ame[sel], ours, model], 3).tolist())
    assert np.max(np.abs(dev)) < 0.25
    assert np.max(np.abs(dev[ge_eps.q_ame[sel] <= 0.5])) < 0.10


@needs_ge
@pytest.mark.xfail(strict=True, reason=(
    "QCDark Ge table (6x6x6 k mesh, PBE0 + scissor 0.67 eV, RPA without local fields): "
    "eps(q->0, 0) extrapolated from shells at q >= 0.17 alpha m_e is ~10.7 (spectrum KK: "
    "~10.2), 33% below the experimental 16.0; eps(q, 0) already halves by the first shell. "
    "Expected to pass with a velocity-matrix-element optical limit or a denser mesh."))
def test_ge_static_dielectric_constant_vs_experiment(ge_eps):
    eps0 = ge_eps.static_dielectric_constant()
    print(f"Ge eps0 (fit) = {eps0:.2f}, spectrum = {ge_eps.static_dielectric_constant('spectrum'):.2f}")
    assert abs(eps0 / 16.0 - 1) < 0.15


@needs_ge
@pytest.mark.xfail(strict=True, reason=(
    "QCDark Ge table gives an optical ELF peak at ~18.6 eV (~18% above the measured 16.0 eV): "
    "the too-small eps at low w (see eps0) screens the plasmon less; the ELF peak of the "
    "first populated shells (q = 0.17-0.43) sits at 17.8-19 eV as well."))
def test_ge_plasmon_vs_experiment(ge_eps):
    assert abs(ge_eps.plasmon_peak_ev() / 16.0 - 1) < 0.15


def _si_table():
    if not SI_TABLE.exists():
        pytest.skip(f"no Si form-factor table yet ({SI_TABLE}); the form-factor helper ships it")
    from dmca_hpc.tables import read_table
    return read_table(SI_TABLE)


def test_si_static_dielectric_constant():
    """Issue 8: eps(q->0, 0) of Si within 15% of the experimental 11.7."""
    d = D.dielectric_from_table(_si_table())
    eps0 = d.static_dielectric_constant()
    print(f"Si eps0 = {eps0:.2f} (spectrum {d.static_dielectric_constant('spectrum'):.2f})")
    assert abs(eps0 / 11.7 - 1) < 0.15


@pytest.mark.xfail(strict=True, reason=(
    "shipped Si table (gth-dzvp, 6x6x6): ELF peak at 20.9 eV (19.3 eV if eps rather than the "
    "ELF is broadened by 1 eV) vs the measured 16.7 eV; Re eps(q->0) does cross zero near 16 eV, "
    "but the coarse mesh leaves Im eps spiky between 14 and 22 eV and the q->0 limit is "
    "extrapolated from q >= 0.17 alpha m_e. Same direction as Ge on QCDark's table (18.6 vs 16.0). "
    "This is the table-only route (peer tables); with the DFT states the optical limit "
    "comes from density matrix elements and passes: tests/test_optical.py (17.9 eV)."))
def test_si_plasmon_peak():
    """Bulk plasmon of Si from the table-only q -> 0 extrapolation (15%, as eps0)."""
    d = D.dielectric_from_table(_si_table())
    assert abs(d.plasmon_peak_ev() / 16.7 - 1) < 0.15


# Im eps from matrix elements vs from |f|^2: tests/test_optical.py


# ---------------------------------------------------------------- screening

def test_tf_model_values():
    """Static long-wavelength limit returns eps0; eps decreases with q."""
    e = S.tf_epsilon(np.array([1e-6, 3.99e3, 2e4]), 0.0, "Si")
    assert abs(e[0] - 11.3) < 1e-6
    assert np.all(np.diff(e) < 0) and e[-1] > 1.0
    with pytest.raises(DielectricError, match="GaAs"):
        S.tf_epsilon(1.0, 1.0, "GaAs")


@needs_ge
def test_screening_factor_shapes_and_limits(ge_table, ge_eps):
    s_rpa = S.screening_factor(ge_eps, ge_table.q_ame, ge_table.e_ev, "rpa")
    s_tf = S.screening_factor(ge_eps, ge_table.q_ame, ge_table.e_ev, "tf")
    s_none = S.screening_factor(ge_eps, model="none")
    assert s_rpa.shape == s_tf.shape == s_none.shape == ge_table.f2.shape
    assert np.all(np.isfinite(s_rpa)) and np.all(s_rpa > 0)
    # at large q both screenings vanish (|eps| -> 1)
    assert abs(s_rpa[-1, 100] - 1) < 1e-2 and abs(s_tf[-1, 100] - 1) < 1e-2
    # at q ~ 0.5 alpha m_e and low E both models give |eps|^2 of order (eps(q,0))^2 ~ 10
    i = np.searchsorted(ge_table.q_ame, 0.5)
    assert 0.6 < s_rpa[i, 5] / s_tf[i, 5] < 1.6
    with pytest.raises(DielectricError, match="rpa"):
        S.screening_factor(ge_eps, model="lindhard")


# ---------------------------------------------------------------- files, stage

@needs_ge
def test_write_read_units(tmp_path, ge_eps):
    import h5py
    p = D.write_dielectric(tmp_path / "d.h5", ge_eps, input_hash="abc")
    with h5py.File(p) as f:
        missing = []
        f.visititems(lambda n, o: missing.append(n) if isinstance(o, h5py.Dataset)
                     and "units" not in o.attrs else None)
        assert not missing
        assert f.attrs["complete"]
    back = D.read_dielectric(p)
    np.testing.assert_array_equal(back.eps_im, ge_eps.eps_im)
    np.testing.assert_array_equal(back.eps0_re, ge_eps.eps0_re)
    s = S.screening_factor(str(p), model="rpa")
    assert s.shape == ge_eps.eps_im.shape


def test_read_dielectric_bad_file(tmp_path):
    import h5py
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["q"] = [1.0]
    with pytest.raises(DielectricError, match="'E' missing"):
        D.read_dielectric(p)


@needs_ge
def test_run_stage_writes_outputs_and_telemetry(tmp_path):
    import jsonschema
    from dmca_hpc.stages.dielectric import run_stage
    from dmca_hpc.hpc.parallel import SerialComm
    from dmca_hpc.monitoring.telemetry import Telemetry
    from dmca_hpc.materials import get_material
    tel = Telemetry(tmp_path / "tel", rank=0, job_id="t")
    ctx = SimpleNamespace(job={"dielectric": {"n_masses": 40}}, material=get_material("Ge"),
                          stage_dir=tmp_path, input_hash="h", outputs={"formfactor": {"table": str(GE_TABLE)}},
                          comm=SerialComm(), telemetry=tel, prov={"x": 1}, seed=1)
    outs = run_stage(ctx)
    for k in ("dielectric", "dielectric_plot", "absorption_plot"):
        assert Path(outs[k]).exists(), k
    rec = json.loads((tmp_path / "tel" / "rank-00000.jsonl").read_text().splitlines()[-1])
    phys = rec["physics"]
    assert 1e-18 < phys["darkphoton_epsilon"] < 1e-12
    assert 1e-14 < phys["axion_coupling"] < 1e-8
    schema = json.loads((ROOT / "config" / "telemetry.schema.json").read_text())
    jsonschema.validate(rec, schema)


def test_stage_records_add_up_to_its_wall_time(tmp_path):
    """The stage's telemetry records (the optical-limit units and rank 0's last
    record) sum to no more than the stage's wall time measured around run_stage
    (+5 %, one rank): the last record leaves the optical units out instead of
    counting them a second time.  Real Si states: gth-szv SCF on 2x2x2 at 20
    hartree (a few seconds), optical limit on 2x2x2 (one unit of about 2 s in a
    stage of about 6 s on a loaded core: counted twice, it would overshoot the
    bound by about 30 %)."""
    import time
    import warnings
    from dmca_hpc.hpc.parallel import SerialComm
    from dmca_hpc.materials import get_material
    from dmca_hpc.pipeline import make_context
    from dmca_hpc.stages import dft as dft_stage
    from dmca_hpc.stages.dielectric import run_stage
    mat = get_material("Si")
    job = {"dft": {"basis": "gth-szv", "kmesh": [2, 2, 2], "ke_cutoff_hartree": 20.0, "pyscf_verbose": 0},
           "dielectric": {"optical_route": "states", "optical_kmesh": [2, 2, 2], "absorption": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scf = dft_stage.run_stage(make_context("dft", tmp_path, mat, job, comm=SerialComm()))["scf"]
    ctx = make_context("dielectric", tmp_path, mat, job, comm=SerialComm(),
                       outputs={"formfactor": {"table": str(SI_TABLE)}, "dft": {"scf": scf}})
    n_before = len((tmp_path / "telemetry" / "rank-00000.jsonl").read_text().splitlines())
    t0 = time.perf_counter()
    run_stage(ctx)
    wall = time.perf_counter() - t0
    lines = (tmp_path / "telemetry" / "rank-00000.jsonl").read_text().splitlines()[n_before:]
    recs = [json.loads(line) for line in lines]
    assert {r["hpc"]["stage"] for r in recs} == {"dielectric"}
    units = [r["hpc"]["unit"] for r in recs]
    assert units[-1] == "Si" and units[:-1] and all(":optical:" in u for u in units[:-1]), units
    total = sum(r["hpc"]["wall_seconds"] for r in recs)
    print(f"dielectric stage {wall:.2f} s, {len(recs)} records summing to {total:.2f} s")
    assert total <= 1.05 * wall, (total, wall)
    # the last record still times the rest of the stage (eps(q, w), files, plots)
    assert recs[-1]["hpc"]["wall_seconds"] > 0.2 * wall
    assert recs[-1]["physics"]["computation_time_sec"] == pytest.approx(recs[-1]["hpc"]["wall_seconds"], rel=1e-3)


def test_run_stage_rejects_unknown_key(tmp_path):
    """The stage's defaults come from dmca_hpc.settings: a misspelt key is a
    DielectricError naming the section and the key."""
    from dmca_hpc.hpc.parallel import SerialComm
    from dmca_hpc.stages.dielectric import run_stage
    ctx = SimpleNamespace(job={"dielectric": {"optical_bin": 3}}, material=None, stage_dir=tmp_path,
                          input_hash="h", outputs={}, comm=SerialComm(), telemetry=None, prov={},
                          seed=1)
    with pytest.raises(DielectricError, match=r"dielectric: unknown key\(s\) \['optical_bin'\]"):
        run_stage(ctx)


def test_import_is_light():
    mods = ("dmca_hpc.response.dielectric", "dmca_hpc.response.kramers_kronig",
            "dmca_hpc.response.qsampling", "dmca_hpc.response.screening",
            "dmca_hpc.response.optical", "dmca_hpc.detection.absorption",
            "dmca_hpc.plots.response", "dmca_hpc.stages.dielectric")
    code = (f"import sys, {', '.join(mods)}; "
            "print(any(m in sys.modules for m in ('h5py', 'matplotlib', 'mpi4py', 'pyscf', 'numba')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
