"""Ranks never interleave partial telemetry lines (run under mpiexec -n 2).

    mpiexec -n 2 python -m pytest --with-mpi tests/test_telemetry_mpi.py

Every rank writes 1500 records of ~6 KiB (a failed unit carrying a long
error: larger than PIPE_BUF and a page, where torn appends would show) at
the same time, both to its own rank file and to ONE file shared by all
ranks (what SLURM array tasks sharing a telemetry file do).  Rank 0 then
merges the rank files and checks that every line of both is a whole,
schema-valid record and that every (rank, unit) appears exactly once.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

N_PER_RANK = 1500
PAD = 6000


@pytest.mark.mpi(min_size=2)
def test_ranks_write_only_whole_lines(tmp_path):
    import jsonschema

    from dmca_hpc.monitoring.collector import collect
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry, merge_rank_files, schema_path

    comm = get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    d = Path(comm.bcast(str(tmp_path) if rank == 0 else None, root=0)) / "telemetry"
    own = Telemetry(d, rank=rank, job_id="mpi", validate="raise")
    shared = Telemetry(d, rank=rank, job_id="mpi", filename="shared.jsonl", validate="off")
    comm.barrier()  # start together so the writes overlap
    for i in range(N_PER_RANK):
        err = f"RuntimeError: unit {i} of rank {rank} " + "x" * PAD
        own.record("formfactor", f"{rank}:{i}", "failed", 0.001, 0.001, 10.0, error=err)
        shared.record("formfactor", f"{rank}:{i}", "failed", 0.001, 0.001, 10.0, error=err)
    comm.barrier()
    if rank == 0:
        merged = merge_rank_files(d)
        validator = jsonschema.Draft7Validator(json.loads(schema_path().read_text()))
        want = {f"{r}:{i}" for r in range(size) for i in range(N_PER_RANK)}
        for path in (merged, d / "shared.jsonl"):
            data = path.read_bytes()
            assert data.endswith(b"\n")
            units = []
            for line in data.split(b"\n")[:-1]:
                rec = json.loads(line)  # a torn or interleaved line fails here
                assert validator.is_valid(rec)
                assert rec["hpc"]["error"].endswith("x" * PAD)
                units.append(rec["hpc"]["unit"])
            assert len(units) == size * N_PER_RANK and set(units) == want, path
        # the collector sees the same: every rank, no invalid line
        rep = collect([d / "shared.jsonl"], max_list=10)
        assert rep["records"] == size * N_PER_RANK and rep["invalid_lines_total"] == 0
        assert sorted(rep["ranks"]) == [str(r) for r in range(size)]
    comm.barrier()
