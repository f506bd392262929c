"""DMCA exciton tables (issue #15): ``form_factors[k, q, omega]``, ``kpoints``,
``qpoints``, ``omega``, ``metadata``, optional ``kweights``,
``dft_form_factors`` and ``uncertainty`` (conventions:
:func:`dmca_hpc.tables.read_exciton_h5`).

The files are built here from the shipped all-electron Si table: its f2 is
split over four k with random positive shares and known weights (so that
sum_k w_k F_k = f2 exactly), the "exciton" copy multiplies the bins below
3 eV by a planted factor.  The expectations come from the rate engine on
tables built independently of the reader (and, for the planted change, from
the linearity of dR/dE in f2 bin by bin), never from the reader itself."""
import json
import re

import h5py
import numpy as np
import pytest

from dmca_hpc import tables
from dmca_hpc import units as U
from dmca_hpc.cli.main import main
from dmca_hpc.detection.rates import electron_rates, q_bins
from dmca_hpc.tables import FormFactorTable, TableFormatError, read_exciton_h5, read_table

WEIGHTS = np.array([0.1, 0.2, 0.3, 0.4])
#: planted exciton change: bins with centre below E_CUT are multiplied by GAIN
E_CUT_EV, GAIN = 3.0, 1.8
MASSES_EV = [10e6, 100e6, 1e9]


@pytest.fixture(scope="module")
def si():
    return tables.load(material="Si")


def _gain(t):
    return np.where(t.e_ev < E_CUT_EV, GAIN, 1.0)


def _split(t, seed=1):
    """[nk, nq, nE] slices F_k = f2 u_k / sum_j w_j u_j: sum_k w_k F_k = f2 to rounding."""
    u = np.random.default_rng(seed).uniform(0.5, 1.5, size=(WEIGHTS.size,) + t.f2.shape)
    return t.f2[None] * u / np.tensordot(WEIGHTS, u, axes=1)[None]


def write_exciton(path, t, *, q_unit="alpha m_e", e_unit="eV", kweights=True, meta=None,
                  metadata_as="json", uncertainty=None, edit=None):
    """A DMCA exciton file of table ``t``; ``edit(f)`` breaks it afterwards."""
    dft = _split(t)
    exc = dft * _gain(t)[None, None, :]
    qf = {"alpha m_e": 1.0, "keV": U.ALPHA_ME_EV / 1e3}[q_unit]
    ef = {"eV": 1.0, "meV": 1e3}[e_unit]
    m = {"material": "Si", "cell_mass_ev": t.cell_mass_ev, "cell_volume_ev3": t.vcell_ev3,
         "gap_ev": t.gap_ev, "method": "test: planted gain below 3 eV"} if meta is None else meta
    with h5py.File(path, "w") as f:
        f["form_factors"] = exc
        f["dft_form_factors"] = dft
        f["kpoints"] = np.arange(WEIGHTS.size * 3, dtype=float).reshape(-1, 3) / 10
        f["kpoints"].attrs["units"] = "bohr^-1"
        f["qpoints"] = t.q_ame * qf
        f["qpoints"].attrs["units"] = q_unit
        f["omega"] = t.e_ev * ef
        f["omega"].attrs["units"] = e_unit
        if kweights:
            f["kweights"] = WEIGHTS
        if metadata_as == "json":
            f["metadata"] = json.dumps(m)
        else:
            g = f.create_group("metadata")
            for k, v in m.items():
                g.attrs[k] = v
        if uncertainty is not None:
            f["uncertainty"] = uncertainty
        if edit:
            edit(f)
    return path


@pytest.fixture(scope="module")
def exciton_file(tmp_path_factory, si):
    return write_exciton(tmp_path_factory.mktemp("exc") / "Si_exciton.h5", si)


def _rates(t, fdm):
    return electron_rates(t, MASSES_EV, fdm=fdm, halo="shm-2021", sigma_e_cm2=1e-39)


@pytest.mark.parametrize("fdm", ["heavy", "light"])
def test_dft_slices_reproduce_our_rates(exciton_file, si, fdm):
    d = read_exciton_h5(exciton_file, which="dft")
    ref = _rates(si, fdm)
    r = _rates(d, fdm)
    np.testing.assert_allclose(r.total, ref.total, rtol=1e-10, atol=0)
    np.testing.assert_allclose(r.dr_dq, ref.dr_dq, rtol=1e-10, atol=1e-300)
    assert d.material == "Si" and d.metadata["k_weights"] == "dataset 'kweights'"
    assert d.f2_sigma is None and d.metadata["exciton_corrected"] is False


@pytest.mark.parametrize("fdm", ["heavy", "light"])
def test_exciton_change_is_exactly_the_planted_one(exciton_file, si, fdm):
    t = read_table(exciton_file)          # the corrected table, as rates/reach see it
    assert t.metadata["format"] == "dmca-exciton" and t.metadata["dataset"] == "form_factors"
    g = _gain(si)
    r = _rates(t, fdm)
    # 1) the same engine on a table modified bin by bin, built without the reader
    planted = FormFactorTable(f2=si.f2 * g[None, :], dq_ame=si.dq_ame, de_ev=si.de_ev,
                              vcell_ev3=si.vcell_ev3, cell_mass_ev=si.cell_mass_ev,
                              gap_ev=si.gap_ev, material="Si")
    np.testing.assert_allclose(r.total, _rates(planted, fdm).total, rtol=1e-10, atol=0)
    # 2) linearity: dR/dE of every E bin scales by its own factor, so the
    #    total and each Q bin follow from the uncorrected spectrum alone
    base = _rates(si, fdm)
    want_total = (base.dr_de * g).sum(axis=1) * si.de_ev
    np.testing.assert_allclose(r.total, want_total, rtol=1e-10, atol=0)
    qb = q_bins(si.e_ev, si.gap_ev, 3.6)
    want_q1 = (base.dr_de * g)[:, qb == 1].sum(axis=1) * si.de_ev
    np.testing.assert_allclose(r.dr_dq[:, 0], want_q1, rtol=1e-10, atol=0)
    # the change is there (Q = 1 of Si spans 1.11-4.71 eV: the planted bins are in it)
    assert np.all(r.dr_dq[:, 0] > 1.1 * base.dr_dq[:, 0])
    np.testing.assert_allclose(r.dr_dq[:, 2:], base.dr_dq[:, 2:], rtol=1e-10, atol=1e-300)


def test_equal_weights_units_and_metadata_group(tmp_path, si):
    """No kweights: w_k = 1/N_k; q in keV, omega in meV; metadata as a group
    holding only the material: cell mass, volume and gap from the library."""
    from dmca_hpc.materials import get_material
    def equal_split(f):
        s = _split(si) * WEIGHTS[:, None, None] * WEIGHTS.size   # mean over k = f2
        for name in ("form_factors", "dft_form_factors"):
            f[name][...] = s * (_gain(si)[None, None, :] if name == "form_factors" else 1.0)
    p = write_exciton(tmp_path / "eq.h5", si, q_unit="keV", e_unit="meV", kweights=False,
                      meta={"material": "Si"}, metadata_as="group", edit=equal_split)
    d = read_exciton_h5(p, which="dft")
    assert d.metadata["k_weights"].startswith("equal weights 1/N_k")
    np.testing.assert_allclose(d.f2, si.f2, rtol=1e-12, atol=0)
    assert d.dq_ame == pytest.approx(si.dq_ame, rel=1e-12)
    assert d.de_ev == pytest.approx(si.de_ev, rel=1e-12)
    lib = get_material("Si")
    assert d.cell_mass_ev == pytest.approx(lib.cell_mass_ev, rel=1e-12)
    assert d.cell_volume_angstrom3 == pytest.approx(lib.cell_volume_angstrom3, rel=1e-12)
    assert d.gap_ev == lib.scissor_gap_ev
    assert sorted(d.metadata["cell_from_library"]) == ["cell_mass_ev", "cell_volume_ev3", "gap_ev"]


def test_uncertainty_is_the_weighted_linear_sum(tmp_path, si):
    sig = np.random.default_rng(7).uniform(0, 0.1, size=(WEIGHTS.size,) + si.f2.shape)
    p = write_exciton(tmp_path / "unc.h5", si, uncertainty=sig)
    t = read_table(p)
    np.testing.assert_allclose(t.f2_sigma, np.tensordot(WEIGHTS, sig, axes=1), rtol=1e-12)
    # kept through our own HDF5 format
    t2 = read_table(tables.write_table(tmp_path / "again.hdf5", t))
    np.testing.assert_array_equal(t2.f2_sigma, t.f2_sigma)
    np.testing.assert_array_equal(t2.f2, t.f2)


def _delete(name):
    def fn(f):
        del f[name]
    return fn


def _replace(name, data, units=None):
    def fn(f):
        attrs = dict(f[name].attrs) if isinstance(f.get(name), h5py.Dataset) else {}
        del f[name]
        f[name] = data
        for k, v in attrs.items():
            f[name].attrs[k] = v
        if units is not None:
            f[name].attrs["units"] = units
    return fn


def _del_attr(name, attr):
    def fn(f):
        del f[name].attrs[attr]
    return fn


def _set_bin(name, value):
    def fn(f):
        a = f[name][()]
        a[2, 5, 30] = value
        f[name][...] = a
    return fn


def _bad_cases(si):
    q = si.q_ame
    nonuniform = q.copy()
    nonuniform[10:] += 0.005
    return [
        ("missing dataset", _delete("qpoints"), r"dataset 'qpoints' missing \(expected q bin centres"),
        ("wrong shape", _replace("omega", si.e_ev[:-1]),
         r"dataset 'omega' has shape \(499,\); expected energy bin centres \[500\]"),
        ("missing units", _del_attr("omega", "units"),
         r"dataset 'omega' has no 'units' attribute; expected one of 'eV', 'meV'"),
        ("unknown units", _replace("qpoints", q, units="furlong"),
         r"dataset 'qpoints' has units 'furlong'; expected one of 'alpham_e'"),
        ("negative bin", _set_bin("form_factors", -1.0),
         r"dataset 'form_factors' has negative bins \(first \[2, 5, 30\] = -1\.0\)"),
        ("NaN bin", _set_bin("form_factors", np.nan),
         r"dataset 'form_factors' has NaN or infinite bins \(first \[2, 5, 30\] = nan\)"),
        ("uncertainty shape", lambda f: f.create_dataset("uncertainty", data=np.zeros((2, 3))),
         r"dataset 'uncertainty' has shape \(2, 3\); expected form_factors' \(4, 1000, 500\)"),
        ("kweights sum", _replace("kweights", 2 * WEIGHTS),
         r"dataset 'kweights' sums to 2 \(min 0\.2\); expected weights >= 0 summing to 1"),
        ("non-uniform q", _replace("qpoints", nonuniform), r"dataset 'qpoints' is not uniform"),
        ("not from 0", _replace("omega", si.e_ev + 0.5),
         r"dataset 'omega' starts at the centre 0\.55 eV, so its first bin starts at 0\.5 eV; "
         r"expected bins from 0"),
        ("metadata key", _replace("metadata", json.dumps({"material": "Unobtainium",
                                                          "cell_mass_ev": 1e10, "gap_ev": 1.0})),
         r"metadata key 'cell_volume_ev3' missing \(expected the unit-cell volume \[eV\^-3\]"),
        ("no material", _replace("metadata", json.dumps({"cell_mass_ev": 1e10})),
         r"metadata key 'material' missing"),
        ("metadata not JSON", _replace("metadata", "material=Si"),
         r"dataset 'metadata' is not a JSON object"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_files_give_one_line_naming_file_and_dataset(tmp_path, si, case):
    label, edit, match = _bad_cases(si)[case]
    p = write_exciton(tmp_path / "bad.h5", si, edit=edit)
    with pytest.raises(TableFormatError) as err:
        read_table(p)
    msg = str(err.value)
    assert "\n" not in msg, label
    assert msg.startswith(f"{p}: "), (label, msg)
    assert re.search(match, msg), (label, msg)


def test_dft_dataset_missing_is_named(tmp_path, si):
    p = write_exciton(tmp_path / "nodft.h5", si, edit=_delete("dft_form_factors"))
    assert read_table(p).f2.shape == si.f2.shape        # the corrected table needs no DFT one
    with pytest.raises(TableFormatError, match=rf"^{p}: dataset 'dft_form_factors' missing"):
        read_exciton_h5(p, which="dft")


def test_rates_and_reach_cli_read_it(exciton_file, capsys):
    rc = main(["rates", "--table", str(exciton_file), "--mass-mev", "10", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    r = json.loads(out.out)
    assert np.isfinite(r["total_per_kg_year"]) and r["total_per_kg_year"] > 0
    assert r["Q_per_kg_year"][0] > 0 and all(np.isfinite(r["Q_per_kg_year"]))
    rc = main(["rates", "--table", str(exciton_file), "--mass-mev", "100"])
    text = capsys.readouterr().out
    total = [ln for ln in text.splitlines() if ln.strip().startswith("total")][0]
    assert rc == 0 and float(total.split()[1]) > 0 and "events/kg/year" in total
    rc = main(["reach", "--table", str(exciton_file), "--exposure", "1", "--n-masses", "3",
               "--uncertainty", "0", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert all(s is not None and s > 0 for s in json.loads(out.out)["sigma_cm2"])


def test_bad_file_through_rates_cli_is_one_line(tmp_path, si, capsys):
    p = write_exciton(tmp_path / "bad.h5", si, edit=_del_attr("qpoints", "units"))
    rc = main(["rates", "--table", str(p), "--mass-mev", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"dmca-hpc rates: error: {p}: dataset 'qpoints' has no 'units'")


def test_table_info_names_the_exciton_facts(exciton_file, capsys):
    assert main(["table", "info", str(exciton_file)]) == 0
    out = capsys.readouterr().out
    assert "format dmca-exciton" in out and "4 k slices summed with dataset 'kweights'" in out
    assert "1000 x 500 (q bins x E bins)" in out and "0 - 20 alpha m_e" in out
