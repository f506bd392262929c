"""The form-factor tables shipped as package data (produced by jobs/*_reference.yaml)."""
import json

import numpy as np
from pathlib import Path

import pytest

from conftest import run_cli
from dmca_hpc.materials import get_material
from dmca_hpc.tables import read_table, table_for_material

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "dmca_hpc" / "data" / "tables").glob("*.hdf5"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_table_is_production_quality(path):
    # issue 4: at least a 6x6x6 mesh, conduction bands to >= 25 eV above the
    # gap, the physics.md binning, scissored to the library's gap
    t = read_table(path)
    m = t.metadata
    assert min(m["kmesh"]) >= 6
    assert m["e_complete_ev"] - t.gap_ev >= 25.0
    assert t.f2.shape == (1000, 500) and t.dq_ame == pytest.approx(0.02) and t.de_ev == pytest.approx(0.1)
    mat = get_material(t.material)  # Si_gth.hdf5 is a Si table
    assert t.gap_ev == pytest.approx(mat.scissor_gap_ev)
    assert t.cell_mass_ev == pytest.approx(mat.cell_mass_ev, rel=1e-3)
    assert table_for_material(path.stem) == path
    # nothing below the gap (scissored, VBM at 0)
    nbelow = int(t.gap_ev / t.de_ev) - 1
    assert not t.f2[:, :max(nbelow, 0)].any()


def test_rates_material_si_from_a_fresh_install():
    if not any(p.stem == "Si" for p in SHIPPED):
        pytest.skip("no shipped Si table")
    r = run_cli("rates", "--material", "Si", "--mass-mev", "100", "--fdm", "heavy", "--halo",
                "shm-2021", "--sigma-e", "1e-39", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    # the Q spectrum sums to the total (all charge bins listed)
    assert sum(d["Q_per_kg_year"]) == pytest.approx(d["total_per_kg_year"], rel=1e-9)
    assert d["total_per_kg_year"] > 0


@pytest.mark.parametrize("mass_mev", [5.0, 10.0])
def test_gth_ge_matches_qcdark_at_low_mass(qcdark_ge, mass_mev):
    # Low-mass DM (E_max = m v_max^2 / 2 ~ 18-36 eV, q <~ 2 alpha m_e) probes
    # only the 4s4p valence band, which both tables describe with PBE and a
    # 0.67 eV scissor: QCDark's Ge table (shared/reference; all-electron-like
    # basis with the 3d shell) and the GTH one (q4, no 3d) must agree there.
    # Tolerance 5%: the two differ in basis and pseudopotential (PBE band
    # energies of Ge differ by ~0.1 eV between such setups); measured 1.5%.
    # Above ~30 MeV they part (3d shell, high q): README "Shipped tables".
    from dmca_hpc.detection.rates import electron_rates
    if not any(p.stem == "Ge_gth" for p in SHIPPED):
        pytest.skip("no shipped GTH Ge table")
    ours = electron_rates(table_for_material("Ge_gth"), [mass_mev * 1e6]).total[0]
    ref = electron_rates(qcdark_ge, [mass_mev * 1e6]).total[0]
    assert ours == pytest.approx(ref, rel=0.05)


def _ge_ratios(qcdark_ge, name, mass_mev, fdm):
    from dmca_hpc.detection.rates import electron_rates
    a = electron_rates(table_for_material(name), [mass_mev * 1e6], fdm=fdm)
    r = electron_rates(qcdark_ge, [mass_mev * 1e6], fdm=fdm)
    return a.total[0] / r.total[0], a.dr_dq[0, :5] / np.where(r.dr_dq[0, :5] > 0, r.dr_dq[0, :5], np.nan)


def test_shipped_ge_is_all_electron_with_the_3d_shell(qcdark_ge):
    """Ge_pbe.hdf5 comes from jobs/ge_ae_reference.yaml (all-electron def2-SVP with
    the 3d shell, PBE, analytic route; complete to 34.9 eV above the VBM);
    Ge_gth.hdf5 is the earlier GTH q4 table (3d in the core).  Against QCDark's
    table (def2-TZVP, PBE0), same engine: where the GTH table loses 2-5x of the
    heavy-mediator rate above 30 MeV (the 3d shell), the all-electron one is
    within a factor 1.6 at every mass, both mediators; its light-mediator totals
    are 1.2x (see the strict xfail below for the 20% criterion)."""
    from dmca_hpc.detection.rates import electron_rates
    t = read_table(table_for_material("Ge_pbe"))
    m = t.metadata
    assert m["all_electron"] is True and m["route"] == "analytic" and m["basis"] == "def2-svp"
    assert m["xc"] == "PBE"
    assert m["e_complete_ev"] == pytest.approx(34.90, abs=0.01) and t.gap_ev == pytest.approx(0.67)
    assert not np.isnan(t.f2).any() and (t.f2 >= 0).all()
    for fdm in ("heavy", "light"):
        for mass in (3, 10, 30, 100, 1000, 10000):
            ae, _ = _ge_ratios(qcdark_ge, "Ge_pbe", mass, fdm)
            assert 1 / 1.6 < ae < 1.6, (fdm, mass, ae)
            if fdm == "heavy" and mass >= 30:
                gth, _ = _ge_ratios(qcdark_ge, "Ge_gth", mass, fdm)
                assert abs(np.log(ae)) < abs(np.log(gth)), (mass, ae, gth)
    heavy = electron_rates(t, [10e6, 1e9], fdm="heavy").total
    light = electron_rates(t, [10e6, 1e9], fdm="light").total
    # regression to 5 digits: this table through this engine (shm-2021, 1e-39 cm^2)
    assert heavy == pytest.approx([476.558, 63.0646], rel=1e-5)
    assert light == pytest.approx([170.235, 2.50233], rel=1e-5)


def test_shipped_ge_is_pbe0_and_holds_the_heavy_mediator_rates(qcdark_ge):
    """Ge.hdf5, the default Ge table (what ``rates --material Ge`` reads), comes
    from jobs/ge_ae_pbe0.yaml (as Ge_pbe.hdf5 but PBE0, QCDark's
    functional; remade 2026-12-02 with the exchange's G = 0 term treated alike at
    SCF and non-SCF band k, README "Hybrid bands off the SCF mesh"): PBE0 puts the
    3d shell at -28.5 to -28.9 eV (PBE: -25.5 to -25.8).  Against QCDark's
    (def2-TZVP, PBE0) table, same engine, heavy mediator: the total and Q = 1..5
    within 20% at every mass 3 MeV - 10 GeV (measured: totals 1.08-1.17, Q = 1..5
    0.98-1.18; the table made before the fix had Q = 1 at 1.7-1.8x), closer than
    the PBE table at every mass from 30 MeV.  The light mediator misses the 20% only
    near the gap (see the strict xfail below).  Issue 14: "if PBE cannot get
    there and PBE0 can, ship PBE0 and show both"."""
    from dmca_hpc.detection.rates import electron_rates
    assert table_for_material("ge").name == "Ge.hdf5"
    t = read_table(table_for_material("Ge"))
    m = t.metadata
    assert m["all_electron"] is True and m["xc"] == "PBE0" and m["basis"] == "def2-svp"
    assert m["e_complete_ev"] == pytest.approx(35.62, abs=0.01) and t.gap_ev == pytest.approx(0.67)
    assert m["gap_dft_ev"] == pytest.approx(2.165, abs=0.005)
    assert not np.isnan(t.f2).any() and (t.f2 >= 0).all()
    for mass in (3, 10, 30, 100, 1000, 10000):
        tot, qs = _ge_ratios(qcdark_ge, "Ge", mass, "heavy")
        assert abs(tot - 1) <= 0.2 and np.nanmax(np.abs(qs - 1)) <= 0.2, (mass, tot, qs)
        if mass >= 30:
            pbe, _ = _ge_ratios(qcdark_ge, "Ge_pbe", mass, "heavy")
            assert abs(tot - 1) < abs(pbe - 1), (mass, tot, pbe)
    heavy = electron_rates(t, [10e6, 1e9], fdm="heavy").total
    light = electron_rates(t, [10e6, 1e9], fdm="light").total
    # regression to 5 digits: this table through this engine (shm-2021, 1e-39 cm^2)
    assert heavy == pytest.approx([442.121, 45.6349], rel=1e-5)
    assert light == pytest.approx([165.581, 2.39955], rel=1e-5)


@pytest.mark.xfail(strict=True, reason=(
    "issue 14's criterion for the light mediator with Ge.hdf5 (PBE0/def2-SVP, 6x6x6 bands from a "
    "3x3x3 SCF): Q = 1 is 1.21-1.25x QCDark at every mass and the 3 MeV total 1.24x (totals "
    "from 10 MeV 1.16-1.18, Q = 2..5 0.98-1.23).  Measured 2026-12-02: the basis is not it "
    "(def2-TZVP/def2-SVP on 4x4x4: light Q = 1 0.97-0.98); the exact exchange's SCF k sampling is: "
    "the same 6x6x6 bands from a 2x2x2 SCF give light Q = 1 1.41x, from 3x3x3 1.21x (heavy 1.32 -> "
    "1.14x), and QCDark's SCF has 216 k.  A 4x4x4 PBE0 GDF SCF (est. 68 GB of 3-index integrals, "
    "~6 h) does not fit this machine"))
def test_shipped_ge_light_mediator_within_20_percent_of_qcdark(qcdark_ge):
    for mass in (3, 10, 30, 100, 1000, 10000):
        tot, qs = _ge_ratios(qcdark_ge, "Ge", mass, "light")
        assert abs(tot - 1) <= 0.2, (mass, tot)
        assert np.nanmax(np.abs(qs - 1)) <= 0.2, (mass, qs)


@pytest.mark.xfail(strict=True, reason=(
    "issue 14's criterion (total and Q = 1..5 within 20% of QCDark at 3-10000 MeV, both "
    "mediators) is missed by the PBE/def2-SVP table (Ge_pbe): Q = 1, 2 are 1.20-1.26x at every mass "
    "(def2-SVP leaves PBE Ge a 0.54 eV gap where a converged basis closes it: a different "
    "band shape near the gap), and heavy totals above 30 MeV are 1.43-1.51x because PBE puts "
    "the 3d band at -25.5 eV, shallower than QCDark's PBE0 (Q = 9, 10 at 1 GeV: 4.3x, 17x). "
    "PBE0 (Ge.hdf5, remade with the off-mesh exchange fix) meets it for the heavy mediator "
    "(totals 1.08-1.17, Q = 1..5 0.98-1.18) and misses it for the light one near the gap only "
    "(Q = 1 1.21-1.25; its own strict xfail above): PBE0 is the default Ge, the PBE table "
    "ships as Ge_pbe, the functional's systematic"))
def test_shipped_ge_pbe_within_20_percent_of_qcdark(qcdark_ge):
    for fdm in ("heavy", "light"):
        for mass in (3, 10, 30, 100, 1000, 10000):
            tot, qs = _ge_ratios(qcdark_ge, "Ge_pbe", mass, fdm)
            assert abs(tot - 1) <= 0.2, (fdm, mass, tot)
            assert np.nanmax(np.abs(qs - 1)) <= 0.2, (fdm, mass, qs)


def test_material_aliases_find_the_shipped_table():
    if not any(p.stem == "C" for p in SHIPPED):
        pytest.skip("no shipped diamond table")
    assert table_for_material("diamond").name == "C.hdf5"
    assert table_for_material("si").name == "Si.hdf5"
    with pytest.raises(FileNotFoundError, match="shipped tables: .*C"):
        table_for_material("Unobtainium")


def test_shipped_si_svp_is_all_electron_and_keeps_the_high_q_weight():
    """Si_svp.hdf5 comes from jobs/si_ae_reference.yaml (all-electron def2-SVP, PBE,
    analytic route; the default Si table until the cc-pVTZ one, which reaches 50 eV,
    took its name); Si_gth.hdf5 is the earlier GTH table.  The all-electron
    valence states carry the core's high-momentum structure: the E-integrated
    |f|^2 at q = 10 alpha m_e is 5% of its peak, against 1e-8 for the GTH
    pseudo-wavefunctions, and heavy-mediator rates above ~30 MeV rise by 1.2-1.4x
    while the light-mediator rates (low q) stay within the 4% basis systematic."""
    from dmca_hpc.detection.rates import electron_rates
    t, g = read_table(table_for_material("Si_svp")), read_table(table_for_material("Si_gth"))
    m = t.metadata
    assert m["all_electron"] is True and m["route"] == "analytic" and m["basis"] == "def2-svp"
    assert m["q_complete_ame"] == pytest.approx(20.0) and m["e_complete_ev"] == pytest.approx(37.35, abs=0.01)
    assert g.material == "Si" and not g.metadata.get("all_electron", False)
    assert not np.isnan(t.f2).any() and (t.f2 >= 0).all()
    i = int(10.0 / t.dq_ame)
    w, wg = t.f2.sum(axis=1), g.f2.sum(axis=1)
    assert w[i] / w.max() > 0.02 and wg[i] / wg.max() < 1e-6
    heavy = electron_rates(t, [10e6, 1e9], fdm="heavy").total
    light = electron_rates(t, [10e6, 1e9], fdm="light").total
    # regression to 4 digits: this table through this engine (shm-2021, 1e-39 cm^2)
    assert heavy == pytest.approx([1263.08, 34.6177], rel=1e-4)
    assert light == pytest.approx([351.954, 5.5257], rel=1e-4)
    ratio = heavy[1] / electron_rates(g, [1e9], fdm="heavy").total[0]
    assert 1.2 < ratio < 2.0


def test_shipped_diamond_is_all_electron():
    """C.hdf5 comes from jobs/diamond_ae_reference.yaml (all-electron def2-SVP,
    PBE, analytic route, complete to 48.8 eV); C_gth.hdf5 is the earlier GTH
    table.  As for Si, the all-electron states keep weight at high q (the
    E-integrated |f|^2 at q = 15 alpha m_e is 2% of its peak against 1e-5 for
    GTH), heavy-mediator rates above ~100 MeV rise (x1.16-1.19) and the
    light-mediator rates stay within 3% (the basis systematic)."""
    from dmca_hpc.detection.rates import electron_rates
    if not any(p.stem == "C_gth" for p in SHIPPED):
        pytest.skip("no shipped GTH diamond table")
    t, g = read_table(table_for_material("C")), read_table(table_for_material("C_gth"))
    m = t.metadata
    assert m["all_electron"] is True and m["route"] == "analytic" and m["basis"] == "def2-svp"
    assert m["q_complete_ame"] == pytest.approx(20.0) and m["e_complete_ev"] == pytest.approx(48.82, abs=0.01)
    assert t.material == g.material == "C" and t.gap_ev == pytest.approx(5.47)
    assert not np.isnan(t.f2).any() and (t.f2 >= 0).all()
    i = int(15.0 / t.dq_ame)
    w, wg = t.f2.sum(axis=1), g.f2.sum(axis=1)
    assert w[i] / w.max() > 0.01 and wg[i] / wg.max() < 1e-4
    heavy = electron_rates(t, [10e6, 1e9], fdm="heavy").total
    light = electron_rates(t, [10e6, 1e9], fdm="light").total
    # regression to 5 digits: this table through this engine (shm-2021, 1e-39 cm^2)
    assert heavy == pytest.approx([844.571, 74.1758], rel=1e-5)
    assert light == pytest.approx([17.6743, 0.780485], rel=1e-5)
    heavy_gth = electron_rates(g, [1e9], fdm="heavy").total[0]
    assert 1.1 < heavy[1] / heavy_gth < 1.4


# The tables of the targets that came with the all-electron route (issue 15), one entry
# per table: its job, what its metadata must say, and the regression numbers (this table
# through this engine, shm-2021, sigma_e = 1e-39 cm^2, events / kg / year at 10 MeV and
# 1 GeV) to 5 digits.  e_complete_ev is where the basis's conduction bands run out
# (measured on the run, after the scissor).
NEW_TARGETS = {
    "SiC": {"job": "jobs/sic_ae_reference.yaml", "basis": "def2-svp", "ecp": "none",
            "all_electron": True, "e_complete_ev": 48.71,
            "heavy": [926.684, 46.3917], "light": [59.0647, 1.43313]},
    # Na all-electron, I on its def2 small-core ECP28 (4s4p4d5s5p kept): not all-electron
    # but with the semicore shells; the 19 conduction bands of def2-SVP end 34 eV above the VBM
    "NaI": {"job": "jobs/nai_ae_reference.yaml", "basis": "def2-svp", "ecp": "I:def2-svp(ECP28)",
            "all_electron": False, "e_complete_ev": 33.96,
            "heavy": [59.2181, 7.51738], "light": [4.32491, 0.130080]},
    # CsCl structure; Cs on ECP46 (5s5p6s kept), I on ECP28; the 28 conduction bands of
    # def2-SVP end 37.9 eV above the VBM, so the I 4d onset (~48 eV) is outside
    "CsI": {"job": "jobs/csi_ae_reference.yaml", "basis": "def2-svp",
            "ecp": "Cs:def2-svp(ECP46); I:def2-svp(ECP28)", "all_electron": False,
            "e_complete_ev": 37.92, "heavy": [35.2533, 2.77193], "light": [2.54954, 0.0787487]},
    # all-electron (no def2 ECP below Rb): Ga 3d and As 3d in the table; 22 conduction
    # bands end 37.3 eV above the VBM
    "GaAs": {"job": "jobs/gaas_ae_reference.yaml", "basis": "def2-svp", "ecp": "none",
             "all_electron": True, "e_complete_ev": 37.34,
             "heavy": [438.809, 65.2948], "light": [106.230, 1.72393]},
}


@pytest.mark.parametrize("name", sorted(NEW_TARGETS))
def test_shipped_new_target_table(name):
    """A shipped table of the newer targets: the all-electron (or small-core ECP)
    analytic route on 6x6x6, q <= 20 alpha m_e complete, scissored to the
    library's experimental gap (shared/design/physics.md) from a semilocal DFT
    gap that lies below it; no NaN or negative bins; rates at 10 MeV and 1 GeV
    finite and positive for both mediators, and equal to the regression numbers."""
    from dmca_hpc.detection.rates import electron_rates
    spec = NEW_TARGETS[name]
    path = table_for_material(name)
    if not path.exists():
        pytest.skip(f"no shipped {name} table")
    t = read_table(path)
    m = t.metadata
    assert Path(spec["job"]).name in " ".join(m["provenance"]["argv"])
    assert m["route"] == "analytic" and m["basis"] == spec["basis"]
    assert m["all_electron"] is spec["all_electron"] and str(m["ecp"]).lower() == spec["ecp"].lower()
    assert list(m["kmesh"]) == [6, 6, 6] and m["q_complete_ame"] == pytest.approx(20.0)
    assert m["e_complete_ev"] == pytest.approx(spec["e_complete_ev"], abs=0.01)
    gap = get_material(name).scissor_gap_ev
    assert t.gap_ev == pytest.approx(gap)
    # PBE underestimates the gap; the QCDark scissor moves the conduction bands up by the rest
    assert 0 < m["gap_dft_ev"] < gap
    assert m["scissor_shift_ev"] == pytest.approx(gap - m["gap_dft_ev"], abs=1e-6)
    assert not np.isnan(t.f2).any() and (t.f2 >= 0).all()
    heavy = electron_rates(t, [10e6, 1e9], fdm="heavy").total
    light = electron_rates(t, [10e6, 1e9], fdm="light").total
    assert np.isfinite(heavy).all() and (heavy > 0).all()
    assert np.isfinite(light).all() and (light > 0).all()
    assert heavy == pytest.approx(spec["heavy"], rel=1e-5)
    assert light == pytest.approx(spec["light"], rel=1e-5)


def test_shipped_si_is_cc_pvtz_complete_to_50_ev_and_moves_as_the_basis_study_says():
    """Si.hdf5, the default Si table, comes from jobs/si_ae_ccpvtz.yaml (all-electron
    cc-pVTZ PBE, 6x6x6 from a 3x3x3 SCF, analytic route, q <= 20 alpha m_e; 32.6 min on
    2 ranks, 2026-12-02): its conduction bands reach past 50 eV (issue 14's E <= 50 eV
    complete, which the def2-SVP Si_svp.hdf5, 37.3 eV, is not).  Its rates over
    Si_svp's (same mesh, same engine) are the basis move on the production mesh;
    Si_svp's basis f2_sigma was measured on 4x4x4 and carried, so the 6x6x6 move must
    lie within that record's rate 1-sigma at every recorded mass, both mediators
    (measured: heavy 1.029, 1.045, 1.040, 1.007, 1.003, light 1.030-1.051 at 1, 3, 10,
    100, 1000 MeV; the 4x4x4 cc-pVTZ / SVP move was 1.004-1.042 heavy, 1.015-1.047
    light)."""
    from dmca_hpc import units as U
    from dmca_hpc.detection.rates import electron_rates
    assert table_for_material("si").name == "Si.hdf5"
    t = read_table(table_for_material("Si"))
    svp = read_table(table_for_material("Si_svp"))
    m = t.metadata
    assert m["all_electron"] is True and m["route"] == "analytic" and m["basis"] == "cc-pvtz"
    assert list(m["kmesh"]) == [6, 6, 6] and m["q_max_ame"] == pytest.approx(20.0)
    assert m["e_complete_ev"] >= 50.0 and t.gap_ev == pytest.approx(1.11)
    assert not np.isnan(t.f2).any() and (t.f2 >= 0).all()
    rec = svp.metadata["f2_sigma_sources"][1]
    assert rec["label"] == "basis"
    eff = rec["rate_effect"]
    mm = np.array(eff["masses_mev"]) * U.MEV_EV
    for fdm in ("heavy", "light"):
        r = electron_rates(t, mm, fdm=fdm).total / electron_rates(svp, mm, fdm=fdm).total
        assert (np.abs(r - 1.0) <= np.array(eff[fdm]["rel_sigma"])).all(), (fdm, r)
    heavy = electron_rates(t, [10e6, 1e9], fdm="heavy").total
    light = electron_rates(t, [10e6, 1e9], fdm="light").total
    # regression to 5 digits: this table through this engine (shm-2021, 1e-39 cm^2)
    assert heavy == pytest.approx([1313.87, 34.7107], rel=1e-5)
    assert light == pytest.approx([369.646, 5.80632], rel=1e-5)


def test_shipped_si_carries_the_k_mesh_and_basis_systematics_of_si_svp():
    """Si.hdf5's f2_sigma is Si_svp's, carried relatively (dmca-hpc table systematic
    Si_ccpvtz --carry-from Si_svp, 2026-12-03): the k-mesh move (6^3 -> 8^3, 10^3,
    measured on the def2-SVP table against itself) applies because Si.hdf5 sits on the
    same 6^3 mesh; the basis move (def2-SVP -> TZVP, cc-pVTZ on 4^3) was measured with
    a base.  Per bin the relative sigma is the donor's (E-box smoothed shapes), so the
    rate 1-sigma on Si.hdf5 must cover what it covered on Si_svp: the 10^3 shift at 1
    and 10 MeV and each basis variant's move at 1 - 1000 MeV, both mediators; and it
    must equal the record's own rel_sigma_on_ref (rates are linear in f2)."""
    import dataclasses
    from dmca_hpc import units as U
    from dmca_hpc.detection.rates import electron_rates
    t = read_table(table_for_material("Si"))
    src = t.metadata["f2_sigma_sources"]
    assert [s["label"] for s in src] == ["kmesh", "basis"]
    carried = [s["carried"] for s in src]
    assert all(c["carried_from"].endswith("Si_svp.hdf5") for c in carried)
    assert carried[0]["donor_as_base"] == [{"label": "kmesh", "varied": ["kmesh"]}]
    assert t.f2_sigma is not None and not t.f2_sigma[:, :int(t.gap_ev / t.de_ev) - 1].any()
    ms = np.array(carried[0]["masses_mev"])
    for fdm in ("heavy", "light"):
        base = electron_rates(t, ms * U.MEV_EV, fdm=fdm).total
        up = electron_rates(dataclasses.replace(t, f2=t.f2 + t.f2_sigma), ms * U.MEV_EV,
                            fdm=fdm).total
        rel = up / base - 1.0
        assert rel == pytest.approx(carried[0]["rel_sigma_on_ref"][fdm], rel=1e-9)
        at = {m: r for m, r in zip(ms, rel)}
        k = src[0]["rate_effect"]
        assert k["masses_mev"][:2] == [1.0, 10.0]
        shift10 = np.array(k[fdm]["variant_over_ref"][1][:2]) - 1.0   # 10^3 at 1, 10 MeV
        assert at[1.0] >= abs(shift10[0]) and at[10.0] >= abs(shift10[1]), (fdm, at, shift10)
        b = src[1]["rate_effect"]
        for ratios in b[fdm]["variant_over_ref"]:
            moves = {m: abs(r - 1.0) for m, r in zip(b["masses_mev"], ratios) if m in at}
            assert len(moves) >= 3 and all(at[m] >= d for m, d in moves.items()), (fdm, at, moves)


def test_shipped_si_carries_the_basis_systematic():
    """Si_svp.hdf5's second f2_sigma source is the basis (jobs/si_ae_basis.yaml: def2-TZVP and
    cc-pVTZ against def2-SVP, all on 4x4x4, q <= 20, carried onto the 6x6x6 table with
    --base): its record names the three bases and the mesh, covers q <= 20 alpha m_e,
    and the rate 1-sigma of the whole written sigma covers each variant's move at every
    recorded mass (1, 3, 10, 100, 1000 MeV), both mediators (measured: TZVP / SVP 1.06 -
    1.13, cc-pVTZ / SVP 1.00 - 1.05)."""
    import dataclasses
    from dmca_hpc import units as U
    from dmca_hpc.detection.rates import electron_rates
    t = read_table(table_for_material("Si_svp"))
    rec = t.metadata["f2_sigma_sources"][1]
    assert rec["label"] == "basis" and rec["combined_with_earlier_sigma"] is True
    st = rec["settings"]
    assert st["base"]["basis"] == "def2-svp" and list(st["base"]["kmesh"]) == [4, 4, 4]
    assert [v["basis"] for v in st["variants"]] == ["def2-tzvp", "cc-pvtz"]
    assert all(list(v["kmesh"]) == [4, 4, 4] for v in st["variants"])
    assert rec["q_range_ame"] == pytest.approx([0.0, 20.0])
    eff = rec["rate_effect"]
    assert eff["masses_mev"] == [1.0, 3.0, 10.0, 100.0, 1000.0]
    m = np.array(eff["masses_mev"]) * U.MEV_EV
    for fdm in ("heavy", "light"):
        base = electron_rates(t, m, fdm=fdm).total
        up = electron_rates(dataclasses.replace(t, f2=t.f2 + t.f2_sigma), m, fdm=fdm).total
        for ratios in eff[fdm]["variant_over_ref"]:
            r = np.array(ratios)
            assert ((r > 0.95) & (r < 1.2)).all(), (fdm, r)   # a basis moves Si by percents
            assert (up / base - 1.0 >= np.abs(r - 1.0)).all(), (fdm, up / base - 1, r)


def test_shipped_ge_carries_the_basis_systematic():
    """Ge.hdf5 (PBE0) carries the basis systematic at its own functional
    (jobs/ge_ae_basis.yaml: PBE0 def2-TZVP, QCDark's basis, against def2-SVP on 4x4x4,
    SCF 2x2x2, q <= 20, carried onto the 6x6x6 table with --base): the record names
    both bases, PBE0 and the mesh, and the rate 1-sigma of the written sigma covers the
    TZVP move at every recorded mass, both mediators, except the light mediator at 1 MeV
    (measured 2026-12-02, after the off-mesh exchange fix: total rates 0.97 - 1.00 of
    def2-SVP's heavy, 0.92 - 0.99 light, Q = 1 0.98 - 1.00: the basis is not what
    separates Ge.hdf5 from QCDark's table; rate 1-sigma 3.5 - 4.8 % up to 10 MeV, 29 - 32 %
    heavy from 100 MeV).  At 1 MeV light the TZVP move on 4x4x4 is -8.2 % but the
    1-sigma on the 6x6x6 table only 4.65 % (the command says so in a note): that rate
    draws on the first ~3 eV above the gap at low q, where the two meshes have their
    transitions in different bins, so a relative per-bin move measured on 4x4x4 cannot
    be carried bin by bin there; the test asserts the coverage everywhere else and
    that the 1 MeV light 1-sigma holds at least half of the move (4.65 of 8.2 %), so
    that a sigma that lost it altogether fails."""
    import dataclasses
    from dmca_hpc import units as U
    from dmca_hpc.detection.rates import electron_rates
    t = read_table(table_for_material("Ge"))
    src = t.metadata["f2_sigma_sources"]
    assert src[0]["label"] == "basis"
    st = src[0]["settings"]
    assert st["base"]["basis"] == "def2-svp" and st["variants"][0]["basis"] == "def2-tzvp"
    assert st["base"]["xc"] == st["variants"][0]["xc"] == "PBE0"
    assert list(st["base"]["kmesh"]) == list(st["variants"][0]["kmesh"]) == [4, 4, 4]
    assert "carried" not in src[0]          # measured on the table's own f2 (no --carry-from)
    eff = src[0]["rate_effect"]
    m = np.array(eff["masses_mev"]) * U.MEV_EV
    for fdm in ("heavy", "light"):
        base = electron_rates(t, m, fdm=fdm).total
        up = electron_rates(dataclasses.replace(t, f2=t.f2 + t.f2_sigma), m, fdm=fdm).total
        r = np.array(eff[fdm]["variant_over_ref"][0])
        assert ((r > 0.9) & (r < 1.1)).all(), (fdm, r)
        cover = up / base - 1.0 >= np.abs(r - 1.0)
        if fdm == "light":
            low = np.array(eff["masses_mev"]) < 2.0     # 1 MeV: see the docstring
            assert ((up / base - 1.0)[low] >= 0.5 * np.abs(r - 1.0)[low]).all(), (up / base - 1, r)
            cover |= low
        assert cover.all(), (fdm, up / base - 1, r)


def test_shipped_si_carries_the_k_mesh_systematic():
    """Si_svp.hdf5's f2_sigma is the k-mesh systematic (dmca-hpc table systematic Si --vary
    the 8^3 and 10^3 tables of jobs/si_ae_kconv.yaml, q <= 10 alpha m_e, SCF on 2^3):
    f2 is the production table's; sigma is 0 below the gap (beyond q = 10 only the basis
    systematic stacked on it contributes); and the
    rate 1-sigma it gives covers the shift the 10^3 mesh makes at 1 and 10 MeV, both
    mediators (measured: 10^3 / shipped 6^3 = 0.45, 0.91 heavy and 0.36, 0.85 light; the
    1 MeV rate is not converged in the mesh, 8^3 -> 10^3 still moves it 12%)."""
    import dataclasses
    from dmca_hpc.detection.rates import electron_rates
    t = read_table(table_for_material("Si_svp"))
    src = t.metadata["f2_sigma_sources"]
    assert [s["label"] for s in src] == ["kmesh", "basis"]
    kms = [v["kmesh"] for v in src[0]["settings"]["variants"]]
    assert kms == [[8, 8, 8], [10, 10, 10]]
    assert t.f2_sigma is not None and t.f2_sigma.shape == t.f2.shape
    assert not t.f2_sigma[:, :int(t.gap_ev / t.de_ev) - 1].any()
    eff = src[0]["rate_effect"]
    for fdm in ("heavy", "light"):
        base = electron_rates(t, [1e6, 1e7], fdm=fdm).total
        up = electron_rates(dataclasses.replace(t, f2=t.f2 + t.f2_sigma), [1e6, 1e7], fdm=fdm).total
        shift10 = np.array(eff[fdm]["variant_over_ref"][1][:2]) - 1.0   # 10^3 at 1, 10 MeV
        assert eff["masses_mev"][:2] == [1.0, 10.0]
        assert (up / base - 1.0 >= np.abs(shift10)).all(), (fdm, up / base - 1, shift10)


def test_shipped_ge_carries_the_k_mesh_systematic():
    """Ge.hdf5's second f2_sigma source is the bands-mesh systematic
    (jobs/ge_ae_kconv.yaml: PBE def2-SVP, SCF 2^3, q <= 10 alpha m_e; the 8^3 table's
    move against the 6^3 one of the same job, --base, carried onto the PBE0 6^3 table):
    the record names the meshes, its sigma adds to the basis one in quadrature (never
    below it), is 0 below the gap, and the rate 1-sigma covers the 8^3 move it was built
    from at 1, 3 and 10 MeV, both mediators (measured 2026-12-03: 8^3 / 6^3 = 0.73, 0.97,
    0.99 heavy and 0.67, 0.94, 0.98 light; Q = 1 0.68-0.92: near threshold the 6^3 mesh
    overstates Ge's rate as it does Si's)."""
    import dataclasses
    from dmca_hpc.detection.rates import electron_rates
    t = read_table(table_for_material("Ge"))
    src = t.metadata["f2_sigma_sources"]
    assert [s["label"] for s in src] == ["basis", "kmesh"]
    st = src[1]["settings"]
    assert st["base"]["kmesh"] == [6, 6, 6] and st["base"]["xc"] == "PBE"
    assert [v["kmesh"] for v in st["variants"]][0] == [8, 8, 8]
    assert src[1]["q_range_ame"][1] == pytest.approx(10.0, abs=0.03)
    assert not t.f2_sigma[:, :int(t.gap_ev / t.de_ev) - 1].any()
    eff = src[1]["rate_effect"]
    assert eff["masses_mev"][:3] == [1.0, 3.0, 10.0]
    for fdm in ("heavy", "light"):
        m = [1e6, 3e6, 1e7]
        base = electron_rates(t, m, fdm=fdm).total
        up = electron_rates(dataclasses.replace(t, f2=t.f2 + t.f2_sigma), m, fdm=fdm).total
        shift8 = np.array(eff[fdm]["variant_over_ref"][0][:3]) - 1.0
        assert (np.abs(shift8[:1]) > 0.2).all(), shift8      # the mesh matters at 1 MeV
        assert (up / base - 1.0 >= np.abs(shift8)).all(), (fdm, up / base - 1, shift8)
        assert eff[fdm]["rel_sigma"][0] >= abs(shift8[0])
