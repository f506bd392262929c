"""Plots of the response package (matplotlib, Agg backend, imported inside
the functions so that importing this module stays cheap)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dmca_hpc.response.dielectric import DielectricFunction

__all__ = ["plot_dielectric"]


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

