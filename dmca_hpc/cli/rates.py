"""``dmca-hpc rates``: DM-electron event rates and charge (Q) spectra for
one or more masses from a form-factor table (:mod:`dmca_hpc.detection.rates`).
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
    parser.add_argument("--mass-mev", type=float, required=True, nargs="+", action="extend",
                        metavar="M", help="DM mass(es) [MeV]: one gives the full charge "
                                          "spectrum, several a table with one row per mass "
                                          "(--json: a list)")
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
    masses = [float(m) for m in args.mass_mev]
    bad = number_problem([
        *[("--mass-mev", m, lambda v: v > 0, "a DM mass > 0 [MeV]") for m in masses],
        ("--sigma-e", args.sigma_e, lambda v: v > 0, "a DM-electron cross section > 0 [cm^2]"),
        ("--gap", args.gap, lambda v: v >= 0, "a band gap >= 0 [eV]"),
        ("--pair-energy", args.pair_energy, lambda v: v > 0, "an energy per electron-hole pair > 0 [eV]")])
    if bad:
        print(f"dmca-hpc rates: error: {bad}", file=sys.stderr)
        return 2
    try:
        table = load(args.table, args.material)
        eps2 = screening_eps2(table, args.screening, args.dielectric)
        rs = []
        for m in masses:  # one call per mass: rates_json describes one mass with its notes
            r = electron_rates(table, [m * U.MEV_EV], fdm=args.fdm, halo=args.halo,
                               sigma_e_cm2=args.sigma_e, gap_ev=args.gap,
                               pair_energy_ev=args.pair_energy, screening=eps2)
            r.inputs["screening_model"] = args.screening
            rs.append(r)
    except (OSError, TableFormatError, ValueError, KeyError) as exc:  # OSError: missing/unreadable file
        print(f"dmca-hpc rates: error: {exc}", file=sys.stderr)
        return 2
    outs = [rates_json(r) for r in rs]
    if args.json:
        print(json.dumps(outs[0] if len(outs) == 1 else outs, indent=1, default=str))
        return 0
    if len(outs) > 1:
        return _print_mass_table(rs, outs, args)
    r, out = rs[0], outs[0]
    inp = r.inputs
    print(f"DM-electron rates: {inp['material'] or 'table'} ({inp['table_source']})")
    print(f"  m_chi = {masses[0]:g} MeV, F_DM = {args.fdm}, sigma_e = {args.sigma_e:g} cm^2, "
          f"halo = {inp['halo']['name']}")
    print(f"  gap = {inp['gap_ev']:g} eV, pair energy = {_pair(inp)}")
    for n in out["notes"]:
        print(f"  note: {n}")
    print(f"  total           {out['total_per_kg_year']:12.5g} events/kg/year")
    for k, v in zip(out["Q"], out["Q_per_kg_year"]):
        if k <= 10 or v > 0:
            print(f"  Q = {k:<3d}         {v:12.5g} events/kg/year")
    return 0


def _pair(inp) -> str:
    """The pair energy as printed: '3.6 eV', or why there is none."""
    e = inp.get("pair_energy_ev")
    return f"{e:g} eV" if e else "none (no Q spectrum; --pair-energy sets one)"


def _print_mass_table(rs, outs, args, n_q: int = 6) -> int:
    """Several masses: one row per mass, the total and Q = 1..n_q [events/kg/year]
    (no Q columns without a pair energy), then each mass's notes."""
    inp = rs[0].inputs
    if not inp.get("pair_energy_ev"):
        n_q = 0
    print(f"DM-electron rates: {inp['material'] or 'table'} ({inp['table_source']})")
    print(f"  F_DM = {args.fdm}, sigma_e = {args.sigma_e:g} cm^2, halo = {inp['halo']['name']}, "
          f"gap = {inp['gap_ev']:g} eV, pair energy = {_pair(inp)}")
    print("  rates in events/kg/year")
    head = "  m_chi [MeV]       total" + "".join(f"  {'Q = ' + str(q):>10s}" for q in range(1, n_q + 1))
    print(head)
    for m, out in zip(args.mass_mev, outs):
        qs = dict(zip(out["Q"], out["Q_per_kg_year"]))
        print(f"  {m:11g} {out['total_per_kg_year']:11.5g}"
              + "".join(f"  {qs.get(q, 0.0):10.4g}" for q in range(1, n_q + 1)))
    # a note every mass shares (no pair energy, the table's validity) once, not per mass
    common = [n for n in outs[0]["notes"] if all(n in o["notes"] for o in outs[1:])] if len(outs) > 1 else []
    for n in common:
        print(f"  note (every mass): {n}")
    for m, out in zip(args.mass_mev, outs):
        for n in out["notes"]:
            if n not in common:
                print(f"  note ({m:g} MeV): {n}")
    return 0
