"""Collector: figures against a hand-computed file, bad input, bounded memory, CLI, imports.

Tolerance note: quantiles come from a log-binned sketch with a documented
relative accuracy of 0.5 % (collector docstring), so every quantile (and
every FTI that divides by a median) is compared with rel=0.005, the
sketch's own guarantee, not a tuned number.
"""
from __future__ import annotations

import base64
import json
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dmca_hpc.monitoring import collector as C
from dmca_hpc.monitoring import telemetry as T

SKETCH_REL = 0.005  # documented sketch accuracy (see module docstring)


def _rec(stage, unit, status, wall, cost, ts, rank, material, error=None):
    return {"timestamp": ts, "domain": "dm-electron", "hypothesis": "none", "step": "run",
            "intervention": "baseline", "infra_cost_usd": cost, "qps": 1 / wall, "latency_p95_ms": wall * 1e3,
            "hpc": {"job_id": "42", "rank": rank, "stage": stage, "unit": unit, "wall_seconds": wall,
                    "cpu_seconds": wall, "peak_memory_mb": 100.0 + rank, "status": status, "error": error},
            "physics": {"material": material}}


HAND = [
    _rec("bands", "b1", "ok", 1.0, 0.010, 101.0, 0, "Si"),
    _rec("bands", "b2", "ok", 2.0, 0.020, 102.0, 1, "Si"),
    _rec("bands", "b3", "ok", 3.0, 0.030, 104.0, 0, "Si"),
    _rec("bands", "b4", "failed", 0.5, 0.005, 103.0, 1, "Si", error="RuntimeError: SCF did not converge"),
    _rec("rates", "r1", "ok", 0.2, 0.001, 105.0, 0, "Ge"),
    _rec("rates", "r2", "ok", 0.4, 0.002, 105.5, 1, "Ge"),
    # old-style record: DMCA core fields only, no timestamp
    {"domain": "dm-nucleus", "hypothesis": "WIMP", "step": "scan", "intervention": "baseline",
     "infra_cost_usd": 0.0005, "qps": 10.0, "latency_p95_ms": 100.0},
]


def _write_hand(path: Path, extra: bytes = b"") -> Path:
    with open(path, "wb") as fh:
        for r in HAND:
            fh.write(json.dumps(r).encode() + b"\n")
        fh.write(extra)
    return path


def test_figures_match_hand_computation(tmp_path):
    # line 8 binary, 9 schema violation, 10 NaN, 11 truncated last line
    bad = (b"\xff\xfe\x00\x01garbage\n" + b'{"domain": "x"}\n'
           + json.dumps({**HAND[0], "infra_cost_usd": float("nan")}).encode() + b"\n" + b'{"domain": "dm-el')
    rep = C.collect([_write_hand(tmp_path / "t.jsonl", bad)])
    # counts
    assert rep["records"] == 7 and rep["lines"] == 11
    assert (rep["ok"], rep["failed"], rep["skipped"]) == (6, 1, 0)
    # cost: 0.010+0.020+0.030+0.005+0.001+0.002+0.0005
    assert rep["cost_usd"] == pytest.approx(0.0685, rel=1e-12)
    assert rep["wasted_cost_usd"] == pytest.approx(0.005, rel=1e-9)
    # ok latencies [ms] sorted: 100 200 400 1000 2000 3000 -> p50 = x[floor(.5*5)] = x[2] = 400,
    # p95 = x[floor(.95*5)] = x[4] = 2000
    assert rep["latency_p50_ms"] == pytest.approx(400.0, rel=SKETCH_REL)
    assert rep["latency_p95_ms"] == pytest.approx(2000.0, rel=SKETCH_REL)
    # span: first start b1/b2 at 100 s, last end r2 at 105.5 s, + 0.1 s of the untimed old record
    assert rep["span_seconds"] == pytest.approx(5.6, rel=1e-12)
    assert rep["qps"] == pytest.approx(7 / 5.6, rel=1e-12)
    assert rep["throughput_units_per_s"] == pytest.approx(6 / 5.6, rel=1e-12)
    assert rep["concurrency_mean"] == pytest.approx(7.2 / 5.6, rel=1e-12)  # sum of walls 7.2 s
    # FTI, run as its own baseline: total cost / cost of ok units
    st = rep["stages"]
    assert set(st) == {"bands", "rates", "unknown"}
    assert st["bands"]["fti"] == pytest.approx(0.065 / 0.060, rel=1e-12) and st["bands"]["fti_grade"] == "FAIL"
    assert st["rates"]["fti"] == 1.0 and st["rates"]["fti_grade"] == "OK"
    assert st["unknown"]["fti"] == 1.0
    assert st["bands"]["latency_p50_ms"] == pytest.approx(2000.0, rel=SKETCH_REL)
    assert st["bands"]["cost_per_ok_unit_usd"] == pytest.approx(0.065 / 3, rel=1e-12)
    # cost-weighted mean: (0.065*13/12 + 0.003 + 0.0005) / 0.0685
    assert rep["fti_stage_avg"] == pytest.approx((0.065 * 13 / 12 + 0.0035) / 0.0685, rel=1e-12)
    assert rep["fti_stage_grade_worst"] == "FAIL"
    # DMCA: one row per (stage, job, step, intervention) -> bands, rates: FTI 1 (alone in
    # their stage); the old-style record is a core-only row of its own: FTI 1
    assert rep["count"] == 7 and rep["fti_rows"] == 3
    assert rep["fti_avg"] == pytest.approx(1.0, rel=1e-12) and rep["fti_grade_worst"] == "OK"
    # DMCA medians of the records' own fields (exact; 7 values)
    assert rep["medians"] == {"qps": pytest.approx(2.0), "latency_p95_ms": pytest.approx(500.0),
                              "infra_cost_usd": pytest.approx(0.005)}
    # groups
    assert {k: v["records"] for k, v in rep["materials"].items()} == {"Ge": 2, "Si": 4, "unknown": 1}
    assert {k: v["records"] for k, v in rep["ranks"].items()} == {"0": 3, "1": 3, "unknown": 1}
    assert rep["ranks"]["1"]["peak_memory_mb_max"] == 101.0
    # failures and invalid lines, by line number
    assert rep["failed_units_total"] == 1
    f = rep["failed_units"][0]
    assert (f["line"], f["stage"], f["unit"], f["rank"], f["material"]) == (4, "bands", "b4", 1, "Si")
    assert "SCF did not converge" in f["error"]
    assert [(b["line"], b["code"]) for b in rep["invalid_lines"]] == \
        [(8, "binary"), (9, "schema"), (10, "nonfinite"), (11, "truncated")]
    assert "hypothesis" in rep["invalid_lines"][1]["reason"]
    assert rep["invalid_lines_total"] == 4
    json.dumps(rep, allow_nan=False)  # the report is strict JSON


def test_fti_against_a_baseline(tmp_path):
    rep = C.collect([_write_hand(tmp_path / "t.jsonl")],
                    baseline={"rates": {"cost_per_ok_unit_usd": 0.001, "latency_p50_ms": 200.0},
                              "bands": {"cost_per_ok_unit_usd": 0.065 / 2, "latency_p50_ms": 1000.0}})
    st = rep["stages"]
    # rates: cost/unit 0.0015 vs 0.001 (1.5x), median latency x[floor(.5*1)] = 200 ms vs 200 ms
    assert st["rates"]["fti"] == pytest.approx(1.5, rel=SKETCH_REL)
    # bands: cost/unit (0.065/3) vs (0.065/2) = 2/3; latency 2000 vs 1000 ms = 2x slower -> 4/3
    assert st["bands"]["fti"] == pytest.approx(4 / 3, rel=SKETCH_REL)
    assert st["bands"]["fti_norm_cost"] == pytest.approx(2 / 3, rel=1e-12)
    assert st["unknown"]["fti_baseline"] == "self"
    # a previous report works as a baseline file: identical run -> FTI 1 everywhere... up to
    # waste, which the baseline's cost per ok unit already contains
    (tmp_path / "base.json").write_text(json.dumps(C.collect([tmp_path / "t.jsonl"])))
    again = C.collect([tmp_path / "t.jsonl"], baseline=C.load_baseline(tmp_path / "base.json"))
    for s in again["stages"].values():
        assert s["fti"] == pytest.approx(1.0, rel=1e-12) and s["fti_grade"] == "OK"


def test_sketch_quantiles_within_documented_accuracy():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.lognormal(0, 2, 50000), np.zeros(100), rng.uniform(1e-6, 1e-3, 1000)])
    sk = C.QuantileSketch()
    for v in x:
        sk.add(float(v))
    for q in (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0):
        exact = float(np.quantile(x, q, method="lower"))
        assert sk.quantile(q) == pytest.approx(exact, rel=SKETCH_REL, abs=1e-12), q
    assert len(sk.bins) < 3000  # bounded: depends on the value range, not on the count
    assert C.QuantileSketch().quantile(0.5) is None


@pytest.mark.parametrize("fti,grade", [(0.5, "OK"), (1.0, "OK"), (1.0000001, "WARN"), (1.05, "WARN"),
                                       (1.0500001, "FAIL"), (None, "FAIL"), (math.inf, "FAIL")])
def test_grades(fti, grade):
    assert C.fti_grade(fti) == grade


def test_never_crashes_on_garbage(tmp_path):
    rng = random.Random(99)
    files = {
        "random.bin": rng.randbytes(1 << 20),
        "huge_line.jsonl": b"{" + b"a" * (3 << 20),                    # 3 MiB, no newline
        "huge_then_good.jsonl": b"x" * (2 << 20) + b"\n" + json.dumps(HAND[0]).encode() + b"\n",
        "blank.jsonl": b"\n\n   \n",
        "empty.jsonl": b"",
        "types.jsonl": b"[1,2]\n42\nnull\n\"s\"\n{\"enc\":\"aesgcm\"}\n{\"domain\":1e999}\n",
        "nul.jsonl": b"\x00" * 5000 + b"\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    rep = C.collect([tmp_path / n for n in files], max_list=100_000)  # random.bin alone has ~4000 lines
    assert rep["records"] == 1  # the one good line after the oversized one
    by_file = {}
    for b in rep["invalid_lines"]:
        by_file.setdefault(Path(b["file"]).name, []).append((b["line"], b["code"]))
    assert by_file["huge_line.jsonl"] == [(1, "too_long")]
    assert by_file["huge_then_good.jsonl"] == [(1, "too_long")]
    assert [c for _, c in by_file["types.jsonl"]] == ["not_object"] * 4 + ["envelope", "schema"]
    assert "blank.jsonl" not in by_file and rep["blank_lines"] >= 3  # random.bin has some too
    assert rep["invalid_lines_total"] == sum(rep["invalid_by_reason"].values())
    json.dumps(rep, allow_nan=False)


def test_encrypted_and_wrong_key_lines_listed(tmp_path):
    key = bytes(range(32))
    tel = T.Telemetry(tmp_path, key=key, filename="t.jsonl", validate="raise")
    plain = T.Telemetry(tmp_path, filename="t.jsonl", validate="raise")
    for i in range(5):
        (tel if i % 2 else plain).record("bands", f"k{i}", "ok", 0.1, 0.1, 1)
    T.Telemetry(tmp_path, key=bytes(32), filename="t.jsonl").record("bands", "other", "ok", 0.1, 0.1, 1)
    lines = (tmp_path / "t.jsonl").read_bytes().splitlines()
    env = json.loads(lines[1])
    # flip every bit of the first ciphertext byte: setting it to a fixed value left the line intact
    # whenever the random nonce made that byte already equal (1 run in 256 failed)
    ct = bytearray(base64.b64decode(env["ct"]))
    ct[0] ^= 0xFF
    env["ct"] = base64.b64encode(bytes(ct)).decode()
    lines[1] = json.dumps(env).encode()
    (tmp_path / "t.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rep = C.collect([tmp_path / "t.jsonl"], key=key)
    # a file holding encrypted lines is an encrypted file: its plaintext lines (1, 3, 5) are refused
    assert rep["records"] == 1 and rep["encrypted_records"] == 1
    assert [(b["line"], b["code"]) for b in rep["invalid_lines"]] == \
        [(1, "plaintext"), (2, "tampered"), (3, "plaintext"), (5, "plaintext"), (6, "wrong_key")]
    assert all(b["reason"].startswith("plaintext line in an encrypted file")
               for b in rep["invalid_lines"] if b["code"] == "plaintext")
    rep = C.collect([tmp_path / "t.jsonl"], key=None)  # without a key the file is still an encrypted file
    assert rep["records"] == 0 and rep["invalid_by_reason"] == {"no_key": 3, "plaintext": 3}


def test_plaintext_files_refused_when_a_key_is_given(tmp_path):
    """A key given means encrypted telemetry is expected: a plaintext file (e.g. a rank
    file dropped into the run directory) is refused line by line unless plaintext is
    explicitly allowed; --require-encrypted refuses it without a key."""
    path = _write_hand(tmp_path / "plain.jsonl")
    key = bytes(range(32))
    rep = C.collect([path], key=key)
    assert rep["records"] == 0 and rep["invalid_by_reason"] == {"plaintext": 7}
    assert [b["line"] for b in rep["invalid_lines"]] == list(range(1, 8))
    assert rep["integrity"]["plaintext_refused"] == 7 and rep["gate"]["breached"]
    assert C.collect([path], key=key, require_encrypted=False)["records"] == 7
    assert C.collect([path], require_encrypted=True)["records"] == 0
    r = _run_cli(path, "--json", env={T.KEY_ENV: base64.b64encode(key).decode()})
    assert r.returncode == 0 and json.loads(r.stdout)["invalid_by_reason"] == {"plaintext": 7}
    r = _run_cli(path, "--json", "--allow-plaintext", env={T.KEY_ENV: base64.b64encode(key).decode()})
    assert r.returncode == 0 and json.loads(r.stdout)["records"] == 7
    r = _run_cli(path, "--json", "--require-encrypted")
    assert r.returncode == 0 and json.loads(r.stdout)["records"] == 0


def _run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "dmca_hpc.cli.main", "collect", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_cli_json_markdown_and_gate(tmp_path):
    hand = _write_hand(tmp_path / "hand.jsonl")
    r = _run_cli(hand, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for k in ("records", "invalid_lines", "failed_units", "cost_usd", "latency_p95_ms", "qps", "fti_avg",
              "fti_grade_worst", "lambda_effective"):
        assert k in rep
    assert rep["records"] == 7
    r = _run_cli(hand, "--gate")
    assert r.returncode == 1 and "gate breached" in r.stderr and "failed units" in r.stderr
    r = _run_cli(hand, "--markdown", "--gate", "--fti-max", "1.1", "--max-failures", "1")
    assert r.returncode == 0, r.stderr
    assert "| bands |" in r.stdout and "## Failed units (1)" in r.stdout
    # a clean run passes the gate
    tel = T.Telemetry(tmp_path / "clean", validate="raise")
    for i in range(10):
        tel.record("rates", f"u{i}", "ok", 0.01, 0.01, 1)
    assert _run_cli(tmp_path / "clean", "--gate").returncode == 0  # a directory = its rank files
    r = _run_cli(tmp_path / "missing.jsonl")
    assert r.returncode == 2 and "missing.jsonl" in r.stderr
    r = _run_cli(hand, env={T.KEY_ENV: "short"})
    assert r.returncode == 2 and T.KEY_ENV in r.stderr


def test_collector_imports_no_mpi_pyscf_numba(tmp_path):
    hand = _write_hand(tmp_path / "hand.jsonl")
    code = ("import sys, dmca_hpc.monitoring.collector, dmca_hpc.monitoring.exporter, dmca_hpc.monitoring.telemetry\n"
            "from dmca_hpc.cli.main import main\n"
            f"main(['collect', {str(hand)!r}, '--json', '--markdown', '-o', {str(tmp_path / 'o.txt')!r}])\n"
            "print(sorted(m for m in ('mpi4py', 'pyscf', 'numba', 'numpy', 'h5py') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


_FIFO_READER = r"""
import json, sys
from dmca_hpc.monitoring.collector import collect
rep = collect([sys.argv[1]])
# VmHWM, not ru_maxrss: Linux carries the pre-exec high-water mark of the forked pytest
# parent into ru_maxrss of the child, VmHWM belongs to this process image only
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"records": rep["records"], "invalid": rep["invalid_lines_total"],
                  "p95": rep["latency_p95_ms"], "rss_mb": int(hwm) / 1024}))
"""


@pytest.mark.parametrize("n", [100_000, pytest.param(1_000_000, marks=pytest.mark.slow)])
def test_streaming_memory_is_bounded(tmp_path, n):
    """n lines streamed through a FIFO (the data never exist as a file) into the
    collector in a fresh process; its peak RSS must stay far below the data size.

    Bound 64 MiB: the interpreter with the collector's imports takes ~20-25 MiB
    (measured in benchmarks/bench_collector.py); 1e5 lines are 50 MiB of JSON and a
    naive list of parsed records would hold ~370 MiB (3.7 GiB for 1e6)."""
    tel = T.Telemetry(tmp_path, validate="off")
    rng = random.Random(5)
    walls = [rng.lognormvariate(-1, 0.5) for _ in range(1000)]
    block = b"".join(tel.encode(_rec(("bands", "rates")[i % 2], f"u{i}", "ok", w, w / 72000, 1e9 + i, i % 8,
                                     ("Si", "Ge", "GaAs")[i % 3])) for i, w in enumerate(walls))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", _FIFO_READER, str(fifo)], stdout=subprocess.PIPE, text=True)

    def feed():
        with open(fifo, "wb") as fh:
            for _ in range(n // 1000):
                fh.write(block)
    t = threading.Thread(target=feed)
    t.start()
    out, _ = proc.communicate(timeout=600)
    t.join()
    res = json.loads(out)
    assert res["records"] == n and res["invalid"] == 0
    exact = sorted(w * 1e3 for w in walls)[math.floor(0.95 * 999)]  # every block has the same 1000 walls
    assert res["p95"] == pytest.approx(exact, rel=SKETCH_REL)
    assert res["rss_mb"] < 64, res


def test_write_run_summary_for_the_pipeline(tmp_path):
    hand = _write_hand(tmp_path / "telemetry.jsonl")
    out = C.write_run_summary(hand, tmp_path)
    rep = json.loads(Path(out["telemetry_summary"]).read_text())
    assert rep["records"] == 7 and out["failed_units"] == 1 and out["fti_stage_grade_worst"] == "FAIL"
    assert out["fti_grade_worst"] == "OK"  # DMCA: each row alone in its group
    assert out["cost_usd"] == pytest.approx(0.0685, rel=1e-12)
    assert "| bands |" in Path(out["telemetry_summary_md"]).read_text()


# ------------------------------------------------------------------ the DMCA report

#: the DMCA README / sample_ops_telemetry.jsonl lines, byte for byte as DMCA shows them
DMCA_SAMPLE = (b'{"domain": "direct_lab", "hypothesis": "WIMP", "step": 1, "intervention": "-", '
               b'"infra_cost_usd": 120, "qps": 480, "latency_p95_ms": 180}\n'
               b'{"domain":"cosmology","hypothesis":"DarkPhoton","step":1,"intervention":"-",'
               b'"infra_cost_usd":102.0,"qps":510.0,"latency_p95_ms":170.0}\n')


def _dmca_fti_by_hand(c, q, l, cm, qm, lm):
    # the DMCA definition written out: normalized cost / geometric-mean normalized performance
    return (c / cm) / math.sqrt((q / qm) * ((1 / l) / (1 / lm)))


def test_dmca_sample_lines_give_the_dmca_report(tmp_path):
    (tmp_path / "ops.jsonl").write_bytes(DMCA_SAMPLE)
    rep = C.collect([tmp_path / "ops.jsonl"])
    assert rep["count"] == 2 and rep["invalid_lines_total"] == 0
    # medians of two values: their mean
    assert rep["medians"] == {"qps": 495.0, "latency_p95_ms": 175.0, "infra_cost_usd": 111.0}
    f1 = _dmca_fti_by_hand(120, 480, 180, 111, 495, 175)   # 1.1134: dearer and slower than the median
    f2 = _dmca_fti_by_hand(102, 510, 170, 111, 495, 175)   # 0.8923
    assert (C.fti_grade(f1), C.fti_grade(f2)) == ("FAIL", "OK")  # DMCA thresholds 1.0 / 1.05
    assert rep["fti_avg"] == pytest.approx((f1 + f2) / 2, rel=1e-12)
    assert rep["fti_grade_worst"] == "FAIL"
    # lambda_effective with the DMCA collector's parameters and no timestamps (d = 7 days):
    # SIBG = 0.85 + 0.33 (fti_avg - 1), ASDPI = clamp(0.1 + 0.5 (12/6 - 1)) = 0.25 /day
    sibg = 0.85 + 0.33 * ((f1 + f2) / 2 - 1)
    assert rep["lambda"]["lambda_asdpi_per_day"] == 0.25 and rep["lambda"]["days_since_change"] == 7.0
    assert rep["lambda_effective"] == pytest.approx(sibg * math.exp(-0.25 * 7), rel=1e-12)
    assert rep["gate"]["breached"] is False  # fti_avg 1.003 <= 1.05


def test_two_thousand_dmca_lines_pass_the_gate(tmp_path):
    (tmp_path / "ops.jsonl").write_bytes(DMCA_SAMPLE * 1000)
    r = _run_cli(tmp_path / "ops.jsonl", "--gate", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["count"] == 2000 and rep["records"] == 2000
    assert rep["medians"]["qps"] == 495.0  # 1000 of each: the mean of the two middle values
    assert rep["fti_avg"] == pytest.approx(1.0028469778785587, rel=1e-9)


def test_dmca_rows_rank_interventions_of_one_stage(tmp_path):
    """HPC records form one DMCA row per (stage, job, step, intervention): two runs of
    the same stage, the second twice as expensive per unit at the same speed."""
    recs = []
    for iv, price in (("ranks_1", 0.01), ("ranks_2", 0.02)):
        for i in range(4):
            r = _rec("bands", f"k{i}", "ok", 1.0, price, 100.0 + i + (50 if iv == "ranks_2" else 0), 0, "Si")
            r["intervention"] = iv
            recs.append(r)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = C.collect([tmp_path / "t.jsonl"])
    rows = {r["intervention"]: r for r in rep["dmca_rows"]}
    # cost per ok unit 0.01 / 0.02 (median 0.015), same throughput 4 units / 4 s, same p95
    assert rows["ranks_1"]["infra_cost_usd"] == pytest.approx(0.01)
    assert rows["ranks_1"]["fti"] == pytest.approx(0.01 / 0.015, rel=1e-9) and rows["ranks_1"]["fti_grade"] == "OK"
    assert rows["ranks_2"]["fti"] == pytest.approx(0.02 / 0.015, rel=1e-9) and rows["ranks_2"]["fti_grade"] == "FAIL"
    assert rep["fti_avg"] == pytest.approx(1.0, rel=1e-9) and rep["fti_grade_worst"] == "FAIL"
    # days since the change of intervention: ranks_2 ran from t = 149 s to 153 s
    assert rep["lambda"]["days_since_change"] == pytest.approx(4.0 / 86400, rel=1e-9)
    assert rep["lambda"]["days_since_change_source"] == "telemetry"


def test_median_switches_to_the_sketch_beyond_the_exact_limit():
    m = C.MedianTracker()
    for i in range(C.EXACT_MEDIAN_MAX + 1001):
        m.add(float(i + 1))
    assert not m.exact
    assert m.median() == pytest.approx((C.EXACT_MEDIAN_MAX + 1001) / 2, rel=SKETCH_REL)


def test_lambda_parameters_from_cli_and_job_section(tmp_path):
    (tmp_path / "ops.jsonl").write_bytes(DMCA_SAMPLE)
    r = _run_cli(tmp_path / "ops.jsonl", "--json", "--lambda-param", "deploy_rate=12",
                 "--lambda-param", "asdpi_lambda0=0.05", "--days-since-change", "1")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    # at the reference pace ASDPI = asdpi_lambda0
    assert rep["lambda"]["lambda_asdpi_per_day"] == pytest.approx(0.05)
    assert rep["lambda_effective"] == pytest.approx(rep["lambda"]["lambda_sibg"] * math.exp(-0.05), rel=1e-12)
    for bad, what in ((["--lambda-param", "nope=1"], "nope"), (["--lambda-param", "sibg_beta=x"], "not a number"),
                      (["--days-since-change", "-1"], "days-since-change")):
        r = _run_cli(tmp_path / "ops.jsonl", *bad)
        assert r.returncode == 2 and what in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    out = C.write_run_summary(tmp_path / "ops.jsonl", tmp_path,
                              section={"lambda_effective": {"days_since_change": 0.0}, "fti_max": 1.001})
    rep = json.loads(Path(out["telemetry_summary"]).read_text())
    assert rep["lambda_effective"] == pytest.approx(rep["lambda"]["lambda_sibg"], rel=1e-12)
    assert rep["gate"]["breached"] and "fti_avg" in rep["gate"]["reasons"][0]
