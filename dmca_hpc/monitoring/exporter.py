"""Prometheus exporter for telemetry files: ``dmca-hpc export``.

Two modes:

* HTTP: ``dmca-hpc export --telemetry FILE... [--address 127.0.0.1] [--port 9477]
  [--interval 15]`` (:mod:`dmca_hpc.cli.export`) serves ``/metrics``
  (Prometheus text exposition format 0.0.4, rendered by prometheus_client),
  ``/report`` (the collector's JSON report, as ``dmca-hpc collect --json``
  prints it: the DMCA fields count, medians, fti_avg, fti_grade_worst,
  lambda_effective and all the HPC figures) and ``/health`` (JSON), as the
  original DMCA server did.  It binds
  only the given address (default 127.0.0.1, not every interface as
  prometheus_client's ``start_http_server`` would by default).  A background
  thread re-reads the telemetry files every ``--interval`` seconds,
  *incrementally* (it remembers the byte offset of the last whole line of
  each file and reads only what was appended; a file that shrank or was
  replaced is re-read from the start), and publishes an immutable snapshot;
  a scrape of /metrics or /report only renders the last snapshot, it never
  parses telemetry (/report is serialised once per refresh).
  SIGTERM / SIGINT shut it down cleanly (server closed, thread joined, exit 0).
  Under load: a listen backlog of :data:`LISTEN_BACKLOG` connections (the
  standard library's 5 dropped bursts of scrapers), a per-connection socket
  timeout (``connection_timeout``, default :data:`CONNECTION_TIMEOUT_S`) so an
  idle or stalled client frees its thread, and clients that disconnect early
  (broken pipe, reset) are not errors: nothing is printed for them.
  ``/health`` answers 503 while a telemetry path does not exist or cannot be
  read, as well as after a failed or stale refresh.
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
    dmca_throughput_units_per_second{stage}           gauge    ok units / T [1/s]
    dmca_qps_units_per_second{stage}                  gauge    all units / T [1/s]
    dmca_peak_memory_bytes{stage}                     gauge    max peak RSS [bytes]
    dmca_fti_ratio{stage}                             gauge    stage FTI [dimensionless] (absent when undefined)
    dmca_fti_grade_info{stage,grade}                  gauge    1 for the stage's grade OK/WARN/FAIL
    dmca_fti_stage_avg_ratio                          gauge    cost-weighted mean stage FTI
    dmca_records_total                                counter  valid records (DMCA count)
    dmca_median_qps_per_second                        gauge    DMCA median of the records' qps [1/s]
    dmca_median_latency_p95_seconds                   gauge    DMCA median of latency_p95_ms [s]
    dmca_median_infra_cost_usd                        gauge    DMCA median of infra_cost_usd [USD]
    dmca_fti_avg_ratio                                gauge    DMCA fti_avg (mean row FTI)
    dmca_fti_grade_worst_info{grade}                  gauge    1 for the DMCA worst row grade
    dmca_lambda_effective_ratio                       gauge    DMCA lambda_effective [dimensionless]
    dmca_invalid_lines_total{reason}                  counter  invalid telemetry lines
    dmca_telemetry_lines_total                        counter  lines read
    dmca_telemetry_sequence_issues{kind}              gauge    stream issues: kind = gap, reorder, duplicate,
                                                               foreign, mixed (collector, "Integrity")
    dmca_exporter_refresh_timestamp_seconds           gauge    UNIX time of the last refresh
    dmca_exporter_refresh_duration_seconds            gauge    time the last refresh took [s]
    dmca_exporter_refresh_errors_total                counter  refreshes that raised

Definitions of FTI, lambda_effective etc.: :mod:`dmca_hpc.monitoring.collector`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Iterable

DEFAULT_PORT = 9477
#: listen(2) backlog of the HTTP server (socketserver's default is 5)
LISTEN_BACKLOG = 128
#: seconds a connection may stay idle (no request line, stalled body) before it is closed
CONNECTION_TIMEOUT_S = 5.0


class TelemetrySource:
    """Incremental reader of telemetry files into a collector Aggregator
    (``key`` and ``require_encrypted``: the collector's plaintext policy,
    :class:`dmca_hpc.monitoring.collector.Aggregator`).

    ``refresh()`` reads only what was appended since the last call; when a
    file shrank or its inode changed (rotation, rewrite), everything is
    re-read from scratch so counters never double count.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], key: bytes | None = None,
                 report_options: dict | None = None, require_encrypted: bool | None = None):
        self.inputs = [Path(p) for p in paths]
        self.key = key
        self.require_encrypted = require_encrypted
        self.report_options = dict(report_options or {})
        self._reset()

    def _reset(self):
        from dmca_hpc.monitoring.collector import Aggregator
        self.agg = Aggregator(key=self.key, max_list=100, require_encrypted=self.require_encrypted)
        self.pos: dict[str, tuple[int, int, int]] = {}  # path -> (inode, offset, line)

    def refresh(self) -> dict:
        """Read new lines and return the collector report (dict)."""
        from dmca_hpc.monitoring.collector import select_inputs
        files, skipped, refused = select_inputs(self.inputs)
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
        self.agg.unreadable = list(refused)
        self.agg.skipped = skipped
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
        return self.agg.report(**self.report_options)


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
    lam = gauge("dmca_throughput_units_per_second",
                "Effective throughput: successful units / makespan [1/s]", ("stage",))
    qps = gauge("dmca_qps_units_per_second", "Offered throughput: all units / makespan [1/s]", ("stage",))
    mem = gauge("dmca_peak_memory_bytes", "Largest peak resident memory of a rank [bytes]", ("stage",))
    fti = gauge("dmca_fti_ratio", "FTI = normalized cost / normalized performance (1 = baseline)", ("stage",))
    grade = gauge("dmca_fti_grade_info", "FTI grade of the stage (value 1 on the current grade)", ("stage", "grade"))

    def put(fam, labels, value, scale=1.0):
        # the report says null for a sum that overflowed a double: no sample, not a crash
        if value is not None:
            fam.add_metric(labels, value * scale)

    for name, s in stages.items():
        for status in ("ok", "failed", "skipped"):
            units.add_metric([name, status], s[status])
        failed.add_metric([name], s["failed"])
        put(cost, [name], s["cost_usd"])
        put(waste, [name], s["wasted_cost_usd"])
        put(wall, [name], s["wall_seconds_total"])
        put(cpu, [name], s["cpu_seconds_total"])
        put(core, [name], s["core_seconds_total"])
        for q, k in (("0.5", "latency_p50_ms"), ("0.95", "latency_p95_ms")):
            if s[k] is not None:
                lat.add_metric([name, q], s[k] / 1e3)
        put(span, [name], s["span_seconds"])
        if s["throughput_units_per_s"] is not None:
            lam.add_metric([name], s["throughput_units_per_s"])
        if s["qps"] is not None:
            qps.add_metric([name], s["qps"])
        put(mem, [name], s["peak_memory_mb_max"], 2**20)
        if s["fti"] is not None:
            fti.add_metric([name], s["fti"])
        for g in ("OK", "WARN", "FAIL"):
            grade.add_metric([name, g], 1.0 if s["fti_grade"] == g else 0.0)
    avg = gauge("dmca_fti_stage_avg_ratio", "Cost-weighted mean of the stage FTIs")
    if rep.get("fti_stage_avg") is not None:
        avg.add_metric([], rep["fti_stage_avg"])
    # the DMCA report fields (collector docstring)
    counter("dmca_records", "Valid telemetry records (DMCA count)").add_metric([], rep.get("count", 0))
    med = rep.get("medians") or {}
    for name, doc, k, scale in (
            ("dmca_median_qps_per_second", "DMCA median of the records' qps [1/s]", "qps", 1.0),
            ("dmca_median_latency_p95_seconds", "DMCA median of the records' latency_p95_ms [s]",
             "latency_p95_ms", 1e-3),
            ("dmca_median_infra_cost_usd", "DMCA median of the records' infra_cost_usd [USD]",
             "infra_cost_usd", 1.0)):
        g = gauge(name, doc)
        if med.get(k) is not None:
            g.add_metric([], med[k] * scale)
    dm = gauge("dmca_fti_avg_ratio", "DMCA fti_avg: mean FTI of the DMCA rows (gate: <= 1.05)")
    if rep.get("fti_avg") is not None:
        dm.add_metric([], rep["fti_avg"])
    worst = gauge("dmca_fti_grade_worst_info", "DMCA worst row grade (value 1 on the current grade)", ("grade",))
    for g in ("OK", "WARN", "FAIL"):
        worst.add_metric([g], 1.0 if rep.get("fti_grade_worst") == g else 0.0)
    le = gauge("dmca_lambda_effective_ratio",
               "DMCA lambda_effective = lambda_SIBG * exp(-lambda_ASDPI * days since change) [dimensionless]")
    if rep.get("lambda_effective") is not None:
        le.add_metric([], rep["lambda_effective"])
    inv = counter("dmca_invalid_lines", "Telemetry lines that are not valid records", ("reason",))
    for code, n in rep.get("invalid_by_reason", {}).items():
        inv.add_metric([code], n)
    lines = counter("dmca_telemetry_lines", "Telemetry lines read")
    lines.add_metric([], rep.get("lines", 0))
    from dmca_hpc.monitoring.collector import sequence_issues
    seq = gauge("dmca_telemetry_sequence_issues",
                "Stream integrity issues of the telemetry read (collector docstring): gaps (deleted lines), "
                "reorders, duplicates (replays), foreign lines, mixed files", ("kind",))
    # every kind always has a sample: an alert on > 0 must see a 0, not an absent series
    for kind, n in sequence_issues(rep.get("integrity") or {}).items():
        seq.add_metric([kind], n)
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


def _server_class():
    """ThreadingHTTPServer with a listen backlog of :data:`LISTEN_BACKLOG`
    that stays quiet about clients that went away."""
    import sys
    from http.server import ThreadingHTTPServer

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = LISTEN_BACKLOG

        def handle_error(self, request, client_address):
            # a scraper that disconnects mid-response (broken pipe, reset) or a connection
            # that timed out is the client's business, not a traceback on our stderr
            if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                return
            super().handle_error(request, client_address)

    return Server


class Exporter:
    """Background-refreshing exporter; ``start()`` serves HTTP, ``stop()`` shuts down.

    Args:
        paths: telemetry files or run telemetry directories.
        address: interface to bind (default 127.0.0.1).
        port: TCP port (0 = ephemeral; the bound port is ``self.port`` after start).
        interval: seconds between refreshes.
        key: AES key for encrypted lines.
        require_encrypted: refuse every plaintext line (True), or only those
            of files holding an encrypted line (False); None: True when a key
            is given (the collector's policy, ``--require-encrypted`` /
            ``--allow-plaintext`` of ``dmca-hpc export``).
        report_options: keyword arguments of the collector's
            ``Aggregator.report`` (baseline, fti_max, max_failures, max_invalid,
            lambda_params), as ``dmca-hpc collect`` takes them.
        connection_timeout: seconds an HTTP connection may stay idle [s].
    """

    def __init__(self, paths, address: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 interval: float = 15.0, key: bytes | None = None, report_options: dict | None = None,
                 connection_timeout: float = CONNECTION_TIMEOUT_S, require_encrypted: bool | None = None):
        from prometheus_client import CollectorRegistry
        if not interval > 0:
            raise ValueError(f"--interval must be > 0 seconds, got {interval}")
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ValueError(f"--port {port}: expected a TCP port 0-65535 (0 = any free port)")
        if not connection_timeout > 0:
            raise ValueError(f"connection_timeout must be > 0 seconds, got {connection_timeout}")
        self.source = TelemetrySource(paths, key=key, report_options=report_options,
                                      require_encrypted=require_encrypted)
        self.address, self.port, self.interval = address, int(port), float(interval)
        self.connection_timeout = float(connection_timeout)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(self))
        self.snapshot: list = []      # replaced whole (atomic reference swap), never mutated
        self.report: dict = {}
        self.report_json: bytes = b"{}\n"  # /report body, serialised once per refresh
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
            body = dict(rep, cache_timestamp=now)  # as DMCA's /report: when the cache was filled
            self.report_json = (json.dumps(body, allow_nan=False, default=str) + "\n").encode()
            self.report, self.last_refresh, self.last_error = rep, now, None
            self.refreshes += 1
        except Exception as exc:  # a bad refresh must not kill the exporter; /health says so
            self.refresh_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.refresh()

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 when the last refresh succeeded, is
        younger than 3 intervals and every telemetry path exists and was
        read; else 503 (an exporter of a path that does not exist serves
        empty metrics, which must not look healthy)."""
        age = (time.time() - self.last_refresh) if self.last_refresh else None
        missing = [str(p) for p in self.source.inputs if not p.exists()]
        unreadable = self.report.get("unreadable_files") or []
        ok = (self.last_error is None and age is not None and age <= 3 * self.interval + 1
              and not missing and not unreadable)
        return (200 if ok else 503), {
            "status": "ok" if ok else "unhealthy", "last_refresh_age_seconds": age,
            "last_error": self.last_error, "refreshes": self.refreshes,
            "records": self.report.get("records"), "invalid_lines": self.report.get("invalid_lines_total"),
            "files": [str(p) for p in self.source.inputs], "missing": missing,
            "unreadable": unreadable}

    def _handler(self):
        from http.server import BaseHTTPRequestHandler
        # classic text format 0.0.4 (names escaped to [a-zA-Z0-9_:]): what every Prometheus
        # server and node_exporter version reads; prometheus_client's "latest" is 1.0.0
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            timeout = exporter.connection_timeout  # socket timeout: idle clients free the thread

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
                elif path == "/report":
                    self._send(200, exporter.report_json, "application/json")
                elif path == "/health":
                    code, body = exporter.health()
                    self._send(code, (json.dumps(body) + "\n").encode(), "application/json")
                elif path == "/":
                    self._send(200, b"dmca_hpc telemetry exporter: /metrics /report /health\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            do_HEAD = do_GET

            def log_message(self, fmt, *args):  # no per-scrape noise on stderr
                pass

        return Handler

    def start(self) -> "Exporter":
        """First refresh (synchronously), then serve and refresh in background threads."""
        self.refresh()
        self._server = _server_class()((self.address, self.port), self._handler())
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
