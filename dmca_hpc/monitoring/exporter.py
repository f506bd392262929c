"""Prometheus exporter for telemetry files: ``dmca-hpc export``.

Two modes:

* HTTP: ``dmca-hpc export --telemetry FILE... [--address 127.0.0.1] [--port 9477]
  [--interval 15]`` serves ``/metrics`` (Prometheus text exposition format
  0.0.4, rendered by prometheus_client) and ``/health`` (JSON).  It binds
  only the given address (default 127.0.0.1, not every interface as
  prometheus_client's ``start_http_server`` would by default).  A background
  thread re-reads the telemetry files every ``--interval`` seconds,
  *incrementally* (it remembers the byte offset of the last whole line of
  each file and reads only what was appended; a file that shrank or was
  replaced is re-read from the start), and publishes an immutable snapshot;
  a scrape only renders the last snapshot, it never parses telemetry.
  SIGTERM / SIGINT shut it down cleanly (server closed, thread joined, exit 0).
* Textfile: ``dmca-hpc export --telemetry FILE... --textfile PATH`` reads the
  files once, writes PATH for node_exporter's textfile collector atomically
  (temporary file in the same directory, then ``os.replace``), and exits.

Metrics (units in the names, Prometheus base units: seconds, bytes; money in USD)::

    dmca_units_total{stage,material,status}          counter  units recorded
    dmca_failed_units_total{stage}                    counter  failed units
    dmca_cost_usd_total{stage}                        counter  infra cost [USD]
    dmca_wasted_cost_usd_total{stage}                 counter  cost of failed/skipped units [USD]
    dmca_unit_wall_seconds_total{stage}               counter  sum of unit wall times [s]
    dmca_unit_cpu_seconds_total{stage}                counter  sum of unit CPU times [s]
    dmca_unit_core_seconds_total{stage}               counter  billed core time [s]
    dmca_unit_latency_seconds{stage,quantile}         gauge    p50 / p95 of ok units [s] (+-0.5 %)
    dmca_span_seconds{stage}                          gauge    makespan T [s]
    dmca_lambda_effective_units_per_second{stage}     gauge    ok units / T [1/s]
    dmca_qps_units_per_second{stage}                  gauge    all units / T [1/s]
    dmca_peak_memory_bytes{stage}                     gauge    max peak RSS [bytes]
    dmca_fti_ratio{stage}                             gauge    FTI [dimensionless] (absent when undefined)
    dmca_fti_grade_info{stage,grade}                  gauge    1 for the stage's grade OK/WARN/FAIL
    dmca_fti_avg_ratio                                gauge    cost-weighted mean FTI
    dmca_invalid_lines_total{reason}                  counter  invalid telemetry lines
    dmca_telemetry_lines_total                        counter  lines read
    dmca_exporter_refresh_timestamp_seconds           gauge    UNIX time of the last refresh
    dmca_exporter_refresh_duration_seconds            gauge    time the last refresh took [s]
    dmca_exporter_refresh_errors_total                counter  refreshes that raised

Definitions of FTI, lambda_effective etc.: :mod:`dmca_hpc.monitoring.collector`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

DEFAULT_PORT = 9477


class TelemetrySource:
    """Incremental reader of telemetry files into a collector Aggregator.

    ``refresh()`` reads only what was appended since the last call; when a
    file shrank or its inode changed (rotation, rewrite), everything is
    re-read from scratch so counters never double count.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], key: bytes | None = None):
        self.inputs = [Path(p) for p in paths]
        self.key = key
        self._reset()

    def _reset(self):
        from dmca_hpc.monitoring.collector import Aggregator
        self.agg = Aggregator(key=self.key, max_list=100)
        self.pos: dict[str, tuple[int, int, int]] = {}  # path -> (inode, offset, line)

    def refresh(self) -> dict:
        """Read new lines and return the collector report (dict)."""
        from dmca_hpc.monitoring.collector import expand_inputs
        files = expand_inputs(self.inputs)
        if set(self.pos) - {str(p) for p in files}:
            # a file we counted is gone from the input set (e.g. rank files superseded by the
            # merged telemetry.jsonl): start over, or every record would be counted twice
            self._reset()
        for p in files:
            key = str(p)
            try:
                st = p.stat()
            except OSError:
                continue
            ino, off, line = self.pos.get(key, (st.st_ino, 0, 0))
            if ino != st.st_ino or st.st_size < off:
                self._reset()
                return self.refresh()
        self.agg.unreadable = []
        for p in files:
            key = str(p)
            ino, off, line = self.pos.get(key, (None, 0, 0))
            try:
                ino = p.stat().st_ino
            except OSError as exc:
                self.agg.unreadable.append({"file": key, "reason": f"{type(exc).__name__}: {exc.strerror or exc}"})
                continue
            off, line = self.agg.consume(p, offset=off, start_line=line, tail=True)
            self.pos[key] = (ino, off, line)
        return self.agg.report()


def families(rep: dict, refresh_ts: float | None = None, refresh_s: float | None = None,
             refresh_errors: int = 0) -> list:
    """prometheus_client metric families for a collector report."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    fams = []

    def counter(name, doc, labels=()):
        f = CounterMetricFamily(name, doc, labels=list(labels))
        fams.append(f)
        return f

    def gauge(name, doc, labels=()):
        f = GaugeMetricFamily(name, doc, labels=list(labels))
        fams.append(f)
        return f

    stages = rep.get("stages", {})
    units = counter("dmca_units", "Units of work recorded in telemetry", ("stage", "status"))
    failed = counter("dmca_failed_units", "Failed units of work", ("stage",))
    cost = counter("dmca_cost_usd", "Infrastructure cost [USD] = core-seconds/3600 * price per core-hour", ("stage",))
    waste = counter("dmca_wasted_cost_usd", "Cost of failed and skipped units [USD]", ("stage",))
    wall = counter("dmca_unit_wall_seconds", "Sum of unit wall-clock times [s]", ("stage",))
    cpu = counter("dmca_unit_cpu_seconds", "Sum of unit CPU times [s]", ("stage",))
    core = counter("dmca_unit_core_seconds", "Billed core time [s]", ("stage",))
    lat = gauge("dmca_unit_latency_seconds", "Latency quantiles of successful units [s] (relative error 0.5%)",
                ("stage", "quantile"))
    span = gauge("dmca_span_seconds", "Makespan: last unit end - first unit start [s]", ("stage",))
    lam = gauge("dmca_lambda_effective_units_per_second",
                "Effective throughput: successful units / makespan [1/s]", ("stage",))
    qps = gauge("dmca_qps_units_per_second", "Offered throughput: all units / makespan [1/s]", ("stage",))
    mem = gauge("dmca_peak_memory_bytes", "Largest peak resident memory of a rank [bytes]", ("stage",))
    fti = gauge("dmca_fti_ratio", "FTI = normalized cost / normalized performance (1 = baseline)", ("stage",))
    grade = gauge("dmca_fti_grade_info", "FTI grade of the stage (value 1 on the current grade)", ("stage", "grade"))
    for name, s in stages.items():
        for status in ("ok", "failed", "skipped"):
            units.add_metric([name, status], s[status])
        failed.add_metric([name], s["failed"])
        cost.add_metric([name], s["cost_usd"])
        waste.add_metric([name], s["wasted_cost_usd"])
        wall.add_metric([name], s["wall_seconds_total"])
        cpu.add_metric([name], s["cpu_seconds_total"])
        core.add_metric([name], s["core_seconds_total"])
        for q, k in (("0.5", "latency_p50_ms"), ("0.95", "latency_p95_ms")):
            if s[k] is not None:
                lat.add_metric([name, q], s[k] / 1e3)
        span.add_metric([name], s["span_seconds"])
        if s["lambda_effective"] is not None:
            lam.add_metric([name], s["lambda_effective"])
        if s["qps"] is not None:
            qps.add_metric([name], s["qps"])
        mem.add_metric([name], s["peak_memory_mb_max"] * 2**20)
        if s["fti"] is not None:
            fti.add_metric([name], s["fti"])
        for g in ("OK", "WARN", "FAIL"):
            grade.add_metric([name, g], 1.0 if s["fti_grade"] == g else 0.0)
    avg = gauge("dmca_fti_avg_ratio", "Cost-weighted mean FTI over stages")
    if rep.get("fti_avg") is not None:
        avg.add_metric([], rep["fti_avg"])
    inv = counter("dmca_invalid_lines", "Telemetry lines that are not valid records", ("reason",))
    for code, n in rep.get("invalid_by_reason", {}).items():
        inv.add_metric([code], n)
    lines = counter("dmca_telemetry_lines", "Telemetry lines read")
    lines.add_metric([], rep.get("lines", 0))
    if refresh_ts is not None:
        gauge("dmca_exporter_refresh_timestamp_seconds", "UNIX time of the last refresh [s]").add_metric([], refresh_ts)
    if refresh_s is not None:
        gauge("dmca_exporter_refresh_duration_seconds", "Duration of the last refresh [s]").add_metric([], refresh_s)
    counter("dmca_exporter_refresh_errors", "Refreshes that failed").add_metric([], refresh_errors)
    return fams


class _SnapshotCollector:
    """prometheus_client collector that returns the last published snapshot."""

    def __init__(self, exporter: "Exporter"):
        self.exporter = exporter

    def collect(self):
        return iter(self.exporter.snapshot)


class Exporter:
    """Background-refreshing exporter; ``start()`` serves HTTP, ``stop()`` shuts down.

    Args:
        paths: telemetry files or run telemetry directories.
        address: interface to bind (default 127.0.0.1).
        port: TCP port (0 = ephemeral; the bound port is ``self.port`` after start).
        interval: seconds between refreshes.
        key: AES key for encrypted lines.
    """

    def __init__(self, paths, address: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 interval: float = 15.0, key: bytes | None = None):
        from prometheus_client import CollectorRegistry
        if interval <= 0:
            raise ValueError(f"--interval must be > 0 seconds, got {interval}")
        self.source = TelemetrySource(paths, key=key)
        self.address, self.port, self.interval = address, int(port), float(interval)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(self))
        self.snapshot: list = []      # replaced whole (atomic reference swap), never mutated
        self.report: dict = {}
        self.last_refresh: float | None = None
        self.last_error: str | None = None
        self.refresh_errors = 0
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = None
        self._server_thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Parse what is new and publish a fresh snapshot (errors are counted, never raised)."""
        t = time.perf_counter()
        try:
            rep = self.source.refresh()
            dt = time.perf_counter() - t
            now = time.time()
            self.snapshot = families(rep, now, dt, self.refresh_errors)
            self.report, self.last_refresh, self.last_error = rep, now, None
            self.refreshes += 1
        except Exception as exc:  # a bad refresh must not kill the exporter; /health says so
            self.refresh_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.refresh()

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 when the last refresh succeeded and is
        younger than 3 intervals, else 503."""
        age = (time.time() - self.last_refresh) if self.last_refresh else None
        ok = self.last_error is None and age is not None and age <= 3 * self.interval + 1
        return (200 if ok else 503), {
            "status": "ok" if ok else "unhealthy", "last_refresh_age_seconds": age,
            "last_error": self.last_error, "refreshes": self.refreshes,
            "records": self.report.get("records"), "invalid_lines": self.report.get("invalid_lines_total"),
            "files": [str(p) for p in self.source.inputs]}

    def _handler(self):
        from http.server import BaseHTTPRequestHandler
        # classic text format 0.0.4 (names escaped to [a-zA-Z0-9_:]): what every Prometheus
        # server and node_exporter version reads; prometheus_client's "latest" is 1.0.0
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code, body: bytes, ctype: str):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(exporter.registry), CONTENT_TYPE_PLAIN_0_0_4)
                elif path == "/health":
                    code, body = exporter.health()
                    self._send(code, (json.dumps(body) + "\n").encode(), "application/json")
                elif path == "/":
                    self._send(200, b"dmca_hpc telemetry exporter: /metrics /health\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            do_HEAD = do_GET

            def log_message(self, fmt, *args):  # no per-scrape noise on stderr
                pass

        return Handler

    def start(self) -> "Exporter":
        """First refresh (synchronously), then serve and refresh in background threads."""
        from http.server import ThreadingHTTPServer
        self.refresh()
        self._server = ThreadingHTTPServer((self.address, self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._server_thread = threading.Thread(target=self._server.serve_forever, name="dmca-exporter-http",
                                               kwargs={"poll_interval": 0.2}, daemon=True)
        self._server_thread.start()
        self._thread = threading.Thread(target=self._loop, name="dmca-exporter-refresh", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, close the socket and join both threads."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in (self._server_thread, self._thread):
            if t is not None:
                t.join(timeout)

    def write_textfile(self, path: str | os.PathLike) -> None:
        """Refresh once and write the node_exporter textfile atomically
        (prometheus_client writes a temporary file beside ``path`` and
        ``os.replace``-s it, so node_exporter never reads half a file)."""
        from prometheus_client import write_to_textfile
        self.refresh()
        if self.last_error:
            raise RuntimeError(f"reading telemetry failed: {self.last_error}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dmca-hpc export``."""
    parser.add_argument("--telemetry", nargs="+", required=True, metavar="FILE",
                        help="telemetry JSONL files or run telemetry directories")
    parser.add_argument("--address", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes it on every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between re-reads of the files (default 15)")
    parser.add_argument("--textfile", metavar="PATH",
                        help="write node_exporter textfile PATH (atomically) and exit instead of serving")
    parser.add_argument("--key-env", default=None, metavar="VAR",
                        help="environment variable with the AES key (default DMCA_TELEMETRY_KEY)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``dmca-hpc export``; exit code 0, or 2 on bad arguments / unusable input."""
    from dmca_hpc.monitoring.telemetry import KEY_ENV, KeyError_, load_key
    env = args.key_env or KEY_ENV
    try:
        key = load_key(env) if os.environ.get(env) else None
    except KeyError_ as exc:
        print(f"dmca-hpc export: {exc}", file=sys.stderr)
        return 2
    try:
        exp = Exporter(args.telemetry, address=args.address, port=args.port, interval=args.interval, key=key)
    except ValueError as exc:
        print(f"dmca-hpc export: {exc}", file=sys.stderr)
        return 2
    if args.textfile:
        if not args.textfile.endswith(".prom"):
            print(f"dmca-hpc export: warning: node_exporter only reads *.prom files, got {args.textfile}",
                  file=sys.stderr)
        try:
            exp.write_textfile(args.textfile)
        except (OSError, RuntimeError) as exc:
            print(f"dmca-hpc export: cannot write {args.textfile}: {exc}", file=sys.stderr)
            return 2
        rep = exp.report
        print(f"wrote {args.textfile}: {rep.get('records', 0)} records, {rep.get('invalid_lines_total', 0)} invalid lines")
        return 0
    try:
        exp.start()
    except OSError as exc:
        print(f"dmca-hpc export: cannot listen on {args.address}:{args.port}: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def _on_signal(signum, frame):
        done.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"dmca-hpc export: serving http://{exp.address}:{exp.port}/metrics and /health "
          f"(refresh every {exp.interval:g} s)", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        exp.stop()
        for s, h in old.items():
            signal.signal(s, h)
    print("dmca-hpc export: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dmca_hpc.monitoring.exporter`` (same as ``dmca-hpc export``)."""
    p = argparse.ArgumentParser(prog="dmca-hpc export", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
