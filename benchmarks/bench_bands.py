#!/usr/bin/env python
"""Benchmark: dense-mesh band stage (dmca_hpc.electronic.bands) for Si on 1 and 2 MPI ranks.

One command:

    python benchmarks/bench_bands.py [--dense-kmesh 6 6 6] [--basis gth-dzvp] [--ke-cutoff-hartree 10]

Runs the SCF once (serially, 2x2x2), then the bands stage from scratch with
1 rank and with ``mpiexec -n 2`` (same SCF, fresh unit checkpoints), each as
the real command ``python -m dmca_hpc.electronic.scf`` with OMP_NUM_THREADS=1 and
OPENBLAS_NUM_THREADS=1, and prints

* the bands-stage wall time [s] from the telemetry (first chunk start to the
  end of the merge into bands.h5), the whole command's wall time [s],
* the speed-up T(1)/T(2) and parallel efficiency,
* the peak resident memory [MiB] of every rank (telemetry peak_memory_mb),
* and checks that both runs give bitwise identical bands.

Results also go to ``<out>/bench_bands.json``.  The numbers depend on the
machine's load: on a shared 2-core box other jobs take cores too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def _mpiexec():
    cand = Path(sys.executable).parent / "mpiexec"
    return str(cand) if cand.exists() else shutil.which("mpiexec")


def _records(out: Path):
    recs = []
    for p in sorted((out / "telemetry").glob("rank-*.jsonl")):
        recs += [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    return [r for r in recs if r["hpc"]["stage"] == "bands"]


def run(out: Path, nranks: int, args) -> dict:
    cmd = [sys.executable, "-m", "dmca_hpc.electronic.scf", "Si", "--out", str(out), "--basis", args.basis,
           "--kmesh", *map(str, args.kmesh), "--dense-kmesh", *map(str, args.dense_kmesh),
           "--chunk-size", str(args.chunk_size), "--band-path-npoints", "0", "--no-plots"]
    if args.ke_cutoff_hartree is not None:
        cmd += ["--ke-cutoff-hartree", str(args.ke_cutoff_hartree)]
    if nranks > 1:
        exe = _mpiexec()
        if exe is None:
            raise SystemExit("mpiexec not found (pip install '.[mpi]')")
        cmd = [exe, "-n", str(nranks), *cmd]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    recs = _records(out)
    starts = [x["timestamp"] - x["hpc"]["wall_seconds"] for x in recs if ":mesh:" in x["hpc"]["unit"]]
    end = max(x["timestamp"] for x in recs)
    peak = {}
    for x in recs:
        rk = x["hpc"]["rank"]
        peak[rk] = max(peak.get(rk, 0.0), x["hpc"]["peak_memory_mb"])
    return {"nranks": nranks, "stage_wall_s": end - min(starts), "command_wall_s": wall,
            "units": sum(1 for x in recs if ":mesh:" in x["hpc"]["unit"]),
            "peak_memory_mb_per_rank": {str(k): round(v, 1) for k, v in sorted(peak.items())}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense-kmesh", type=int, nargs=3, default=[6, 6, 6])
    p.add_argument("--kmesh", type=int, nargs=3, default=[2, 2, 2], help="SCF mesh")
    p.add_argument("--basis", default="gth-dzvp")
    p.add_argument("--ke-cutoff-hartree", type=float, default=10.0,
                   help="FFT cutoff [hartree] (PySCF default if negative)")
    p.add_argument("--chunk-size", type=int, default=4, help="k-points per unit")
    p.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = p.parse_args(argv)
    if args.ke_cutoff_hartree is not None and args.ke_cutoff_hartree <= 0:
        args.ke_cutoff_hartree = None
    base = Path(args.out or tempfile.mkdtemp(prefix="bench_bands_"))
    base.mkdir(parents=True, exist_ok=True)
    # SCF once, serially (not part of the timed stage), by a run with a 1x1x1 dense mesh
    scf_dir = base / "scf"
    run(scf_dir, 1, argparse.Namespace(**{**vars(args), "dense_kmesh": [1, 1, 1]}))
    results = []
    for n in (1, 2):
        out = base / f"ranks{n}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(scf_dir / "dft", out / "dft")
        results.append(run(out, n, args))
    import h5py
    import numpy as np
    with h5py.File(base / "ranks1/bands/bands.h5") as a, h5py.File(base / "ranks2/bands/bands.h5") as b:
        same = bool(np.array_equal(a["energies"][()], b["energies"][()])
                    and np.array_equal(a["coeffs"][()], b["coeffs"][()]))
        nk, nao, nb = a["coeffs"].shape
    t1, t2 = results[0]["stage_wall_s"], results[1]["stage_wall_s"]
    summary = {"material": "Si", "basis": args.basis, "ke_cutoff_hartree": args.ke_cutoff_hartree,
               "dense_kmesh": args.dense_kmesh, "nk": nk, "nao": nao, "nbands": nb,
               "chunk_size": args.chunk_size, "runs": results, "speedup": t1 / t2,
               "efficiency": t1 / t2 / 2, "bitwise_identical": same, "cores": os.cpu_count(),
               "loadavg_1min": os.getloadavg()[0]}
    (base / "bench_bands.json").write_text(json.dumps(summary, indent=1))
    print(f"bands stage, Si {args.basis}, dense mesh {args.dense_kmesh} ({nk} k, {nb} bands, "
          f"{nao} AOs), chunk {args.chunk_size} k")
    for r in results:
        print(f"  {r['nranks']} rank(s): stage {r['stage_wall_s']:7.2f} s  (command "
              f"{r['command_wall_s']:6.2f} s)  peak memory per rank [MiB]: "
              f"{r['peak_memory_mb_per_rank']}")
    print(f"  speed-up 1->2 ranks: {summary['speedup']:.2f}x (efficiency "
          f"{100 * summary['efficiency']:.0f}%), bands bitwise identical: {same}, "
          f"load average {summary['loadavg_1min']:.1f} on {summary['cores']} cores")
    print(f"  details: {base / 'bench_bands.json'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
