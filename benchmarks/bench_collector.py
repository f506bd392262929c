"""Benchmark of the streaming telemetry collector against a naive baseline.

    python benchmarks/bench_collector.py [--lines 1000000] [--encrypt-fraction 0.0] [--json OUT]

Generates N telemetry lines (records as Telemetry.record writes them: 4
stages, 3 materials, 64 ranks, 1 % failed units, log-normal latencies, each
with its stream identity hpc.run_id / hpc.seq; seeded, so the files are the
same every run).  With ``--encrypt-fraction F`` a fraction F of the lines
(drawn per line) is AES-GCM encrypted by a second writer into its own file,
``bench.enc.jsonl``, the rest is plaintext in ``bench.jsonl``: the collector
refuses plaintext in a file holding encrypted lines, so one mixed file would
time the refusal of most lines, not their aggregation.  Both files are read
with the key and ``require_encrypted=False`` (``collect --allow-plaintext``).
It then times, each in a fresh subprocess so peak RSS is that of the method
alone:

* ``collect``: dmca_hpc.monitoring.collector.collect (streaming, schema-checked, stream
  checks, sketch quantiles);
* ``naive``: ``[json.loads(l) for l in f]`` kept in a list (encrypted lines
  decrypted with the package's LineDecoder, no validation), then exact p95 by
  sorting (what one writes first; no validation, so it does *less* work).

The run fails (exit 1) unless the collector counted every line as a valid
record: otherwise the figures would describe a different workload.

Reports wall time [s], lines per second, peak RSS [MiB] and the RSS ratio,
plus the relative error of the collector's p95 against the naive exact p95
(``numpy.quantile(method="lower")`` equivalent: sorted list index
floor(0.95 (n-1))) and of the DMCA median latency (exact up to 20,000
records, sketch beyond) against ``statistics.median``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("bands", "formfactor", "rates", "oracle")
MATERIALS = ("Si", "Ge", "GaAs")


#: AES-256 key of the benchmark's encrypted lines (bytes 0..31; benchmark only)
KEY = bytes(range(32))


def generate(path: Path, n: int, seed: int = 12345, encrypt_fraction: float = 0.0) -> list[Path]:
    """Write ``n`` telemetry lines: the plaintext ones to ``path``, the
    encrypted ones (a fraction ``encrypt_fraction``, drawn per line) to
    ``path`` with suffix ``.enc.jsonl``; returns the files written.  The
    records are deterministic for a seed (run ids fixed too); encrypted
    lines differ between runs only by their random nonces."""
    from dmca_hpc.monitoring.telemetry import Telemetry
    if not 0.0 <= encrypt_fraction <= 1.0:
        raise SystemExit(f"--encrypt-fraction must be within [0, 1], got {encrypt_fraction}")
    rng = random.Random(seed)
    enc_path = path.with_suffix(".enc.jsonl")
    tel = Telemetry(path.parent, rank=0, job_id="bench", validate="off", key=KEY) if encrypt_fraction > 0 else None
    plain = Telemetry(path.parent, rank=0, job_id="bench", validate="off")
    writers = [w for w in (plain, tel) if w is not None]
    for j, w in enumerate(writers):
        w.run_id = f"bench{j:011d}"
    seqs: dict[tuple[int, int], int] = {}  # (writer, rank) -> next seq: one stream per rank and file
    t0 = 1.7e9
    with open(path, "wb") as fh, open(enc_path, "wb") if tel is not None else open(os.devnull, "wb") as fe:
        for i in range(n):
            stage = STAGES[i % 4]
            wall = rng.lognormvariate(-1.0, 0.5)
            failed = rng.random() < 0.01
            rank = i % 64
            rec = {
                "schema_version": 2, "timestamp": t0 + i * 0.001 + wall,
                "domain": "dm-electron", "hypothesis": "DarkPhoton", "step": "run", "intervention": "baseline",
                "infra_cost_usd": wall / 3600 * 0.05, "qps": 1 / wall, "latency_p95_ms": wall * 1e3,
                "hpc": {"job_id": "bench", "rank": rank, "stage": stage, "unit": f"{stage}-{i}",
                        "wall_seconds": wall, "cpu_seconds": wall * 0.97, "core_seconds": wall, "cores": 1,
                        "peak_memory_mb": 200 + rank, "status": "failed" if failed else "ok",
                        "error": "RuntimeError: SCF did not converge" if failed else None, "host": "node01"},
                "physics": {"material": MATERIALS[i % 3], "kpts": [8, 8, 8], "band_gap_ev": 1.1},
            }
            enc = tel is not None and rng.random() < encrypt_fraction
            w = tel if enc else plain
            k = (id(w), rank)
            rec["hpc"]["run_id"], rec["hpc"]["seq"] = w.run_id, seqs.get(k, 0)
            seqs[k] = rec["hpc"]["seq"] + 1
            (fe if enc else fh).write(w.encode(rec))
    return [path] + ([enc_path] if tel is not None else [])


# peak resident memory of this process image [MiB]: VmHWM (ru_maxrss would include the
# pre-exec high-water mark of the forked parent on Linux)
_HWM = r'''
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
'''

_COLLECT = r"""
import json, sys, time
HWM
t = time.perf_counter()
from dmca_hpc.monitoring.collector import collect
files = sys.argv[1:]
# the plaintext file beside the key is read as `collect --allow-plaintext` reads it
rep = collect(files, key=bytes(range(32)) if len(files) > 1 else None, require_encrypted=False)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_rss_mb": hwm(),
                  "records": rep["records"], "invalid": rep["invalid_lines_total"],
                  "invalid_by_reason": rep["invalid_by_reason"],
                  "stream_issues": rep["integrity"]["issues_total"], "streams": rep["integrity"]["streams"],
                  "p95_ms": rep["latency_p95_ms"],
                  # the DMCA report fields (absent before the collector carried them)
                  "median_latency_ms": (rep.get("medians") or {}).get("latency_p95_ms"),
                  "fti_avg": rep.get("fti_avg"), "lambda_effective": rep.get("lambda_effective")}))
"""

_NAIVE = r"""
import json, math, sys, time
HWM
t = time.perf_counter()
from dmca_hpc.monitoring.telemetry import LineDecoder
dec = LineDecoder(key=bytes(range(32)), validate=False)
recs = []
for name in sys.argv[1:]:
    with open(name, "rb") as f:
        recs += [json.loads(l) if not l.startswith(b'{"enc"') else dec.decode(l.rstrip(b"\n"))[0] for l in f]
lat = sorted(r["hpc"]["wall_seconds"] * 1e3 for r in recs if "hpc" in r and r["hpc"]["status"] == "ok")
p95 = lat[math.floor(0.95 * (len(lat) - 1))]
import statistics
med = statistics.median(r["latency_p95_ms"] for r in recs)  # DMCA median over all records
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_rss_mb": hwm(),
                  "records": len(recs), "p95_ms": p95, "median_latency_ms": med}))
"""

_EMPTY = r"""
import json
HWM
import dmca_hpc.monitoring.collector
print(json.dumps({"peak_rss_mb": hwm()}))
"""


def _run(code: str, *args: str) -> dict:
    code = code.replace("HWM", _HWM)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--encrypt-fraction", type=float, default=0.0,
                    help="fraction of lines AES-GCM encrypted (key = bytes 0..31, benchmark only), written "
                         "to their own file bench.enc.jsonl beside the plaintext bench.jsonl")
    ap.add_argument("--json", metavar="OUT", help="also write the figures to OUT")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep the files")
    a = ap.parse_args(argv)
    d = Path(a.keep or tempfile.mkdtemp(prefix="bench_collector_"))
    d.mkdir(parents=True, exist_ok=True)
    path = d / "bench.jsonl"
    t = time.perf_counter()
    files = generate(path, a.lines, encrypt_fraction=a.encrypt_fraction)
    gen_s = time.perf_counter() - t
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    idle = _run(_EMPTY)["peak_rss_mb"]
    col = _run(_COLLECT, *map(str, files))
    naive = _run(_NAIVE, *map(str, files))
    res = {
        "lines": a.lines, "file_mb": round(size_mb, 1), "generate_s": round(gen_s, 2),
        "encrypt_fraction": a.encrypt_fraction, "files": [f.name for f in files],
        "interpreter_rss_mb": round(idle, 1),
        "collect_s": round(col["seconds"], 2), "collect_lines_per_s": round(a.lines / col["seconds"]),
        "collect_peak_rss_mb": round(col["peak_rss_mb"], 1),
        "naive_s": round(naive["seconds"], 2), "naive_peak_rss_mb": round(naive["peak_rss_mb"], 1),
        "rss_ratio_naive_over_collect": round(naive["peak_rss_mb"] / col["peak_rss_mb"], 1),
        "rss_above_interpreter_ratio": round((naive["peak_rss_mb"] - idle) / max(col["peak_rss_mb"] - idle, 1.0), 1),
        "p95_rel_error": abs(col["p95_ms"] - naive["p95_ms"]) / naive["p95_ms"],
        "dmca_median_rel_error": (abs(col["median_latency_ms"] - naive["median_latency_ms"])
                                  / naive["median_latency_ms"]) if col.get("median_latency_ms") else None,
        "fti_avg": col.get("fti_avg"), "lambda_effective": col.get("lambda_effective"),
        "records": col["records"], "invalid": col["invalid"], "invalid_by_reason": col["invalid_by_reason"],
        "streams": col["streams"], "stream_issues": col["stream_issues"],
    }
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    if not a.keep:
        for f in files:
            f.unlink()
        d.rmdir()
    if col["records"] != a.lines or col["invalid"] or col["stream_issues"] or naive["records"] != a.lines:
        print(f"bench_collector: the collector counted {col['records']} of {a.lines} lines as records "
              f"({col['invalid']} invalid: {col['invalid_by_reason']}; {col['stream_issues']} stream issues): "
              "the figures above do not describe the intended workload", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
