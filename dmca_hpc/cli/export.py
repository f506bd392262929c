"""`dmca-hpc export` (interim: the implementation still lives in dmca_hpc.monitoring.exporter)."""
from dmca_hpc.monitoring.exporter import add_arguments, run_cli  # noqa: F401
