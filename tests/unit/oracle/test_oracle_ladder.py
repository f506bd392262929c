"""dmca_hpc.oracle.ladder: which correction follows which failure, in
which order, and when the ladder gives up (pure Python, no pw.x)."""
from dmca_hpc.oracle import ladder
from dmca_hpc.oracle.handlers import Diagnosis


def _params():
    return {"control": {}, "system": {"occupations": "fixed"},
            "electrons": {"mixing_beta": 0.7, "electron_maxstep": 100}}


def test_scf_ladder_order():
    """The ScfConvergenceHandler walks beta 0.7 -> 0.3 -> 0.1, local-TF,
    david -> ppcg -> cg, electron_maxstep x2, smearing on, degauss up."""
    params = _params()
    state = ladder.CorrectionState()
    handlers = [ladder.Handler(h.name, h.errors, h.rungs, h.restart, 99, h.priority)
                for h in ladder.default_handlers()]
    seen = []
    for n in range(1, 40):
        new, corr, reason = ladder.apply_correction(Diagnosis("scf_unconverged", "x"), params,
                                                    state, handlers, n)
        if new is None:
            assert "exhausted" in reason
            break
        seen.append({k: v for a in corr.actions if "action" in a
                     for k, v in a["action"]["_set"].items()})
        assert {"restart": "charge_density"} in corr.actions
        params = new
    assert seen[:8] == [{"mixing_beta": 0.3}, {"mixing_beta": 0.1}, {"mixing_mode": "local-TF"},
                        {"diagonalization": "ppcg"}, {"diagonalization": "cg"},
                        {"electron_maxstep": 200}, {"electron_maxstep": 400},
                        {"electron_maxstep": 800}]
    assert seen[8] == {"occupations": "smearing", "smearing": "marzari-vanderbilt", "degauss": 0.01}
    assert seen[9:] == [{"degauss": 0.02}, {"degauss": 0.05}, {"smearing": "gaussian"}]
    assert len(state.log) == len(seen)


def test_unrecoverable_and_bounded():
    params = _params()
    new, corr, reason = ladder.apply_correction(Diagnosis("bad_input", "x"), params,
                                                ladder.CorrectionState(),
                                                ladder.default_handlers(), 1)
    assert new is None and corr is None and "no retry" in reason
    # the transient handler fires once, then the candidate fails
    state = ladder.CorrectionState()
    hs = ladder.default_handlers()
    new, corr, _ = ladder.apply_correction(Diagnosis("timeout", "x"), params, state, hs, 1)
    assert corr.handler == "TransientFailureHandler" and new == params
    new, corr, reason = ladder.apply_correction(Diagnosis("timeout", "x"), params, state, hs, 2)
    assert new is None and "max_corrections=1" in reason


def test_smearing_off_when_not_allowed():
    params = {"control": {}, "system": {"occupations": "fixed"}, "electrons": {}}
    new, corr, reason = ladder.apply_correction(
        Diagnosis("charge_wrong", "x"), params, ladder.CorrectionState(),
        ladder.default_handlers(allow_smearing=False), 1)
    assert new is None and "exhausted" in reason
    assert params["system"] == {"occupations": "fixed"}  # the input is never modified
