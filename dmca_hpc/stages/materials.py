"""Stage `materials` (interim: the implementation still lives in dmca_hpc.materials)."""
from dmca_hpc.materials import run_stage  # noqa: F401
