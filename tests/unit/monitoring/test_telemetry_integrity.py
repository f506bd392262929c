"""Telemetry integrity (issue #17): encrypted mode accepts only authenticated
records, and a record's stream identity (run_id, rank, seq) is bound into its
authentication, so a plaintext line slipped into an encrypted file, a deleted
(middle) line, swapped lines, a replayed line, an edited envelope and a line
moved between streams are all reported by file and line number, and
``--gate`` fails on each.

The expected line numbers are those of the edited files as the tests build
them (line 1 = first line), never read back from the code under test.
"""
from __future__ import annotations

import base64
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmca_hpc.monitoring import collector as C
from dmca_hpc.monitoring import exporter as E
from dmca_hpc.monitoring import telemetry as T

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
#: cost of one record written by _write: 0.5 s on 1 core at 0.36 USD per core-hour [USD]
UNIT_COST = 0.5 / 3600 * 0.36


def _write(directory: Path, n: int, *, key=KEY, rank: int = 0, filename: str = "t.jsonl",
           start: int = 0) -> T.Telemetry:
    tel = T.Telemetry(directory, rank=rank, key=key, filename=filename, validate="raise", cores=1,
                      price_per_core_hour_usd=0.36)
    for i in range(start, start + n):
        tel.record("bands", f"k{i}", "ok", 0.5, 0.4, 10.0, physics={"material": "Si"})
    return tel


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _put(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return path


def _issues(rep: dict) -> list[tuple]:
    return [(Path(e["file"]).name, e["line"], e["kind"]) for e in rep["integrity"]["issues"]]


def _invalid(rep: dict) -> list[tuple]:
    return [(Path(b["file"]).name, b["line"], b["code"]) for b in rep["invalid_lines"]]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "dmca_hpc.cli.main", "collect", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k != T.KEY_ENV}, **(env or {})})


# ------------------------------------------------------------------ the writer

def test_records_carry_a_stream_identity(tmp_path):
    tel = _write(tmp_path, 3, key=None)
    recs = [json.loads(x) for x in _lines(tel.path)]
    assert [r["hpc"]["seq"] for r in recs] == [0, 1, 2]
    assert {r["hpc"]["run_id"] for r in recs} == {tel.run_id}
    assert len(tel.run_id) == 16 and int(tel.run_id, 16) >= 0
    # a second writer (a resumed run, another stage's writer) is a new stream
    assert T.Telemetry(tmp_path, filename="t.jsonl").run_id != tel.run_id
    for r in recs:
        assert T.record_error(r) is None and T.quick_valid(r)


@pytest.mark.parametrize("field", ["wall_s", "cpu_s", "peak_mem_mb"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_times_and_memory_raise_naming_the_field(tmp_path, field, value):
    tel = T.Telemetry(tmp_path, validate="off")  # not even the "off" mode lets it through
    args = {"wall_s": 1.0, "cpu_s": 1.0, "peak_mem_mb": 1.0, field: value}
    with pytest.raises(ValueError, match=rf"\b{field}\b.*not finite"):
        tel.record("bands", "k", "ok", **args)
    assert not tel.path.exists()  # nothing written ...
    tel.record("bands", "k", "ok", 1.0, 1.0, 1.0)
    assert json.loads(_lines(tel.path)[0])["hpc"]["seq"] == 0  # ... and no seq consumed (no false gap)


def test_non_number_time_raises_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="wall_s = 'soon' is not a number"):
        T.Telemetry(tmp_path).record("bands", "k", "ok", "soon", 1.0, 1.0)


def test_threads_sharing_a_writer_keep_seq_in_line_order(tmp_path):
    tel = T.Telemetry(tmp_path, key=KEY, validate="off")

    def work(w):
        for i in range(200):
            tel.record("rates", f"{w}:{i}", "ok", 0.01, 0.01, 1.0)
    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [json.loads(x)["seq"] for x in _lines(tel.path)] == list(range(800))
    rep = C.collect([tel.path], key=KEY)
    assert rep["records"] == 800 and rep["integrity"]["issues_total"] == 0


def test_a_copied_writer_is_a_new_stream(tmp_path):
    import copy
    import pickle
    tel = _write(tmp_path, 2)
    for twin in (copy.deepcopy(tel), pickle.loads(pickle.dumps(tel))):
        assert twin.run_id != tel.run_id and twin.seq == 0 and twin.key == KEY
        twin.record("rates", "twin", "ok", 0.01, 0.01, 1.0)
    tel.record("rates", "again", "ok", 0.01, 0.01, 1.0)
    rep = C.collect([tel.path], key=KEY)
    assert rep["records"] == 5 and rep["integrity"]["streams"] == 3 and rep["integrity"]["issues_total"] == 0


def _child_writes(tel):
    tel.record("rates", "child", "ok", 0.01, 0.01, 1.0)


def test_forked_child_is_a_new_stream(tmp_path):
    tel = _write(tmp_path, 2, key=None)
    p = mp.get_context("fork").Process(target=_child_writes, args=(tel,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    tel.record("rates", "parent", "ok", 0.01, 0.01, 1.0)
    ids = [(r["hpc"]["run_id"], r["hpc"]["seq"]) for r in map(json.loads, _lines(tel.path))]
    child = ids[2]
    assert child[0] != tel.run_id and child[1] == 0  # not a second seq 2 of the parent's stream
    assert ids[3] == (tel.run_id, 2)
    assert C.collect([tel.path])["integrity"]["issues_total"] == 0


# ------------------------------------------------------------------ the attacks of the issue

def test_plaintext_line_appended_to_an_encrypted_file(tmp_path):
    """The issue's reproduction: 5 encrypted records and a forged plaintext one of
    1000 USD were '6 valid (5 encrypted)', cost 1000 USD, gate ok."""
    tel = _write(tmp_path, 5)
    forged = {"domain": "dm-electron", "hypothesis": "none", "step": "run", "intervention": "baseline",
              "infra_cost_usd": 1000.0, "qps": 1.0, "latency_p95_ms": 1.0}
    with open(tel.path, "ab") as fh:
        fh.write(json.dumps(forged).encode() + b"\n")
    for policy in (None, False):  # with the key given; and by the file rule alone
        rep = C.collect([tel.path], key=KEY, require_encrypted=policy)
        assert (rep["records"], rep["encrypted_records"]) == (5, 5)
        assert rep["cost_usd"] == pytest.approx(5 * UNIT_COST, rel=1e-12)
        assert _invalid(rep) == [("t.jsonl", 6, "plaintext")]
        assert "plaintext line in an encrypted file" in rep["invalid_lines"][0]["reason"]
        assert rep["gate"]["breached"]
    # without the key the file is still encrypted: the plaintext line is refused all the same
    rep = C.collect([tel.path])
    assert rep["records"] == 0 and rep["invalid_by_reason"] == {"no_key": 5, "plaintext": 1}
    r = _cli(tel.path, "--gate", env={T.KEY_ENV: KEY_B64})
    assert r.returncode == 1 and "1 invalid lines" in r.stderr
    assert f"INVALID {tel.path}:6 [plaintext]" in r.stdout


def test_plaintext_line_before_the_encrypted_ones(tmp_path):
    """A file is encrypted when any of its lines is, not from its first encrypted line
    on: a regular file is scanned first.  A FIFO cannot be: its plaintext prefix is
    counted, and its first encrypted line is reported as a mixed file."""
    lines = _lines(_write(tmp_path, 3).path)
    forged = json.dumps(_rec_with("f0f0f0f0f0f0f0f0", 0)).encode()
    path = _put(tmp_path / "pre.jsonl", [forged] + lines)
    rep = C.collect([path], key=KEY, require_encrypted=False)  # the file rule alone
    assert rep["records"] == 3 and _invalid(rep) == [("pre.jsonl", 1, "plaintext")]
    assert rep["integrity"]["encrypted_files"] == 1 and rep["integrity"]["streams"] == 1
    fifo = tmp_path / "pre.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(path.read_bytes()))
    feeder.start()
    rep = C.collect([fifo], key=KEY, require_encrypted=False)
    feeder.join()
    assert rep["records"] == 4 and _issues(rep) == [("pre.fifo", 2, "mixed")]
    assert rep["gate"]["breached"] and any("1 mixed files" in x for x in rep["gate"]["reasons"])


def test_deleted_middle_line_is_a_gap(tmp_path):
    tel = _write(tmp_path, 6)
    lines = _lines(tel.path)
    path = _put(tmp_path / "cut.jsonl", lines[:2] + lines[3:])  # seq 2 (line 3) deleted
    rep = C.collect([path], key=KEY)
    assert rep["records"] == 5 and rep["invalid_lines_total"] == 0
    assert _issues(rep) == [("cut.jsonl", 3, "gap")]  # the line after the hole holds seq 3
    gap = rep["integrity"]["issues"][0]
    assert (gap["missing_from"], gap["missing_to"], gap["missing"], gap["seq"]) == (2, 2, 1, 3)
    assert (gap["run_id"], gap["rank"]) == (tel.run_id, 0)
    assert rep["integrity"]["gaps_total"] == 1 and rep["integrity"]["missing_records"] == 1
    assert rep["gate"]["breached"] and any("1 gaps" in x for x in rep["gate"]["reasons"])
    r = _cli(path, "--json", "--gate", env={T.KEY_ENV: KEY_B64})
    assert r.returncode == 1 and "stream integrity: 1 gaps (1 records missing)" in r.stderr
    assert json.loads(r.stdout)["integrity"]["issues"][0]["line"] == 3
    r = _cli(path, env={T.KEY_ENV: KEY_B64})
    assert f"GAP {path}:3 seq 2 of stream {tel.run_id}/rank 0 missing" in r.stdout
    r = _cli(path, "--markdown", env={T.KEY_ENV: KEY_B64})
    assert "## Stream integrity" in r.stdout and f"| {path}:3 | gap | {tel.run_id}/0 | 3 |" in r.stdout


def test_deleted_first_lines_are_a_gap_at_the_first_line(tmp_path):
    lines = _lines(_write(tmp_path, 4).path)
    rep = C.collect([_put(tmp_path / "cut.jsonl", lines[2:])], key=KEY)
    assert _issues(rep) == [("cut.jsonl", 1, "gap")]
    assert rep["integrity"]["issues"][0]["missing_from"] == 0 and rep["integrity"]["issues"][0]["missing_to"] == 1


def test_swapped_lines_are_a_reorder(tmp_path):
    lines = _lines(_write(tmp_path, 5).path)
    lines[1], lines[2] = lines[2], lines[1]  # seq 2 now on line 2, seq 1 on line 3
    rep = C.collect([_put(tmp_path / "swap.jsonl", lines)], key=KEY)
    assert rep["records"] == 5 and rep["invalid_lines_total"] == 0
    assert _issues(rep) == [("swap.jsonl", 3, "reorder")]  # no gap: seq 1 did arrive
    e = rep["integrity"]["issues"][0]
    assert e["seq"] == 1 and "read after seq 2" in e["reason"] and "swap.jsonl:2" in e["reason"]
    assert rep["gate"]["breached"] and any("1 reorders" in x for x in rep["gate"]["reasons"])


def test_duplicated_line_is_counted_once_and_reported(tmp_path):
    lines = _lines(_write(tmp_path, 5).path)
    path = _put(tmp_path / "dup.jsonl", lines + [lines[1]])  # seq 1 replayed as line 6
    rep = C.collect([path], key=KEY)
    assert rep["records"] == 5 and rep["cost_usd"] == pytest.approx(5 * UNIT_COST, rel=1e-12)
    assert _invalid(rep) == [("dup.jsonl", 6, "duplicate")]
    assert _issues(rep) == [("dup.jsonl", 6, "duplicate")]
    assert rep["integrity"]["duplicates_total"] == 1
    # a duplicate breaches the gate even when invalid lines are tolerated
    r = _cli(path, "--gate", "--max-invalid", "10", env={T.KEY_ENV: KEY_B64})
    assert r.returncode == 1 and "1 duplicates" in r.stderr


def test_plaintext_replay_is_caught_too(tmp_path):
    """Plaintext records carry the identity as well (not authenticated, but a copied
    or twice-merged line is still found)."""
    lines = _lines(_write(tmp_path, 3, key=None).path)
    rep = C.collect([_put(tmp_path / "dup.jsonl", lines + lines[:1])])
    assert rep["records"] == 3 and _invalid(rep) == [("dup.jsonl", 4, "duplicate")]


@pytest.mark.parametrize("field,value", [("seq", 7), ("rank", 1), ("run", "0123456789abcdef")])
def test_edited_clear_identity_is_tampered(tmp_path, field, value):
    lines = _lines(_write(tmp_path, 5).path)
    env = json.loads(lines[2])
    env[field] = value
    lines[2] = json.dumps(env, separators=(",", ":")).encode()
    rep = C.collect([_put(tmp_path / "edit.jsonl", lines)], key=KEY)
    assert rep["records"] == 4
    assert _invalid(rep) == [("edit.jsonl", 3, "tampered")]
    assert "covers run, rank and seq" in rep["invalid_lines"][0]["reason"]
    # and the stream misses that line's seq 2: a gap before line 4
    assert _issues(rep) == [("edit.jsonl", 4, "gap")]


def test_downgrade_to_a_version_1_envelope_is_tampered(tmp_path):
    lines = _lines(_write(tmp_path, 3).path)
    env = json.loads(lines[1])
    for k in ("run", "rank", "seq"):
        del env[k]
    lines[1] = json.dumps(env).encode()
    rep = C.collect([_put(tmp_path / "v1.jsonl", lines)], key=KEY)
    assert _invalid(rep) == [("v1.jsonl", 2, "tampered")]


def test_record_sealed_under_another_identity_is_tampered():
    """Only a key holder can make this (the envelope authenticates): a record whose
    own identity is not its envelope's."""
    rec = json.loads(json.dumps(_rec_with(run="aaaaaaaaaaaaaaaa", seq=3)))
    line = T.encrypt_line(json.dumps(rec).encode(), KEY, identity=("aaaaaaaaaaaaaaaa", 0, 4))
    with pytest.raises(T.LineError) as exc:
        T.LineDecoder(key=KEY).decode(line)
    assert exc.value.code == "tampered" and "differs from its envelope" in str(exc.value)


def _rec_with(run, seq, rank=0):
    return {"domain": "dm-electron", "hypothesis": "none", "step": "run", "intervention": "baseline",
            "infra_cost_usd": 0.0, "qps": 1.0, "latency_p95_ms": 1.0,
            "hpc": {"job_id": "j", "rank": rank, "stage": "bands", "unit": "u", "wall_seconds": 0.001,
                    "cpu_seconds": 0.0, "peak_memory_mb": 1.0, "status": "ok", "run_id": run, "seq": seq}}


def test_record_of_one_stream_pasted_into_another(tmp_path):
    a = _write(tmp_path, 4, rank=0, filename="rank-00000.jsonl")
    b = _write(tmp_path, 4, rank=1, filename="rank-00001.jsonl")
    la, lb = _lines(a.path), _lines(b.path)
    files = [a.path, b.path]
    # 1. a copy of stream A's seq 1 pasted as line 3 of B's file: a replay of A
    _put(b.path, lb[:2] + [la[1]] + lb[2:])
    rep = C.collect(files, key=KEY)
    assert rep["records"] == 8 and _invalid(rep) == [("rank-00001.jsonl", 3, "duplicate")]
    # 2. the same envelope with B's identity written over A's, to fit into B: tampered
    env = json.loads(la[1])
    env.update(run=b.run_id, rank=1, seq=2)
    _put(b.path, lb[:2] + [json.dumps(env).encode()] + lb[2:])
    rep = C.collect(files, key=KEY)
    assert _invalid(rep) == [("rank-00001.jsonl", 3, "tampered")]
    # 3. A's last line moved (not copied) to the end of B's file: no gap to see in A,
    # but a line of A read in another file than A's
    _put(a.path, la[:3])
    _put(b.path, lb + [la[3]])
    rep = C.collect(files, key=KEY)
    assert rep["records"] == 8 and rep["invalid_lines_total"] == 0
    assert _issues(rep) == [("rank-00001.jsonl", 5, "foreign")]
    assert rep["gate"]["breached"] and any("1 foreign lines" in x for x in rep["gate"]["reasons"])


def test_resumed_writer_is_not_a_gap(tmp_path):
    first = _write(tmp_path, 3)
    second = _write(tmp_path, 2, start=3)  # the run resumed: a new writer on the same file
    assert first.run_id != second.run_id
    rep = C.collect([first.path], key=KEY)
    assert rep["records"] == 5 and rep["invalid_lines_total"] == 0
    assert rep["integrity"]["streams"] == 2 and rep["integrity"]["sequenced_records"] == 5
    assert rep["integrity"]["issues_total"] == 0 and not rep["gate"]["breached"]
    assert _cli(first.path, "--gate", env={T.KEY_ENV: KEY_B64}).returncode == 0


@pytest.mark.parametrize("key", [KEY, None], ids=["encrypted", "plaintext"])
def test_writer_resumed_after_a_kill_mid_line(tmp_path, key):
    """A writer killed inside its write leaves a partial last line; the resumed
    writer terminates it before its first record, so the stub is one invalid
    line and the new records are whole (glued on, the first would be lost)."""
    first = _write(tmp_path, 3, key=key)
    whole = first.path.read_bytes()
    stub = first.encode(first.record("bands", "k3", "ok", 0.5, 0.4, 10.0))  # the line of seq 3 ...
    first.path.write_bytes(whole + stub[:len(stub) // 2])  # ... killed half-way through its write
    second = _write(tmp_path, 2, key=key, start=4)
    data = first.path.read_bytes()
    assert data.startswith(whole + stub[:len(stub) // 2] + b"\n") and data.count(b"\n") == 6
    rep = C.collect([first.path], key=key)
    assert rep["records"] == 5 and rep["blank_lines"] == 0
    assert _invalid(rep) == [("t.jsonl", 4, "json")]
    assert rep["integrity"]["issues_total"] == 0  # the stub's seq 3 was the first writer's last: no gap
    assert [json.loads(x)["hpc"]["seq"] if key is None else json.loads(x)["seq"]
            for x in _lines(first.path)[4:]] == [0, 1] and second.seq == 2
    # a file that ends in a newline gets no extra one (no blank line), nor does a new file
    third = _write(tmp_path, 1, key=key, start=6)
    assert first.path.read_bytes().count(b"\n") == 7 and C.collect([first.path], key=key)["blank_lines"] == 0
    assert not T.terminate_partial_line(tmp_path / "missing.jsonl") and not (tmp_path / "missing.jsonl").exists()
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert not T.terminate_partial_line(tmp_path / "empty.jsonl")
    assert (tmp_path / "empty.jsonl").read_bytes() == b"" and third.seq == 1
    # the check is made once, before a writer's first line, not before every line
    calls = []
    real = T.terminate_partial_line
    T.terminate_partial_line = lambda p: calls.append(p) or real(p)
    try:
        w = _write(tmp_path, 3, key=key, filename="once.jsonl")
    finally:
        T.terminate_partial_line = real
    assert calls == [w.path]


def test_a_live_writers_half_copied_line_is_not_terminated(tmp_path):
    """Another process's line caught half-copied (its write preempted inside the
    kernel copy) also ends without a newline: it must be left alone, or the
    writer would add a blank line; only a partial line that stays is a stub."""
    tel = _write(tmp_path, 2, key=None)
    line = _lines(tel.path)[0] + b"\n"
    with open(tel.path, "ab") as fh:
        fh.write(line[:100])

    def finish():  # the stalled write completes 0.1 s later
        time.sleep(0.1)
        with open(tel.path, "ab") as fh:
            fh.write(line[100:])
    th = threading.Thread(target=finish)
    th.start()
    try:
        assert T.terminate_partial_line(tel.path, settle_s=1.0) is False
    finally:
        th.join()
    assert tel.path.read_bytes().count(b"\n") == 3 and b"\n\n" not in tel.path.read_bytes()
    with open(tel.path, "ab") as fh:  # this one never completes: a stub after settle_s
        fh.write(line[:100])
    t = time.monotonic()
    assert T.terminate_partial_line(tel.path, settle_s=0.2) is True
    assert time.monotonic() - t >= 0.2 and tel.path.read_bytes().endswith(line[:100] + b"\n")


def test_deleted_last_line_is_the_documented_limit(tmp_path):
    """A deleted last line of a stream leaves no trace in the lines: not reported
    (module docstrings and README say so); this test pins that limit."""
    lines = _lines(_write(tmp_path, 4).path)
    rep = C.collect([_put(tmp_path / "cut.jsonl", lines[:-1])], key=KEY)
    assert rep["records"] == 3 and rep["integrity"]["issues_total"] == 0
    assert "LAST line" in T.__doc__ and "last line" in C.__doc__


# ------------------------------------------------------------------ old formats, merged file, exporter

def test_version_1_envelopes_are_authenticated_but_unsequenced(tmp_path):
    rec = _rec_with(run="x", seq=0)
    del rec["hpc"]["run_id"], rec["hpc"]["seq"]
    old = T.encrypt_line(json.dumps(rec).encode(), KEY)  # identity None: the old envelope
    assert set(json.loads(old)) == {"enc", "kid", "nonce", "ct"}
    path = _put(tmp_path / "old.jsonl", [old, old])
    rep = C.collect([path], key=KEY)
    # authenticated, so counted; without an identity a replay cannot be told (reported as such)
    assert rep["records"] == 2 and rep["encrypted_records"] == 2 and rep["invalid_lines_total"] == 0
    assert rep["integrity"]["v1_envelopes"] == 2 and rep["integrity"]["unsequenced_records"] == 2
    assert rep["integrity"]["streams"] == 0
    # Telemetry.encode writes a v1 envelope only for a record without an identity
    tel = T.Telemetry(tmp_path, key=KEY)
    assert set(json.loads(tel.encode(rec))) == {"enc", "kid", "nonce", "ct"}


def test_dmca_format_lines_are_unsequenced_and_pass(tmp_path):
    path = Path(__file__).with_name("dmca_format.jsonl")
    n = len(_lines(path))
    rep = C.collect([path])
    assert rep["records"] == n and rep["invalid_lines_total"] == 0
    assert rep["integrity"]["unsequenced_records"] == n and rep["integrity"]["issues_total"] == 0


def test_streams_are_checked_in_the_merged_file(tmp_path):
    d = tmp_path / "telemetry"
    a = _write(d, 3, rank=0, filename="rank-00000.jsonl")
    b = _write(d, 3, rank=1, filename="rank-00001.jsonl")
    merged = T.merge_rank_files(d)
    rep = C.collect([a.path, b.path, merged], key=KEY)  # the merge is exact: rank files skipped
    assert rep["records"] == 6 and rep["files"] == [str(merged)] and rep["integrity"]["streams"] == 2
    assert rep["integrity"]["issues_total"] == 0
    # a line of rank 1 deleted before the merge: the gap shows in the merged file's numbering
    lb = _lines(b.path)
    _put(b.path, lb[:1] + lb[2:])
    merged = T.merge_rank_files(d)
    rep = C.collect([d], key=KEY)
    assert _issues(rep) == [("telemetry.jsonl", 5, "gap")]  # 3 lines of rank 0, then seq 0, [1 gone], 2


def test_exporter_report_shows_integrity_and_late_encrypted_file(tmp_path):
    tel = _write(tmp_path, 3)
    exp = E.Exporter([tel.path], port=0, interval=60, key=KEY)
    exp.refresh()
    assert exp.report["records"] == 3 and exp.report["integrity"]["issues_total"] == 0
    with open(tel.path, "ab") as fh:  # a replay appended while the exporter runs
        fh.write(_lines(tel.path)[0] + b"\n")
    exp.refresh()
    body = json.loads(exp.report_json)
    assert body["records"] == 3 and body["integrity"]["duplicates_total"] == 1
    assert [(b["line"], b["code"]) for b in body["invalid_lines"]] == [(4, "duplicate")]
    assert body["gate"]["breached"]
    # a file read live as plaintext that then gets an encrypted line: the plaintext already
    # counted cannot be refused any more, so the encrypted line is reported as a mixed file
    plain = _write(tmp_path, 2, key=None, filename="p.jsonl")
    exp = E.Exporter([plain.path], port=0, interval=60, key=KEY, report_options={})
    exp.source.agg.require_encrypted = False  # the file rule alone
    exp.refresh()
    assert exp.report["records"] == 2
    _write(tmp_path, 1, filename="p.jsonl")
    exp.refresh()
    assert [(e["line"], e["kind"]) for e in exp.report["integrity"]["issues"]] == [(3, "mixed")]
    assert exp.report["gate"]["breached"]


def test_seen_seq_memory_is_bounded(tmp_path):
    """Every other seq missing (worst case for the intervals): past the limit records are
    counted but not checked, and the gate says so."""
    sc = C.SequenceCheck(max_intervals=10)
    for s in range(0, 40, 2):
        sc.check("r", 0, s, "f", s + 1)
    assert sc.intervals == 10 and sc.untracked == 10
    rep_path = _put(tmp_path / "t.jsonl", [json.dumps(_rec_with("r", s)).encode() for s in range(0, 8, 2)])
    agg = C.Aggregator()
    agg.seqcheck.max_intervals = 2
    agg.consume(rep_path)
    rep = agg.report()
    assert rep["records"] == 4 and rep["integrity"]["untracked_records"] == 2
    assert any("not checked" in x for x in rep["gate"]["reasons"])
