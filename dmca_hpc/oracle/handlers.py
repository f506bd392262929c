"""Diagnosis of a pw.x (Quantum ESPRESSO) attempt: its failure class.

The exit status of a run is read from the text pw.x wrote (stdout and the
CRASH file) and its exit code, never assumed from a missing energy -- as
aiida-quantumespresso's PwBaseWorkChain parser and custodian's error checks
do (shared/design/oracle.md).  The corrections that react to each class are
in :mod:`dmca_hpc.oracle.ladder`; the runner that calls both is
:mod:`dmca_hpc.oracle.pwx`.

This module is pure Python (no numpy, no ASE), so it is cheap to import and
easy to test with the texts of real pw.x runs (tests/fake_pw).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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
