"""Plots of the response package (matplotlib, Agg backend, imported inside
the functions so that importing this module stays cheap)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dmca_hpc.response.dielectric import DielectricFunction

__all__ = ["plot_dielectric", "active_range_ev", "optical_caption"]

#: a response counts as "happening" where it is at least this fraction of its maximum
ACTIVE_FRACTION = 0.01


def active_range_ev(e_ev, *curves, frac: float = ACTIVE_FRACTION) -> tuple[float, float]:
    """(lowest, highest) energy [eV] where any of ``curves`` (on ``e_ev``) is at
    least ``frac`` of its own maximum; the whole axis when every curve is zero.

    Plots stop there: above it a finite basis has run out of final states
    (Im eps -> 0 makes reaches spike) and nothing of physics is left to show."""
    e = np.asarray(e_ev, dtype=float)
    lo, hi = [], []
    for c in curves:
        c = np.nan_to_num(np.asarray(c, dtype=float), nan=0.0)
        if c.size and c.max() > 0:
            on = np.nonzero(c >= frac * c.max())[0]
            lo.append(e[on[0]])
            hi.append(e[on[-1]])
    if not hi:
        return float(e[0]), float(e[-1])
    return float(min(lo)), float(max(hi))


def optical_caption(meta: dict) -> str:
    """How the optical limit eps(q -> 0, w) was obtained, for a figure title:
    route, k mesh and the smearing / broadening [eV] (``DielectricFunction.meta``)."""
    if meta.get("optical_route") == "states":
        km = "x".join(str(k) for k in meta.get("optical_states_kmesh", [])) or "?"
        return (f"optical limit from DFT states ({km} k, Gaussian smearing "
                f"{meta.get('optical_states_sigma_ev', float('nan')):g} eV)")
    km = "x".join(str(k) for k in meta.get("kmesh", [])) or "?"
    b = float(meta.get("broadening_ev", 0.0) or 0.0)
    return (f"optical limit: q -> 0 {meta.get('optical_method', '')} fit of the table ({km} k, "
            + (f"Gaussian broadening {b:g} eV)" if b > 0 else "no smearing)"))


def plot_dielectric(d: DielectricFunction, path, title: str = "", gap_ev: float | None = None,
                    e_complete_ev: float | None = None) -> Path:
    """Three panels: optical Re/Im eps versus w; the optical loss function
    Im(-1/eps) versus w on its own axis (its plasmon peak would squash eps);
    the loss function map in (q, w).

    The w axis ends 20% above where Im eps or Im(-1/eps) last reach 1% of
    their maximum (:func:`active_range_ev`).  ``gap_ev`` [eV] (the table's gap)
    and ``e_complete_ev`` [eV] (the basis is complete below it) are marked when
    given.  eps is dimensionless, w in eV, q in alpha m_e."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    e = np.asarray(d.e_ev)
    elf0 = d.elf0
    _, e_on = active_range_ev(e, d.eps0_im, elf0)
    e_hi = min(1.2 * e_on, float(e[-1]))
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.4))

    def marks(ax):
        if gap_ev:
            ax.axvline(gap_ev, color="0.5", ls=":", lw=0.8, label=f"gap {gap_ev:.2f} eV")
        if e_complete_ev is not None and float(e_complete_ev) < e_hi:
            ax.axvline(float(e_complete_ev), color="C3", ls="--", lw=0.8,
                       label=f"basis complete to {float(e_complete_ev):.1f} eV")

    ax = axs[0]
    ax.plot(e, d.eps0_re, label=r"Re $\epsilon$")
    ax.plot(e, d.eps0_im, label=r"Im $\epsilon$")
    ax.axhline(0, color="k", lw=0.5)
    marks(ax)
    ax.set_xlim(0, e_hi)
    ax.set_xlabel(r"$\omega$ [eV]")
    ax.set_ylabel(r"$\epsilon(q\to 0, \omega)$ [dimensionless]")
    ax.set_title(r"dielectric function, $q \to 0$", fontsize=10)
    ax.legend(fontsize=8)
    ax = axs[1]
    peak = d.plasmon_peak_ev()
    ax.plot(e, elf0, color="C2", label=r"Im$(-1/\epsilon)$")
    ax.axvline(peak, color="C2", ls=":", lw=0.8, label=f"plasmon peak {peak:.1f} eV")
    marks(ax)
    ax.set_xlim(0, e_hi)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(r"$\omega$ [eV]")
    ax.set_ylabel(r"Im$(-1/\epsilon(q\to 0, \omega))$ [dimensionless]")
    ax.set_title(r"energy-loss function, $q \to 0$", fontsize=10)
    ax.legend(fontsize=8)
    ax = axs[2]
    qmax = min(d.q_ame[-1], 5.0)
    sel = d.q_ame <= qmax
    elf = np.clip(d.elf[sel], 1e-4, None)
    im = ax.pcolormesh(e, d.q_ame[sel], elf, shading="auto", norm=LogNorm(1e-3, elf.max()))
    fig.colorbar(im, ax=ax, label=r"Im$(-1/\epsilon(q, \omega))$ [dimensionless]")
    ax.set_xlim(0, e_hi)
    ax.set_xlabel(r"$\omega$ [eV]")
    ax.set_ylabel(r"$q$ [$\alpha m_e$]")
    ax.set_title("energy-loss function map", fontsize=10)
    fig.suptitle(title or (f"{d.material or 'target'}: RPA dielectric function (no local fields); "
                           f"{optical_caption(d.meta)}; static eps = "
                           f"{d.static_dielectric_constant():.3g}"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
