"""Run a job's stages in order, skipping stages whose outputs are current.

Each stage is a function ``run_stage(ctx) -> dict`` in its own module (see
:mod:`dmca_hpc.stages.registry`), called on every rank with a :class:`StageContext`.  It
reads earlier stages' files from ``ctx.outputs``, writes its own into
``ctx.stage_dir``, records one telemetry record per unit and returns (on
rank 0) ``{label: path}`` of what it wrote.

A stage is *current* when its manifest ``stage.json`` holds the same input
hash (the stage's job section, the material, the seed and the input hashes
of the stages it reads) and every output it lists still exists; it is then
skipped.  A changed input re-runs only the stages downstream of it.

Output directory (``--out DIR``, default ``runs/<name>``)::

    DIR/job.yaml                 effective job (defaults applied)
    DIR/provenance.json          versions, git SHA, job hash, ranks, seed
    DIR/<Material>/<stage>/      per-material stages (materials ... rates)
    DIR/global/<stage>/          nuclear, oracle
    DIR/<...>/<stage>/stage.json manifest: input hash, outputs, status
    DIR/telemetry/rank-*.jsonl   per-rank telemetry, merged into telemetry.jsonl
    DIR/telemetry_summary.json   collector summary of the run (and .md)
    DIR/.dmca-run.lock           locked (flock) by the run using DIR: its host, pid, start

Preemption: SIGUSR1 or SIGTERM (SLURM's pre-timeout signal) makes every rank
exit at once with code 99.  Nothing is lost beyond the units in flight,
because every finished unit is already in an atomic checkpoint; the same
command run again resumes.

One run per output directory: rank 0 takes an exclusive ``flock`` on
``DIR/.dmca-run.lock`` before it writes anything and holds it to the end; a
second run on the same DIR is refused at once (:class:`RunLocked`, naming the
holder), because two runs would both run every stage, double the telemetry
and restart from each other's half-written checkpoints.  The kernel drops a
flock when its holder dies, so the lock left by a kill -9 never blocks the
resume.  Before that, :func:`preflight` refuses a job that cannot finish
(an encrypted telemetry without its key), so nothing is written for it, and
:func:`resource_preflight` one whose stages would exceed this machine's memory
or disk, or the run's ``max_hours`` (:mod:`dmca_hpc.stages.preflight`: one line
per offending stage, :class:`ResourcesRefused`).  Each stage is checked again
just before it starts, with what the earlier stages wrote and the time already
spent; a stage refused then fails without running (its finished predecessors
are kept).
"""
from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmca_hpc.config import public_job
from dmca_hpc.stages.registry import STAGE_DMCA, STAGE_NEEDS, STAGE_READS, implementation

#: exit code after a preemption signal: "checkpointed, run me again"
EXIT_PREEMPTED = 99

#: the lock file a run holds (flock) in its output directory
LOCK_NAME = ".dmca-run.lock"


class RunRefused(RuntimeError):
    """The run cannot start; the message is one line saying why and what to do
    (the ``run`` command exits 2 with it)."""


class RunLocked(RunRefused):
    """Another live run holds the output directory's lock."""


class ResourcesRefused(RunRefused):
    """Some stage of the job would exceed the machine or the run's time limit;
    ``problems`` holds one line per offending stage (``JOB: key: ...``)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RunLock:
    """Exclusive lock of a run's output directory: ``fcntl.flock`` on
    ``DIR/.dmca-run.lock``, which records the holder's host, pid and start
    time (for the message of the run it refuses; the lock itself is the
    flock, not the file's content).

    A flock belongs to the open file, so the kernel releases it when the
    holder's process ends in any way (kill -9 included): a lock file left
    behind never blocks a resume.  The descriptor is not inherited by
    programs the run starts (pw.x), which therefore cannot keep a dead run's
    lock.  The file is never deleted (deleting it would let two runs lock two
    different files of the same name).  On NFS, Linux maps flock onto NFS
    byte-range locks, which hold across nodes; a file system without locks
    runs unprotected, with a warning.

    Use ``with RunLock(d):`` or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock (creating the directory), or raise :class:`RunLocked`
        naming the holder."""
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunLocked(f"{self.path.parent}: another run is using this output directory "
                            f"({holder}; lock file {self.path}); wait for it to end, or give "
                            "another --out") from None
        except OSError as exc:  # ENOLCK / EOPNOTSUPP: no locks on this file system
            os.close(fd)
            print(f"dmca-hpc: warning: cannot lock {self.path} ({exc.strerror}); nothing stops "
                  "a second run on this output directory", file=sys.stderr)
            return self
        info = {"host": platform.node(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_unix": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """'held by pid P on host H since T' from a lock file's content."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"held by pid {info['pid']} on host {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "held by a run that is just starting (its details are not written yet)"


def preflight(job: dict, comm) -> None:
    """Refuse, before anything is written, a job that cannot finish: raise
    :class:`RunRefused` naming the job key and what is missing.  Today: an
    encrypted telemetry (``telemetry.encrypt: true``) without the key in
    ``$DMCA_TELEMETRY_KEY`` on some rank.  Collective (every rank checks
    its own environment; all raise the same message)."""
    problem = None
    if (job.get("telemetry") or {}).get("encrypt"):
        from dmca_hpc.monitoring.telemetry import KeyError_, load_key
        try:
            load_key()
        except KeyError_ as exc:
            where = f"rank {comm.Get_rank()}: " if comm.Get_size() > 1 else ""
            problem = f"{job.get('_job_file', '<job>')}: telemetry.encrypt: {where}{exc}"
    problem = next((p for p in comm.allgather(problem) if p), None)
    if problem:
        raise RunRefused(problem)

@dataclass
class StageContext:
    """What a stage gets: see the module docstring."""

    name: str
    job: dict
    material: Any
    stage_dir: Path
    input_hash: str
    outputs: dict
    comm: Any
    telemetry: Any
    prov: dict
    seed: int
    run_dir: Path
    extra: dict = field(default_factory=dict)




def make_context(stage: str, out_dir, material, job: dict, outputs: dict | None = None,
                 comm=None, job_id: str | None = None):
    """A :class:`StageContext` for running one stage outside a job (the
    ``dft`` and ``formfactor`` commands, tests, benchmarks, notebooks): the
    stage writes into ``out_dir/<stage>``, telemetry into ``out_dir/telemetry``.
    The input hash covers the stage's section (and the dft section for bands)."""
    from dmca_hpc.hpc.checkpoint import config_hash, provenance
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry
    comm = comm or get_comm()
    out_dir = Path(out_dir)
    ih = config_hash({"stage": stage, "section": job.get(stage, {}),
                      "upstream": job.get("dft", {}) if stage == "bands" else None})
    return StageContext(name=stage, job=job, material=material, stage_dir=out_dir / stage,
                        input_hash=ih, outputs=outputs or {}, comm=comm,
                        telemetry=Telemetry(out_dir / "telemetry", rank=comm.Get_rank(),
                                            job_id=(job.get("telemetry") or {}).get("job_id") or job_id,
                                            stage_dmca=STAGE_DMCA, nranks=comm.Get_size()),
                        prov=provenance(ih, nranks=comm.Get_size()), seed=0, run_dir=out_dir)


def stage_input_hash(job: dict, stage: str, material, upstream_hashes: dict) -> str:
    from dmca_hpc.hpc.checkpoint import config_hash
    return config_hash({
        "stage": stage,
        "section": job.get(stage, {}),
        "material": material.to_dict() if material is not None else None,
        "seed": job.get("seed"),
        "upstream": {k: upstream_hashes[k] for k in STAGE_READS.get(stage, ()) if k in upstream_hashes},
    })


def _manifest_current(stage_dir: Path, input_hash: str) -> dict | None:
    man = stage_dir / "stage.json"
    try:
        data = json.loads(man.read_text())
    except (OSError, ValueError):
        return None
    if data.get("input_hash") != input_hash or data.get("status") != "ok":
        return None
    outs = data.get("outputs", {})
    if not all(Path(p).exists() for p in outs.values()):
        return None
    return outs


def _write_manifest(stage_dir: Path, stage: str, input_hash: str, outputs: dict,
                    status: str, wall_s: float, error: str | None = None):
    from dmca_hpc.hpc.checkpoint import atomic_path
    with atomic_path(stage_dir / "stage.json") as tmp:
        tmp.write_text(json.dumps({"stage": stage, "input_hash": input_hash, "status": status,
                                   "outputs": outputs, "wall_seconds": wall_s, "error": error,
                                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                  indent=1))


def install_preemption_handler():
    """SIGUSR1/SIGTERM -> exit 99 at once (finished units are checkpointed)."""

    def handler(signum, frame):
        try:
            os.write(2, (f"dmca-hpc: received {signal.Signals(signum).name}; finished units are "
                         f"checkpointed; exiting with {EXIT_PREEMPTED} so the job can be "
                         "requeued and resumed\n").encode())
        finally:
            os._exit(EXIT_PREEMPTED)

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, handler)


def current_stages(job: dict, run_dir) -> set[str]:
    """Labels (``Si/dft``, ``global/nuclear``) of the stages a run of ``job`` in
    ``run_dir`` would skip as current (manifest with the same input hash and all
    outputs present), computed with the run's own hashes; nothing is written."""
    from dmca_hpc.stages.preflight import stage_plan
    run_dir = Path(run_dir)
    out: set[str] = set()
    if not run_dir.is_dir():
        return out
    hashes: dict[str, dict] = {}
    for stage, mat in stage_plan(job):
        key = mat.name if mat is not None else "global"
        ih = stage_input_hash(job, stage, mat, hashes.get(key, {}))
        hashes.setdefault(key, {})[stage] = ih
        if _manifest_current(run_dir / key / stage, ih) is not None:
            out.add(f"{key}/{stage}")
    return out


def resource_preflight(job: dict, run_dir: Path, comm, log=print,
                       max_hours: float | None = None) -> None:
    """Refuse, before anything is written, a job one of whose stages would exceed
    this machine's memory (per rank x the ranks on this node) or free disk, or
    ``max_hours`` of wall-clock on the run's ranks: raise :class:`ResourcesRefused`
    (on every rank) with one line per offending stage (:mod:`dmca_hpc.stages.preflight`).
    Rank 0 estimates; a failure of the estimate itself is a warning, never a refusal.
    Collective."""
    from dmca_hpc.hpc.parallel import node_local_size
    rpn = node_local_size(comm)
    lines = None
    if comm.Get_rank() == 0:
        try:
            from dmca_hpc.stages import preflight as pf
            est, limits, lines = pf.preflight_job(job, run_dir, comm.Get_size(), rpn, max_hours,
                                                  current_stages(job, run_dir))
            timed = [e.time_s for e in est if e.time_s is not None]
            hows = sorted({e.how for e in est if e.how.startswith(("model", "measured"))})
            log(f"[preflight] estimate: memory <= "
                f"{max([e.memory_bytes or 0.0 for e in est], default=0.0) / pf.GIB:.3g} GiB per rank, "
                f"disk {sum(e.disk_bytes + e.scratch_bytes for e in est) / pf.GIB:.3g} GiB, time "
                f"{sum(timed) / 3600:.3g} h on {comm.Get_size()} rank(s) ({', '.join(hows) or '-'}); "
                f"'dmca-hpc validate' shows every stage")
        except Exception as exc:  # an estimate must never stop a run that could finish
            print(f"dmca-hpc: warning: no resource estimate ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            lines = []
    # allgather, not bcast: every rank gets rank 0's decision from the same collective
    lines = comm.allgather(lines)[0]
    if lines:
        raise ResourcesRefused(lines)


def _stage_refusal(job: dict, stage: str, mat, outputs: dict, run_dir: Path, comm, rpn: int,
                   max_hours: float | None, elapsed_s: float) -> str | None:
    """Rank 0's refusal line of a stage about to start (None: it fits), on every rank."""
    line = None
    if comm.Get_rank() == 0:
        try:
            from dmca_hpc.stages.preflight import stage_problem
            line = stage_problem(job, stage, mat, outputs, run_dir, comm.Get_size(), rpn,
                                 max_hours, elapsed_s)
        except Exception as exc:  # advisory: the stage checks its own inputs
            print(f"dmca-hpc: warning: no resource estimate for {stage} "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
    return comm.allgather(line)[0]


def run_job(job: dict, out_dir: str | os.PathLike | None = None, log=print,
            max_hours: float | None = None) -> dict:
    """Run every stage of a validated job (see :func:`dmca_hpc.config.load_job`).

    ``max_hours``: wall-clock limit of the run [h] on its ranks (None: none):
    a job whose estimate exceeds it is refused before it starts, a stage that
    would end after it is refused before it starts.

    Returns (on rank 0) a summary dict: run_dir, per-stage status and
    outputs, telemetry path, summary paths, number of failed stages.
    Raises :class:`RunRefused` (on every rank) when :func:`preflight` fails,
    some stage cannot finish (:class:`ResourcesRefused`) or another run holds
    the output directory (:class:`RunLocked`); then nothing has been written.
    """
    from dmca_hpc.hpc.parallel import get_comm
    t_start = time.perf_counter()
    comm = get_comm()
    run_dir = Path(out_dir or Path("runs") / job["name"]).resolve()
    preflight(job, comm)
    resource_preflight(job, run_dir, comm, log, max_hours)
    lock = RunLock(run_dir)
    refused = None
    if comm.Get_rank() == 0:  # one holder: rank 0 locks, the ranks follow its decision
        try:
            lock.acquire()
        except RunLocked as exc:
            refused = str(exc)
    refused = comm.bcast(refused, root=0)
    if refused:
        raise RunLocked(refused)
    try:
        return _run_stages(job, run_dir, comm, log, max_hours, t_start)
    finally:
        lock.release()


def _run_stages(job: dict, run_dir: Path, comm, log, max_hours: float | None = None,
                t_start: float | None = None) -> dict:
    """:func:`run_job` once the output directory is locked."""
    from dmca_hpc.hpc.checkpoint import atomic_path, config_hash, provenance
    from dmca_hpc.hpc.parallel import node_local_size
    from dmca_hpc.monitoring.telemetry import Telemetry, merge_rank_files
    from dmca_hpc.stages.preflight import stage_plan

    rank, size = comm.Get_rank(), comm.Get_size()
    root = rank == 0
    pub = public_job(job)
    job_hash = config_hash(pub)
    seed = int(job.get("seed", 0))
    prov = provenance(job_hash=job_hash, nranks=size, seeds={"seed": seed})
    if root:
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml
        with atomic_path(run_dir / "job.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(pub, sort_keys=False))
        with atomic_path(run_dir / "provenance.json") as tmp:
            tmp.write_text(json.dumps(prov, indent=1))
    comm.barrier()
    # the job key telemetry.job_id, when set, wins over this default (Telemetry.from_job)
    telemetry = Telemetry.from_job(job.get("telemetry"), run_dir / "telemetry", rank=rank,
                                   job_id=os.environ.get("SLURM_JOB_ID") or job["name"],
                                   stage_dmca=STAGE_DMCA, nranks=size)
    plan: list[tuple[str, Any]] = stage_plan(job)
    rpn = node_local_size(comm)
    t_start = time.perf_counter() if t_start is None else t_start

    results: dict[str, dict] = {}
    hashes: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    failed: dict[str, set] = {}
    for stage, mat in plan:
        key = mat.name if mat is not None else "global"
        label = f"{key}/{stage}"
        stage_dir = run_dir / key / stage
        if root:
            stage_dir.mkdir(parents=True, exist_ok=True)
        comm.barrier()
        blocked = [n for n in STAGE_NEEDS.get(stage, ()) if n in failed.get(key, set())]
        if blocked:
            failed.setdefault(key, set()).add(stage)
            results[label] = {"status": "skipped", "reason": f"needs failed stage {blocked[0]}"}
            if root:
                log(f"[{label}] skipped: it needs {blocked[0]}, which failed")
            continue
        ih = stage_input_hash(job, stage, mat, hashes.get(key, {}))
        hashes.setdefault(key, {})[stage] = ih
        current = _manifest_current(stage_dir, ih) if root else None
        current = comm.bcast(current, root=0)
        if current is not None:
            outputs.setdefault(key, {})[stage] = current
            results[label] = {"status": "current", "outputs": current}
            if root:
                log(f"[{label}] current (inputs unchanged), skipped")
            continue
        refusal = _stage_refusal(job, stage, mat, outputs.get(key, {}), run_dir, comm, rpn,
                                 max_hours, time.perf_counter() - t_start)
        if refusal:  # refused before it starts: nothing of it exists to lose
            failed.setdefault(key, set()).add(stage)
            error = f"refused before it started: {refusal}"
            results[label] = {"status": "failed", "outputs": {}, "wall_seconds": 0.0,
                              "error": error}
            if root:
                log(f"[{label}] REFUSED: {refusal}")
                _write_manifest(stage_dir, stage, ih, {}, "failed", 0.0, error)
            continue
        if root:
            log(f"[{label}] running on {size} rank(s) ...")
        ctx = StageContext(name=stage, job=job, material=mat, stage_dir=stage_dir, input_hash=ih,
                           outputs=outputs.setdefault(key, {}), comm=comm, telemetry=telemetry,
                           prov={**prov, "input_hash": ih, "stage": stage}, seed=seed, run_dir=run_dir)
        t0 = time.perf_counter()
        error = None
        try:
            outs = implementation(stage)(ctx) or {}
        except Exception as exc:  # a failed stage must not stop other materials' stages
            import traceback
            error = f"{type(exc).__name__}: {exc}"
            telemetry.record(stage, label, "failed", time.perf_counter() - t0, 0.0, 0.0,
                             error=error, physics={"material": mat.name} if mat else None)
            if root:
                log(f"[{label}] FAILED: {error}")
                (stage_dir / "error.txt").write_text(traceback.format_exc())
            outs = {}
        wall = time.perf_counter() - t0
        outs = comm.bcast(outs if root else None, root=0)
        errors = comm.allgather(error)
        error = next((e for e in errors if e), None)
        status = "failed" if error else "ok"
        if root:
            _write_manifest(stage_dir, stage, ih, outs, status, wall, error)
            if not error:
                log(f"[{label}] done in {wall:.1f} s")
        if error:
            failed.setdefault(key, set()).add(stage)
        else:
            outputs[key][stage] = outs
        results[label] = {"status": status, "outputs": outs, "wall_seconds": wall, "error": error}
    comm.barrier()
    summary = {"run_dir": str(run_dir), "stages": results,
               "failed": sum(1 for r in results.values() if r["status"] in ("failed", "skipped"))}
    if root:
        tel = merge_rank_files(run_dir / "telemetry")
        summary["telemetry"] = str(tel)
        summary.update(_collector_summary(tel, run_dir, job.get("telemetry")))
        with atomic_path(run_dir / "run.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1, default=str))
    return summary if root else {}


def _collector_summary(tel_path: Path, run_dir: Path, section: dict | None = None) -> dict:
    """Run the standalone collector on the run's telemetry (summary.json/.md)."""
    try:
        from dmca_hpc.monitoring import collector
    except ImportError:
        return {}
    try:
        return collector.write_run_summary(tel_path, run_dir, section=section)
    except Exception as exc:  # the run's results must not be lost to a report failure
        print(f"dmca-hpc: collector summary failed: {exc}", file=sys.stderr)
        return {}
