"""Plots of the detection package: DM-electron spectra, reach curves,
absorption reach and nuclear-recoil spectra (matplotlib, Agg backend,
imported inside the functions so that importing this module stays cheap).

Units as in the physics modules: masses in MeV on the reach axes, eV for
absorption, rates in events / kg / year (electron) or / tonne / year / keV
(nuclear)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dmca_hpc import units as U

__all__ = ["plot_spectra", "plot_reach", "plot_reach_targets", "plot_absorption", "plot_nuclear"]

#: F_DM of each mediator, as a legend writes it
FDM_LABELS = {"heavy": r"heavy mediator, $F_{DM} = 1$",
              "light": r"light mediator, $F_{DM} = (\alpha m_e / q)^2$"}


def _halo_name(halo) -> str:
    """A halo's name for a caption: preset name, or the ``name`` of a params dict."""
    if isinstance(halo, dict):
        return str(halo.get("name") or halo.get("model") or "custom")
    return str(getattr(halo, "name", halo))


def plot_spectra(results, fdms, out_dir, material="") -> dict:
    """dRdE.png and dRdQ.png in ``out_dir`` -> {label: path}.

    ``results``: finished units of the rates stage (``.unit`` = (fdm, mass
    [MeV]), ``.value`` = :class:`dmca_hpc.detection.rates.ElectronRates` of
    one mass); one panel per F_DM in ``fdms``.  dR/dQ is drawn as bars of full
    width 1 centred on Q = 1, 2, ...; titles carry the material, sigma_e,
    halo, gap and pair energy of the Q model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = {}
    inp = results[0].value.inputs
    cap = (f"{material} {{fdm}}\nsigma_e = {inp['sigma_e_cm2']:g} cm^2, halo "
           f"{_halo_name(inp['halo'])}")
    qcap = (f", gap {inp['gap_ev']:g} eV, {inp['pair_energy_ev']:g} eV/pair"
            if inp.get("pair_energy_ev") else f", gap {inp['gap_ev']:g} eV, no Q binning")
    for kind in ("dRdE", "dRdQ"):
        fig, axes = plt.subplots(1, len(fdms), figsize=(5 * len(fdms), 4.2), squeeze=False)
        for ax, fdm in zip(axes[0], fdms):
            q_top = 1
            for res in results:
                if res.unit[0] != fdm:
                    continue
                r = res.value
                lab = f"m_chi = {res.unit[1]:g} MeV"
                if kind == "dRdE":
                    y = np.where(r.dr_de[0] > 0, r.dr_de[0], np.nan)
                    ax.plot(r.e_ev, y, label=lab)
                    ax.set_xlabel("E_e [eV]")
                    ax.set_ylabel("dR/dE_e [events/kg/year/eV]")
                else:
                    y = np.where(r.dr_dq[0] > 0, r.dr_dq[0], np.nan)
                    q = r.q_values
                    # bar k spans [k - 1/2, k + 1/2]: the Q = 1 bar has the full width too
                    ax.stairs(y, np.append(q - 0.5, q[-1] + 0.5), label=lab, lw=1.5)
                    pos = np.nonzero(r.dr_dq[0] > 0)[0]
                    q_top = max(q_top, int(q[pos[-1]]) if pos.size else 1)
                    ax.set_xlim(0.4, q_top + 0.6)
                    ax.set_xticks(np.arange(1, q_top + 1))
                    ax.set_xlabel("Q [electrons]")
                    ax.set_ylabel("rate in Q bin [events/kg/year]")
            ax.set_yscale("log")
            ax.set_title(cap.format(fdm=FDM_LABELS.get(fdm, fdm))
                         + (qcap if kind == "dRdQ" else ""), fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = Path(out_dir) / f"{kind}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out[kind] = str(p)
    return out


def _reach_caption(rc) -> str:
    """Method, exposure, Q range and halo of a :class:`Reach` for a title."""
    i = rc.inputs
    if str(i.get("method", "")).startswith("poisson"):
        how = (f"{i.get('cl', 0.95):g} CL Poisson limit from {i.get('observed_total', '')} observed "
               f"events ({i['method'].split('-', 1)[1]})")
    else:
        how = f"{i.get('n_events', 3):g}-event reach (background-free)"
    q_max = i.get("q_max")
    return (f"{i.get('material') or 'target'}: {how}, exposure {i['exposure_kg_year']:g} kg-year, "
            f"Q in [{i['q_threshold']}, {q_max}], halo {_halo_name(i.get('halo'))}")


def _finish_reach(fig, ax, lines, path) -> Path:
    """Caption lines as the title, legend, save to ``path`` (PNG, 100 dpi), close."""
    import matplotlib.pyplot as plt
    ax.set_title("\n".join(lines), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_reach(path, curves: dict, bands=None, title: str = "") -> Path:
    """Reach curves (log-log) with optional 68%/95% bands (matplotlib Agg).

    ``curves``: {mediator: Reach}; ``bands``: None, one :class:`Bands` or
    {mediator: Bands}; each band is drawn in its mediator's colour and the
    legend names the mediator (a single Bands is matched to its curve by the
    F_DM of its nominal reach).  The title states method, exposure, Q range,
    halo and the Monte Carlo behind the bands; ``title`` is prepended."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if bands is not None and not isinstance(bands, dict):
        bands = {bands.nominal.inputs.get("fdm", next(iter(curves), "")): bands}
    bands = bands or {}
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for k, (label, rc) in enumerate(curves.items()):
        colour = f"C{k}"
        b = bands.get(label)
        who = f"{label} mediator" if label in FDM_LABELS else label
        if b is not None:
            m = b.masses_ev / U.MEV_EV
            s = np.where(np.isfinite(b.sigma_cm2), b.sigma_cm2, np.nan)
            ax.fill_between(m, s[0], s[4], color=colour, alpha=0.15, lw=0,
                            label=f"{who}: 95% band")
            ax.fill_between(m, s[1], s[3], color=colour, alpha=0.35, lw=0,
                            label=f"{who}: 68% band")
        s = np.where(np.isfinite(rc.sigma_cm2), rc.sigma_cm2, np.nan)
        ax.plot(rc.masses_ev / U.MEV_EV, s, color=colour, label=FDM_LABELS.get(label, label))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("m_chi [MeV]")
    ax.set_ylabel("sigma_e [cm^2]")
    lines = [title] if title else []
    if curves:
        lines.append(_reach_caption(next(iter(curves.values()))))
    if bands:
        bi = next(iter(bands.values())).inputs
        lines.append(f"bands: {bi['n_samples']} halo Monte Carlo samples (seed {bi['seed']})"
                     + (f" over {bi['n_tables']} tables" if bi.get("n_tables", 1) > 1 else "")
                     + (" + the table's f2_sigma (fully correlated over bins)"
                        if bi.get("table_sigma") else ""))
    else:
        lines.append("no uncertainty bands (uncertainty samples = 0)")
    return _finish_reach(fig, ax, lines, path)


def plot_absorption(res: dict, path, material: str = "", gap_ev: float | None = None,
                    smearing: str = "", e_complete_ev: float | None = None) -> Path:
    """kappa and g_ae reach versus mass (log-log) from
    :func:`dmca_hpc.detection.absorption.absorption_curves`.

    Masses below ``gap_ev`` [eV] are not drawn (a smeared optical limit
    leaks below the gap: no absorption there), nor masses above where the
    loss function and Im eps have fallen below 1% of their maximum
    (:func:`dmca_hpc.plots.response.active_range_ev`: a finite basis running
    out of final states makes the reach spike at the table's end).
    ``smearing``: how the optical limit was smeared, for the title
    (:func:`dmca_hpc.plots.response.optical_caption`); ``e_complete_ev``
    [eV], the basis completeness limit, is marked when in range."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dmca_hpc.plots.response import active_range_ev
    m = np.asarray(res["mass_ev"], dtype=float)
    _, m_hi = active_range_ev(m, res["elf"], np.asarray(res["sigma1_ev"]) / m)
    keep = (m <= m_hi) & (m >= (gap_ev or 0.0))
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.4))
    lab = (f"{res['n_events']:g} events, {res['exposure_kg_year']:g} kg year, "
           f"rho_chi = {res['rho_chi_gev_cm3']:g} GeV/cm^3")
    for ax, key, ylabel in ((axs[0], "kappa_reach", r"kinetic mixing $\kappa$ [dimensionless]"),
                            (axs[1], "g_ae_reach", r"$g_{ae}$ [dimensionless]")):
        y = np.where(np.isfinite(res[key]) & keep, res[key], np.nan)
        ax.loglog(m, y, label=lab)
        if gap_ev:
            ax.axvline(gap_ev, color="0.5", ls=":", lw=0.8, label=f"gap {gap_ev:.2f} eV")
        if e_complete_ev is not None and m[0] < float(e_complete_ev) < m_hi:
            ax.axvline(float(e_complete_ev), color="C3", ls="--", lw=0.8,
                       label=f"basis complete to {float(e_complete_ev):.1f} eV")
        ax.set_xlim(min(m[0], gap_ev or m[0]) * 0.9, m_hi * 1.1)
        ax.set_xlabel("mass [eV]")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axs[0].set_title(f"{material} dark-photon absorption reach", fontsize=10)
    axs[1].set_title(f"{material} ALP (axioelectric) reach", fontsize=10)
    fig.suptitle((smearing + "; " if smearing else "")
                 + (f"drawn from the gap ({gap_ev:.2f} eV) " if gap_ev else "drawn ")
                 + f"up to where Im eps, Im(-1/eps) >= 1% of their maximum ({m_hi:.1f} eV)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_nuclear(path, e_kev, curves, title: str = "", sigma_n_cm2: float | None = None,
                 halo=None, model: str = "wimp", coupling: float | None = None) -> Path:
    """dR/dE_R versus E_R [keV] (log y) for ``curves`` = [(label, rate
    [events/tonne/year/keV] on ``e_kev``)]; non-positive rates are not drawn.
    The title states the model, sigma_n [cm^2] (WIMP) or the coupling factor
    (sterile neutrino) and the halo; ``title`` is prepended."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, rate in curves:
        y = np.where(rate > 0, rate, np.nan)
        ax.plot(e_kev, y, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("E_R [keV]")
    ax.set_ylabel("dR/dE_R [events/tonne/year/keV]")
    what = ("WIMP spin-independent, Helm form factor" if model == "wimp"
            else "sterile-neutrino coherent scattering, Helm form factor")
    if model == "wimp" and sigma_n_cm2 is not None:
        what += f", sigma_n = {sigma_n_cm2:g} cm^2"
    elif model != "wimp" and coupling is not None:
        what += f", coupling factor {coupling:g}"
    if halo is not None:
        what += f", halo {_halo_name(halo)}"
    ax.set_title("\n".join([t for t in (title, what) if t]), fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_reach_targets(path, curves: dict, bands: dict | None = None, title: str = "") -> Path:
    """Reach curves of several targets (one per table) on one log-log plot.

    ``curves``: {label: Reach}, the label naming material, table kind and
    file (``Si all-electron (Si.hdf5)``); all computed with the same
    exposure, Q threshold, method, F_DM and halo (the title states them,
    from the first curve; the highest Q bin differs by material, so only
    the threshold is given).  ``bands``: None or {label: Bands}, each drawn
    in the colour of the curve of that label (a target's band is drawn
    around its first table's curve); the legend lists the curves and one
    entry per band kind.  Masses in MeV, cross sections in cm^2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bands = bands or {}
    fig, ax = plt.subplots(figsize=(7.2, 5.4))
    first_band = True
    for k, (label, rc) in enumerate(curves.items()):
        colour = f"C{k}"
        b = bands.get(label)
        if b is not None:
            m = b.masses_ev / U.MEV_EV
            s = np.where(np.isfinite(b.sigma_cm2), b.sigma_cm2, np.nan)
            ax.fill_between(m, s[0], s[4], color=colour, alpha=0.12, lw=0,
                            label="95% band (each target)" if first_band else "_nolegend_")
            ax.fill_between(m, s[1], s[3], color=colour, alpha=0.3, lw=0,
                            label="68% band (each target)" if first_band else "_nolegend_")
            first_band = False
        s = np.where(np.isfinite(rc.sigma_cm2), rc.sigma_cm2, np.nan)
        ax.plot(rc.masses_ev / U.MEV_EV, s, color=colour, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("m_chi [MeV]")
    ax.set_ylabel("sigma_e [cm^2]")
    lines = [title] if title else []
    if curves:
        i = next(iter(curves.values())).inputs
        if str(i.get("method", "")).startswith("poisson"):
            how = (f"{i.get('cl', 0.95):g} CL Poisson limit from {i.get('observed_total', '')} "
                   f"observed events ({i['method'].split('-', 1)[1]})")
        else:
            how = f"{i.get('n_events', 3):g}-event reach (background-free)"
        lines.append(f"{how}, exposure {i['exposure_kg_year']:g} kg-year, Q >= {i['q_threshold']}, "
                     f"halo {_halo_name(i.get('halo'))}")
        lines.append(FDM_LABELS.get(i.get("fdm"), str(i.get("fdm"))))
    if bands:
        bi = next(iter(bands.values())).inputs
        lines.append(f"bands: {bi['n_samples']} halo Monte Carlo samples (seed {bi['seed']}) per "
                     "target, a target's tables pooled (DFT systematic)"
                     + (" + the tables' f2_sigma (fully correlated over bins)"
                        if bi.get("table_sigma") else ""))
    else:
        lines.append("no uncertainty bands (uncertainty samples = 0)")
    return _finish_reach(fig, ax, lines, path)
