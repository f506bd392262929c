"""Exporter under load on 127.0.0.1 (issue #17), bounded: 50 concurrent
scrapes while idle connections are open, idle connections closed after the
per-connection timeout (their threads freed), clients that reset the
connection leave no traceback on stderr, /health is 503 for a telemetry
path that does not exist, and ``export --port 80000`` is one line, exit 2."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dmca_hpc.cli.main import main
from dmca_hpc.monitoring import exporter as E
from test_exporter import _get, _wait, tel  # noqa: F401  (HTTP helpers and the telemetry fixture)


def _reset_client(port: int) -> None:
    """Send a request and close at once with RST (SO_LINGER 0): the server's
    read or write of that connection fails with a reset or a broken pipe."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    s.close()


def test_concurrent_idle_and_resetting_clients(tel, capfd):
    assert E.LISTEN_BACKLOG >= 128 and E._server_class().request_queue_size == E.LISTEN_BACKLOG
    exp = E.Exporter([tel.path], port=0, interval=60, connection_timeout=1.0).start()
    base = f"http://127.0.0.1:{exp.port}"
    threads0 = threading.active_count()
    try:
        idle = [socket.create_connection(("127.0.0.1", exp.port), timeout=10) for _ in range(5)]
        with ThreadPoolExecutor(50) as pool:  # 50 clients at once, while 5 connections idle
            results = list(pool.map(lambda i: _get(base + "/metrics"), range(50)))
        assert [code for code, _, _ in results] == [200] * 50
        assert all("dmca_units_total" in body for _, _, body in results)
        t0 = time.monotonic()
        for s in idle:  # the server closes each idle connection after its 1 s timeout
            assert s.recv(1) == b""
            s.close()
        assert time.monotonic() - t0 < 5
        assert _wait(lambda: threading.active_count() <= threads0 + 1), threading.active_count()
        for _ in range(20):
            _reset_client(exp.port)
        # the reset connections are handled (and forgotten); the exporter still serves
        assert _get(base + "/health")[0] == 200
        try:  # the path the resets take, driven directly: a client gone mid-response
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            exp._server.handle_error(None, ("127.0.0.1", 1))
    finally:
        exp.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err


def test_health_is_503_for_a_missing_telemetry_path(tmp_path, tel):
    missing = tmp_path / "no" / "telemetry.jsonl"
    exp = E.Exporter([tel.path, missing], port=0, interval=60).start()
    try:
        code, _, body = _get(f"http://127.0.0.1:{exp.port}/health")
        assert code == 503, body
        h = json.loads(body)
        assert h["status"] == "unhealthy" and h["missing"] == [str(missing)]
    finally:
        exp.stop()


@pytest.mark.parametrize("port", ["80000", "-1"])
def test_export_port_out_of_range_is_one_line(tel, capsys, port):
    assert main(["export", "--telemetry", str(tel.path), f"--port={port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dmca-hpc export: error: --port {port}: expected a TCP port 0-65535 (0 = any free port)"]
