"""``dmca-hpc reach``: cross-section reach or Poisson limits versus DM mass,
with Monte Carlo uncertainty bands (:mod:`dmca_hpc.detection.reach`).
Masses in MeV, exposure in kg year, cross sections in cm^2."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def add_arguments(parser):
    """Arguments of ``dmca-hpc reach``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", nargs="+",
                     help="form-factor table(s); two or more of one material add the DFT "
                          "systematic to the bands")
    src.add_argument("--material", help="use the shipped table of this material")
    parser.add_argument("--mass-min-mev", type=float, default=0.5, help="lowest mass [MeV]")
    parser.add_argument("--mass-max-mev", type=float, default=1000.0, help="highest mass [MeV]")
    parser.add_argument("--n-masses", type=int, default=50, help="log-spaced masses")
    parser.add_argument("--exposure", type=float, required=True, help="exposure [kg-year]")
    parser.add_argument("--q-threshold", type=int, default=1, help="lowest Q bin counted")
    parser.add_argument("--q-max", type=int, default=None, help="highest Q bin counted")
    parser.add_argument("--n-events", type=float, default=None,
                        help="background-free events (default 3)")
    parser.add_argument("--observed", type=int, nargs="+", default=None,
                        help="observed counts in Q = 1, 2, ... (Poisson limit instead of reach); "
                             "they may stop before the last Q bin: bins without a count are not "
                             "used (unconstrained), the limit comes from the bins given")
    parser.add_argument("--cl", type=float, default=0.95, help="confidence level of the limit")
    parser.add_argument("--mode", choices=("combined", "per-bin"), default="combined",
                        help="Poisson limit from summed counts or the best single Q bin")
    parser.add_argument("--fdm", choices=("heavy", "light"), default="heavy")
    parser.add_argument("--halo", default="shm-2021")
    parser.add_argument("--gap", type=float, default=None, help="gap [eV]")
    parser.add_argument("--pair-energy", type=float, default=None, help="pair energy [eV]")
    parser.add_argument("--uncertainty", type=int, default=20,
                        help="number of halo Monte Carlo samples for the 68/95%% bands (0: none; "
                             "20 add about 10 s for 50 masses on a shipped table)")
    parser.add_argument("--seed", type=int, default=12345, help="Monte Carlo seed")
    parser.add_argument("--out", default=None, help="write reach.h5 and reach.png to this directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_cli(args) -> int:
    """``dmca-hpc reach``: reach curve for many masses (optionally bands)."""
    import numpy as np
    from dmca_hpc import units as U
    from dmca_hpc.detection.reach import PERCENTILES, reach_curve, uncertainty_bands, write_reach_h5
    from dmca_hpc.cli.rates import number_problem
    from dmca_hpc.plots.detection import plot_reach
    from dmca_hpc.tables import TableFormatError, load, table_for_material
    bad = number_problem([
        ("--mass-min-mev", args.mass_min_mev, lambda v: v > 0, "a DM mass > 0 [MeV]"),
        ("--mass-max-mev", args.mass_max_mev, lambda v: v >= args.mass_min_mev,
         f"a DM mass >= --mass-min-mev {args.mass_min_mev:g} [MeV]"),
        ("--n-masses", args.n_masses, lambda v: v >= 1, "a number of masses >= 1"),
        ("--exposure", args.exposure, lambda v: v > 0, "an exposure > 0 [kg year]"),
        ("--q-threshold", args.q_threshold, lambda v: v >= 1, "a lowest Q bin >= 1"),
        ("--q-max", args.q_max, lambda v: v >= args.q_threshold,
         f"a highest Q bin >= --q-threshold {args.q_threshold}"),
        ("--n-events", args.n_events, lambda v: v > 0, "a number of signal events > 0"),
        ("--cl", args.cl, lambda v: 0 < v < 1, "a confidence level between 0 and 1"),
        ("--gap", args.gap, lambda v: v >= 0, "a band gap >= 0 [eV]"),
        ("--pair-energy", args.pair_energy, lambda v: v > 0, "an energy per electron-hole pair > 0 [eV]"),
        ("--uncertainty", args.uncertainty, lambda v: v == 0 or v >= 2,
         "0 (no bands) or a number of Monte Carlo samples >= 2"),
        *(("--observed", c, lambda v: v >= 0, "counts >= 0 per Q bin") for c in args.observed or ())])
    if bad:
        print(f"dmca-hpc reach: error: {bad}", file=sys.stderr)
        return 2
    try:
        paths = args.table if args.table else [table_for_material(args.material)]
        tabs = [load(p) for p in paths]
        mats = {}
        for p, t in zip(paths, tabs):
            if t.material:
                mats.setdefault(t.material, p)
        if len(mats) > 1:
            raise ValueError("--table: " + ", ".join(f"{p} is {m}" for m, p in mats.items())
                             + "; expected tables of one material (a second table of the same "
                               "material adds the DFT systematic to the --uncertainty bands)")
        masses = np.logspace(np.log10(args.mass_min_mev), np.log10(args.mass_max_mev),
                             args.n_masses) * U.MEV_EV
        common = dict(exposure_kg_year=args.exposure, q_threshold=args.q_threshold,
                      q_max=args.q_max, n_events=args.n_events, observed_counts=args.observed,
                      cl=args.cl, mode=args.mode, gap_ev=args.gap,
                      pair_energy_ev=args.pair_energy)
        t0 = time.perf_counter()
        rc = reach_curve(tabs[0], masses, fdm=args.fdm, halo=args.halo, **common)
        wall = time.perf_counter() - t0
        if len(tabs) > 1 and not args.uncertainty:  # say so rather than drop them silently
            rc.notes.append(f"only the first table ({paths[0]}) sets the reach; the other "
                            f"{len(tabs) - 1} add the DFT systematic to the bands only with "
                            "--uncertainty N")
        bands = None
        if args.uncertainty:
            bands = uncertainty_bands(tabs, masses, n_samples=args.uncertainty, seed=args.seed,
                                      halo=args.halo, fdm=args.fdm, **common)
    except (OSError, TableFormatError, ValueError) as exc:  # OSError: missing/unreadable file
        print(f"dmca-hpc reach: error: {exc}", file=sys.stderr)
        return 2
    files = {}
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        files["reach"] = str(write_reach_h5(d / "reach.h5", {args.fdm: rc}, bands))
        files["plot"] = str(plot_reach(d / "reach.png", {args.fdm: rc}, bands,
                                       f"{tabs[0].material} {args.exposure:g} kg-yr"))
    if args.json:
        out = {"mass_mev": list(rc.masses_ev / U.MEV_EV),
               "sigma_cm2": [float(s) if np.isfinite(s) else None for s in rc.sigma_cm2],
               "inputs": rc.inputs, "notes": rc.notes, "wall_seconds": wall, "files": files,
               "units": {"mass_mev": "MeV", "sigma_cm2": "cm^2 (null: no reach)",
                         "exposure_kg_year": "kg year"}}
        if bands is not None:
            out["bands_sigma_cm2"] = {f"p{p:g}": [float(x) if np.isfinite(x) else None
                                                  for x in bands.sigma_cm2[i]]
                                      for i, p in enumerate(PERCENTILES)}
        print(json.dumps(out, indent=1, default=str))
        return 0
    print(f"reach: {tabs[0].material} exposure {args.exposure:g} kg-year, Q >= {args.q_threshold}, "
          f"F_DM {args.fdm}, halo {args.halo} ({rc.inputs['method']}); {wall * 1e3:.0f} ms")
    hdr = "  m_chi [MeV]    sigma_e [cm^2]"
    if bands is not None:
        hdr += "    68% band              95% band"
    print(hdr)
    for i, m in enumerate(rc.masses_ev):
        line = f"  {m / U.MEV_EV:11.4g}    {rc.sigma_cm2[i]:12.4g}"
        if bands is not None:
            s = bands.sigma_cm2[:, i]
            line += f"    [{s[1]:.3g}, {s[3]:.3g}]   [{s[0]:.3g}, {s[4]:.3g}]"
        print(line)
    for n in rc.notes:
        print(f"  note: {n}")
    for k, v in files.items():
        print(f"  wrote {k}: {v}")
    return 0
