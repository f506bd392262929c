"""Kramers-Kronig relations between Re eps and Im eps on a frequency grid.

Conventions (shared/design/physics.md; frequencies in eV, eps dimensionless):

* **Re eps from Im eps**, Re eps(w) = 1 + (2/pi) P int_0^inf
  w' Im eps(w') / (w'^2 - w^2) dw', and the inverse
  Im eps(w) = -(2 w/pi) P int_0^inf (Re eps(w') - 1)/(w'^2 - w^2) dw'.
* **Discretization.**  On a uniform bin-centre grid w_j = (j + 1/2) h (the
  tables' energy bins) the principal value is Maclaurin's midpoint formula
  (Ohta & Ishida, Appl. Spectrosc. 42, 952 (1988)), exponentially convergent
  for analytic spectra.  On any other ascending grid Im eps is taken
  piecewise linear between grid nodes (plus w = 0 where Im eps = 0 for an
  insulator) and every segment is integrated in closed form, so the
  principal value is exact for that interpolant (the log singularities of
  neighbouring segments cancel).
* **High-energy tail.**  Above the last node Im eps is continued as
  ``Im eps(w_N) (w/w_N)^-p`` (default p = 3, the asymptotic law of a
  Lorentz/Drude oscillator) on a log grid to 1000 w_N; ``tail="none"`` sets
  it to zero.  A table that stops at 50 eV misses the oscillator strength
  above it (semicore and core levels): the tail only continues the last bin,
  it does not invent that strength.

Only numpy is imported.
"""
from __future__ import annotations

import math

import numpy as np

from dmca_hpc.response import DielectricError

__all__ = ["DEFAULT_TAIL_EXPONENT", "kk_real_from_imag", "kk_imag_from_real",
           "kk_real_at_zero", "lorentz_oscillator", "prepare_grid"]

#: default high-energy tail exponent p of Im eps ~ w^-p (Lorentz/Drude asymptotics)
DEFAULT_TAIL_EXPONENT = 3.0
#: the tail grid runs from the last node to this multiple of it
_TAIL_EXTENT = 1.0e3
_TAIL_POINTS = 200


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


def prepare_grid(w_ev, values, fill0):
    """(w, y, k): the grid ``w_ev`` [eV] checked (ascending, >= 0) and, when it
    does not start at 0, extended by w = 0 with the value ``fill0`` there (None:
    linear extrapolation of the first two points); k = 1 when a point was added
    (the caller drops it again with ``[k:]``), else 0."""
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
    w, y, _ = prepare_grid(w_in, im_eps, 0.0)
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
    w, y, _ = prepare_grid(w_in, np.asarray(re_eps, dtype=float) - 1.0, None)
    we = w_in if w_eval is None else np.asarray(w_eval, dtype=float)
    M = _kk_matrix(w, we, "im", tail, tail_exponent)
    return y @ M.T


def lorentz_oscillator(w_ev, w0_ev: float, gamma_ev: float, wp_ev: float):
    """Analytic Lorentz oscillator eps(w) = 1 + w_p^2/(w0^2 - w^2 - i gamma w)
    (all in eV); returns the complex array.  Used to test Kramers-Kronig."""
    w = np.asarray(w_ev, dtype=float)
    return 1.0 + wp_ev**2 / (w0_ev**2 - w**2 - 1j * gamma_ev * w)



def kk_real_at_zero(w_ev, im_eps, tail: str = "power",
                    tail_exponent: float = DEFAULT_TAIL_EXPONENT) -> float:
    """Re eps(w = 0) = 1 + (2/pi) int Im eps/w dw for one spectrum (the
    Kramers-Kronig kernel at w = 0: trapezoid on the grid with Im(0) = 0,
    plus the power tail in closed form: y_N w_N^p int_L^inf w^(-1-p) dw).

    Args:
        w_ev: ascending frequency grid [eV], >= 0.
        im_eps: Im eps on ``w_ev``, shape [nw].
        tail, tail_exponent: as :func:`kk_real_from_imag`.
    """
    wg, y, _ = prepare_grid(np.asarray(w_ev, float), np.asarray(im_eps, float), 0.0)
    f = np.zeros_like(y)
    f[1:] = y[1:] / wg[1:]
    f[0] = (y[1] / wg[1]) if len(wg) > 1 else 0.0
    val = np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(wg))
    if tail == "power" and tail_exponent > 0:
        val += y[-1] / tail_exponent
    return 1.0 + 2.0 / math.pi * val
