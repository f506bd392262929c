"""MPI work layer, serial path (the MPI path: test_parallel_mpi.py)."""
import time

import pytest

from dmca_hpc.parallel import SerialComm, map_units, static_split, get_comm


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
