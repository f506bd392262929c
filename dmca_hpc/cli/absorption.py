"""`dmca-hpc absorption` (interim: the implementation still lives in dmca_hpc.detection.absorption)."""
from dmca_hpc.detection.absorption import add_arguments, run_cli  # noqa: F401
