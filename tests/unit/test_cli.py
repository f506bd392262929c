"""The command line: every command's --help works, fast, without heavy imports."""
import subprocess
import sys

import pytest

from conftest import run_cli
from dmca_hpc.cli.main import available_commands

HEAVY = ("pyscf", "numba", "mpi4py")


def test_top_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for name in available_commands():
        assert name in r.stdout


def test_no_command_is_an_error_with_help():
    r = run_cli()
    assert r.returncode == 2 and "usage:" in r.stdout


def test_unknown_command():
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.mark.parametrize("name", sorted(available_commands()))
def test_command_help_without_heavy_imports(name):
    code = ("import sys; from dmca_hpc.cli.main import main\n"
            f"try:\n    main([{name!r}, '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: dmca-hpc " + name in r.stdout
    assert "HEAVY []" in r.stdout, f"{name} --help imported {r.stdout.splitlines()[-1]}"


def test_run_overrides_select_material_and_keys(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nmaterials: [Si, Ge]\nstages: [materials]\n")
    r = run_cli("run", job, "--out", tmp_path / "o", "--material", "Ge", "--set", "seed=7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "o" / "Ge" / "materials" / "material.h5").exists()
    assert not (tmp_path / "o" / "Si").exists()
    assert "seed: 7" in (tmp_path / "o" / "job.yaml").read_text()
    r = run_cli("run", job, "--material", "Unobtainium", "--out", tmp_path / "o2")
    assert r.returncode == 2 and "materials[0]: unknown material 'Unobtainium'" in r.stdout
    r = run_cli("run", job, "--set", "seed", "--out", tmp_path / "o3")
    assert r.returncode == 2 and "expected KEY=VALUE" in r.stdout


def test_warmup_compiles():
    r = run_cli("warmup")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("warmup: compiled rates")


def test_one_blas_thread_per_rank_under_a_launcher():
    code = ("import os; os.environ.pop('OMP_NUM_THREADS', None); os.environ.pop('OPENBLAS_NUM_THREADS', None)\n"
            "os.environ['PMI_RANK'] = '0'\n"
            "from dmca_hpc.cli.main import _one_thread_per_rank; _one_thread_per_rank()\n"
            "print(os.environ['OMP_NUM_THREADS'], os.environ['OPENBLAS_NUM_THREADS'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["1", "1"], r.stderr
