"""Form factor under real MPI: 2 ranks give the same table as 1 rank.

Run: mpiexec -n 2 python -m pytest --with-mpi tests/test_formfactor_mpi.py
(plain pytest skips it).  The bands fixture is built once by rank 0 with the
real dft/bands stages (shared with tests/test_formfactor.py via pytest's
cache directory).
"""
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from si_cases import SMALL, cached_si_bands


@pytest.mark.mpi(min_size=2)
def test_two_ranks_same_table_as_one(request):
    from dmca_hpc.electronic.formfactor import compute_table, settings
    from dmca_hpc.electronic.bands import load_bands
    from dmca_hpc.hpc.parallel import SerialComm, get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry
    comm = get_comm()
    assert comm.Get_size() >= 2
    rank = comm.Get_rank()
    path = work = None
    if rank == 0:
        path = cached_si_bands(request)
        work = tempfile.mkdtemp(prefix="ff-mpi-")
    path, work = comm.bcast((path, work), root=0)
    bd = load_bands(path)
    # block of 2 k' -> 12 units, so the dynamic schedule gives both ranks work
    s = settings({**SMALL, "kprime_block": 2})
    tel = Telemetry(Path(work) / "telemetry", rank=rank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        par = compute_table(bd, s, Path(work) / "mpi", "h-mpi", comm=comm,
                            on_unit=lambda r, u, ph: tel.record_result("formfactor", r, unit=u, physics=ph),
                            progress=False, gap_target_ev=1.11)
    comm.Barrier()
    if rank != 0:
        assert par is None
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ser = compute_table(bd, s, Path(work) / "serial", "h-mpi", comm=SerialComm(),
                            progress=False, gap_target_ev=1.11)
    assert par["n_units"] == ser["n_units"] == 12
    ref = ser["f2"]
    assert ref.sum() > 0
    # the unit tables are summed in unit order on rank 0: bitwise the same
    assert np.abs(par["f2"] - ref).max() <= 1e-12 * ref.max()
    ranks = set()
    for p in (Path(work) / "telemetry").glob("rank-*.jsonl"):
        for line in p.read_text().splitlines():
            ranks.add(json.loads(line)["hpc"]["rank"])
    assert ranks == {0, 1}, f"units ran on ranks {ranks}; dynamic dispatch should use both"


@pytest.mark.mpi(min_size=2)
def test_two_ranks_same_table_as_one_analytic_route(request):
    """The analytic route (units: one irreducible q against every k) on 2 ranks
    gives the serial table: the unit tables are summed in unit order on rank 0."""
    from dmca_hpc.electronic.formfactor import compute_table, settings
    from dmca_hpc.electronic.bands import load_bands
    from dmca_hpc.hpc.parallel import SerialComm, get_comm
    comm = get_comm()
    rank = comm.Get_rank()
    path = work = None
    if rank == 0:
        path = cached_si_bands(request)
        work = tempfile.mkdtemp(prefix="ff-mpi-ana-")
    path, work = comm.bcast((path, work), root=0)
    bd = load_bands(path)
    s = settings({**SMALL, "route": "analytic"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        par = compute_table(bd, s, Path(work) / "mpi", "h-ana", comm=comm, progress=False,
                            gap_target_ev=1.11)
    comm.Barrier()
    if rank != 0:
        assert par is None
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ser = compute_table(bd, s, Path(work) / "serial", "h-ana", comm=SerialComm(),
                            progress=False, gap_target_ev=1.11)
    assert par["n_units"] == ser["n_units"] == len(bd.ibz_index)
    ref = ser["f2"]
    assert ref.sum() > 0
    assert np.abs(par["f2"] - ref).max() <= 1e-12 * ref.max()
