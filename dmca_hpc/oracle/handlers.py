"""Quantum ESPRESSO (pw.x) failure detection and correction handlers.

The design follows the two most trusted self-correcting runners
(shared/design/oracle.md):

* custodian: after each run every handler looks at the outputs, the first
  that fires applies a correction, and the correction (error names and the
  actions taken) is appended to a JSON log; a bound on the number of
  corrections ends the job as failed.
* aiida-quantumespresso's PwBaseWorkChain: the run's exit status is read from
  the text of the output (never assumed from a missing energy), prioritized
  handlers react to specific statuses, unrecoverable statuses end the work at
  once, and electronic non-convergence restarts from the last charge density.

This module is pure Python (no numpy, no ASE), so it is cheap to import and
easy to test with fake pw.x scripts.

Parameters are the nested pw.x namelists as a dict of dicts,
``{"control": {...}, "system": {...}, "electrons": {...}}``, in pw.x's own
units (Ry, bohr) because they are written unchanged into the input file.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable

# --- failure classes -----------------------------------------------------------

#: classes that no correction can fix: the candidate fails at once, no retry
UNRECOVERABLE = frozenset({
    "missing_pseudopotential",   # a UPF file is absent (checked before the run, or pw.x readpp)
    "bad_input",                 # pw.x rejected the input (namelist/card errors, check_atoms)
    "impossible_structure",      # atoms closer than the minimum distance, degenerate cell
    "pw_error",                  # any other "%%%%" error block of pw.x: deterministic, retry is useless
    "executable",                # pw.x path missing / not executable (a setup error)
})

#: every class the diagnosis can return, with a one-line description
ERROR_CLASSES = {
    "missing_pseudopotential": "pseudopotential file not found",
    "bad_input": "pw.x rejected the input file",
    "impossible_structure": "structure cannot be computed (overlapping atoms or degenerate cell)",
    "pw_error": "pw.x stopped with an error block not known to be recoverable",
    "executable": "pw.x executable missing or not executable",
    "diagonalization": "iterative diagonalization failed (S matrix / cholesky / bands not converged)",
    "charge_wrong": "integrated charge is wrong (occupations need smearing)",
    "scf_unconverged": "SCF convergence NOT achieved within electron_maxstep",
    "out_of_walltime": "pw.x stopped itself at max_seconds (Maximum CPU time exceeded)",
    "timeout": "pw.x killed by the runner after the per-attempt timeout",
    "nonzero_exit": "pw.x exited with a non-zero status and no recognised error text",
    "missing_output": "pw.x wrote no output",
    "truncated_output": "pw.x output ends before JOB DONE",
    "invalid_output": "run finished but energy/forces/stress are missing or not finite",
}

_ERROR_BLOCK = re.compile(
    r"%{10,}\s*\n\s*(?:task #\s*\d+\s*\n\s*)?"
    r"(?:Error in routine\s+(?P<r1>\S+)\s*\((?P<c1>-?\d+)\):|from\s+(?P<r2>\S+)\s*:\s*error #\s*(?P<c2>-?\d+))"
    r"\s*\n(?P<msg>.*?)\n\s*%{10,}", re.S)


@dataclass
class Diagnosis:
    """What went wrong with one pw.x attempt.

    Attributes:
        error_class: a key of :data:`ERROR_CLASSES`, or None for a clean run.
        message: the evidence (error block text, the matched line, exit code).
        routine: the pw.x routine named in a ``%%%%`` error block, if any.
    """

    error_class: str | None
    message: str = ""
    routine: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None

    @property
    def recoverable(self) -> bool:
        return self.error_class is not None and self.error_class not in UNRECOVERABLE


def parse_error_block(text: str) -> tuple[str, str] | None:
    """(routine, message) of the first pw.x ``%%%%`` error block in ``text``
    (stdout or the CRASH file), or None."""
    m = _ERROR_BLOCK.search(text or "")
    if not m:
        return None
    routine = (m.group("r1") or m.group("r2") or "").strip()
    msg = " ".join(line.strip() for line in m.group("msg").strip().splitlines())
    return routine, msg


# phrases that identify a diagonalization failure wherever they appear
_DIAG_PHRASES = ("S matrix not positive definite", "problems computing cholesky",
                 "too many bands are not converged", "eigenvectors failed to converge",
                 "cdiaghg", "rdiaghg")
_BAD_INPUT_ROUTINES = ("read_namelists", "read_cards", "card_", "iosys", "check_atoms",
                       "readpos", "cell_base_init", "input")


def classify_error_block(routine: str, msg: str) -> str:
    """Failure class of a pw.x error block (routine name and message)."""
    low = msg.lower()
    r = routine.lower()
    if r.startswith("readpp") or ("pseudo" in low and "not found" in low) or \
            (r.startswith("read_upf") or r.startswith("upf")):
        return "missing_pseudopotential"
    if any(p.lower() in low or p.lower() == r for p in _DIAG_PHRASES):
        return "diagonalization"
    if "charge is wrong" in low or "wrong charge" in low:
        return "charge_wrong"
    if "overlap" in low or r == "check_atoms":
        return "bad_input"
    if any(r.startswith(p) for p in _BAD_INPUT_ROUTINES) or "bad line in namelist" in low:
        return "bad_input"
    return "pw_error"


def diagnose(stdout: str | None, crash: str | None = None, returncode: int | None = 0,
             timed_out: bool = False) -> Diagnosis:
    """Classify one pw.x attempt from its text, the CRASH file and exit code.

    Order (most specific first): runner timeout; a ``%%%%`` error block
    (stdout or CRASH); diagonalization / charge phrases anywhere; ``Maximum
    CPU time exceeded``; ``convergence NOT achieved``; empty output; non-zero
    exit; output without ``JOB DONE``.  A clean run returns
    ``Diagnosis(None)``; its numbers are checked afterwards by the runner's
    validators (``invalid_output``).

    Args:
        stdout: pw.x standard output (None when the file is missing).
        crash: text of the CRASH file pw.x writes in its working directory.
        returncode: exit status (None when unknown).
        timed_out: True when the runner killed pw.x after its timeout.
    """
    text = stdout or ""
    if timed_out:
        return Diagnosis("timeout", "pw.x killed after the per-attempt timeout "
                         f"(last line: {_last_line(text)!r})")
    for source in (text, crash or ""):
        blk = parse_error_block(source)
        if blk:
            routine, msg = blk
            return Diagnosis(classify_error_block(routine, msg), f"{routine}: {msg}", routine)
    for phrase in ("S matrix not positive definite", "problems computing cholesky",
                   "too many bands are not converged"):
        if phrase in text:
            return Diagnosis("diagonalization", _line_with(text, phrase))
    if "charge is wrong" in text:
        return Diagnosis("charge_wrong", _line_with(text, "charge is wrong"))
    if "Maximum CPU time exceeded" in text:
        return Diagnosis("out_of_walltime", _line_with(text, "Maximum CPU time exceeded"))
    if "convergence NOT achieved" in text:
        return Diagnosis("scf_unconverged", _line_with(text, "convergence NOT achieved"))
    if stdout is None or not text.strip():
        return Diagnosis("missing_output", f"no output from pw.x (exit status {returncode})")
    if returncode not in (0, None):
        return Diagnosis("nonzero_exit", f"exit status {returncode}, last line {_last_line(text)!r}")
    if "JOB DONE" not in text:
        return Diagnosis("truncated_output", f"output ends before JOB DONE "
                         f"(last line {_last_line(text)!r})")
    return Diagnosis(None, "JOB DONE")


def _line_with(text: str, phrase: str) -> str:
    for line in text.splitlines():
        if phrase in line:
            return line.strip()
    return phrase


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --- corrections ------------------------------------------------------------------

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
