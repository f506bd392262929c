"""Shared test fixtures.  Tests are grouped by what they need: plain unit
tests, MPI tests (``@pytest.mark.mpi``, run under ``mpiexec -n 2 python -m
pytest --with-mpi``), integration tests with real pw.x / SLURM (skipped with
the reason when the program is missing), and physics-reference tests that
read ../shared/reference."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference"

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# every telemetry record a stage emits in the tests must satisfy the contract
os.environ.setdefault("DMCA_TELEMETRY_STRICT", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s")


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE.is_dir():
        pytest.skip(f"shared reference data not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def qcdark_ge(reference_dir):
    p = reference_dir / "qcdark" / "Ge_final.hdf5"
    if not p.exists():
        pytest.skip(f"QCDark Ge reference table missing: {p}")
    return p


def mpiexec():
    """Path of the mpiexec next to this Python (the mpich wheel), else PATH."""
    cand = Path(sys.executable).parent / "mpiexec"
    return str(cand) if cand.exists() else shutil.which("mpiexec")


def run_cli(*args, env=None, cwd=None, timeout=600, mpi=0):
    """Run ``dmca-hpc`` in a subprocess (optionally under mpiexec -n mpi)."""
    cmd = [sys.executable, "-m", "dmca_hpc.cli", *map(str, args)]
    if mpi:
        exe = mpiexec()
        if exe is None:
            pytest.skip("mpiexec not found (pip install '.[mpi]')")
        cmd = [exe, "-n", str(mpi), *cmd]
    e = {**os.environ, **(env or {})}
    e.pop("PMI_RANK", None)
    e.pop("PMI_SIZE", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)
