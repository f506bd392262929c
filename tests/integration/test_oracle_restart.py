"""kill -9 of a 2-rank oracle batch mid-way, then the same command again:
nothing finished is redone and the labels equal an uninterrupted run.  Runs
in one plain process (not under mpiexec): it launches
``mpiexec -n 2 python -m dmca_hpc.cli.main oracle`` (``dmca-hpc oracle``)
itself.  pw.x runs serially inside each rank (OMP_NUM_THREADS=1, launcher
variables removed): Debian's pw.x is an Open MPI program and the ranks are MPICH.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dmca_hpc.oracle import batch
from conftest import launcher_env, require_mpiexec
from oracle_cases import FAKE, PSEUDO_DIR, PW, UPF, candidates, check_outputs, have_pw, settings

pytestmark = pytest.mark.skipif(
    not have_pw(),
    reason=f"real pw.x ({PW}) or {UPF} in {PSEUDO_DIR} missing (apt-get install quantum-espresso)")


def _launch(structures, out, tel, pw, env):
    cmd = [require_mpiexec(), "-n", "2", sys.executable, "-m", "dmca_hpc.cli.main", "oracle",
           "--structures", str(structures), "--pseudo-dir", PSEUDO_DIR, "--pseudo", f"Si={UPF}",
           "--out", str(out), "--telemetry", str(tel), "--pw", str(pw),
           "--ecutwfc", "14", "--kspacing", "0.7", "--timeout", "120"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def test_kill_and_restart_loses_nothing(tmp_path):
    if any(v in os.environ for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        pytest.skip("launches mpiexec itself: run under plain pytest, not inside mpiexec")
    require_mpiexec()
    from ase.io import write
    cands = candidates()
    xyz = tmp_path / "cands.extxyz"
    write(xyz, cands)
    out = tmp_path / "out"
    env = launcher_env()
    env.update(FAKE_PW_SCENARIO="slow", FAKE_PW_SLEEP="1.0")
    # 1) a slowed-down batch (the fake pw.x sleeps 1 s, then execs the real pw.x)
    p = _launch(xyz, out, tmp_path / "tel1", FAKE, env)
    ck = out / "candidates"
    t0 = time.time()
    while time.time() - t0 < 90:
        done = list(ck.glob("cand-*.json")) if ck.is_dir() else []
        if len(done) >= 3:
            break
        if p.poll() is not None:
            pytest.fail(f"batch ended before it could be killed: {p.communicate()}")
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)           # kill -9 the whole job (mpiexec and both ranks)
    p.wait()
    before = {q.name: (q.stat().st_mtime_ns, q.read_bytes()) for q in ck.glob("cand-*.json")}
    assert 3 <= len(before) < len(cands), sorted(before)
    assert not (out / "results.extxyz").exists()
    # 2) restart (real pw.x directly: the executable is not part of a candidate's hash)
    p = _launch(xyz, out, tmp_path / "tel2", PW, env)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 1, stderr  # 2 of 8 candidates fail by design: exit 1
    summary = json.loads(stdout)
    assert summary == {**summary, "candidates": 8, "failed": 2}
    after = {q.name: (q.stat().st_mtime_ns, q.read_bytes()) for q in ck.glob("cand-*.json")}
    assert len(after) == 8
    for name, v in before.items():
        assert after[name] == v, f"{name} was recomputed"
    recs = [json.loads(x) for x in (tmp_path / "tel2" / "telemetry.jsonl").read_text().splitlines()]
    skipped = sorted(r["hpc"]["unit"] for r in recs if r["hpc"]["status"] == "skipped")
    ran = sorted(r["hpc"]["unit"] for r in recs if r["hpc"]["status"] != "skipped")
    assert skipped == sorted(n[:-5] for n in before)
    assert sorted(skipped + ran) == [f"cand-{i:07d}" for i in range(8)]
    energies = check_outputs(out)
    # 3) the same numbers as an uninterrupted (serial, in-process) run
    ref = batch.run_batch(cands, settings(), tmp_path / "ref")
    from ase.io import read
    for f in read(ref["results_extxyz"], index=":", parallel=False):
        assert energies[f.info["index"]] == pytest.approx(f.get_potential_energy(), abs=1e-6)
