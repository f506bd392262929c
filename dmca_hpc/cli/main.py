"""``dmca-hpc``: the command line.

Each command lives in its own module of this package (``dmca_hpc/cli/<command>.py``)
and exposes ``add_arguments(parser)`` and ``run_cli(args) -> int``; the physics
packages below know nothing of argparse.  Only the
module of the command being run is imported, so ``dmca-hpc --help`` and
``dmca-hpc <command> --help`` never import pyscf, numba or mpi4py.

Exit codes: 0 success; 1 a stage or unit failed (finished work is kept);
2 bad input (job file, arguments, tables); 99 preempted by a signal after
checkpointing (run the same command again to resume).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

#: name -> (module, one-line help); commands of the same module share it
COMMANDS = {
    "validate": ("dmca_hpc.cli.main", "check job files against the schema; one line per problem"),
    "run": ("dmca_hpc.cli.main", "run a job file's stages (validates first; resumes from checkpoints)"),
    "materials": ("dmca_hpc.cli.main", "list the built-in detector targets and their properties"),
    "select": ("dmca_hpc.cli.select", "rank the targets for a DM mass by rate and reach (shipped tables) and kinematic threshold"),
    "dft": ("dmca_hpc.cli.dft", "PySCF SCF of a material (and dense-mesh bands with --dense-kmesh)"),
    "formfactor": ("dmca_hpc.cli.formfactor", "crystal form factor |f(q, E)|^2 table from a bands.h5 file"),
    "rates": ("dmca_hpc.cli.rates", "DM-electron event rates and charge (Q) spectra from a form-factor table"),
    "reach": ("dmca_hpc.cli.reach", "cross-section reach / limits versus DM mass, with uncertainty bands"),
    "table": ("dmca_hpc.cli.table", "form-factor table info (shape, ranges, completeness), export for peers (QEdark text for obscura), and a DFT systematic from variant tables (f2_sigma)"),
    "nuclear": ("dmca_hpc.cli.nuclear", "WIMP spin-independent nuclear recoil and sterile-neutrino coherent rates"),
    "absorption": ("dmca_hpc.cli.absorption", "dark-photon and ALP absorption rates and reach"),
    "oracle": ("dmca_hpc.cli.oracle", "label structures with self-correcting Quantum ESPRESSO runs"),
    "collect": ("dmca_hpc.cli.collect", "summarize telemetry files: cost, throughput, p95, FTI, failures"),
    "export": ("dmca_hpc.cli.export", "serve telemetry metrics and the report to Prometheus (or write a textfile)"),
    "causal": ("dmca_hpc.cli.causal", "causal effect of an intervention on cost, latency, throughput or a physics figure (backdoor adjustment, refutations)"),
    "plan": ("dmca_hpc.cli.plan", "project makespan, efficiency and cost at 1..1024 ranks from a run's telemetry"),
    "submit": ("dmca_hpc.cli.submit", "render and submit a job file as a SLURM batch job"),
    "slurm-selftest": ("dmca_hpc.cli.submit", "small requeue-safe MPI workload to check a cluster's signal/requeue path"),
    "warmup": ("dmca_hpc.cli.main", "compile the Numba kernels into the on-disk cache once (before ranks start)"),
}

#: commands whose functions are not the module's add_arguments / run_cli
_HOOKS = {"slurm-selftest": ("add_selftest_arguments", "run_selftest_cli")}

EXIT_BAD_INPUT = 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and states every option's default
    (``(default: X)``) unless its help already says it or it has none."""

    def _get_help_string(self, action):
        h = action.help or ""
        if ("default" in h.lower() or action.default in (None, False, argparse.SUPPRESS)
                or action.option_strings == [] or isinstance(action.default, list) and not action.default):
            return h
        return h + " (default: %(default)s)"


def available_commands() -> dict:
    """Commands whose module is installed (checked without importing it)."""
    return {k: v for k, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def _top_parser(cmds) -> argparse.ArgumentParser:
    from dmca_hpc import __version__
    p = argparse.ArgumentParser(
        prog="dmca-hpc",
        description="First-principles dark-matter detector predictions (crystal form factors, "
                    "DM-electron rates, dielectric response and absorption, nuclear recoil, "
                    "Quantum ESPRESSO oracle) from a laptop to a SLURM cluster. "
                    "Run under 'mpiexec -n N dmca-hpc ...' to spread work over N ranks.",
        epilog="Commands:\n" + "\n".join(f"  {k:<11} {v[1]}" for k, v in cmds.items())
               + "\n\n'dmca-hpc COMMAND --help' explains a command. Exit codes: 0 ok, 1 a stage "
                 "or unit failed (finished work kept), 2 bad input, 99 preempted (rerun to resume).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"dmca_hpc {__version__}")
    p.add_argument("command", nargs="?", choices=list(cmds), metavar="COMMAND",
                   help="one of: " + ", ".join(cmds))
    return p


def _one_thread_per_rank():
    """Under an MPI launcher, default OpenMP/BLAS threads to 1 per rank (set
    before numpy loads BLAS): ranks already fill the cores, and oversubscribed
    OpenBLAS threads made small eigensolves ~100x slower on a busy node.  An
    explicit setting (e.g. SLURM's cpus_per_task in slurm/common.sh) wins."""
    from dmca_hpc.hpc.parallel import launched_by_mpi
    if launched_by_mpi():
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def _one_line_warnings():
    """Warnings as one line, ``dmca-hpc: warning: ...`` (not Python's two-line
    file:line form with the source line), each said once per process."""
    import warnings

    def fmt(message, category, filename, lineno, line=None):
        return f"dmca-hpc: warning: {message}\n"

    warnings.formatwarning = fmt
    warnings.simplefilter("default")
    # "default" shows ResourceWarnings, which Python hides unless asked: PySCF's GDF
    # leaves a temporary HDF5 file to the garbage collector ("unclosed file
    # <_io.BufferedRandom name='/tmp/tmp...'>"), nothing a user can act on
    warnings.filterwarnings("ignore", category=ResourceWarning)


def main(argv=None) -> int:
    _one_thread_per_rank()
    _one_line_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = available_commands()
    if not argv or argv[0] not in cmds:
        p = _top_parser(cmds)
        if not argv:
            p.print_help()
            return EXIT_BAD_INPUT
        p.parse_args(argv[:1])  # prints help/version, or an error naming the choices
        return EXIT_BAD_INPUT
    name, rest = argv[0], argv[1:]
    modname, helptext = cmds[name]
    parser = argparse.ArgumentParser(prog=f"dmca-hpc {name}", description=helptext,
                                     formatter_class=_HelpFormatter)
    if modname == "dmca_hpc.cli.main":
        adder, runner = _LOCAL[name]
    else:
        mod = importlib.import_module(modname)
        add_name, run_name = _HOOKS.get(name, ("add_arguments", "run_cli"))
        adder, runner = getattr(mod, add_name), getattr(mod, run_name)
    adder(parser)
    args = parser.parse_args(rest)
    from dmca_hpc.hpc.parallel import abort_on_exception
    try:
        return int(abort_on_exception(runner)(args) or 0)
    except BrokenPipeError:
        # the reader went away (`dmca-hpc rates ... --json | head`): no traceback; stdout
        # to /dev/null so the interpreter's final flush does not raise again; 141 =
        # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


# --- commands implemented here -------------------------------------------------

def _add_validate(p):
    p.add_argument("jobs", nargs="*", metavar="JOB.yaml", help="job files to check")
    p.add_argument("--keys", nargs="?", const="all", metavar="SECTION",
                   help="print every job key of SECTION (or of all sections) with its default, "
                        "unit and meaning, from the settings model, and exit")
    p.add_argument("--ranks", type=int, default=1, metavar="N",
                   help="MPI ranks the job would run on (all on this node), for the estimate of "
                        "memory per node and time")
    _add_set(p)
    _add_max_hours(p)
    p.add_argument("--out", metavar="DIR",
                   help="output directory the job would write (default runs/<job name>): its free "
                        "disk is the limit, its telemetry of an earlier run calibrates the times, "
                        "its current stages cost nothing")


def _add_set(p):
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job key before validation, e.g. --set dft.kmesh=[3,3,3] "
                        "(VALUE is YAML; repeatable)")


def _add_max_hours(p):
    p.add_argument("--max-hours", type=float, metavar="H",
                   help="refuse the job when its estimated wall-clock time on its ranks exceeds "
                        "H hours (and a stage that would end after H hours of the run)")


def _limit_problem(args, cmd: str) -> str | None:
    """One line for a --ranks / --max-hours outside its range, else None."""
    import math
    if getattr(args, "ranks", 1) < 1:
        return f"dmca-hpc {cmd}: --ranks {args.ranks}: expected a number of ranks >= 1"
    h = args.max_hours
    if h is not None and not (h > 0 and math.isfinite(h)):
        return f"dmca-hpc {cmd}: --max-hours {h:g}: expected a number of hours > 0"
    return None


def _print_estimate(path, job, args) -> bool:
    """Print the per-stage estimate of a valid job and its refusal lines; True if
    some stage cannot finish (an estimate that fails is a warning)."""
    from pathlib import Path
    try:
        from dmca_hpc.pipeline import current_stages
        from dmca_hpc.stages import preflight as pf
        run_dir = Path(args.out or Path("runs") / job["name"]).resolve()
        est, limits, lines = pf.preflight_job(job, run_dir, args.ranks, args.ranks, args.max_hours,
                                              current_stages(job, run_dir))
    except Exception as exc:  # the job is valid; only its estimate is missing
        print(f"{path}: valid (dmca-hpc: warning: no resource estimate: {type(exc).__name__}: {exc})")
        return False
    print(f"{path}: {'valid' if not lines else 'valid, but it cannot finish here'}; estimate on "
          f"{args.ranks} rank(s) for {run_dir}:")
    print(pf.render_table(est, limits))
    for line in lines:
        print(line)
    return bool(lines)


def _run_validate(args) -> int:
    from dmca_hpc.config import JobError, load_job
    if args.keys:
        from dmca_hpc import settings
        if args.keys != "all" and args.keys not in settings.SECTIONS:
            print(f"dmca-hpc validate: --keys {args.keys!r}: unknown section; expected one of "
                  f"{', '.join(settings.SECTIONS)}")
            return EXIT_BAD_INPUT
        print(settings.reference_markdown(None if args.keys == "all" else [args.keys]))
        return 0
    if not args.jobs:
        print("dmca-hpc validate: give one or more job files (or --keys)")
        return EXIT_BAD_INPUT
    problem = _limit_problem(args, "validate")
    if problem:
        print(problem)
        return EXIT_BAD_INPUT
    bad = 0
    for path in args.jobs:
        try:
            job = load_job(path, overrides=_overrides(args))
        except JobError as exc:
            bad += 1
            for line in exc.problems:
                print(line)
        except ValueError as exc:  # a --set that names no key or whose value does not parse
            print(f"dmca-hpc validate: {exc}")
            return EXIT_BAD_INPUT
        else:
            bad += _print_estimate(path, job, args)
    return EXIT_BAD_INPUT if bad else 0


def _add_run(p):
    p.description += (". Stages run in the order materials, dft, bands, formfactor, dielectric, "
                      "rates, nuclear, oracle (those the job lists); a stage whose outputs are "
                      "current for its inputs is skipped; an interrupted run resumes from its "
                      "checkpoints when run again.")
    p.add_argument("job", metavar="JOB.yaml", nargs="?",
                   help="job file (default: the embedded quickstart job, jobs/quickstart.yaml)")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/<job name>)")
    _add_set(p)
    p.add_argument("--material", action="append", metavar="NAME",
                   help="run only this material of the job (a library name also adds it); "
                        "repeatable; used by SLURM array jobs")
    p.add_argument("--mass-mev", action="append", type=float, metavar="M",
                   help="DM mass(es) of the rates stage [MeV] (replaces rates.masses_mev); repeatable")
    _add_max_hours(p)


def _overrides(args) -> dict:
    from dmca_hpc.config import parse_set
    out = dict(parse_set(item) for item in args.set)
    if getattr(args, "material", None):
        out["materials"] = list(args.material)
    if getattr(args, "mass_mev", None):
        out["rates.masses_mev"] = list(args.mass_mev)
    return out


def _run_run(args) -> int:
    from dmca_hpc.config import JobError, load_job
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.pipeline import ResourcesRefused, RunRefused, install_preemption_handler, run_job
    path = args.job or _quickstart_path()
    problem = _limit_problem(args, "run")
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        job = load_job(path, overrides=_overrides(args))
    except JobError as exc:
        for line in exc.problems:
            print(line)
        return EXIT_BAD_INPUT
    except ValueError as exc:
        print(f"dmca-hpc run: {exc}")
        return EXIT_BAD_INPUT
    install_preemption_handler()
    comm = get_comm()
    try:
        summary = run_job(job, args.out, max_hours=args.max_hours)
    except ResourcesRefused as exc:  # a stage cannot finish here: nothing written
        if comm.Get_rank() == 0:
            for line in exc.problems:
                print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunRefused as exc:  # locked output directory, missing telemetry key: nothing written
        if comm.Get_rank() == 0:
            print(f"dmca-hpc run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if comm.Get_rank() == 0:
        rd = summary["run_dir"]
        print(f"\nresults:   {rd}/<material>/<stage>/ (HDF5, units on every dataset)")
        plots = [p for r in summary["stages"].values() for k, p in (r.get("outputs") or {}).items()
                 if str(p).endswith((".png", ".pdf"))]
        print(f"plots:     {len(plots)} file(s)" + "".join(f"\n           {p}" for p in plots))
        print(f"telemetry: {summary.get('telemetry')}")
        if summary.get("telemetry_summary"):
            print(f"summary:   {summary['telemetry_summary']}  {summary.get('telemetry_summary_md', '')}"
                  f"\n           cost {summary['cost_usd']:.4g} USD, p95 latency "
                  f"{summary['latency_p95_ms']:.4g} ms, failed units {summary['failed_units']}, "
                  + (f"FTI {summary['fti_avg']:.3g} ({summary['fti_grade_worst']}) against "
                     f"{summary['fti_baseline'] if isinstance(summary['fti_baseline'], str) else 'the given baseline'}"
                     if summary.get("fti_baseline") else
                     "FTI: no baseline (a run is not graded against itself; set "
                     "telemetry.fti_baseline to an earlier run's telemetry_summary.json)"))
        print(f"run:       {rd}/run.json")
        if summary["failed"]:
            print(f"{summary['failed']} stage(s) failed or were skipped; see run.json and "
                  f"<stage>/error.txt")
    failed = comm.bcast(summary.get("failed", 0) if comm.Get_rank() == 0 else None, root=0)
    return 1 if failed else 0


def _quickstart_path() -> str:
    from dmca_hpc import resources
    return str(resources.job_file("quickstart.yaml"))


def _add_materials(p):
    p.add_argument("--json", action="store_true", help="print a JSON array")


def _material_aliases() -> dict:
    """{library name: [other names users type]} (C: [diamond]); the library
    key stays the short name; case variants (gaas) are not listed."""
    from dmca_hpc import materials
    aliases: dict = {}
    for alias, key in getattr(materials, "_ALIASES", {}).items():
        if alias.lower() != key.lower():
            aliases.setdefault(key, []).append(alias)
    return aliases


def _material_label(name: str, aliases: dict) -> str:
    """``C (diamond)``: the library name with its aliases, as materials and select print it."""
    return name + (f" ({', '.join(aliases[name])})" if aliases.get(name) else "")


def _run_materials(args) -> int:
    import json
    from dmca_hpc import materials
    aliases = _material_aliases()
    rows = [dict(m.to_dict(), aliases=aliases.get(m.name, [])) for m in materials.LIBRARY.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    names = {r["name"]: _material_label(r["name"], aliases) for r in rows}
    w = max(len(n) for n in names.values())
    print(f"{'name':<{w}} {'structure':<15} {'a [A]':>7} {'exp. gap [eV]':>13} "
          f"{'scissor gap [eV]':>16} {'pair [eV]':>9} {'rho [g/cm3]':>11} {'M_cell [GeV]':>12} "
          f"{'V_cell [A^3]':>12}")
    for r in rows:
        pe = f"{r['pair_energy_ev']:.2f}" if r["pair_energy_ev"] else "-"
        print(f"{names[r['name']]:<{w}} {r['structure']:<15} {r['a_angstrom']:7.3f} "
              f"{r['gap_ev']:13.2f} {r['scissor_gap_ev']:16.2f} {pe:>9} {r['density_g_cm3']:11.3f} "
              f"{r['cell_mass_ev'] / 1e9:12.3f} {r['cell_volume_angstrom3']:12.3f}")
    print("exp. gap: low-temperature experimental band gap; scissor gap: the gap the form-factor "
          "tables are shifted to, used by rates and select")
    return 0


def _add_warmup(p):
    p.description += (". Run once on the batch host before the ranks start: parallel first "
                      "compilations into one cache directory can crash (NUMBA_CACHE_DIR sets it).")


def _run_warmup(args) -> int:
    import time
    import numpy as np
    t0 = time.perf_counter()
    done = []
    from dmca_hpc.detection.rates import electron_rates
    from dmca_hpc.tables import FormFactorTable
    from dmca_hpc import units
    # a 20 x 10 table of a Si-like cell (40 angstrom^3, 52 GeV): only the types matter
    tiny = FormFactorTable(f2=np.ones((20, 10)), dq_ame=0.02, de_ev=0.1,
                           vcell_ev3=40.0 * units.ANGSTROM_CM**3 / units.HBARC_EV_CM**3,
                           cell_mass_ev=52e9, gap_ev=0.1, material="warmup")
    electron_rates(tiny, [1e7], fdm="heavy", pair_energy_ev=3.6)
    done.append("rates")
    from dmca_hpc.electronic import kernels
    if hasattr(kernels, "warmup"):
        kernels.warmup()
        done.append("kernels (" + kernels.backend() + ")")
    print(f"warmup: compiled {', '.join(done)} in {time.perf_counter() - t0:.1f} s")
    return 0


_LOCAL = {
    "warmup": (_add_warmup, _run_warmup),
    "validate": (_add_validate, _run_validate),
    "run": (_add_run, _run_run),
    "materials": (_add_materials, _run_materials),
}

if __name__ == "__main__":
    sys.exit(main())
