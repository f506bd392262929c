"""Stage `rates` (interim: the implementation still lives in dmca_hpc.detection.rates)."""
from dmca_hpc.detection.rates import run_stage  # noqa: F401
