"""Preflight (dmca_hpc/stages/preflight.py): estimates of memory, disk and time per stage,
and the refusal of what cannot finish, before any stage runs.  No DFT runs here: the
estimates come from sizes (cells, meshes, bands) and synthetic telemetry."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli
from dmca_hpc import pipeline
from dmca_hpc.config import load_job
from dmca_hpc.stages import preflight as pf

QUICKSTART = (ROOT / "jobs" / "quickstart.yaml").read_text()
STAGE_DIRS = ("Si", "global")


def quickstart(tmp_path, name="job.yaml", **replace):
    """The quickstart job file (copied into tmp_path) with some lines replaced."""
    text = QUICKSTART
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / name
    p.write_text(text)
    return p


def roomy(**kw):
    """Limits of a machine with 64 GiB available and 1 TiB free, or as given."""
    d = dict(available_memory_bytes=64 * pf.GIB, ranks_per_node=1, out_dir="/out",
             out_free_bytes=1024 * pf.GIB, scratch_dir="/tmp", scratch_free_bytes=1024 * pf.GIB,
             same_filesystem=True, max_hours=None, ranks=1)
    d.update(kw)
    return pf.Limits(**d)


def by_label(est):
    return {e.label: e for e in est}


def assert_nothing_written(out):
    assert not Path(out).exists() or not any((Path(out) / d).exists() for d in STAGE_DIRS), \
        sorted(p.name for p in Path(out).iterdir())


# --------------------------------------------------------------------------- refusals

def test_bands_kmesh_200_refused_by_validate_and_run_before_any_stage(tmp_path):
    job = quickstart(tmp_path, **{"kmesh: [4, 4, 4]": "kmesh: [200, 200, 200]"})
    out = tmp_path / "out"
    r = run_cli("validate", job, "--out", out, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    refused = [l for l in r.stdout.splitlines() if l.startswith(f"{job}: bands.kmesh: ")]
    assert refused and "Traceback" not in r.stdout + r.stderr, r.stdout
    # the numbers: the form factor's 1.67e11 units of (k, 8 k') against 8e6 k, in GiB
    ff = next(l for l in refused if "Si/formfactor" in l)
    assert "1.67e+11 units" in ff and "GiB" in ff and "available" in ff, ff
    assert "Si/bands" in r.stdout and "Si/formfactor" in r.stdout  # the table
    r = run_cli("run", job, "--out", out, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all(l.startswith(f"{job}: ") for l in lines), lines
    assert any(l.startswith(f"{job}: bands.kmesh: Si/formfactor cannot finish: memory ") for l in lines)
    assert_nothing_written(out)


def test_dft_kmesh_200_is_refused_by_its_k_mesh_matrices(tmp_path):
    job = load_job(quickstart(tmp_path, **{"kmesh: [2, 2, 2]": "kmesh: [200, 200, 200]"}))
    est = by_label(pf.estimate_job(job))
    dft = est["Si/dft"]
    # ten [nk, nao, nao] complex copies of 8e6 k x 8 AOs: 16 B x 8e6 x 64 = 7.63 GiB each
    assert dft.memory_bytes > 10 * 16 * 8e6 * 64
    assert dft.keys["memory"] == "dft.kmesh"
    lines = pf.check(list(est.values()), roomy(available_memory_bytes=64 * pf.GIB), "J")
    assert lines[0].startswith("J: dft.kmesh: Si/dft cannot finish: memory ") and "7.63 GiB each" in lines[0]
    # the default 2x2x2 fits the same machine
    small = pf.estimate_job(load_job(quickstart(tmp_path, "small.yaml")))
    assert pf.check(small, roomy(), "J") == []


def test_dft_kmesh_200_refused_by_validate_and_run(tmp_path):
    if pf.available_memory_bytes() > 90 * pf.GIB:
        pytest.skip("this machine could hold the 80 GiB of a 200^3 SCF")
    job = quickstart(tmp_path, **{"kmesh: [2, 2, 2]": "kmesh: [200, 200, 200]"})
    out = tmp_path / "out"
    r = run_cli("validate", job, "--out", out, timeout=300)
    assert r.returncode == 2 and f"{job}: dft.kmesh: Si/dft cannot finish: memory " in r.stdout, r.stdout
    r = run_cli("run", "--set", "dft.kmesh=[200,200,200]", "--out", out, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "quickstart.yaml: dft.kmesh: Si/dft cannot finish: memory 80" in r.stderr, r.stderr
    assert_nothing_written(out)


def test_formfactor_q_max_1000_refused_before_dft(tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", "--set", "formfactor.q_max=1000", "--out", out, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    line = next(l for l in r.stderr.splitlines() if "Si/formfactor" in l)
    # the FFT grid that resolves q <= 1000 alpha m_e: thousands of points per axis
    assert ": formfactor.q_max: Si/formfactor cannot finish: memory " in line, line
    mesh = [int(x) for x in line.split("FFT grid ")[1].split(" ")[0].split("x")]
    assert min(mesh) > 1000, line
    assert "[Si/dft] running" not in r.stdout and "Si/dft" not in r.stderr
    assert_nothing_written(out)


def test_max_hours_refuses_the_quickstart_by_its_time(tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", "--max-hours", "0.001", "--out", out, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all("> --max-hours 0.001" in l and " time " in l for l in lines), lines
    assert any(": bands.kmesh: Si/formfactor cannot finish: time " in l for l in lines), lines
    assert_nothing_written(out)
    r = run_cli("run", "--max-hours", "0", "--out", out, timeout=120)
    assert r.returncode == 2 and "--max-hours 0: expected a number of hours > 0" in r.stderr


def test_quickstart_passes_at_defaults(tmp_path):
    out = tmp_path / "out"
    r = run_cli("validate", ROOT / "jobs" / "quickstart.yaml", "--out", out, "--ranks", "2", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0].endswith(f"valid; estimate on 2 rank(s) for {out}:")
    for label in ("Si/materials", "Si/dft", "Si/bands", "Si/formfactor", "Si/dielectric",
                  "Si/rates", "global/nuclear"):
        row = next(l for l in r.stdout.splitlines() if l.split()[:1] == [label])
        assert row.split()[-1] == "model", row
    assert "memory/rank [GiB]" in r.stdout and "disk [GiB]" in r.stdout and "time [h]" in r.stdout
    assert not out.exists()
    job = load_job(ROOT / "jobs" / "quickstart.yaml")
    est = pf.estimate_job(job, ranks=2)
    assert pf.check(est, roomy(ranks=2, ranks_per_node=2), "J") == []
    # and what is estimated is of the size the quickstart measures (README): memory
    # 0.1-0.3 GiB per rank, about 25 MB on disk, about a minute on one rank
    assert max(e.memory_bytes for e in est) < 0.5 * pf.GIB
    assert 10e6 < sum(e.disk_bytes for e in est) < 60e6
    assert 20 < sum(e.time_s for e in pf.estimate_job(job, ranks=1)) < 200


# --------------------------------------------------------------------------- telemetry

def write_bands_telemetry(directory, wall_s, n_mesh=16, n_path=15, chunk=4):
    """Unit records as the bands stage writes them, through Telemetry itself."""
    from dmca_hpc.monitoring.telemetry import Telemetry
    from dmca_hpc.stages.registry import STAGE_DMCA
    t = Telemetry(directory, rank=0, job_id="quickstart", stage_dmca=STAGE_DMCA)
    for kind, n in (("mesh", n_mesh), ("path", n_path)):
        for i in range(n):
            s = i * chunk
            t.record("bands", f"Si:{kind}:{s}-{s + chunk}", "ok", wall_s, wall_s, 150.0,
                     physics={"material": "Si", "kpts": chunk})
    t.record("bands", "Si:merge", "ok", 3.0, 3.0, 160.0, physics={"material": "Si", "kpts": [4, 4, 4]})
    t.record("bands", "Si:mesh:0-4", "skipped", 0.0, 0.0, 150.0, physics={"material": "Si"})


def test_measured_unit_costs_replace_the_model(tmp_path):
    job = load_job(ROOT / "jobs" / "quickstart.yaml")
    out = tmp_path / "out"
    write_bands_telemetry(out / "telemetry", wall_s=10.0)
    model = by_label(pf.estimate_job(job))["Si/bands"]
    est = by_label(pf.estimate_job(job, run_dir=out))
    b = est["Si/bands"]
    # 31 units (the merge measures another mesh's merge, the skipped unit did no work)
    assert b.how == "measured, 31 units" and model.how == "model"
    assert b.model_time_s == model.model_time_s
    fixed = model.model_time_s - 31 * unit_model_s()  # the merge: not calibrated
    assert 0 < fixed < 10
    assert b.time_s == pytest.approx(31 * 10.0 + fixed, rel=1e-6)
    assert est["Si/formfactor"].how == "model"  # no records of it
    # the same costs on 2 ranks: dynamic dispatch of 31 units of 10 s
    b2 = by_label(pf.estimate_job(job, ranks=2, run_dir=out))["Si/bands"]
    assert b2.time_s == pytest.approx(16 * 10.0 + fixed, rel=0.01)
    # and a 200^3 mesh with the measured cost per k: 2,000,015 units of 10 s
    big = load_job(quickstart(tmp_path, **{"kmesh: [4, 4, 4]": "kmesh: [200, 200, 200]"}))
    bb = by_label(pf.estimate_job(big, run_dir=out))["Si/bands"]
    assert bb.units == 2_000_015 and bb.how == "measured, 31 units"
    assert bb.time_s == pytest.approx(2_000_015 * 10.0, rel=0.01)
    r = run_cli("validate", ROOT / "jobs" / "quickstart.yaml", "--out", out, timeout=300)
    row = next(l for l in r.stdout.splitlines() if l.split()[:1] == ["Si/bands"])
    assert row.endswith("measured, 31 units"), row
    assert float(row.split()[3]) == pytest.approx(b.time_s / 3600, rel=0.01)


def test_calibration_reads_telemetry_as_collect_does(tmp_path, monkeypatch):
    """The calibration uses the records ``dmca-hpc collect`` counts: a replayed line
    (a stream's seq read again) once, no plaintext line of an encrypted file, and
    the stage filter still applies."""
    import base64
    job = load_job(ROOT / "jobs" / "quickstart.yaml")
    out = tmp_path / "out"
    write_bands_telemetry(out / "telemetry", wall_s=10.0)
    want = by_label(pf.estimate_job(job, run_dir=out))["Si/bands"]
    assert want.how == "measured, 31 units"
    rank0 = out / "telemetry" / "rank-00000.jsonl"
    lines = rank0.read_bytes().splitlines(keepends=True)
    rank0.write_bytes(b"".join(lines + lines[:10]))  # 10 lines replayed
    got = by_label(pf.estimate_job(job, run_dir=out))["Si/bands"]
    assert (got.how, got.time_s) == (want.how, want.time_s)
    assert len(pf.read_unit_records(out / "telemetry")["bands"]) == 32  # 31 units + the merge
    assert pf.read_unit_records(out / "telemetry", stage="dft") == {}

    # encrypted telemetry with plaintext lines appended: 20 units of 1000 s, unauthenticated
    from dmca_hpc.monitoring.telemetry import Telemetry
    from dmca_hpc.stages.registry import STAGE_DMCA
    key = bytes(range(32))
    monkeypatch.setenv("DMCA_TELEMETRY_KEY", base64.b64encode(key).decode())
    enc = tmp_path / "enc"
    t = Telemetry(enc / "telemetry", rank=0, job_id="q", key=key, stage_dmca=STAGE_DMCA)
    for i in range(31):
        t.record("bands", f"Si:mesh:{4 * i}-{4 * i + 4}", "ok", 10.0, 10.0, 150.0,
                 physics={"material": "Si", "kpts": 4})
    forged = Telemetry(enc / "telemetry", rank=0, job_id="q", stage_dmca=STAGE_DMCA)
    for i in range(20):
        forged.record("bands", f"Si:mesh:{4 * i}-{4 * i + 4}", "ok", 1000.0, 1000.0, 150.0,
                      physics={"material": "Si", "kpts": 4})
    ejob = {**job, "telemetry": {**(job.get("telemetry") or {}), "encrypt": True}}
    recs = pf.read_unit_records(enc / "telemetry", key)["bands"]
    assert len(recs) == 31 and {r["wall_s"] for r in recs} == {10.0}
    e = by_label(pf.estimate_job(ejob, run_dir=enc))["Si/bands"]
    # the same 31 units of 4 k at 10 s: the same calibration (the forged ones would raise it ~60x)
    assert e.how == "measured, 31 units" and e.time_s == pytest.approx(want.time_s, rel=1e-9)


def unit_model_s():
    """Model seconds of one quickstart bands unit (4 k of Si gth-szv at 10 hartree)."""
    from dmca_hpc.electronic.bands import time_per_k
    from dmca_hpc.electronic.scf import build_cell, section_with_defaults
    from dmca_hpc.materials import get_material
    cell = build_cell(get_material("Si").atoms(), section_with_defaults(
        {"basis": "gth-szv", "ke_cutoff_hartree": 10.0}))
    return 4 * time_per_k(int(np.prod(cell.mesh)), cell.nao_nr())


def test_current_stages_cost_nothing():
    job = load_job(ROOT / "jobs" / "quickstart.yaml")
    est = pf.estimate_job(job, current={"Si/formfactor"})
    e = by_label(est)["Si/formfactor"]
    assert e.how == "current" and e.time_s == 0 and e.disk_bytes == 0
    lines = pf.check(est, roomy(out_free_bytes=1e5), "J")  # 100 kB free: bands' files do not fit
    assert any(l.startswith("J: bands.kmesh: Si/bands cannot finish: disk ") for l in lines), lines
    assert not any("Si/formfactor" in l for l in lines)


# --------------------------------------------------------------------------- the models

@pytest.fixture(scope="module")
def si_szv():
    from dmca_hpc.electronic.scf import build_cell, section_with_defaults
    from dmca_hpc.materials import get_material
    atoms = get_material("Si").atoms()
    return atoms, build_cell(atoms, section_with_defaults({"basis": "gth-szv", "ke_cutoff_hartree": 10.0}))


def test_formfactor_estimate_is_the_engines_bound(si_szv):
    """The estimate counts what Engine.memory_bound_mb (check_memory's figure) counts,
    on the grid Engine chooses from the whole mesh: built here on synthetic bands."""
    from dmca_hpc.electronic.bands import BandData
    from dmca_hpc.electronic.formfactor import Engine, estimate_formfactor, settings
    from dmca_hpc.electronic.symmetry import irreducible_mesh, mesh_frac
    atoms, cell = si_szv
    km = (4, 4, 4)
    frac = mesh_frac(km)
    nk, nao, nocc = len(frac), cell.nao_nr(), 4
    ibz = irreducible_mesh(atoms, km)
    e = np.sort(np.random.default_rng(0).uniform(-0.4, 0.0, (nk, nao)), axis=1)
    e[:, nocc:] += 0.6  # a gap
    bd = BandData(path="synthetic", cell_dump=cell.dumps(), material="Si", xc="PBE", basis="gth-szv",
                  nocc=nocc, nbands=nao, kmesh=km, kpts_frac=frac, kpts=cell.get_abs_kpts(frac),
                  energies=e, coeffs=np.zeros((nk, nao, nao), complex), ibz_index=ibz.ibz_index,
                  ibz_weight=ibz.ibz_weight, full_to_ibz=ibz.full_to_ibz)
    for over in ({"q_max": 10.0}, {"q_max": 20.0, "kprime_block": 4}):
        s = settings({"e_max": 20.0, **over})
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eng = Engine(bd, s, gap_target_ev=1.11)
        est = estimate_formfactor(cell, s, km, nao, nocc, len(ibz.ibz_index))
        assert est["mesh"] == list(eng.mesh)  # the 8 corners give the mesh's grid
        assert est["engine_bytes"] == pytest.approx(eng.memory_bound_mb * 2 ** 20, rel=1e-12)
        assert est["units"] == len(eng.plan_units())
        assert est["memory_bytes"] > est["engine_bytes"]


def test_checkpoint_sizes_match_files_written(tmp_path):
    """A bands unit file and a zero partial table written by the stages' own writers."""
    from dmca_hpc.electronic.bands import unit_file_bytes
    from dmca_hpc.electronic.formfactor import _save_unit, unit_checkpoint_bytes
    from dmca_hpc.hpc.checkpoint import UnitStore
    st = UnitStore(tmp_path / "b", "h")
    chunk, nao, nb = 4, 26, 26
    p = st.save(0, {"energies": np.zeros((chunk, nb)), "coeffs": np.ones((chunk, nao, nb), complex),
                    "k_index": np.arange(chunk)}, {"energies": "hartree", "coeffs": "1", "k_index": "1"},
                attrs={"kind": "mesh", "start": 0, "stop": chunk})
    model = unit_file_bytes(chunk * (8 * nb + 16 * nao * nb + 8), 3)
    assert p.stat().st_size == pytest.approx(model, rel=0.1)
    st = UnitStore(tmp_path / "f", "h")
    _save_unit(st, 0, np.zeros((1000, 500)), {"pairs": 8})
    size = st.path(0).stat().st_size
    assert size / 2 < unit_checkpoint_bytes(1000, 500, 0, 0) < size * 2
    assert unit_checkpoint_bytes(1000, 500, 100, 100) == 6144 + 8 * 1000 * 500  # at most dense


def test_scf_and_bands_models_scale_with_the_mesh(si_szv):
    from dmca_hpc.electronic.bands import estimate_bands
    from dmca_hpc.electronic.scf import estimate_scf, section_with_defaults
    _atoms, cell = si_szv
    e2 = estimate_scf(cell, section_with_defaults({"basis": "gth-szv", "kmesh": [2, 2, 2]}))
    e4 = estimate_scf(cell, section_with_defaults({"basis": "gth-szv", "kmesh": [4, 4, 4]}))
    assert e2["matrix_bytes"] == 16 * 8 * 8 ** 2 and e4["matrix_bytes"] == 8 * e2["matrix_bytes"]
    assert e4["time_s"] > e2["time_s"] and e2["density_fit"] == "FFTDF" and e2["scratch_bytes"] == 0
    # PySCF keeps DIIS vectors of more than 1e7 elements in its scratch directory
    big = estimate_scf(cell, section_with_defaults({"basis": "gth-szv", "kmesh": [60, 60, 60]}))
    assert big["scratch_bytes"] == 2 * 8 * big["matrix_bytes"] and not big["diis_in_memory"]
    b = estimate_bands(64, 64, 60, 4, 8, 8, 8, 2197)
    assert b["units"] == 31  # as the quickstart's telemetry shows
    assert b["checkpoint_bytes"] == pytest.approx(31 * 14336, rel=0.05)  # measured file size


def test_irreducible_counts(si_szv):
    atoms, _cell = si_szv
    # the quickstart's comments: 8 of 64 k, 29 of the 8x8x8 optical mesh
    assert pf._n_irreducible(atoms, [4, 4, 4]) == 8
    assert pf._n_irreducible(atoms, [8, 8, 8]) == 29
    n = pf._n_irreducible(atoms, [200, 200, 200])  # above EXACT_WEDGE_MAX_K: N_k / 48
    assert n == math.ceil(8e6 / 48)


# --------------------------------------------------------------------------- analytic time model

def _kept_products(eng, q, Qv):
    """The kernel's own count per Q of the factorized route: Cartesian products of the
    extended primitive pairs (shell pairs I <= J) its screening keeps, from a plan's
    tabulated maxima (pcmax * prod_d fmax_d >= eps, as eval_factorized tests)."""
    plan = eng._plan_factorized(np.stack([np.zeros(3), -q]), Qv)
    B = eng.basis
    pa, pb, loc = plan["pa"], plan["pb"], plan["local"]
    nc = lambda l: (l + 1) * (l + 2) // 2  # noqa: E731
    f, qi = plan["fmax"], plan["qidx"]
    bound = plan["pcmax"][:, None] * f[:, 0, qi[:, 0]] * f[:, 1, qi[:, 1]] * f[:, 2, qi[:, 2]]
    kept = bound >= eng.eps
    w = nc(B.l[pa]) * nc(B.l[pb])
    return plan["nchi"] * float((w[:, None] * kept)[~loc].sum()) / len(Qv), qi


@pytest.mark.parametrize("q_max", [4.0, 10.0])
def test_analytic_ao_work_counts_what_the_kernel_keeps(q_max):
    """analytic_ao_work's screening proxy against the kernel's own screening on the whole
    sphere, all-electron Si def2-svp (its tight 1s pairs stay at every |Q|, the diffuse
    ones drop out: the count falls with q_max)."""
    from dmca_hpc.electronic.ae_overlap import AnalyticEngine, q_plus_g
    from dmca_hpc.electronic.formfactor import analytic_ao_work
    from dmca_hpc.electronic.scf import build_cell, section_with_defaults
    from dmca_hpc.electronic.symmetry import mesh_frac
    from dmca_hpc.materials import get_material
    cell = build_cell(get_material("Si").atoms(),
                      section_with_defaults({"basis": "def2-svp", "pseudo": None}))
    eng = AnalyticEngine(cell, precision=1e-8)
    q = cell.get_abs_kpts(mesh_frac((4, 4, 4)))[5]
    Qv, _ = q_plus_g(cell, q, q_max)
    exact, qi = _kept_products(eng, q, Qv)
    w = analytic_ao_work(eng, q_max)
    assert w["products"] == pytest.approx(exact, rel=0.05)
    assert w["elements"] == eng.nao_cart ** 2
    assert w["ao"] == pytest.approx(w["products"] + w["elements"] + w["tables"])
    for d in range(3):  # distinct Q components the 1D tables hold (the sphere's rim
        # along an axis may miss a layer the 2 q_max / dG + 1 count has)
        assert w["n_qd"][d] == pytest.approx(len(np.unique(qi[:, d])), rel=0.1)
    if q_max == 10.0:
        assert w["products"] < analytic_ao_work(eng, 4.0)["products"]


def test_unit_conjugate_is_the_engines_choice(si_szv):
    """A unit builds one Q of each +-Q pair exactly when unit_conjugate says so: the
    engine's own test (conjugate_partners) on every unit's k set and Q sphere."""
    from dmca_hpc.electronic import symmetry
    from dmca_hpc.electronic.ae_overlap import AnalyticEngine, q_plus_g
    from dmca_hpc.electronic.formfactor import unit_conjugate, unit_k_counts
    atoms, cell = si_szv
    km = (4, 4, 4)
    eng = AnalyticEngine(cell)
    kall = cell.get_abs_kpts(symmetry.mesh_frac(km))
    rots = symmetry.mesh_rotations(symmetry.reciprocal_rotations(atoms)[0], km)
    iqs = symmetry.irreducible_mesh(atoms, km).ibz_index
    flags = unit_conjugate(cell, km)
    assert len(flags) == len(iqs) == len(unit_k_counts(cell, km))
    for iq, flag in zip(iqs, flags):
        ks = symmetry.pair_kset(rots, km, int(iq))[0]
        Qv, _ = q_plus_g(cell, kall[iq], 3.0)
        assert (eng.conjugate_partners(kall[ks], Qv) is not None) == flag, iq
    every = unit_conjugate(cell, km, use_symmetry=False)
    assert len(every) == 64 and sum(every) == 8  # q with 2q = 0 mod G: {0, 1/2}^3
    assert any(flags) and not all(flags)


def test_analytic_time_constants_are_the_fit():
    """FF_ANALYTIC_S_PER_AO and _MO are benchmarks/analytic_time_fit.json's a and b, and
    with them the model reproduces every measured case of the fit (CPU time per (k, Q),
    one thread; bases C / Si / Ge def2-svp, cc-pVDZ, def2-TZVP, GTH DZVP) within 30 %."""
    from dmca_hpc.electronic import formfactor as ff
    res = json.loads((ROOT / "benchmarks" / "analytic_time_fit.json").read_text())
    assert ff.FF_ANALYTIC_S_PER_AO == pytest.approx(res["fit"]["a_s"], rel=0.02)
    assert ff.FF_ANALYTIC_S_PER_MO == pytest.approx(res["fit"]["b_s"], rel=0.02)
    assert len({r["basis"] for r in res["rows"]}) >= 4
    for r in res["rows"]:
        model = ff.FF_ANALYTIC_S_PER_AO * r["w_ao"] + ff.FF_ANALYTIC_S_PER_MO * r["w_mo"]
        measured = r["cpu_us_per_kQ"]["unit"] * 1e-6
        assert model / measured == pytest.approx(1.0, abs=0.3), r["label"]


# --------------------------------------------------------------------------- the pipeline

def test_run_job_refuses_before_writing_and_checks_each_stage(tmp_path, monkeypatch):
    p = tmp_path / "job.yaml"
    p.write_text("name: t\nmaterials: [Si, C]\nstages: [materials]\n")
    job = load_job(p)
    with pytest.raises(pipeline.ResourcesRefused) as info:
        pipeline.run_job(job, tmp_path / "out", log=lambda *a: None, max_hours=1e-9)
    assert len(info.value.problems) == 2 and all(
        l.startswith(f"{p.resolve()}: materials: ") and "--max-hours 1e-09" in l
        for l in info.value.problems), info.value.problems
    assert not (tmp_path / "out").exists()
    # just before each stage: a stage refused then fails without running, the others run
    real = pf.stage_problem

    def refuse_c(job, stage, material, *a, **k):
        return "J: materials: C/materials cannot finish: test" if material.name == "C" else \
            real(job, stage, material, *a, **k)

    monkeypatch.setattr(pf, "stage_problem", refuse_c)
    lines = []
    s = pipeline.run_job(job, tmp_path / "out", log=lines.append)
    assert s["stages"]["Si/materials"]["status"] == "ok"
    c = s["stages"]["C/materials"]
    assert c["status"] == "failed" and "refused before it started" in c["error"]
    assert not (tmp_path / "out" / "C" / "materials" / "material.h5").exists()
    assert any(l.startswith("[C/materials] REFUSED: J: materials:") for l in lines)
    assert any(l.startswith("[preflight] estimate: memory <= ") for l in lines)
    man = json.loads((tmp_path / "out" / "C" / "materials" / "stage.json").read_text())
    assert man["status"] == "failed"


def test_failed_units_do_not_calibrate_the_time(tmp_path):
    """A unit that failed at once (measured live: the Ge PBE0 form factor's first
    attempt, 0.19 s, then a resumed run estimated 3 s for a 40 min stage) measured no
    work: only ok units calibrate; with only failed ones the model stands."""
    from dmca_hpc.monitoring.telemetry import Telemetry
    from dmca_hpc.stages.registry import STAGE_DMCA
    job = load_job(ROOT / "jobs" / "quickstart.yaml")
    out = tmp_path / "out"
    model = by_label(pf.estimate_job(job, run_dir=out))["Si/bands"]
    t = Telemetry(out / "telemetry", rank=0, job_id="q", stage_dmca=STAGE_DMCA)
    for i in range(5):
        t.record("bands", f"Si:mesh:{4 * i}-{4 * i + 4}", "failed", 0.01, 0.01, 150.0,
                 physics={"material": "Si", "kpts": 4})
    e = by_label(pf.estimate_job(job, run_dir=out))["Si/bands"]
    assert e.how == model.how and e.time_s == pytest.approx(model.time_s)
    write_bands_telemetry(out / "telemetry", wall_s=10.0)
    e2 = by_label(pf.estimate_job(job, run_dir=out))["Si/bands"]
    assert e2.how == "measured, 31 units"


def test_formfactor_time_counts_the_valence_window_once_the_scf_exists():
    """After the dft stage the estimate counts the occupied bands a transition below
    e_max can start from, as the Engine does (formfactor.valence_window), not every
    occupied band.  Synthetic eigenvalues: 7 occupied bands, 5 of them deep (Si-like
    1s at -1780 eV, 2s -140, 2p -90 below the VBM: out of a 50 eV window at a 1.11 eV
    gap, inside a 100 eV one but for the 1s and 2s).  On the production runs the Ge
    estimate falls from 0.95 to 0.71 h (0.69 h measured)."""
    from dmca_hpc.electronic.formfactor import valence_window
    from dmca_hpc.materials import get_material
    job = {"materials": ["Si"], "stages": ["materials", "dft", "bands", "formfactor"],
           "dft": {"basis": "def2-svp", "pseudo": None, "kmesh": [2, 2, 2], "density_fit": "GDF"},
           "bands": {"kmesh": [4, 4, 4]}, "formfactor": {"route": "analytic", "q_max": 6.0}}
    mm = pf._MaterialModel(job, get_material("Si"))
    nao = mm.cell().nao_nr()
    # eigenvalues [nk, nao] in hartree: 5 deep bands, 2 near the VBM, conduction bands
    # from 0.6 eV up
    ev = np.array([-1780.0, -140.0, -90.0, -90.0, -90.0, -12.0, 0.0] + list(0.6 + 2.0 * np.arange(nao - 7)))
    mo = np.tile(ev, (8, 1)) / 27.211386245988
    assert valence_window(mo * 27.211386245988, 7, 1.11, 50.0) == 2
    assert valence_window(mo * 27.211386245988, 7, 1.11, 100.0) == 5
    assert mm.nval({"e_max": 50.0, "gap_ev": None, "scissor": "qcdark"}) is None  # no SCF yet
    before = by_label(pf.estimate_job(job, ranks=1))["Si/formfactor"].time_s
    after = by_label(pf.estimate_job(job, ranks=1, facts={"Si": {"nocc": 7, "mo_energy": mo}}))
    assert after["Si/formfactor"].time_s < before
    mm2 = pf._MaterialModel(job, get_material("Si"), {"nocc": 7, "mo_energy": mo})
    assert mm2.nval({"e_max": 50.0, "gap_ev": None, "scissor": "qcdark"}) == 2


def test_gdf_supercell_model_follows_pyscf_kpts_to_kmesh():
    """bvk_cells is checked against PySCF's own choice (k2gamma.kpts_to_kmesh of the SCF
    and band k) on real cells: the lcm per axis while both meshes fit 2 nimgs + 1, the bound
    beyond it (Si def2-SVP: nimgs 5, so 12^3 or 14^3 bands on a 3^3 SCF give 11^3 cells, not
    the lcm 12^3 or 42^3 that would refuse 14^3 for a 1.7 TB table it never builds)."""
    import numpy as np
    from pyscf.pbc.tools.k2gamma import kpts_to_kmesh
    from dmca_hpc.electronic.bands import bvk_cells
    job = load_job(ROOT / "jobs" / "si_ae_kconv.yaml")
    cell = pf._MaterialModel(job, "Si").cell()
    for scf, bands in ((3, 10), (3, 12), (3, 14), (2, 10), (3, 6), (4, 6)):
        kpts = np.vstack([cell.make_kpts([scf] * 3), cell.make_kpts([bands] * 3)])
        assert bvk_cells([scf] * 3, [bands] * 3, cell.nimgs) == int(np.prod(kpts_to_kmesh(cell, kpts))), (scf, bands)
    assert bvk_cells([3] * 3, [14] * 3, cell.nimgs) == 11 ** 3 and bvk_cells([3] * 3, [14] * 3) == 42 ** 3
    est = pf.estimate_job(load_job(ROOT / "jobs" / "si_ae_kconv.yaml",
                                   overrides={"dft.kmesh": [3, 3, 3], "bands.kmesh": [14, 14, 14]}), ranks=1)
    lines = pf.check(est, roomy(available_memory_bytes=20 * pf.GIB), "J")
    assert not [l for l in lines if "GDF supercell" in l], lines


def test_gdf_bands_on_a_mesh_incommensurate_with_the_scf_are_refused():
    """PySCF's GDF builds its lattice sums for band k on the common supercell of the SCF
    and band meshes; 10^3 bands on a 3^3 SCF asked numpy for "65.2 GiB for an array with
    shape (54000, 54000, 3)" and 8^3 was OOM-killed (17 GiB).  The preflight counts that
    table and refuses such a job up front naming bands.kmesh and the remedy; the same
    meshes on a 2^3 SCF (a divisor) pass."""
    from dmca_hpc.electronic.bands import bvk_cells
    assert bvk_cells([3, 3, 3], [10, 10, 10]) == 27000 and bvk_cells([3, 3, 3], [6, 6, 6]) == 216
    assert bvk_cells([2, 2, 2], [10, 10, 10]) == 1000
    roomy_20 = roomy(available_memory_bytes=20 * pf.GIB)
    for scf, bands, refused in (([3, 3, 3], [10, 10, 10], True), ([3, 3, 3], [8, 8, 8], True),
                                ([2, 2, 2], [10, 10, 10], False), ([3, 3, 3], [6, 6, 6], False)):
        job = load_job(ROOT / "jobs" / "si_ae_kconv.yaml",
                       overrides={"dft.kmesh": scf, "bands.kmesh": bands})
        est = pf.estimate_job(job, ranks=1)
        e = by_label(est)["Si/bands"]
        part = 24.0 * (2 * bvk_cells(scf, bands)) ** 2
        assert e.memory_bytes > part
        lines = pf.check(est, roomy_20, "J")
        hit = [l for l in lines if "Si/bands" in l]
        if refused:
            assert hit and hit[0].startswith("J: bands.kmesh: Si/bands cannot finish: memory"), lines
            assert "GDF supercell translations" in hit[0] and "multiple of dft.kmesh" in hit[0]
        else:
            assert not hit, lines
