"""``dmca-hpc submit`` (render and submit a job file as a SLURM batch job) and
``dmca-hpc slurm-selftest`` (a small requeue-safe MPI workload); the machinery
is :mod:`dmca_hpc.slurm`."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def add_arguments(p) -> None:
    """Arguments of ``dmca-hpc submit``."""
    p.add_argument("job", help="job file (YAML); its slurm: section gives the defaults")
    from dmca_hpc.slurm import TEMPLATES
    p.add_argument("--template", choices=TEMPLATES, default="run_stages",
                   help="batch script: one MPI job over the stages (run_stages), a job array "
                        "over materials or masses (array), the QE oracle batch (oracle)")
    p.add_argument("--out", help="output directory of the run (default: runs/<job file stem>)")
    p.add_argument("--partition"); p.add_argument("--account"); p.add_argument("--qos")
    p.add_argument("--nodes", type=int); p.add_argument("--ntasks", type=int, help="MPI ranks")
    p.add_argument("--cpus-per-task", type=int, help="cores (threads) per rank")
    p.add_argument("--time", help="wall-time limit [D-]HH:MM:SS")
    p.add_argument("--signal-before", type=int, dest="signal_before_s",
                   help="seconds before the limit at which the run checkpoints [s]")
    p.add_argument("--array", help="job-array spec for --template array (default: one task per item)")
    p.add_argument("--launcher", choices=("mpiexec", "srun", "none"))
    p.add_argument("--container", help="Apptainer image to run dmca-hpc in")
    p.add_argument("--no-requeue", dest="requeue", action="store_false", default=None,
                   help="on a checkpointed exit (99) stop instead of requeueing")
    p.add_argument("--entry", help="command that starts dmca-hpc on the nodes (default: this install's dmca-hpc)")
    p.add_argument("--dry-run", action="store_true", help="print the rendered script, submit nothing")
    p.add_argument("--wait", action="store_true", help="return when the job has finished (sbatch --wait)")
    p.add_argument("--command", dest="cmd",
                   help="dmca-hpc arguments to run instead of 'run JOB --out OUT' (one quoted string; "
                        "in the array template {item} and {out} are the task's item and directory)")


def run_cli(args) -> int:
    """``dmca-hpc submit``: render the template and submit it (or print it)."""
    from dmca_hpc.slurm import (SlurmConfigError, apply_overrides, array_items, load_job,
                                render, submit, validate_settings, write_script)
    try:
        job = load_job(args.job)
        src = str(args.job)
        settings = validate_settings(job.get("slurm"), source=src)
        settings = apply_overrides(
            settings, source="command line", partition=args.partition, account=args.account,
            qos=args.qos, nodes=args.nodes, ntasks=args.ntasks, cpus_per_task=args.cpus_per_task,
            time=args.time, signal_before_s=args.signal_before_s, array=args.array,
            launcher=args.launcher, container=args.container, requeue=args.requeue)
        out = Path(args.out or Path("runs") / Path(args.job).stem).resolve()
        items = array_items(job, settings, src) if args.template == "array" else None
        cmd = shlex.split(args.cmd) if args.cmd else None
        text = render(args.template, settings, args.job, out, args=cmd,
                      entry=shlex.split(args.entry) if args.entry else None, items=items)
    except SlurmConfigError as exc:
        print(f"dmca-hpc submit: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    script = write_script(text, out, args.template)
    try:
        jid = submit(script, wait=args.wait)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"dmca-hpc submit: {exc}", file=sys.stderr)
        return 1
    print(jid)
    print(f"dmca-hpc submit: job {jid}, script {script}, logs in {out / 'slurm'}", file=sys.stderr)
    return 0


def add_selftest_arguments(p) -> None:
    """Arguments of ``dmca-hpc slurm-selftest``."""
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--units", type=int, default=8, help="number of units [count]")
    p.add_argument("--unit-seconds", type=float, default=0.5, help="minimum wall time per unit [s]")
    p.add_argument("--seed", type=int, default=12345, help="seed of the per-unit random draws")


def run_selftest_cli(args) -> int:
    """``dmca-hpc slurm-selftest``: run :func:`selftest` (under any launcher)."""
    from dmca_hpc.hpc.parallel import abort_on_exception
    from dmca_hpc.slurm import selftest
    return abort_on_exception(selftest)(args.out, args.units, args.unit_seconds, args.seed)
