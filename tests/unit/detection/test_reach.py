"""Reach curves, Poisson limits and uncertainty bands."""
import numpy as np
import pytest

from dmca_hpc.detection import reach

from dmca_hpc import tables

from dmca_hpc import units as U


@pytest.fixture(scope="module")
def ge(qcdark_ge):
    return tables.read_table(qcdark_ge)


MASSES = np.array([0.5, 2.0, 10.0, 100.0, 1000.0]) * U.MEV_EV


def test_scales_as_inverse_exposure(ge):
    a = reach.reach_curve(ge, MASSES, exposure_kg_year=1.0, q_threshold=2)
    b = reach.reach_curve(ge, MASSES, exposure_kg_year=10.0, q_threshold=2)
    fin = np.isfinite(a.sigma_cm2)
    assert np.allclose(b.sigma_cm2[fin] * 10, a.sigma_cm2[fin], rtol=1e-12)
    # 3 events: sigma * exposure * rate(sigma)/sigma = 3
    assert np.allclose(a.sigma_cm2[fin] * a.rate_ref[fin] / 1e-39, 3.0)


def test_zero_counts_equals_three_event_line(ge):
    assert reach.poisson_upper_limit(0, 0.95) == pytest.approx(-np.log(0.05), rel=1e-12)
    assert reach.poisson_upper_limit(0, 0.95) == pytest.approx(2.996, abs=5e-4)
    bf = reach.reach_curve(ge, MASSES, 2.0, q_threshold=1, q_max=5, n_events=2.996)
    lim = reach.reach_curve(ge, MASSES, 2.0, q_threshold=1, q_max=5, observed_counts=[0] * 5)
    fin = np.isfinite(bf.sigma_cm2)
    assert np.allclose(lim.sigma_cm2[fin], bf.sigma_cm2[fin], rtol=2e-4)  # 2.9957 vs 2.996
    per = reach.reach_curve(ge, MASSES, 2.0, q_threshold=1, q_max=5, observed_counts=[0] * 5,
                            mode="per-bin")
    # the best single bin holds only part of the rate: never stronger than the combined limit
    assert np.all(per.sigma_cm2[fin] >= lim.sigma_cm2[fin] * (1 - 1e-12))
    # more observed events -> weaker limit
    more = reach.reach_curve(ge, MASSES, 2.0, q_threshold=1, q_max=5, observed_counts=[3, 1, 0, 0, 0])
    assert np.all(more.sigma_cm2[fin] > lim.sigma_cm2[fin])


def test_observed_counts_for_fewer_bins_use_only_those_bins(ge):
    """Counts for Q = 1..2 of a Q range up to 5: the limit is the one of the
    range [1, 2] (the bins without a count are unconstrained), with a note."""
    few = reach.reach_curve(ge, MASSES, 2.0, q_max=5, observed_counts=[1, 0])
    same = reach.reach_curve(ge, MASSES, 2.0, q_max=2, observed_counts=[1, 0])
    assert np.array_equal(few.sigma_cm2, same.sigma_cm2) and few.inputs["q_max"] == 2
    assert any("Q = 3..5 not used (unconstrained)" in n for n in few.notes)


def test_inaccessible_mass_is_inf_with_note(ge):
    rc = reach.reach_curve(ge, [0.1 * U.MEV_EV, 10 * U.MEV_EV], 1.0)
    assert np.isinf(rc.sigma_cm2[0]) and np.isfinite(rc.sigma_cm2[1])
    assert "no reach" in rc.notes[0]


def test_bad_inputs(ge):
    with pytest.raises(ValueError, match="exposure"):
        reach.reach_curve(ge, MASSES, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        reach.reach_curve(ge, MASSES, 1.0, q_threshold=0)
    with pytest.raises(ValueError, match="observed counts cover Q = 1..1, all below the Q threshold 2"):
        reach.reach_curve(ge, MASSES, 1.0, q_threshold=2, q_max=5, observed_counts=[0])
    with pytest.raises(ValueError, match=">= 0"):
        reach.poisson_upper_limit(-1)


def test_bands_deterministic_and_ordered(ge):
    m = MASSES[2:]
    b1 = reach.uncertainty_bands(ge, m, 1.0, n_samples=12, seed=3)
    b2 = reach.uncertainty_bands(ge, m, 1.0, n_samples=12, seed=3)
    assert np.array_equal(b1.sigma_cm2, b2.sigma_cm2)
    s = b1.sigma_cm2
    assert np.all(s[0] <= s[1]) and np.all(s[1] <= s[2]) and np.all(s[2] <= s[3])
    assert np.all(s[3] <= s[4])
    assert np.all(s[4] > s[0])  # the halo spreads do move the reach
    # nominal curve lies inside the 95% band
    assert np.all((b1.nominal.sigma_cm2 >= s[0]) & (b1.nominal.sigma_cm2 <= s[4]))


def test_dft_systematic_two_tables(ge):
    """Two tables of one material: a table with |f|^2 scaled by 1.2 (a stand-in
    for a second functional) widens the band; mixing materials is an error."""
    from dmca_hpc.tables import FormFactorTable
    t2 = FormFactorTable(f2=ge.f2 * 1.2, dq_ame=ge.dq_ame, de_ev=ge.de_ev, vcell_ev3=ge.vcell_ev3,
                         cell_mass_ev=ge.cell_mass_ev, gap_ev=ge.gap_ev, material="Ge")
    m = MASSES[3:4]
    halo_only = reach.uncertainty_bands(ge, m, 1.0, n_samples=16, seed=1)
    both = reach.uncertainty_bands([ge, t2], m, 1.0, n_samples=16, seed=1)
    w = lambda b: np.log(b.sigma_cm2[4] / b.sigma_cm2[0])
    assert w(both)[0] > w(halo_only)[0]
    si = FormFactorTable(f2=ge.f2, dq_ame=0.02, de_ev=0.1, vcell_ev3=1e-9, cell_mass_ev=5e10,
                         gap_ev=1.1, material="Si")
    with pytest.raises(ValueError, match="one material"):
        reach.uncertainty_bands([ge, si], m, 1.0, n_samples=4)


def test_cli_and_files(qcdark_ge, tmp_path, capsys):
    import argparse, json, h5py
    from dmca_hpc.cli import reach as cli_reach
    p = argparse.ArgumentParser()
    cli_reach.add_arguments(p)
    rc = cli_reach.run_cli(p.parse_args(["--table", str(qcdark_ge), "--exposure", "1", "--n-masses",
                                     "6", "--uncertainty", "4", "--out", str(tmp_path), "--json"]))
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["sigma_cm2"]) == 6 and "p2.5" in d["bands_sigma_cm2"]
    with h5py.File(tmp_path / "reach.h5") as f:
        assert f["heavy/sigma"].attrs["units"] == "cm^2"
    assert (tmp_path / "reach.png").stat().st_size > 1000


def _shipped_or_skip(*names):
    from dmca_hpc.tables import DATA_DIR
    paths = [DATA_DIR / f"{n}.hdf5" for n in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shipped tables missing: {missing}")
    return paths


def _cli(argv, capsys):
    import argparse, json
    from dmca_hpc.cli import reach as cli_reach
    p = argparse.ArgumentParser()
    cli_reach.add_arguments(p)
    assert cli_reach.run_cli(p.parse_args([str(a) for a in argv])) == 0
    out = capsys.readouterr().out
    return json.loads(out) if "--json" in argv else out


def test_several_targets_one_curve_each(tmp_path, capsys):
    """--table Si Ge C: one JSON curve per table, each equal to reach_curve of
    that table alone (the engine run here) with the same settings; one plot
    with every curve, one reach_<stem>.h5 per table."""
    import h5py
    paths = _shipped_or_skip("Si", "Ge", "C")
    opts = ["--exposure", 2.5, "--q-threshold", 2, "--n-masses", 5, "--mass-min-mev", 1,
            "--mass-max-mev", 300, "--uncertainty", 0]
    d = _cli(["--table", *paths, *opts, "--out", tmp_path, "--json"], capsys)
    assert [c["table"] for c in d["curves"]] == [str(p) for p in paths]
    m = np.array(d["mass_mev"]) * U.MEV_EV
    assert np.allclose(m, np.geomspace(1, 300, 5) * U.MEV_EV, rtol=1e-12)
    for c, p in zip(d["curves"], paths):
        want = reach.reach_curve(tables.read_table(p), m, exposure_kg_year=2.5, q_threshold=2)
        got = np.array([np.inf if s is None else s for s in c["sigma_cm2"]])
        assert np.array_equal(got, want.sigma_cm2)
        assert c["material"] == p.stem and c["kind"] in ("all-electron", "GTH pseudopotential")
        assert c["label"].startswith(f"{p.stem} ") and c["label"].endswith(f"({p.name})")
        with h5py.File(tmp_path / f"reach_{p.stem}.h5") as f:
            assert np.array_equal(f["heavy/sigma"][()], want.sigma_cm2)
            assert f["heavy/sigma"].attrs["units"] == "cm^2"
        single = _cli(["--table", p, *opts, "--json"], capsys)
        assert single["sigma_cm2"] == c["sigma_cm2"]
    assert d["sigma_cm2"] == d["curves"][0]["sigma_cm2"]  # top level: the first table, as before
    assert (tmp_path / "reach.png").stat().st_size > 1000
    assert not (tmp_path / "reach.h5").exists()
    text = _cli(["--table", *paths, *opts], capsys)
    for c in d["curves"]:
        assert c["label"] in text.splitlines()


def test_several_targets_bands_per_target(capsys):
    """--uncertainty with Si, Si_gth, Ge: Ge's band is uncertainty_bands of
    Ge alone, Si's pools its two tables (the DFT systematic, as a single
    material always did), both with the same seed; the Si_gth curve points
    to the Si band."""
    si, si_gth, ge = _shipped_or_skip("Si", "Si_gth", "Ge")
    opts = ["--exposure", 1, "--n-masses", 3, "--mass-min-mev", 5, "--mass-max-mev", 500,
            "--uncertainty", 4, "--seed", 7]
    d = _cli(["--table", si, ge, si_gth, *opts, "--json"], capsys)
    m = np.array(d["mass_mev"]) * U.MEV_EV
    by = {c["table"]: c for c in d["curves"]}
    pooled = reach.uncertainty_bands([tables.read_table(si), tables.read_table(si_gth)], m, 1.0,
                                     n_samples=4, seed=7)
    alone = reach.uncertainty_bands(tables.read_table(ge), m, 1.0, n_samples=4, seed=7)
    for key, b in ((str(si), pooled), (str(ge), alone)):
        for i, p in enumerate(reach.PERCENTILES):
            assert np.allclose(by[key]["bands_sigma_cm2"][f"p{p:g}"], b.sigma_cm2[i], rtol=1e-12)
    assert by[str(si_gth)]["bands_nominal"] == by[str(si)]["label"]
    assert by[str(si)]["bands_tables"] == [str(si), str(si_gth)]
    assert by[str(ge)]["bands_tables"] == [str(ge)]
    assert d["bands_sigma_cm2"] == by[str(si)]["bands_sigma_cm2"]
