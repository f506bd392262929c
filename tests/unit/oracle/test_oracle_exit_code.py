"""``dmca-hpc oracle`` exit codes (issue #17, README "Exit codes"): 0 when
every candidate is labelled, 1 when some failed (the labelled ones and the
failure list are kept), against the fake pw.x."""
import json

from conftest import run_cli
from oracle_fake import FAKE, pseudo_dir, si  # noqa: F401


def test_failed_candidates_exit_1_and_keep_the_others(tmp_path, pseudo_dir):
    from ase.io import write
    bad = si()
    bad.positions[1] = bad.positions[0]  # overlapping atoms: fails before pw.x
    env = {"FAKE_PW_SCENARIO": "ok", "DMCA_HPC_MPI": "0"}
    common = ["--pseudo-dir", pseudo_dir, "--ecutwfc", "14", "--kspacing", "0.7", "--pw", FAKE]
    write(tmp_path / "mixed.extxyz", [si(), bad])
    r = run_cli("oracle", "--structures", tmp_path / "mixed.extxyz", "--out", tmp_path / "o", *common,
                env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert summary["candidates"] == 2 and summary["failed"] == 1
    assert len(json.loads((tmp_path / "o" / "failures.json").read_text())) == 1
    write(tmp_path / "good.extxyz", [si()])
    r = run_cli("oracle", "--structures", tmp_path / "good.extxyz", "--out", tmp_path / "o2", *common,
                env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["failed"] == 0
