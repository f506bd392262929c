"""Oracle batches over MPI ranks with the real pw.x.

* test_batch_over_ranks: in-process, run with
  ``mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/mpi/test_oracle_mpi.py``
  (skipped by plain pytest).
* the kill -9 / restart of a 2-rank batch launches mpiexec itself and lives
  in tests/integration/test_oracle_restart.py.

pw.x runs serially inside each rank (OMP_NUM_THREADS=1, launcher variables
removed): Debian's pw.x is an Open MPI program and the ranks are MPICH.
"""
import functools
import json
from pathlib import Path

import pytest

from dmca_hpc.oracle import batch

from oracle_cases import PSEUDO_DIR, PW, UPF, candidates, check_outputs, have_pw, settings

pytestmark = pytest.mark.skipif(
    not have_pw(),
    reason=f"real pw.x ({PW}) or {UPF} in {PSEUDO_DIR} missing (apt-get install quantum-espresso)")


@pytest.mark.mpi(min_size=2)
def test_batch_over_ranks(tmp_path):
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry, merge_rank_files
    comm = get_comm()
    out = Path(comm.bcast(str(tmp_path), root=0)) / "batch"
    tel = Telemetry(out / "telemetry", rank=comm.Get_rank())
    paths = batch.run_batch(candidates(), settings(), out, comm=comm,
                            record=functools.partial(tel.record, "oracle"))
    comm.barrier()
    if comm.Get_rank() == 0:
        assert set(paths) == {"results_extxyz", "results_h5", "failures"}
        check_outputs(out)
        recs = [json.loads(x) for x in merge_rank_files(out / "telemetry").read_text().splitlines()]
        assert sorted(r["hpc"]["unit"] for r in recs) == [f"cand-{i:07d}" for i in range(8)]
        print("candidates per rank:", {r: sum(x["hpc"]["rank"] == r for x in recs) for r in (0, 1)})
    else:
        assert paths == {}
