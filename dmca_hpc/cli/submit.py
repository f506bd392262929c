"""`dmca-hpc submit` and `dmca-hpc slurm-selftest` (interim: implementation in dmca_hpc.slurm)."""
from dmca_hpc.slurm import add_arguments, add_selftest_arguments, run_cli, run_selftest_cli  # noqa: F401
