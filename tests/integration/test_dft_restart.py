"""MPI behaviour of the bands stage: kill -9 and resume, rank-count independence.

Two kinds of tests:

* Subprocess tests (plain ``pytest``): the real command ``python -m
  dmca_hpc.cli.main dft`` (``dmca-hpc dft``) under ``mpiexec -n 2``, in its own process group, killed
  with SIGKILL (mpiexec, its proxy and both ranks) while the k-chunks are
  being computed, then run again (with 2 ranks, or with 1 rank after
  truncating one finished unit file).  The result must equal an
  uninterrupted 1-rank run to 1e-10 hartree (it is in fact bitwise equal:
  chunks do not depend on the rank count).  They start their own mpiexec,
  so they skip when pytest itself runs under an MPI launcher.
* An in-process test for ``mpiexec -n 2 python -m pytest --with-mpi``.

Size: Si gth-szv (8 AOs), 2x2x2 SCF at ke_cutoff 10 hartree, dense 4x4x4
mesh in 32 chunks of 2 k-points, no band path, no plots.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dmca_hpc.hpc.checkpoint import is_complete
from dmca_hpc.hpc.parallel import launched_by_mpi
from dmca_hpc.pipeline import make_context
from dmca_hpc.stages import dft as dft_stage
from dmca_hpc.stages import bands as bands_stage
from conftest import launcher_env, require_mpiexec

ARGS = ["Si", "--basis", "gth-szv", "--ke-cutoff-hartree", "10", "--dense-kmesh", "4", "4", "4",
        "--chunk-size", "2", "--band-path-npoints", "0", "--no-plots"]
NUNITS = 32

subprocess_only = pytest.mark.skipif(launched_by_mpi(),
                                     reason="starts its own mpiexec; run with plain pytest")


def _cmd(out, nranks):
    cmd = [sys.executable, "-m", "dmca_hpc.cli.main", "dft", *ARGS, "--out", str(out)]
    return [require_mpiexec(), "-n", str(nranks), *cmd] if nranks > 1 else cmd


def _run(out, nranks, timeout=300):
    r = subprocess.run(_cmd(out, nranks), env=launcher_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _bands(out):
    with h5py.File(Path(out) / "bands" / "bands.h5", "r") as f:
        return f["energies"][()], f["coeffs"][()]


def _unit_files(out):
    d = Path(out) / "bands" / "units"
    return sorted(d.glob("unit-*.h5")) if d.is_dir() else []


def _mesh_records(out):
    recs = []
    for p in sorted((Path(out) / "telemetry").glob("rank-*.jsonl")):
        recs += [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    recs.sort(key=lambda r: r["timestamp"])  # rank files interleave in time
    return [r for r in recs if r["hpc"]["stage"] == "bands" and ":mesh:" in r["hpc"]["unit"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted 1-rank run (SCF included; the killed runs reuse its SCF)."""
    out = tmp_path_factory.mktemp("ref")
    _run(out, 1)
    return out


def _start_and_kill(reference, out, nranks, min_done=3):
    shutil.copytree(reference / "dft", out / "dft")  # same inputs: the SCF is reused
    p = subprocess.Popen(_cmd(out, nranks), env=launcher_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    try:
        while len(_unit_files(out)) < min_done:
            if p.poll() is not None:
                pytest.fail(f"run ended before it could be killed: {p.stderr.read()[-2000:]}")
            if time.time() - t0 > 180:
                pytest.fail("no unit finished within 180 s")
            time.sleep(0.02)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # mpiexec, hydra proxy and every rank
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    done = [f for f in _unit_files(out) if is_complete(f)]
    assert 0 < len(done) < NUNITS, "the kill should land mid-stage"
    assert not (out / "bands" / "bands.h5").exists()
    return done


@subprocess_only
def test_kill9_two_ranks_then_resume_two_ranks(reference, tmp_path):
    done = _start_and_kill(reference, tmp_path, 2)
    n_before = len(_mesh_records(tmp_path))
    _run(tmp_path, 2)
    e_ref, c_ref = _bands(reference)
    e, c = _bands(tmp_path)
    assert np.abs(e - e_ref).max() <= 1e-10 and np.abs(c - c_ref).max() <= 1e-10
    # the resumed run redid only the unfinished chunks, spread over both ranks
    new = _mesh_records(tmp_path)[n_before:]
    assert len(new) == NUNITS - len(done)
    assert all(r["hpc"]["status"] == "ok" for r in new)
    assert {r["hpc"]["rank"] for r in _mesh_records(tmp_path)} == {0, 1}


@subprocess_only
def test_kill9_then_resume_one_rank_with_truncated_unit(reference, tmp_path):
    done = _start_and_kill(reference, tmp_path, 2)
    # a truncated file (as from a crashed copy) must be detected and recomputed
    victim = done[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    n_before = len(_mesh_records(tmp_path))
    _run(tmp_path, 1)
    e_ref, c_ref = _bands(reference)
    e, c = _bands(tmp_path)
    assert np.abs(e - e_ref).max() <= 1e-10 and np.abs(c - c_ref).max() <= 1e-10
    new = _mesh_records(tmp_path)[n_before:]
    assert len(new) == NUNITS - len(done) + 1
    idx = int(victim.stem.split("-")[1])
    labels = [r["hpc"]["unit"] for r in new]
    assert f"Si:mesh:{2 * idx}-{2 * idx + 2}" in labels, (victim, labels)


@subprocess_only
def test_two_ranks_uninterrupted_equal_one_rank(reference, tmp_path):
    shutil.copytree(reference / "dft", tmp_path / "dft")
    _run(tmp_path, 2)
    e_ref, c_ref = _bands(reference)
    e, c = _bands(tmp_path)
    # bitwise: every chunk is computed the same way whichever rank runs it
    assert np.array_equal(e, e_ref) and np.array_equal(c, c_ref)


@pytest.mark.mpi(min_size=2)
def test_bands_stage_in_process_under_mpi(tmp_path):
    """Under ``mpiexec -n 2 pytest --with-mpi``: the dft and bands stages run
    on the world communicator; rank 0 then recomputes a few chunks serially
    and compares."""
    from dmca_hpc.electronic import bands
    from dmca_hpc.electronic import scf as dft
    from dmca_hpc.materials import get_material
    from dmca_hpc.hpc.parallel import get_comm
    comm = get_comm()
    out = Path(comm.bcast(str(tmp_path), root=0))
    job = {"dft": {"basis": "gth-szv", "ke_cutoff_hartree": 10.0, "kmesh": [2, 2, 2]},
           "bands": {"kmesh": [3, 3, 3], "chunk_size": 3, "band_path_npoints": 0, "plots": False}}
    si = get_material("Si")
    o1 = dft_stage.run_stage(make_context("dft", out, si, job, comm=comm))
    o2 = bands_stage.run_stage(make_context("bands", out, si, job, outputs={"dft": o1}, comm=comm))
    if comm.Get_rank() != 0:
        assert o2 == {}
        return
    with h5py.File(o2["bands"], "r") as f:
        e, k = f["energies"][()], f["kpts"][()]
        nb = int(f.attrs["nbands"])
    w = bands.BandWorker(o1["scf"], nb)
    e_ser, _ = w.bands(k[[0, 13, 26]])
    assert np.abs(e[[0, 13, 26]] - e_ser).max() < 1e-10
    ranks = {json.loads(l)["hpc"]["rank"] for p in (out / "telemetry").glob("rank-*.jsonl")
             for l in p.read_text().splitlines() if l.strip()}
    assert ranks == {0, 1}
