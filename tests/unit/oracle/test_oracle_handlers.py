"""dmca_hpc.oracle.handlers: failure classes of pw.x attempts, read from
the texts real pw.x 6.7 prints (tests/fake_pw/si_ok.out and error blocks)."""
import pytest

from dmca_hpc.oracle import handlers
from oracle_fake import SI_OK

BAR = "%" * 78


def test_diagnose_clean_real_output():
    assert handlers.diagnose(SI_OK, None, 0).ok


def _block(routine, msg):
    return f" {BAR}\n     Error in routine {routine}:\n     {msg}\n {BAR}"


@pytest.mark.parametrize("text,cls", [
    ("     convergence NOT achieved after 100 iterations: stopping\n JOB DONE.", "scf_unconverged"),
    ("     Maximum CPU time exceeded\n\n     max_seconds     =       0.01\n JOB DONE.",
     "out_of_walltime"),
    (_block("cdiaghg (7)", "S matrix not positive definite"), "diagonalization"),
    (_block("cdiaghg (1)", "problems computing cholesky"), "diagonalization"),
    (_block("c_bands (1)", "too many bands are not converged"), "diagonalization"),
    (_block("electrons (1)", "charge is wrong"), "charge_wrong"),
    (_block("readpp (1)", "file /x/Si.UPF not found"), "missing_pseudopotential"),
    (f" {BAR}\n     Error in routine  read_namelists (1):\n      bad line in namelist "
     f"&system: \"   foo_bar          = 1\" (error could be in the previous line)\n {BAR}",
     "bad_input"),
    (_block("check_atoms (1)", "atoms #   1 and #   2 overlap!"), "bad_input"),
    ("", "missing_output"),
    (SI_OK[:2000], "truncated_output"),
])
def test_diagnose_known_texts(text, cls):
    d = handlers.diagnose(text, None, 0)
    assert d.error_class == cls, d
    assert d.error_class in handlers.ERROR_CLASSES
    assert d.recoverable == (cls not in handlers.UNRECOVERABLE)


def test_diagnose_crash_file_and_exit_codes():
    crash = (f" {BAR}\n     task #         0\n     from readpp : error #         1\n"
             f"     file /usr/share/espresso/pseudo/Si.nothere.UPF not found\n {BAR}\n")
    d = handlers.diagnose(SI_OK[:1500], crash, 1)
    assert d.error_class == "missing_pseudopotential" and "Si.nothere.UPF" in d.message
    assert d.routine == "readpp"
    assert handlers.diagnose(SI_OK[:1500], None, 139).error_class == "nonzero_exit"
    assert handlers.diagnose(SI_OK, None, 0, timed_out=True).error_class == "timeout"
