"""Stage `dielectric` (interim: the implementation still lives in dmca_hpc.response.dielectric)."""
from dmca_hpc.response.dielectric import run_stage  # noqa: F401
