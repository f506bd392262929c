"""Dielectric function, energy-loss function and sum rules from |f_crystal|^2.

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
* **Re eps** by Kramers-Kronig (:mod:`dmca_hpc.response.kramers_kronig`:
  the discretization and the high-energy tail are described there).
* **Sampling correction** (:mod:`dmca_hpc.response.qsampling`): Im eps is
  divided by n_disc/n_cont, the fine-lattice count of q vectors in each bin
  over the continuum expectation; empty bins are filled by linear
  interpolation in q, anchored at q = 0 by the optical limit.
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
  Cappellini model of :mod:`dmca_hpc.response.screening`, which our
  finite-q values follow to a few percent).  The optical limit from the DFT
  states (:mod:`dmca_hpc.response.optical`) can replace both.
* **Energy-loss function** ELF = Im(-1/eps) = Im eps / |eps|^2.

Screening of the rates by |eps|^2: :mod:`dmca_hpc.response.screening`.
Heavy imports (h5py, scipy) happen inside functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmca_hpc import units as U
from dmca_hpc.response import DielectricError
from dmca_hpc.response.kramers_kronig import (DEFAULT_TAIL_EXPONENT, kk_real_at_zero,
                                              kk_real_from_imag, prepare_grid)
from dmca_hpc.response.qsampling import fine_lattice_counts, sampling_correction, table_geometry

__all__ = [
    "DielectricFunction", "DielectricError",
    "im_eps_from_f2", "f2_from_im_eps", "optical_limit", "static_limit_fit", "loss_function",
    "plasma_frequency_ev", "n_eff", "fsum_ratio", "plasmon_peak_ev", "dielectric_from_table",
    "write_dielectric", "read_dielectric",
]


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
# optical and static limits, sum rules
# ---------------------------------------------------------------------------

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
    w, y, k = prepare_grid(np.asarray(w_ev, float), np.asarray(im_eps, float), 0.0)
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
        cell, km, how = table_geometry(table, material, kmesh)
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
    re_static_q = np.array([kk_real_at_zero(w, im_full[i], tail, tail_exponent) for i in range(nq)])
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


# --------------------------------------------------------------------------- resource estimate

#: dielectric_from_table + absorption + plots on rank 0 [s] = DIELECTRIC_T0_S +
#: DIELECTRIC_S_PER_OP nq nE^2 (the Kramers-Kronig matrix product): 1.96 s measured for
#: the quickstart's 500 x 500 table on this machine (one thread), mostly the two plots
DIELECTRIC_T0_S = 1.5
DIELECTRIC_S_PER_OP = 2e-9


def estimate_dielectric(nq: int, ne: int, n_masses: int = 200, plots: bool = True) -> dict:
    """Memory, disk and time of :func:`dielectric_from_table` and
    :func:`write_dielectric` for an [nq, nE] table, from sizes only.

    Memory [bytes]: the table and about eight [nq, nE] float64 arrays alive at once
    (Im eps and its sampling correction, Re eps, the ELF, temporaries) plus the
    [nE, nE] Kramers-Kronig matrix.  Disk [bytes]: dielectric.h5 (Re eps, Im eps and
    ELF [nq, nE]; the optical limit, q, E, absorption curves; 30 kB of attributes;
    measured 6.05 MB for 500 x 500, model 6.06 MB) and the two plots (305 kB measured).
    Time [s]: DIELECTRIC_T0_S + DIELECTRIC_S_PER_OP nq nE^2.

    Returns a dict: memory_bytes, disk_bytes, time_s."""
    cells = 8.0 * nq * ne
    mem = 9 * cells + 8.0 * ne * ne
    disk = 30e3 + 3 * cells + 8.0 * (nq + 5 * ne) + nq + 48.0 * n_masses + (305e3 if plots else 0.0)
    return {"memory_bytes": mem, "disk_bytes": disk,
            "time_s": DIELECTRIC_T0_S + DIELECTRIC_S_PER_OP * nq * ne * ne}
