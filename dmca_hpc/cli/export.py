"""``dmca-hpc export``: serve telemetry to Prometheus (``/metrics``), the
collector's JSON report (``/report``) and ``/health``, or write a textfile.

See :mod:`dmca_hpc.monitoring.exporter`.  Exit code 0, or 2 on bad arguments
or unusable input.  Plaintext lines as in ``dmca-hpc collect``: refused in a
file that holds an encrypted line, and in every file when a key is given or
with ``--require-encrypted``; ``--allow-plaintext`` reads plaintext files
beside a key.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from dmca_hpc.cli.collect import (add_key_argument, add_plaintext_arguments, add_report_arguments,
                                  lambda_params, read_key)
# the exporter module imports only the standard library at top level: --help stays fast
from dmca_hpc.monitoring.exporter import DEFAULT_PORT


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
    add_report_arguments(parser)
    add_key_argument(parser)
    add_plaintext_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``dmca-hpc export``; exit code 0, or 2 on bad arguments / unusable input."""
    from dmca_hpc.monitoring.collector import load_baseline
    from dmca_hpc.monitoring.exporter import Exporter
    prog = "dmca-hpc export"
    key, code = read_key(args, prog)
    if code is not None:
        return code
    try:
        opts = {"fti_max": args.fti_max, "max_failures": args.max_failures, "max_invalid": args.max_invalid,
                "lambda_params": lambda_params(args)}
        if args.baseline:
            opts["baseline"] = load_baseline(args.baseline)
        exp = Exporter(args.telemetry, address=args.address, port=args.port, interval=args.interval, key=key,
                       report_options=opts, require_encrypted=args.require_encrypted)
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.textfile:
        if not args.textfile.endswith(".prom"):
            print(f"{prog}: warning: node_exporter only reads *.prom files, got {args.textfile}", file=sys.stderr)
        try:
            exp.write_textfile(args.textfile)
        except (OSError, RuntimeError) as exc:
            print(f"{prog}: error: cannot write {args.textfile}: {exc}", file=sys.stderr)
            return 2
        rep = exp.report
        print(f"wrote {args.textfile}: {rep.get('records', 0)} records, {rep.get('invalid_lines_total', 0)} invalid lines")
        return 0
    try:
        exp.start()
    except OSError as exc:
        print(f"{prog}: error: cannot listen on {args.address}:{args.port}: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def _on_signal(signum, frame):
        done.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"{prog}: serving http://{exp.address}:{exp.port}/metrics, /report and /health "
          f"(refresh every {exp.interval:g} s)", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        exp.stop()
        for s, h in old.items():
            signal.signal(s, h)
    print(f"{prog}: stopped", flush=True)
    return 0
