"""The correction ladder of the pw.x runner: what to change after a failure.

The design follows the two most trusted self-correcting runners
(shared/design/oracle.md):

* custodian: after each run every handler looks at the outputs, the first
  that fires applies a correction, and the correction (error names and the
  actions taken) is appended to a JSON log; a bound on the number of
  corrections ends the job as failed.
* aiida-quantumespresso's PwBaseWorkChain: prioritized handlers react to
  specific exit statuses, unrecoverable statuses end the work at once, and
  electronic non-convergence restarts from the last charge density.

A failed attempt's class comes from :func:`dmca_hpc.oracle.handlers.diagnose`;
:func:`apply_correction` picks the handler for it and returns the next
attempt's parameters.  Pure Python (no numpy, no ASE).

Parameters are the nested pw.x namelists as a dict of dicts,
``{"control": {...}, "system": {...}, "electrons": {...}}``, in pw.x's own
units (Ry, bohr) because they are written unchanged into the input file.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from dmca_hpc.oracle.handlers import Diagnosis


#: mixing_beta ladder (issue 7: 0.7 -> 0.3 -> 0.1)
BETA_LADDER = (0.7, 0.3, 0.1)
#: diagonalization ladder available in QE 6.7 ('paro' arrived in QE 7.0)
DIAG_LADDER = ("david", "ppcg", "cg")
#: degauss ladder [Ry] once smearing is switched on
DEGAUSS_LADDER = (0.01, 0.02, 0.05)
#: cap on electron_maxstep when doubling it
MAX_ELECTRON_MAXSTEP = 800


@dataclass
class Correction:
    """One correction: which handler, for which errors, the actions taken.

    ``actions`` follow custodian's modder convention:
    ``{"dict": "electrons", "action": {"_set": {"mixing_beta": 0.3}}}`` for a
    namelist change, ``{"restart": "charge_density"}`` /
    ``{"restart": "checkpoint"}`` for a restart from the previous attempt's
    files (``none`` when those files are absent), ``{"retry": "unchanged"}``.
    """

    handler: str
    errors: list[str]
    actions: list[dict]
    attempt: int = 0
    message: str = ""

    def to_dict(self) -> dict:
        return {"handler": self.handler, "errors": list(self.errors), "actions": self.actions,
                "attempt": self.attempt, "message": self.message}


def _get(params: dict, section: str, key: str, default: Any) -> Any:
    return params.get(section, {}).get(key, default)


def _set(params: dict, section: str, key: str, value: Any) -> dict:
    params.setdefault(section, {})[key] = value
    return {"dict": section, "action": {"_set": {key: value}}}


def _lower_beta(params: dict) -> dict | None:
    beta = float(_get(params, "electrons", "mixing_beta", 0.7))
    lower = [b for b in BETA_LADDER if b < beta - 1e-9]
    if not lower:
        return None
    return _set(params, "electrons", "mixing_beta", lower[0])


def _local_tf(params: dict) -> dict | None:
    if _get(params, "electrons", "mixing_mode", "plain") == "local-TF":
        return None
    return _set(params, "electrons", "mixing_mode", "local-TF")


def _switch_diag(params: dict) -> dict | None:
    cur = _get(params, "electrons", "diagonalization", "david")
    idx = DIAG_LADDER.index(cur) if cur in DIAG_LADDER else -1
    if idx + 1 >= len(DIAG_LADDER):
        return None
    return _set(params, "electrons", "diagonalization", DIAG_LADDER[idx + 1])


def _raise_maxstep(params: dict) -> dict | None:
    cur = int(_get(params, "electrons", "electron_maxstep", 100))
    if cur >= MAX_ELECTRON_MAXSTEP:
        return None
    return _set(params, "electrons", "electron_maxstep", min(2 * cur, MAX_ELECTRON_MAXSTEP))


def _smearing(params: dict, allow: bool) -> list[dict] | None:
    """Switch smearing on (marzari-vanderbilt, 0.01 Ry) or raise degauss up
    the ladder (then change to gaussian, the most robust)."""
    if not allow:
        return None
    occ = _get(params, "system", "occupations", "fixed")
    if occ != "smearing":
        return [_set(params, "system", "occupations", "smearing"),
                _set(params, "system", "smearing", "marzari-vanderbilt"),
                _set(params, "system", "degauss", DEGAUSS_LADDER[0])]
    deg = float(_get(params, "system", "degauss", 0.0))
    up = [d for d in DEGAUSS_LADDER if d > deg + 1e-12]
    if up:
        return [_set(params, "system", "degauss", up[0])]
    if _get(params, "system", "smearing", "gaussian") != "gaussian":
        return [_set(params, "system", "smearing", "gaussian")]
    return None


@dataclass
class Handler:
    """A prioritized correction handler (custodian's ErrorHandler).

    Attributes:
        name: handler name written to the correction log.
        errors: failure classes it reacts to.
        rungs: the ladder; each rung mutates the parameters and returns its
            action(s), or None when it has nothing left to change (then the
            next rung is tried).
        restart: what to restart from ("charge_density", "checkpoint" or None).
        max_corrections: bound on how many times this handler may fire.
    """

    name: str
    errors: tuple[str, ...]
    rungs: tuple[Callable[[dict], Any], ...]
    restart: str | None = None
    max_corrections: int = 10
    priority: int = 0

    def correct(self, params: dict) -> list[dict] | None:
        """Apply the first rung that changes something; None if exhausted."""
        for rung in self.rungs:
            out = rung(params)
            if out:
                return out if isinstance(out, list) else [out]
        return None


def default_handlers(allow_smearing: bool = True) -> list[Handler]:
    """The correction ladder, highest priority first.

    * scf_unconverged: mixing_beta 0.7 -> 0.3 -> 0.1, mixing_mode local-TF,
      switch diagonalization (david -> ppcg -> cg), double electron_maxstep,
      add / raise smearing; each retry restarts from the last charge density.
    * diagonalization: switch the algorithm (david -> ppcg -> cg), then lower
      mixing_beta; restart from the charge density.
    * charge_wrong: add smearing, then raise degauss.
    * out_of_walltime: restart from the pw.x checkpoint (restart_mode='restart').
    * timeout / nonzero_exit / missing / truncated / invalid output: retry once
      unchanged (restarting from the charge density when it exists), as a
      transient failure; a second occurrence fails the candidate.
    """
    def smear(p):
        return _smearing(p, allow_smearing)

    def restart_mode(p):
        return _set(p, "control", "restart_mode", "restart")

    def unchanged(p):
        return {"retry": "unchanged"}

    return [
        Handler("OutOfWalltimeHandler", ("out_of_walltime",), (restart_mode,),
                restart="checkpoint", max_corrections=3, priority=100),
        Handler("DiagonalizationHandler", ("diagonalization",),
                (_switch_diag, _lower_beta), restart="charge_density", priority=90),
        Handler("ChargeWrongHandler", ("charge_wrong",), (smear,),
                restart=None, max_corrections=4, priority=80),
        Handler("ScfConvergenceHandler", ("scf_unconverged",),
                (_lower_beta, _local_tf, _switch_diag, _raise_maxstep, smear),
                restart="charge_density", priority=70),
        Handler("TransientFailureHandler",
                ("timeout", "nonzero_exit", "missing_output", "truncated_output", "invalid_output"),
                (unchanged,), restart="charge_density", max_corrections=1, priority=10),
    ]


@dataclass
class CorrectionState:
    """Per-candidate bookkeeping of how often each handler has fired."""

    counts: dict = field(default_factory=dict)
    log: list = field(default_factory=list)


def apply_correction(diag: Diagnosis, params: dict, state: CorrectionState,
                     handlers: list[Handler], attempt: int) -> tuple[dict | None, Correction | None, str]:
    """Choose and apply a correction for a failed attempt.

    Args:
        diag: the failed attempt's diagnosis.
        params: the attempt's namelists (not modified).
        state: the candidate's correction bookkeeping (updated).
        handlers: the handler list (priority order).
        attempt: number of the attempt that failed (1-based).

    Returns:
        (new params or None, the :class:`Correction` or None, reason) — None
        params mean: give up (unrecoverable, no handler, handler exhausted).
    """
    if not diag.recoverable:
        return None, None, f"unrecoverable error class {diag.error_class!r}: no retry"
    for h in sorted(handlers, key=lambda h: -h.priority):
        if diag.error_class not in h.errors:
            continue
        n = state.counts.get(h.name, 0)
        if n >= h.max_corrections:
            return None, None, (f"{h.name} already applied {n} time(s) "
                                f"(max_corrections={h.max_corrections})")
        new = copy.deepcopy(params)
        for sec in ("control", "system", "electrons"):
            new.setdefault(sec, {})
        # a restart_mode='restart' belongs to the attempt it was set for only
        if h.restart != "checkpoint":
            new["control"].pop("restart_mode", None)
        actions = h.correct(new)
        if actions is None:
            return None, None, f"{h.name}: correction ladder exhausted"
        state.counts[h.name] = n + 1
        corr = Correction(h.name, [diag.error_class], actions, attempt, diag.message)
        if h.restart:
            corr.actions.append({"restart": h.restart})
        state.log.append(corr.to_dict())
        return new, corr, f"{h.name}: {diag.error_class}"
    return None, None, f"no handler for error class {diag.error_class!r}"
