"""``dmca-hpc plan TELEMETRY... [--max-ranks 1024] [--efficiency-min 0.8]``: project
makespan, efficiency and cost at N ranks from a run's measured unit costs
(:mod:`dmca_hpc.monitoring.planning`) and name the largest N that keeps the
efficiency bound.  Exit codes: 0 ok, 2 bad input.

Records are those ``dmca-hpc collect`` counts: plaintext lines refused in a
file that holds an encrypted line, and in every file when a key is given or
with ``--require-encrypted`` (``--allow-plaintext`` reads plaintext files
beside a key); a replayed line is used once.  When lines were refused (or a
stream has a gap, reorder or foreign line) one line on stderr says how many
and why (on exit 2 it is part of the error line); the JSON plan carries the
counts (``telemetry_input``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmca_hpc.cli.collect import add_plaintext_arguments

PROG = "dmca-hpc plan"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dmca-hpc plan``."""
    parser.add_argument("files", nargs="+", metavar="TELEMETRY",
                        help="telemetry JSONL files or run telemetry directories of one run")
    parser.add_argument("--max-ranks", type=int, default=1024, metavar="N",
                        help="project N = 1 .. this many ranks (default 1024)")
    parser.add_argument("--ranks", type=int, nargs="+", default=None, metavar="N",
                        help="report exactly these rank counts instead of the grid")
    parser.add_argument("--efficiency-min", type=float, default=0.8, metavar="E",
                        help="parallel efficiency bound of the recommendation (default 0.8)")
    parser.add_argument("--dispatch-ms", type=float, default=None, metavar="MS",
                        help="dispatch round trip of a non-root rank [ms] (default: half the dispatcher's "
                             "2 ms polling period + 0.1 ms)")
    parser.add_argument("--json", metavar="PATH", help="write the plan as JSON to PATH ('-' = stdout)")
    parser.add_argument("--plot", metavar="PNG", help="plot efficiency and makespan versus N to PNG")
    parser.add_argument("--key-env", default=None, metavar="VAR",
                        help="environment variable with the AES key (default DMCA_TELEMETRY_KEY)")
    add_plaintext_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``dmca-hpc plan``; exit code 0, or 2 on bad input."""
    from dmca_hpc.cli.collect import read_key
    from dmca_hpc.monitoring import planning
    key, code = read_key(args, PROG)
    if code is not None:
        return code
    if args.ranks and min(args.ranks) < 1:
        print(f"{PROG}: --ranks must be >= 1, got {min(args.ranks)}", file=sys.stderr)
        return 2
    try:
        m = planning.measure(args.files, key=key, require_encrypted=args.require_encrypted)
    except (planning.PlanInputError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    refused = m["telemetry_input"]["refused"]
    try:
        plan = planning.project(m, n_max=max([args.max_ranks] + list(args.ranks or [])),
                                efficiency_min=args.efficiency_min,
                                dispatch_s=None if args.dispatch_ms is None else args.dispatch_ms / 1e3,
                                ranks=args.ranks)
    except ValueError as exc:  # one line: the error, then what was refused
        print(f"{PROG}: {exc}" + (f"; {refused}" if refused else ""), file=sys.stderr)
        return 2
    if refused:
        print(f"{PROG}: {refused}", file=sys.stderr, flush=True)
    if args.json:
        text = json.dumps(plan, indent=1, allow_nan=False) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            from dmca_hpc.hpc.checkpoint import atomic_path
            with atomic_path(args.json) as tmp:
                Path(tmp).write_text(text, encoding="utf-8")
    if args.json != "-":
        sys.stdout.write(planning.render_markdown(plan))
    if args.plot:
        from dmca_hpc.plots.monitoring import plot_plan
        plot_plan(plan, args.plot)
    return 0
