"""Plots of the detection package: DM-electron spectra, reach curves,
absorption reach and nuclear-recoil spectra (matplotlib, Agg backend,
imported inside the functions so that importing this module stays cheap).

Units as in the physics modules: masses in MeV on the reach axes, eV for
absorption, rates in events / kg / year (electron) or / tonne / year / keV
(nuclear)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dmca_hpc import units as U

if TYPE_CHECKING:
    from dmca_hpc.detection.reach import Bands

__all__ = ["plot_spectra", "plot_reach", "plot_absorption", "plot_nuclear"]


def plot_spectra(results, fdms, out_dir, material="") -> dict:
    """dRdE.png and dRdQ.png in ``out_dir`` -> {label: path}.

    ``results``: finished units of the rates stage (``.unit`` = (fdm, mass
    [MeV]), ``.value`` = :class:`dmca_hpc.detection.rates.ElectronRates` of
    one mass); one panel per F_DM in ``fdms``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = {}
    for kind in ("dRdE", "dRdQ"):
        fig, axes = plt.subplots(1, len(fdms), figsize=(5 * len(fdms), 4), squeeze=False)
        for ax, fdm in zip(axes[0], fdms):
            for res in results:
                if res.unit[0] != fdm:
                    continue
                r = res.value
                lab = f"{res.unit[1]:g} MeV"
                if kind == "dRdE":
                    y = np.where(r.dr_de[0] > 0, r.dr_de[0], np.nan)
                    ax.plot(r.e_ev, y, label=lab)
                    ax.set_xlabel("E_e [eV]")
                    ax.set_ylabel("dR/dE_e [events/kg/year/eV]")
                else:
                    y = np.where(r.dr_dq[0] > 0, r.dr_dq[0], np.nan)
                    ax.step(r.q_values, y, where="mid", label=lab)
                    ax.set_xlabel("Q [electrons]")
                    ax.set_ylabel("rate [events/kg/year]")
            ax.set_yscale("log")
            ax.set_title(f"{material} F_DM {fdm}, sigma_e = {results[0].value.inputs['sigma_e_cm2']:g} cm^2")
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = Path(out_dir) / f"{kind}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out[kind] = str(p)
    return out


def plot_reach(path, curves: dict, bands: "Bands | None" = None, title: str = "") -> Path:
    """Reach curves (log-log) with optional 68%/95% bands (matplotlib Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if bands is not None:
        m = bands.masses_ev / U.MEV_EV
        s = np.where(np.isfinite(bands.sigma_cm2), bands.sigma_cm2, np.nan)
        ax.fill_between(m, s[0], s[4], color="gold", alpha=0.5, label="95% band")
        ax.fill_between(m, s[1], s[3], color="limegreen", alpha=0.6, label="68% band")
    for label, rc in curves.items():
        s = np.where(np.isfinite(rc.sigma_cm2), rc.sigma_cm2, np.nan)
        ax.plot(rc.masses_ev / U.MEV_EV, s, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("m_chi [MeV]")
    ax.set_ylabel("sigma_e [cm^2]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_absorption(res: dict, path, material: str = "") -> Path:
    """kappa and g_ae reach versus mass (log-log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.2))
    m = res["mass_ev"]
    lab = f"{res['n_events']:g} events, {res['exposure_kg_year']:g} kg yr"
    for ax, key, ylabel in ((axs[0], "kappa_reach", r"kinetic mixing $\kappa$"),
                            (axs[1], "g_ae_reach", r"$g_{ae}$")):
        y = np.where(np.isfinite(res[key]), res[key], np.nan)
        ax.loglog(m, y, label=lab)
        ax.set_xlabel("mass [eV]")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axs[0].set_title(f"{material} dark-photon absorption reach")
    axs[1].set_title(f"{material} ALP (axioelectric) reach")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_nuclear(path, e_kev, curves, title: str = "") -> Path:
    """dR/dE_R versus E_R [keV] (log y) for ``curves`` = [(label, rate
    [events/tonne/year/keV] on ``e_kev``)]; non-positive rates are not drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, rate in curves:
        y = np.where(rate > 0, rate, np.nan)
        ax.plot(e_kev, y, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("E_R [keV]")
    ax.set_ylabel("dR/dE_R [events/tonne/year/keV]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
