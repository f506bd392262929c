"""MPI work layer under mpiexec -n 2 (pytest --with-mpi)."""
import time

import pytest

from dmca_hpc.hpc.parallel import map_units, reduce_array


def work(x):
    if x == 5:
        raise ValueError("bad unit five")
    return x ** 3


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("schedule", ["static", "dynamic"])
def test_two_ranks_same_results_as_serial(schedule):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    units = list(range(23))
    res = map_units(work, units, comm=comm, schedule=schedule, root_only=False)
    serial = [(i, None if i == 5 else i ** 3) for i in units]
    assert [(r.index, r.value) for r in res] == serial
    assert res[5].error == "ValueError: bad unit five"
    if schedule == "static":  # dynamic: rank 0 may legitimately finish trivial units alone
        assert {r.rank for r in res} == set(range(comm.Get_size()))


@pytest.mark.mpi(min_size=2)
def test_dynamic_dispatch_balances_uneven_units():
    # unit 0 costs as much as all the others together: with a static block
    # split rank 0 would also get half of the cheap units; with dynamic
    # dispatch the other rank(s) take (nearly) all of them.
    from mpi4py import MPI
    comm = MPI.COMM_WORLD

    def cost(i):
        time.sleep(0.8 if i == 0 else 0.04)
        return i

    res = map_units(cost, list(range(20)), comm=comm, schedule="dynamic", root_only=False)
    rank_of_0 = res[0].rank
    cheap_with_slow_rank = sum(1 for r in res[1:] if r.rank == rank_of_0)
    assert cheap_with_slow_rank <= 3, [r.rank for r in res]
    busy = [sum(r.wall_s for r in res if r.rank == k) for k in range(comm.Get_size())]
    assert max(busy) < 1.5 * 0.8 + 0.2


@pytest.mark.mpi(min_size=2)
def test_reduce_array():
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    out = reduce_array(np.full(4, comm.Get_rank() + 1.0), comm)
    if comm.Get_rank() == 0:
        n = comm.Get_size()
        assert out.tolist() == [n * (n + 1) / 2] * 4
    else:
        assert out is None


@pytest.mark.mpi(min_size=2)
def test_a_rank_out_of_units_sleeps_instead_of_spinning():
    """One long unit (2 s of sleep on whichever rank takes it) and nothing else: the
    other ranks wait for it in map_units.  MPICH spins at full CPU in a blocking
    gather; the idle barrier sleeps, so a waiting rank uses a small share of the 2 s
    in CPU (measured: ~0.01 s; spinning would be ~2 s)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    c0 = time.process_time()
    res = map_units(lambda x: time.sleep(2.0) or x, [0], comm=comm, schedule="static",
                    root_only=False)
    cpu = time.process_time() - c0
    waited = res[0].rank != comm.Get_rank()
    if waited:
        assert cpu < 0.5, f"rank {comm.Get_rank()} used {cpu:.2f} s CPU while waiting"
