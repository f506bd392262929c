"""Stage `nuclear` (interim: the implementation still lives in dmca_hpc.detection.nuclear)."""
from dmca_hpc.detection.nuclear import run_stage  # noqa: F401
