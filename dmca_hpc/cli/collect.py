"""``dmca-hpc collect FILE... [--json] [--markdown] [--gate]``: the telemetry report.

The figures are defined in :mod:`dmca_hpc.monitoring.collector`.  Exit codes:
0 ok, 1 gate breached (``--gate``), 2 unreadable input or bad arguments.

Plaintext lines: refused in a file that holds an encrypted line; refused in
every file when a key is given (``DMCA_TELEMETRY_KEY`` / ``--key-env``) or
with ``--require-encrypted``; ``--allow-plaintext`` reads plaintext files
beside a key.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# the DMCA FTI gate (fti_avg <= 1.05, the WARN/FAIL boundary); the collector has
# no heavy imports, so --help stays fast
from dmca_hpc.monitoring.collector import FTI_WARN as FTI_GATE


def add_plaintext_arguments(parser: argparse.ArgumentParser) -> None:
    """``--require-encrypted`` / ``--allow-plaintext`` (mutually exclusive), the
    collector's plaintext policy (collect, export, causal, plan); both set
    ``args.require_encrypted`` (None when neither is given: refuse plaintext
    when a key is given)."""
    plain = parser.add_mutually_exclusive_group()
    plain.add_argument("--require-encrypted", action="store_true", default=None,
                       help="refuse every plaintext line, also without a key (default when a key is given)")
    plain.add_argument("--allow-plaintext", dest="require_encrypted", action="store_false",
                       default=argparse.SUPPRESS,  # the dest's default is --require-encrypted's None
                       help="with a key given, still read plaintext lines of files that hold no encrypted "
                            "line (plaintext in an encrypted file is always refused)")


def add_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-env", default=None, metavar="VAR",
                        help="environment variable with the AES key (base64 of 32 bytes; default DMCA_TELEMETRY_KEY)")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that shape the report (shared with ``dmca-hpc export``)."""
    parser.add_argument("--fti-max", type=float, default=FTI_GATE,
                        help=f"DMCA FTI gate: largest acceptable fti_avg and stage FTI [dimensionless] "
                             f"(default {FTI_GATE}, the WARN/FAIL boundary)")
    parser.add_argument("--max-failures", type=int, default=0, help="failed units tolerated by --gate (default 0)")
    parser.add_argument("--max-invalid", type=int, default=0, help="invalid lines tolerated by --gate (default 0)")
    parser.add_argument("--baseline", metavar="REPORT.json",
                        help="previous collect --json report (or {stage: {cost_per_ok_unit_usd, latency_p50_ms}}) "
                             "used as the stage FTI baseline")
    parser.add_argument("--lambda-param", action="append", default=[], metavar="KEY=VALUE",
                        help="DMCA lambda_effective parameter (repeatable): lambda_current, sibg_beta, fti_ref, "
                             "sibg_min, sibg_max, asdpi_lambda0 [1/day], asdpi_alpha, deploy_rate, deploy_rate_ref "
                             "[deployments/week], asdpi_min, asdpi_max [1/day]; defaults: the job key "
                             "telemetry.lambda_effective (the original DMCA collector's values)")
    parser.add_argument("--days-since-change", type=float, default=None, metavar="DAYS",
                        help="days since the last change of intervention for lambda_effective [day] "
                             "(default: measured from the record timestamps; 7 without timestamps)")


def lambda_params(args: argparse.Namespace) -> dict:
    """The ``--lambda-param`` / ``--days-since-change`` overrides; ValueError naming a bad one."""
    from dmca_hpc.monitoring.collector import lambda_defaults
    known = lambda_defaults()
    out: dict = {}
    for item in args.lambda_param:
        k, sep, v = item.partition("=")
        k = k.strip()
        if not sep or k not in known or k == "days_since_change":
            raise ValueError(f"--lambda-param {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(x for x in known if x != 'days_since_change')}")
        try:
            out[k] = float(v)
        except ValueError:
            raise ValueError(f"--lambda-param {item!r}: {v!r} is not a number") from None
    if args.days_since_change is not None:
        if not args.days_since_change >= 0:
            raise ValueError(f"--days-since-change must be >= 0 days, got {args.days_since_change}")
        out["days_since_change"] = args.days_since_change
    return out


def read_key(args: argparse.Namespace, prog: str):
    """(key or None, exit code or None) from ``--key-env`` / DMCA_TELEMETRY_KEY."""
    from dmca_hpc.monitoring.telemetry import KEY_ENV, KeyError_, load_key
    env = args.key_env or KEY_ENV
    if not os.environ.get(env):
        return None, None
    try:
        return load_key(env), None
    except KeyError_ as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dmca-hpc collect``."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="telemetry JSONL files (or run telemetry directories)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    parser.add_argument("--output", "-o", metavar="PATH", help="write the output to PATH instead of stdout")
    parser.add_argument("--gate", action="store_true",
                        help="exit 1 when fti_avg or a stage FTI > --fti-max, failures > --max-failures, "
                             "invalid lines > --max-invalid, or a stream has a gap, reorder, duplicate "
                             "or foreign line")
    add_report_arguments(parser)
    add_key_argument(parser)
    add_plaintext_arguments(parser)
    parser.add_argument("--max-list", type=int, default=1000,
                        help="keep at most this many failed units / invalid lines / integrity issues / DMCA rows "
                             "in the lists (default 1000)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``dmca-hpc collect``; returns the exit code (0, 1 gate breached, 2 bad input)."""
    from dmca_hpc.monitoring.collector import collect, load_baseline, render_markdown, render_text
    prog = "dmca-hpc collect"
    key, code = read_key(args, prog)
    if code is not None:
        return code
    try:
        lam = lambda_params(args)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    baseline = None
    if args.baseline:
        try:
            baseline = load_baseline(args.baseline)
        except (OSError, ValueError) as exc:
            print(f"{prog}: cannot use --baseline {args.baseline}: {exc}", file=sys.stderr)
            return 2
    rep = collect(args.files, key=key, baseline=baseline, fti_max=args.fti_max,
                  max_failures=args.max_failures, max_invalid=args.max_invalid, max_list=args.max_list,
                  lambda_params=lam, require_encrypted=args.require_encrypted)
    parts = []
    if args.json:
        parts.append(json.dumps(rep, indent=1, allow_nan=False, default=str) + "\n")
    if args.markdown:
        parts.append(render_markdown(rep))
    if not parts:
        parts.append(render_text(rep))
    text = "".join(parts)
    if args.output:
        from dmca_hpc.hpc.checkpoint import atomic_path
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    for u in rep["unreadable_files"]:
        print(f"{prog}: cannot read {u['file']}: {u['reason']}", file=sys.stderr)
    if rep["unreadable_files"]:
        return 2
    if args.gate and rep["gate"]["breached"]:
        print(f"{prog}: gate breached: " + "; ".join(rep["gate"]["reasons"]), file=sys.stderr)
        return 1
    return 0
