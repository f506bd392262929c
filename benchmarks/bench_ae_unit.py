"""Benchmark of the analytic (all-electron) form-factor route's work units (issue 14), one command:

    .venv/bin/python benchmarks/bench_ae_unit.py [--workdir DIR] [--out FILE] [--q-max Q]
                                                 [--ranks N] [--repeat N]

Fixed case: Si, all-electron def2-svp (pseudo: null), PBE, GDF SCF on 2x2x2,
bands on the Gamma-centred 4x4x4 mesh diagonalized at the irreducible k and
rotated to all 64 (``irreducible_only``; real dft + bands stages, cached in
--workdir), analytic route, q <= --q-max (default 10 alpha m_e), dq = 0.02
alpha m_e, dE = 0.1 eV, E <= 50 eV, scissor to the material's gap.  A unit of
the analytic route is one irreducible q against the k of the mesh
(``Engine.plan_units``); with ``use_symmetry`` it runs one k per orbit of the
little group of q, closed under the engine's partner maps, weighted by the
orbit's share (``Engine.unit_kset``, ``symmetry.pair_kset``).  In one run it
measures:

1. per unit (every irreducible q): k in the reduced set against the mesh,
   (k, Q) pairs, wall time of ``Engine.compute_unit`` (the least of
   ``--repeat`` calls) with the reduction and with every k (the same Engine
   with ``rotations = None``: every k, weight 1), their ratio, and the
   differences of the two partial tables (:func:`compare`):
   the largest bin difference over their max (whole table and below
   ``e_complete_ev``), the L1 share, and the E-integrated q profile's and the
   q-integrated spectrum's largest difference (the reduction is exact for the
   sum over whole degenerate band sets, not for how a near-degenerate pair that
   straddles an E-bin edge splits between the two bins);
2. totals: (k, Q) pairs and time with and without the reduction, the ratios,
   and the difference of the two summed tables;
3. unless ``--ranks 0``: the whole table by the command a user runs,
   ``dmca-hpc formfactor BANDS`` (the analytic route: ``route: auto`` picks it
   for an all-electron basis, checked in the table's metadata) on 1 rank and,
   for ``--ranks N > 1`` (default 2 when the venv's mpiexec exists), on
   ``mpiexec -n N``: wall times, efficiency t1 / (N t_N), the tables' largest
   difference (rank 0 sums the unit checkpoints in unit order: expected 0),
   the table against part 2's in-process sum, and the peak RSS of every rank
   (GNU time's maximum resident set size of each rank's process; the command
   writes no telemetry).

Timings are wall-clock seconds (time.perf_counter; part 1 also this process'
CPU seconds, time.process_time, which another job on the cores inflates less)
with one BLAS/OpenMP/Numba thread per process; the machine's load average is
recorded at start and end because the 2 cores may be shared.  Results go to
--out (JSON, default benchmarks/ae_unit_results.json) and stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
GNU_TIME = Path("/usr/bin/time")

CASE = {"material": "Si", "basis": "def2-svp", "pseudo": None, "xc": "PBE", "density_fit": "GDF",
        "scf_kmesh": [2, 2, 2], "kmesh": [4, 4, 4], "irreducible_only": True,
        "route": "analytic", "q_max": 10.0, "dq": 0.02, "de": 0.1, "e_max": 50.0}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def make_bands(workdir: Path) -> str:
    """bands.h5 of the fixed case from the real dft and bands stages (serial),
    reused from ``workdir`` when a complete one is there."""
    from benchlib import dft_and_bands
    from dmca_hpc.hpc.checkpoint import is_complete
    out = workdir / "si_ae_def2-svp_2x2x2_4x4x4"
    p = out / "bands" / "bands.h5"
    if p.exists() and is_complete(p):
        return str(p)
    job = {"dft": {"basis": CASE["basis"], "pseudo": CASE["pseudo"], "xc": CASE["xc"],
                   "kmesh": CASE["scf_kmesh"], "density_fit": CASE["density_fit"],
                   "pyscf_verbose": 0},
           # one chunk: GDF bands rebuild the 3-index integrals per chunk; no band path
           "bands": {"kmesh": CASE["kmesh"], "irreducible_only": CASE["irreducible_only"],
                     "plots": False, "band_path_npoints": 0, "chunk_size": 8}}
    return dft_and_bands(out, CASE["material"], job)


def scissor_gap() -> float:
    """The gap [eV] ``dmca-hpc formfactor`` shifts to for the case's material."""
    from dmca_hpc.materials import get_material
    mat = get_material(CASE["material"])
    return float(mat.scissor_gap_ev or mat.gap_ev)


def ff_section(q_max: float) -> dict:
    return {"route": CASE["route"], "q_max": q_max, "dq": CASE["dq"], "de": CASE["de"],
            "e_max": CASE["e_max"], "use_symmetry": True}


def rel_diff(a, b, ncol=None) -> float:
    """max |a - b| / max |b| (over the first ``ncol`` E bins when given)."""
    import numpy as np
    if ncol is not None:
        a, b = a[:, :ncol], b[:, :ncol]
    m = float(np.abs(b).max())
    return float(np.abs(a - b).max() / m) if m > 0 else float(np.abs(a - b).max())


def compare(a, b, ncol: int) -> dict:
    """Differences of table ``a`` (reduced k set) from ``b`` (every k), relative
    to ``b``: the largest bin difference over the max (``max_rel``; ``*_below_e_complete``:
    the first ``ncol`` E bins), the L1 share ``sum|a-b| / sum|b|``, and the max-norm
    difference of the E-integrated q profile and of the q-integrated spectrum.

    Why the integrated figures: the reduction keeps the sum over a whole degenerate
    band set exactly, not its split between bins.  A pair the states' own symmetry
    breaking splits by ~1e-4 eV (GDF) can straddle an E-bin edge, and each orbit
    member then splits the pair's weight between two adjacent bins in its own
    mixing; single bins can differ by percent while every E-integrated figure agrees
    to the states' symmetry breaking."""
    return {"max_rel": rel_diff(a, b), "max_rel_below_e_complete": rel_diff(a, b, ncol),
            "l1_rel": float(abs(a - b).sum() / max(abs(b).sum(), 1e-300)),
            "q_profile_max_rel": rel_diff(a.sum(axis=1), b.sum(axis=1)),
            "spectrum_max_rel": rel_diff(a.sum(axis=0), b.sum(axis=0))}


def timed(eng, unit, repeat: int):
    """``eng.compute_unit(unit)`` ``repeat`` times: (table, stats, least wall s,
    least CPU s) -- the least, since another job on the cores only adds time."""
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        table, stats = eng.compute_unit(unit)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return table, stats, min(walls), min(cpus)


def time_units(bd, q_max: float, repeat: int = 1) -> tuple[dict, dict]:
    """Part 1 and 2: every unit with the reduced k set and with every k.

    Returns (results, tables): tables = {"reduced", "all_k": the sums of the
    partial tables (unnormalized, [nq, nE]), "engine": the Engine}."""
    import numpy as np
    from dmca_hpc.electronic.ae_overlap import q_plus_g
    from dmca_hpc.electronic.formfactor import Engine, settings
    gap = scissor_gap()
    s = settings(ff_section(q_max))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        eng = Engine(bd, s, gap)
        t_setup = time.perf_counter() - t0
        # numba compile / cache load on a throwaway engine with a tiny table
        t0 = time.perf_counter()
        weng = Engine(bd, settings(ff_section(4 * CASE["dq"])), gap)
        weng.compute_unit(weng.plan_units()[0])
        t_warm = time.perf_counter() - t0
    if eng.route != "analytic" or eng.rotations is None:
        raise RuntimeError(f"expected the analytic route with symmetry, got {eng.route!r}")
    units = eng.plan_units()
    ncol = int(np.floor(eng.e_complete_ev / CASE["de"]))
    rots = eng.rotations
    rows, tot = [], {"kQ_red": 0, "kQ_all": 0, "t_red": 0.0, "t_all": 0.0, "c_red": 0.0,
                     "c_all": 0.0}
    sum_red = np.zeros((eng.nq, eng.ne))
    sum_all = np.zeros((eng.nq, eng.ne))
    print(f"{len(units)} units (irreducible q) x {bd.nk} k, {len(rots)} mesh rotations, "
          f"batch {eng.batch} Q, valence bands {eng.v0}..{eng.nocc - 1}, {eng.ncond} "
          f"conduction, e_complete {eng.e_complete_ev:.2f} eV", flush=True)
    for u in units:
        iq = int(u[0])
        ks, mult = eng.unit_kset(iq)
        Qv, _ = q_plus_g(eng.cell, bd.kpts[iq], eng.nq * CASE["dq"])
        tr, st_r, t_red, c_red = timed(eng, u, repeat)
        # every k with weight 1: Engine.unit_kset's branch for rotations None
        eng.rotations = None
        try:
            ta, st_a, t_all, c_all = timed(eng, u, repeat)
        finally:
            eng.rotations = rots
        row = {"iq": iq, "q_frac": [float(x) for x in bd.kpts_frac[iq]],
               "q_bohr_inv": float(np.linalg.norm(bd.kpts[iq])), "w_q": float(u[3]),
               "nQ": int(len(Qv)), "k_reduced": int(len(ks)), "k_mesh": int(bd.nk),
               "mult_sum": float(mult.sum()),
               "kQ_reduced": int(len(ks) * len(Qv)), "kQ_all": int(bd.nk * len(Qv)),
               "q_scan_points_reduced": int(st_r["q_scan_points"]),
               "q_scan_points_all": int(st_a["q_scan_points"]),
               "wall_reduced_s": t_red, "wall_all_k_s": t_all, "speedup": t_all / t_red,
               "cpu_reduced_s": c_red, "cpu_all_k_s": c_all, "cpu_speedup": c_all / c_red,
               "diff": compare(tr, ta, ncol)}
        rows.append(row)
        sum_red += tr
        sum_all += ta
        tot["kQ_red"] += row["kQ_reduced"]
        tot["kQ_all"] += row["kQ_all"]
        tot["t_red"] += t_red
        tot["t_all"] += t_all
        tot["c_red"] += c_red
        tot["c_all"] += c_all
        print(f"  q {iq:3d} {row['q_frac']} (|q| {row['q_bohr_inv']:.3f} alpha m_e, {len(Qv)} Q): "
              f"{len(ks)} of {bd.nk} k, {t_red:.2f} s vs {t_all:.2f} s ({row['speedup']:.2f}x; "
              f"CPU {row['cpu_speedup']:.2f}x), "
              f"tables max rel diff {row['diff']['max_rel']:.1e} (L1 {row['diff']['l1_rel']:.1e}, "
              f"q profile {row['diff']['q_profile_max_rel']:.1e}, spectrum "
              f"{row['diff']['spectrum_max_rel']:.1e})", flush=True)
    res = {"engine": {"route": eng.route, "lattice_sum": eng.analytic.lattice_sum,
                      "n_rotations": int(len(rots)), "batch_Q": int(eng.batch),
                      "unit_nk_max": int(eng.unit_nk_max), "nao": int(bd.nao),
                      "nao_cart": int(eng.analytic.nao_cart), "nocc": int(eng.nocc),
                      "valence_bands_used": [int(eng.v0), int(eng.nocc)],
                      "ncond": int(eng.ncond), "table_shape": [int(eng.nq), int(eng.ne)],
                      "e_complete_ev": eng.e_complete_ev, "gap_ev": eng.gap_ev,
                      "memory_bound_mb": eng.memory_bound_mb, "setup_s": t_setup,
                      "warmup_s": t_warm},
           # keyed by q's mesh index (a dict: benchlib.finish prints only the scalars)
           "per_unit": {str(r["iq"]): r for r in rows},
           "totals": {"n_units": len(rows), "kQ_reduced": tot["kQ_red"], "kQ_all": tot["kQ_all"],
                      "kQ_ratio": tot["kQ_all"] / tot["kQ_red"],
                      "k_reduced": int(sum(r["k_reduced"] for r in rows)),
                      "k_all": int(sum(r["k_mesh"] for r in rows)),
                      "wall_reduced_s": tot["t_red"], "wall_all_k_s": tot["t_all"],
                      "speedup": tot["t_all"] / tot["t_red"],
                      "cpu_reduced_s": tot["c_red"], "cpu_all_k_s": tot["c_all"],
                      "cpu_speedup": tot["c_all"] / tot["c_red"],
                      "us_per_kQ_reduced": 1e6 * tot["t_red"] / tot["kQ_red"],
                      "us_per_kQ_all": 1e6 * tot["t_all"] / tot["kQ_all"],
                      "table_diff": compare(sum_red, sum_all, ncol),
                      "unit_diff_worst": {key: max(r["diff"][key] for r in rows)
                                          for key in rows[0]["diff"]}}}
    return res, {"reduced": sum_red, "all_k": sum_all, "engine": eng}


def run_cli(bands: str, work: Path, nranks: int, q_max: float) -> dict:
    """``dmca-hpc formfactor`` on ``nranks`` (1: a plain process, DMCA_HPC_MPI=0;
    else the venv's ``mpiexec -n``), fresh checkpoints, one thread per rank:
    wall time [s], the command's own figures, every rank's peak RSS [MiB]."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / "table.hdf5"
    cmd = [str(BIN / "dmca-hpc"), "formfactor", bands, "--out", str(out),
           "--workdir", str(work / "ckpt"), "--q-max", str(q_max), "--dq", str(CASE["dq"]),
           "--de", str(CASE["de"]), "--e-max", str(CASE["e_max"])]
    if GNU_TIME.exists():
        cmd = [str(GNU_TIME), "-f", "BENCH_PEAK_RSS_KB %M"] + cmd
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    if nranks > 1:
        cmd = [str(MPIEXEC), "-n", str(nranks)] + cmd
        env.pop("DMCA_HPC_MPI", None)
    else:
        env["DMCA_HPC_MPI"] = "0"
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                           f"{r.stderr[-3000:]}")
    m = re.search(r"\((\d+) units, ([0-9.]+) s\)", r.stdout)
    rss = [int(x) / 1024.0 for x in re.findall(r"BENCH_PEAK_RSS_KB (\d+)", r.stderr)]
    return {"ranks": nranks, "command": " ".join(cmd), "wall_s": wall,
            "n_units": int(m.group(1)) if m else None,
            "units_wall_s": float(m.group(2)) if m else None,
            "peak_rss_mb_per_rank": sorted(rss) if rss else None, "table": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/dmca_bench_ae_unit",
                    help="cache of the dft/bands stages and the command runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "ae_unit_results.json"))
    ap.add_argument("--q-max", type=float, default=CASE["q_max"],
                    help="table's q_max [alpha m_e] (default %(default)s)")
    ap.add_argument("--ranks", type=int, default=2 if MPIEXEC.exists() else 1,
                    help="part 3: dmca-hpc formfactor on 1 rank and on this many "
                         "(1: one rank only; 0: skip); default 2 when mpiexec exists")
    ap.add_argument("--repeat", type=int, default=1,
                    help="calls per unit and k set in parts 1-2, the least time kept "
                         "(default %(default)s)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        print(f"bench_ae_unit: --repeat must be >= 1, got {args.repeat}", file=sys.stderr)
        return 2
    if args.q_max <= 0:
        print(f"bench_ae_unit: --q-max must be positive [alpha m_e], got {args.q_max}",
              file=sys.stderr)
        return 2
    if args.ranks > 1 and not MPIEXEC.exists():
        print(f"bench_ae_unit: --ranks {args.ranks} needs {MPIEXEC}", file=sys.stderr)
        return 2
    for v in THREAD_VARS:
        os.environ[v] = "1"
    import numpy as np
    from dmca_hpc.electronic.bands import load_bands
    from dmca_hpc.electronic.formfactor import prefactor
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    res = {"case": {**CASE, "q_max": args.q_max}, "repeat": args.repeat,
           "unit_labels": {"q": "alpha*m_e (= bohr^-1)", "E": "eV", "time": "s (wall)",
                           "memory": "MiB", "q_frac": "reciprocal-lattice coordinates"},
           "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), "threads_per_process": 1}
    t0 = time.perf_counter()
    bands = make_bands(wd)
    res["bands_s"] = time.perf_counter() - t0
    bd = load_bands(bands)
    res["case"].update(bands_file=bands, n_k=int(bd.nk), n_ibz=int(len(bd.ibz_index)),
                       nbands=int(bd.nbands), nocc=int(bd.nocc))
    print(f"bands: {bands} ({res['bands_s']:.0f} s), {bd.nbands} bands, {len(bd.ibz_index)} "
          f"irreducible k of {bd.nk}", flush=True)

    # ---- 1, 2: units with and without the little-group reduction --------------
    part, tabs = time_units(bd, args.q_max, args.repeat)
    res.update(part)
    t = res["totals"]
    units = list(res["per_unit"].values())
    q0 = min(units, key=lambda r: r["q_bohr_inv"])  # the q = 0 unit
    res["q0_unit_k_reduced"], res["q0_unit_speedup"] = q0["k_reduced"], q0["speedup"]
    res["q0_unit_cpu_speedup"] = q0["cpu_speedup"]
    res["kQ_ratio"], res["time_ratio"], res["cpu_time_ratio"] = (t["kQ_ratio"], t["speedup"],
                                                                 t["cpu_speedup"])
    rest = [r for r in units if r is not q0]
    res["general_q_speedup_median"] = float(np.median([r["speedup"] for r in rest]))
    res["general_q_cpu_speedup_median"] = float(np.median([r["cpu_speedup"] for r in rest]))
    for key, v in t["table_diff"].items():
        res[f"table_diff_{key}"] = v
    print(f"totals: (k, Q) {t['kQ_reduced']} vs {t['kQ_all']} ({t['kQ_ratio']:.2f}x fewer), "
          f"{t['wall_reduced_s']:.1f} s vs {t['wall_all_k_s']:.1f} s ({t['speedup']:.2f}x; CPU "
          f"{t['cpu_speedup']:.2f}x), "
          f"summed tables: {json.dumps(t['table_diff'])}", flush=True)

    # ---- 3: the whole table by the command, 1 rank vs N ranks ------------------
    if args.ranks >= 1:
        eng = tabs["engine"]
        f2_ref = tabs["reduced"] * prefactor(float(eng.cell.vol), CASE["dq"], CASE["de"],
                                             eng.nq)[:, None]
        from dmca_hpc.tables import read_table
        runs = {}
        for n in sorted({1, args.ranks}):
            runs[n] = run_cli(bands, wd / f"cli_{n}rank", n, args.q_max)
            print(f"dmca-hpc formfactor on {n} rank(s): {runs[n]['wall_s']:.1f} s wall "
                  f"(units {runs[n]['units_wall_s']} s), peak RSS per rank "
                  f"{runs[n]['peak_rss_mb_per_rank']} MiB", flush=True)
        tabs_cli = {n: read_table(r["table"]) for n, r in runs.items()}
        cli = {"runs": {str(n): r for n, r in runs.items()},
               "route_in_table": tabs_cli[1].metadata.get("route"),
               "table_1rank_vs_part2_max_rel_diff": rel_diff(tabs_cli[1].f2, f2_ref)}
        if args.ranks > 1:
            n = args.ranks
            cli["efficiency"] = runs[1]["wall_s"] / (n * runs[n]["wall_s"])
            cli["efficiency_units_only"] = (runs[1]["units_wall_s"] / (n * runs[n]["units_wall_s"])
                                            if runs[1]["units_wall_s"] and runs[n]["units_wall_s"]
                                            else None)
            cli[f"table_1rank_vs_{n}ranks_max_rel_diff"] = rel_diff(tabs_cli[n].f2, tabs_cli[1].f2)
            res["strong_scaling_efficiency"] = cli["efficiency"]
            res["tables_1_vs_n_ranks_max_rel_diff"] = cli[f"table_1rank_vs_{n}ranks_max_rel_diff"]
        res["cli"] = cli
        print("command:", json.dumps({k: v for k, v in cli.items() if k != "runs"}), flush=True)

    from benchlib import finish
    return finish(res, args.out)


if __name__ == "__main__":
    sys.exit(main())
