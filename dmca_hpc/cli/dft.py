"""`dmca-hpc dft` (interim: the implementation still lives in dmca_hpc.electronic.scf)."""
from dmca_hpc.electronic.scf import add_arguments, run_cli  # noqa: F401
