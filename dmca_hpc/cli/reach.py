"""`dmca-hpc reach` (interim: the implementation still lives in dmca_hpc.detection.reach)."""
from dmca_hpc.detection.reach import add_arguments, run_cli  # noqa: F401
