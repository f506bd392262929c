"""Stage `oracle` (interim: the implementation still lives in dmca_hpc.oracle.pwx)."""
from dmca_hpc.oracle.pwx import run_stage  # noqa: F401
