"""A real Prometheus server scrapes the exporter, and our metrics come back
through Prometheus's HTTP query API (/api/v1/query).

Everything is on 127.0.0.1: the exporter on a free port, Prometheus on another
free port with its own TSDB directory under tmp_path and a 1 s scrape
interval.  Every wait is bounded.  Skipped (with the reason) when the
``prometheus`` binary (Debian package ``prometheus``) is missing.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dmca_hpc.monitoring import collector as C
from dmca_hpc.monitoring import exporter as E
from dmca_hpc.monitoring import telemetry as T

PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="prometheus not installed (apt-get install prometheus)")

WAIT_S = 60.0  # upper bound for Prometheus to start and ingest the first scrapes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read().decode())
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return None


def _query(base: str, expr: str):
    """Instant vector of ``expr`` as {frozenset(labels without __name__/job/instance): value}."""
    out = _get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if not out or out.get("status") != "success":
        return None
    res = {}
    for item in out["data"]["result"]:
        labels = {k: v for k, v in item["metric"].items() if k not in ("__name__", "job", "instance")}
        res[frozenset(labels.items())] = float(item["value"][1])
    return res


def _wait(cond, timeout=WAIT_S, step=0.25):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return None


def test_prometheus_scrapes_the_exporter_and_answers_queries(tmp_path):
    tel = T.Telemetry(tmp_path / "run", rank=0, validate="raise")
    for i in range(30):
        failed = i % 10 == 0
        tel.record(("bands", "rates")[i % 2], f"u{i}", "failed" if failed else "ok", 0.01 * (1 + i % 5), 0.01,
                   50.0, error="ValueError: bad k-point" if failed else None, physics={"material": "Si"})
    exp = E.Exporter([tel.path], address="127.0.0.1", port=0, interval=0.5).start()
    prom_port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: dmca\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exp.port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        ready = _wait(lambda: proc.poll() is not None or _get_json(base + "/api/v1/status/buildinfo"))
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert ready, "prometheus did not answer within the bound"
        # the target is up (scraped at least once)
        up = _wait(lambda: (_query(base, 'up{job="dmca"}') or {}).get(frozenset()) == 1.0)
        assert up, (_get_json(base + "/api/v1/targets"), (tmp_path / "prometheus.log").read_text()[-2000:])
        rep = C.collect([tel.path])
        lines = _wait(lambda: _query(base, "dmca_telemetry_lines_total"))
        assert lines == {frozenset(): 30.0}
        units = _query(base, "dmca_units_total")
        for stage, st in rep["stages"].items():
            assert units[frozenset({("stage", stage), ("status", "ok")})] == st["ok"]
            assert units[frozenset({("stage", stage), ("status", "failed")})] == st["failed"]
        cost = _query(base, "dmca_cost_usd_total")
        assert sum(cost.values()) == pytest.approx(rep["cost_usd"], rel=1e-9)
        # the DMCA figures, through Prometheus
        assert _query(base, "dmca_records_total") == {frozenset(): 30.0}
        assert _query(base, "dmca_fti_avg_ratio")[frozenset()] == pytest.approx(rep["fti_avg"], rel=1e-9)
        assert _query(base, "dmca_lambda_effective_ratio")[frozenset()] == pytest.approx(rep["lambda_effective"],
                                                                                         rel=1e-6)
        assert _query(base, "dmca_median_latency_p95_seconds")[frozenset()] == \
            pytest.approx(rep["medians"]["latency_p95_ms"] / 1e3, rel=1e-9)
        # new records reach Prometheus through the exporter's background refresh
        for i in range(30, 40):
            tel.record("rates", f"u{i}", "ok", 0.02, 0.02, 50.0, physics={"material": "Si"})
        assert _wait(lambda: (_query(base, "dmca_telemetry_lines_total") or {}).get(frozenset()) == 40.0)
        # and a PromQL computation over our series works (what the Grafana panels do)
        s = _query(base, 'sum(dmca_units_total{status="ok"})')
        assert s == {frozenset(): float(rep["ok"] + 10)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        exp.stop()
