"""``dmca-hpc causal TELEMETRY... --treatment KEY --outcome KEY [--adjust KEY...]``:
the effect of an intervention on a telemetry figure (backdoor adjustment,
refutations; :mod:`dmca_hpc.monitoring.causal`).

Exit codes: 0 an estimate was made; 1 the effect is not identifiable from
these records (treatment collinear with an adjustment variable; the report
says which); 2 bad input (unknown key, single-valued treatment, too few
records, unreadable file, causal-learn missing for ``--discover``).

Records are those ``dmca-hpc collect`` counts: plaintext lines refused in a
file that holds an encrypted line, and in every file when a key is given or
with ``--require-encrypted`` (``--allow-plaintext`` reads plaintext files
beside a key); a replayed line is used once.  When lines were refused (or a
stream has a gap, reorder or foreign line) one line on stderr says how many
and why, before the not-identifiable reason (which stays the last line); on
exit 2 it is appended to the error line.  The JSON report carries the counts
(``invalid_lines``, ``telemetry_input``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmca_hpc.cli.collect import add_plaintext_arguments

PROG = "dmca-hpc causal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dmca-hpc causal``."""
    parser.add_argument("files", nargs="+", metavar="TELEMETRY",
                        help="telemetry JSONL files or run telemetry directories")
    parser.add_argument("--treatment", required=True, metavar="KEY",
                        help="what was changed: intervention, a 'k=v' part of it (basis, kmesh, ranks, ...), "
                             "ranks, physics.kpts, hpc.cores, x_<field> ...")
    parser.add_argument("--outcome", required=True, metavar="KEY",
                        help="what it changed: cost [USD], latency [ms], throughput [1/s], hpc.wall_seconds, "
                             "physics.band_gap_ev, ...")
    parser.add_argument("--adjust", nargs="*", default=[], metavar="KEY",
                        help="common causes of treatment and outcome to adjust for (backdoor set), "
                             "e.g. hpc.stage physics.material")
    parser.add_argument("--categorical", action="store_true",
                        help="treat a numeric treatment as levels (one effect per level, not a slope)")
    parser.add_argument("--reference", default=None, metavar="LEVEL",
                        help="reference level of a categorical treatment (default '-'/'baseline' when "
                             "present, else the most frequent)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and refutations (default 0)")
    parser.add_argument("--bootstrap", type=int, default=500, metavar="N", help="bootstrap resamples (default 500)")
    parser.add_argument("--refutations", type=int, default=50, metavar="N",
                        help="simulations per refutation (default 50)")
    parser.add_argument("--discover", nargs="*", default=None, metavar="KEY",
                        help="also run the PC algorithm (causal-learn, extra [causal]) over these numeric keys "
                             "(default: treatment, outcome and numeric adjustment keys)")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH ('-' = stdout)")
    parser.add_argument("--markdown", metavar="PATH", help="write the report as Markdown to PATH (default: stdout)")
    parser.add_argument("--plot", metavar="PNG", help="plot the effects with their intervals to PNG")
    parser.add_argument("--key-env", default=None, metavar="VAR",
                        help="environment variable with the AES key (default DMCA_TELEMETRY_KEY)")
    add_plaintext_arguments(parser)


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    from dmca_hpc.hpc.checkpoint import atomic_path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``dmca-hpc causal``; exit code 0, 1 (not identifiable) or 2 (bad input)."""
    from dmca_hpc.cli.collect import read_key
    from dmca_hpc.monitoring import causal
    key, code = read_key(args, PROG)
    if code is not None:
        return code
    if args.bootstrap < 0 or args.refutations < 0:
        print(f"{PROG}: --bootstrap and --refutations must be >= 0", file=sys.stderr)
        return 2
    rows, info = causal.read_records(args.files, key=key, require_encrypted=args.require_encrypted)
    refused = f"; {info['refused']}" if info["refused"] else ""
    if info["unreadable"]:
        print(f"{PROG}: cannot read {info['unreadable'][0]}", file=sys.stderr)
        return 2
    try:
        rep = causal.estimate(rows, args.treatment, args.outcome, args.adjust, seed=args.seed,
                              n_boot=args.bootstrap, n_refute=args.refutations, categorical=args.categorical,
                              reference=args.reference)
        if args.discover is not None:
            keys = args.discover or [k for k in (rep["treatment"], rep["outcome"], *rep["adjust"])]
            rep["discovery"] = causal.discover(rows, keys)
    except (causal.CausalInputError, ImportError) as exc:
        print(f"{PROG}: {exc}{refused}", file=sys.stderr)  # one line: the error, then what was refused
        return 2
    if info["refused"]:
        print(f"{PROG}: {info['refused']}", file=sys.stderr, flush=True)
    rep["invalid_lines"] = info["invalid"]
    rep["telemetry_input"] = info["input"]
    if args.json:
        _write(args.json, json.dumps(rep, indent=1, allow_nan=False, default=str) + "\n")
    md = causal.render_markdown(rep)
    if args.markdown:
        _write(args.markdown, md)
    elif args.json != "-":
        sys.stdout.write(md)
    if args.plot:
        from dmca_hpc.plots.monitoring import plot_effects
        plot_effects(rep, args.plot)
    if not rep["identifiable"]:
        print(f"{PROG}: {rep['reason']}", file=sys.stderr)
        return 1
    return 0
