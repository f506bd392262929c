"""Broken form-factor tables (issue #17): every defect is one line naming the
file, the dataset or attribute and what was expected, in the library
(TableFormatError / FileNotFoundError) and in ``rates``, ``reach`` and
``absorption`` (exit 2, no traceback)."""
import h5py
import numpy as np
import pytest

from dmca_hpc import units as U
from dmca_hpc.cli.main import main
from dmca_hpc.tables import FormFactorTable, TableFormatError, read_table, write_table


@pytest.fixture
def table(tmp_path):
    """A small valid table of our format (20 q bins x 10 E bins)."""
    t = FormFactorTable(f2=np.linspace(0.0, 1.0, 200).reshape(20, 10), dq_ame=0.02, de_ev=0.1,
                        vcell_ev3=40.0 * U.ANGSTROM_CM**3 / U.HBARC_EV_CM**3, cell_mass_ev=52e9,
                        gap_ev=1.1, material="Si")
    p = tmp_path / "good.hdf5"
    write_table(p, t)
    assert read_table(p).f2.shape == (20, 10)
    return p


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


def _set_f2(value_at):
    def fn(f):
        a = f["results/f2"][()]
        a[3, 4] = value_at
        f["results/f2"][...] = a
    return fn


def _transpose(f):
    a = f["results/f2"][()].T.copy()
    del f["results/f2"]
    f["results"].create_dataset("f2", data=a)


def _attr(name, value):
    def fn(f):
        f["results"].attrs[name] = value
    return fn


@pytest.mark.parametrize("edit,match", [
    (_set_f2(-1.0), r"dataset 'results/f2' has 1 negative bins \(first \[3, 4\] = -1\.0\); "
                    r"expected finite \|f_crystal\|\^2 >= 0"),
    (_set_f2(np.nan), r"dataset 'results/f2' has 1 NaN or infinite bins \(first \[3, 4\] = nan\)"),
    (_attr("VCell", "abc"), r"attribute 'VCell' of 'results' is 'abc'; expected a positive number: "
                            r"unit-cell volume \[eV\^-3\]"),
    (_attr("dq", -0.02), r"attribute 'dq' of 'results' is -0\.02; expected a positive number: "
                         r"q bin width \[alpha m_e\]"),
    (_transpose, r"dataset 'results/f2' has shape \(10, 20\) but 'run_settings/binning' says "
                 r"nq = 20, nE = 10 \(transposed\?\); expected f2 of shape \[nq, nE\]"),
])
def test_bad_table_content_names_file_item_and_expectation(table, edit, match):
    _edit(table, edit)
    with pytest.raises(TableFormatError, match=rf"^{table}: {match}"):
        read_table(table)


def _truncated(tmp_path, table):
    p = tmp_path / "truncated.hdf5"
    data = table.read_bytes()
    p.write_bytes(data[:len(data) // 2])
    return p


def test_truncated_directory_and_missing_files(tmp_path, table):
    p = _truncated(tmp_path, table)
    with pytest.raises(TableFormatError, match=rf"^{p}: HDF5 file cannot be read \(.*\); expected a "
                                               "complete form-factor table"):
        read_table(p)
    with pytest.raises(TableFormatError, match=rf"^{tmp_path}: is a directory \(expected a form-factor "
                                               "table file"):
        read_table(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'nope.hdf5'}: no such file"):
        read_table(tmp_path / "nope.hdf5")


@pytest.mark.parametrize("command", ["rates", "reach", "absorption"])
@pytest.mark.parametrize("case", ["truncated", "directory", "missing", "negative"])
def test_clis_print_one_line_and_exit_2(tmp_path, table, capsys, command, case):
    path = {"truncated": lambda: _truncated(tmp_path, table), "directory": lambda: tmp_path,
            "missing": lambda: tmp_path / "nope.hdf5",
            "negative": lambda: _edit(table, _set_f2(-1.0))}[case]()
    extra = {"rates": ["--mass-mev", "10"], "reach": ["--exposure", "1", "--uncertainty", "0"],
             "absorption": ["--out", str(tmp_path / "abs")]}[command]
    rc = main([command, "--table", str(path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"dmca-hpc {command}: error: {path}: "), err
    assert not (tmp_path / "abs").exists()
