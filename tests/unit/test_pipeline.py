"""The stage runner: order, outputs, skip-if-current, failure isolation."""
import json
import sys
import types

import h5py
import pytest

from conftest import run_cli
from dmca_hpc import pipeline
from dmca_hpc.config import load_job


def write_job(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return load_job(p)


def test_materials_stage_outputs_and_skip(tmp_path):
    job = write_job(tmp_path, "name: t\nmaterials: [Si, CsI]\nstages: [materials]\n")
    lines = []
    s = pipeline.run_job(job, tmp_path / "out", log=lines.append)
    assert s["failed"] == 0
    h5 = tmp_path / "out" / "CsI" / "materials" / "material.h5"
    with h5py.File(h5) as f:
        assert f.attrs["complete"] and f["cell"].attrs["units"] == "angstrom"
        assert f["gap_ev"][()] == pytest.approx(6.2)
        assert json.loads(f.attrs["provenance"])["package_version"]
    tel = (tmp_path / "out" / "telemetry" / "telemetry.jsonl").read_text().splitlines()
    assert len(tel) == 2 and all(json.loads(l)["hpc"]["status"] == "ok" for l in tel)
    # unchanged inputs: both stages are current and skipped
    lines.clear()
    s2 = pipeline.run_job(job, tmp_path / "out", log=lines.append)
    assert [r["status"] for r in s2["stages"].values()] == ["current", "current"]
    # a changed input re-runs only what depends on it (the seed feeds every stage)
    job["seed"] = 1
    s3 = pipeline.run_job(job, tmp_path / "out", log=lines.append)
    assert [r["status"] for r in s3["stages"].values()] == ["ok", "ok"]


def test_one_failed_stage_does_not_stop_the_others(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("fake_dft")

    def run_stage(ctx):
        calls.append(ctx.material.name)
        if ctx.material.name == "Ge":
            raise RuntimeError("SCF exploded")
        out = ctx.stage_dir / "x.txt"
        out.write_text("ok")
        return {"x": str(out)}

    fake.run_stage = run_stage
    monkeypatch.setitem(sys.modules, "fake_dft", fake)
    import dataclasses
    from dmca_hpc.stages import registry
    for st in ("dft", "bands"):
        monkeypatch.setitem(registry._BY_NAME, st, dataclasses.replace(registry.get(st), module="fake_dft"))
    job = write_job(tmp_path, "name: t\nmaterials: [Ge, Si]\nstages: [materials, dft, bands]\n")
    # bands' own section may have required keys in its schema: the fake ignores it
    s = pipeline.run_job(job, tmp_path / "out", log=lambda *a: None)
    st = s["stages"]
    assert st["Ge/dft"]["status"] == "failed" and "SCF exploded" in st["Ge/dft"]["error"]
    assert st["Ge/bands"]["status"] == "skipped"
    assert st["Si/dft"]["status"] == "ok" and st["Si/bands"]["status"] == "ok"
    assert (tmp_path / "out" / "Ge" / "dft" / "error.txt").read_text().count("SCF exploded")
    tel = [json.loads(l) for l in (tmp_path / "out" / "telemetry" / "telemetry.jsonl").read_text().splitlines()]
    assert any(r["hpc"]["status"] == "failed" and "SCF exploded" in r["hpc"]["error"] for r in tel)


def test_run_cli_prints_where_things_are(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nmaterials: [C]\nstages: [materials]\n")
    r = run_cli("run", job, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr + r.stdout
    for word in ("results:", "telemetry:", "run:"):
        assert word in r.stdout
    assert (tmp_path / "o" / "run.json").exists() and (tmp_path / "o" / "provenance.json").exists()


def test_preemption_signal_exits_99(tmp_path):
    import os
    import signal
    import subprocess
    code = ("import time; from dmca_hpc.pipeline import install_preemption_handler as h; h(); "
            "print('ready', flush=True); time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGUSR1)
    assert p.wait(timeout=10) == 99
    assert "checkpointed" in p.stderr.read()
