"""The stage runner on 2 ranks (mpiexec -n 2 pytest --with-mpi)."""
import json

import pytest


@pytest.mark.mpi(min_size=2)
def test_materials_stage_on_two_ranks(tmp_path_factory):
    from mpi4py import MPI
    from ase.build import bulk
    from ase.io import write
    from dmca_hpc import pipeline
    from dmca_hpc.config import load_job
    comm = MPI.COMM_WORLD
    d = comm.bcast(str(tmp_path_factory.mktemp("run")) if comm.Get_rank() == 0 else None)
    if comm.Get_rank() == 0:
        write(f"{d}/si.cif", bulk("Si", "diamond", a=5.43), parallel=False)
        with open(f"{d}/job.yaml", "w") as fh:
            fh.write("name: t\nmaterials: [Ge, {name: mySi, structure_file: si.cif}]\n"
                     "stages: [materials]\n")
    comm.Barrier()
    job = load_job(f"{d}/job.yaml")
    s = pipeline.run_job(job, f"{d}/out", log=lambda *a: None)
    if comm.Get_rank() == 0:
        assert s["failed"] == 0
        assert sorted(s["stages"]) == ["Ge/materials", "mySi/materials"]
        lines = open(f"{d}/out/telemetry/telemetry.jsonl").read().splitlines()
        assert len(lines) == 2 and all(json.loads(l)["hpc"]["rank"] == 0 for l in lines)
    else:
        assert s == {}
