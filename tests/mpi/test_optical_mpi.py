"""Optical limit under real MPI: 2 ranks give the same transitions as 1 rank.

Run: mpiexec -n 2 python -m pytest --with-mpi tests/test_optical_mpi.py
(plain pytest skips it).  The SCF (Si gth-szv, 2x2x2) is the one of
tests/test_formfactor.py, built once by rank 0 into pytest's cache directory.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest

from si_cases import cached_si_bands


@pytest.mark.mpi(min_size=2)
def test_two_ranks_same_optical_limit_as_one(request):
    from dmca_hpc.response.optical import compute_transitions
    from dmca_hpc.hpc.parallel import SerialComm, get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry
    comm = get_comm()
    rank = comm.Get_rank()
    scf = work = None
    if rank == 0:
        scf = str(Path(cached_si_bands(request)).parents[1] / "dft" / "scf.h5")
        work = tempfile.mkdtemp(prefix="optical-mpi-")
    scf, work = comm.bcast((scf, work), root=0)
    tel = Telemetry(Path(work) / "telemetry", rank=rank)
    par = compute_transitions(scf, [4, 4, 4], comm=comm, workdir=Path(work) / "mpi",
                              input_hash="h", chunk=1,
                              on_unit=lambda r: tel.record_result("dielectric", r,
                                                                  unit=f"optical:{r.unit[0]}-{r.unit[1]}"))
    comm.Barrier()
    if rank != 0:
        assert par is None
        return
    ser = compute_transitions(scf, [4, 4, 4], comm=SerialComm(), chunk=1)
    np.testing.assert_array_equal(par.omega_ev, ser.omega_ev)
    np.testing.assert_allclose(par.strength_bohr2, ser.strength_bohr2, rtol=1e-12, atol=0)
    ranks = {int(p.stem.split("-")[1]) for p in (Path(work) / "telemetry").glob("rank-*.jsonl")
             if p.read_text().strip()}
    assert ranks == {0, 1}          # dynamic dispatch gave both ranks k-chunks
