#!/usr/bin/env bash
# Install everything the tests need and run the whole suite:
#   1. Debian packages (as root, when missing): Quantum ESPRESSO (pw.x and
#      its pseudopotentials), SLURM and munge for the one-node cluster tests,
#      Prometheus for the exporter test;
#   2. a virtual environment .venv with the package and its extras [mpi,test]
#      (the mpich wheel puts mpiexec in .venv/bin);
#   3. pytest (plain tests, MPI tests skipped), then the MPI tests on 2 ranks
#      under mpiexec -n 2 ... pytest --with-mpi -m mpi.
# Exits non-zero on any failure.  Tests whose external part is missing skip
# with the reason printed (-rs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=""
  for pkg in quantum-espresso quantum-espresso-data slurm-wlm munge prometheus; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
  done
  if [ -n "$need" ]; then
    echo "== apt-get install$need"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null \
      || echo "WARNING: apt-get install$need failed; the tests that need them will skip"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== pip install -e .[mpi,test]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[mpi,test]'

export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
export PYTHONDONTWRITEBYTECODE=1

echo "== pytest (serial)"
set +e
.venv/bin/python -m pytest -q -rs -p no:cacheprovider tests
serial=$?
echo "== pytest under mpiexec -n 2 (MPI tests)"
.venv/bin/mpiexec -n 2 .venv/bin/python -m pytest -q -rs -p no:cacheprovider --with-mpi -m mpi tests \
  > .mpi-tests.log 2>&1
mpi=$?
set -e
cat .mpi-tests.log
if ! grep -Eq '[0-9]+ passed' .mpi-tests.log; then
  echo "ERROR: no MPI test passed on 2 ranks"; mpi=1
fi
rm -f .mpi-tests.log
echo "== serial exit $serial, MPI exit $mpi"
[ "$serial" = 0 ] && [ "$mpi" = 0 ]
