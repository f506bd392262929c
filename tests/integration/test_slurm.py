"""SLURM packaging: sbatch templates, `dmca-hpc submit`, the requeue contract.

Three groups:
* no SLURM needed: schema, rendering (checked with ``bash -n``), the CLI's
  errors, :class:`StopRequest`, and the requeue-safe self-test workload under
  a real signal (serial and real ``mpiexec -n 2``);
* a real one-node SLURM started by ``slurm/local-cluster.sh`` once for this
  module (skipped, with the reason, when slurm-wlm/munge are missing or the
  cluster does not start): ``sbatch --wait`` of a job, a job that gets the
  pre-timeout signal, checkpoints and is requeued and finishes with the same
  result, and a job array launched with srun.

The SLURM jobs run WORKLOAD (the self-test: 2 MPI ranks, checkpoints,
telemetry).  To test the quickstart instead once `dmca-hpc run` works end to
end, swap the WORKLOAD line (and its ENTRY) for the commented one below and
point ``result_values`` at the quickstart's output.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dmca_hpc import slurm
from dmca_hpc.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
VENV_BIN = Path(PY).parent
MPIEXEC = VENV_BIN / "mpiexec"

# ---- the workload the SLURM tests submit --------------------------------------
ENTRY = f"{PY} -m dmca_hpc.cli.main"           # quickstart: None (the installed dmca-hpc)
N_UNITS = 8


def WORKLOAD(out: Path, n_units: int = N_UNITS, unit_seconds: float = 0.4) -> str:
    return f"slurm-selftest --out {out} --units {n_units} --unit-seconds {unit_seconds}"
    # quickstart: return f"run {ROOT / 'jobs' / 'quickstart.yaml'} --out {out}"


def result_values(out: Path) -> np.ndarray:
    import h5py
    from dmca_hpc.hpc.checkpoint import is_complete
    p = out / slurm.SELFTEST_STAGE / "result.h5"
    assert is_complete(p), f"{p} missing or not marked complete"
    with h5py.File(p, "r") as f:
        assert f["values"].attrs["units"] == "1"
        return f["values"][()]


def reference_values(n_units: int = N_UNITS, seed: int = 12345) -> np.ndarray:
    return np.array([slurm._selftest_value(seed, i) for i in range(n_units)])
# ---------------------------------------------------------------------------------


def write_job(path: Path, slurm_section: dict | None = None, **top) -> Path:
    import yaml
    job = {"name": "tiny", "materials": ["Si", "Ge"], **top}
    if slurm_section is not None:
        job["slurm"] = slurm_section
    path.write_text(yaml.safe_dump(job))
    return path


# =============================================================== no SLURM needed

def test_schema_fields_have_type_default_and_unit_description():
    schema = slurm.load_schema()
    assert schema["additionalProperties"] is False
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(schema)
    for name, prop in schema["properties"].items():
        assert {"type", "default", "description"} <= prop.keys(), name
        # the unit (or kind of value) is stated in brackets, e.g. "[s]", "[count]"
        assert "[" in prop["description"] and "]" in prop["description"], name
    # the defaults themselves are valid
    assert slurm.validate_settings({}) == slurm.defaults()


def test_bad_section_names_file_key_and_expectation(tmp_path):
    with pytest.raises(slurm.SlurmConfigError) as e:
        slurm.validate_settings({"time": "90 minutes"}, source="jobs/x.yaml")
    msg = str(e.value)
    assert "jobs/x.yaml" in msg and "slurm.time" in msg and "HH:MM:SS" in msg
    with pytest.raises(slurm.SlurmConfigError, match="slurm: Additional properties.*ntask"):
        slurm.validate_settings({"ntask": 4})
    with pytest.raises(slurm.SlurmConfigError, match="signal_before_s"):
        s = slurm.validate_settings({"time": "00:04:00", "signal_before_s": 300})
        slurm.render("run_stages", s, tmp_path / "j.yaml", tmp_path)


@pytest.mark.parametrize("template", slurm.TEMPLATES)
def test_templates_render_to_valid_bash(tmp_path, template):
    job = write_job(tmp_path / "job.yaml", {"partition": "short", "account": "dm-proj",
                                            "ntasks": 4, "cpus_per_task": 2,
                                            "setup": ["module load mpich"]})
    s = slurm.validate_settings(slurm.load_job(job)["slurm"])
    items = slurm.array_items(slurm.load_job(job), s) if template == "array" else None
    text = slurm.render(template, s, job, tmp_path / "out", items=items)
    assert not [ph for ph in slurm._PLACEHOLDERS if ph in text]
    for directive in ("--partition=short", "--account=dm-proj", "--ntasks=4",
                      "--cpus-per-task=2", "--signal=B:USR1@300", "--requeue"):
        assert f"#SBATCH {directive}" in text, directive
    # the traps of the issue: srun's cpus-per-task, per-rank threads, numba warmup
    for needle in ("export SRUN_CPUS_PER_TASK=", "export OMP_NUM_THREADS=", "export NUMBA_NUM_THREADS=",
                   "export OPENBLAS_NUM_THREADS=", "trap 'dmca_forward USR1' USR1",
                   "scontrol requeue", "module load mpich"):
        assert needle in text, needle
    if template != "oracle":
        assert "dmca_warmup" in text.split("# ---- end of common body ----")[1]
    if template == "array":
        assert "#SBATCH --array=0-1" in text and "DMCA_ITEMS=(Si Ge)" in text
    p = tmp_path / f"{template}.sbatch"
    p.write_text(text)
    r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # SBATCH lines must come before the first command, or sbatch ignores them
    lines = text.splitlines()
    first_cmd = next(i for i, l in enumerate(lines) if l.strip() and not l.startswith("#"))
    assert max(i for i, l in enumerate(lines) if l.startswith("#SBATCH")) < first_cmd


def test_submit_cli_overrides_job_file_and_reports_errors(tmp_path, capsys):
    job = write_job(tmp_path / "job.yaml", {"partition": "short", "time": "02:00:00"})
    rc = cli_main(["submit", str(job), "--dry-run", "--partition", "long", "--nodes", "2",
                     "--out", str(tmp_path / "o"), "--command", "run x.yaml --out '{out}'"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "#SBATCH --partition=long" in out and "#SBATCH --nodes=2" in out
    assert "#SBATCH --time=02:00:00" in out
    assert "DMCA_ARGS=(run x.yaml --out '{out}')" in out
    assert not (tmp_path / "o").exists(), "--dry-run must not write anything"
    rc = cli_main(["submit", str(job), "--dry-run", "--time", "1h"])
    err = capsys.readouterr().err
    assert rc == 2 and "command line: slurm.time" in err
    rc = cli_main(["submit", str(tmp_path / "nope.yaml"), "--dry-run"])
    assert rc == 2 and "nope.yaml not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("slurm:\n  nodes: two\n")
    rc = cli_main(["submit", str(bad), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "slurm.nodes" in err
    rc = cli_main(["submit", str(write_job(tmp_path / "nomat.yaml", materials=[])),
                     "--template", "array", "--dry-run"])
    assert rc == 2 and "array_items" in capsys.readouterr().err


def test_import_is_cheap():
    code = "import sys, dmca_hpc.slurm; bad = {'numpy', 'h5py', 'mpi4py', 'numba', 'pyscf', 'jsonschema'} & set(sys.modules); print(sorted(bad))"
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_stop_request_signal_and_file(tmp_path):
    old = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    try:
        stop = slurm.StopRequest.install(stop_file=tmp_path / "stop")
        assert not stop.requested
        (tmp_path / "stop").touch()
        assert stop.requested
        stop2 = slurm.StopRequest.install()
        assert not stop2.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert stop2.requested and stop2.signum == signal.SIGUSR1
    finally:
        signal.signal(signal.SIGUSR1, old[0])
        signal.signal(signal.SIGTERM, old[1])


def _interrupted_then_resumed(cmd_prefix: list[str], out: Path, n_units: int):
    """Start the self-test, SIGUSR1 it after 2 units, expect 99, rerun, expect 0."""
    args = ["-m", "dmca_hpc.cli.main", "slurm-selftest", "--out", str(out), "--units", str(n_units),
            "--unit-seconds", "0.3"]
    p = subprocess.Popen(cmd_prefix + [PY] + args, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    units = out / slurm.SELFTEST_STAGE / "units"
    t0 = time.monotonic()
    while len(list(units.glob("unit-*.h5"))) < 2:
        assert p.poll() is None and time.monotonic() - t0 < 60, "self-test ended before the signal"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGUSR1)  # the launcher (mpiexec) or the process itself
    _, err = p.communicate(timeout=60)
    assert p.returncode == slurm.EXIT_CHECKPOINTED, err
    n_first = len(list(units.glob("unit-*.h5")))
    assert 2 <= n_first < n_units
    r = subprocess.run(cmd_prefix + [PY] + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return n_first


def test_selftest_checkpoints_on_signal_and_resumes_serial(tmp_path):
    _interrupted_then_resumed([], tmp_path, 6)
    np.testing.assert_array_equal(result_values(tmp_path), reference_values(6))
    recs = [json.loads(l) for l in (tmp_path / "telemetry" / "telemetry.jsonl").read_text().splitlines()]
    assert sum(r["hpc"]["status"] == "ok" for r in recs) == 6


@pytest.mark.skipif(not MPIEXEC.exists(), reason=f"{MPIEXEC} not installed")
def test_selftest_checkpoints_on_signal_and_resumes_mpiexec(tmp_path):
    # hydra's mpiexec forwards SIGUSR1 to every rank: the batch script relies on it
    _interrupted_then_resumed([str(MPIEXEC), "-n", "2"], tmp_path, 8)
    vals = result_values(tmp_path)
    np.testing.assert_array_equal(vals, reference_values(8))
    # statistics nobody chose: each value is a chi-square sample with k = 4096
    # degrees of freedom (mean k, sd sqrt(2k) = 90.5); the mean of 8 is within
    # 5 sd of k unless the draws are broken.
    assert abs(vals.mean() - 4096) < 5 * np.sqrt(2 * 4096 / 8)


# =============================================================== real one-node SLURM

def _slurm_missing() -> str | None:
    for exe in ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "scontrol"):
        if shutil.which(exe) is None and shutil.which(exe, path="/usr/sbin:/sbin") is None:
            return f"{exe} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the local SLURM needs root (slurmd starts jobs as their owner)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM for this module; always stopped afterwards."""
    reason = _slurm_missing()
    if reason:
        print(f"SKIP SLURM tests: {reason}")
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm-cluster")
    script = ROOT / "slurm" / "local-cluster.sh"
    r = subprocess.run(["bash", str(script), "start", str(d)], capture_output=True, text=True, timeout=90)
    if r.returncode != 0:
        subprocess.run(["bash", str(script), "stop", str(d)], capture_output=True, timeout=60)
        reason = f"local SLURM did not start (exit {r.returncode}): {r.stderr.strip()[-500:]}"
        print(f"SKIP SLURM tests: {reason}")
        pytest.skip(reason)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(d / "slurm.conf")
    try:
        yield d
    finally:
        subprocess.run(["scancel", "--full", "--user", str(os.getuid())], capture_output=True, timeout=30)
        subprocess.run(["bash", str(script), "stop", str(d)], capture_output=True, timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _job_field(jid: str, field: str) -> str:
    r = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True)
    for tok in r.stdout.split():
        if tok.startswith(field + "="):
            return tok.split("=", 1)[1]
    return ""


def _submit(job: Path, out: Path, *extra: str, command: str | None = None) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "dmca_hpc.cli.main", "submit", str(job), "--out", str(out),
           "--command", command or WORKLOAD(out)] + list(extra)
    if ENTRY:
        cmd += ["--entry", ENTRY]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        # never leave a job (or a waiting sbatch) behind on a timeout
        subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True, timeout=30)
        raise


def _log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "slurm").glob("*.out")))


def test_sbatch_wait_runs_job_with_outputs_and_telemetry(cluster, tmp_path):
    job = write_job(tmp_path / "job.yaml", {"ntasks": 2, "time": "00:10:00", "signal_before_s": 60})
    out = tmp_path / "out"
    r = _submit(job, out, "--wait")
    assert r.returncode == 0, r.stderr + _log(out)
    jid = r.stdout.strip()
    np.testing.assert_array_equal(result_values(out), reference_values())
    recs = [json.loads(l) for l in (out / "telemetry" / "telemetry.jsonl").read_text().splitlines()]
    assert len(recs) == N_UNITS and all(x["hpc"]["status"] == "ok" for x in recs)
    assert {x["hpc"]["job_id"] for x in recs} == {jid}
    assert {x["hpc"]["rank"] for x in recs} == {0, 1}, "both ranks of the job should have worked"
    log = _log(out)
    assert "2 ranks x 1 threads via mpiexec" in log and "exit code 0" in log
    assert _job_field(jid, "JobState") == "COMPLETED"


def test_presignal_checkpoints_requeues_and_resumes_to_same_result(cluster, tmp_path):
    job = write_job(tmp_path / "job.yaml", {"ntasks": 2, "time": "00:10:00", "signal_before_s": 60})
    out = tmp_path / "out"
    n = 12
    r = _submit(job, out, command=WORKLOAD(out, n_units=n, unit_seconds=0.5))
    assert r.returncode == 0, r.stderr
    jid = r.stdout.strip()
    units = out / slurm.SELFTEST_STAGE / "units"
    t0 = time.monotonic()
    while len(list(units.glob("unit-*.h5"))) < 2:
        assert time.monotonic() - t0 < 60, "job did not start working:\n" + _log(out)
        time.sleep(0.1)
    # what --signal=B:USR1@N does at N seconds before the limit, now
    subprocess.run(["scancel", "--signal=USR1", "--batch", jid], check=True)
    t0 = time.monotonic()
    while _job_field(jid, "Restarts") != "1" or _job_field(jid, "JobState") != "PENDING":
        assert time.monotonic() - t0 < 60, f"job not requeued: {_job_field(jid, 'JobState')}\n" + _log(out)
        time.sleep(0.2)
    # slurmctld holds a requeued batch job ~2 minutes (BeginTime) so the node can
    # clean up the old run; release it early, but only once the node is idle
    # again (releasing it while the node still completes the old run makes the
    # relaunch fail)
    t0 = time.monotonic()
    while subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                         text=True).stdout.strip() != "idle":
        assert time.monotonic() - t0 < 60, "node did not become idle after the requeue"
        time.sleep(0.2)
    time.sleep(1.0)
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)
    t0 = time.monotonic()
    while _job_field(jid, "JobState") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() - t0 < 90, "requeued job did not finish:\n" + _log(out)
        time.sleep(0.2)
    log = _log(out)
    assert _job_field(jid, "JobState") == "COMPLETED", log
    assert "received SIGUSR1" in log and "checkpointed; requeueing" in log
    # the same result as an uninterrupted run, with work from both runs kept
    np.testing.assert_array_equal(result_values(out), reference_values(n))
    import h5py
    restarts = []
    for p in sorted(units.glob("unit-*.h5")):
        with h5py.File(p, "r") as f:
            restarts.append(int(f.attrs["restart_count"]))
    assert 0 in restarts and 1 in restarts, restarts
    assert sum(x == 0 for x in restarts) >= 2, "units done before the signal were recomputed"


def test_job_array_with_srun_launcher(cluster, tmp_path):
    job = write_job(tmp_path / "job.yaml", {"ntasks": 1, "time": "00:05:00", "signal_before_s": 60,
                                            "launcher": "srun", "array_items": ["a", "b"]})
    out = tmp_path / "out"
    r = _submit(job, out, "--template", "array", "--wait",
                command="slurm-selftest --out {out} --units 2 --unit-seconds 0")
    assert r.returncode == 0, r.stderr + _log(out)
    for item in ("a", "b"):
        np.testing.assert_array_equal(result_values(out / item), reference_values(2))
    log = _log(out)
    assert "item 'a'" in log and "item 'b'" in log and "via srun" in log


@pytest.mark.parametrize("ntasks", [1, 2])
def test_sbatch_wait_quickstart(cluster, tmp_path, ntasks):
    """The README's main job, as users submit it: the rendered run_stages
    template running the installed `dmca-hpc run jobs/quickstart.yaml`."""
    out = tmp_path / "out"
    cmd = [str(VENV_BIN / "dmca-hpc"), "submit", str(ROOT / "jobs" / "quickstart.yaml"), "--out", str(out),
           "--ntasks", str(ntasks), "--time", "00:10:00", "--signal-before", "60", "--wait"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + _log(out)
    jid = r.stdout.strip()
    run = json.loads((out / "run.json").read_text())
    assert run, "run.json is empty"
    assert any((out / "Si" / "materials").glob("*.h5"))
    recs = [json.loads(l) for l in (out / "telemetry" / "telemetry.jsonl").read_text().splitlines()]
    assert recs and {x["hpc"]["job_id"] for x in recs if "hpc" in x} == {jid}
    assert "exit code 0" in _log(out)
