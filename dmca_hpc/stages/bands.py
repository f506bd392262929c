"""Stage `bands` (interim: the implementation still lives in dmca_hpc.electronic.bands)."""
from dmca_hpc.electronic.bands import run_stage  # noqa: F401
