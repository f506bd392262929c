"""MPI work layer, serial path (the MPI path: test_parallel_mpi.py)."""
import time

import pytest

from dmca_hpc.hpc.parallel import SerialComm, map_units, static_split, get_comm


def square_or_fail(x):
    if x == 3:
        raise RuntimeError("unit 3 is broken")
    return x * x


def test_serial_comm_without_launcher(monkeypatch):
    assert isinstance(get_comm(), SerialComm)


def test_map_units_records_failure_and_continues():
    res = map_units(square_or_fail, list(range(6)))
    assert [r.index for r in res] == list(range(6))
    assert [r.value for r in res if r.ok] == [0, 1, 4, 16, 25]
    bad = res[3]
    assert not bad.ok and bad.error == "RuntimeError: unit 3 is broken"
    assert "Traceback" in bad.traceback and "square_or_fail" in bad.traceback


def test_skip_and_hook():
    seen = []
    res = map_units(lambda x: x + 1, [10, 20, 30], skip={1}, on_result=lambda r: seen.append(r.index))
    assert [r.index for r in res] == [0, 2] and seen == [0, 2]


def test_hook_failure_is_recorded():
    def hook(r):
        raise OSError("disk full")
    res = map_units(lambda x: x, [1], on_result=hook)
    assert not res[0].ok and "disk full" in res[0].error


@pytest.mark.parametrize("n,size", [(10, 3), (2, 4), (7, 1), (0, 2)])
def test_static_split_covers_everything(n, size):
    parts = [list(static_split(n, size, r)) for r in range(size)]
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_bad_schedule():
    with pytest.raises(ValueError, match="schedule"):
        map_units(lambda x: x, [1], schedule="random")


def test_exception_on_one_rank_aborts_instead_of_deadlock(tmp_path):
    # The trap: rank 1 raises while rank 0 waits in a collective.  Without
    # abort_on_exception the job hangs until the timeout; with it, mpiexec
    # ends every rank with a non-zero code and the traceback is printed.
    import subprocess
    import sys
    from conftest import mpiexec
    exe = mpiexec()
    if exe is None:
        pytest.skip("mpiexec not found (pip install '.[mpi]')")
    script = tmp_path / "boom.py"
    script.write_text(
        "from dmca_hpc.hpc.parallel import get_comm, abort_on_exception\n"
        "@abort_on_exception\n"
        "def main():\n"
        "    comm = get_comm()\n"
        "    if comm.Get_rank() == 1:\n"
        "        raise RuntimeError('rank one failed')\n"
        "    comm.barrier()\n"
        "main()\n")
    r = subprocess.run([exe, "-n", "2", sys.executable, str(script)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "rank one failed" in r.stderr


def test_order_hands_units_out_largest_first_and_keeps_indices():
    seen = []
    res = map_units(lambda x: x * 10, [1, 2, 3, 4], order=[3, 1, 0, 2], skip={0},
                    on_result=lambda r: seen.append(r.index))
    assert seen == [3, 1, 2]                        # the order asked for, skips honoured
    assert [r.index for r in res] == [1, 2, 3]      # results still by unit index
    assert [r.value for r in res] == [20, 30, 40]
    with pytest.raises(ValueError, match="permutation"):
        map_units(lambda x: x, [1, 2], order=[0, 0])


def test_progress_of_a_resumed_run_counts_only_this_runs_units(tmp_path):
    """A resumed run (or one in a directory that holds another mesh's units) must not
    print more done than total (seen: 'GaAs optical limit: 18/8 (225%)', eta < 0, from
    counting every unit file of the directory), and its eta comes from this run's
    units only."""
    import io
    import os
    import numpy as np
    from dmca_hpc.hpc.checkpoint import UnitStore
    from dmca_hpc.hpc.parallel import Progress, SerialComm
    old = UnitStore(tmp_path, "hash-of-the-12x12x12-run")
    for i in range(18):
        old.save(i, {"x": np.zeros(2)}, {"x": "1"})
    for i in range(18):  # written an hour ago
        os.utime(old.path(i), (time.time() - 3600, time.time() - 3600))
    new = UnitStore(tmp_path, "hash-of-the-8x8x8-run")
    new.save(0, {"x": np.ones(2)}, {"x": "1"})
    os.utime(new.path(0), (time.time() - 1800, time.time() - 1800))  # done by an earlier attempt
    done = new.done(8)
    assert done == {0}
    t0 = time.time()
    out = io.StringIO()
    p = Progress("GaAs optical limit", 8, comm=SerialComm(), stream=out, done=len(done))
    for i in (1, 2, 3):
        new.save(i, {"x": np.ones(2)}, {"x": "1"})
        p.update(len(done) + new.written_since(t0, 8))
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("GaAs optical limit: 4/8 (50%)"), lines
    eta = float(lines[-1].split("eta ")[1].split(" s")[0])
    assert eta >= 0
    for i in range(4, 8):
        new.save(i, {"x": np.ones(2)}, {"x": "1"})
        p.update(len(done) + new.written_since(t0, 8))
    assert out.getvalue().splitlines()[-1].startswith("GaAs optical limit: 8/8 (100%)")
