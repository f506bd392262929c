"""Shared helpers of the oracle unit tests: the fake pw.x of tests/fake_pw
(it prints the error texts of QE 6.7 and replays a real Si output once the
input carries the expected correction), a Si cell and a pseudo directory."""
from pathlib import Path

import pytest

from dmca_hpc.oracle import pwx

TESTS = Path(__file__).resolve().parents[2]  # tests/
ROOT = TESTS.parent
FAKE = TESTS / "fake_pw" / "pw.x"
SI_OK = (TESTS / "fake_pw" / "si_ok.out").read_text()


def si():
    from ase.build import bulk
    # the structure of tests/fake_pw/si_ok.out (real pw.x 6.7 output)
    return bulk("Si", "diamond", a=5.431)


@pytest.fixture
def pseudo_dir(tmp_path):
    """A pseudo directory with a placeholder Si UPF: the fake pw.x never
    reads it, and the oracle only checks that it exists."""
    d = tmp_path / "pseudo"
    d.mkdir()
    (d / "Si.pbe-rrkj.UPF").write_text("<UPF version=\"2.0.1\"></UPF>\n")
    return d


def fake_settings(pseudo_dir, **kw):
    base = {"pw": str(FAKE), "pseudo_dir": str(pseudo_dir), "ecutwfc": 14.0, "kspacing": 0.7,
            "timeout_s": 20.0, "max_attempts": 6}
    base.update(kw)
    return pwx.settings_from(base)


def run_fake(monkeypatch, tmp_path, pseudo_dir, scenario, atoms=None, **kw):
    monkeypatch.setenv("FAKE_PW_SCENARIO", scenario)
    return pwx.run_candidate(atoms if atoms is not None else si(),
                             fake_settings(pseudo_dir, **kw), tmp_path / "cand", scenario)
