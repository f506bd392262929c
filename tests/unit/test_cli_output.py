"""One spelling rule and one meaning per word across commands: names in any
case, aliases shown, the gap a command uses named, inputs echoed, and bad
input as one line ``dmca-hpc COMMAND: error: ...`` (exit 2) in the units the
user gave."""
import pytest

from dmca_hpc.cli.main import main


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_nuclear_target_any_case_echoes_inputs(capsys):
    rc, out, _ = run(capsys, "nuclear", "--target", "xe", "--mass-gev", 50, "--recoil-kev", 1)
    assert rc == 0
    head = out.splitlines()[0]
    assert head.startswith("wimp on Xe: m = 50 GeV, sigma_n = 1e-45 cm^2, halo shm-2021")
    assert "v_esc = 544 km/s" in head and "rho = 0.3 GeV/cm^3" in head
    rc, _, err = run(capsys, "nuclear", "--target", "Pb", "--mass-gev", 50, "--recoil-kev", 1)
    assert rc == 2 and err.startswith("dmca-hpc nuclear: error: unknown target 'Pb'")


def test_materials_shows_aliases_and_both_gaps(capsys):
    rc, out, _ = run(capsys, "materials")
    assert rc == 0
    lines = out.splitlines()
    assert "exp. gap [eV]" in lines[0] and "scissor gap [eV]" in lines[0]
    assert any(l.startswith("C (diamond) ") for l in lines)
    assert "scissor gap: the gap the form-factor tables are shifted to" in lines[-1]


def test_select_names_its_gap_and_rejects_bad_masses(capsys):
    rc, out, _ = run(capsys, "select", "--mass-mev", 0.5)
    lines = out.splitlines()
    assert rc == 0 and any(l.startswith("  kinematics:") and "scissor gap" in l for l in lines[:3])
    # each target: a rank line "  N  NAME  ...", then its kinematic verdict
    kin = {l.split()[1]: lines[i + 1] for i, l in enumerate(lines) if l[:3].strip().isdigit()}
    assert "<=" not in kin["Si"] and "yes: max deposit" in kin["Si"] and "scissor gap 1.11 eV" in kin["Si"]
    c = next(l for l in lines if l[:3].strip().isdigit() and l.split()[1] == "C")
    assert "C (diamond)" in c and "<= scissor gap 5.47 eV" in kin["C"]
    for bad in (-1, 0):
        rc, out, err = run(capsys, "select", "--mass-mev", bad)
        assert rc == 2 and not out
        assert err.strip() == f"dmca-hpc select: error: --mass-mev {bad:g}: expected a DM mass > 0 [MeV]"


def test_rates_reports_a_bad_mass_in_mev(capsys):
    rc, _, err = run(capsys, "rates", "--material", "si", "--mass-mev", -10)
    assert rc == 2 and err.startswith("dmca-hpc rates: error: ") and err.count("\n") == 1
    assert "-10" in err and "MeV" in err and "-10000000" not in err and "-1e+07 MeV" not in err
    # the library takes eV and says MeV too (the unit jobs and commands use)
    from dmca_hpc.detection.rates import electron_rates
    from dmca_hpc.tables import load
    with pytest.raises(ValueError, match=r"> 0 MeV\) and finite, got -10 MeV \(-1e\+07 eV\)"):
        electron_rates(load(None, "Si"), [-1e7])


def test_rates_print_a_note_all_masses_share_once(capsys):
    """A scintillator's 'no pair energy' note holds for every mass: one line, not one per
    mass; a note of one mass alone (the 1 GeV rate drawn from beyond the table) keeps its mass."""
    rc, out, _ = run(capsys, "rates", "--material", "NaI", "--mass-mev", 10, 100, 1000)
    assert rc == 0
    lines = out.splitlines()
    pair = [l for l in lines if "no electron-hole pair energy" in l]
    assert len(pair) == 1 and pair[0].startswith("  note (every mass): "), pair
    assert any(l.startswith("  note (1000 MeV): ") for l in lines), lines


@pytest.mark.parametrize("argv", [
    ["absorption", "--table", "/nonexistent/T.hdf5"],
    ["reach", "--material", "Unobtainium", "--exposure", 1],
    ["select", "--mass-mev", 1, "--halo", "nope"],
])
def test_error_prefix(capsys, argv, tmp_path):
    if argv[0] == "absorption":
        argv = argv + ["--out", tmp_path]
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and err.startswith(f"dmca-hpc {argv[0]}: error: ") and err.count("\n") == 1


def test_reach_observed_fewer_bins_and_default_bands(capsys):
    import argparse
    from dmca_hpc.cli import reach as cli_reach
    p = argparse.ArgumentParser()
    cli_reach.add_arguments(p)
    # the README promises 68/95% bands: reach draws them unless told --uncertainty 0
    assert p.parse_args(["--material", "Si", "--exposure", "1"]).uncertainty == 20
    rc, out, _ = run(capsys, "reach", "--material", "Si", "--exposure", 1, "--n-masses", 3,
                     "--mass-min-mev", 10, "--mass-max-mev", 100, "--observed", 2, 1,
                     "--uncertainty", 0)
    assert rc == 0 and "not used (unconstrained)" in out
