"""Figures of the electronic structure: bands, DOS, form-factor tables (Agg, PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np



def plot_bands(stage_dir: Path, name: str, nk_mesh: int, path_e, path_info: dict, grid, dos,
               vbm_ev: float, nocc: int, sc: dict):
    """``band_structure.png`` (along the ASE path) and ``dos.png`` in ``stage_dir``,
    energies relative to the DFT VBM ``vbm_ev`` [eV]; ``path_e`` [hartree],
    ``grid`` [eV], ``dos`` [states / eV / cell], ``sc`` the scissor dict."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from dmca_hpc.hpc.checkpoint import atomic_path
    from dmca_hpc.units import HARTREE_EV
    vbm = vbm_ev
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if path_info:
        e = path_e * HARTREE_EV - vbm
        x = path_info["x"]
        for n in range(e.shape[1]):
            ax.plot(x, e[:, n], color="C0" if n < nocc else "C3", lw=1)
            if n >= nocc and sc["convention"] != "none":
                ax.plot(x, e[:, n] + sc["delta_ev"], color="C3", lw=0.6, ls="--")
        for xv in path_info["xs"]:
            ax.axvline(xv, color="0.7", lw=0.5)
        ax.set_xticks(path_info["xs"])
        ax.set_xticklabels(path_info["labels"])
        ax.set_xlim(x[0], x[-1])
    ax.axhline(0, color="k", lw=0.5, ls=":")
    if path_info:
        # every band the bands file holds, valence bottom to conduction top (+ scissor)
        lo = float(e.min()) - 1.0
        hi = float(e.max() + max(sc["delta_ev"], 0.0)) + 1.0
        ax.set_ylim(max(lo, -40.0), min(hi, 60.0))
    else:
        ax.set_ylim(-13, 12)
    ax.set_ylabel("E - E_VBM (DFT) [eV]")
    ax.set_title(f"{name} bands (dashed: conduction after {sc['convention']} scissor, "
                 f"{sc['delta_ev']:+.2f} eV)", fontsize=9)
    with atomic_path(stage_dir / "band_structure.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(grid - vbm, dos, color="k", lw=1)
    ax.set_xlabel("E - E_VBM (DFT) [eV]")
    ax.set_ylabel("DOS [states / eV / cell]")
    ax.set_title(f"{name} DOS, mesh {nk_mesh} k", fontsize=9)
    with atomic_path(stage_dir / "dos.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_formfactor(table, path) -> Path:
    """Heat map of log10 |f|^2(q, E) and the q-integrated spectrum
    ``sum_a f2[a, b] dq`` [alpha m_e] versus E, to ``path`` (PNG, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    f2 = np.asarray(table.f2)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    pos = f2[f2 > 0]
    floor = pos.max() * 1e-8 if pos.size else 1.0
    img = np.log10(np.maximum(f2, floor)).T
    q_edges = np.arange(table.nq + 1) * table.dq_ame + table.q_min_ame
    e_edges = np.arange(table.ne + 1) * table.de_ev + table.e_min_ev
    m = ax1.pcolormesh(q_edges, e_edges, img, shading="flat", cmap="viridis")
    fig.colorbar(m, ax=ax1, label=r"$\log_{10}|f_{\rm crystal}|^2$")
    ax1.set_xlabel(r"$q$ [$\alpha m_e$]")
    ax1.set_ylabel(r"$E$ [eV]")
    ax1.set_title(f"{table.material}: crystal form factor")
    ax2.plot(table.e_ev, f2.sum(axis=0) * table.dq_ame)
    # E axis to where the data end; the completeness limit of the basis marked
    nz = np.nonzero(f2.sum(axis=0) > 0)[0]
    e_top = float(table.e_ev[nz[-1]] + table.de_ev) if nz.size else float(table.e_ev[-1])
    e_ok = (table.metadata or {}).get("e_complete_ev")
    for ax in (ax1, ax2):
        ax_e = ax.set_ylim if ax is ax1 else ax.set_xlim
        ax_e(table.e_min_ev, min(e_top * 1.05, table.e_ev[-1] + table.de_ev / 2))
    if e_ok is not None and float(e_ok) < e_top:
        ax1.axhline(float(e_ok), color="w", ls="--", lw=0.8)
        ax2.axvline(float(e_ok), color="C3", ls="--", lw=0.8,
                    label=f"complete to {float(e_ok):.1f} eV")
        ax2.legend(fontsize=8)
    ax2.set_xlabel(r"$E$ [eV]")
    ax2.set_ylabel(r"$\int dq\, |f|^2$ [$\alpha m_e$]")
    ax2.set_title("q-integrated spectrum")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
