"""Numba kernels of the form-factor engine (binning |M|^2 into (q, E) bins).

numba is imported lazily, the first time a kernel is asked for, so importing
this module costs nothing; the compiled kernels are cached on disk
(``cache=True``) so later processes skip the compilation.  Only when numba is
not installed at all does :func:`bin_pair` fall back to a pure-numpy version
(``np.add.at``, same result, slower); the choice is reported by
:func:`backend`.

Binning convention (shared/design/physics.md): bin a holds
``a*dq <= |q| < (a+1)*dq`` (centre (a+1/2) dq), bin b holds
``b*dE <= E < (b+1)*dE``; contributions with ``E < 0`` or outside the table
are dropped.
"""
from __future__ import annotations

import numpy as np

_KERNEL = None
_BACKEND = None
_BATCH_KERNEL = None


def _numba_kernel():
    import numba

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _bin_pair(table, M, idx, qbin, ebin, weight):
        # table [nq, nE] float64 (accumulated in place); M [nc, N] complex128
        # matrix elements of one valence band against nc conduction bands;
        # idx [nsel] grid indices with |q| < q_max; qbin [nsel] their q bins;
        # ebin [nc] energy bin of each transition (-1: outside the table).
        nc = M.shape[0]
        nsel = idx.shape[0]
        for c in range(nc):
            b = ebin[c]
            if b < 0:
                continue
            row = M[c]
            for j in range(nsel):
                z = row[idx[j]]
                table[qbin[j], b] += weight * (z.real * z.real + z.imag * z.imag)

    return _bin_pair


def _numpy_kernel(table, M, idx, qbin, ebin, weight):
    for c in range(M.shape[0]):
        b = ebin[c]
        if b < 0:
            continue
        z = M[c, idx]
        np.add.at(table[:, b], qbin, weight * (z.real ** 2 + z.imag ** 2))


def _numba_batch_kernel():
    import numba

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _bin_batch(table, M, sel, qbin, ebin, weight):
        # M [nk, nQ, nc, nv] complex128: one batch of Q of the analytic route;
        # sel [nsel] Q indices inside the table, qbin [nsel] their q bins;
        # ebin [nk, nv, nc] E bin of each transition (-1: outside the table);
        # weight [nk] per k
        nk, _, nc, nv = M.shape
        nsel = sel.shape[0]
        for j in range(nk):
            for i in range(nv):
                for c in range(nc):
                    b = ebin[j, i, c]
                    if b < 0:
                        continue
                    w = weight[j]
                    for n in range(nsel):
                        z = M[j, sel[n], c, i]
                        table[qbin[n], b] += w * (z.real * z.real + z.imag * z.imag)

    return _bin_batch


def _numpy_batch_kernel(table, M, sel, qbin, ebin, weight):
    for j in range(M.shape[0]):
        for i in range(M.shape[3]):
            _numpy_kernel(table, np.ascontiguousarray(M[j, :, :, i].T), sel, qbin, ebin[j, i],
                          weight[j])


def bin_batch(table: np.ndarray, M: np.ndarray, sel: np.ndarray, qbin: np.ndarray,
              ebin: np.ndarray, weight) -> None:
    """Add ``weight[j] * |M[j, sel[n], c, i]|^2`` to ``table[qbin[n], ebin[j, i, c]]``
    for a whole batch of the analytic route in one compiled loop.

    Args:
        table: float64 [nq, nE], updated in place.
        M: complex128 [nk, nQ, nc, nv] matrix elements <c, k+q| e^{iQ.r} |v, k>.
        sel: int64 [nsel] Q indices inside the table; qbin: int64 [nsel] their q bins.
        ebin: int64 [nk, nv, nc] E bins (-1 outside the table).
        weight: w_q / N_k (dimensionless): one number for every k, or [nk] per k
            (the multiplicity of each k of a symmetry-reduced set included).
    """
    global _BATCH_KERNEL
    if _BATCH_KERNEL is None:
        try:
            _BATCH_KERNEL = _numba_batch_kernel()
        except ImportError:
            _BATCH_KERNEL = _numpy_batch_kernel
    _BATCH_KERNEL(table, np.ascontiguousarray(M), np.ascontiguousarray(sel, dtype=np.int64),
                  np.ascontiguousarray(qbin, dtype=np.int64),
                  np.ascontiguousarray(ebin, dtype=np.int64),
                np.ascontiguousarray(np.broadcast_to(np.asarray(weight, float), (M.shape[0],))))


def backend() -> str:
    """``"numba"`` or ``"numpy"`` (numba missing)."""
    _get()
    return _BACKEND


def _get():
    global _KERNEL, _BACKEND
    if _KERNEL is None:
        try:
            _KERNEL = _numba_kernel()
            _BACKEND = "numba"
        except ImportError:
            _KERNEL = _numpy_kernel
            _BACKEND = "numpy"
    return _KERNEL


def bin_pair(table: np.ndarray, M: np.ndarray, idx: np.ndarray, qbin: np.ndarray,
             ebin: np.ndarray, weight: float) -> None:
    """Add ``weight * |M[c, idx[j]]|^2`` to ``table[qbin[j], ebin[c]]``.

    Args:
        table: float64 [nq, nE], updated in place (dimensionless sums of |M|^2).
        M: complex128 [nc, N] matrix elements (one valence band, nc
            conduction bands, every G of the FFT grid).
        idx: int64 [nsel] grid indices with |k'-k+G| inside the q range.
        qbin: int64 [nsel] q bin of each selected G.
        ebin: int64 [nc] E bin of each transition, -1 if outside the table.
        weight: w_k * w_k' (dimensionless).
    """
    _get()(table, np.ascontiguousarray(M), np.ascontiguousarray(idx, dtype=np.int64),
           np.ascontiguousarray(qbin, dtype=np.int64), np.ascontiguousarray(ebin, dtype=np.int64),
           float(weight))


def q_bins(qabs: np.ndarray, dq: float, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices with ``|q| < nq*dq`` and their q bin (``floor(|q|/dq)``)."""
    qb = np.floor(qabs / dq).astype(np.int64)
    idx = np.nonzero(qb < nq)[0].astype(np.int64)
    return idx, qb[idx]


def e_bins(energies_ev: np.ndarray, de: float, ne: int) -> np.ndarray:
    """E bin of each energy (``floor(E/dE)``), -1 when outside ``[0, ne*dE)``."""
    eb = np.floor(np.asarray(energies_ev, float) / de)
    return np.where((eb >= 0) & (eb < ne), eb, -1).astype(np.int64)


def warmup() -> str:
    """Compile (or load from the on-disk cache) every kernel once, on tiny
    inputs; called by ``dmca-hpc warmup`` before the ranks start so that
    parallel first compilations never race on the cache.  Returns the backend."""
    t = np.zeros((2, 2))
    bin_pair(t, np.ones((1, 3), complex), np.arange(3), np.zeros(3, np.int64),
             np.zeros(1, np.int64), 1.0)
    bin_batch(t, np.ones((1, 3, 1, 1), complex), np.arange(3), np.zeros(3, np.int64),
              np.zeros((1, 1, 1), np.int64), 1.0)
    return backend()
