"""`dmca-hpc rates` (interim: the implementation still lives in dmca_hpc.detection.rates)."""
from dmca_hpc.detection.rates import add_arguments, run_cli  # noqa: F401
