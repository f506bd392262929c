"""Hostile job files (issue #17): names that escape the output directory,
binary files, duplicate keys, odd ``--set`` values and non-finite numbers
each end in one line naming the file and the key, exit 2, nothing written."""
import textwrap

import pytest

from conftest import run_cli
from dmca_hpc.config import JobError, load_job, parse_set
from dmca_hpc.materials import PLAIN_NAME, MaterialError, material_from_spec


def write(tmp_path, text, name="job.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(path, **kw):
    with pytest.raises(JobError) as ei:
        load_job(path, **kw)
    return ei.value.problems


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil", "..", ".", ".hidden", "a/b"])
def test_material_name_must_be_a_plain_name(tmp_path, name):
    (tmp_path / "si.cif").write_text("data_x\n")
    p = write(tmp_path, f'name: t\nmaterials: [{{name: "{name}", structure_file: si.cif, gap_ev: 1}}]\n'
                        "stages: [materials]\n")
    lines = problems(p)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{p}: materials[0].name: got {name!r}, expected a plain name"), lines[0]


def test_job_name_dotdot_is_rejected_and_nothing_is_written(tmp_path):
    p = write(tmp_path, "name: ..\nmaterials: [Si]\nstages: [materials]\n")
    assert problems(p) == [f"{p}: name: got '..', expected a plain name (letters, digits, _ . -, "
                           "not starting with '.'): the default output directory is runs/<name>"]
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("run", p, cwd=work, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert r.stdout.strip().splitlines() == [f"{p}: name: got '..', expected a plain name (letters, "
                                             "digits, _ . -, not starting with '.'): the default output "
                                             "directory is runs/<name>"]
    assert list(work.iterdir()) == []


def test_escaping_material_writes_nothing_outside_out(tmp_path):
    (tmp_path / "si.cif").write_text("data_x\n")
    p = write(tmp_path, 'name: t\nmaterials: [{name: "../../evil", structure_file: si.cif, gap_ev: 1}]\n'
                        "stages: [materials]\n")
    r = run_cli("run", p, "--out", tmp_path / "runs" / "a" / "b" / "out", timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "materials[0].name: got '../../evil', expected a plain name" in r.stdout
    assert not (tmp_path / "runs").exists()


def test_material_from_spec_refuses_a_path_as_name(tmp_path):
    """The library call (not only the job schema) refuses a name that is a path."""
    from ase.build import bulk
    from ase.io import write as ase_write
    ase_write(tmp_path / "si.cif", bulk("Si", "diamond", a=5.431))
    with pytest.raises(MaterialError, match=r"'\.\./x' is not a plain name; expected letters"):
        material_from_spec({"name": "../x", "structure_file": "si.cif"}, tmp_path)
    assert material_from_spec({"name": "my-Si_1.0", "structure_file": "si.cif"}, tmp_path).name == "my-Si_1.0"


def test_schema_name_patterns_are_the_materials_pattern():
    from dmca_hpc.config import job_schema
    s = job_schema()
    assert s["properties"]["name"]["pattern"] == PLAIN_NAME.pattern
    assert s["properties"]["materials"]["items"]["else"]["properties"]["name"]["pattern"] == PLAIN_NAME.pattern


@pytest.mark.parametrize("command", ["validate", "run"])
def test_binary_job_file_is_one_line_with_the_file_name(tmp_path, command):
    p = tmp_path / "binary.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    r = run_cli(command, p, *(["--out", tmp_path / "o"] if command == "run" else []), timeout=120)
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(out) == 1 and out[0].startswith(f"{p}: (top level): not a YAML text file ("), out
    assert out[0].endswith("); expected a UTF-8 YAML job file"), out
    assert not (tmp_path / "o").exists()


def test_invalid_utf8_is_named(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: t\ndescription: caf\xe9\n".encode("latin-1"))
    lines = problems(p)
    assert len(lines) == 1 and lines[0].startswith(f"{p}: (top level): not a YAML text file (invalid "
                                                   "continuation byte"), lines


def test_duplicate_keys_name_the_key_and_lines(tmp_path):
    p = write(tmp_path, "name: t\nseed: 1\nmaterials: [Si]\nseed: 2\nstages: [materials]\n")
    assert problems(p) == [f"{p}: seed: key 'seed' given twice (line 4, first at line 2); "
                           "expected each key once"]
    p = write(tmp_path, """\
        name: t
        materials: [Si]
        stages: [materials]
        dft:
          kmesh: [2, 2, 2]
          xc: pbe
          kmesh: [3, 3, 3]
        """)
    assert problems(p) == [f"{p}: dft.kmesh: key 'kmesh' given twice (line 7, first at line 5); "
                           "expected each key once"]
    # anchors and merge keys are still fine (a merged key may be overridden)
    p = write(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\n"
                        "x_base: &b {kmesh: [2, 2, 2]}\n", "anchor.yaml")
    assert not any("twice" in line for line in problems(p))  # x_base is an unknown key, not a duplicate


def test_duplicate_key_in_set_value():
    with pytest.raises(ValueError, match=r"--set 'dft.kmesh=\{a: 1, a: 2\}': VALUE: a: key 'a' given twice"):
        parse_set("dft.kmesh={a: 1, a: 2}")


@pytest.mark.parametrize("value,line", [
    ("[{name: a, structure_file: s.cif}]", "materials[0]: structure_file '{dir}/s.cif' does not exist"),
    ("{a: 1}", "materials: expected array, got mapping {'a': 1}"),
    ("Si", "materials: expected array, got string 'Si'"),
    ("[[1]]", "materials[0]: expected object, got list [1]"),
])
def test_set_materials_odd_values_are_one_line(tmp_path, value, line):
    p = write(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\n")
    lines = problems(p, overrides=dict([parse_set(f"materials={value}")]))
    assert lines == [f"{p}: {line.replace('{dir}', str(tmp_path))}"]  # structure files: beside the job


def test_set_materials_mapping_through_the_cli(tmp_path):
    p = write(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\n")
    r = run_cli("run", p, "--out", tmp_path / "o", "--set", "materials=[{name: a, structure_file: s.cif}]",
                timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip().splitlines() == [f"{p}: materials[0]: structure_file "
                                             f"'{tmp_path / 's.cif'}' does not exist"]
    assert not (tmp_path / "o").exists()


def test_stages_with_a_mapping_item_is_one_line(tmp_path):
    p = write(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\n")
    lines = problems(p, overrides={"stages": [{"a": 1}]})
    assert len(lines) == 1 and lines[0].startswith(f"{p}: stages[0]: unknown value {{'a': 1}}")


def test_non_finite_numbers_are_rejected(tmp_path):
    p = write(tmp_path, "name: t\nmaterials: [Si]\nstages: [materials]\n"
                        "telemetry: {price_per_core_hour_usd: .inf}\n")
    assert problems(p) == [f"{p}: telemetry.price_per_core_hour_usd: got inf, expected a finite number"]
