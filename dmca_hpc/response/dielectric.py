"""Dielectric function, energy-loss function and screening from |f_crystal|^2.

Conventions (shared/design/physics.md; natural units hbar = c = 1):

* **Im eps from the crystal form factor** (DarkELF convention, Knapen,
  Kozaczuk & Lin, PRD 104, 015031 (2021), eq. 16)::

      |f_crystal(q, w)|^2 = q^5 V_cell Im eps(q, w) / (8 pi^2 alpha^2 m_e^2)

  with q and m_e in eV and V_cell in eV^-3 (QCDark's ``VCell``), |f|^2
  dimensionless in the QCDark normalization (w_k = 1/N_k).  We checked the
  relation by equating the two rate formulas: DarkELF's
  ``dR/(dw dk) = eta (rho_chi/m_chi)(1/rho_T) sigma_e/(4 pi^2 mu^2)
  k^3 Im eps / (2 alpha)`` (darkelf/electron.py, unscreened) and physics.md's
  ``dR/(dw dq) = (rho_chi/m_chi)(1/M_cell) sigma_e alpha (m_e/mu)^2 eta
  |f|^2 / q^2`` agree exactly when ``rho_T = M_cell / V_cell`` and the
  relation above holds.  Im eps is the RPA longitudinal dielectric function
  without local-field effects, direction-averaged over |q| (what the binned
  table holds), spin included (the f-sum check below confirms the factor).
* **Re eps** by Kramers-Kronig, Re eps(w) = 1 + (2/pi) P int_0^inf
  w' Im eps(w') / (w'^2 - w^2) dw'.  Discretization: Im eps is taken
  piecewise linear between grid nodes (bin centres, plus w = 0 where
  Im eps = 0 for an insulator) and every segment is integrated in closed
  form, so the principal value is exact for that interpolant (the log
  singularities of neighbouring segments cancel).  High-energy tail: above
  the last bin Im eps is continued as ``Im eps(w_N) (w/w_N)^-p`` (default
  p = 3, the asymptotic law of a Lorentz/Drude oscillator) on a log grid to
  1000 w_N; ``tail="none"`` sets it to zero.  A table that stops at 50 eV
  misses the oscillator strength above it (semicore and core levels): the
  tail only continues the last bin, it does not invent that strength.
* **Sampling correction.**  A table built on an N1 x N2 x N3 k mesh holds
  momentum transfers only on the fine reciprocal lattice {sum_i n_i b_i/N_i}
  (every k' - k + G lies on it), so the low-q bins are either empty or hold
  one shell of that lattice with a weight ~ n_shell/(4 pi q^2 dq) that is far
  from the continuum.  We count the fine-lattice points in every q bin
  (:func:`fine_lattice_counts`) and divide Im eps by n_disc/n_cont (exact for
  integrands smooth in q); empty bins carry no information and are filled by
  linear interpolation in q.  The q = 0 point (k' = k, G = 0) is excluded:
  its matrix elements vanish by orthogonality and it carries no
  longitudinal response.  On the shipped QCDark Ge table the populated bins
  predicted this way coincide with the non-zero bins of the file.
* **Optical limit** eps(q -> 0, w): weighted least-squares fit of
  ``Im eps(q, w) = a(w) + b(w) q^2`` (eps is even and analytic in q for an
  insulator) over the lowest ``optical_bins`` (default 3) populated bins
  (or those with q <= ``q_optical_max_ame`` when > 0), weights = number of
  fine-lattice vectors in the bin; ``optical_method="mean"`` uses the
  weighted mean.  a(w) is clipped at 0.  On a 6x6x6 Ge mesh the first shells
  sit at 0.17-0.27 alpha m_e where eps(q, 0) has already fallen to about
  half its q -> 0 value, so the extrapolated *spectrum* is uncertain at low
  w; the *static* constant is therefore taken from a fit of
  1/(eps(q, 0) - 1) = A + B q^2 over the lowest ``static_bins`` (default 6)
  populated bins (:func:`static_limit_fit`; the q dependence of the
  Cappellini model below, which our finite-q values follow to a few
  percent).  A velocity-matrix-element optical limit from the form-factor
  engine can replace both later.
* **Energy-loss function** ELF = Im(-1/eps) = Im eps / |eps|^2.

Screening (:func:`screening_factor`): |eps(q, E)|^2 on a FormFactorTable's
bins, from our RPA table (``"rpa"``) or from the Thomas-Fermi-like model
dielectric function of Cappellini, Del Sole, Reining & Bechstedt, PRB 47,
9892 (1993)::

    eps(q, w) = 1 + [1/(eps0 - 1) + alpha_s (q/q_TF)^2 + q^4/(4 m_e^2 w_p^2)
                     - (w/w_p)^2]^-1

with the parameters QCDark uses (asingal14/QCDark dark_matter_rates.py,
``TFscreening``; Dreyer et al., PRD 109, 115008): Si eps0 = 11.3,
q_TF = 4.13 keV, w_p = 16.6 eV, alpha_s = 1.563; Ge eps0 = 14.0,
q_TF = 3.99 keV, w_p = 15.2 eV, alpha_s = 1.563 (``"tf"``).

Heavy imports (h5py, matplotlib) happen inside functions.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmca_hpc import units as U

__all__ = [
    "TF_PARAMS", "DielectricFunction", "DielectricError",
    "im_eps_from_f2", "f2_from_im_eps", "kk_real_from_imag", "kk_imag_from_real",
    "lorentz_oscillator", "fine_lattice_counts", "infer_kmesh", "sampling_correction",
    "optical_limit", "loss_function", "plasma_frequency_ev", "n_eff", "fsum_ratio",
    "plasmon_peak_ev", "dielectric_from_table", "tf_epsilon", "screening_factor",
    "write_dielectric", "read_dielectric", "plot_dielectric", "run_stage",
]


class DielectricError(ValueError):
    """Bad input to the dielectric code (message names the file/key and the
    expected value)."""


#: Thomas-Fermi-like model parameters (Cappellini et al. 1993 form, values as
#: in QCDark's dark_matter_rates.py): eps0 [1], q_tf_ev [eV], wp_ev [eV], alpha_s [1]
TF_PARAMS = {
    "Si": {"eps0": 11.3, "q_tf_ev": 4.13e3, "wp_ev": 16.6, "alpha_s": 1.563},
    "Ge": {"eps0": 14.0, "q_tf_ev": 3.99e3, "wp_ev": 15.2, "alpha_s": 1.563},
}

#: default high-energy tail exponent p of Im eps ~ w^-p (Lorentz/Drude asymptotics)
DEFAULT_TAIL_EXPONENT = 3.0
#: the tail grid runs from the last node to this multiple of it
_TAIL_EXTENT = 1.0e3
_TAIL_POINTS = 200


# ---------------------------------------------------------------------------
# |f|^2 <-> Im eps
# ---------------------------------------------------------------------------

def _prefactor(q_ame, vcell_ev3):
    """8 pi^2 alpha^2 m_e^2 / (q^5 V_cell) for q in alpha m_e, V in eV^-3."""
    q_ev = np.asarray(q_ame, dtype=float) * U.ALPHA_ME_EV
    return 8.0 * math.pi**2 * U.ALPHA**2 * U.M_E_EV**2 / (q_ev**5 * vcell_ev3)


def im_eps_from_f2(f2, q_ame, vcell_ev3: float):
    """Im eps(q, w) from |f_crystal(q, w)|^2 (DarkELF eq. 16, module docstring).

    Args:
        f2: array [nq, nE] (or broadcastable), dimensionless.
        q_ame: q bin centres [alpha m_e], shape [nq].
        vcell_ev3: cell volume [eV^-3].
    Returns:
        Im eps, dimensionless, same shape as ``f2``.
    """
    f2 = np.asarray(f2, dtype=float)
    pre = _prefactor(q_ame, vcell_ev3)
    return f2 * (pre[:, None] if f2.ndim == 2 else pre)


def f2_from_im_eps(im_eps, q_ame, vcell_ev3: float):
    """Inverse of :func:`im_eps_from_f2`: |f_crystal|^2 (dimensionless)."""
    im_eps = np.asarray(im_eps, dtype=float)
    pre = _prefactor(q_ame, vcell_ev3)
    return im_eps / (pre[:, None] if im_eps.ndim == 2 else pre)


# ---------------------------------------------------------------------------
# Kramers-Kronig on a piecewise-linear interpolant
# ---------------------------------------------------------------------------

def _logabs(x):
    """log|x| with log|0| := 0 (the singular terms cancel between the two
    segments that meet at the evaluation node; see kk_real_from_imag)."""
    ax = np.abs(x)
    out = np.zeros_like(ax)
    nz = ax > 0
    out[nz] = np.log(ax[nz])
    return out


def _segment_logs(nodes, w):
    """Per evaluation point w_i and node x_j: Lm = log|x-w| - log(x+w) and
    Lp = log|x-w| + log(x+w), with the singular log|x-w| at x == w dropped."""
    x = nodes[None, :]
    ww = w[:, None]
    l_minus = _logabs(x - ww)
    l_plus = _logabs(x + ww)
    return l_minus - l_plus, l_minus + l_plus


def _extend_tail(nodes, tail: str, p: float):
    """Log-spaced continuation of the grid above the last node and the
    relative values (w/w_N)^-p of the continued function there."""
    if tail == "none":
        return np.empty(0), np.empty(0)
    if tail != "power":
        raise DielectricError(f"tail must be 'power' or 'none', got {tail!r}")
    wn = nodes[-1]
    ext = np.geomspace(wn, wn * _TAIL_EXTENT, _TAIL_POINTS + 1)[1:]
    return ext, (ext / wn) ** (-p)


def _kk_matrix(nodes, w_eval, direction: str, tail: str, p: float):
    """Matrix M with  out(w_eval) = M @ y(nodes)  for piecewise-linear y.

    direction "re": y = Im eps, out = Re eps - 1;
    direction "im": y = Re eps - 1, out = Im eps.
    """
    ext, rel = _extend_tail(nodes, tail, p)
    x = np.concatenate([nodes, ext])
    n_nodes = len(nodes)
    a, b = x[:-1], x[1:]
    h = b - a
    w = np.asarray(w_eval, dtype=float)
    lm, lp = _segment_logs(x, w)
    d_lm = lm[:, 1:] - lm[:, :-1]          # Lm(b) - Lm(a)
    d_lp = lp[:, 1:] - lp[:, :-1]          # Lp(b) - Lp(a)
    # y = m x + c on [a, b]:  m = (y_b - y_a)/h,  c = (y_a b - y_b a)/h
    if direction == "re":
        # int x (m x + c)/(x^2 - w^2) = m h + (m w/2) dLm + (c/2) dLp
        A = 0.5 * w[:, None] * d_lm
        B = 0.5 * d_lp
        coef_m = h[None, :] + A
        coef_c = B
        scale = 2.0 / math.pi
        row_scale = np.ones_like(w)
    elif direction == "im":
        # int (m x + c)/(x^2 - w^2) = (m/2) dLp + (c/(2w)) dLm
        with np.errstate(divide="ignore", invalid="ignore"):
            coef_c = np.where(w[:, None] > 0, 0.5 * d_lm / w[:, None], 0.0)
        coef_m = 0.5 * d_lp
        scale = -2.0 / math.pi
        row_scale = w.copy()               # Im eps(w) = -(2 w/pi) P int ...
    else:  # pragma: no cover - internal
        raise ValueError(direction)
    # y_a coefficient: -coef_m/h + coef_c b/h ; y_b coefficient: coef_m/h - coef_c a/h
    ca = (-coef_m + coef_c * b[None, :]) / h[None, :]
    cb = (coef_m - coef_c * a[None, :]) / h[None, :]
    full = np.zeros((len(w), len(x)))
    full[:, :-1] += ca
    full[:, 1:] += cb
    M = full[:, :n_nodes].copy()
    if len(ext):
        # the tail values are rel * y_N: fold them into the last node's column
        M[:, -1] += full[:, n_nodes:] @ rel
    return scale * row_scale[:, None] * M


def _is_bin_centre_grid(w):
    """True for a uniform grid w_j = (j + 1/2) h (the tables' bin centres)."""
    if w.size < 4:
        return False
    h = w[1] - w[0]
    return bool(np.allclose(np.diff(w), h, rtol=1e-9, atol=1e-12 * h)
                and abs(w[0] - 0.5 * h) < 1e-9 * h)


def _kk_matrix_midpoint(w, direction: str, tail: str, p: float):
    """Kramers-Kronig matrix for bin-centre grids w_j = (j + 1/2) h,
    evaluated at the nodes: Maclaurin's formula (Ohta & Ishida, Appl.
    Spectrosc. 42, 952 (1988)).

    Written as a Hilbert transform over the whole real axis (Im eps odd,
    Re eps even in w, so the grid mirrored to -w_j stays uniform), the
    principal value at w_i is the midpoint rule of step 2h on the nodes
    w_i +- (2k+1) h: the singular 1/(w' - w_i) weights cancel pairwise and
    the rule converges exponentially fast for analytic spectra::

        Re eps_i - 1 = (2h/pi) [ sum_{j-i odd} y_j/(w_j - w_i) + sum_{j-i even} y_j/(w_j + w_i) ]
        Im eps_i     = -(2h/pi) [ sum_{j-i odd} g_j/(w_j - w_i) - sum_{j-i even} g_j/(w_j + w_i) ]

    (y = Im eps, g = Re eps - 1).  The tail above Lambda = w_N + h/2 uses the
    closed-form piecewise-linear kernel on a log grid; the midpoint cells end
    within h/2 of Lambda, an error of order h y_N / Lambda.
    """
    n = w.size
    h = w[1] - w[0]
    lam = w[-1] + 0.5 * h
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    odd = ((j - i) % 2) == 1
    wi, wj = w[:, None], w[None, :]
    with np.errstate(divide="ignore"):
        d_minus = np.where(odd, 1.0 / np.where(odd, wj - wi, 1.0), 0.0)
    d_plus = np.where(~odd, 1.0 / (wj + wi), 0.0)
    if direction == "re":
        M = (2.0 * h / math.pi) * (d_minus + d_plus)
    else:
        M = (-2.0 * h / math.pi) * (d_minus - d_plus)
    if tail != "none":
        ext, _ = _extend_tail(w, tail, p)
        x = np.concatenate([[lam], ext[ext > lam]])
        vals = (x / w[-1]) ** (-p)
        T = _kk_matrix(x, w, direction, "none", p)   # closed form over [lam, x_max]
        M[:, -1] += T @ vals
    return M


def _prepare_grid(w_ev, values, fill0):
    w = np.asarray(w_ev, dtype=float)
    y = np.asarray(values, dtype=float)
    if w.ndim != 1 or y.shape[-1] != w.size:
        raise DielectricError(f"frequency grid of {w.size} points does not match the last axis "
                              f"of the values (shape {y.shape})")
    if np.any(np.diff(w) <= 0) or w[0] < 0:
        raise DielectricError("frequency grid must be ascending and >= 0 [eV]")
    if w[0] > 0:
        w = np.concatenate([[0.0], w])
        y0 = np.full(y.shape[:-1] + (1,), fill0 if fill0 is not None else np.nan)
        if fill0 is None:  # extrapolate linearly to w = 0
            y0[..., 0] = y[..., 0] - (y[..., 1] - y[..., 0]) * w[1] / (w[2] - w[1])
        y = np.concatenate([y0, y], axis=-1)
        return w, y, 1
    return w, y, 0


def kk_real_from_imag(w_ev, im_eps, tail: str = "power",
                      tail_exponent: float = DEFAULT_TAIL_EXPONENT, w_eval=None):
    """Re eps from Im eps by Kramers-Kronig (module docstring for the method).

    Args:
        w_ev: ascending frequency grid [eV], >= 0 (w = 0 is added with
            Im eps(0) = 0 when absent: an insulator has no DC absorption).
        im_eps: array [..., nw] of Im eps on ``w_ev``.
        tail: ``"power"`` (Im eps ~ w^-p above the grid) or ``"none"``.
        tail_exponent: p.
        w_eval: frequencies [eV] to evaluate at (default: ``w_ev``).
    Returns:
        Re eps, shape [..., len(w_eval)].
    """
    w_in = np.asarray(w_ev, dtype=float)
    if w_eval is None and _is_bin_centre_grid(w_in):
        M = _kk_matrix_midpoint(w_in, "re", tail, tail_exponent)
        return 1.0 + np.asarray(im_eps, dtype=float) @ M.T
    w, y, _ = _prepare_grid(w_in, im_eps, 0.0)
    we = w_in if w_eval is None else np.asarray(w_eval, dtype=float)
    M = _kk_matrix(w, we, "re", tail, tail_exponent)
    return 1.0 + y @ M.T


def kk_imag_from_real(w_ev, re_eps, tail: str = "power", tail_exponent: float = 2.0,
                      w_eval=None):
    """Im eps from Re eps by the inverse Kramers-Kronig relation
    Im eps(w) = -(2 w/pi) P int_0^inf (Re eps(w') - 1)/(w'^2 - w^2) dw'.

    Same discretization as :func:`kk_real_from_imag`; the tail continues
    Re eps - 1 as (w/w_N)^-p with default p = 2 (Re eps - 1 -> -w_p^2/w^2).
    """
    w_in = np.asarray(w_ev, dtype=float)
    if w_eval is None and _is_bin_centre_grid(w_in):
        M = _kk_matrix_midpoint(w_in, "im", tail, tail_exponent)
        return (np.asarray(re_eps, dtype=float) - 1.0) @ M.T
    w, y, _ = _prepare_grid(w_in, np.asarray(re_eps, dtype=float) - 1.0, None)
    we = w_in if w_eval is None else np.asarray(w_eval, dtype=float)
    M = _kk_matrix(w, we, "im", tail, tail_exponent)
    return y @ M.T


def lorentz_oscillator(w_ev, w0_ev: float, gamma_ev: float, wp_ev: float):
    """Analytic Lorentz oscillator eps(w) = 1 + w_p^2/(w0^2 - w^2 - i gamma w)
    (all in eV); returns the complex array.  Used to test Kramers-Kronig."""
    w = np.asarray(w_ev, dtype=float)
    return 1.0 + wp_ev**2 / (w0_ev**2 - w**2 - 1j * gamma_ev * w)


# ---------------------------------------------------------------------------
# k-mesh sampling of q
# ---------------------------------------------------------------------------

def _fine_lattice_norms(cell_angstrom, kmesh, q_max_ame):
    """|q| [alpha m_e = bohr^-1] of every non-zero point of the lattice
    {sum_i n_i b_i / N_i} with |q| < q_max (b_i reciprocal vectors of the cell)."""
    cell = np.asarray(cell_angstrom, dtype=float) * U.ANGSTROM_BOHR
    if cell.shape != (3, 3) or abs(np.linalg.det(cell)) < 1e-12:
        raise DielectricError(f"cell must be a non-singular 3x3 matrix [angstrom], got {cell.shape}")
    kmesh = np.asarray(kmesh, dtype=int).reshape(-1)
    if kmesh.size == 1:
        kmesh = np.repeat(kmesh, 3)
    if kmesh.size != 3 or np.any(kmesh < 1):
        raise DielectricError(f"kmesh must be 3 positive integers, got {kmesh.tolist()}")
    recip = 2.0 * math.pi * np.linalg.inv(cell).T          # rows b_i [bohr^-1]
    fine = recip / kmesh[:, None]
    # bound on |n_i|: |q| >= |n_i| * (distance between lattice planes of the fine lattice)
    dual = np.linalg.inv(fine).T                            # rows: dual vectors
    nmax = np.ceil(q_max_ame * np.linalg.norm(dual, axis=1)).astype(int) + 1
    out = []
    r0 = np.arange(-nmax[0], nmax[0] + 1)
    r1 = np.arange(-nmax[1], nmax[1] + 1)
    r2 = np.arange(-nmax[2], nmax[2] + 1)
    base12 = (r1[:, None, None] * fine[1] + r2[None, :, None] * fine[2]).reshape(-1, 3)
    for n0 in r0:  # slab by slab keeps memory at O(n^2)
        pts = base12 + n0 * fine[0]
        qn = np.sqrt(np.einsum("ij,ij->i", pts, pts))
        out.append(qn[(qn > 1e-12) & (qn < q_max_ame)])
    return np.concatenate(out)


def fine_lattice_counts(cell_angstrom, kmesh, dq_ame: float, nq: int, q_min_ame: float = 0.0):
    """Number of momentum-transfer vectors k' - k + G per k in every q bin.

    For a uniform (Gamma-centred or shifted) N1 x N2 x N3 mesh every
    k' - k + G is a point of the fine lattice {sum n_i b_i/N_i}, each point
    once per k; the q = 0 point is excluded.

    Args:
        cell_angstrom: lattice vectors (rows) [angstrom].
        kmesh: (N1, N2, N3) or one integer.
        dq_ame, nq, q_min_ame: the table's q binning [alpha m_e].
    Returns:
        (n_disc, n_cont): float arrays [nq]: the lattice count and the
        continuum expectation 4 pi q^2 dq / V_fine.
    """
    q_hi = q_min_ame + nq * dq_ame
    qn = _fine_lattice_norms(cell_angstrom, kmesh, q_hi)
    idx = np.floor((qn - q_min_ame) / dq_ame).astype(int)
    idx = idx[(idx >= 0) & (idx < nq)]
    n_disc = np.bincount(idx, minlength=nq)[:nq].astype(float)
    cell = np.asarray(cell_angstrom, dtype=float) * U.ANGSTROM_BOHR
    km = np.broadcast_to(np.asarray(kmesh, dtype=int).reshape(-1), (3,))
    v_fine = (2.0 * math.pi) ** 3 / (abs(np.linalg.det(cell)) * float(np.prod(km)))
    q = q_min_ame + (np.arange(nq) + 0.5) * dq_ame
    # exact shell volume of the bin rather than 4 pi q^2 dq (matters in the first bins)
    lo, hi = q - 0.5 * dq_ame, q + 0.5 * dq_ame
    n_cont = 4.0 * math.pi / 3.0 * (hi**3 - lo**3) / v_fine
    return n_disc, n_cont


def infer_kmesh(f2, cell_angstrom, dq_ame: float, q_min_ame: float = 0.0,
                q_probe_ame: float = 1.0, n_max: int = 24):
    """Guess an isotropic N x N x N k mesh from which q bins of a table are
    populated (the populated bins below ``q_probe_ame`` must be exactly the
    non-empty ones; the first N that matches wins).  Returns N or None."""
    f2 = np.asarray(f2)
    nprobe = min(f2.shape[0], int(round((q_probe_ame - q_min_ame) / dq_ame)))
    nonzero = f2[:nprobe].sum(axis=1) > 0
    best, best_score = None, -1.0
    for n in range(1, n_max + 1):
        n_disc, _ = fine_lattice_counts(cell_angstrom, n, dq_ame, nprobe, q_min_ame)
        pop = n_disc > 0
        # bin 0 can hold the excluded q = 0 point: ignore it in the comparison
        agree = np.mean(pop[1:] == nonzero[1:]) if nprobe > 1 else 0.0
        if agree > best_score + 1e-12:
            best, best_score = n, agree
        if agree == 1.0:
            return n
    return best if best_score > 0.98 else None


def sampling_correction(n_disc, n_cont):
    """n_cont/n_disc per bin (NaN where the bin holds no lattice vector)."""
    n_disc = np.asarray(n_disc, dtype=float)
    out = np.full(n_disc.shape, np.nan)
    ok = n_disc > 0
    out[ok] = np.asarray(n_cont)[ok] / n_disc[ok]
    return out


def optical_limit(q_ame, im_eps, weights, q_max_ame: float = 0.0, method: str = "quadratic",
                  n_bins: int = 3):
    """Im eps(q -> 0, w) from the lowest populated bins: those with
    0 < q <= q_max_ame when q_max_ame > 0, else the lowest ``n_bins``.

    Args:
        q_ame: bin centres [alpha m_e], shape [nq].
        im_eps: sampling-corrected Im eps [nq, nw] (NaN rows = empty bins).
        weights: fit weights per bin (number of lattice vectors), [nq].
        q_max_ame: upper end of the fit window [alpha m_e].
        method: ``"quadratic"`` (fit a + b q^2, return a) or ``"mean"``.
    Returns:
        (im_eps0 [nw], info dict with the bins used).
    """
    q = np.asarray(q_ame, dtype=float)
    w8 = np.asarray(weights, dtype=float)
    usable = (w8 > 0) & np.all(np.isfinite(im_eps), axis=1)
    if q_max_ame and q_max_ame > 0:
        sel = usable & (q <= q_max_ame)
    else:
        sel = np.zeros_like(usable)
        sel[np.nonzero(usable)[0][:max(int(n_bins), 1)]] = True
    nsel = int(sel.sum())
    if nsel == 0:
        raise DielectricError(f"no populated q bin at or below q_optical_max_ame = {q_max_ame} "
                              "alpha m_e; raise dielectric.q_optical_max_ame")
    y = im_eps[sel]
    ws = w8[sel]
    if method == "quadratic" and nsel >= 3:
        X = np.stack([np.ones(nsel), q[sel] ** 2], axis=1)
        WX = X * ws[:, None]
        coef = np.linalg.solve(X.T @ WX, WX.T @ y)
        im0 = coef[0]
    elif method in ("mean", "quadratic"):
        im0 = (ws[:, None] * y).sum(axis=0) / ws.sum()
        method = "mean"
    else:
        raise DielectricError(f"dielectric.optical_method must be 'quadratic' or 'mean', got {method!r}")
    return np.clip(im0, 0.0, None), {"bins": np.nonzero(sel)[0], "method": method,
                                     "q_max_ame": float(q[sel].max())}


def static_limit_fit(q_ame, eps_static_q, weights, n_bins: int = 6):
    """eps(q -> 0, 0) from the static eps(q, 0) of the lowest ``n_bins``
    populated bins, fitting 1/(eps(q, 0) - 1) = A + B q^2 (the q dependence
    of the Cappellini et al. 1993 / Thomas-Fermi-like model, which our
    finite-q values follow; more robust than extrapolating eps itself, which
    falls by half between q = 0 and the first shell of a 6x6x6 Ge mesh).

    Returns (eps0 = 1 + 1/A, B [alpha m_e^-2], q range used [alpha m_e]).
    """
    q = np.asarray(q_ame, float)
    e = np.asarray(eps_static_q, float)
    w8 = np.asarray(weights, float)
    ok = np.nonzero((w8 > 0) & np.isfinite(e) & (e > 1.0))[0][:max(int(n_bins), 2)]
    if ok.size < 2:
        raise DielectricError("static limit: fewer than 2 populated q bins with eps(q, 0) > 1")
    X = np.stack([np.ones(ok.size), q[ok] ** 2], axis=1)
    sw = np.sqrt(w8[ok])
    coef = np.linalg.lstsq(X * sw[:, None], (1.0 / (e[ok] - 1.0)) * sw, rcond=None)[0]
    A, B = float(coef[0]), float(coef[1])
    eps0 = 1.0 + 1.0 / A if A > 0 else float("inf")
    return eps0, B, (float(q[ok].min()), float(q[ok].max()))


def loss_function(re_eps, im_eps):
    """Energy-loss function Im(-1/eps) = Im eps / (Re eps^2 + Im eps^2)."""
    re_eps = np.asarray(re_eps, dtype=float)
    im_eps = np.asarray(im_eps, dtype=float)
    return im_eps / (re_eps**2 + im_eps**2)


def plasma_frequency_ev(n_electrons: float, vcell_ev3: float) -> float:
    """Free-electron plasma frequency w_p = sqrt(4 pi alpha n / m_e) [eV] for
    ``n_electrons`` per cell of volume ``vcell_ev3`` [eV^-3]."""
    return math.sqrt(4.0 * math.pi * U.ALPHA * n_electrons / vcell_ev3 / U.M_E_EV)


def n_eff(w_ev, im_eps, vcell_ev3: float):
    """Effective number of electrons per cell that the spectrum up to w has
    exhausted, N_eff(w) = (m_e V_cell / (2 pi^2 alpha)) int_0^w w' Im eps dw'
    (f-sum rule: N_eff -> N_e as w -> inf).  Trapezoid on the grid with
    Im eps(0) = 0; returns the cumulative array [nw]."""
    w, y, k = _prepare_grid(np.asarray(w_ev, float), np.asarray(im_eps, float), 0.0)
    integrand = w * y
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(w))])
    return (U.M_E_EV * vcell_ev3 / (2.0 * math.pi**2 * U.ALPHA)) * cum[k:]


def fsum_ratio(w_ev, im_eps, vcell_ev3: float, n_electrons: float) -> float:
    """int w Im eps dw / ((pi/2) w_p^2) over the whole grid, with w_p from
    ``n_electrons`` per cell (= N_eff(w_max) / n_electrons)."""
    return float(n_eff(w_ev, im_eps, vcell_ev3)[-1] / n_electrons)


def plasmon_peak_ev(w_ev, elf, w_min_ev: float = 1.0) -> float:
    """Position [eV] of the maximum of the energy-loss function above
    ``w_min_ev``, refined by a parabola through the top three points."""
    w = np.asarray(w_ev, dtype=float)
    e = np.asarray(elf, dtype=float)
    m = w >= w_min_ev
    i = int(np.argmax(np.where(m, e, -np.inf)))
    if 0 < i < len(w) - 1:
        y0, y1, y2 = e[i - 1], e[i], e[i + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            return float(w[i] + 0.5 * (y0 - y2) / den * (w[i + 1] - w[i]))
    return float(w[i])


def _re_at_zero(w, im, tail, p):
    """Re eps(q, w = 0) = 1 + (2/pi) int Im eps/w dw for one spectrum (the
    Kramers-Kronig kernel at w = 0: trapezoid on the grid with Im(0) = 0,
    plus the power tail in closed form: y_N w_N^p int_L^inf w^(-1-p) dw)."""
    wg, y, _ = _prepare_grid(np.asarray(w, float), np.asarray(im, float), 0.0)
    f = np.zeros_like(y)
    f[1:] = y[1:] / wg[1:]
    f[0] = (y[1] / wg[1]) if len(wg) > 1 else 0.0
    val = np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(wg))
    if tail == "power" and p > 0:
        val += y[-1] / p
    return 1.0 + 2.0 / math.pi * val


def _gaussian_smooth(y, dw: float, sigma_ev: float):
    """Gaussian broadening along the last axis (sigma in eV), area preserving
    on the interior; sigma <= 0 returns y unchanged."""
    if sigma_ev <= 0:
        return y
    from scipy.ndimage import gaussian_filter1d
    return gaussian_filter1d(y, sigma_ev / dw, axis=-1, mode="constant")


# ---------------------------------------------------------------------------
# the dielectric table
# ---------------------------------------------------------------------------

@dataclass
class DielectricFunction:
    """eps(q, w) on a form-factor table's bins plus its optical limit.

    Attributes:
        q_ame: q bin centres [alpha m_e], [nq].
        e_ev: energy bin centres [eV], [nw].
        eps_re, eps_im: Re/Im eps [nq, nw] (empty q bins interpolated in q).
        eps0_re, eps0_im: optical limit q -> 0, [nw].
        populated: bool [nq], True where the table's k mesh puts q vectors.
        vcell_ev3: cell volume [eV^-3]; cell_mass_ev: cell mass [eV].
        material: name; meta: method description (kmesh, tail, window...).
    """

    q_ame: np.ndarray
    e_ev: np.ndarray
    eps_re: np.ndarray
    eps_im: np.ndarray
    eps0_re: np.ndarray
    eps0_im: np.ndarray
    populated: np.ndarray
    vcell_ev3: float
    cell_mass_ev: float
    material: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def elf(self):
        """Im(-1/eps(q, w)) [nq, nw]."""
        return loss_function(self.eps_re, self.eps_im)

    @property
    def elf0(self):
        """Optical energy-loss function Im(-1/eps(q -> 0, w)) [nw]."""
        return loss_function(self.eps0_re, self.eps0_im)

    @property
    def density_g_cm3(self) -> float:
        """Target mass density rho_T = M_cell / V_cell [g/cm^3]."""
        import scipy.constants as sc
        m_g = self.cell_mass_ev * sc.e / sc.c**2 * 1e3
        v_cm3 = self.vcell_ev3 * U.HBARC_EV_CM**3
        return m_g / v_cm3

    def eps0_at(self, w_ev):
        """Complex optical eps(q -> 0, w) interpolated linearly in w [eV];
        outside the table range it is NaN (no extrapolation)."""
        w = np.asarray(w_ev, dtype=float)
        re = np.interp(w, self.e_ev, self.eps0_re, left=np.nan, right=np.nan)
        im = np.interp(w, self.e_ev, self.eps0_im, left=np.nan, right=np.nan)
        return re + 1j * im

    def eps_at(self, q_ame, e_ev):
        """Complex eps on the outer product of q [alpha m_e] and E [eV] grids
        (bilinear; q below the first bin uses the optical limit at q = 0;
        beyond the table q and E ranges eps = 1: no response is claimed there)."""
        from scipy.interpolate import RegularGridInterpolator
        qg = np.concatenate([[0.0], self.q_ame])
        re = np.vstack([self.eps0_re[None, :], self.eps_re])
        im = np.vstack([self.eps0_im[None, :], self.eps_im])
        qq, ee = np.meshgrid(np.asarray(q_ame, float), np.asarray(e_ev, float), indexing="ij")
        pts = np.stack([qq.ravel(), ee.ravel()], axis=1)
        kw = dict(bounds_error=False, fill_value=np.nan)
        r = RegularGridInterpolator((qg, self.e_ev), re, **kw)(pts).reshape(qq.shape)
        i = RegularGridInterpolator((qg, self.e_ev), im, **kw)(pts).reshape(qq.shape)
        # below the first energy bin centre: hold the first bin (eps is flat there)
        low = (ee < self.e_ev[0]) & (qq <= qg[-1])
        if np.any(low):
            r2 = RegularGridInterpolator((qg, self.e_ev), re, bounds_error=False, fill_value=None)
            i2 = RegularGridInterpolator((qg, self.e_ev), im, bounds_error=False, fill_value=None)
            p2 = np.stack([qq[low], np.full(low.sum(), self.e_ev[0])], axis=1)
            r[low] = r2(p2)
            i[low] = i2(p2)
        out = r + 1j * i
        out[~np.isfinite(out)] = 1.0
        return out

    def static_dielectric_constant(self, method: str = "auto") -> float:
        """eps(q -> 0, w = 0).

        ``"auto"`` (default): ``"states"`` when the optical limit came from
        the DFT states, else ``"fit"``.
        ``"states"``: the exact transition sum 1 + (16 pi / V) sum |d|^2 / w_cv
        of :mod:`dmca_hpc.response.optical` (no broadening, no Kramers-Kronig).
        ``"fit"``: the fit of 1/(eps(q, 0) - 1) = A + B q^2 over
        the lowest populated bins (:func:`static_limit_fit`), stored in
        ``meta['eps_static_fit']`` when the table was built;
        ``"spectrum"``: Re eps of the extrapolated optical spectrum,
        extrapolated linearly to w = 0 from the first two bins (below the gap
        Re eps is flat to O(w^2)).
        """
        if method == "auto":
            method = "states" if "eps_static_states" in self.meta else "fit"
        if method == "states":
            if "eps_static_states" not in self.meta:
                raise DielectricError("static_dielectric_constant('states'): this eps has no "
                                      "optical limit from the DFT states")
            return float(self.meta["eps_static_states"])
        if method == "fit" and "eps_static_fit" in self.meta:
            return float(self.meta["eps_static_fit"])
        w, r = self.e_ev, self.eps0_re
        return float(r[0] - (r[1] - r[0]) * w[0] / (w[1] - w[0]))

    def plasmon_peak_ev(self, smoothing_ev: float = 1.0) -> float:
        """Peak [eV] of the optical energy-loss function after Gaussian
        smoothing of ``smoothing_ev`` (default 1 eV: removes k-mesh noise of a
        coarse table; a bulk plasmon in Si or Ge is 3-5 eV wide, so the peak
        does not move; EELS resolutions are of the same order)."""
        return plasmon_peak_ev(self.e_ev, _gaussian_smooth(self.elf0, self.e_ev[1] - self.e_ev[0],
                                                           smoothing_ev))


def _table_geometry(table, material=None, kmesh=None):
    """(cell [angstrom] 3x3, kmesh (3,), how) for a FormFactorTable."""
    meta = getattr(table, "metadata", {}) or {}
    cell = None
    if "a" in meta:
        cell = np.asarray(meta["a"], dtype=float)
    elif "cell_angstrom" in meta:
        cell = np.asarray(meta["cell_angstrom"], dtype=float)
    elif material is not None:
        cell = np.asarray(material.atoms().cell, dtype=float)
    if cell is None or cell.shape != (3, 3):
        return None, None, "no cell in the table metadata ('a') and no material"
    how = ""
    if kmesh is None:
        for key in ("kmesh", "kpts_mesh", "bands_kmesh"):
            if key in meta and np.size(meta[key]) in (1, 3):
                kmesh, how = np.broadcast_to(np.asarray(meta[key], int).reshape(-1), (3,)), f"metadata {key}"
                break
    if kmesh is None and "kpts" in meta:
        kp = np.asarray(meta["kpts"], dtype=float)
        if kp.ndim == 2 and kp.shape[1] == 3:
            frac = kp @ (cell * U.ANGSTROM_BOHR).T / (2.0 * math.pi)
            ks = []
            for ax in range(3):
                d = np.abs(frac[:, ax][:, None] - frac[:, ax][None, :])
                d = np.abs(d - np.round(d))
                d = d[d > 1e-6]
                ks.append(int(round(1.0 / d.min())) if d.size else 1)
            if int(np.prod(ks)) == len(kp):
                kmesh, how = np.array(ks), "from the table's k points"
    if kmesh is None:
        n = infer_kmesh(table.f2, cell, table.dq_ame, getattr(table, "q_min_ame", 0.0))
        if n is not None:
            kmesh, how = np.array([n, n, n]), "inferred from the populated q bins"
    elif not how:
        how = "given"
    if kmesh is None:
        return cell, None, "k mesh unknown (set dielectric.kmesh)"
    return cell, np.broadcast_to(np.asarray(kmesh, int).reshape(-1), (3,)).copy(), how


def dielectric_from_table(table, material=None, kmesh=None, q_optical_max_ame: float = 0.0,
                          optical_bins: int = 3, static_bins: int = 6,
                          optical_method: str = "quadratic", broadening_ev: float = 0.0,
                          tail: str = "power", tail_exponent: float = DEFAULT_TAIL_EXPONENT,
                          sampling: str = "auto", optical: dict | None = None) -> DielectricFunction:
    """Build eps(q, w) and its optical limit from a form-factor table.

    Args:
        table: a :class:`dmca_hpc.tables.FormFactorTable` or a table path.
        material: optional :class:`dmca_hpc.materials.Material` (cell when the
            table lacks it).
        kmesh: k mesh of the table (default: from the table's metadata or
            k points, else inferred from its populated q bins).
        q_optical_max_ame: upper end of the q window of the optical fit
            [alpha m_e]; 0 = use the lowest ``optical_bins`` populated bins.
        optical_bins: number of lowest populated bins in the optical fit.
        static_bins: number of lowest populated bins in the static fit
            (:func:`static_limit_fit`)
        optical_method: ``"quadratic"`` or ``"mean"`` (:func:`optical_limit`).
        broadening_ev: Gaussian sigma [eV] applied to Im eps along w before
            Kramers-Kronig (0 = none; a coarse k mesh gives spiky spectra).
        tail, tail_exponent: high-energy continuation for Kramers-Kronig.
        sampling: ``"auto"`` (fine-lattice correction when the mesh is known,
            else none) , ``"lattice"`` (required) or ``"none"``.
        optical: the optical limit from the DFT states
            (:func:`dmca_hpc.response.optical.optical_from_scf` on the table's energy
            bins); it replaces the q -> 0 extrapolation of the table and
            anchors the interpolation of the empty low-q bins.
    """
    from dmca_hpc.tables import FormFactorTable, read_table
    if not isinstance(table, FormFactorTable):
        table = read_table(table)
    q, w = table.q_ame, table.e_ev
    nq = table.nq
    im_raw = im_eps_from_f2(table.f2, q, table.vcell_ev3)
    cell, km, how = (None, None, "sampling correction off")
    if sampling != "none":
        cell, km, how = _table_geometry(table, material, kmesh)
        if km is None and sampling == "lattice":
            raise DielectricError(f"table {table.metadata.get('source_file', '')}: {how}")
    if km is not None:
        n_disc, n_cont = fine_lattice_counts(cell, km, table.dq_ame, nq, table.q_min_ame)
        corr = sampling_correction(n_disc, n_cont)
        populated = n_disc > 0
        weights = n_disc
    else:
        populated = table.f2.sum(axis=1) > 0
        populated[0] = False  # may hold only the q = 0 point
        corr = np.where(populated, 1.0, np.nan)
        weights = np.where(populated, q**2, 0.0)
    im_c = im_raw * corr[:, None]
    im_c = _gaussian_smooth(np.where(np.isfinite(im_c), im_c, 0.0), table.de_ev, broadening_ev)
    im_c[~populated] = np.nan
    im0, info = optical_limit(q, im_c, weights, q_optical_max_ame, optical_method, optical_bins)
    if optical is not None:
        if np.shape(optical["eps_im"]) != np.shape(w):
            raise DielectricError(f"optical limit has {np.size(optical['eps_im'])} energies, the "
                                  f"table {len(w)}: compute it on the table's energy bins")
        im0 = np.asarray(optical["eps_im"], float)
    # fill empty bins: linear in q between populated bins, anchored at q = 0 by the optical limit
    qp = np.concatenate([[0.0], q[populated]])
    yp = np.vstack([im0[None, :], im_c[populated]])
    idx = np.searchsorted(qp, q, side="right") - 1
    idx = np.clip(idx, 0, len(qp) - 2)
    t = np.clip((q - qp[idx]) / (qp[idx + 1] - qp[idx]), 0.0, 1.0)
    im_full = (1 - t)[:, None] * yp[idx] + t[:, None] * yp[idx + 1]
    im_full[populated] = im_c[populated]
    beyond = q > qp[-1]
    im_full[beyond] = yp[-1]
    re_full = kk_real_from_imag(w, im_full, tail=tail, tail_exponent=tail_exponent)
    re0 = (np.asarray(optical["eps_re"], float) if optical is not None
           else kk_real_from_imag(w, im0, tail=tail, tail_exponent=tail_exponent))
    meta = {
        "relation": "|f|^2 = q^5 V_cell Im eps / (8 pi^2 alpha^2 m_e^2) (DarkELF eq. 16)",
        "kramers_kronig": "piecewise-linear Im eps, closed-form segments, Im eps(0) = 0",
        "tail": tail, "tail_exponent": float(tail_exponent),
        "sampling": "fine-lattice n_cont/n_disc" if km is not None else "none",
        "kmesh": [int(x) for x in km] if km is not None else [],
        "kmesh_source": how,
        "optical_route": "states" if optical is not None else "table",
        "optical_method": info["method"], "q_optical_max_ame": info["q_max_ame"],
        "optical_bins": [int(i) for i in info["bins"]],
        "broadening_ev": float(broadening_ev),
        "source_table": str(table.metadata.get("source_file", "")),
    }
    # static eps(q, 0) per populated bin (Kramers-Kronig at w -> 0) and its q -> 0 fit
    re_static_q = np.array([_re_at_zero(w, im_full[i], tail, tail_exponent) for i in range(nq)])
    try:
        eps0_fit, b_fit, q_rng = static_limit_fit(q, np.where(populated, re_static_q, np.nan),
                                                  weights, static_bins)
        meta.update({"eps_static_fit": eps0_fit, "static_fit_B_ame2": b_fit,
                     "static_fit_q_range_ame": list(q_rng)})
    except DielectricError as exc:
        meta["eps_static_fit_error"] = str(exc)
    if optical is not None:
        om = optical.get("meta", {})
        meta.update({"eps_static_states": float(optical["eps_static"]),
                     "optical_states_kmesh": list(om.get("kmesh", [])),
                     "optical_states_sigma_ev": float(om.get("sigma_ev", float("nan"))),
                     "optical_states_scissor_ev": float(om.get("scissor_shift_ev", float("nan"))),
                     "optical_states_dq_bohr": float(om.get("dq_bohr", float("nan"))),
                     "optical_states_method": str(om.get("method", ""))})
    numval = table.metadata.get("numval")
    if numval is not None:
        meta["numval"] = int(numval)
    return DielectricFunction(q_ame=q, e_ev=w, eps_re=re_full, eps_im=im_full, eps0_re=re0,
                              eps0_im=im0, populated=populated, vcell_ev3=table.vcell_ev3,
                              cell_mass_ev=table.cell_mass_ev, material=table.material, meta=meta)


# ---------------------------------------------------------------------------
# screening
# ---------------------------------------------------------------------------

def tf_epsilon(q_ev, e_ev, material: str | None = None, params: dict | None = None):
    """Thomas-Fermi-like model eps(q, w) (Cappellini et al. 1993; QCDark's
    ``TFscreening``), real-valued.

    Args:
        q_ev: momentum transfer [eV] (array, broadcast against ``e_ev``).
        e_ev: energy transfer [eV].
        material: "Si" or "Ge" for :data:`TF_PARAMS`.
        params: explicit {eps0, q_tf_ev, wp_ev, alpha_s} (overrides material).
    """
    if params is None:
        if material not in TF_PARAMS:
            raise DielectricError(f"Thomas-Fermi screening parameters are known for "
                                  f"{', '.join(TF_PARAMS)}, not {material!r}; give "
                                  "dielectric/rates tf parameters {eps0, q_tf_ev, wp_ev, alpha_s}")
        params = TF_PARAMS[material]
    p = params
    q = np.asarray(q_ev, dtype=float)
    e = np.asarray(e_ev, dtype=float)
    inv = (1.0 / (p["eps0"] - 1.0) + p["alpha_s"] * (q / p["q_tf_ev"]) ** 2
           + q**4 / (4.0 * U.M_E_EV**2 * p["wp_ev"] ** 2) - (e / p["wp_ev"]) ** 2)
    return 1.0 + 1.0 / inv


def screening_factor(table_or_eps, q_grid=None, E_grid=None, model: str = "rpa",
                     material: str | None = None, tf_params: dict | None = None):
    """|eps(q, E)|^2 on a form-factor table's bins, for the rate engine to
    divide the integrand by (screened rate = unscreened / |eps|^2).

    Args:
        table_or_eps: a :class:`DielectricFunction`, a dielectric HDF5 path
            (written by this stage), or a FormFactorTable / table path (then
            eps is built from it with the default settings).  Unused (may be
            None) for ``model="tf"`` when q_grid and E_grid are given.
        q_grid: q bin centres [alpha m_e] (default: the table's).
        E_grid: E bin centres [eV] (default: the table's).
        model: ``"rpa"`` (our eps table; q below the first bin -> optical
            limit; outside the table eps = 1), ``"tf"`` (Thomas-Fermi-like
            model, :func:`tf_epsilon`) or ``"none"`` (ones).
        material: material name for ``"tf"`` (default: the table's).
        tf_params: explicit TF parameters.
    Returns:
        array [len(q_grid), len(E_grid)] of |eps|^2 (>= 1 for the TF model
        below its plasma resonance).
    """
    eps = table_or_eps
    if isinstance(eps, (str, os.PathLike)):
        p = Path(eps)
        import h5py
        with h5py.File(p, "r") as f:
            is_diel = f.attrs.get("stage", "") in ("dielectric", b"dielectric") or "eps_im" in f
        eps = read_dielectric(p) if is_diel else _load_table(p)
    from dmca_hpc.tables import FormFactorTable
    if model == "none":
        if q_grid is None:
            q_grid, E_grid = _grids_of(eps)
        return np.ones((len(q_grid), len(E_grid)))
    if q_grid is None or E_grid is None:
        qg, eg = _grids_of(eps)
        q_grid = qg if q_grid is None else q_grid
        E_grid = eg if E_grid is None else E_grid
    q_grid = np.asarray(q_grid, dtype=float)
    E_grid = np.asarray(E_grid, dtype=float)
    if model == "tf":
        name = material or (getattr(eps, "material", None) if eps is not None else None)
        e = tf_epsilon(q_grid[:, None] * U.ALPHA_ME_EV, E_grid[None, :], name, tf_params)
        return e**2
    if model == "rpa":
        if isinstance(eps, FormFactorTable):
            eps = dielectric_from_table(eps)
        if not isinstance(eps, DielectricFunction):
            raise DielectricError("screening 'rpa' needs a dielectric table (DielectricFunction "
                                  "or the dielectric stage's HDF5) or a form-factor table")
        z = eps.eps_at(q_grid, E_grid)
        return np.abs(z) ** 2
    raise DielectricError(f"screening model must be 'rpa', 'tf' or 'none', got {model!r}")


def _load_table(path):
    from dmca_hpc.tables import read_table
    return read_table(path)


def _grids_of(obj):
    if obj is None:
        raise DielectricError("give q_grid and E_grid (no table to take them from)")
    if isinstance(obj, DielectricFunction):
        return obj.q_ame, obj.e_ev
    return obj.q_ame, obj.e_ev


# ---------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------

def write_dielectric(path, d: DielectricFunction, input_hash: str = "", prov=None,
                     absorption: dict | None = None, extra_attrs: dict | None = None) -> Path:
    """Write ``d`` (and optional absorption curves) atomically with units."""
    from dmca_hpc.hpc.checkpoint import atomic_h5, canonical_json, write_dataset
    with atomic_h5(path, input_hash=input_hash, stage="dielectric", prov=prov) as f:
        f.attrs["material"] = d.material
        f.attrs["vcell_ev3"] = d.vcell_ev3
        f.attrs["cell_mass_ev"] = d.cell_mass_ev
        f.attrs["method"] = canonical_json(d.meta)
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        write_dataset(f, "q", d.q_ame, "alpha*m_e", "q bin centres")
        write_dataset(f, "E", d.e_ev, "eV", "energy (frequency) bin centres")
        write_dataset(f, "eps_re", d.eps_re, "1", "Re eps(q, w), Kramers-Kronig")
        write_dataset(f, "eps_im", d.eps_im, "1", "Im eps(q, w), RPA without local fields, "
                      "from |f_crystal|^2 (DarkELF eq. 16), sampling-corrected")
        write_dataset(f, "elf", d.elf, "1", "energy-loss function Im(-1/eps(q, w))")
        write_dataset(f, "populated", d.populated.astype(np.int8), "1",
                      "1 where the k mesh puts q vectors in the bin, 0 = interpolated in q")
        g = f.create_group("optical")
        write_dataset(g, "eps_re", d.eps0_re, "1", "Re eps(q -> 0, w)")
        write_dataset(g, "eps_im", d.eps0_im, "1", "Im eps(q -> 0, w) (see attrs method)")
        write_dataset(g, "elf", d.elf0, "1", "Im(-1/eps(q -> 0, w))")
        write_dataset(g, "n_eff", n_eff(d.e_ev, d.eps0_im, d.vcell_ev3), "electrons/cell",
                      "f-sum effective electron number up to w")
        if absorption:
            a = f.create_group("absorption")
            for name, (data, unit, desc) in absorption.items():
                write_dataset(a, name, data, unit, desc)
    return Path(path)


def read_dielectric(path) -> DielectricFunction:
    """Read a file written by :func:`write_dielectric`."""
    import json
    import h5py
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            for k in ("q", "E", "eps_re", "eps_im", "optical/eps_re", "optical/eps_im"):
                if k not in f:
                    raise DielectricError(f"{path}: dataset '{k}' missing (expected a dielectric "
                                          "file written by dmca_hpc.response.dielectric)")
            meta = json.loads(f.attrs.get("method", "{}"))
            pop = f["populated"][()].astype(bool) if "populated" in f else np.ones(len(f["q"]), bool)
            return DielectricFunction(
                q_ame=f["q"][()], e_ev=f["E"][()], eps_re=f["eps_re"][()], eps_im=f["eps_im"][()],
                eps0_re=f["optical/eps_re"][()], eps0_im=f["optical/eps_im"][()], populated=pop,
                vcell_ev3=float(f.attrs["vcell_ev3"]), cell_mass_ev=float(f.attrs["cell_mass_ev"]),
                material=str(f.attrs.get("material", "")), meta=meta)
    except OSError as exc:
        raise DielectricError(f"{path}: cannot read dielectric file ({exc})") from None


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------

def plot_dielectric(d: DielectricFunction, path, title: str = "") -> Path:
    """Optical Re/Im eps and ELF versus w, and the ELF map in (q, w)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axs[0]
    ax.plot(d.e_ev, d.eps0_re, label=r"Re $\epsilon$")
    ax.plot(d.e_ev, d.eps0_im, label=r"Im $\epsilon$")
    ax.plot(d.e_ev, 10 * d.elf0, label=r"10 $\times$ Im$(-1/\epsilon)$")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel(r"$\omega$ [eV]")
    ax.set_ylabel(r"$\epsilon(q\to 0, \omega)$")
    ax.set_title(title or f"{d.material}: optical limit")
    ax.legend()
    ax = axs[1]
    qmax = min(d.q_ame[-1], 5.0)
    sel = d.q_ame <= qmax
    elf = np.clip(d.elf[sel], 1e-4, None)
    im = ax.pcolormesh(d.e_ev, d.q_ame[sel], elf, shading="auto", norm=LogNorm(1e-3, elf.max()))
    fig.colorbar(im, ax=ax, label=r"Im$(-1/\epsilon(q, \omega))$")
    ax.set_xlabel(r"$\omega$ [eV]")
    ax.set_ylabel(r"$q$ [$\alpha m_e$]")
    ax.set_title("energy-loss function")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------
# pipeline stage
# ---------------------------------------------------------------------------

#: defaults of the job section (mirrors config/schema/dielectric.schema.json)
DEFAULTS = {
    "kmesh": None,
    "q_optical_max_ame": 0.0,
    "optical_bins": 3,
    "static_bins": 6,
    "optical_method": "quadratic",
    "broadening_ev": 0.0,
    "kk_tail": "power",
    "kk_tail_exponent": DEFAULT_TAIL_EXPONENT,
    "absorption": True,
    "mass_min_ev": 1.0,
    "mass_max_ev": 50.0,
    "n_masses": 200,
    "exposure_kg_year": 1.0,
    "n_events": 3.0,
    "rho_chi_gev_cm3": 0.3,
    "reference_mass_ev": 10.0,
    # optical limit from the DFT states (dmca_hpc.response.optical)
    "optical_route": "auto",       # auto: states when the job ran the dft stage, else table
    "optical_kmesh": [12, 12, 12],
    "optical_dq_bohr": 1.0e-4,
    "optical_sigma_ev": 0.15,
    "optical_chunk": 4,
    "optical_min_gap_ev": 0.1,
}


def _optical_plan(ctx, cfg):
    """Rank 0: (plan, table): the plan holds the table path, its energy bins
    [eV] and whether / how to compute the optical limit from the DFT states
    (scf path, scissor shift [eV]); the table is kept for rank 0's own use."""
    from dmca_hpc.tables import read_table
    try:
        table_path = ctx.outputs["formfactor"]["table"]
    except (KeyError, TypeError):
        raise DielectricError("dielectric stage: ctx.outputs['formfactor']['table'] missing "
                              "(expected the form-factor stage's table path)") from None
    route = cfg["optical_route"]
    if route not in ("auto", "states", "table"):
        raise DielectricError(f"dielectric.optical_route: expected auto, states or table, "
                              f"got {route!r}")
    table = read_table(table_path)
    scf = None
    if route != "table":
        scf = ((ctx.outputs or {}).get("dft") or {}).get("scf")
        if scf is None and route == "states":
            raise DielectricError("dielectric.optical_route = states needs the dft stage's "
                                  "scf.h5 in the same job (add 'dft' to stages)")
    scissor = 0.0
    if scf is not None:
        scissor = table.metadata.get("scissor_shift_ev")
        if scissor is None:
            from dmca_hpc.electronic.scf import band_gap_from, load_scf
            dd = load_scf(scf)
            nocc = int(round(dd["cell"].nelectron)) // 2
            gap = band_gap_from(np.asarray(dd["mo_energy"]), nocc)["gap_indirect_ev"]
            target = getattr(ctx.material, "scissor_gap_ev", None) or table.gap_ev
            scissor = float(target - gap) if target else 0.0
    plan = {"table": str(table_path), "e_ev": np.asarray(table.e_ev, float), "scf": scf,
            "scissor_ev": float(scissor or 0.0),
            "label": table.material or getattr(ctx.material, "name", "")}
    return plan, table


def run_stage(ctx) -> dict:
    """Pipeline stage ``dielectric``: eps(q, w), optical limit, ELF, and the
    dark-photon / ALP absorption rates and reach (dmca_hpc.detection.absorption) from
    the form-factor stage's table.  The optical limit from the DFT states
    (:mod:`dmca_hpc.response.optical`, when the job ran the dft stage) is spread over
    all ranks; the rest runs on rank 0 (a few seconds for a 1000 x 500
    table); the other ranks return {}.

    Writes ``dielectric.h5`` (units on every dataset), ``dielectric.png``
    and ``absorption.png``; telemetry physics block carries
    ``darkphoton_epsilon`` and ``axion_coupling`` (reach at
    ``reference_mass_ev``, 3 events / exposure).
    """
    from dmca_hpc.hpc.parallel import peak_memory_mb
    cfg = {**DEFAULTS, **(ctx.job.get("dielectric") or {})}
    comm = ctx.comm
    rank = comm.Get_rank()
    t0, c0 = time.perf_counter(), time.process_time()
    plan = table = None
    if rank == 0:
        try:
            plan, table = _optical_plan(ctx, cfg)
        except Exception as exc:
            plan = {"error": f"{type(exc).__name__}: {exc}"}
    plan = comm.bcast(plan, root=0)
    if "error" in plan:
        raise DielectricError(plan["error"])
    optical = None
    if plan["scf"]:
        from dmca_hpc.response.optical import optical_from_scf
        optical = optical_from_scf(
            plan["scf"], plan["e_ev"], kmesh=cfg["optical_kmesh"], sigma_ev=cfg["optical_sigma_ev"],
            scissor_ev=plan["scissor_ev"], dq_bohr=cfg["optical_dq_bohr"], comm=comm,
            workdir=Path(ctx.stage_dir) / "optical_units", input_hash=ctx.input_hash,
            chunk=cfg["optical_chunk"], telemetry=ctx.telemetry, label=plan["label"],
            tail=cfg["kk_tail"], tail_exponent=cfg["kk_tail_exponent"])
    if rank != 0:
        return {}
    rejected = ""
    if optical is not None:
        gap = optical["meta"]["gap_direct_dft_ev"]
        if gap < cfg["optical_min_gap_ev"]:
            # near-degenerate valence/conduction pairs (a semilocal functional
            # closing the gap, e.g. PBE Ge at Gamma) make d_cv ~ p / w_cv blow
            # up, and a scissor moves w_cv but not d_cv: the sum is meaningless
            rejected = (f"smallest direct DFT gap on the optical mesh is {gap:.3f} eV < "
                        f"dielectric.optical_min_gap_ev = {cfg['optical_min_gap_ev']} eV: the "
                        "states route is unreliable (the functional closes the gap; use a "
                        "hybrid such as PBE0)")
            if cfg["optical_route"] == "auto":
                rejected += "; using the table's q -> 0 extrapolation instead"
                optical = None
            print(f"dmca_hpc dielectric: WARNING: {rejected}", file=sys.stderr)
    from dmca_hpc.detection import absorption as absn
    d = dielectric_from_table(table, material=ctx.material, kmesh=cfg["kmesh"],
                              q_optical_max_ame=cfg["q_optical_max_ame"],
                              optical_bins=cfg["optical_bins"], static_bins=cfg["static_bins"],
                              optical_method=cfg["optical_method"],
                              broadening_ev=cfg["broadening_ev"], tail=cfg["kk_tail"],
                              tail_exponent=cfg["kk_tail_exponent"], optical=optical)
    if rejected:
        d.meta["optical_states_warning"] = rejected
    if ctx.material is not None and not d.material:
        d.material = ctx.material.name
    out_h5 = Path(ctx.stage_dir) / "dielectric.h5"
    absorption = None
    physics: dict[str, Any] = {"material": d.material or (ctx.material.name if ctx.material else "")}
    outs: dict[str, str] = {}
    if cfg["absorption"]:
        res = absn.absorption_curves(d, mass_min_ev=cfg["mass_min_ev"], mass_max_ev=cfg["mass_max_ev"],
                                     n_masses=cfg["n_masses"], rho_chi_gev_cm3=cfg["rho_chi_gev_cm3"],
                                     exposure_kg_year=cfg["exposure_kg_year"],
                                     n_events=cfg["n_events"])
        absorption = absn.curves_to_datasets(res)
        ref = absn.reach_at(res, cfg["reference_mass_ev"])
        physics.update({"darkphoton_epsilon": ref["kappa"], "axion_coupling": ref["g_ae"],
                        "reference_mass_ev": cfg["reference_mass_ev"]})
        png = absn.plot_absorption(res, Path(ctx.stage_dir) / "absorption.png", d.material)
        outs["absorption_plot"] = str(png)
    eps_static = d.static_dielectric_constant()
    eps_static_kk = d.static_dielectric_constant("spectrum")
    elf_peak = d.plasmon_peak_ev()
    physics.update({"eps_static": eps_static, "eps_static_spectrum": eps_static_kk,
                    "plasmon_peak_ev": elf_peak,
                    "q_scan_points": int(len(d.q_ame))})
    write_dielectric(out_h5, d, input_hash=ctx.input_hash, prov=ctx.prov, absorption=absorption,
                     extra_attrs={"eps_static": eps_static, "eps_static_spectrum": eps_static_kk,
                                  "plasmon_peak_ev": elf_peak})
    png = plot_dielectric(d, Path(ctx.stage_dir) / "dielectric.png")
    outs.update({"dielectric": str(out_h5), "dielectric_plot": str(png)})
    physics["computation_time_sec"] = time.perf_counter() - t0
    ctx.telemetry.record("dielectric", d.material or "dielectric", "ok", time.perf_counter() - t0,
                         time.process_time() - c0, peak_memory_mb(),
                         physics={k: v for k, v in physics.items()
                                  if v is None or isinstance(v, (int, float, str))
                                  and (not isinstance(v, float) or math.isfinite(v))})
    return outs
