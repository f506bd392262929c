"""Forged numbers and hostile inputs for the collector (issue #17): non-finite
numbers are invalid lines reported by line number (the fast validator and
the JSON schema agree), ``--json`` and the exporter never crash; a FIFO named
like a rank file does not hang ``collect``; the merged file and the rank
files of one run are never counted twice."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from dmca_hpc.monitoring import collector as C
from dmca_hpc.monitoring import exporter as E
from dmca_hpc.monitoring import telemetry as T

GOOD = {"schema_version": 2, "timestamp": 1.7e9, "domain": "dm-electron", "hypothesis": "none",
        "step": "run", "intervention": "baseline", "infra_cost_usd": 1e-5, "qps": 2.0,
        "latency_p95_ms": 500.0,
        "hpc": {"job_id": "7", "rank": 0, "stage": "bands", "unit": "k1", "wall_seconds": 0.5,
                "cpu_seconds": 0.4, "core_seconds": 0.5, "cores": 1, "peak_memory_mb": 100.0,
                "status": "ok", "error": None, "host": "n1"},
        "physics": {"material": "Si", "e_tot_hartree": -7.9, "extra_ev": 1.0, "list_ev": [1.0, 2.0]}}

#: (field, JSON text of its forged value)
FORGED = [("infra_cost_usd", "1e400"), ("latency_p95_ms", "1e999"), ("hpc.wall_seconds", "1e400"),
          ("hpc.cpu_seconds", "-1e400"), ("qps", "NaN"), ("timestamp", "Infinity"),
          ("physics.e_tot_hartree", "-1e400"), ("physics.extra_ev", "1e400")]


def _line(field: str, text: str) -> bytes:
    """GOOD as a JSON line with ``field`` replaced by the literal ``text``."""
    rec = json.loads(json.dumps(GOOD))
    obj, key = rec, field.split(".")
    for k in key[:-1]:
        obj = obj[k]
    obj[key[-1]] = "@@"
    return json.dumps(rec).replace('"@@"', text).encode()


@pytest.mark.parametrize("field,text", FORGED)
def test_non_finite_number_is_an_invalid_line_everywhere(tmp_path, field, text):
    good = json.dumps(GOOD).encode()
    path = tmp_path / "t.jsonl"
    path.write_bytes(good + b"\n" + _line(field, text) + b"\n" + good + b"\n")
    rep = C.collect([path])
    assert rep["records"] == 2 and rep["invalid_lines_total"] == 1
    bad = rep["invalid_lines"][0]
    assert bad["line"] == 2 and bad["code"] == "nonfinite", bad
    assert field in bad["reason"] or text in ("NaN", "Infinity"), bad
    json.dumps(rep, allow_nan=False)  # --json prints this
    # the fast validator, the package's schema path and jsonschema on the schema file agree
    rec = json.loads(_line(field, text))
    validator = jsonschema.Draft7Validator(T.load_schema())
    assert not T.quick_valid(rec) and T.record_error(rec) is not None
    assert not T._fast_validator()(rec)
    assert not validator.is_valid(rec) or text == "NaN"  # NaN passes any bound: the package checks it


def test_nan_in_memory_is_rejected_by_the_package_validator():
    rec = json.loads(json.dumps(GOOD))
    rec["hpc"]["wall_seconds"] = float("nan")
    assert not T.quick_valid(rec)
    assert T.record_error(rec).startswith("hpc.wall_seconds: nan is not a finite number")
    big = json.loads(json.dumps(GOOD))
    big["infra_cost_usd"] = 10 ** 400  # an integer no double holds
    assert not T.quick_valid(big) and not jsonschema.Draft7Validator(T.load_schema()).is_valid(big)
    assert "infra_cost_usd" in T.record_error(big)


def test_huge_finite_values_do_not_crash_json_or_exporter(tmp_path):
    """Valid numbers whose sums or conversions overflow: reported as null, no crash
    (with the forged lines of FORGED after them, reported by line number)."""
    lines = []
    for i in range(3):
        rec = json.loads(json.dumps(GOOD))
        rec["infra_cost_usd"] = 1.5e308                # the sum overflows
        rec["hpc"]["wall_seconds"] = 1e307             # x 1000 in ms overflows
        rec["hpc"]["peak_memory_mb"] = 1e307           # x 2^20 in bytes overflows
        rec["hpc"]["unit"] = f"u{i}"
        lines.append(json.dumps(rec))
    forged = [_line(field, text).decode() for field, text in FORGED]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines + forged) + "\n")
    rep = C.collect([path])
    assert rep["records"] == 3 and rep["cost_usd"] is None
    assert [b["line"] for b in rep["invalid_lines"]] == list(range(4, 4 + len(FORGED)))
    json.dumps(rep, allow_nan=False)
    C.render_markdown(rep), C.render_text(rep)
    exp = E.Exporter([path], port=0, interval=60)
    exp.refresh()
    assert exp.last_error is None and exp.refreshes == 1
    assert exp.health()[1]["last_error"] is None


def test_fifo_named_like_a_rank_file_does_not_hang_collect(tmp_path):
    tel = T.Telemetry(tmp_path / "telemetry", rank=0, validate="raise")
    tel.record("bands", "u0", "ok", 0.1, 0.1, 10.0)
    fifo = tmp_path / "telemetry" / "rank-00001.jsonl"
    os.mkfifo(fifo)
    for args in ([str(tmp_path / "telemetry")], [str(tel.path), str(fifo)]):
        r = subprocess.run([sys.executable, "-m", "dmca_hpc.cli.main", "collect", *args, "--json"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["records"] == 1
        assert rep["skipped_files"] == [{"file": str(fifo), "reason": (
            "not a regular file (a FIFO): a run writes only regular telemetry files and reading "
            "this one could block forever; not read")}]


def _run_dir(tmp_path):
    d = tmp_path / "telemetry"
    for rank in (0, 1):
        tel = T.Telemetry(d, rank=rank, validate="raise")
        for i in range(3):
            tel.record("bands", f"r{rank}u{i}", "ok", 0.1, 0.1, 10.0)
    return d, T.merge_rank_files(d)


def test_merged_and_rank_files_together_count_once(tmp_path):
    d, merged = _run_dir(tmp_path)
    ranks = sorted(d.glob("rank-*.jsonl"))
    rep = C.collect([*ranks, merged])  # what `collect runs/X/telemetry/*.jsonl` passes
    assert rep["records"] == 6 and not rep["unreadable_files"]
    assert rep["files"] == [str(merged)]
    assert [s["file"] for s in rep["skipped_files"]] == [str(p) for p in ranks]
    assert all(f"its records are in {merged}" in s["reason"] for s in rep["skipped_files"])
    # one rank file of the two still counts once: the merged file holds it
    assert C.collect([ranks[1], merged])["records"] == 6


def test_merged_file_that_is_not_the_rank_files_merge_is_refused(tmp_path):
    d, merged = _run_dir(tmp_path)
    T.Telemetry(d, rank=1, validate="raise").record("bands", "late", "ok", 0.1, 0.1, 10.0)  # resumed run
    ranks = sorted(d.glob("rank-*.jsonl"))
    rep = C.collect([*ranks, merged])
    assert rep["records"] == 7  # the rank files, once
    assert [u["file"] for u in rep["unreadable_files"]] == [str(merged)]
    assert "pass the merged file or the rank files, not both" in rep["unreadable_files"][0]["reason"]
    r = subprocess.run([sys.executable, "-m", "dmca_hpc.cli.main", "collect", *map(str, ranks), str(merged)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"dmca-hpc collect: cannot read {merged}: "
                                             + rep["unreadable_files"][0]["reason"]]


def test_hostile_stream_identities_do_not_crash(tmp_path):
    """Identities at and past the schema's bounds: a huge seq is a stream like any other
    (a gap before it), a boolean / negative seq or a run id with ':' is a schema violation."""
    def line(**hpc):
        rec = json.loads(json.dumps(GOOD))
        rec["hpc"].update(hpc)
        return json.dumps(rec).encode()
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join([
        line(run_id="r" * 64, seq=0), line(run_id="r" * 64, seq=10 ** 30),   # lines 1, 2
        line(run_id="x", seq=True), line(run_id="x", seq=-1),                   # 3, 4
        line(run_id="a:b", seq=0), line(run_id="y"), line(seq=0)]) + b"\n")     # 5, 6, 7
    rep = C.collect([path])
    assert rep["records"] == 2
    assert [(b["line"], b["code"]) for b in rep["invalid_lines"]] == [(n, "schema") for n in range(3, 8)]
    gap = rep["integrity"]["issues"][0]
    assert (gap["kind"], gap["line"], gap["missing"]) == ("gap", 2, 10 ** 30 - 1)
    json.dumps(rep, allow_nan=False)
    C.render_markdown(rep), C.render_text(rep)
