"""Screening of the DM-electron rate: |eps(q, E)|^2 on a table's bins.

The screened rate is the unscreened one divided by |eps(q, E)|^2
(:func:`dmca_hpc.detection.rates.electron_rates` takes the array).  Models:

* ``"rpa"``: our RPA dielectric function (:mod:`dmca_hpc.response.dielectric`);
* ``"tf"``: the Thomas-Fermi-like model dielectric function of Cappellini,
  Del Sole, Reining & Bechstedt, PRB 47, 9892 (1993)::

      eps(q, w) = 1 + [1/(eps0 - 1) + alpha_s (q/q_TF)^2 + q^4/(4 m_e^2 w_p^2)
                       - (w/w_p)^2]^-1

  with the parameters QCDark uses (asingal14/QCDark dark_matter_rates.py,
  ``TFscreening``; Dreyer et al., PRD 109, 115008): Si eps0 = 11.3,
  q_TF = 4.13 keV, w_p = 16.6 eV, alpha_s = 1.563; Ge eps0 = 14.0,
  q_TF = 3.99 keV, w_p = 15.2 eV, alpha_s = 1.563;
* ``"none"``: ones.

Units: q in eV for :func:`tf_epsilon`, q bin centres in alpha m_e and E in
eV on the table grids.  h5py is imported inside functions.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dmca_hpc import units as U
from dmca_hpc.response import DielectricError
from dmca_hpc.response.dielectric import DielectricFunction, dielectric_from_table, read_dielectric

__all__ = ["TF_PARAMS", "tf_epsilon", "screening_factor", "screening_eps2"]

#: Thomas-Fermi-like model parameters (Cappellini et al. 1993 form, values as
#: in QCDark's dark_matter_rates.py): eps0 [1], q_tf_ev [eV], wp_ev [eV], alpha_s [1]
TF_PARAMS = {
    "Si": {"eps0": 11.3, "q_tf_ev": 4.13e3, "wp_ev": 16.6, "alpha_s": 1.563},
    "Ge": {"eps0": 14.0, "q_tf_ev": 3.99e3, "wp_ev": 15.2, "alpha_s": 1.563},
}


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
    return obj.q_ame, obj.e_ev


def screening_eps2(table, model: str, dielectric=None):
    """|eps(q, E)|^2 on the table's bins for ``model`` ('none' -> None), from
    :func:`screening_factor` (RPA from ``dielectric``, a dielectric.h5 path,
    or else built from the table itself)."""
    if model in (None, "none"):
        return None
    src = dielectric if (model == "rpa" and dielectric) else table
    return screening_factor(src, table.q_ame, table.e_ev, model=model, material=table.material or None)
