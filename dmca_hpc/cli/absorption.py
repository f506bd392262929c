"""``dmca-hpc absorption``: dark-photon and ALP (axioelectric) absorption
rates and reach from a form-factor table or a dielectric.h5
(:mod:`dmca_hpc.detection.absorption`).  Masses in eV, exposure in kg year,
rates in events / kg / year."""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser):
    """Arguments of ``dmca-hpc absorption`` (cheap: no heavy imports)."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", help="form-factor table (QCDark / dmca_hpc HDF5, QEdark text)")
    src.add_argument("--dielectric", help="dielectric.h5 written by the dielectric stage")
    parser.add_argument("--mass-min-ev", type=float, default=1.0, help="lowest mass [eV] (default 1)")
    parser.add_argument("--mass-max-ev", type=float, default=50.0, help="highest mass [eV] (default 50)")
    parser.add_argument("--n-masses", type=int, default=200, help="log-spaced masses (default 200)")
    parser.add_argument("--exposure-kg-year", type=float, default=1.0, help="exposure [kg year] (default 1)")
    parser.add_argument("--n-events", type=float, default=3.0,
                        help="signal events defining the reach (default 3: background-free 95%% CL)")
    parser.add_argument("--rho-gev-cm3", type=float, default=0.3, help="local DM density [GeV/cm^3] (default 0.3)")
    parser.add_argument("--out", default="absorption_out", help="output directory (default ./absorption_out)")


def run_cli(args) -> int:
    """Compute rates and reach, write absorption.h5 and absorption.png, print a summary."""
    import numpy as np
    from dmca_hpc.detection.absorption import absorption_curves, curves_to_datasets, reach_at
    from dmca_hpc.plots.detection import plot_absorption
    from dmca_hpc.response import DielectricError
    from dmca_hpc.response.dielectric import dielectric_from_table, read_dielectric
    from dmca_hpc.tables import TableFormatError
    try:
        if args.dielectric:
            d = read_dielectric(args.dielectric)
        else:
            d = dielectric_from_table(args.table)
        res = absorption_curves(d, args.mass_min_ev, args.mass_max_ev, args.n_masses,
                                args.rho_gev_cm3, args.exposure_kg_year, args.n_events)
    except (OSError, DielectricError, TableFormatError, ValueError) as exc:  # OSError: unreadable file
        print(f"dmca-hpc absorption: error: {exc}", file=sys.stderr)
        return 2
    from dmca_hpc.hpc.checkpoint import atomic_h5, config_hash, provenance, write_dataset
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("table", "dielectric", "mass_min_ev", "mass_max_ev",
                                               "n_masses", "exposure_kg_year", "n_events", "rho_gev_cm3")}
    ih = config_hash(settings)
    with atomic_h5(out / "absorption.h5", input_hash=ih, stage="absorption",
                   prov=provenance(input_hash=ih)) as f:
        f.attrs["material"] = d.material
        f.attrs["rho_t_g_cm3"] = res["rho_t_g_cm3"]
        for name, (data, unit, desc) in curves_to_datasets(res).items():
            write_dataset(f, name, data, unit, desc)
    plot_absorption(res, out / "absorption.png", d.material)
    print(f"{d.material or 'target'}: rho_T = {res['rho_t_g_cm3']:.4g} g/cm^3, "
          f"{args.n_events:g} events in {args.exposure_kg_year:g} kg year")
    print(f"{'mass [eV]':>10} {'Im(-1/eps)':>11} {'kappa':>10} {'g_ae':>10}")
    for m in (2.0, 5.0, 10.0, 20.0, 40.0):
        r = reach_at(res, m)
        if r["kappa"] is None and r["g_ae"] is None:
            continue
        elf = float(np.interp(m, res["mass_ev"], res["elf"]))
        fmt = lambda v: f"{v:10.3g}" if v is not None else f"{'-':>10}"
        print(f"{m:10.3g} {elf:11.3g} {fmt(r['kappa'])} {fmt(r['g_ae'])}")
    print(f"wrote {out / 'absorption.h5'} and {out / 'absorption.png'}")
    return 0
