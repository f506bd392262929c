"""Quantum ESPRESSO oracle: self-correcting pw.x labels (energy, forces,
stress) of candidate structures, split as custodian and
aiida-quantumespresso split theirs:

* :mod:`~dmca_hpc.oracle.pwx`: the pw.x runner (settings, input, one
  candidate under the ladder, output parsing and validation);
* :mod:`~dmca_hpc.oracle.handlers`: the failure class of an attempt, read
  from pw.x's text;
* :mod:`~dmca_hpc.oracle.ladder`: the corrections and their order;
* :mod:`~dmca_hpc.oracle.candidates`: reading / generating candidates, their
  hashes and checkpoints;
* :mod:`~dmca_hpc.oracle.batch`: candidates over MPI ranks, reported through
  a callback, assembled into results.extxyz / results.h5 / failures.json;
* :mod:`~dmca_hpc.oracle.bandgap`: the Kohn-Sham gap cross-check.

The pipeline stage is :mod:`dmca_hpc.stages.oracle`, the command
``dmca-hpc oracle`` is :mod:`dmca_hpc.cli.oracle`.
"""
