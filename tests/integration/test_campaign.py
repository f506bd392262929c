"""``jobs/campaign.sh``: a real (tiny) campaign and its causal report.

``CAMPAIGN_QUICK=1`` makes the script run 4 steps (basis {gth-szv, gth-dzv}
x ranks {1, 2}, stages [materials, dft]: Si gth-szv/dzv on the quickstart's
2x2x2 SCF mesh) under the package's ``mpiexec`` and then the basis report,
``dmca-hpc causal ... --treatment basis --outcome cost``.  Checked: every step
carries its own intervention label and the job id the script set
(``--set telemetry.job_id``, recorded in the step's job.yaml), ran on the rank
count its label names, and every record says that count (``hpc.nranks``, which
``causal`` reads as ``ranks`` although only rank 0 records units here); the report has an estimate with its interval and the three
refutations, and that estimate equals the difference of the mean cost per
unit of the two bases computed here from the raw telemetry lines (the
campaign is balanced, so the adjusted and the raw contrast coincide); a second
run of the script starts no step (telemetry unchanged, run.json untouched).
About 40 s on 2 loaded cores for both runs.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import launcher_env, require_mpiexec
from dmca_hpc.hpc.parallel import launched_by_mpi
from dmca_hpc.monitoring.causal import read_records

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "jobs" / "campaign.sh"
STEPS = {f"{b}_k4x4x4_r{n}": (b, n) for b in ("gth-szv", "gth-dzv") for n in (1, 2)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(launched_by_mpi(), reason="starts its own mpiexec; run with plain pytest"),
]


def _run(out: Path) -> subprocess.CompletedProcess:
    # the campaign's own SLURM_/CAMPAIGN_ switches must not leak in either
    env = {k: v for k, v in launcher_env().items() if not k.startswith(("SLURM_", "CAMPAIGN_"))}
    env.update(CAMPAIGN_QUICK="1", CAMPAIGN_PYTHON=sys.executable, DMCA_MPIEXEC=require_mpiexec(),
               DMCA_LAUNCHER="mpiexec")
    r = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _records(step_dir: Path) -> list[dict]:
    lines = (step_dir / "telemetry" / "telemetry.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _telemetry_lines(out: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in sorted(out.glob("*/telemetry/*.jsonl")))


def test_quick_campaign_reports_basis_effect_and_resumes(tmp_path):
    out = tmp_path / "campaign"
    first = _run(out)

    cost = {"gth-szv": [], "gth-dzv": []}
    job_ids = set()
    for step, (basis, nranks) in STEPS.items():
        d = out / step
        assert (d / "campaign_step.txt").is_file(), first.stdout
        recs = _records(d)
        assert {r["hpc"]["stage"] for r in recs} == {"materials", "dft"}
        assert {r["intervention"] for r in recs} == {f"basis={basis},kmesh=4x4x4,ranks={nranks}"}
        assert {r["step"] for r in recs} == {step}
        ids = {r["hpc"]["job_id"] for r in recs}
        assert ids == {f"campaign-{step}"}, ids  # the workstation's id (no SLURM_JOB_ID)
        assert yaml.safe_load((d / "job.yaml").read_text())["telemetry"]["job_id"] == f"campaign-{step}"
        job_ids |= ids
        # the launcher really started the rank count the label claims, and the records say so
        assert json.loads((d / "provenance.json").read_text())["nranks"] == nranks
        assert {r["hpc"]["rank"] for r in recs} == {0}
        assert {r["hpc"]["nranks"] for r in recs} == {nranks}
        cost[basis] += [r["infra_cost_usd"] for r in recs]
    assert len(job_ids) == len(STEPS), f"steps share a job id: {job_ids}"
    rows, _ = read_records(sorted(out.glob("*/telemetry")))
    assert {(r["intervention.ranks"], r["ranks"]) for r in rows} == {("1", 1.0), ("2", 2.0)}

    rep = json.loads((out / "causal_basis.json").read_text())
    assert rep["identifiable"] is True
    assert rep["treatment"] == "intervention.basis" and rep["outcome"] == "infra_cost_usd"
    assert rep["reference"] == "gth-szv" and rep["n"] == 8
    assert "hpc.stage" in rep["adjust"]
    (eff,) = rep["effects"]
    assert eff["term"] == "intervention.basis=gth-dzv"
    lo, hi = eff["ci95"]
    assert lo <= eff["estimate"] <= hi and eff["se_hc3"] > 0
    # balanced 2 x 2 design with the other factors adjusted for: the OLS
    # coefficient is the plain difference of the two bases' mean cost per record
    raw = sum(cost["gth-dzv"]) / len(cost["gth-dzv"]) - sum(cost["gth-szv"]) / len(cost["gth-szv"])
    assert eff["estimate"] == pytest.approx(raw, rel=1e-9, abs=1e-15)
    for name in ("placebo_treatment", "random_common_cause", "data_subset"):
        (ref,) = rep["refutations"][name]
        assert ref["term"] == eff["term"] and isinstance(ref["passed"], bool)
    for suffix in ("md", "png"):
        assert (out / f"causal_basis.{suffix}").stat().st_size > 0
    summary = json.loads((out / "campaign_summary.json").read_text())
    assert summary["records"] == 8
    assert "intervention.basis=gth-dzv" in (out / "campaign.md").read_text()

    # a rerun starts nothing: no new telemetry, the runs' files untouched, reports remade
    n_lines = _telemetry_lines(out)
    stamps = {s: (out / s / "run.json").stat().st_mtime_ns for s in STEPS}
    second = _run(out)
    assert second.stdout.count("done before, skipped") == len(STEPS), second.stdout
    assert "rank(s) ..." not in second.stdout
    assert _telemetry_lines(out) == n_lines
    assert {s: (out / s / "run.json").stat().st_mtime_ns for s in STEPS} == stamps
    assert json.loads((out / "causal_basis.json").read_text())["effects"][0]["estimate"] == eff["estimate"]
