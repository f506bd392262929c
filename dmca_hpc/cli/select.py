"""``dmca-hpc select``: rank the detector targets for one DM mass by the rate
and reach their shipped form-factor tables give
(:func:`dmca_hpc.detection.select.rank_targets`), with the kinematic
threshold of every target.  Mass in MeV, exposure in kg year, cross sections
in cm^2, rates in events / kg / year."""
from __future__ import annotations

import json
import sys


def add_arguments(parser):
    """Arguments of ``dmca-hpc select``."""
    parser.add_argument("--mass-mev", type=float, required=True, help="DM mass [MeV] (> 0)")
    parser.add_argument("--fdm", choices=("heavy", "light"), default="heavy",
                        help="DM form factor: heavy (F=1) or light ((alpha m_e/q)^2) mediator")
    parser.add_argument("--exposure", type=float, default=1.0,
                        help="exposure for the events and the reach [kg year] (default 1)")
    parser.add_argument("--sigma-e", type=float, default=1e-39,
                        help="DM-electron cross section of the rate and events [cm^2] (default 1e-39)")
    parser.add_argument("--q-threshold", type=int, default=1,
                        help="lowest charge bin counted [electrons] (default 1)")
    parser.add_argument("--cl", type=float, default=0.9,
                        help="confidence level of the background-free reach, zero events "
                             "observed (default 0.9: 2.303 events)")
    parser.add_argument("--halo", default="shm-2021", help="halo preset (default shm-2021)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (targets in rank order; gap_ev: the scissor "
                             "gap, as in the text output)")


def _table_line(t: dict) -> str:
    """``Si.hdf5: all-electron (def2-svp), complete to E = 37.3 eV, q = 20 alpha m_e``."""
    from pathlib import Path
    s = f"{Path(t['file']).name}: {t['kind']}" + (f" ({t['basis']})" if t.get("basis") else "")
    lim = []
    if t.get("e_complete_ev") is not None:
        lim.append(f"E = {t['e_complete_ev']:.1f} eV")
    if t.get("q_complete_ame") is not None:
        lim.append(f"q = {t['q_complete_ame']:g} alpha m_e")
    return s + (", complete to " + ", ".join(lim) if lim else
                ", no completeness limits stated (e_complete_ev / q_complete_ame)")


def _numbers(t: dict, inp: dict) -> str:
    if t.get("rate_per_kg_year") is None:
        return "no rate"
    reach = (f"{t['reach_sigma_cm2']:.3g} cm^2" if t["reach_sigma_cm2"] is not None else "none")
    return (f"rate {t['rate_per_kg_year']:.4g} events/kg/year, {t['events']:.4g} events in "
            f"{inp['exposure_kg_year']:g} kg-year, reach {reach}")


def run_cli(args) -> int:
    """``dmca-hpc select``: ranked targets, one block per target (or JSON)."""
    from dmca_hpc import units as U
    from dmca_hpc.cli.main import _material_aliases, _material_label
    from dmca_hpc.cli.rates import number_problem
    from dmca_hpc.detection.select import rank_targets
    bad = number_problem([
        ("--mass-mev", args.mass_mev, lambda v: v > 0, "a DM mass > 0 [MeV]"),
        ("--exposure", args.exposure, lambda v: v > 0, "an exposure > 0 [kg year]"),
        ("--sigma-e", args.sigma_e, lambda v: v > 0, "a DM-electron cross section > 0 [cm^2]"),
        ("--q-threshold", args.q_threshold, lambda v: v >= 1, "a lowest Q bin >= 1"),
        ("--cl", args.cl, lambda v: 0 < v < 1, "a confidence level between 0 and 1")])
    if bad:
        print(f"dmca-hpc select: error: {bad}", file=sys.stderr)
        return 2
    try:
        res = rank_targets(args.mass_mev * U.MEV_EV, fdm=args.fdm, halo=args.halo,
                           exposure_kg_year=args.exposure, sigma_e_cm2=args.sigma_e,
                           q_threshold=args.q_threshold, cl=args.cl)
    except (KeyError, ValueError) as exc:  # unknown halo, bad table
        print(f"dmca-hpc select: error: {exc}", file=sys.stderr)
        return 2
    inp = res["inputs"]
    if args.json:
        res["units"] = {"mass_mev": "MeV", "gap_ev": "eV (scissor gap)", "max_deposit_ev": "eV",
                        "ratio": "max deposit / gap", "rate_per_kg_year":
                        f"events / kg / year in Q >= {inp['q_threshold']} at sigma_e_cm2",
                        "total_per_kg_year": "events / kg / year, all Q, at sigma_e_cm2",
                        "events": "events in exposure_kg_year at sigma_e_cm2",
                        "reach_sigma_cm2": f"cm^2: {inp['cl']:g} CL background-free limit for "
                                           "exposure_kg_year (null: zero rate or no table)",
                        "share_beyond_e_complete": "fraction of total_per_kg_year from E > "
                                                   "e_complete_ev (null: not stated)",
                        "e_complete_ev": "eV", "q_complete_ame": "alpha m_e",
                        "exposure_kg_year": "kg year", "sigma_e_cm2": "cm^2",
                        "halo velocities": "km/s", "rho": "GeV/cm^3"}
        print(json.dumps(res, indent=1, default=str))
        return 0
    print(f"m_chi = {args.mass_mev:g} MeV, F_DM {args.fdm}, halo {args.halo} (v_max = v_esc + "
          f"v_E = {inp['v_max_km_s']:g} km/s); ranked by the rate of each target's table")
    print(f"  rate: events/kg/year in Q >= {inp['q_threshold']} at sigma_e = {args.sigma_e:g} cm^2; "
          f"events: in {args.exposure:g} kg-year at that sigma_e; reach: sigma_e of the "
          f"{100 * args.cl:g}% CL background-free limit (0 observed, {inp['reach_events']:.4g} "
          f"expected events) in {args.exposure:g} kg-year")
    print("  kinematics: max deposit m_chi v_max^2 / 2 against the scissor gap (the gap the "
          "form-factor tables use; 'dmca-hpc materials' lists the experimental gap too)")
    aliases = _material_aliases()
    rows = res["targets"]
    w = max(len(_material_label(r["name"], aliases)) for r in rows)
    for r in rows:
        name = _material_label(r["name"], aliases)
        rel = ">" if r["viable"] else "<="
        kin = (f"max deposit {r['max_deposit_ev']:.3g} eV {rel} scissor gap {r['gap_ev']:g} eV")
        if r["status"] == "rate":
            head = _numbers(r["tables"][0], inp)
        elif r["status"] == "no table":
            head = "no table: rate not computed (kinematically viable)"
        elif r["status"] == "zero rate":
            head = f"rate 0 events/kg/year in Q >= {inp['q_threshold']} (kinematically viable)"
        else:
            head = "not viable: rate 0 events/kg/year" if r["tables"] else "not viable (no table)"
        print(f"{r['rank']:3d}  {name:<{w}}  {head}")
        print(f"{'':5}{'':<{w}}  {'yes' if r['viable'] else 'no'}: {kin}")
        for i, t in enumerate(r["tables"]):
            if i == 0:
                print(f"{'':5}{'':<{w}}  table {_table_line(t)}")
            else:
                print(f"{'':5}{'':<{w}}  also  {_table_line(t)}: {_numbers(t, inp)}")
            for n in t["notes"]:
                if "below the kinematic threshold" in n:  # the yes/no line says it
                    continue
                print(f"{'':5}{'':<{w}}  warning ({t['file'].rsplit('/', 1)[-1]}): {n}")
    for n in res["notes"]:
        print(f"note: {n}")
    return 0
