"""``dmca-hpc nuclear``: WIMP spin-independent nuclear recoil and
sterile-neutrino coherent scattering rates (:mod:`dmca_hpc.detection.nuclear`).
Masses in GeV, recoil energies in keV, rates in events / tonne / year / keV."""
from __future__ import annotations

import json
import sys


def add_arguments(parser):
    """Arguments of ``dmca-hpc nuclear``."""
    from dmca_hpc.detection.nuclear import known_targets
    parser.add_argument("--target", required=True,
                        help=f"one of {', '.join(known_targets())} (any case: xe = Xe)")
    parser.add_argument("--mass-gev", type=float, required=True, help="DM mass [GeV]")
    parser.add_argument("--sigma-n", type=float, default=1e-45,
                        help="WIMP-nucleon SI cross section [cm^2]")
    parser.add_argument("--recoil-kev", type=float, nargs="+", required=True,
                        help="recoil energy (or energies) [keV]")
    parser.add_argument("--halo", default="shm-2021", help="halo preset")
    parser.add_argument("--model", choices=("wimp", "sterile-neutrino"), default="wimp")
    parser.add_argument("--coupling", type=float, default=1.0,
                        help="sterile-neutrino coupling factor (relative to an active Dirac neutrino)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_cli(args) -> int:
    """``dmca-hpc nuclear``: dR/dE_R at the given recoil energies (table or JSON)."""
    import numpy as np
    from dmca_hpc.detection.nuclear import canonical_target, recoil_rate, target_composition
    try:
        from dmca_hpc.detection.halo import get_halo
        h = get_halo(args.halo)
        target = canonical_target(args.target)
        r = np.atleast_1d(recoil_rate(target, args.mass_gev, args.recoil_kev,
                                      sigma_n_cm2=args.sigma_n, halo=h, model=args.model,
                                      coupling=args.coupling))
        comp = target_composition(target)
    except ValueError as exc:
        print(f"dmca-hpc nuclear: error: {exc}", file=sys.stderr)
        return 2
    vals = [float(x) for x in r]
    out = {
        "target": target, "model": args.model, "mass_gev": args.mass_gev,
        "sigma_n_cm2": args.sigma_n if args.model == "wimp" else None,
        "coupling": args.coupling if args.model != "wimp" else None,
        "recoil_kev": args.recoil_kev if len(args.recoil_kev) > 1 else args.recoil_kev[0],
        "rate_per_tonne_year_kev": vals if len(vals) > 1 else vals[0],
        "composition_mass_fraction": dict(comp), "halo": h.params(),
        "units": {"rate_per_tonne_year_kev": "events / tonne / year / keV",
                  "mass_gev": "GeV", "recoil_kev": "keV", "sigma_n_cm2": "cm^2"},
        "convention": "Helm (Lewin & Smith), A = standard atomic weight, m_N = A u, "
                      "nucleon mass = u, correctly normalized truncated Maxwellian",
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    inter = (f"sigma_n = {args.sigma_n:g} cm^2" if args.model == "wimp"
             else f"coupling factor {args.coupling:g}")
    hp = h.params()
    halo_txt = ", ".join(f"{name} = {hp[k]:g} {unit}" for k, name, unit in (
        ("rho_gev_cm3", "rho", "GeV/cm^3"), ("v0_km_s", "v0", "km/s"),
        ("v_esc_km_s", "v_esc", "km/s"), ("v_earth_km_s", "v_E", "km/s")) if k in hp)
    print(f"{args.model} on {target}: m = {args.mass_gev:g} GeV, {inter}, halo {h.name}"
          + (f" ({halo_txt})" if halo_txt else ""))
    for e, v in zip(args.recoil_kev, vals):
        print(f"  E_R = {e:8.3g} keV   dR/dE_R = {v:.5g} events/tonne/year/keV")
    return 0
