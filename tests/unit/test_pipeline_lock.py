"""One run per output directory (issue #17): a second ``dmca-hpc run --out D``
is refused at once with exit 2 naming the holder; the lock of a run killed
with SIGKILL does not block the resume; a job that cannot finish (encrypted
telemetry without its key) is refused before anything is written."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import run_cli
from dmca_hpc import pipeline
from dmca_hpc.config import load_job

JOB = "name: t\nmaterials: [Si]\nstages: [materials]\n"

_HOLDER = ("import sys, time\n"
           "from dmca_hpc.pipeline import RunLock\n"
           "RunLock(sys.argv[1]).acquire()\n"
           "print('locked', flush=True)\n"
           "time.sleep(120)\n")


def test_second_run_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_cli("run", job, "--out", out, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith(f"dmca-hpc run: {out}: another run is using this output directory "
                                   f"(held by pid {holder.pid} on host "), lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".dmca-run.lock"]  # nothing else written
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel drops its flock
        holder.wait(timeout=10)
    assert json.loads((out / ".dmca-run.lock").read_text())["pid"] == holder.pid  # stale file stays
    r = run_cli("run", job, "--out", out, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "Si" / "materials" / "material.h5").exists()
    info = json.loads((out / ".dmca-run.lock").read_text())
    assert set(info) == {"host", "pid", "started", "started_unix"} and info["pid"] != holder.pid


def test_lock_is_exclusive_and_released(tmp_path):
    with pipeline.RunLock(tmp_path):
        with pytest.raises(pipeline.RunLocked, match=rf"held by pid {os.getpid()} on host "):
            pipeline.RunLock(tmp_path).acquire()
    with pipeline.RunLock(tmp_path):  # released at the end of the with block
        pass


class _Rank1:
    """Rank 1 of 2: rank 0's broadcast decision is ``decision``."""

    def __init__(self, decision):
        self.decision = decision

    def Get_rank(self):
        return 1

    def Get_size(self):
        return 2

    def bcast(self, obj, root=0):
        return self.decision

    def allgather(self, obj):
        return [None, obj]

    def barrier(self):
        pass


def test_only_rank_0_locks_and_the_others_follow(tmp_path, monkeypatch):
    from dmca_hpc.hpc import parallel
    (tmp_path / "job.yaml").write_text(JOB)
    job = load_job(tmp_path / "job.yaml")
    monkeypatch.setattr(parallel, "get_comm", lambda: _Rank1("D: another run is using this output directory"))
    with pytest.raises(pipeline.RunLocked, match="another run is using"):
        pipeline.run_job(job, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # rank 1 neither created nor locked anything


def test_encrypted_job_without_key_exits_2_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("DMCA_TELEMETRY_KEY", raising=False)
    job = tmp_path / "job.yaml"
    job.write_text(JOB + "telemetry: {encrypt: true}\n")
    r = run_cli("run", job, "--out", tmp_path / "out", timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"dmca-hpc run: {job}: telemetry.encrypt: telemetry encryption requested "
                               "but environment variable DMCA_TELEMETRY_KEY is not set"), lines[0]
    assert not (tmp_path / "out").exists()
