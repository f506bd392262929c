"""Bad numbers and silent drops on the command line (issue #17): each bad
value is one line naming the option, the value as given (in the option's
unit) and what is expected, exit 2; ``reach`` draws one curve per table and
says when a table given twice is used once."""
import json

import pytest

from dmca_hpc.cli.main import main
from dmca_hpc.tables import table_for_material


def _err(capsys):
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args,line", [
    (["--mass-mev", "-10"], "--mass-mev -10: expected a DM mass > 0 [MeV]"),
    (["--mass-mev", "10", "--gap", "-1"], "--gap -1: expected a band gap >= 0 [eV]"),
    (["--mass-mev", "10", "--sigma-e=-1e-39"], "--sigma-e -1e-39: expected a DM-electron cross section > 0 [cm^2]"),
    (["--mass-mev", "10", "--pair-energy", "0"], "--pair-energy 0: expected an energy per electron-hole pair > 0 [eV]"),
    (["--mass-mev", "nan"], "--mass-mev nan: expected a DM mass > 0 [MeV]"),
])
def test_rates_bad_numbers(capsys, args, line):
    assert main(["rates", "--material", "Si", *args]) == 2
    assert _err(capsys) == [f"dmca-hpc rates: error: {line}"]


@pytest.mark.parametrize("args,line", [
    (["--exposure", "-1"], "--exposure -1: expected an exposure > 0 [kg year]"),
    (["--exposure", "0"], "--exposure 0: expected an exposure > 0 [kg year]"),
    (["--exposure", "1", "--cl", "1.5"], "--cl 1.5: expected a confidence level between 0 and 1"),
    (["--exposure", "1", "--mass-min-mev", "5", "--mass-max-mev", "1"],
     "--mass-max-mev 1: expected a DM mass >= --mass-min-mev 5 [MeV]"),
    (["--exposure", "1", "--uncertainty", "1"],
     "--uncertainty 1: expected 0 (no bands) or a number of Monte Carlo samples >= 2"),
    (["--exposure", "1", "--observed", "0", "-2"], "--observed -2: expected counts >= 0 per Q bin"),
    (["--exposure", "1", "--gap", "-1"], "--gap -1: expected a band gap >= 0 [eV]"),
])
def test_reach_bad_numbers(capsys, args, line):
    assert main(["reach", "--material", "Si", *args]) == 2
    assert _err(capsys) == [f"dmca-hpc reach: error: {line}"]


def test_reach_tables_of_different_materials_draw_one_curve_each(capsys):
    """Tables of different materials are targets side by side (no longer an
    error): one curve per table, each the table's own single-table reach."""
    si, ge = table_for_material("Si"), table_for_material("Ge")
    argv = ["--exposure", "1", "--uncertainty", "0", "--n-masses", "2", "--json"]
    assert main(["reach", "--table", str(si), str(ge), *argv]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [c["table"] for c in both["curves"]] == [str(si), str(ge)]
    for c, p in zip(both["curves"], (si, ge)):
        assert main(["reach", "--table", str(p), *argv]) == 0
        assert c["sigma_cm2"] == json.loads(capsys.readouterr().out)["sigma_cm2"]


def test_reach_says_when_a_table_is_given_twice(capsys):
    si = str(table_for_material("Si"))
    assert main(["reach", "--table", si, si, "--exposure", "1", "--uncertainty", "0",
                 "--n-masses", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["curves"]) == 1 and f"table {si} given more than once: used once" in d["notes"]
