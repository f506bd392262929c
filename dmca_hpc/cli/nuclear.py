"""`dmca-hpc nuclear` (interim: the implementation still lives in dmca_hpc.detection.nuclear)."""
from dmca_hpc.detection.nuclear import add_arguments, run_cli  # noqa: F401
