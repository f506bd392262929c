"""``dmca-hpc select``: targets ranked by the rate of their shipped tables.

The numbers select prints are checked against the rate engine run here on
the same tables (detection.rates), the reach against the classical Poisson
upper limit for zero events at 90% CL, mu = -ln(0.1) = 2.3026 (PDG Review of
Particle Physics, "Statistics", table of Poisson upper limits: 2.30 for
n = 0 at 90% CL), and the kinematics against m v_max^2 / 2 worked out by hand.
"""
import json
import math

import h5py
import numpy as np
import pytest

from dmca_hpc import units as U
from dmca_hpc.cli.main import main
from dmca_hpc.detection import select
from dmca_hpc.detection.rates import electron_rates, rate_in_q_range
from dmca_hpc.tables import DATA_DIR, FormFactorTable, read_table

MU90 = 2.302585  # PDG: 90% CL upper limit on a Poisson mean, 0 observed, no background


def _select(capsys, *argv):
    rc = main(["select", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _shipped():
    return {p.stem: read_table(p) for p in sorted(DATA_DIR.glob("*.hdf5"))}


@pytest.fixture(scope="module")
def shipped():
    tabs = _shipped()
    if not {"Si", "Ge"} <= set(tabs):
        pytest.skip(f"shipped Si/Ge tables missing from {DATA_DIR}")
    return tabs


def _rate(table, mass_mev, fdm="heavy", sigma=1e-39, q_threshold=1):
    r = electron_rates(table, [mass_mev * U.MEV_EV], fdm=fdm, sigma_e_cm2=sigma)
    if r.dr_dq.shape[1] == 0:
        # no pair energy (a scintillator, NaI): every deposit above the gap counts
        return float(r.total[0])
    return float(rate_in_q_range(r, q_threshold)[0])


@pytest.mark.parametrize("mass,fdm,exposure,sigma,qthr", [
    (10.0, "heavy", 1.0, 1e-39, 1), (100.0, "light", 12.5, 3e-38, 2)])
def test_json_numbers_equal_the_rate_engine(capsys, shipped, mass, fdm, exposure, sigma, qthr):
    rc, out, _ = _select(capsys, "--mass-mev", mass, "--fdm", fdm, "--exposure", exposure,
                         "--sigma-e", sigma, "--q-threshold", qthr, "--json")
    assert rc == 0
    d = json.loads(out)
    rows = {r["name"]: r for r in d["targets"]}
    for stem, t in shipped.items():
        row = rows[select.get_material(t.material).name]
        entry = next(e for e in row["tables"] if e["file"].endswith(f"/{stem}.hdf5"))
        want = _rate(t, mass, fdm, sigma, qthr)
        assert want > 0
        assert entry["rate_per_kg_year"] == pytest.approx(want, rel=1e-12)
        assert entry["events"] == pytest.approx(want * exposure, rel=1e-12)
        assert entry["reach_sigma_cm2"] == pytest.approx(MU90 * sigma / (exposure * want), rel=1e-6)
    # a row's own numbers are its first table's, and that is the all-electron Si table
    assert rows["Si"]["tables"][0]["kind"] == "all-electron"
    assert rows["Si"]["tables"][0]["file"].endswith("/Si.hdf5")
    assert rows["Si"]["rate_per_kg_year"] == rows["Si"]["tables"][0]["rate_per_kg_year"]
    assert d["inputs"]["reach_events"] == pytest.approx(MU90, rel=1e-6)


def test_ranking_follows_the_rates(capsys, shipped):
    """Order of the tabled targets = order of their (independently computed)
    rates; targets without a table come after, each saying 'no table'."""
    rc, out, _ = _select(capsys, "--mass-mev", 10, "--json")
    d = json.loads(out)
    first = {}  # the table select ranks a target by: all-electron, else the one named after it
    for stem, t in shipped.items():
        name = select.get_material(t.material).name
        if name not in first or select.table_kind(t) == "all-electron":
            first[name] = t
    want = sorted(first, key=lambda n: -_rate(first[n], 10.0))
    names = [r["name"] for r in d["targets"]]
    assert names[:len(want)] == want
    assert [r["rank"] for r in d["targets"]] == list(range(1, len(names) + 1))
    rest = d["targets"][len(want):]
    # every library target without a shipped table (none once all seven ship) says so
    assert {r["name"] for r in rest} == set(select.list_materials()) - set(first)
    assert all(r["status"] == "no table" and r["tables"] == [] for r in rest)
    # with tables for two targets only, the other five come after them, each 'no table'
    few = select.rank_targets(1e7, tables={"Si": [first["Si"]], "Ge": [first["Ge"]]})["targets"]
    assert [r["name"] for r in few[:2]] == sorted(["Si", "Ge"], key=lambda n: -_rate(first[n], 10.0))
    assert len(few) == 7 and all(r["status"] == "no table" and r["tables"] == [] for r in few[2:])
    rc, text, _ = _select(capsys, "--mass-mev", 10)
    lines = text.splitlines()
    ranked = [l.split()[1] for l in lines if l[:3].strip().isdigit()]
    assert ranked == names
    for r in rest:
        line = next(l for l in lines if l[:3].strip().isdigit() and l.split()[1] == r["name"])
        assert "no table" in line


def test_printed_rate_is_the_engines(capsys, shipped):
    rc, text, _ = _select(capsys, "--mass-mev", 10)
    ge = next(l for l in text.splitlines() if l[:3].strip().isdigit() and l.split()[1] == "Ge")
    want = _rate(shipped["Ge"], 10.0)
    assert f"rate {want:.4g} events/kg/year" in ge
    assert f"reach {MU90 * 1e-39 / want:.3g} cm^2" in ge
    assert "table Ge.hdf5: all-electron (def2-svp), complete to E = " in text


def test_below_every_gap_nothing_is_viable(capsys):
    """0.1 MeV: m v_max^2 / 2 = 0.5 * 1e5 eV * (794.2 / 299792.458)^2 = 0.351 eV,
    below the smallest gap (Ge 0.67 eV)."""
    emax = 0.5 * 1e5 * ((544 + 250.2) / 299792.458) ** 2
    assert emax == pytest.approx(0.3509, abs=1e-4)
    rc, out, _ = _select(capsys, "--mass-mev", 0.1, "--json")
    d = json.loads(out)
    assert all(r["status"] == "not viable" and not r["viable"] for r in d["targets"])
    assert all(r["max_deposit_ev"] == pytest.approx(emax, rel=1e-6) for r in d["targets"])
    assert all(t["rate_per_kg_year"] == 0 for r in d["targets"] for t in r["tables"])
    rc, text, _ = _select(capsys, "--mass-mev", 0.1)
    ranked = [l for l in text.splitlines() if l[:3].strip().isdigit()]
    assert len(ranked) == len(d["targets"]) and all("not viable" in l for l in ranked)


def test_completeness_attributes_and_the_warning_beyond_e_complete(capsys, shipped):
    """The row states the table's own e_complete_ev / q_complete_ame (read
    here with h5py), and at 1 GeV the all-electron Ge rate (def2-SVP, complete to
    34.9 eV) draws > 1% from E > e_complete: the share select reports equals the
    rate lost when the table is cut at e_complete (a second rate evaluation), and
    rates' note about it is printed.  (Si.hdf5, cc-pVTZ, is complete over its whole
    0-50 eV range: no incompleteness warning for it, asserted too.)"""
    with h5py.File(DATA_DIR / "Ge.hdf5") as f:
        meta = json.loads(f.attrs["metadata"])
    e_ok, q_ok = meta["e_complete_ev"], meta["q_complete_ame"]
    rc, out, _ = _select(capsys, "--mass-mev", 1000, "--json")
    rows = {r["name"]: r for r in json.loads(out)["targets"]}
    ge = rows["Ge"]["tables"][0]
    assert ge["e_complete_ev"] == e_ok and ge["q_complete_ame"] == q_ok
    assert rows["Si"]["tables"][0]["share_beyond_e_complete"] == 0.0
    t = shipped["Ge"]
    cut = FormFactorTable(f2=np.where(t.e_ev[None, :] > e_ok, 0.0, t.f2), dq_ame=t.dq_ame,
                          de_ev=t.de_ev, vcell_ev3=t.vcell_ev3, cell_mass_ev=t.cell_mass_ev,
                          gap_ev=t.gap_ev, material="Ge")
    full = electron_rates(t, [1e9]).total[0]
    kept = electron_rates(cut, [1e9]).total[0]
    assert ge["share_beyond_e_complete"] == pytest.approx(1 - kept / full, rel=1e-9)
    assert ge["share_beyond_e_complete"] > 0.01
    rc, text, _ = _select(capsys, "--mass-mev", 1000)
    assert f"warning (Ge.hdf5): {100 * ge['share_beyond_e_complete']:.0f}% of this rate comes from " \
           f"E > {e_ok:.1f} eV, where the table is incomplete" in text
    # Si.hdf5 still gets the kinematic warning (1 GeV can deposit 3.5 keV, the
    # table stops at 50 eV), but not the incompleteness one
    assert not [l for l in text.splitlines()
                if "warning (Si.hdf5)" in l and "where the table is incomplete" in l]
    # at 3 MeV (max deposit 10.5 eV < e_complete) there is nothing to warn about
    rc, text, _ = _select(capsys, "--mass-mev", 3)
    assert "where the table is incomplete" not in text


def test_a_larger_table_moves_its_target_up(shipped):
    """Ranking is by rate, not by gap: Ge with |f|^2 x 100 outranks every
    target at 10 MeV; with |f|^2 / 100 it falls below the other tabled ones."""
    ge = shipped["Ge"]
    scaled = lambda k: FormFactorTable(f2=ge.f2 * k, dq_ame=ge.dq_ame, de_ev=ge.de_ev,
                                       vcell_ev3=ge.vcell_ev3, cell_mass_ev=ge.cell_mass_ev,
                                       gap_ev=ge.gap_ev, material="Ge")
    tabs = {"Si": [shipped["Si"]], "C": [shipped["C"]] if "C" in shipped else []}
    up = select.rank_targets(1e7, tables={**tabs, "Ge": [scaled(100.0)]})["targets"]
    down = select.rank_targets(1e7, tables={**tabs, "Ge": [scaled(0.01)]})["targets"]
    assert up[0]["name"] == "Ge"
    n_rated = sum(r["status"] == "rate" for r in down)
    assert down[n_rated - 1]["name"] == "Ge"
    assert up[0]["rate_per_kg_year"] == pytest.approx(1e4 * down[n_rated - 1]["rate_per_kg_year"],
                                                      rel=1e-9)


def test_table_kind():
    t = lambda **m: FormFactorTable(f2=np.ones((2, 2)), dq_ame=1, de_ev=1, vcell_ev3=1,
                                    cell_mass_ev=1, gap_ev=0, metadata=m)
    assert select.table_kind(t(all_electron=True, basis="def2-svp")) == "all-electron"
    assert select.table_kind(t(basis="gth-dzvp")) == "GTH pseudopotential"
    assert select.table_kind(t(basis="def2-tzvp", ecp="None")) == "all-electron"  # QCDark's files
    assert select.table_kind(t(basis="x", ecp="lanl2dz")) == "pseudopotential"
    assert select.table_kind(t()) == "unknown"


@pytest.mark.parametrize("argv,line", [
    (["--mass-mev", "-1"], "--mass-mev -1: expected a DM mass > 0 [MeV]"),
    (["--mass-mev", "nan"], "--mass-mev nan: expected a DM mass > 0 [MeV]"),
    (["--mass-mev", "1", "--exposure", "0"], "--exposure 0: expected an exposure > 0 [kg year]"),
    (["--mass-mev", "1", "--sigma-e=-1e-39"],
     "--sigma-e -1e-39: expected a DM-electron cross section > 0 [cm^2]"),
    (["--mass-mev", "1", "--cl", "1"], "--cl 1: expected a confidence level between 0 and 1"),
    (["--mass-mev", "1", "--q-threshold", "0"], "--q-threshold 0: expected a lowest Q bin >= 1"),
])
def test_bad_numbers_exit_2(capsys, argv, line):
    rc, out, err = _select(capsys, *argv)
    assert rc == 2 and not out and err.strip() == f"dmca-hpc select: error: {line}"


def test_table_kind_names_a_small_core_ecp_table():
    """NaI/CsI tables (def2 basis with the Stuttgart-Koeln ECP of I/Cs) are not
    all-electron, but keep the semicore shells: neither 'all-electron' nor a
    pseudopotential table whose heavy-mediator rates miss the core."""
    import types
    from dmca_hpc.detection.select import table_kind
    t = types.SimpleNamespace(metadata={"all_electron": False, "basis": "def2-svp",
                                        "ecp": "I:def2-svp(ECP28)"})
    assert table_kind(t) == "small-core ECP"
    t.metadata = {"all_electron": True, "basis": "def2-svp", "ecp": "none"}
    assert table_kind(t) == "all-electron"
    t.metadata = {"all_electron": False, "basis": "gth-dzvp", "ecp": "none"}
    assert table_kind(t) == "GTH pseudopotential"
