"""dmca_hpc: first-principles predictions of dark-matter detector signals on
anything from a laptop to a SLURM cluster.

Heavy libraries (pyscf, numba, mpi4py) are imported lazily inside the
functions that need them, so ``dmca-hpc --help``, the collector and the
exporter start fast on a login node.
"""
__version__ = "0.1.0"
