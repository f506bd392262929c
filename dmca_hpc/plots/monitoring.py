"""Plots of the monitoring package: causal effects with their intervals, and the
allocation plan (matplotlib, Agg backend, imported inside the functions so
that importing this module stays cheap).

Units are those of the report: an effect is in the outcome's unit (USD, ms,
1/s or the physics figure's unit) per level change or per unit of a numeric
treatment; the plan's makespan in seconds, cost in USD."""
from __future__ import annotations

from pathlib import Path

__all__ = ["plot_effects", "plot_plan"]


def _save(fig, path) -> str:
    """Lay out, write ``path`` (PNG, directories created), close ``fig``; returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_effects(rep: dict, path) -> str:
    """Forest plot of a :func:`dmca_hpc.monitoring.causal.estimate` report:
    each term's adjusted estimate with its HC3 95 % interval (thick) and the
    bootstrap 95 % interval (thin), and the naive (unadjusted) estimate as an
    open marker; a dashed line at zero.  A non-identifiable report gets a
    figure that says so.  Writes ``path`` (PNG) and returns it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    effects = rep.get("effects") or []
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * max(len(effects), 1)))
    if not rep.get("identifiable", False) or not effects:
        ax.text(0.5, 0.5, "not identifiable:\n" + "\n".join(
            (rep.get("reason") or "no estimate")[i:i + 80] for i in range(0, min(len(rep.get("reason") or ""), 320), 80)),
            ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
    else:
        for i, e in enumerate(effects):
            y = len(effects) - 1 - i
            lo, hi = e["ci95"]
            ax.plot([lo, hi], [y, y], color="C0", lw=3, solid_capstyle="butt",
                    label="adjusted, HC3 95 % CI" if i == 0 else None)
            if e.get("bootstrap_ci95"):
                blo, bhi = e["bootstrap_ci95"]
                ax.plot([blo, bhi], [y - 0.15, y - 0.15], color="C1", lw=1,
                        label="bootstrap 95 % CI" if i == 0 else None)
            ax.plot(e["estimate"], y, "o", color="C0")
            if e.get("naive_estimate") is not None:
                ax.plot(e["naive_estimate"], y, "o", mfc="none", color="C3",
                        label="naive (unadjusted)" if i == 0 else None)
        ax.axvline(0.0, color="k", ls="--", lw=0.8)
        ax.set_yticks(range(len(effects)))
        ax.set_yticklabels([e["term"] for e in reversed(effects)], fontsize=8)
        ax.set_xlabel(f"effect on {rep['outcome']}")
        ax.legend(fontsize=7, loc="best")
    adj = ", ".join(rep.get("adjust") or []) or "nothing"
    ax.set_title(f"{rep['treatment']} -> {rep['outcome']} (n {rep['n']}, adjusted for {adj})", fontsize=9)
    return _save(fig, path)


def plot_plan(plan: dict, path) -> str:
    """Projected efficiency and makespan versus rank count of a
    :func:`dmca_hpc.monitoring.planning.project` plan, with the 80 % line and
    the largest N that keeps it.  Writes ``path`` (PNG) and returns it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = plan["projection"]
    n = [r["ranks"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(n, [r["efficiency"] for r in rows], "o-", ms=3, label="efficiency")
    ax.axhline(plan["efficiency_min"], color="k", ls="--", lw=0.8)
    if plan.get("max_ranks_at_efficiency"):
        ax.axvline(plan["max_ranks_at_efficiency"], color="C3", ls=":", lw=1,
                   label=f"largest N = {plan['max_ranks_at_efficiency']}")
    ax.set_xlabel("ranks N")
    ax.set_ylabel("parallel efficiency T(1) / (N T(N))")
    ax.set_ylim(0, 1.05)
    ax2 = ax.twinx()
    ax2.loglog(n, [r["makespan_s"] for r in rows], color="C2", lw=1, label="makespan [s]")
    ax2.set_ylabel("makespan [s]")
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)
