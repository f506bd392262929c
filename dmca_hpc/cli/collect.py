"""`dmca-hpc collect` (interim: the implementation still lives in dmca_hpc.monitoring.collector)."""
from dmca_hpc.monitoring.collector import add_arguments, run_cli  # noqa: F401
