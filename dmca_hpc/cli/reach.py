"""``dmca-hpc reach``: cross-section reach or Poisson limits versus DM mass,
with Monte Carlo uncertainty bands (:mod:`dmca_hpc.detection.reach`).
Several tables: one curve per table with the same exposure / threshold /
halo, and one band per target (material), its tables pooled.
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
                     help="form-factor table(s): one reach curve per table, on one plot; "
                          "tables of one material also pool into that target's --uncertainty "
                          "band (the DFT systematic)")
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
                        help="number of halo Monte Carlo samples for the 68/95%% bands, one band "
                             "per target (0: none; 20 add about 10 s for 50 masses per target "
                             "on a shipped table); a table with its own per-bin 1-sigma "
                             "(f2_sigma, an exciton table's 'uncertainty') is drawn too, fully "
                             "correlated over bins")
    parser.add_argument("--seed", type=int, default=12345, help="Monte Carlo seed")
    parser.add_argument("--out", default=None, help="write reach.h5 and reach.png to this directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_cli(args) -> int:
    """``dmca-hpc reach``: reach curve for many masses (optionally bands)."""
    import numpy as np
    from dmca_hpc import units as U
    from dmca_hpc.detection.reach import PERCENTILES, reach_curve, uncertainty_bands, write_reach_h5
    from dmca_hpc.cli.rates import number_problem
    from dmca_hpc.detection.select import table_kind
    from dmca_hpc.plots.detection import plot_reach, plot_reach_targets
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
        paths, notes = _unique_paths(args.table if args.table else [table_for_material(args.material)])
        tabs = [load(p) for p in paths]
        labels = _labels(tabs, paths)
        masses = np.logspace(np.log10(args.mass_min_mev), np.log10(args.mass_max_mev),
                             args.n_masses) * U.MEV_EV
        common = dict(exposure_kg_year=args.exposure, q_threshold=args.q_threshold,
                      q_max=args.q_max, n_events=args.n_events, observed_counts=args.observed,
                      cl=args.cl, mode=args.mode, gap_ev=args.gap,
                      pair_energy_ev=args.pair_energy)
        t0 = time.perf_counter()
        curves = {lab: reach_curve(t, masses, fdm=args.fdm, halo=args.halo, **common)
                  for lab, t in zip(labels, tabs)}
        wall = time.perf_counter() - t0
        # one target = one material: its tables pool into one band (the DFT systematic),
        # drawn around its first table's curve; targets share the halo samples (same seed)
        groups = _targets(tabs, labels)
        bands = {}
        if args.uncertainty:
            for nominal, idx in groups.items():
                bands[nominal] = uncertainty_bands([tabs[i] for i in idx], masses,
                                                   n_samples=args.uncertainty, seed=args.seed,
                                                   halo=args.halo, fdm=args.fdm, **common)
    except (OSError, TableFormatError, ValueError) as exc:  # OSError: missing/unreadable file
        print(f"dmca-hpc reach: error: {exc}", file=sys.stderr)
        return 2
    rc = next(iter(curves.values()))
    rc.notes[:0] = notes
    band_of = {labels[i]: nominal for nominal, idx in groups.items() for i in idx}
    files = {}
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        if len(curves) == 1:
            files["reach"] = str(write_reach_h5(d / "reach.h5", {args.fdm: rc}, bands.get(labels[0])))
            files["plot"] = str(plot_reach(d / "reach.png", {args.fdm: rc}, bands.get(labels[0]),
                                           f"{tabs[0].material} {args.exposure:g} kg-yr"))
        else:
            for lab, p in zip(labels, _file_stems(paths)):
                files[f"reach_{p}"] = str(write_reach_h5(d / f"reach_{p}.h5", {args.fdm: curves[lab]},
                                                         bands.get(lab)))
            files["plot"] = str(plot_reach_targets(d / "reach.png", curves, bands,
                                                   f"{len(curves)} tables, {args.exposure:g} kg-yr"))
    fin = lambda a: [float(x) if np.isfinite(x) else None for x in a]
    band_json = lambda b: {f"p{p:g}": fin(b.sigma_cm2[i]) for i, p in enumerate(PERCENTILES)}
    if args.json:
        per = []
        for lab, t, p in zip(labels, tabs, paths):
            c = curves[lab]
            e = {"label": lab, "table": str(p), "material": t.material, "kind": table_kind(t),
                 "sigma_cm2": fin(c.sigma_cm2), "inputs": c.inputs, "notes": c.notes}
            b = bands.get(band_of[lab])
            if b is not None:
                e["bands_sigma_cm2"] = band_json(b)
                e["bands_nominal"] = band_of[lab]
                e["bands_tables"] = [str(paths[i]) for i in groups[band_of[lab]]]
                if _sigma_description(b):
                    e["bands_description"] = _sigma_description(b)
                    e["bands_table_sigma"] = b.inputs["table_sigma"]
            per.append(e)
        out = {"mass_mev": list(rc.masses_ev / U.MEV_EV), "sigma_cm2": fin(rc.sigma_cm2),
               "inputs": rc.inputs, "notes": rc.notes, "wall_seconds": wall, "files": files,
               "curves": per,
               "units": {"mass_mev": "MeV", "sigma_cm2": "cm^2 (null: no reach)",
                         "exposure_kg_year": "kg year",
                         "curves": "one per table (sigma_cm2 and bands in cm^2); the top-level "
                                   "sigma_cm2 / bands_sigma_cm2 are the first table's"}}
        if bands.get(labels[0]) is not None:
            out["bands_sigma_cm2"] = band_json(bands[labels[0]])
            if _sigma_description(bands[labels[0]]):
                out["bands_description"] = _sigma_description(bands[labels[0]])
        print(json.dumps(out, indent=1, default=str))
        return 0
    many = len(curves) > 1
    print(f"reach: {(f'{len(curves)} tables' if many else tabs[0].material)} exposure "
          f"{args.exposure:g} kg-year, Q >= {args.q_threshold}, "
          f"F_DM {args.fdm}, halo {args.halo} ({rc.inputs['method']}); {wall * 1e3:.0f} ms")
    for lab in labels:
        c = curves[lab]
        b = bands.get(lab)
        if many:
            pooled = groups.get(lab, [])
            print(lab + (f"  (bands: halo Monte Carlo and the {len(pooled)} {tabs[pooled[0]].material} "
                         "tables given, the DFT systematic)" if b is not None and len(pooled) > 1 else "")
                  + (f"  (bands: see {band_of[lab]})" if bands and b is None else ""))
        if b is not None and _sigma_description(b):
            print(f"  bands: {_sigma_description(b)}")
        hdr = "  m_chi [MeV]    sigma_e [cm^2]"
        if b is not None:
            hdr += "    68% band              95% band"
        print(hdr)
        for i, m in enumerate(c.masses_ev):
            line = f"  {m / U.MEV_EV:11.4g}    {c.sigma_cm2[i]:12.4g}"
            if b is not None:
                s = b.sigma_cm2[:, i]
                line += f"    [{s[1]:.3g}, {s[3]:.3g}]   [{s[0]:.3g}, {s[4]:.3g}]"
            print(line)
        for n in c.notes:
            print(f"  note: {n}")
    for k, v in files.items():
        print(f"  wrote {k}: {v}")
    return 0


def _sigma_description(b) -> str:
    """What a band drew beyond the halo (and pooled tables) when a table's
    own f2_sigma went in; "" otherwise (bands of tables without f2_sigma
    print as they always did)."""
    ts = b.inputs.get("table_sigma")
    if not ts:
        return ""
    n, k = b.inputs.get("n_tables", 1), ts["n_tables_with_sigma"]
    which = "the table's" if n == 1 else f"{k} of the {n} pooled tables'"
    return (f"halo Monte Carlo ({b.inputs['n_samples']} samples, seed {b.inputs['seed']}) "
            f"including {which} own per-bin 1-sigma (f2_sigma), drawn as f2 (1 + z f2_sigma/f2) "
            "with one standard normal z per sample shared by all bins (fully correlated), "
            "clipped at 0")


def _unique_paths(paths) -> tuple[list, list]:
    """The table paths with repeats dropped (a repeated file would draw the
    same curve twice), and a note per repeat."""
    seen, out, notes = set(), [], []
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            notes.append(f"table {p} given more than once: used once")
            continue
        seen.add(key)
        out.append(p)
    return out, notes


def _labels(tabs, paths) -> list:
    """``Si all-electron (Si.hdf5)`` per table, made unique (``#2``) when two
    files of the same name and kind are given."""
    from dmca_hpc.detection.select import table_label
    out = []
    for t, p in zip(tabs, paths):
        lab = base = table_label(t, p)
        k = 1
        while lab in out:
            k += 1
            lab = f"{base} #{k}"
        out.append(lab)
    return out


def _file_stems(paths) -> list:
    """File stems for the per-table reach_<stem>.h5, unique."""
    out = []
    for p in paths:
        s = base = Path(p).stem
        k = 1
        while s in out:
            k += 1
            s = f"{base}_{k}"
        out.append(s)
    return out


def _targets(tabs, labels) -> dict:
    """{label of a target's first table: [indices of that target's tables]};
    a target is a material (tables without one are targets of their own)."""
    first: dict = {}
    out: dict = {}
    for i, (t, lab) in enumerate(zip(tabs, labels)):
        key = t.material or lab
        if key not in first:
            first[key] = lab
            out[lab] = []
        out[first[key]].append(i)
    return out
