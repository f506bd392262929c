"""Job files: every kind of mistake gets one clear line, never a traceback."""
import textwrap

import pytest

from conftest import ROOT, run_cli
from dmca_hpc.config import JobError, load_job, validate, apply_defaults, job_schema

GOOD = """
name: tiny
materials: [Si]
stages: [materials]
"""


def write(tmp_path, text, name="job.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(JobError) as ei:
        load_job(p)
    return p, ei.value.problems


def test_valid_job_gets_defaults(tmp_path):
    job = load_job(write(tmp_path, GOOD))
    assert job["seed"] == 20261123
    assert job["materials"] == ["Si"]


def test_unknown_material(tmp_path):
    p, lines = problems(tmp_path, "name: t\nmaterials: [Si, Unobtainium]\nstages: [materials]\n")
    assert len(lines) == 1
    assert lines[0].startswith(f"{p}: materials[1]: unknown material 'Unobtainium'")
    assert "Si, Ge, GaAs, C, SiC, NaI, CsI" in lines[0]


def test_wrong_type(tmp_path):
    p, lines = problems(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\nseed: abc\n")
    assert lines == [f"{p}: seed: expected integer, got string 'abc'"]


def test_missing_required_key(tmp_path):
    p, lines = problems(tmp_path, "materials: [Si]\nstages: [materials]\n")
    assert lines == [f"{p}: name: missing required key 'name'"]


def test_unknown_key_typo(tmp_path):
    p, lines = problems(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\nseeed: 3\n")
    assert len(lines) == 1
    assert lines[0].startswith(f"{p}: seeed: unknown key 'seeed' (did you mean 'seed'?)")


def test_negative_mesh(tmp_path):
    schema = job_schema()
    kmesh = schema["properties"]["dft"].get("properties", {}).get("kmesh")
    if kmesh is None:
        pytest.skip("dft section schema (config/schema/dft.schema.json) not present")
    p, lines = problems(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials, dft]\n"
                                  "dft:\n  kmesh: [2, 2, -1]\n")
    assert any(l.startswith(f"{p}: dft.kmesh[2]: got -1, expected a number >=") for l in lines), lines


def test_malformed_yaml(tmp_path):
    p, lines = problems(tmp_path, "name: t\nmaterials: [Si\nstages: [materials]\n")
    assert len(lines) == 1 and "malformed YAML at line" in lines[0] and lines[0].startswith(str(p))


def test_top_level_not_mapping(tmp_path):
    p, lines = problems(tmp_path, "- a\n- b\n")
    assert lines == [f"{p}: (top level): expected a mapping of keys, got list"]


def test_missing_file(tmp_path):
    with pytest.raises(JobError, match="cannot read the file"):
        load_job(tmp_path / "nope.yaml")


def test_stage_dependency(tmp_path):
    p, lines = problems(tmp_path, "name: t\nmaterials: [Si]\nstages: [bands]\n")
    assert any("stage 'bands' needs stage 'dft'" in l for l in lines)


def test_missing_structure_file(tmp_path):
    p, lines = problems(tmp_path, "name: t\nmaterials: [{name: x, structure_file: none.cif}]\n"
                                  "stages: [materials]\n")
    assert len(lines) == 1 and "materials[0]" in lines[0] and "does not exist" in lines[0]


def test_several_problems_one_line_each(tmp_path):
    p, lines = problems(tmp_path, "name: 't t'\nmaterials: [Xx]\nstages: [materials, frobnicate]\nfoo: 1\n")
    assert len(lines) == 4, lines
    assert all(l.startswith(f"{p}: ") for l in lines)


def test_validate_cli_exit_codes(tmp_path):
    good = write(tmp_path, GOOD, "good.yaml")
    bad = write(tmp_path, "name: t\nmaterials: [Xx]\nstages: [materials]\n", "bad.yaml")
    r = run_cli("validate", good)
    assert r.returncode == 0 and "valid" in r.stdout
    r = run_cli("validate", bad)
    assert r.returncode == 2
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stdout.strip().splitlines() == [f"{bad}: materials[0]: unknown material 'Xx'; expected one of: "
                                             "Si, Ge, GaAs, C, SiC, NaI, CsI (or a mapping with structure_file)"]


def test_validate_takes_the_same_set_overrides_as_run(tmp_path):
    """`validate --set` checks (and estimates) the job `run --set` would run: a bad value
    is reported against its key, an unknown key is refused with exit 2."""
    good = write(tmp_path, GOOD, "good.yaml")
    r = run_cli("validate", good, "--set", "seed=-4")
    assert r.returncode == 2 and "seed: got -4" in r.stdout, r.stdout
    r = run_cli("validate", good, "--set", "dft.bogus=1")
    assert r.returncode == 2 and "unknown job key 'dft.bogus'" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    r = run_cli("validate", good, "--set", "seed=5")
    assert r.returncode == 0 and "valid" in r.stdout


def test_run_validates_first(tmp_path):
    bad = write(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\nseed: -4\n", "bad.yaml")
    r = run_cli("run", bad, "--out", tmp_path / "out")
    assert r.returncode == 2 and "seed: got -4" in r.stdout
    assert not (tmp_path / "out").exists()


def test_shipped_jobs_validate():
    jobs = sorted((ROOT / "jobs").glob("*.yaml"))
    assert jobs, "no job files in jobs/"
    for p in jobs:
        load_job(p)


def test_every_shipped_stage_has_its_section_schema():
    # a stage whose module ships must constrain its job section (unknown keys rejected)
    import importlib.util
    import json
    from dmca_hpc.stages.registry import STAGES
    top = json.loads((ROOT / "config" / "job.schema.json").read_text())
    for stage, mod in ((s.name, s.module) for s in STAGES):
        sub = top["properties"].get(stage, {})
        if "$ref" in sub and importlib.util.find_spec(mod) is not None:
            frag = ROOT / "config" / sub["$ref"]
            assert frag.exists(), f"{stage}: {sub['$ref']} missing"
            assert json.loads(frag.read_text()).get("additionalProperties") is False


def test_paths_resolve_relative_to_the_job_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "t.hdf5").write_bytes(b"")
    p = write(tmp_path / "sub", "name: t\nstages: [rates]\nrates:\n  table: ../t.hdf5\n")
    job = load_job(p)
    assert job["rates"]["table"] == str((tmp_path / "t.hdf5").resolve())
    p2 = write(tmp_path / "sub", "name: t\nstages: [rates]\nrates:\n  table: missing.hdf5\n", "j2.yaml")
    with pytest.raises(JobError) as ei:
        load_job(p2)
    assert ei.value.problems == [f"{p2}: rates.table: file or directory "
                                 f"'{tmp_path / 'sub' / 'missing.hdf5'}' does not exist"]


def test_experiment_pyscf_block_feeds_defaults(tmp_path):
    from dmca_hpc.config import experiment_defaults
    exp = experiment_defaults()
    assert set(exp["hypotheses"]) == {"WIMP", "Axion", "DarkPhoton", "SterileNeutrino"}
    job = load_job(write(tmp_path, GOOD))
    py = exp["pyscf"]
    assert job["dft"]["basis"] == py["basis"] and job["dft"]["xc"] == py["xc"]
    assert job["dft"]["kmesh"] == py["kpts"]
    assert job["formfactor"]["q_max"] == py["q_max_ame"]
    assert job["formfactor"]["dq"] == pytest.approx(py["q_max_ame"] / py["q_points"])


def test_set_overrides_come_from_the_settings_model():
    from dmca_hpc.config import parse_set
    assert parse_set("dft.kmesh=[3,3,3]") == ("dft.kmesh", [3, 3, 3])
    assert parse_set("oracle.generate.n_rattled=2")[0] == "oracle.generate.n_rattled"
    with pytest.raises(ValueError, match=r"unknown job key 'dft.kmsh' \(did you mean 'dft.kmesh'\?\)"):
        parse_set("dft.kmsh=[2,2,2]")
    # a YAML error names the key and what the model expects (type, unit, doc)
    with pytest.raises(ValueError, match=r"not valid YAML.*expected array \[k-points per reciprocal axis\]"):
        parse_set("dft.kmesh=[2,2")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_set("seed")


def test_validate_keys_prints_the_reference():
    r = run_cli("validate", "--keys", "bands")
    assert r.returncode == 0 and "| `kmesh` | `[4, 4, 4]` |" in r.stdout
    r = run_cli("validate", "--keys", "nope")
    assert r.returncode == 2 and "unknown section" in r.stdout
