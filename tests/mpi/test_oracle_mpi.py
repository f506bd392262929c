"""Oracle batches over MPI ranks with the real pw.x.

* test_batch_over_ranks: in-process, run with
  ``mpiexec -n 2 python -m pytest --with-mpi tests/test_oracle_mpi.py``
  (skipped by plain pytest).
* test_kill_and_restart_loses_nothing: plain pytest; it launches
  ``mpiexec -n 2 python -m dmca_hpc.oracle.pwx`` itself, kills the whole job with
  SIGKILL mid-batch and restarts it (skipped when already under mpiexec).

pw.x runs serially inside each rank (OMP_NUM_THREADS=1, launcher variables
removed): Debian's pw.x is an Open MPI program and the ranks are MPICH.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dmca_hpc.oracle import pwx as oracle

HERE = Path(__file__).resolve().parents[1]  # tests/
FAKE = HERE / "fake_pw" / "pw.x"
PW = "/usr/bin/pw.x"
PSEUDO_DIR = "/usr/share/espresso/pseudo"
UPF = "Si.pbe-rrkj.UPF"

pytestmark = pytest.mark.skipif(
    not (os.access(PW, os.X_OK) and os.path.isfile(os.path.join(PSEUDO_DIR, UPF))),
    reason=f"real pw.x ({PW}) or {UPF} in {PSEUDO_DIR} missing (apt-get install quantum-espresso)")


def candidates():
    """6 good 2-atom Si cells (strained, displaced), one with overlapping
    atoms, one with Sn (no Sn UPF in the directory): 8 in all."""
    from dmca_hpc.materials import get_material
    base = get_material("Si").atoms()
    out = []
    for e in (-0.02, -0.01, 0.0, 0.01, 0.02):
        a = base.copy()
        a.set_cell(base.cell.array * (1 + e), scale_atoms=True)
        out.append(a)
    d = base.copy()
    d.positions[1] += [0.05, -0.03, 0.02]
    out.append(d)
    bad = base.copy()
    bad.positions[1] = bad.positions[0] + [0.02, 0.0, 0.0]
    sn = base.copy()
    sn.symbols[1] = "Sn"
    out.insert(3, bad)
    out.append(sn)
    return out            # indices: bad = 3, sn = 7


def settings(**kw):
    base = {"pw": PW, "pseudo_dir": PSEUDO_DIR, "pseudopotentials": {"Si": UPF},
            "ecutwfc": 14.0, "kspacing": 0.7, "timeout_s": 120.0}
    base.update(kw)
    return oracle.settings_from(base)


def check_outputs(out: Path):
    from ase.io import read
    frames = read(out / "results.extxyz", index=":", parallel=False)
    assert [f.info["index"] for f in frames] == [0, 1, 2, 4, 5, 6]
    fails = json.loads((out / "failures.json").read_text())
    assert [(f["index"], f["error_class"]) for f in fails] == [(3, "impossible_structure"),
                                                              (7, "missing_pseudopotential")]
    assert "apart" in fails[0]["message"] and "Sn" in fails[1]["message"]
    return {f.info["index"]: f.get_potential_energy() for f in frames}


@pytest.mark.mpi(min_size=2)
def test_batch_over_ranks(tmp_path):
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry, merge_rank_files
    comm = get_comm()
    out = Path(comm.bcast(str(tmp_path), root=0)) / "batch"
    tel = Telemetry(out / "telemetry", rank=comm.Get_rank())
    paths = oracle.run_batch(candidates(), settings(), out, comm=comm, telemetry=tel)
    comm.barrier()
    if comm.Get_rank() == 0:
        assert set(paths) == {"results_extxyz", "results_h5", "failures"}
        check_outputs(out)
        recs = [json.loads(x) for x in merge_rank_files(out / "telemetry").read_text().splitlines()]
        assert sorted(r["hpc"]["unit"] for r in recs) == [f"cand-{i:07d}" for i in range(8)]
        print("candidates per rank:", {r: sum(x["hpc"]["rank"] == r for x in recs) for r in (0, 1)})
    else:
        assert paths == {}


def _mpiexec():
    cand = Path(sys.executable).parent / "mpiexec"
    return str(cand) if cand.exists() else None


def _launch(structures, out, tel, pw, env):
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "dmca_hpc.oracle.pwx",
           "--structures", str(structures), "--pseudo-dir", PSEUDO_DIR, "--pseudo", f"Si={UPF}",
           "--out", str(out), "--telemetry", str(tel), "--pw", str(pw),
           "--ecutwfc", "14", "--kspacing", "0.7", "--timeout", "120"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def test_kill_and_restart_loses_nothing(tmp_path):
    if any(v in os.environ for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        pytest.skip("launches mpiexec itself: run under plain pytest, not inside mpiexec")
    if _mpiexec() is None:
        pytest.skip("mpiexec not found next to this Python (pip install mpich)")
    from ase.io import write
    cands = candidates()
    xyz = tmp_path / "cands.extxyz"
    write(xyz, cands)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_"))}
    env.update(FAKE_PW_SCENARIO="slow", FAKE_PW_SLEEP="1.0", OMP_NUM_THREADS="1")
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
    assert p.returncode == 0, stderr
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
    ref = oracle.run_batch(cands, settings(), tmp_path / "ref")
    from ase.io import read
    for f in read(ref["results_extxyz"], index=":", parallel=False):
        assert energies[f.info["index"]] == pytest.approx(f.get_potential_energy(), abs=1e-6)
