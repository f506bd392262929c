"""`dmca-hpc formfactor` (interim: the implementation still lives in dmca_hpc.electronic.formfactor)."""
from dmca_hpc.electronic.formfactor import add_arguments, run_cli  # noqa: F401
