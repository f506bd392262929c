"""Stage `formfactor` (interim: the implementation still lives in dmca_hpc.electronic.formfactor)."""
from dmca_hpc.electronic.formfactor import run_stage  # noqa: F401
