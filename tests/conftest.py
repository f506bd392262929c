"""Shared test fixtures and the folder markers.

Tests are grouped in folders by what they need, and each folder's tests get
its marker (``--strict-markers``: the markers are declared in setup.cfg):

* ``tests/unit/<package>/`` -> ``unit``: one module or package, in-process;
* ``tests/mpi/`` -> ``mpi``: run under ``mpiexec -n 2 python -m pytest --with-mpi -m mpi``
  (skipped in the serial pass);
* ``tests/integration/`` -> ``integration``: real pw.x, SLURM, container/wheel,
  HTTP and Prometheus (skipped with the reason when the program is missing);
* ``tests/reference/`` -> ``reference``: numbers nobody here chose (peer tables,
  handbook values), asserted to a stated number of digits; the data come from
  ../shared/reference, and a plain clone without it skips them with the reason.

``slow`` marks a test that takes more than ~30 s; the fast subset is
``pytest -m "unit and not slow"``."""
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


FOLDER_MARKERS = {"unit": "unit", "mpi": "mpi", "integration": "integration", "reference": "reference"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark each test by its folder (before -m selects)."""
    here = Path(__file__).resolve().parent
    for item in items:
        try:
            top = Path(str(item.fspath)).resolve().relative_to(here).parts[0]
        except ValueError:
            continue
        name = FOLDER_MARKERS.get(top)
        if name and item.get_closest_marker(name) is None:
            item.add_marker(getattr(pytest.mark, name))


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


def require_mpiexec():
    """:func:`mpiexec`, or skip the test with the reason."""
    exe = mpiexec()
    if exe is None:
        pytest.skip("mpiexec not found (pip install '.[mpi]')")
    return exe


def launcher_env():
    """Environment for a test that starts its own mpiexec: no inherited MPI/PMI
    variables (pytest itself may run under a launcher), one thread per rank,
    the Agg backend, and the package's own MPI detection."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_LOCALRANKID"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("DMCA_HPC_MPI", None)
    return env


def run_cli(*args, env=None, cwd=None, timeout=600, mpi=0):
    """Run ``dmca-hpc`` in a subprocess (optionally under mpiexec -n mpi)."""
    cmd = [sys.executable, "-m", "dmca_hpc.cli.main", *map(str, args)]
    if mpi:
        exe = mpiexec()
        if exe is None:
            pytest.skip("mpiexec not found (pip install '.[mpi]')")
        cmd = [exe, "-n", str(mpi), *cmd]
    e = {**os.environ, **(env or {})}
    e.pop("PMI_RANK", None)
    e.pop("PMI_SIZE", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)
