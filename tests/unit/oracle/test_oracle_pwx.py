"""dmca_hpc.oracle.pwx, the pw.x runner: settings, executable and input
checks, and every correction handler driven end to end by the fake pw.x of
tests/fake_pw.  No real pw.x here (tests/integration/test_oracle_pw.py)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmca_hpc import settings as job_settings
from dmca_hpc.oracle import pwx
from oracle_fake import FAKE, ROOT, fake_settings, pseudo_dir, run_fake, si  # noqa: F401


# --- settings and schema ----------------------------------------------------------

def test_schema_defaults_match_settings():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "config" / "schema" / "oracle.schema.json").read_text())
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    effective = pwx.settings_from()
    assert set(props) == set(effective) == set(job_settings.defaults("oracle"))
    for key, sub in props.items():
        assert "type" in sub and "description" in sub and "default" in sub, key
        if key == "generate":
            assert set(sub["properties"]) == set(pwx.GENERATE_DEFAULTS)
            for gk, gsub in sub["properties"].items():
                assert gsub["default"] == pwx.GENERATE_DEFAULTS[gk], gk
                assert "type" in gsub and "description" in gsub
        else:
            assert sub["default"] == effective[key], key
    jsonschema.validate(effective, schema)


def test_settings_reject_unknown_key_naming_it():
    with pytest.raises(pwx.OracleSetupError, match="ecutwf"):
        pwx.settings_from({"ecutwf": 20})
    with pytest.raises(pwx.OracleSetupError, match="kspacing"):
        pwx.settings_from({"kspacing": 0})
    with pytest.raises(pwx.OracleSetupError, match="n_ratled"):
        pwx.settings_from({"generate": {"n_ratled": 2}})


def test_settings_layering_and_physics_split():
    s = pwx.settings_from({"ecutwfc": 20, "generate": {"n_rattled": 1}}, ecutwfc=None,
                          kspacing=0.5, generate={"strains": [0.1]})
    assert s["ecutwfc"] == 20 and s["kspacing"] == 0.5
    assert s["generate"] == {**pwx.GENERATE_DEFAULTS, "n_rattled": 1, "strains": [0.1]}
    phys = pwx.physics_settings(s)
    assert "timeout_s" not in phys and "generate" not in phys and phys["ecutwfc"] == 20
    assert set(phys) | pwx.OPERATIONAL == set(s)


def test_import_is_light():
    mods = ["dmca_hpc.oracle.pwx", "dmca_hpc.oracle.handlers", "dmca_hpc.oracle.ladder",
            "dmca_hpc.oracle.candidates", "dmca_hpc.oracle.batch", "dmca_hpc.oracle.bandgap",
            "dmca_hpc.stages.oracle", "dmca_hpc.cli.oracle"]
    code = (f"import sys; import {', '.join(mods)}; "
            "print(sorted(m for m in ('ase', 'numpy', 'h5py', 'mpi4py', 'pyscf') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_executable_checks(tmp_path):
    with pytest.raises(pwx.OracleSetupError, match="not an absolute path"):
        pwx.resolve_executable("pw.x")
    with pytest.raises(pwx.OracleSetupError, match="does not exist"):
        pwx.resolve_executable(str(tmp_path / "nope" / "pw.x"))
    f = tmp_path / "pw.x"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    with pytest.raises(pwx.OracleSetupError, match="not executable"):
        pwx.resolve_executable(str(f))
    assert pwx.resolve_executable(str(FAKE)) == str(FAKE)


# --- physics helpers ---------------------------------------------------------------

def test_kpoint_grid_includes_two_pi():
    # fcc primitive: |b_i| = sqrt(3)/a (without 2 pi) -> 2 pi sqrt(3) / 5.431 = 2.0038 1/A
    a = si()
    assert pwx.kpoint_grid(a, 0.7) == (3, 3, 3)      # 2.0038 / 0.7 = 2.86 -> 3
    assert pwx.kpoint_grid(a, 0.5) == (5, 5, 5)      # 4.008 -> 5
    assert pwx.kpoint_grid(a.repeat((2, 1, 1)), 0.7)[0] < 3


def test_check_structure_overlap_and_images():
    a = si()
    pwx.check_structure(a, 0.5)
    b = a.copy()
    b.positions[1] = b.positions[0] + [0.05, 0, 0]
    with pytest.raises(pwx.OracleError, match="0.050 angstrom apart") as e:
        pwx.check_structure(b, 0.5)
    assert e.value.error_class == "impossible_structure"
    assert "oracle.min_distance_angstrom" in str(e.value)
    from ase import Atoms
    tiny = Atoms("Si", cell=np.eye(3) * 0.3, pbc=True)   # the atom meets its own image
    with pytest.raises(pwx.OracleError):
        pwx.check_structure(tiny, 0.5)
    flat = Atoms("Si", cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True)
    with pytest.raises(pwx.OracleError, match="degenerate") as e:
        pwx.check_structure(flat, 0.5)
    assert e.value.error_class == "impossible_structure"


def test_pseudopotential_resolution(pseudo_dir):
    assert pwx.resolve_pseudopotentials(["Si", "Si"], pseudo_dir) == {"Si": "Si.pbe-rrkj.UPF"}
    with pytest.raises(pwx.OracleError, match="Sn") as e:
        pwx.resolve_pseudopotentials(["Si", "Sn"], pseudo_dir)
    assert e.value.error_class == "missing_pseudopotential"
    with pytest.raises(pwx.OracleError, match="Si.other.UPF"):
        pwx.resolve_pseudopotentials(["Si"], pseudo_dir, {"Si": "Si.other.UPF"})


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
        assert att["kpts"] == [3, 3, 3]
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
    assert "0.100 angstrom apart" in res.error
    b = si()
    b.symbols[1] = "Sn"
    res = pwx.run_candidate(b, fake_settings(pseudo_dir), tmp_path / "c2")
    assert res.error_class == "missing_pseudopotential" and "Sn" in res.error


def test_ladder_starts_from_an_earlier_charge_density(monkeypatch, tmp_path, pseudo_dir):
    """run_ladder(start_from=...) (the band-gap bands run after its SCF):
    every attempt gets the earlier run's pw.save without wavefunctions and
    reads it with startingpot='file'; the validator decides success."""
    monkeypatch.setenv("FAKE_PW_SCENARIO", "ok")
    s = fake_settings(pseudo_dir)
    scf = tmp_path / "scf" / "attempt-01"
    save = scf / pwx.OUTDIR / f"{pwx.PREFIX}.save"
    save.mkdir(parents=True)
    (save / "charge-density.dat").write_text("rho")
    (save / "wfc1.dat").write_text("psi")
    wd = pwx.fresh_directory(tmp_path / "bands")
    meta = {}
    kcards = np.array([[0.0, 0.0, 0.0, 1.0], [0.5, 0.0, 0.0, 1.0]])
    seen = []

    def validate(path, atoms):
        seen.append(path)
        return "eigenvalues"

    out = pwx.run_ladder(si(), pwx.base_parameters(s, 2), {"Si": "Si.pbe-rrkj.UPF"}, kcards, s,
                         wd, meta, validate=validate, start_from=scf, label="bands")
    assert out.ok and out.parsed == "eigenvalues" and out.directory == wd / "attempt-01"
    att = meta["attempts"][0]
    assert att["restarted_from"] == "charge_density" and att["kpts"] == {"explicit_crystal": 2}
    assert att["parameters"]["electrons"]["startingpot"] == "file"
    copied = wd / "attempt-01" / pwx.OUTDIR / f"{pwx.PREFIX}.save"
    assert (copied / "charge-density.dat").exists() and not (copied / "wfc1.dat").exists()
    assert "startingpot" in (wd / "attempt-01" / "pw.in").read_text()
    assert seen == [wd / "attempt-01" / "pw.out"]


def test_dftresult_roundtrip_and_extxyz(monkeypatch, tmp_path, pseudo_dir):
    res = run_fake(monkeypatch, tmp_path, pseudo_dir, "ok")
    back = pwx.DFTResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.energy_ev == res.energy_ev
    assert np.array_equal(back.stress_ev_per_angstrom3, res.stress_ev_per_angstrom3)
    from ase.io import read, write
    write(tmp_path / "x.extxyz", back.to_atoms())
    r = read(tmp_path / "x.extxyz")
    assert np.isclose(r.get_potential_energy(), res.energy_ev)
    assert np.allclose(r.get_stress(voigt=False), res.stress_ev_per_angstrom3)
