"""`dmca-hpc oracle` (interim: the implementation still lives in dmca_hpc.oracle.pwx)."""
from dmca_hpc.oracle.pwx import add_arguments, run_cli  # noqa: F401
