"""``dmca-hpc rates``: DM-electron event rates and charge (Q) spectra for
one mass from a form-factor table (:mod:`dmca_hpc.detection.rates`).
Masses in MeV on the command line, cross sections in cm^2, rates in
events / kg / year."""
from __future__ import annotations

import json
import math
import sys


def add_arguments(parser):
    """Arguments of ``dmca-hpc rates``."""
    from dmca_hpc.detection.rates import FDM_CHOICES
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", help="form-factor table (our HDF5, QCDark HDF5 or QEdark text)")
    src.add_argument("--material", help="use the shipped table of this material")
    parser.add_argument("--mass-mev", type=float, required=True, help="DM mass [MeV]")
    parser.add_argument("--fdm", choices=FDM_CHOICES, default="heavy",
                        help="DM form factor: heavy (F=1) or light ((alpha m_e/q)^2) mediator")
    parser.add_argument("--halo", default="shm-2021",
                        help="halo model: shm-2021, qedark-2016, legacy, shm++")
    parser.add_argument("--sigma-e", type=float, default=1e-39,
                        help="DM-electron cross section [cm^2] (default 1e-39)")
    parser.add_argument("--gap", type=float, default=None, help="band gap for Q [eV] (default: table's)")
    parser.add_argument("--pair-energy", type=float, default=None,
                        help="energy per electron-hole pair [eV] (default: the materials library, e.g. Si 3.6, Ge 2.9, GaAs 4.7)")
    parser.add_argument("--screening", choices=("none", "rpa", "tf"), default="none",
                        help="divide the integrand by |eps(q, E)|^2: rpa = our RPA epsilon "
                             "(from --dielectric, else built from the table), tf = Thomas-Fermi-like "
                             "model of Si/Ge (Cappellini et al. 1993); default none")
    parser.add_argument("--dielectric", metavar="PATH", default=None,
                        help="dielectric.h5 of the dielectric stage (for --screening rpa)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def number_problem(checks) -> str | None:
    """The first bad number option as one line ``FLAG VALUE: expected ...``
    (the value as given, in the option's own unit), or None.

    ``checks``: ``(flag, value, ok, expected)`` tuples with ``ok(value)`` the
    test of a finite value; a value None (option not given) passes; NaN and
    infinities never do."""
    for flag, value, ok, expected in checks:
        if value is not None and not (math.isfinite(value) and ok(value)):
            return f"{flag} {value:g}: expected {expected}"
    return None


def run_cli(args) -> int:
    """``dmca-hpc rates``: print a table (or JSON) of rates for one mass."""
    from dmca_hpc import units as U
    from dmca_hpc.detection.rates import electron_rates, rates_json
    from dmca_hpc.response.screening import screening_eps2
    from dmca_hpc.tables import TableFormatError, load
    bad = number_problem([
        ("--mass-mev", args.mass_mev, lambda v: v > 0, "a DM mass > 0 [MeV]"),
        ("--sigma-e", args.sigma_e, lambda v: v > 0, "a DM-electron cross section > 0 [cm^2]"),
        ("--gap", args.gap, lambda v: v >= 0, "a band gap >= 0 [eV]"),
        ("--pair-energy", args.pair_energy, lambda v: v > 0, "an energy per electron-hole pair > 0 [eV]")])
    if bad:
        print(f"dmca-hpc rates: error: {bad}", file=sys.stderr)
        return 2
    try:
        table = load(args.table, args.material)
        eps2 = screening_eps2(table, args.screening, args.dielectric)
        r = electron_rates(table, [args.mass_mev * U.MEV_EV], fdm=args.fdm, halo=args.halo,
                           sigma_e_cm2=args.sigma_e, gap_ev=args.gap,
                           pair_energy_ev=args.pair_energy, screening=eps2)
        r.inputs["screening_model"] = args.screening
    except (OSError, TableFormatError, ValueError, KeyError) as exc:  # OSError: missing/unreadable file
        print(f"dmca-hpc rates: error: {exc}", file=sys.stderr)
        return 2
    out = rates_json(r)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    inp = r.inputs
    print(f"DM-electron rates: {inp['material'] or 'table'} ({inp['table_source']})")
    print(f"  m_chi = {args.mass_mev:g} MeV, F_DM = {args.fdm}, sigma_e = {args.sigma_e:g} cm^2, "
          f"halo = {inp['halo']['name']}")
    print(f"  gap = {inp['gap_ev']:g} eV, pair energy = {inp['pair_energy_ev']:g} eV")
    for n in out["notes"]:
        print(f"  note: {n}")
    print(f"  total           {out['total_per_kg_year']:12.5g} events/kg/year")
    for k, v in zip(out["Q"], out["Q_per_kg_year"]):
        if k <= 10 or v > 0:
            print(f"  Q = {k:<3d}         {v:12.5g} events/kg/year")
    return 0
