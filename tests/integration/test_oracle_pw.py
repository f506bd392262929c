"""Oracle against the real pw.x (Debian quantum-espresso 6.7, /usr/bin/pw.x)
with the PBE norm-conserving Si.pbe-rrkj.UPF of quantum-espresso-data.

Kept tiny (2- and 4-atom Si cells, ecutwfc 14 Ry, kspacing 0.7 1/A):
these tests check the runner, the units and the physics identities (zero
forces by symmetry, Newton's third law, F = -dE/dx), not converged numbers.
"""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from dmca_hpc.oracle import bandgap, pwx
from dmca_hpc.units import RYDBERG_EV

PW = "/usr/bin/pw.x"
PSEUDO_DIR = "/usr/share/espresso/pseudo"
UPF = "Si.pbe-rrkj.UPF"

pytestmark = [
    pytest.mark.skipif(not os.access(PW, os.X_OK),
                       reason=f"real pw.x not found at {PW} (apt-get install quantum-espresso)"),
    pytest.mark.skipif(not os.path.isfile(os.path.join(PSEUDO_DIR, UPF)),
                       reason=f"{UPF} not in {PSEUDO_DIR} (apt-get install quantum-espresso-data)"),
]


def settings(**kw):
    base = {"pw": PW, "pseudo_dir": PSEUDO_DIR, "pseudopotentials": {"Si": UPF},
            "ecutwfc": 14.0, "kspacing": 0.7, "conv_thr_per_atom": 1e-10, "timeout_s": 120.0}
    base.update(kw)
    return pwx.settings_from(base)


def si():
    from dmca_hpc.materials import get_material
    return get_material("Si").atoms()


@pytest.fixture(scope="module")
def rattled():
    a = si().repeat((2, 1, 1))
    rng = np.random.default_rng(20261123)
    a.positions += rng.normal(0.0, 0.08, a.positions.shape)
    return a


@pytest.fixture(scope="module")
def rattled_result(rattled, tmp_path_factory):
    res = pwx.run_candidate(rattled, settings(), tmp_path_factory.mktemp("r") / "c", "rattled")
    assert res.success, res.error
    return res


def test_si_primitive_energy_forces_stress(tmp_path):
    res = pwx.run_candidate(si(), settings(), tmp_path / "c", "si")
    assert res.success, res.error
    assert res.meta["n_attempts"] == 1 and res.meta["corrections"] == []
    out = (Path(res.meta["attempts"][0]["directory"]) / "pw.out").read_text()
    # energy: the '!' line in Ry times the CODATA Rydberg from dmca_hpc.units
    e_ry = float(re.search(r"!\s+total energy\s+=\s+(-?\d+\.\d+) Ry", out).group(1))
    assert res.energy_ev == pytest.approx(e_ry * RYDBERG_EV, abs=2e-5)  # 8-decimal Ry print
    # forces vanish by the diamond structure's inversion symmetry
    assert np.abs(res.forces_ev_per_angstrom).max() < 1e-5
    # stress: cubic symmetry -> isotropic; sign and units against pw.x's own kbar print
    s = res.stress_ev_per_angstrom3
    assert np.allclose(s, s[0, 0] * np.eye(3), atol=1e-7)
    p_kbar = float(re.search(r"P=\s*(-?\d+\.\d+)", out).group(1))
    ev_a3_in_kbar = 1.602176634e-19 / 1e-30 / 1e8  # 1 eV/A^3 = 1602.18 kbar (exact SI)
    assert s[0, 0] == pytest.approx(-p_kbar / ev_a3_in_kbar, rel=1e-3)
    # PBE's Si lattice constant (~5.47 A) exceeds the experimental 5.431 A, so the
    # experimental cell is compressed: positive pressure, negative (ASE) stress
    assert s[0, 0] < 0


def test_rattled_supercell_forces_sum_to_zero(rattled_result):
    f = rattled_result.forces_ev_per_angstrom
    assert np.abs(f).max() > 0.05                        # really displaced
    assert np.abs(f.sum(axis=0)).max() < 1e-4           # Newton's third law
    s = rattled_result.stress_ev_per_angstrom3
    assert np.allclose(s, s.T, atol=1e-8)


def test_forces_match_finite_difference(rattled, rattled_result, tmp_path):
    """F_x(atom 1) = -dE/dx by central differences, h = 0.01 A.

    Plane waves do not depend on atomic positions, so no Pulay term: the two
    agree up to the O(h^2) difference error and SCF noise (conv_thr 1e-10
    Ry/atom); 1e-3 eV/A is the issue's tolerance."""
    h = 0.01
    es = []
    for sign in (+1, -1):
        a = rattled.copy()
        a.positions[1, 0] += sign * h
        r = pwx.run_candidate(a, settings(), tmp_path / f"d{sign}", "fd")
        assert r.success, r.error
        assert r.meta["kpts"] == rattled_result.meta["kpts"]
        es.append(r.energy_ev)
    fd = -(es[0] - es[1]) / (2 * h)
    assert fd == pytest.approx(rattled_result.forces_ev_per_angstrom[1, 0], abs=1e-3)


def test_ladder_rescues_real_nonconverging_scf(rattled, rattled_result, tmp_path):
    """mixing_beta far too large (1.0) and electron_maxstep too small (8) on a
    distorted cell: pw.x really stops with 'convergence NOT achieved'; the
    ladder lowers beta and restarts from the last charge density until it
    converges, to the energy of the plain run."""
    s = settings(mixing_beta=1.0, electron_maxstep=8)
    res = pwx.run_candidate(rattled, s, tmp_path / "c", "hard")
    assert res.success, res.error
    first = res.meta["attempts"][0]
    assert first["error_class"] == "scf_unconverged"
    assert "convergence NOT achieved" in first["message"]
    corr = res.meta["corrections"]
    assert corr and corr[0]["handler"] == "ScfConvergenceHandler"
    assert {"dict": "electrons", "action": {"_set": {"mixing_beta": 0.7}}} in corr[0]["actions"]
    assert res.meta["attempts"][1]["restarted_from"] == "charge_density"
    assert res.meta["attempts"][1]["parameters"]["electrons"]["startingpot"] == "file"
    log = json.loads((tmp_path / "c" / "corrections.json").read_text())
    assert log["success"] and len(log["corrections"]) == len(corr)
    # same physics as the run without trouble: both converged to conv_thr
    # 4e-10 Ry; 1e-4 eV allows for the restart's different SCF path
    assert res.energy_ev == pytest.approx(rattled_result.energy_ev, abs=1e-4)
    assert np.allclose(res.forces_ev_per_angstrom, rattled_result.forces_ev_per_angstrom, atol=1e-3)


def test_pw_pbe_band_gap_of_si(tmp_path):
    """Kohn-Sham PBE gap of Si: the literature value is about 0.6 eV (semilocal
    functionals give 0.5-0.7 eV at the experimental lattice constant), about
    half the experimental 1.17 eV -- the reason the package applies a scissor
    (physics.md).  Indirect: the direct gap at Gamma is ~2.5 eV."""
    atoms = si()
    g = bandgap.pw_band_gap(atoms, settings(ecutwfc=16.0, kspacing=0.6), tmp_path / "gap",
                            nbnd=8, line_points=30)
    assert 0.45 < g["gap_ev"] < 0.75
    assert g["direct_gap_ev"] > 2.0
    assert g["n_valence"] == 4
    # both runs went through the runner's ladder: attempt directories and correction logs
    for run in ("scf", "bands"):
        log = json.loads((tmp_path / "gap" / run / "corrections.json").read_text())
        assert log["success"] is True and log["attempts"][0]["directory"].endswith("attempt-01")
    bands_attempt = json.loads((tmp_path / "gap" / "bands" / "corrections.json").read_text())
    assert bands_attempt["attempts"][0]["restarted_from"] == "charge_density"


def test_cross_check_gap_with_pyscf_stage(tmp_path):
    """PBE band gap of Si: pw.x (norm-conserving Si.pbe-rrkj.UPF, plane waves)
    vs the PySCF stage (GTH pseudopotential, gth-dzvp Gaussians) within
    0.15 eV (the issue's tolerance: different pseudopotentials and bases)."""
    dft = pytest.importorskip("dmca_hpc.electronic.scf", reason="dmca_hpc.electronic.scf (the PySCF stage) is not "
                              "written yet; the lead hooks this cross-check up")
    fn = getattr(dft, "pbe_band_gap_ev", None)
    if fn is None:
        pytest.skip("dmca_hpc.electronic.scf has no pbe_band_gap_ev(material_name) -> float [eV]; "
                    "the lead wires the PySCF gap here")
    pw_gap = bandgap.si_pbe_band_gap_ev(tmp_path / "gap", ecutwfc=20.0)
    assert abs(fn("Si") - pw_gap) < 0.15
