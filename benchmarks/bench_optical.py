"""Benchmark of the optical limit from the DFT states (issue 8), one command:

    .venv/bin/python benchmarks/bench_optical.py [--workdir DIR] [--out FILE] [--kmesh N]

Fixed case: Si, gth-dzvp, PBE, SCF on 3x3x3 with a 25 Ha density grid (the
settings of jobs/si_reference.yaml; real dft stage, cached in --workdir).
In one run it measures:

1. time per k point of our density matrix element (bands at k and k + q e_a,
   then C^dagger (S + i q.R) C) against the same bands followed by PySCF's
   analytic AO-pair Fourier transform (``ft_aopair_kpts`` at G = 0, one call
   per direction), and the agreement of sum |d|^2;
2. strong scaling 1 -> 2 ranks (real mpiexec -n 2) of the whole optical
   limit on an N x N x N mesh (default 8), and that both give the same
   transitions.

Results go to --out (JSON) and stdout, with the machine's load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from dmca_hpc.pipeline import make_context
from dmca_hpc.stages import dft as dft_stage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCF = {"basis": "gth-dzvp", "pseudo": "gth-pbe", "xc": "PBE", "kmesh": [3, 3, 3],
       "ke_cutoff_hartree": 25.0, "pyscf_verbose": 0}


def make_scf(workdir: Path) -> str:
    from dmca_hpc.materials import get_material
    from dmca_hpc.hpc.parallel import SerialComm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx = make_context("dft", workdir / "si", get_material("Si"), {"dft": SCF},
                               comm=SerialComm())
        return dft_stage.run_stage(ctx)["scf"]


def time_kernel(scf: str, n_k: int, dq: float = 1e-4) -> dict:
    from dmca_hpc.electronic.bands import BandWorker as _Worker
    from dmca_hpc.electronic.scf import load_scf
    from dmca_hpc.electronic.matrix_elements import ft_aopair_bloch
    from dmca_hpc.response.optical import transitions_at_k
    d = load_scf(scf)
    cell = d["cell"]
    nocc = int(round(cell.nelectron)) // 2
    w = _Worker(scf, cell.nao_nr())
    rng = np.random.default_rng(0)
    ks = rng.random((n_k, 3)) @ cell.reciprocal_vectors()
    transitions_at_k(w, cell, ks[0], nocc, dq)   # warm-up (grids, potential)
    t_ours = t_ft = 0.0
    s_ours = s_ft = 0.0
    for k in ks:
        t0 = time.perf_counter()
        _, d2 = transitions_at_k(w, cell, k, nocc, dq)
        t_ours += time.perf_counter() - t0
        s_ours += d2.sum()
        t0 = time.perf_counter()
        kq = np.vstack([k, k + dq * np.eye(3)])
        e, c = w.bands(kq)
        acc = 0.0
        for a in range(3):
            f = ft_aopair_bloch(cell, np.zeros((1, 3)), k, kq[a + 1])[0]
            m = c[a + 1][:, nocc:].conj().T @ f @ c[0][:, :nocc]
            acc = acc + np.abs(m) ** 2
        t_ft += time.perf_counter() - t0
        s_ft += acc.sum() / (3 * dq ** 2)
    return {"n_k": n_k, "ours_s_per_k": t_ours / n_k, "ft_aopair_s_per_k": t_ft / n_k,
            "speedup": t_ft / t_ours, "sum_d2_ours_bohr2": s_ours, "sum_d2_ft_bohr2": s_ft,
            "rel_diff": abs(s_ours / s_ft - 1)}


def run_worker(scf: str, work: Path, kmesh: int, nranks: int) -> dict:
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from benchlib import run_worker_cmd
    return run_worker_cmd(__file__, ["--scf", scf, "--work", str(work), "--kmesh", str(kmesh)],
                          nranks)


def worker(args) -> int:
    from dmca_hpc.response.optical import compute_transitions
    from dmca_hpc.hpc.parallel import get_comm, peak_memory_mb
    comm = get_comm()
    comm.Barrier()
    t0 = time.perf_counter()
    tr = compute_transitions(args.scf, [args.kmesh] * 3, comm=comm, chunk=1)
    wall = time.perf_counter() - t0
    mem = comm.gather(peak_memory_mb(), root=0)
    if comm.Get_rank() == 0:
        np.save(Path(args.work) / "strength.npy", tr.strength_bohr2)
        print("RESULT " + json.dumps({"wall_s": wall, "ranks": comm.Get_size(),
                                      "n_ibz": tr.meta["n_ibz"], "peak_mem_mb_per_rank": mem}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/dmca_bench_optical")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "optical_results.json"))
    ap.add_argument("--kmesh", type=int, default=8, help="N of the N x N x N optical mesh")
    ap.add_argument("--kernel-k", type=int, default=3, help="k points timed for the kernel comparison")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scf", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    res = {"case": {"material": "Si", **SCF, "optical_kmesh": [args.kmesh] * 3, "dq_bohr": 1e-4},
           "loadavg_start": os.getloadavg(), "cpus": os.cpu_count()}
    scf = make_scf(wd)
    res["kernel"] = time_kernel(scf, args.kernel_k)
    print("kernel:", json.dumps(res["kernel"]), flush=True)
    res["one_rank"] = run_worker(scf, wd / "r1", args.kmesh, 1)
    print("1 rank:", res["one_rank"], flush=True)
    res["two_ranks"] = run_worker(scf, wd / "r2", args.kmesh, 2)
    print("2 ranks:", res["two_ranks"], flush=True)
    a, b = np.load(wd / "r1" / "strength.npy"), np.load(wd / "r2" / "strength.npy")
    res["one_vs_two_ranks_max_rel_diff"] = float(np.abs(a - b).max() / np.abs(a).max())
    res["strong_scaling_efficiency"] = res["one_rank"]["wall_s"] / (2 * res["two_ranks"]["wall_s"])
    from benchlib import finish
    return finish(res, args.out)


if __name__ == "__main__":
    sys.exit(main())
