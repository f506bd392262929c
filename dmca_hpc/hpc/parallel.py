"""MPI work layer: spread named units of work over ranks.

Every stage uses this module and nothing else to talk to MPI.

* Runs under ``mpiexec -n N`` (mpi4py imported lazily, only when the process
  was started by an MPI launcher or ``DMCA_HPC_MPI=1``) or as a plain process
  without mpi4py installed, through :class:`SerialComm`, a stand-in
  communicator of rank 0 and size 1 (the ASE habit).  Results are the same.
* Two schedules: ``static`` (contiguous block split, for units of equal cost)
  and ``dynamic`` (each rank asks rank 0 for the next unit index, answered
  by a light service thread on rank 0, so a slow unit never stalls the
  others and rank 0 works too instead of idling as a master).
* One unit's exception is caught, recorded with its traceback in its
  :class:`UnitResult`, and the other units go on.  Errors are shared through
  the final gather, so no rank is left waiting in a collective.
* Results are gathered to rank 0 (or to all ranks) and sorted by unit index,
  so their order never depends on the rank count.

The trap this avoids: an unhandled exception on one rank deadlocks the other
ranks in the next collective.  :func:`abort_on_exception` wraps an entry point
so that an escaping exception aborts the whole communicator.
"""
from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

#: environment variables that MPI launchers set in every rank they start
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                  "MPI_LOCALRANKID", "HYDRA_CONTROL_FD", "MV2_COMM_WORLD_SIZE")


class SerialComm:
    """Communicator of one process with the mpi4py methods this package uses."""

    rank = 0
    size = 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def barrier(self):
        pass

    Barrier = barrier

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def reduce(self, obj, op=None, root=0):
        return obj

    def allreduce(self, obj, op=None):
        return obj

    def Reduce(self, sendbuf, recvbuf, op=None, root=0):
        import numpy as np
        np.copyto(recvbuf, sendbuf)

    def Allreduce(self, sendbuf, recvbuf, op=None):
        self.Reduce(sendbuf, recvbuf)

    def Abort(self, errorcode=1):
        os._exit(errorcode)


_COMM = None


def launched_by_mpi() -> bool:
    """True when this process was started by an MPI launcher (or forced by
    ``DMCA_HPC_MPI=1``); ``DMCA_HPC_MPI=0`` forces serial."""
    forced = os.environ.get("DMCA_HPC_MPI")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return any(v in os.environ for v in _LAUNCHER_VARS)


def get_comm():
    """The world communicator: mpi4py's COMM_WORLD under a launcher, else
    :class:`SerialComm`.  mpi4py is imported only here, and only when needed."""
    global _COMM
    if _COMM is None:
        if launched_by_mpi():
            try:
                from mpi4py import MPI
            except ImportError:  # launcher without mpi4py: still correct, serial
                print("dmca_hpc: started by an MPI launcher but mpi4py is not "
                      "installed; running serially (pip install '.[mpi]')",
                      file=sys.stderr)
                _COMM = SerialComm()
            else:
                _COMM = MPI.COMM_WORLD
        else:
            _COMM = SerialComm()
    return _COMM


def is_root(comm=None) -> bool:
    return (comm or get_comm()).Get_rank() == 0


def peak_memory_mb() -> float:
    """Peak resident set size of this process [MiB].

    Linux: VmHWM of /proc/self/status (the high-water mark of this address
    space; ru_maxrss survives exec, so a worker started by a large parent
    would report the parent's peak); elsewhere ru_maxrss (kB on Linux, bytes
    on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


@dataclass
class UnitResult:
    """Outcome of one unit of work.

    Attributes:
        index: position of the unit in the list given to :func:`map_units`.
        unit: the unit description itself (must be picklable).
        value: what the work function returned (None on error).
        error: ``"ExcType: message"`` on failure, else None.
        traceback: formatted traceback on failure, else None.
        rank: MPI rank that ran it.
        wall_s, cpu_s: wall-clock and process CPU time [s].
        peak_mem_mb: peak RSS of the rank after the unit [MiB].
    """

    index: int
    unit: Any
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    rank: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_mem_mb: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def run_unit(func: Callable, index: int, unit: Any, rank: int = 0) -> UnitResult:
    """Run ``func(unit)`` once, timing it and catching any exception."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = UnitResult(index=index, unit=unit, rank=rank)
    try:
        res.value = func(unit)
    except Exception as exc:  # one unit's failure must not stop the batch
        res.error = f"{type(exc).__name__}: {exc}"
        res.traceback = traceback.format_exc()
    res.wall_s = time.perf_counter() - t0
    res.cpu_s = time.process_time() - c0
    res.peak_mem_mb = peak_memory_mb()
    return res


def static_split(n: int, size: int, rank: int) -> range:
    """Contiguous block of ``range(n)`` owned by ``rank`` (sizes differ by <= 1)."""
    return range(rank * n // size, (rank + 1) * n // size)


class _Dispatcher:
    """Hands out unit indices: rank 0 owns the counter, other ranks ask it.

    Rank 0 runs a light service thread that polls for requests (non-blocking
    receive plus a short sleep, so it costs almost no CPU) and answers each
    with the next index, while its main thread works on units like every
    other rank.  One-sided MPI (fetch-and-add on a window) was tried first:
    without an asynchronous progress engine MPICH only serves it when rank 0
    enters MPI, so a rank 0 busy with a long unit stalled everyone else.
    Needs MPI_THREAD_MULTIPLE (mpi4py's default request; MPICH provides it).
    """

    POLL_S = 0.002

    def __init__(self, comm, n: int):
        import threading
        import numpy as np
        from mpi4py import MPI
        self.MPI, self.np = MPI, np
        self.n = n
        self.comm = comm.Dup()  # private tags: never mixes with the caller's messages
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise RuntimeError("dynamic dispatch needs MPI_THREAD_MULTIPLE; "
                               "use schedule='static' or mpi4py.rc.thread_level='multiple'")
        self._next = 0
        self._lock = threading.Lock()
        self._thread = None
        if self.rank == 0:
            self._thread = threading.Thread(target=self._serve, name="dmca-dispatch", daemon=True)
            self._thread.start()

    def _take(self) -> int:
        with self._lock:
            i = self._next
            self._next += 1
            return i

    def _serve(self):
        MPI, np = self.MPI, self.np
        buf = np.zeros(1, dtype=np.int64)
        reply = np.zeros(1, dtype=np.int64)
        remaining = self.size - 1
        status = MPI.Status()
        while remaining:
            req = self.comm.Irecv(buf, source=MPI.ANY_SOURCE, tag=11)
            while not req.Test(status):
                time.sleep(self.POLL_S)
            reply[0] = self._take()
            self.comm.Send(reply, dest=status.Get_source(), tag=12)
            if reply[0] >= self.n:
                remaining -= 1  # that rank got its "no more work" answer

    def next(self) -> int:
        if self.rank == 0:
            return self._take()
        np = self.np
        self.comm.Send(np.zeros(1, dtype=np.int64), dest=0, tag=11)
        out = np.zeros(1, dtype=np.int64)
        self.comm.Recv(out, source=0, tag=12)
        return int(out[0])

    def free(self):
        if self._thread is not None:
            self._thread.join()
        self.comm.Free()


def map_units(func: Callable[[Any], Any], units: Sequence[Any], comm=None,
              schedule: str = "dynamic", root_only: bool = True,
              on_result: Callable[[UnitResult], None] | None = None,
              skip: Iterable[int] = (),
              order: Sequence[int] | None = None) -> list[UnitResult] | None:
    """Run ``func`` on every unit, spread over the ranks of ``comm``.

    Args:
        func: the work function, called as ``func(unit)``.
        units: the list of units (same list on every rank).
        comm: communicator (default :func:`get_comm`).
        schedule: ``"static"`` block split or ``"dynamic"`` fetch-next.
        root_only: gather the results to rank 0 only (other ranks get None);
            False gathers to every rank.
        on_result: called on the rank that ran a unit, right after it, with
            its :class:`UnitResult` (per-rank checkpoint or telemetry hook).
            An exception there is recorded in the result, never raised.
        skip: unit indices not to run (already done, e.g. from a checkpoint).
        order: the unit indices in the order to hand them out (default 0, 1, ...);
            largest first balances a dynamic schedule whose units differ in cost
            (the last unit then is a short one).  Indices, checkpoints and the
            returned order are unchanged by it.

    Returns:
        The results of all units run, sorted by unit index (on rank 0, or on
        every rank with ``root_only=False``).
    """
    comm = comm or get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    skip = set(skip)
    seq = range(len(units)) if order is None else [int(i) for i in order]
    if order is not None and sorted(seq) != list(range(len(units))):
        raise ValueError("map_units: order must be a permutation of the unit indices")
    todo = [i for i in seq if i not in skip]
    mine: list[UnitResult] = []

    def _do(i: int):
        r = run_unit(func, i, units[i], rank)
        if on_result is not None:
            try:
                on_result(r)
            except Exception as exc:
                r.extra["on_result_error"] = f"{type(exc).__name__}: {exc}"
                if r.error is None:
                    r.error = f"result hook failed: {type(exc).__name__}: {exc}"
                    r.traceback = traceback.format_exc()
        mine.append(r)

    if schedule not in ("static", "dynamic"):
        raise ValueError(f"schedule must be 'static' or 'dynamic', not {schedule!r}")
    if size == 1:
        for i in todo:
            _do(i)
    elif schedule == "static":
        for j in static_split(len(todo), size, rank):
            _do(todo[j])
    else:
        dispatcher = _Dispatcher(comm, len(todo))
        try:
            while True:
                j = dispatcher.next()
                if j >= len(todo):
                    break
                _do(todo[j])
        finally:
            dispatcher.free()

    if size > 1:
        # a rank out of units sleeps until the last one ends instead of spinning in
        # the gather (measured: rank 1 at 50-70% CPU for the 40 min of a single GDF
        # bands chunk on rank 0, on 2 cores)
        idle_barrier(comm)
    if root_only:
        parts = comm.gather(mine, root=0)
        if rank != 0:
            return None
    else:
        parts = comm.allgather(mine)
    out = [r for part in parts for r in part]
    out.sort(key=lambda r: r.index)
    return out


def reduce_array(arr, comm=None, root: int = 0):
    """Sum a numpy array over ranks onto ``root`` (returns None elsewhere)."""
    import numpy as np
    comm = comm or get_comm()
    arr = np.ascontiguousarray(arr)
    if comm.Get_size() == 1:
        return arr.copy()
    out = np.empty_like(arr) if comm.Get_rank() == root else None
    from mpi4py import MPI
    comm.Reduce(arr, out, op=MPI.SUM, root=root)
    return out


def abort_on_exception(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap an entry point so that, under MPI with more than one rank, an
    escaping exception prints its traceback and aborts every rank instead of
    leaving the others deadlocked in a collective."""

    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException:
            comm = _COMM
            if comm is not None and comm.Get_size() > 1:
                traceback.print_exc()
                sys.stderr.flush()
                comm.Abort(1)
            raise

    wrapper.__name__ = getattr(main, "__name__", "main")
    wrapper.__doc__ = main.__doc__
    return wrapper


class Progress:
    """A progress line on rank 0 only: ``stage: done/total (pct) eta``.

    Writes to stderr with carriage returns when it is a terminal, and one line
    per ``every`` fraction otherwise (batch logs stay readable).  ``done``: units
    already finished before this run (checkpoints of a resumed run): counted in
    done/total but not in the rate the eta is taken from.  :meth:`update` sets
    the count (all ranks' units: callers count their checkpoint files, e.g.
    ``done + UnitStore.written_since(t0)``, because a rank sees only its own
    results); :meth:`advance` adds one (serial loops)."""

    def __init__(self, label: str, total: int, comm=None, stream=None, done: int = 0):
        self.label, self.total = label, max(int(total), 1)
        self.on = (comm or get_comm()).Get_rank() == 0
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self._last_pct = -1
        self.start = self.done = int(done)

    def advance(self, n: int = 1):
        """One (or ``n``) more unit finished in this run."""
        self.update(self.done + n)

    def update(self, done: int):
        self.done = int(done)
        if not self.on:
            return
        done = min(self.done, self.total)
        pct = int(100 * done / self.total)
        tty = getattr(self.stream, "isatty", lambda: False)()
        if not tty and pct // 10 == self._last_pct // 10 and done < self.total:
            return
        self._last_pct = pct
        el = time.perf_counter() - self.t0
        new = done - self.start
        eta = el / new * (self.total - done) if new > 0 else float("nan")
        end = "\r" if tty and done < self.total else "\n"
        self.stream.write(f"{self.label}: {done}/{self.total} ({pct}%) "
                          f"elapsed {el:.1f} s, eta {eta:.1f} s{end}")
        self.stream.flush()


# --------------------------------------------------------------------------- threads, nodes

def set_threads(n: int | None):
    """Set PySCF's OpenMP thread count and, when threadpoolctl is installed,
    the BLAS pool (``None``: leave as is).  Without threadpoolctl, launch MPI
    runs with ``OPENBLAS_NUM_THREADS=1``: OpenBLAS threads of several ranks
    on the same cores made a 26x26 eigh 100x slower on a loaded node."""
    if n is None:
        return
    from pyscf import lib
    lib.num_threads(max(int(n), 1))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=max(int(n), 1))


def node_local_size(comm) -> int:
    """Number of ranks of ``comm`` on this node (1 for the serial stand-in).
    Collective: call it on every rank."""
    if comm.Get_size() == 1:
        return 1
    try:
        from mpi4py import MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        n = local.Get_size()
        local.Free()
        return n
    except Exception:  # not an mpi4py communicator: assume one node
        return comm.Get_size()


def idle_barrier(comm, poll_s: float = 0.05):
    """Barrier that sleeps instead of spinning: MPICH spins at 100% CPU in a
    blocking collective, which would steal the core that rank 0 computes on
    while the others wait for the (serial) SCF."""
    if comm.Get_size() == 1:
        return
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_s)
