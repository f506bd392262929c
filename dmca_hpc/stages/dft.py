"""Stage `dft` (interim: the implementation still lives in dmca_hpc.electronic.scf)."""
from dmca_hpc.electronic.scf import run_stage  # noqa: F401
