"""SLURM submission and requeue safety.

* :func:`render` fills one of the sbatch templates in ``slurm/``
  (``run_stages``, ``array``, ``oracle``) from the job file's ``slurm:``
  section (schema ``config/schema/slurm.schema.json``) and command-line
  overrides; :func:`submit` hands the rendered script to ``sbatch``.  No one
  edits a batch script by hand.
* The requeue contract shared by the batch scripts and every long-running
  command: SIGUSR1 or SIGTERM (or the file named by ``$DMCA_STOP_FILE``
  appearing) means "finish the current unit, checkpoint, exit with
  :data:`EXIT_CHECKPOINTED` (99)".  :class:`StopRequest` is the Python side of
  that contract; the batch script requeues the job on exit code 99 and the
  next run resumes from the checkpoints.
* :func:`selftest` is a small real MPI workload that follows the contract
  (units of fixed cost, :class:`~dmca_hpc.hpc.checkpoint.UnitStore` checkpoints,
  telemetry), used to prove a cluster's signal/requeue path before a long run.

Command lines (wired into ``dmca-hpc`` by the lead; also ``python -m dmca_hpc.slurm``)::

    dmca-hpc submit JOB.yaml [--template run_stages|array|oracle] [--out DIR]
        [--partition P --account A --nodes N --ntasks N --time HH:MM:SS --array SPEC]
        [--dry-run] [--wait] [--command "dmca-hpc ARGS to run instead of run JOB --out OUT"]
    dmca-hpc slurm-selftest --out DIR [--units N --unit-seconds S --seed K]

Only the standard library is imported at module import time.
"""
from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from dmca_hpc import resources

#: exit code of a run that checkpointed on request and wants to be resubmitted
EXIT_CHECKPOINTED = 99

#: templates shipped in slurm/ (file <name>.sbatch)
TEMPLATES = ("run_stages", "array", "oracle")

_PLACEHOLDERS = ("@SBATCH@", "@SETTINGS@", "@SETUP@", "@COMMON@")


class SlurmConfigError(ValueError):
    """A bad ``slurm:`` section or submit option (message names file and key)."""


# --------------------------------------------------------------------------- files

def template_dir() -> Path:
    """Folder of the sbatch templates (see :mod:`dmca_hpc.resources`)."""
    try:
        return resources.slurm_dir()
    except FileNotFoundError as exc:
        raise SlurmConfigError(str(exc)) from None


def schema_path() -> Path:
    return resources.config_dir() / "schema" / "slurm.schema.json"


def load_schema() -> dict:
    p = schema_path()
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise SlurmConfigError(f"schema {p} not found; set DMCA_HPC_HOME to the dmca_hpc source tree") from None


# --------------------------------------------------------------------------- settings

def defaults() -> dict:
    """The ``slurm:`` section with every field at its default (:mod:`dmca_hpc.settings`)."""
    from dmca_hpc import settings
    return settings.defaults("slurm")


def validate_settings(section: Mapping[str, Any] | None, source: str = "job file") -> dict:
    """Validate a ``slurm:`` section against the schema and fill defaults.

    Raises :class:`SlurmConfigError` naming ``source``, the key, the bad value
    and what was expected.
    """
    import jsonschema

    schema = load_schema()
    section = dict(section or {})
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(section), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = "slurm." + ".".join(str(p) for p in e.absolute_path) if e.absolute_path else "slurm"
        expected = ""
        prop = schema["properties"].get(str(e.absolute_path[0])) if e.absolute_path else None
        if prop is not None:
            expected = f"; expected: {prop['description']}"
        raise SlurmConfigError(f"{source}: {key}: {e.message}{expected}")
    out = defaults()
    out.update(copy.deepcopy(section))
    return out


def apply_overrides(settings: Mapping[str, Any], source: str = "command line", **overrides) -> dict:
    """Return ``settings`` with the non-None ``overrides`` applied (and revalidated)."""
    merged = dict(settings)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return validate_settings(merged, source=source)


def load_job(path: str | os.PathLike) -> dict:
    """Read a job file (YAML) as a dict; a clear error when it is not one."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SlurmConfigError(f"job file {p} not found") from None
    except yaml.YAMLError as exc:
        raise SlurmConfigError(f"job file {p}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SlurmConfigError(f"job file {p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def time_to_seconds(spec: str) -> int:
    """``[D-]HH:MM:SS`` -> seconds."""
    days = 0
    if "-" in spec:
        d, spec = spec.split("-", 1)
        days = int(d)
    h, m, s = (int(x) for x in spec.split(":"))
    return ((days * 24 + h) * 60 + m) * 60 + s


def array_items(job: Mapping[str, Any], settings: Mapping[str, Any], source: str = "job file") -> list[str]:
    """Items of the array template: ``slurm.array_items`` or the job's materials."""
    items = list(settings.get("array_items") or [])
    if not items:
        for m in job.get("materials") or []:
            if isinstance(m, str):
                items.append(m)
            elif isinstance(m, Mapping) and "name" in m:
                items.append(str(m["name"]))
            else:
                raise SlurmConfigError(f"{source}: materials: entry {m!r} has no name "
                                       "(expected a material name or a mapping with 'name')")
    if not items:
        raise SlurmConfigError(f"{source}: the array template needs items: set slurm.array_items "
                               "or list materials in the job file")
    bad = [it for it in items if not it or "/" in it or it.startswith(".")]
    if bad:
        raise SlurmConfigError(f"{source}: slurm.array_items: {bad!r} cannot name an output "
                               "directory (expected non-empty labels without '/' or a leading '.')")
    return items


# --------------------------------------------------------------------------- rendering

def sbatch_directives(settings: Mapping[str, Any], template: str, out_dir: Path,
                      n_items: int | None = None) -> list[str]:
    """The ``#SBATCH`` lines for ``settings``."""
    s = settings
    log = out_dir / "slurm" / ("%x-%A_%a.out" if template == "array" else "%x-%j.out")
    lines = [f"--job-name={s['job_name']}",
             f"--nodes={s['nodes']}",
             f"--ntasks={s['ntasks']}",
             f"--cpus-per-task={s['cpus_per_task']}",
             f"--time={s['time']}",
             # B: the signal goes to the batch shell, which forwards it to the ranks;
             # without B: only the job steps (srun) would get it, never mpiexec's ranks.
             f"--signal=B:USR1@{s['signal_before_s']}",
             f"--output={log}"]
    for key, opt in (("partition", "partition"), ("account", "account"), ("qos", "qos")):
        if s[key]:
            lines.append(f"--{opt}={s[key]}")
    if s["mem_per_cpu_mb"]:
        lines.append(f"--mem-per-cpu={s['mem_per_cpu_mb']}M")
    if template == "array":
        spec = s["array"] or f"0-{(n_items or 1) - 1}"
        lines.append(f"--array={spec}")
    lines.extend(s["extra_sbatch"])
    return ["#SBATCH " + x for x in lines]


def default_entry(settings: Mapping[str, Any], bind: Iterable[str] = ()) -> list[str]:
    """The command that starts ``dmca-hpc`` on a compute node."""
    if settings["container"]:
        cmd = ["apptainer", "exec"]
        for b in list(bind) + list(settings["container_bind"]):
            cmd += ["--bind", b]
        return cmd + [settings["container"], "dmca-hpc"]
    # the console script of the Python that submits, so the job runs the same install
    here = Path(sys.executable).parent / "dmca-hpc"
    return [str(here)] if here.exists() else ["dmca-hpc"]


def _bash_array(values: Sequence[str]) -> str:
    return "(" + " ".join(shlex.quote(str(v)) for v in values) + ")"


def render(template: str, settings: Mapping[str, Any], job_file: str | os.PathLike,
           out_dir: str | os.PathLike, args: Sequence[str] | None = None,
           entry: Sequence[str] | None = None, items: Sequence[str] | None = None) -> str:
    """Render ``slurm/<template>.sbatch`` into a ready batch script.

    Args:
        template: one of :data:`TEMPLATES`.
        settings: a validated ``slurm:`` section (:func:`validate_settings`).
        job_file: the job file the script runs (made absolute).
        out_dir: the run's output directory (made absolute); logs go to
            ``out_dir/slurm/``.
        args: arguments of the dmca-hpc command; default
            ``run JOB --out OUT`` (array: ``--out {out} <array_option> {item}``
            where ``{item}``/``{out}`` are the task's item and directory).
        entry: the command that starts dmca-hpc (default :func:`default_entry`).
        items: array items (required for the ``array`` template).

    Returns:
        The script text; every ``@...@`` placeholder is filled.
    """
    if template not in TEMPLATES:
        raise SlurmConfigError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")
    tdir = template_dir()
    text = (tdir / f"{template}.sbatch").read_text()
    common = (tdir / "common.sh").read_text()
    job_file = Path(job_file).resolve()
    out_dir = Path(out_dir).resolve()
    s = settings
    if template == "array" and not items:
        raise SlurmConfigError("the array template needs items (slurm.array_items or the job's materials)")
    if time_to_seconds(s["time"]) <= s["signal_before_s"]:
        raise SlurmConfigError(
            f"slurm.time={s['time']} is not longer than slurm.signal_before_s={s['signal_before_s']} s: "
            "the checkpoint signal would come before the job starts working; expected time > signal_before_s")
    if args is None:
        if template == "array":
            args = ["run", str(job_file), "--out", "{out}", s["array_option"], "{item}"]
        else:
            args = ["run", str(job_file), "--out", str(out_dir)]
    if entry is None:
        entry = default_entry(s, bind=[str(out_dir), str(job_file.parent)])
    mpiexec = s["mpiexec"]
    if not mpiexec:
        here = Path(sys.executable).parent / "mpiexec"
        mpiexec = str(here) if (here.exists() and not s["container"]) else "mpiexec"
    settings_lines = [
        f"DMCA_OUT_DIR={shlex.quote(str(out_dir))}",
        f"DMCA_JOB_FILE={shlex.quote(str(job_file))}",
        f"DMCA_LAUNCHER={shlex.quote(s['launcher'])}",
        f"DMCA_SRUN_MPI={shlex.quote(s['srun_mpi'])}",
        f"DMCA_MPIEXEC={shlex.quote(mpiexec)}",
        f"DMCA_CONTAINER={shlex.quote(s['container'])}",
        f"DMCA_REQUEUE={1 if s['requeue'] else 0}",
        f"DMCA_MAX_REQUEUES={int(s['max_requeues'])}",
        f"DMCA_HPC={_bash_array(entry)}",
        f"DMCA_ARGS={_bash_array(args)}",
        f"DMCA_ITEMS={_bash_array(items or [])}",
        "export DMCA_OUT_DIR DMCA_JOB_FILE",
    ]
    n_items = len(items) if items else None
    text = (text.replace("@SBATCH@", "\n".join(sbatch_directives(s, template, out_dir, n_items)))
                .replace("@SETTINGS@", "\n".join(settings_lines))
                .replace("@SETUP@", "\n".join(s["setup"]) if s["setup"] else "# (no slurm.setup lines)")
                .replace("@COMMON@", common.rstrip("\n")))
    left = [p for p in _PLACEHOLDERS if p in text]
    if left:  # a template edited without updating render(): fail before sbatch sees it
        raise SlurmConfigError(f"template {template}.sbatch: placeholders left unfilled: {left}")
    return text


def write_script(text: str, out_dir: str | os.PathLike, template: str) -> Path:
    """Write a rendered script to ``out_dir/slurm/<template>-<UTC time>.sbatch``
    (kept as the record of what was submitted)."""
    d = Path(out_dir).resolve() / "slurm"
    d.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    p = d / f"{template}-{stamp}-{os.getpid()}.sbatch"
    p.write_text(text)
    p.chmod(0o755)
    return p


def submit(script: str | os.PathLike, wait: bool = False, sbatch: str = "sbatch",
           extra: Sequence[str] = ()) -> str:
    """Submit a rendered script with ``sbatch --parsable``; returns the job id.

    With ``wait=True`` this returns only when the job has finished (through any
    requeues; ``sbatch --wait``) and raises if it failed."""
    if shutil.which(sbatch) is None:
        raise FileNotFoundError(f"{sbatch} not found on PATH: is this a SLURM login node?")
    cmd = [sbatch, "--parsable"] + (["--wait"] if wait else []) + list(extra) + [str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    jid = out.stdout.strip().split(";")[0].splitlines()[0] if out.stdout.strip() else ""
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {out.returncode} "
                           f"(job {jid or 'not submitted'}): {out.stderr.strip()}")
    return jid


# --------------------------------------------------------------------------- stop contract

class StopRequest:
    """Has anyone asked this run to checkpoint and stop?

    ``StopRequest.install()`` replaces the handlers of SIGUSR1 and SIGTERM
    (main thread only) with one that just sets a flag, so the current unit
    finishes and is checkpointed; ``requested`` is also true once the file
    ``$DMCA_STOP_FILE`` exists (the batch script creates it too, for ranks a
    launcher did not forward the signal to).  Check it between units; on True,
    write what is done and exit with :data:`EXIT_CHECKPOINTED`.
    """

    def __init__(self, stop_file: str | os.PathLike | None = None):
        self.signum: int | None = None
        sf = stop_file if stop_file is not None else os.environ.get("DMCA_STOP_FILE")
        self.stop_file = Path(sf) if sf else None

    @classmethod
    def install(cls, signals: Sequence[int] = (signal.SIGUSR1, signal.SIGTERM),
                stop_file: str | os.PathLike | None = None) -> "StopRequest":
        self = cls(stop_file)
        for s in signals:
            signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):
        self.signum = signum

    @property
    def requested(self) -> bool:
        if self.signum is not None:
            return True
        return bool(self.stop_file is not None and self.stop_file.exists())


# --------------------------------------------------------------------------- self-test workload

SELFTEST_STAGE = "slurm-selftest"


def _selftest_value(seed: int, index: int):
    """Unit ``index``'s value: sum of squares of 4096 standard normals drawn
    from numpy's PCG64 seeded with (seed, index) -- a chi-square(4096) sample,
    dimensionless, the same on any rank and after any restart."""
    import numpy as np
    x = np.random.default_rng([seed, index]).standard_normal(4096)
    return float(np.dot(x, x))


def selftest(out_dir: str | os.PathLike, n_units: int = 8, unit_seconds: float = 0.5,
             seed: int = 12345, comm=None, stop: StopRequest | None = None) -> int:
    """A small, real, requeue-safe MPI workload (the cluster path's smoke test).

    Each of ``n_units`` units computes :func:`_selftest_value` and takes at
    least ``unit_seconds`` [s] of wall time (a stand-in for real unit cost, so
    a signal reliably lands mid-run), is checkpointed in
    ``out_dir/slurm-selftest/units`` and gets one telemetry record in
    ``out_dir/telemetry``.  When all units are done rank 0 writes
    ``out_dir/slurm-selftest/result.h5`` (dataset ``values``, units "1",
    ordered by unit index) and merges the telemetry.

    Returns the process exit code: 0 done, :data:`EXIT_CHECKPOINTED` when a
    stop was requested before all units were done (rerun to resume), 1 when
    units failed.
    """
    import numpy as np
    from dmca_hpc.hpc.checkpoint import UnitStore, atomic_h5, config_hash, provenance, write_dataset
    from dmca_hpc.hpc.parallel import get_comm, map_units
    from dmca_hpc.monitoring.telemetry import Telemetry, merge_rank_files

    comm = comm or get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    stop = stop or StopRequest.install()
    out = Path(out_dir)
    # unit_seconds only sets the pace, not the values: it stays out of the hash
    inputs = {"stage": SELFTEST_STAGE, "n_units": int(n_units), "seed": int(seed)}
    ih = config_hash(inputs)
    store = UnitStore(out / SELFTEST_STAGE / "units", ih)
    done = comm.bcast(sorted(store.done(n_units)) if rank == 0 else None, root=0)
    tele = Telemetry(out / "telemetry", rank=rank, nranks=size)

    def work(i: int):
        if stop.requested:
            return None  # left for the resumed run
        t_end = time.monotonic() + unit_seconds
        val = _selftest_value(seed, i)
        while time.monotonic() < t_end:
            time.sleep(min(0.05, max(t_end - time.monotonic(), 0.0)))
        store.save(i, {"value": np.array(val)}, {"value": "1"},
                   attrs={"rank": rank, "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
                          "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))})
        return val

    def record(r):
        status = "failed" if not r.ok else ("skipped" if r.value is None else "ok")
        tele.record(SELFTEST_STAGE, f"unit-{r.index}", status, r.wall_s, r.cpu_s, r.peak_mem_mb,
                    error=r.error, domain="infrastructure", hypothesis="none")

    results = map_units(work, list(range(n_units)), comm=comm, schedule="dynamic",
                        on_result=record, skip=done)
    stopped = bool(comm.allreduce(1 if stop.requested else 0))
    code = 0
    if rank == 0:
        failed = [r for r in results if not r.ok]
        missing = sorted(set(range(n_units)) - store.done(n_units))
        if failed:
            for r in failed:
                print(f"{SELFTEST_STAGE}: unit {r.index} failed: {r.error}", file=sys.stderr)
            code = 1
        elif missing:
            print(f"{SELFTEST_STAGE}: stop requested; {n_units - len(missing)}/{n_units} units "
                  f"checkpointed, exit {EXIT_CHECKPOINTED} to be resubmitted", file=sys.stderr)
            code = EXIT_CHECKPOINTED if stopped else 1
        else:
            values = np.array([float(store.load(i)[0]["value"]) for i in range(n_units)])
            prov = provenance(input_hash=ih, nranks=size, seeds={"selftest": int(seed)})
            with atomic_h5(out / SELFTEST_STAGE / "result.h5", ih, SELFTEST_STAGE, prov) as f:
                write_dataset(f, "values", values, "1",
                              "chi-square(4096) samples, one per unit, by unit index")
            print(f"{SELFTEST_STAGE}: {n_units} units done on {size} ranks", file=sys.stderr)
        merge_rank_files(out / "telemetry")
    return int(comm.bcast(code, root=0))


# --------------------------------------------------------------------------- CLI
