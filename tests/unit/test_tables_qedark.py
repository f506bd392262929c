"""Tables out to peers (issue #15): the QEdark text layout as obscura reads it.

What obscura reads (facts, from the source; no code copied):

* temken/obscura ``src/Target_Crystal.cpp`` (commit 3b37c1b27c8c,
  ``Crystal::Crystal``): the file ``data/Semiconductors/C.<Si|Ge>137.dat`` is
  read with ``libphysica::Import_List(path)``; ``N_E = 500``, ``N_q = 900``,
  ``dE = 0.1 eV``, ``dq = 0.02 alpha m_e`` are fixed; the values are taken in
  order with ``Ei`` the outer and ``qi`` the inner loop (one running index),
  and ``|f|^2[qi][Ei] = prefactor * (qi + 1) / dE * wk / 4 * value`` with
  ``wk = 2/137`` and ``prefactor`` = 2.0 eV (Si), 1.8 eV (Ge); only Si and
  Ge are known.  The grids are ``Linear_Space(dq, N_q dq, N_q)`` and
  ``Linear_Space(dE, N_E dE, N_E)``: the numbers sit at (qi + 1) dq,
  (Ei + 1) dE (``src/Direct_Detection_Crystal.cpp`` sums at the same points).
* temken/libphysica ``src/Utilities.cpp`` ``Import_List(filepath, dimension,
  ignored_initial_lines)`` (header default ``ignored_initial_lines = 0``):
  skips that many lines, then reads every white-space separated number.
  obscura passes no count, so there is NO header line: a first line
  "nq nE" would be read as two table values and shift every bin by two.

So the writer must give 500 x 900 numbers, E outer, q inner, no header,
each number = f2 / (prefactor (qi + 1) / dE * wk / 4).  The test below
reads the file the way obscura does (a Python transcription of that loop,
written from the facts above) and compares with the table we wrote.
"""
import numpy as np
import pytest

from dmca_hpc import tables
from dmca_hpc.cli.main import main
from dmca_hpc.detection.rates import electron_rates
from dmca_hpc.tables import FormFactorTable, read_table, write_qedark_text

MASSES_EV = [10e6, 1e9]


@pytest.fixture(scope="module")
def si():
    return tables.load(material="Si")


def _cell(t):
    """The text file carries no cell data: give our table's to the reader."""
    return dict(cell_mass_ev=t.cell_mass_ev, vcell_ev3=t.vcell_ev3, gap_ev=t.gap_ev)


def _sub(t, nq):
    return FormFactorTable(f2=t.f2[:nq], dq_ame=t.dq_ame, de_ev=t.de_ev, vcell_ev3=t.vcell_ev3,
                           cell_mass_ev=t.cell_mass_ev, gap_ev=t.gap_ev, material=t.material)


def _obscura_read(path, prefactor_ev, n_e=500, n_q=900, de_ev=0.1):
    """obscura's Crystal constructor, transcribed: every number in order, no
    header skipped, Ei outer, qi inner, times prefactor (qi + 1) / dE wk / 4."""
    aux = [float(x) for x in path.read_text().split()]
    wk = 2.0 / 137.0
    ff = np.zeros((n_q, n_e))
    i = 0
    for ei in range(n_e):
        for qi in range(n_q):
            ff[qi, ei] = prefactor_ev * (qi + 1) / de_ev * wk / 4.0 * aux[i]
            i += 1
    return ff, len(aux)


def test_layout_is_what_obscura_reads(tmp_path, si):
    p = write_qedark_text(tmp_path / "C.Si137.dat", si)
    lines = p.read_text().splitlines()
    # no header: 450000 lines of one number each (the first is a table value,
    # not "nq nE"), E outer, q inner
    assert len(lines) == 500 * 900
    assert all(len(ln.split()) == 1 for ln in lines[:5])
    ff, n = _obscura_read(p, prefactor_ev=2.0)
    assert n == 500 * 900
    np.testing.assert_allclose(ff, si.f2[:900], rtol=1e-12, atol=0)
    # ordering spelled out: value number Ei * 900 + qi is bin (qi, Ei)
    qi, ei = 417, 123
    assert float(lines[ei * 900 + qi]) == pytest.approx(
        si.f2[qi, ei] / (2.0 * (qi + 1) / 0.1 * (2 / 137) / 4), rel=1e-15)


@pytest.mark.parametrize("fdm", ["heavy", "light"])
def test_round_trip_obscura_size(tmp_path, si, fdm):
    """Default size (obscura's 900 q bins): per bin and rates against our
    table cut at the same 18 alpha m_e."""
    p = write_qedark_text(tmp_path / "C.Si137.dat", si)
    t2 = read_table(p, **_cell(si))
    assert t2.material == "Si" and t2.f2.shape == (900, 500)
    cut = _sub(si, 900)
    pos = cut.f2 > 0
    np.testing.assert_allclose(t2.f2[pos], cut.f2[pos], rtol=1e-6, atol=0)
    assert np.all(t2.f2[~pos] == 0)
    r1 = electron_rates(cut, MASSES_EV, fdm=fdm)
    r2 = electron_rates(t2, MASSES_EV, fdm=fdm)
    np.testing.assert_allclose(r2.total, r1.total, rtol=1e-6, atol=0)
    np.testing.assert_allclose(r2.dr_dq, r1.dr_dq, rtol=1e-6, atol=1e-300)


@pytest.mark.parametrize("fdm", ["heavy", "light"])
def test_round_trip_full_table(tmp_path, si, fdm):
    """All 1000 q bins (``nq`` for obscura revisions with a larger N_q; padded
    with zeros to 1250): per bin and rates equal to the shipped table's."""
    for nq in (1000, 1250):
        p = write_qedark_text(tmp_path / f"Si_{nq}.dat", si, nq=nq)
        t2 = read_table(p, **_cell(si))
        assert t2.f2.shape == (nq, 500)
        assert np.all(t2.f2[1000:] == 0)
        pos = si.f2 > 0
        np.testing.assert_allclose(t2.f2[:1000][pos], si.f2[pos], rtol=1e-6, atol=0)
        r1 = electron_rates(si, MASSES_EV, fdm=fdm)
        r2 = electron_rates(t2, MASSES_EV, fdm=fdm)
        np.testing.assert_allclose(r2.total, r1.total, rtol=1e-6, atol=0)
        np.testing.assert_allclose(r2.dr_dq, r1.dr_dq, rtol=1e-6, atol=1e-300)


def test_refuses_what_obscura_cannot_read(tmp_path, si):
    odd = FormFactorTable(f2=si.f2[:, ::2], dq_ame=0.02, de_ev=0.2, vcell_ev3=si.vcell_ev3,
                          cell_mass_ev=si.cell_mass_ev, gap_ev=1.11, material="Si")
    with pytest.raises(ValueError, match=r"dE = 0\.2 eV; the QEdark text layout obscura reads has "
                                         r"dE = 0\.1 eV fixed"):
        write_qedark_text(tmp_path / "x.dat", odd)
    c = tables.load(material="diamond")
    with pytest.raises(ValueError, match=r"material 'C': obscura's Crystal reads only Si"):
        write_qedark_text(tmp_path / "x.dat", c)
    assert not (tmp_path / "x.dat").exists()
    # with the prefactor stated, the layout is written for another reader
    write_qedark_text(tmp_path / "C.dat", c, prefactor_ev=1.0)
    t2 = read_table(tmp_path / "C.dat", prefactor_ev=1.0, **_cell(c))
    np.testing.assert_allclose(t2.f2, c.f2[:900], rtol=1e-12, atol=0)


def test_table_export_and_info_commands(tmp_path, capsys):
    out = tmp_path / "data" / "C.Ge137.dat"
    assert main(["table", "export", "--qedark", str(out), "--material", "Ge"]) == 0
    text = capsys.readouterr().out
    assert "450000 numbers, one per line, no header, E outer (500 bins of 0.1 eV), q inner " \
           "(900 bins of 0.02 alpha m_e)" in text
    assert "prefactor 1.8 eV" in text and "q > 18 alpha m_e not written" in text
    ge = tables.load(material="Ge")
    ff, n = _obscura_read(out, prefactor_ev=1.8)
    np.testing.assert_allclose(ff, ge.f2[:900], rtol=1e-12, atol=0)
    assert main(["table", "info", "Ge"]) == 0
    info = capsys.readouterr().out
    for want in ("Ge, format dmca_hpc", "1000 x 500 (q bins x E bins)", "0 - 20 alpha m_e",
                 "0 - 50 eV", "gap 0.67 eV", "(e_complete_ev)", "(q_complete_ame)",
                 "all_electron"):
        assert want in info, want
    assert main(["table", "info", str(out)]) == 0     # the text file reads back
    assert "900 x 500" in capsys.readouterr().out


def test_table_command_errors_are_one_line(tmp_path, capsys):
    rc = main(["table", "export", "--qedark", str(tmp_path / "c.dat"), "--material", "diamond"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "obscura's Crystal reads only Si" in err[0]
    rc = main(["table", "info", str(tmp_path / "nope.hdf5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("dmca-hpc table info: error: ")
    assert not (tmp_path / "c.dat").exists()
