"""Exporter: real HTTP scrapes on 127.0.0.1 parsed by prometheus_client's text
parser, background refresh, atomic textfile, clean shutdown (in process and
as a CLI process under SIGTERM)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dmca_hpc.monitoring import collector as C
from dmca_hpc.monitoring import exporter as E
from dmca_hpc.monitoring import telemetry as T


def _fill(tel: T.Telemetry, n: int, start: int = 0, failed_every: int = 0):
    for i in range(start, start + n):
        failed = failed_every and i % failed_every == 0
        tel.record(("bands", "rates")[i % 2], f"u{i}", "failed" if failed else "ok", 0.01 * (1 + i % 5), 0.01,
                   50.0, error="ValueError: bad k-point" if failed else None, physics={"material": "Si"})


def _get(url: str, timeout: float = 10.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def _samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value}, via prometheus_client's strict parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _wait(cond, timeout=10.0):
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def tel(tmp_path):
    t = T.Telemetry(tmp_path / "run", rank=0, validate="raise")
    _fill(t, 40, failed_every=10)
    return t


def test_http_scrape_matches_collector(tel):
    exp = E.Exporter([tel.path], address="127.0.0.1", port=0, interval=0.2).start()
    try:
        assert exp._server.server_address[0] == "127.0.0.1"
        base = f"http://127.0.0.1:{exp.port}"
        code, ctype, body = _get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain") and "version=0.0.4" in ctype
        s = _samples(body)
        rep = C.collect([tel.path])
        for stage, st in rep["stages"].items():
            lab = frozenset({("stage", stage)})
            assert s[("dmca_units_total", frozenset({("stage", stage), ("status", "ok")}))] == st["ok"]
            assert s[("dmca_failed_units_total", lab)] == st["failed"]
            assert s[("dmca_cost_usd_total", lab)] == pytest.approx(st["cost_usd"], rel=1e-12)
            assert s[("dmca_unit_latency_seconds", frozenset({("stage", stage), ("quantile", "0.95")}))] == \
                pytest.approx(st["latency_p95_ms"] / 1e3, rel=1e-12)
            assert s[("dmca_fti_ratio", lab)] == pytest.approx(st["fti"], rel=1e-12)
            assert s[("dmca_fti_grade_info", frozenset({("stage", stage), ("grade", st["fti_grade"])}))] == 1.0
        assert s[("dmca_telemetry_lines_total", frozenset())] == 40
        names = {n for n, _ in s}
        # every metric carries its unit or _total / _ratio / _info in the name; a gauge that
        # counts things (which may go down: a gap closes when its line arrives) names the thing
        # counted, since _total belongs to counters
        count_gauges = {"dmca_telemetry_sequence_issues"}
        assert all(n.endswith(("_total", "_seconds", "_usd", "_bytes", "_ratio", "_info", "_per_second", "_created"))
                   or n in count_gauges for n in names), names
        assert count_gauges <= names
        code, ctype, body = _get(base + "/health")
        h = json.loads(body)
        assert code == 200 and h["status"] == "ok" and h["records"] == 40
        assert _get(base + "/nope")[0] == 404
    finally:
        exp.stop()


def test_background_refresh_is_incremental_and_scrapes_never_parse(tel):
    exp = E.Exporter([tel.path.parent], port=0, interval=0.1).start()  # a directory: its rank files
    try:
        url = f"http://127.0.0.1:{exp.port}/metrics"
        lines = lambda: _samples(_get(url)[2])[("dmca_telemetry_lines_total", frozenset())]  # noqa: E731
        assert lines() == 40
        _fill(tel, 10, start=40)
        with open(tel.path, "ab") as fh:  # a writer in the middle of a line: not read yet
            fh.write(b'{"domain":"dm-electron","hypo')
        assert _wait(lambda: lines() == 50)
        time.sleep(0.3)
        assert lines() == 50 and exp.report["invalid_lines_total"] == 0
        # block the refresh thread inside a (real) refresh: scrapes still answer at once
        gate, entered = threading.Event(), threading.Event()
        real = exp.source.refresh

        def slow_refresh():
            entered.set()
            gate.wait(10)
            return real()
        exp.source.refresh = slow_refresh
        assert entered.wait(5)
        t = time.perf_counter()
        assert _get(url)[0] == 200
        assert time.perf_counter() - t < 2.0  # served from the snapshot while parsing is stuck
        gate.set()
        exp.source.refresh = real
        # a rewritten (shrunk) file is re-read from scratch, no double counting
        tel.path.write_bytes(b"")
        _fill(tel, 3)
        assert _wait(lambda: lines() == 3)
    finally:
        gate.set()
        exp.stop()


def test_stop_closes_socket_and_joins_threads(tel):
    exp = E.Exporter([tel.path], port=0, interval=0.1).start()
    port = exp.port
    assert _get(f"http://127.0.0.1:{port}/health")[0] == 200
    exp.stop()
    assert not exp._thread.is_alive() and not exp._server_thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_health_reports_refresh_failure(tmp_path):
    exp = E.Exporter([tmp_path / "t.jsonl"], port=0, interval=60)
    exp.source.refresh = lambda: 1 / 0
    exp.start()
    try:
        code, _, body = _get(f"http://127.0.0.1:{exp.port}/health")
        assert code == 503 and "ZeroDivisionError" in json.loads(body)["last_error"]
        assert _get(f"http://127.0.0.1:{exp.port}/metrics")[0] == 200  # still serves (empty) metrics
    finally:
        exp.stop()


def test_textfile_written_atomically(tel, tmp_path):
    out = tmp_path / "tf" / "dmca.prom"
    args = ["-m", "dmca_hpc.cli.main", "export", "--telemetry", str(tel.path), "--textfile", str(out)]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first = out.read_text()
    s = _samples(first)
    assert s[("dmca_units_total", frozenset({("stage", "bands"), ("status", "failed")}))] == 4
    old = open(out, "rb")  # a reader holding the old file across the rewrites
    # a reader polling the file while it is rewritten 30 times only ever sees a whole file
    exp = E.Exporter([tel.path], port=0)
    stop, seen, bad = threading.Event(), [0], []

    def reader():
        while not stop.is_set():
            try:
                text = out.read_text()
            except FileNotFoundError:
                bad.append("missing")
                continue
            fams = {f.name for f in text_string_to_metric_families(text)}
            if "dmca_exporter_refresh_errors" not in fams or "dmca_units" not in fams:
                bad.append(text[-200:])
            seen[0] += 1
    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(30):
            _fill(tel, 5, start=100 + 5 * i)
            exp.write_textfile(out)
    finally:
        stop.set()
        th.join()
    assert not bad and seen[0] > 0
    # replaced by rename, never rewritten in place: the old file is unlinked and unchanged
    assert os.fstat(old.fileno()).st_nlink == 0 and old.read().decode() == first
    old.close()
    assert sorted(p.name for p in out.parent.iterdir()) == ["dmca.prom"]  # no temporary left
    assert _samples(out.read_text())[("dmca_telemetry_lines_total", frozenset())] == 190


def test_cli_serves_and_shuts_down_on_sigterm(tel):
    p = subprocess.Popen([sys.executable, "-m", "dmca_hpc.cli.main", "export", "--telemetry", str(tel.path),
                          "--port", "0", "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()
        assert "serving http://127.0.0.1:" in line, (line, p.stderr.read() if p.poll() is not None else "")
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        code, _, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and _samples(body)[("dmca_telemetry_lines_total", frozenset())] == 40
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=10)
        assert rc == 0 and "stopped" in p.stdout.read()
        with pytest.raises(OSError):  # nothing listens any more
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cli_rejects_bad_arguments(tel, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dmca_hpc.cli.main", "export", "--telemetry", str(tel.path),
                        "--interval", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--interval" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "dmca_hpc.cli.main", "export", "--telemetry", str(tel.path),
                            "--port", str(busy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot listen" in r.stderr


def test_grafana_dashboard_uses_only_exported_metrics_and_report_fields(tel):
    """Prometheus panels query only metrics the exporter serves; /report panels (Infinity
    JSON datasource) read the exporter's /report URL and only fields it carries."""
    import re
    from pathlib import Path
    dash = json.loads((Path(__file__).resolve().parents[3] / "config" / "grafana-dashboard.json").read_text())
    targets = [t for p in dash["panels"] for t in p["targets"]]
    prom = [t for t in targets if t["datasource"]["type"] == "prometheus"]
    infinity = [t for t in targets if t["datasource"]["type"] == "yesoreyeram-infinity-datasource"]
    assert len(prom) + len(infinity) == len(targets) and prom and infinity
    used = {m for t in prom for m in re.findall(r"dmca_[a-z0-9_]+", t["expr"])}
    with open(tel.path, "ab") as fh:
        fh.write(b"garbage\n")  # so that dmca_invalid_lines_total has a sample
    exp = E.Exporter([tel.path], port=0).start()
    try:
        from prometheus_client import generate_latest
        exported = {n for n, _ in _samples(generate_latest(exp.registry).decode())}
        assert used and used <= exported, used - exported
        assert {"dmca_fti_avg_ratio", "dmca_lambda_effective_ratio", "dmca_median_qps_per_second"} <= used
        report = json.loads(_get(f"http://127.0.0.1:{exp.port}/report")[2])
    finally:
        exp.stop()
    var = {v["name"]: v for v in dash["templating"]["list"]}
    assert var["report_url"]["query"].endswith("/report")

    def has(obj, dotted):
        for part in dotted.split("."):
            if not isinstance(obj, dict) or part not in obj:
                return False
            obj = obj[part]
        return True
    for t in infinity:
        assert t["url"] == "${report_url}"
        root = report[t["root_selector"]] if t["root_selector"] else report
        rows = root if isinstance(root, list) else [root]
        for c in t["columns"]:
            assert any(has(r, c["selector"]) for r in rows), (t["root_selector"], c["selector"])


def test_report_endpoint_serves_the_collector_json(tel):
    exp = E.Exporter([tel.path], port=0, interval=0.1,
                     report_options={"lambda_params": {"days_since_change": 2.0}}).start()
    try:
        code, ctype, body = _get(f"http://127.0.0.1:{exp.port}/report")
        assert code == 200 and ctype == "application/json"
        rep = json.loads(body)
        want = C.collect([tel.path], lambda_params={"days_since_change": 2.0})
        for k in ("count", "medians", "fti_avg", "fti_grade_worst", "lambda_effective", "records",
                  "cost_usd", "failed_units_total", "throughput_units_per_s"):
            assert rep[k] == pytest.approx(want[k]) if isinstance(want[k], float) else rep[k] == want[k], k
        assert rep["count"] == 40 and rep["lambda"]["days_since_change"] == 2.0
        assert rep["cache_timestamp"] == pytest.approx(time.time(), abs=30)
        # refreshed in the background: appended records show up without a restart
        _fill(tel, 5, start=40)
        assert _wait(lambda: json.loads(_get(f"http://127.0.0.1:{exp.port}/report")[2])["count"] == 45)
        s = _samples(_get(f"http://127.0.0.1:{exp.port}/metrics")[2])
        assert s[("dmca_records_total", frozenset())] == 45
        assert s[("dmca_lambda_effective_ratio", frozenset())] == pytest.approx(
            json.loads(_get(f"http://127.0.0.1:{exp.port}/report")[2])["lambda_effective"], rel=1e-12)
    finally:
        exp.stop()


# ------------------------------------------------------------------ stream integrity and plaintext policy

KEY = bytes(range(32))
KINDS = ("gap", "reorder", "duplicate", "foreign", "mixed")


def _issues_gauge(url: str) -> dict:
    s = _samples(_get(url)[2])
    return {k: s[("dmca_telemetry_sequence_issues", frozenset({("kind", k)}))] for k in KINDS}


def _planted(tmp_path):
    """a.jsonl: stream A seqs 0 1 3 2 4 4 (a reorder at line 4, a duplicate at line 6);
    b.jsonl: stream B seqs 0 1 3 (a gap at line 3) and A's seq 5 (foreign, line 4)."""
    a = T.Telemetry(tmp_path / "run", rank=0, validate="raise", filename="a.jsonl")
    b = T.Telemetry(tmp_path / "run", rank=1, validate="raise", filename="b.jsonl")
    _fill(a, 6)
    _fill(b, 4)
    la, lb = a.path.read_bytes().splitlines(True), b.path.read_bytes().splitlines(True)
    a.path.write_bytes(b"".join([la[0], la[1], la[3], la[2], la[4], la[4]]))
    b.path.write_bytes(b"".join([lb[0], lb[1], lb[3], la[5]]))
    return a.path, b.path


def test_sequence_issues_gauge_over_http(tmp_path):
    a, b = _planted(tmp_path)
    want = C.collect([a, b])["integrity"]
    assert (want["gaps_total"], want["reorders_total"], want["duplicates_total"], want["foreign_total"]) == (1, 1, 1, 1)
    # a plaintext file read live beside a key (require_encrypted=False, i.e. --allow-plaintext)
    p = T.Telemetry(tmp_path / "run", rank=2, validate="raise", filename="p.jsonl")
    _fill(p, 2)
    exp = E.Exporter([a, b, p.path], port=0, interval=0.1, key=KEY, require_encrypted=False).start()
    try:
        url = f"http://127.0.0.1:{exp.port}/metrics"
        assert _issues_gauge(url) == {"gap": 1, "reorder": 1, "duplicate": 1, "foreign": 1, "mixed": 0}
        s = _samples(_get(url)[2])
        assert s[("dmca_records_total", frozenset())] == 11  # 12 lines, the duplicate counted once
        # the file then gets an encrypted line: its plaintext was already counted, a mixed file
        T.Telemetry(tmp_path / "run", rank=2, key=KEY, filename="p.jsonl").record("bands", "e", "ok", 0.1, 0.1, 1.0)
        assert _wait(lambda: _issues_gauge(url)["mixed"] == 1)
        assert _issues_gauge(url) == {"gap": 1, "reorder": 1, "duplicate": 1, "foreign": 1, "mixed": 1}
    finally:
        exp.stop()
    # a clean file: every kind present, at 0 (an alert on > 0 sees a series)
    clean = T.Telemetry(tmp_path / "clean", validate="raise")
    _fill(clean, 5)
    exp = E.Exporter([clean.path], port=0, interval=60).start()
    try:
        assert _issues_gauge(f"http://127.0.0.1:{exp.port}/metrics") == dict.fromkeys(KINDS, 0)
    finally:
        exp.stop()
    # with a key and the default policy every plaintext line is refused, nothing is counted
    exp = E.Exporter([a, b], port=0, interval=60, key=KEY).start()
    try:
        s = _samples(_get(f"http://127.0.0.1:{exp.port}/metrics")[2])
        assert s[("dmca_records_total", frozenset())] == 0
        assert s[("dmca_invalid_lines_total", frozenset({("reason", "plaintext")}))] == 10
    finally:
        exp.stop()


def _serve(*args, env=None):
    """Start ``dmca-hpc export ... --port 0``; (process, port)."""
    p = subprocess.Popen([sys.executable, "-m", "dmca_hpc.cli.main", "export", *map(str, args), "--port", "0",
                          "--interval", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if "serving http://127.0.0.1:" not in line:
        p.kill()
        raise AssertionError((line, p.communicate()[1]))
    return p, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def test_cli_plaintext_policy_flags(tmp_path):
    import base64
    a, b = _planted(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if k != T.KEY_ENV}, T.KEY_ENV: base64.b64encode(KEY).decode()}
    noenv = {k: v for k, v in os.environ.items() if k != T.KEY_ENV}
    # (flags, environment) -> (records, plaintext lines refused)
    cases = [((), env, 0, 10), (("--allow-plaintext",), env, 9, 0), (("--require-encrypted",), noenv, 0, 10),
             ((), noenv, 9, 0)]
    for flags, e, records, refused in cases:
        p, port = _serve("--telemetry", a, b, *flags, env=e)
        try:
            s = _samples(_get(f"http://127.0.0.1:{port}/metrics")[2])
            assert s[("dmca_records_total", frozenset())] == records, flags
            assert s.get(("dmca_invalid_lines_total", frozenset({("reason", "plaintext")})), 0) == refused, flags
            issues = {k: s[("dmca_telemetry_sequence_issues", frozenset({("kind", k)}))] for k in KINDS}
            # refused lines are never checked, so there is nothing to see in the streams
            assert issues == ({"gap": 1, "reorder": 1, "duplicate": 1, "foreign": 1, "mixed": 0} if records
                              else dict.fromkeys(KINDS, 0)), flags
            report = json.loads(_get(f"http://127.0.0.1:{port}/report")[2])
            assert report["integrity"]["plaintext_refused"] == refused
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=10) == 0
            p.stdout.close()
            p.stderr.close()
    r = subprocess.run([sys.executable, "-m", "dmca_hpc.cli.main", "export", "--telemetry", str(a),
                        "--allow-plaintext", "--require-encrypted", "--textfile", str(tmp_path / "x.prom")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
