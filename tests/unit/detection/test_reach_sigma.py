"""Reach bands that draw a table's own per-bin 1-sigma (``f2_sigma``, issue 15).

The exciton files are written here in the DMCA layout (one k slice) from the
shipped all-electron Si table, with ``uncertainty`` = c * f2 for a chosen c,
and read back through :func:`dmca_hpc.tables.read_table`.  Expectations come
from the linearity of the rate in f2 (a table scaled by (1 + c z) scales
every rate by (1 + c z), so every reach by 1 / (1 + c z)) and from the
standard normal's own statistics, not from numbers of this code."""
import dataclasses
import json

import h5py
import numpy as np
import pytest

from dmca_hpc import tables
from dmca_hpc import units as U
from dmca_hpc.detection import reach

MASSES_EV = np.array([10.0, 100.0, 1000.0]) * U.MEV_EV
#: relative per-bin 1-sigma planted in the "exciton" file
REL_SIGMA = 0.2
N_SAMPLES, SEED = 60, 1


@pytest.fixture(scope="module")
def si():
    return tables.load(material="Si")


def write_exciton(path, t, rel_sigma=None):
    """A one-k DMCA exciton file of table ``t``; ``uncertainty`` = rel_sigma * f2
    (no ``uncertainty`` dataset when rel_sigma is None)."""
    with h5py.File(path, "w") as f:
        f["form_factors"] = t.f2[None]
        f["kpoints"] = np.zeros((1, 3))
        f["qpoints"] = t.q_ame
        f["qpoints"].attrs["units"] = "alpha m_e"
        f["omega"] = t.e_ev
        f["omega"].attrs["units"] = "eV"
        f["metadata"] = json.dumps({"material": "Si", "cell_mass_ev": t.cell_mass_ev,
                                    "cell_volume_ev3": t.vcell_ev3, "gap_ev": t.gap_ev})
        if rel_sigma is not None:
            f["uncertainty"] = rel_sigma * t.f2[None]
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, si):
    d = tmp_path_factory.mktemp("sigma")
    return {"none": write_exciton(d / "none.h5", si), "zero": write_exciton(d / "zero.h5", si, 0.0),
            "rel": write_exciton(d / "rel.h5", si, REL_SIGMA)}


@pytest.fixture(scope="module")
def halo_and_sigma(files):
    """Bands of the table without sigma and with sigma = REL_SIGMA * f2, same seed."""
    kw = dict(n_samples=N_SAMPLES, seed=SEED)
    return (reach.uncertainty_bands(tables.read_table(files["none"]), MASSES_EV, 1.0, **kw),
            reach.uncertainty_bands(tables.read_table(files["rel"]), MASSES_EV, 1.0, **kw))


def test_files_carry_the_planted_sigma(files, si):
    assert tables.read_table(files["none"]).f2_sigma is None
    assert np.array_equal(tables.read_table(files["zero"]).f2_sigma, np.zeros_like(si.f2))
    assert np.allclose(tables.read_table(files["rel"]).f2_sigma, REL_SIGMA * si.f2, rtol=1e-12)


def test_without_sigma_the_bands_are_the_halo_bands(files):
    """A table without f2_sigma: the bands are exactly the halo Monte Carlo
    assembled here from its parts (sample_halos, electron_rates,
    reach_from_rates, percentiles), i.e. what reach did before f2_sigma was
    used; the inputs carry no table-sigma entry."""
    from dmca_hpc.detection.rates import electron_rates
    t = tables.read_table(files["none"])
    b = reach.uncertainty_bands(t, MASSES_EV, 1.0, n_samples=8, seed=5)
    nq = electron_rates(t, MASSES_EV).dr_dq.shape[1]
    sg = []
    for h in reach.sample_halos("shm-2021", 8, 5):
        r = electron_rates(t, MASSES_EV, halo=h, n_q_max=nq)
        sg.append(reach.reach_from_rates(r, 1.0).sigma_cm2)
    assert np.array_equal(b.samples_sigma_cm2, np.array(sg))
    assert np.array_equal(b.sigma_cm2, np.percentile(np.array(sg), reach.PERCENTILES, axis=0))
    assert "table_sigma" not in b.inputs


def test_zero_sigma_gives_the_same_band(files):
    """f2_sigma = 0: each draw is f2 + z * 0 = f2, so every number equals the
    band of the same table without sigma; only the inputs say sigma was used."""
    kw = dict(n_samples=10, seed=7)
    a = reach.uncertainty_bands(tables.read_table(files["none"]), MASSES_EV, 1.0, **kw)
    b = reach.uncertainty_bands(tables.read_table(files["zero"]), MASSES_EV, 1.0, **kw)
    for name in ("sigma_cm2", "dr_dq", "samples_sigma_cm2"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.nominal.sigma_cm2, b.nominal.sigma_cm2)
    assert b.inputs["table_sigma"]["n_tables_with_sigma"] == 1


def test_sigma_draws_are_one_correlated_normal_per_sample(halo_and_sigma):
    """Same seed, so the halo draws are the same; f2 -> f2 (1 + c z) scales each
    reach by 1/(1 + c z).  So halo/sigma reach ratios must (a) be the same at
    every mass within a sample (one z shared by all bins: independent bin
    draws would move masses, which weigh different bins, differently), and
    (b) give z = (ratio - 1)/c that look standard normal: mean within
    3.3/sqrt(n) of 0, and (n-1) s^2 inside chi2(n-1)'s 0.1%..99.9% range."""
    from scipy.stats import chi2
    a, b = halo_and_sigma
    ratio = a.samples_sigma_cm2 / b.samples_sigma_cm2
    assert np.all(np.isfinite(ratio))
    assert np.allclose(ratio, ratio[:, :1], rtol=1e-10, atol=0)
    z = (ratio[:, 0] - 1.0) / REL_SIGMA
    n = z.size
    assert abs(z.mean()) < 3.3 / np.sqrt(n)
    s2 = z.var(ddof=1) * (n - 1)
    assert chi2.ppf(0.001, n - 1) < s2 < chi2.ppf(0.999, n - 1)


def test_sigma_widens_the_band_and_keeps_its_median(halo_and_sigma):
    """Widening: ln(reach) of the combined samples is ln(halo) - ln(1 + c z)
    with z independent of the halo, so its spread is the quadrature sum
    (sqrt(sd_halo^2 + ~c^2)) and grows; the 95% band [2.5, 97.5] widens at this
    seed too (percentiles of 60 samples are noisy; the sample sd is the
    seed-robust check).  Median: z is symmetric and 1/(1 + c z) is monotone
    with value 1 at z = 0, so the table draw leaves the median where the
    halo-only median is, up to sampling noise: within 3 standard errors of
    a median (1.2533 sd / sqrt(n) for a near-normal sample) and inside the
    halo-only 68% band."""
    a, b = halo_and_sigma
    la, lb = np.log(a.samples_sigma_cm2), np.log(b.samples_sigma_cm2)
    sd_a, sd_b = la.std(axis=0, ddof=1), lb.std(axis=0, ddof=1)
    assert np.all(sd_b > sd_a)
    width = lambda x: np.log(x.sigma_cm2[4] / x.sigma_cm2[0])
    assert np.all(width(b) > width(a))
    se = 1.2533 * sd_b / np.sqrt(N_SAMPLES)
    assert np.all(np.abs(np.log(b.sigma_cm2[2] / a.sigma_cm2[2])) < 3 * se)
    assert np.all((b.sigma_cm2[2] >= a.sigma_cm2[1]) & (b.sigma_cm2[2] <= a.sigma_cm2[3]))
    # the nominal curve is the table's own f2, not a draw
    assert np.array_equal(a.nominal.sigma_cm2, b.nominal.sigma_cm2)
    assert b.inputs["table_sigma"]["seed"] == [SEED, reach.TABLE_SIGMA_STREAM]


def test_deterministic_for_a_seed(files):
    t = tables.read_table(files["rel"])
    b1 = reach.uncertainty_bands(t, MASSES_EV, 1.0, n_samples=6, seed=3)
    b2 = reach.uncertainty_bands(t, MASSES_EV, 1.0, n_samples=6, seed=3)
    b3 = reach.uncertainty_bands(t, MASSES_EV, 1.0, n_samples=6, seed=4)
    assert np.array_equal(b1.samples_sigma_cm2, b2.samples_sigma_cm2)
    assert np.array_equal(b1.sigma_cm2, b2.sigma_cm2)
    assert not np.array_equal(b1.samples_sigma_cm2, b3.samples_sigma_cm2)
    # opting out gives the halo-only band of the same table
    off = reach.uncertainty_bands(t, MASSES_EV, 1.0, n_samples=6, seed=3, table_sigma=False)
    plain = reach.uncertainty_bands(dataclasses.replace(t, f2_sigma=None), MASSES_EV, 1.0,
                                    n_samples=6, seed=3)
    assert np.array_equal(off.samples_sigma_cm2, plain.samples_sigma_cm2)
    assert "table_sigma" not in off.inputs


def test_draw_table_clips_at_zero():
    t = tables.FormFactorTable(f2=np.array([[1.0, 0.0], [2.0, 4.0]]), dq_ame=0.1, de_ev=0.1,
                               vcell_ev3=1e-9, cell_mass_ev=1e10, gap_ev=1.0,
                               f2_sigma=np.array([[0.5, 0.5], [3.0, 1.0]]))
    assert np.array_equal(reach.draw_table(t, 1.0).f2, [[1.5, 0.5], [5.0, 5.0]])
    # f2 = 0 with sigma > 0 is defined (f2 + z sigma), and negative draws clip to 0
    assert np.array_equal(reach.draw_table(t, -1.0).f2, [[0.5, 0.0], [0.0, 3.0]])
    plain = dataclasses.replace(t, f2_sigma=None)
    assert reach.draw_table(plain, 2.0) is plain


def _cli(argv, capsys):
    import argparse
    from dmca_hpc.cli import reach as cli_reach
    p = argparse.ArgumentParser()
    cli_reach.add_arguments(p)
    assert cli_reach.run_cli(p.parse_args([str(a) for a in argv])) == 0
    return capsys.readouterr().out


def test_cli_says_when_the_table_sigma_is_in_the_band(files, capsys):
    opts = ["--exposure", 1, "--n-masses", 2, "--mass-min-mev", 10, "--mass-max-mev", 100,
            "--uncertainty", 4, "--seed", 2]
    text = _cli(["--table", files["rel"], *opts], capsys)
    assert "per-bin 1-sigma (f2_sigma)" in text and "fully correlated" in text
    d = json.loads(_cli(["--table", files["rel"], *opts, "--json"], capsys))
    assert "f2_sigma" in d["bands_description"]
    assert d["curves"][0]["bands_table_sigma"]["tables"] == [str(files["rel"])]
    want = reach.uncertainty_bands(tables.read_table(files["rel"]),
                                   np.array(d["mass_mev"]) * U.MEV_EV, 1.0, n_samples=4, seed=2)
    assert np.allclose(d["bands_sigma_cm2"]["p50"], want.sigma_cm2[2], rtol=1e-12)
    # a table without f2_sigma prints no such line and no such key
    text = _cli(["--table", files["none"], *opts], capsys)
    assert "f2_sigma" not in text
    d = json.loads(_cli(["--table", files["none"], *opts, "--json"], capsys))
    assert "bands_description" not in d and "bands_table_sigma" not in d["curves"][0]
