"""Oracle unit tests: failure detection, every correction handler (driven by
the fake pw.x in tests/fake_pw, which prints the error texts of QE 6.7),
settings/schema agreement, candidates, checkpoints and the CLI.  No real
pw.x here (see test_oracle_pw.py and test_oracle_mpi.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmca_hpc.oracle import pwx as oracle

from dmca_hpc.oracle import handlers as qe

HERE = Path(__file__).resolve().parents[2]  # tests/
ROOT = HERE.parent
FAKE = HERE / "fake_pw" / "pw.x"
SI_OK = (HERE / "fake_pw" / "si_ok.out").read_text()


def si():
    from ase.build import bulk
    # the structure of tests/fake_pw/si_ok.out (real pw.x 6.7 output)
    return bulk("Si", "diamond", a=5.431)


@pytest.fixture
def pseudo_dir(tmp_path):
    """A pseudo directory with a placeholder Si UPF: the fake pw.x never
    reads it, and the oracle only checks that it exists."""
    d = tmp_path / "pseudo"
    d.mkdir()
    (d / "Si.pbe-rrkj.UPF").write_text("<UPF version=\"2.0.1\"></UPF>\n")
    return d


def fake_settings(pseudo_dir, **kw):
    base = {"pw": str(FAKE), "pseudo_dir": str(pseudo_dir), "ecutwfc": 14.0, "kspacing": 0.7,
            "timeout_s": 20.0, "max_attempts": 6}
    base.update(kw)
    return oracle.settings_from(base)


def run_fake(monkeypatch, tmp_path, pseudo_dir, scenario, atoms=None, **kw):
    monkeypatch.setenv("FAKE_PW_SCENARIO", scenario)
    return oracle.run_candidate(atoms if atoms is not None else si(),
                                fake_settings(pseudo_dir, **kw), tmp_path / "cand", scenario)


# --- settings and schema ----------------------------------------------------------

def test_schema_defaults_match_module_defaults():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "config" / "schema" / "oracle.schema.json").read_text())
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(props) == set(oracle.DEFAULTS)
    for key, sub in props.items():
        assert "type" in sub and "description" in sub and "default" in sub, key
        if key == "generate":
            for gk, gsub in sub["properties"].items():
                assert gsub["default"] == oracle.DEFAULTS["generate"][gk], gk
                assert "type" in gsub and "description" in gsub
        else:
            assert sub["default"] == oracle.DEFAULTS[key], key
    jsonschema.validate(oracle.DEFAULTS, schema)


def test_settings_reject_unknown_key_naming_it():
    with pytest.raises(oracle.OracleSetupError, match="ecutwf"):
        oracle.settings_from({"ecutwf": 20})
    with pytest.raises(oracle.OracleSetupError, match="kspacing"):
        oracle.settings_from({"kspacing": 0})


def test_import_is_light():
    code = ("import sys, dmca_hpc.oracle.pwx; "
            "print(any(m in sys.modules for m in ('ase', 'numpy', 'h5py', 'mpi4py', 'pyscf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_executable_checks(tmp_path):
    with pytest.raises(oracle.OracleSetupError, match="not an absolute path"):
        oracle.resolve_executable("pw.x")
    with pytest.raises(oracle.OracleSetupError, match="does not exist"):
        oracle.resolve_executable(str(tmp_path / "nope" / "pw.x"))
    f = tmp_path / "pw.x"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    with pytest.raises(oracle.OracleSetupError, match="not executable"):
        oracle.resolve_executable(str(f))
    assert oracle.resolve_executable(str(FAKE)) == str(FAKE)


# --- physics helpers ---------------------------------------------------------------

def test_kpoint_grid_includes_two_pi():
    # fcc primitive: |b_i| = sqrt(3)/a (without 2 pi) -> 2 pi sqrt(3) / 5.431 = 2.0038 1/A
    a = si()
    assert oracle.kpoint_grid(a, 0.7) == (3, 3, 3)      # 2.0038 / 0.7 = 2.86 -> 3
    assert oracle.kpoint_grid(a, 0.5) == (5, 5, 5)      # 4.008 -> 5
    assert oracle.kpoint_grid(a.repeat((2, 1, 1)), 0.7)[0] < 3


def test_check_structure_overlap_and_images():
    a = si()
    oracle.check_structure(a, 0.5)
    b = a.copy()
    b.positions[1] = b.positions[0] + [0.05, 0, 0]
    with pytest.raises(oracle.OracleError, match="0.050 angstrom apart") as e:
        oracle.check_structure(b, 0.5)
    assert e.value.error_class == "impossible_structure"
    from ase import Atoms
    tiny = Atoms("Si", cell=np.eye(3) * 0.3, pbc=True)   # the atom meets its own image
    with pytest.raises(oracle.OracleError):
        oracle.check_structure(tiny, 0.5)


def test_pseudopotential_resolution(pseudo_dir):
    assert oracle.resolve_pseudopotentials(["Si", "Si"], pseudo_dir) == {"Si": "Si.pbe-rrkj.UPF"}
    with pytest.raises(oracle.OracleError, match="Sn") as e:
        oracle.resolve_pseudopotentials(["Si", "Sn"], pseudo_dir)
    assert e.value.error_class == "missing_pseudopotential"
    with pytest.raises(oracle.OracleError, match="Si.other.UPF"):
        oracle.resolve_pseudopotentials(["Si"], pseudo_dir, {"Si": "Si.other.UPF"})


def test_generated_candidates_are_deterministic():
    g = {"supercell": [2, 1, 1], "n_rattled": 2, "rattle_stdev_angstrom": 0.05, "strains": [0.02]}
    a1 = oracle.generate_candidates(si(), g, seed=7)
    a2 = oracle.generate_candidates(si(), g, seed=7)
    a3 = oracle.generate_candidates(si(), g, seed=8)
    assert len(a1) == 1 + 2 + 2
    for x, y in zip(a1, a2):
        assert np.array_equal(x.positions, y.positions) and np.array_equal(x.cell, y.cell)
    assert not np.allclose(a1[1].positions, a3[1].positions)
    assert len(a1[1]) == 4
    assert np.isclose(a1[3].get_volume(), si().get_volume() * 1.02 ** 3)


# --- failure detection on real pw.x 6.7 texts --------------------------------------

def test_diagnose_clean_real_output():
    assert qe.diagnose(SI_OK, None, 0).ok


@pytest.mark.parametrize("text,cls", [
    ("     convergence NOT achieved after 100 iterations: stopping\n JOB DONE.", "scf_unconverged"),
    ("     Maximum CPU time exceeded\n\n     max_seconds     =       0.01\n JOB DONE.", "out_of_walltime"),
    (" " + "%" * 78 + "\n     Error in routine cdiaghg (7):\n     S matrix not positive definite\n "
     + "%" * 78, "diagonalization"),
    (" " + "%" * 78 + "\n     Error in routine cdiaghg (1):\n     problems computing cholesky\n "
     + "%" * 78, "diagonalization"),
    (" " + "%" * 78 + "\n     Error in routine c_bands (1):\n     too many bands are not converged\n "
     + "%" * 78, "diagonalization"),
    (" " + "%" * 78 + "\n     Error in routine electrons (1):\n     charge is wrong\n "
     + "%" * 78, "charge_wrong"),
    (" " + "%" * 78 + "\n     Error in routine readpp (1):\n     file /x/Si.UPF not found\n "
     + "%" * 78, "missing_pseudopotential"),
    (" " + "%" * 78 + "\n     Error in routine  read_namelists (1):\n      bad line in namelist "
     "&system: \"   foo_bar          = 1\" (error could be in the previous line)\n " + "%" * 78,
     "bad_input"),
    (" " + "%" * 78 + "\n     Error in routine check_atoms (1):\n     atoms #   1 and #   2 overlap!\n "
     + "%" * 78, "bad_input"),
    ("", "missing_output"),
    (SI_OK[:2000], "truncated_output"),
])
def test_diagnose_known_texts(text, cls):
    d = qe.diagnose(text, None, 0)
    assert d.error_class == cls, d
    assert d.recoverable == (cls not in qe.UNRECOVERABLE)


def test_diagnose_crash_file_and_exit_codes():
    crash = (" " + "%" * 78 + "\n     task #         0\n     from readpp : error #         1\n"
             "     file /usr/share/espresso/pseudo/Si.nothere.UPF not found\n " + "%" * 78 + "\n")
    d = qe.diagnose(SI_OK[:1500], crash, 1)
    assert d.error_class == "missing_pseudopotential" and "Si.nothere.UPF" in d.message
    assert qe.diagnose(SI_OK[:1500], None, 139).error_class == "nonzero_exit"
    assert qe.diagnose(SI_OK, None, 0, timed_out=True).error_class == "timeout"


def test_scf_ladder_order():
    """The ScfConvergenceHandler walks beta 0.7 -> 0.3 -> 0.1, local-TF,
    david -> ppcg -> cg, electron_maxstep x2, smearing on, degauss up."""
    params = {"control": {}, "system": {"occupations": "fixed"},
              "electrons": {"mixing_beta": 0.7, "electron_maxstep": 100}}
    state = qe.CorrectionState()
    handlers = [qe.Handler(h.name, h.errors, h.rungs, h.restart, 99, h.priority)
                for h in qe.default_handlers()]
    seen = []
    for n in range(1, 40):
        new, corr, reason = qe.apply_correction(qe.Diagnosis("scf_unconverged", "x"), params, state,
                                                handlers, n)
        if new is None:
            assert "exhausted" in reason
            break
        seen.append({k: v for a in corr.actions if "action" in a
                     for k, v in a["action"]["_set"].items()})
        assert {"restart": "charge_density"} in corr.actions
        params = new
    assert seen[:8] == [{"mixing_beta": 0.3}, {"mixing_beta": 0.1}, {"mixing_mode": "local-TF"},
                        {"diagonalization": "ppcg"}, {"diagonalization": "cg"},
                        {"electron_maxstep": 200}, {"electron_maxstep": 400},
                        {"electron_maxstep": 800}]
    assert seen[8] == {"occupations": "smearing", "smearing": "marzari-vanderbilt", "degauss": 0.01}
    assert seen[9:] == [{"degauss": 0.02}, {"degauss": 0.05}, {"smearing": "gaussian"}]


# --- every handler against the fake pw.x ------------------------------------------------

def _handlers(res):
    return [c["handler"] for c in res.meta["corrections"]]


def _sets(res):
    return [{k: v for a in c["actions"] if "action" in a for k, v in a["action"]["_set"].items()}
            for c in res.meta["corrections"]]


@pytest.mark.parametrize("scenario,handlers,sets,attempts", [
    ("ok", [], [], 1),
    ("scf", ["ScfConvergenceHandler"], [{"mixing_beta": 0.3}], 2),
    ("s_matrix", ["DiagonalizationHandler"], [{"diagonalization": "ppcg"}], 2),
    ("cholesky", ["DiagonalizationHandler"], [{"diagonalization": "ppcg"}], 2),
    ("bands", ["DiagonalizationHandler"] * 2, [{"diagonalization": "ppcg"}, {"diagonalization": "cg"}], 3),
    ("charge", ["ChargeWrongHandler"],
     [{"occupations": "smearing", "smearing": "marzari-vanderbilt", "degauss": 0.01}], 2),
    ("cputime", ["OutOfWalltimeHandler"], [{"restart_mode": "restart"}], 2),
    ("segfault_once", ["TransientFailureHandler"], [{}], 2),
    ("truncated_once", ["TransientFailureHandler"], [{}], 2),
    ("empty_once", ["TransientFailureHandler"], [{}], 2),
    ("invalid_once", ["TransientFailureHandler"], [{}], 2),
])
def test_handler_rescues(monkeypatch, tmp_path, pseudo_dir, scenario, handlers, sets, attempts):
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, scenario)
    assert res.success, (res.error_class, res.error)
    assert _handlers(res) == handlers
    assert _sets(res) == sets
    assert res.meta["n_attempts"] == attempts
    assert np.isclose(res.energy_ev, -213.44463066086672, atol=1e-6)  # si_ok.out, ASE-parsed
    assert np.abs(res.forces_ev_per_angstrom).max() < 1e-6
    log = json.loads((tmp_path / "cand" / "corrections.json").read_text())
    assert log["success"] is True and [c["handler"] for c in log["corrections"]] == handlers
    for n, att in enumerate(res.meta["attempts"], 1):
        d = Path(att["directory"])
        assert d.name == f"attempt-{n:02d}"
        assert (d / "pw.in").exists() and (d / "pw.out").exists() and (d / "pw.err").exists()
        assert att["parameters"]["control"]["tprnfor"] and att["parameters"]["control"]["tstress"]
    if scenario == "cputime":
        assert res.meta["attempts"][1]["restarted_from"] == "checkpoint"
    if scenario == "scf":
        assert res.meta["attempts"][1]["parameters"]["electrons"]["mixing_beta"] == 0.3
        # the fake writes no charge density, so the restart falls back to scratch (recorded)
        assert res.meta["attempts"][1]["restarted_from"] is None


def test_timeout_handler(monkeypatch, tmp_path, pseudo_dir):
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, "hang", timeout_s=1.5)
    assert res.success
    first = res.meta["attempts"][0]
    assert first["timed_out"] and first["error_class"] == "timeout"
    assert _handlers(res) == ["TransientFailureHandler"]
    assert first["wall_s"] < 10


def test_timeout_twice_fails(monkeypatch, tmp_path, pseudo_dir):
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, "hang_always", timeout_s=1.0)
    assert not res.success and res.error_class == "timeout"
    assert res.meta["n_attempts"] == 2
    assert "max_corrections=1" in res.error


@pytest.mark.parametrize("scenario,cls", [
    ("missing_pp", "missing_pseudopotential"), ("bad_input", "bad_input"),
    ("overlap", "bad_input"), ("unknown_error", "pw_error"),
])
def test_unrecoverable_fail_at_once(monkeypatch, tmp_path, pseudo_dir, scenario, cls):
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, scenario)
    assert not res.success and res.error_class == cls
    assert res.meta["n_attempts"] == 1 and res.meta["corrections"] == []
    assert "no retry" in res.error
    assert (Path(res.meta["attempts"][0]["directory"]) / "CRASH").exists()


def test_attempt_limit(monkeypatch, tmp_path, pseudo_dir):
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, "always_scf", max_attempts=4)
    assert not res.success and res.error_class == "scf_unconverged"
    assert res.meta["n_attempts"] == 4
    assert _sets(res) == [{"mixing_beta": 0.3}, {"mixing_beta": 0.1}, {"mixing_mode": "local-TF"}]
    assert "failed after 4 attempts" in res.error
    assert res.meta["attempts"][-1]["reason"].startswith("attempt limit reached")
    log = json.loads((tmp_path / "cand" / "corrections.json").read_text())
    assert log["success"] is False and len(log["attempts"]) == 4


def test_prechecks_fail_without_running_pw(monkeypatch, tmp_path, pseudo_dir):
    a = si()
    a.positions[1] = a.positions[0] + [0.1, 0, 0]
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, "ok", atoms=a)
    assert res.error_class == "impossible_structure" and res.meta["attempts"] == []
    b = si()
    b.symbols[1] = "Sn"
    res = oracle.run_candidate(b, fake_settings(pseudo_dir), tmp_path / "c2")
    assert res.error_class == "missing_pseudopotential" and "Sn" in res.error


def test_dftresult_roundtrip_and_extxyz(monkeypatch, tmp_path, pseudo_dir):
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, "ok")
    back = oracle.DFTResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.energy_ev == res.energy_ev
    assert np.array_equal(back.stress_ev_per_angstrom3, res.stress_ev_per_angstrom3)
    from ase.io import read, write
    write(tmp_path / "x.extxyz", back.to_atoms())
    r = read(tmp_path / "x.extxyz")
    assert np.isclose(r.get_potential_energy(), res.energy_ev)
    assert np.allclose(r.get_stress(voigt=False), res.stress_ev_per_angstrom3)


# --- batch (serial) with checkpoints, and the CLI -----------------------------------------

def test_serial_batch_checkpoint_and_outputs(monkeypatch, tmp_path, pseudo_dir):
    import h5py
    monkeypatch.setenv("FAKE_PW_SCENARIO", "ok")
    bad = si()
    bad.positions[1] = bad.positions[0]
    sn = si()
    sn.symbols[0] = "Sn"
    cands = [si(), bad, si(), sn]
    s = fake_settings(pseudo_dir)
    out = tmp_path / "batch"
    paths = oracle.run_batch(cands, s, out)
    from ase.io import read
    frames = read(paths["results_extxyz"], index=":")
    assert [f.info["index"] for f in frames] == [0, 2]
    fails = json.loads(Path(paths["failures"]).read_text())
    assert [(f["index"], f["error_class"]) for f in fails] == [(1, "impossible_structure"),
                                                              (3, "missing_pseudopotential")]
    with h5py.File(paths["results_h5"]) as f:
        for name, ds in f.items():
            assert "units" in ds.attrs, name
        assert f["success"][()].tolist() == [True, False, True, False]
        assert f["energy"].attrs["units"] == "eV" and np.isnan(f["energy"][1])
        assert f.attrs["complete"]
    # restart: nothing is recomputed (the checkpoint files are untouched)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "candidates").iterdir()}
    monkeypatch.setenv("FAKE_PW_SCENARIO", "unknown_error")  # would fail any new run
    oracle.run_batch(cands, s, out)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "candidates").iterdir()} == stamps
    # a changed structure redoes that candidate only
    cands[2] = si()
    cands[2].positions[1] += [0.001, 0, 0]
    oracle.run_batch(cands, s, out)
    new = {p.name: p.stat().st_mtime_ns for p in (out / "candidates").iterdir()}
    assert [k for k in new if new[k] != stamps[k]] == ["cand-0000002.json"]


def test_cli_exit_codes(tmp_path, pseudo_dir):
    from ase.io import write
    bad = si()
    bad.positions[1] = bad.positions[0]
    write(tmp_path / "c.extxyz", [si(), bad])
    env = {**os.environ, "FAKE_PW_SCENARIO": "ok", "DMCA_HPC_MPI": "0"}
    cmd = [sys.executable, "-m", "dmca_hpc.oracle.pwx", "--structures", str(tmp_path / "c.extxyz"),
           "--pseudo-dir", str(pseudo_dir), "--out", str(tmp_path / "o"), "--pw", str(FAKE),
           "--ecutwfc", "14", "--kspacing", "0.7"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["candidates"] == 2 and summary["failed"] == 1
    tel = [json.loads(x) for x in (tmp_path / "o" / "telemetry" / "telemetry.jsonl").read_text().splitlines()]
    assert len(tel) == 2 and {t["hpc"]["status"] for t in tel} == {"ok", "failed"}
    assert all(t["hpc"]["stage"] == "oracle" and "attempts" in t["physics"] for t in tel)
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "config" / "telemetry.schema.json").read_text())
    for t in tel:
        jsonschema.validate(t, schema)
    r = subprocess.run([*cmd[:-6], "--pw", "pw.x"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "not an absolute path" in r.stderr
