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
