"""dmca_hpc.oracle.batch (serial) with checkpoints, its per-candidate
report, the pipeline stage (dmca_hpc.stages.oracle) and ``dmca-hpc oracle``,
all against the fake pw.x."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_cli
from dmca_hpc.oracle import batch
from oracle_fake import FAKE, ROOT, fake_settings, pseudo_dir, si  # noqa: F401


def test_serial_batch_checkpoint_and_outputs(monkeypatch, tmp_path, pseudo_dir):
    import h5py
    monkeypatch.setenv("FAKE_PW_SCENARIO", "ok")
    bad = si()
    bad.positions[1] = bad.positions[0]
    sn = si()
    sn.symbols[0] = "Sn"
    cands = [si(), bad, si(), sn]
    s = fake_settings(pseudo_dir)
    out = tmp_path / "batch"
    reports = []
    paths = batch.run_batch(cands, s, out, record=lambda *a, **k: reports.append((a, k)))
    from ase.io import read
    frames = read(paths["results_extxyz"], index=":")
    assert [f.info["index"] for f in frames] == [0, 2]
    fails = json.loads(Path(paths["failures"]).read_text())
    assert [(f["index"], f["error_class"]) for f in fails] == [(1, "impossible_structure"),
                                                              (3, "missing_pseudopotential")]
    with h5py.File(paths["results_h5"]) as f:
        for name, ds in f.items():
            assert "units" in ds.attrs, name
        assert f["success"][()].tolist() == [True, False, True, False]
        assert f["energy"].attrs["units"] == "eV" and np.isnan(f["energy"][1])
        assert f.attrs["complete"] and f.attrs["stage"] == "oracle"
    # one report per candidate: (unit, status, wall_s, cpu_s, peak_mem_mb), error, physics
    assert sorted((a[0], a[1]) for a, _ in reports) == [
        ("cand-0000000", "ok"), ("cand-0000001", "failed"), ("cand-0000002", "ok"),
        ("cand-0000003", "failed")]
    for a, k in reports:
        assert len(a) == 5 and set(k) == {"error", "physics"}
        assert k["physics"]["attempts"] == (1 if a[0] in ("cand-0000000", "cand-0000002") else 0)
    # restart: nothing is recomputed (the checkpoint files are untouched), skips are reported
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "candidates").iterdir()}
    monkeypatch.setenv("FAKE_PW_SCENARIO", "unknown_error")  # would fail any new run
    reports.clear()
    batch.run_batch(cands, s, out, record=lambda *a, **k: reports.append((a, k)))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "candidates").iterdir()} == stamps
    assert {a[1] for a, _ in reports} == {"skipped"} and len(reports) == 4
    # a changed structure redoes that candidate only
    cands[2] = si()
    cands[2].positions[1] += [0.001, 0, 0]
    batch.run_batch(cands, s, out)
    new = {p.name: p.stat().st_mtime_ns for p in (out / "candidates").iterdir()}
    assert [k for k in new if new[k] != stamps[k]] == ["cand-0000002.json"]


def test_stage_records_each_candidate(monkeypatch, tmp_path, pseudo_dir):
    """The stage reads oracle.structures relative to the job file, labels
    per material, and sends one telemetry record of stage 'oracle' per candidate."""
    from ase.io import write
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry
    from dmca_hpc.stages import oracle as stage
    monkeypatch.setenv("FAKE_PW_SCENARIO", "ok")
    monkeypatch.setenv("DMCA_HPC_MPI", "0")
    write(tmp_path / "c.extxyz", [si(), si()])
    job = {"_job_dir": str(tmp_path), "oracle": {
        "structures": "c.extxyz", "pw": str(FAKE), "pseudo_dir": str(pseudo_dir),
        "ecutwfc": 14.0, "kspacing": 0.7, "timeout_s": 20.0}}
    tel = Telemetry(tmp_path / "tel", rank=0)
    ctx = SimpleNamespace(name="oracle", job=job, material=SimpleNamespace(name="Si"),
                          stage_dir=tmp_path / "stage", input_hash="h", outputs={},
                          comm=get_comm(), telemetry=tel, prov={}, seed=1, run_dir=tmp_path)
    paths = stage.run_stage(ctx)
    assert set(paths) == {"results_extxyz", "results_h5", "failures"}
    recs = [json.loads(x) for f in sorted((tmp_path / "tel").glob("*.jsonl"))
            for x in f.read_text().splitlines()]
    assert sorted(r["hpc"]["unit"] for r in recs) == ["Si/cand-0000000", "Si/cand-0000001"]
    assert all(r["hpc"]["stage"] == "oracle" and r["hpc"]["status"] == "ok" for r in recs)
    assert all(r["physics"]["material"] == "Si" for r in recs)


def test_cli_exit_codes(tmp_path, pseudo_dir):
    from ase.io import write
    bad = si()
    bad.positions[1] = bad.positions[0]
    write(tmp_path / "c.extxyz", [si(), bad])
    env = {"FAKE_PW_SCENARIO": "ok", "DMCA_HPC_MPI": "0"}
    args = ["oracle", "--structures", tmp_path / "c.extxyz", "--pseudo-dir", pseudo_dir,
            "--out", tmp_path / "o", "--ecutwfc", "14", "--kspacing", "0.7"]
    r = run_cli(*args, "--pw", FAKE, env=env, timeout=120)
    assert r.returncode == 1, r.stderr  # a failed candidate: exit 1, finished labels kept
    summary = json.loads(r.stdout)
    assert summary["candidates"] == 2 and summary["failed"] == 1
    tel = [json.loads(x)
           for x in (tmp_path / "o" / "telemetry" / "telemetry.jsonl").read_text().splitlines()]
    assert len(tel) == 2 and {t["hpc"]["status"] for t in tel} == {"ok", "failed"}
    assert all(t["hpc"]["stage"] == "oracle" and "attempts" in t["physics"] for t in tel)
    assert {t["domain"] for t in tel} == {"dft-oracle"}
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "config" / "telemetry.schema.json").read_text())
    for t in tel:
        jsonschema.validate(t, schema)
    r = run_cli(*args, "--pw", "pw.x", env=env, timeout=60)
    assert r.returncode == 2 and "not an absolute path" in r.stderr
    r = run_cli(*args, "--pw", FAKE, "--pseudo", "Si", env=env, timeout=60)
    assert r.returncode == 2 and "expected EL=FILE" in r.stderr
