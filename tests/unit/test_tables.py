"""Form-factor table I/O: QCDark HDF5, our HDF5 (round trip), QEdark text,
and clear errors for broken files."""
import h5py
import numpy as np
import pytest

from dmca_hpc import tables

from dmca_hpc import units as U
from dmca_hpc.tables import FormFactorTable, TableFormatError, read_table, write_table


def test_read_qcdark_ge(qcdark_ge):
    t = read_table(qcdark_ge)
    assert t.f2.shape == (1000, 500)
    assert t.material == "Ge"
    assert t.metadata["format"] == "qcdark"
    assert t.dq_ame == 0.02 and t.de_ev == 0.1 and t.gap_ev == 0.67
    # V_cell from the file's VCell [eV^-3] must equal the fcc primitive cell of
    # the file's own lattice vectors (run_settings/a, angstrom): a^3/4
    a = np.asarray(t.metadata["a"])
    assert t.cell_volume_angstrom3 == pytest.approx(abs(np.linalg.det(a)), rel=1e-6)
    # mCell = 2 Ge atoms; QCDark used 72.64 u-ish masses: within 0.1% of 2 x 72.63 u
    assert t.cell_mass_ev == pytest.approx(2 * 72.630 * U.AMU_EV, rel=1e-3)
    assert t.q_ame[0] == pytest.approx(0.01) and t.e_ev[-1] == pytest.approx(49.95)


def test_round_trip(qcdark_ge, tmp_path):
    t = read_table(qcdark_ge)
    p = write_table(tmp_path / "Ge.hdf5", t, input_hash="abc", prov={"who": "test"})
    t2 = read_table(p)
    assert np.array_equal(t.f2, t2.f2)
    for k in ("dq_ame", "de_ev", "vcell_ev3", "cell_mass_ev", "gap_ev", "material",
              "q_min_ame", "e_min_ev"):
        assert getattr(t2, k) == getattr(t, k), k
    assert bool(t2.scissor) == bool(t.scissor)
    assert t2.metadata["format"] == "dmca_hpc"
    assert t2.metadata["provenance"] == {"who": "test"}
    assert np.allclose(t2.metadata["kpts"], t.metadata["kpts"])
    with h5py.File(p) as f:
        assert f.attrs["complete"] and f.attrs["input_hash"] == "abc"
        # QCDark's reader needs exactly these; every dataset has units
        for k in ("dq", "dE", "VCell", "mCell", "bandgap", "scissor"):
            assert k in f["results"].attrs
        def check(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert "units" in obj.attrs, name
        f.visititems(check)
        assert np.allclose(f["results/q"][()], t.q_ame)


def test_qedark_text_conversion(qcdark_ge, tmp_path):
    """Write the Ge table in QEdark's text convention (E outer, q inner, w/4
    factor) and read it back: the reader's conversion inverts the writer's."""
    t = read_table(qcdark_ge)
    small = FormFactorTable(f2=t.f2[:900], dq_ame=0.02, de_ev=0.1, vcell_ev3=t.vcell_ev3,
                            cell_mass_ev=t.cell_mass_ev, gap_ev=0.67, material="Ge")
    p = tables.write_qedark_text(tmp_path / "C.Ge137.dat", small, prefactor_ev=1.8)
    raw = np.loadtxt(p)
    assert raw.size == 900 * 500
    # E outer, q inner: the second value is q bin 1 of E bin 0
    assert raw[1] == pytest.approx(small.f2[1, 0] / (1.8 * 2 / 0.1 * (2 / 137) / 4))
    t2 = read_table(p)  # material guessed from the file name
    assert t2.material == "Ge" and t2.metadata["format"] == "qedark-text"
    assert np.allclose(t2.f2, small.f2, rtol=1e-12, atol=0)
    # QEdark's Ge cell: 2 x 72.6 u, a = 5.658 angstrom
    assert t2.cell_mass_ev == pytest.approx(2 * 72.6 * U.AMU_EV)
    assert t2.cell_volume_angstrom3 == pytest.approx(5.658**3 / 4)


def test_missing_attribute_named(qcdark_ge, tmp_path):
    p = tmp_path / "broken.hdf5"
    with h5py.File(qcdark_ge) as src, h5py.File(p, "w") as dst:
        g = dst.create_group("results")
        g["f2"] = src["results/f2"][:10, :10]
        for k, v in src["results"].attrs.items():
            if k != "VCell":
                g.attrs[k] = v
    with pytest.raises(TableFormatError, match=r"broken\.hdf5.*'VCell'.*eV\^-3"):
        read_table(p)


def test_missing_f2_and_bad_text(tmp_path):
    p = tmp_path / "empty.hdf5"
    with h5py.File(p, "w") as f:
        f.create_group("results")
    with pytest.raises(TableFormatError, match="results/f2"):
        read_table(p)
    q = tmp_path / "odd.dat"
    q.write_text("1 2 3\n")
    with pytest.raises(TableFormatError, match="odd.dat"):
        read_table(q)
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "nope.hdf5")


def test_table_for_material_lists_shipped():
    with pytest.raises(FileNotFoundError, match="shipped tables"):
        tables.table_for_material("Unobtainium")
