"""dmca_hpc.oracle.candidates: reading and generating candidates, their
hash, and the one-file-per-candidate checkpoint store."""
import numpy as np
import pytest

from dmca_hpc.oracle import candidates as cands
from dmca_hpc.oracle import pwx
from oracle_fake import fake_settings, pseudo_dir, si  # noqa: F401


def test_generated_candidates_are_deterministic():
    g = {"supercell": [2, 1, 1], "n_rattled": 2, "rattle_stdev_angstrom": 0.05, "strains": [0.02]}
    a1 = cands.generate_candidates(si(), g, seed=7)
    a2 = cands.generate_candidates(si(), g, seed=7)
    a3 = cands.generate_candidates(si(), g, seed=8)
    assert len(a1) == 1 + 2 + 2
    for x, y in zip(a1, a2):
        assert np.array_equal(x.positions, y.positions) and np.array_equal(x.cell, y.cell)
    assert not np.allclose(a1[1].positions, a3[1].positions)
    assert len(a1[1]) == 4
    assert np.isclose(a1[3].get_volume(), si().get_volume() * 1.02 ** 3)
    # the defaults fill what the section leaves out
    assert len(cands.generate_candidates(si(), {}, seed=7)) == 1 + 4 + 2 * 2


def test_read_candidates_errors_name_the_file(tmp_path):
    with pytest.raises(pwx.OracleSetupError, match="does not exist"):
        cands.read_candidates(tmp_path / "none.extxyz")
    bad = tmp_path / "bad.extxyz"
    bad.write_text("not a structure\n")
    with pytest.raises(pwx.OracleSetupError, match="bad.extxyz"):
        cands.read_candidates(bad)
    from ase.io import write
    write(tmp_path / "two.extxyz", [si(), si()])
    assert len(cands.read_candidates(tmp_path / "two.extxyz")) == 2


def test_hash_ignores_operational_settings(pseudo_dir):
    s = fake_settings(pseudo_dir)
    h = cands.candidate_hash(si(), s)
    assert cands.candidate_hash(si(), {**s, "timeout_s": 9.0, "max_attempts": 2}) == h
    assert cands.candidate_hash(si(), {**s, "ecutwfc": 15.0}) != h
    moved = si()
    moved.positions[1] += [0.001, 0, 0]
    assert cands.candidate_hash(moved, s) != h
    # a changed pseudopotential file redoes the candidate
    (pseudo_dir / "Si.pbe-rrkj.UPF").write_text("<UPF version=\"2.0.1\">changed</UPF>\n")
    assert cands.candidate_hash(si(), s) != h


def test_store_roundtrip_and_stale_hash(tmp_path):
    store = cands.CandidateStore(tmp_path / "c")
    res = pwx.DFTResult(si(), success=False, error="x", error_class="timeout")
    p = store.save(3, "cand-0000003", "abc", res)
    assert p.name == "cand-0000003.json"
    d = store.load(3, "abc")
    assert d["label"] == "cand-0000003" and d["result"]["error_class"] == "timeout"
    assert store.load(3, "other") is None and store.load(4) is None
    p.write_text("{truncated")
    assert store.load(3) is None
