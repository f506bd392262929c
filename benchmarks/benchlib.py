"""Shared by the benchmarks: run a benchmark's own ``--worker`` mode on N
ranks (real ``mpiexec -n N`` from the venv, one BLAS/OpenMP thread per
rank; N = 1 runs serially without MPI) and read its ``RESULT {json}`` line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_worker_cmd(script: str, args: list[str], nranks: int) -> dict:
    cmd = [sys.executable, script, "--worker", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if nranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(nranks)] + cmd
    else:
        env["DMCA_HPC_MPI"] = "0"
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def finish(res: dict, out) -> int:
    """Stamp the load average, write ``res`` to ``out`` (JSON) and print its
    scalar figures; the benchmark's exit code (0)."""
    res["loadavg_end"] = os.getloadavg()
    Path(out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))
    print(f"wrote {out}")
    return 0


def dft_and_bands(out, material: str, job: dict) -> str:
    """Run (or reuse through the stages' own checkpoints) the real dft and bands
    stages of ``job`` for ``material`` serially into ``out``; returns bands.h5."""
    import warnings
    from dmca_hpc.hpc.parallel import SerialComm
    from dmca_hpc.materials import get_material
    from dmca_hpc.pipeline import make_context
    from dmca_hpc.stages import bands as bands_stage
    from dmca_hpc.stages import dft as dft_stage
    mat = get_material(material)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = dft_stage.run_stage(make_context("dft", out, mat, job, comm=SerialComm()))
        r2 = bands_stage.run_stage(make_context("bands", out, mat, job, outputs={"dft": r1},
                                              comm=SerialComm()))
    return r2["bands"]
