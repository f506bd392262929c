"""``dmca-hpc table``: look at a form-factor table, or write it for a peer code.

* ``dmca-hpc table info X``: material, shape, q / E ranges with units, cell,
  completeness (``e_complete_ev``, ``q_complete_ame``), ``all_electron`` of a
  table file (any format :func:`dmca_hpc.tables.read_table` reads) or of a
  shipped table by material name.
* ``dmca-hpc table export --qedark OUT.dat (--table X | --material NAME)``:
  the QEdark text layout exactly as obscura reads it
  (:func:`dmca_hpc.tables.write_qedark_text`: no header, E outer, q inner,
  500 x 900 bins, each number divided by obscura's ``prefactor (qi + 1) / dE
  * w_k / 4``).
"""
from __future__ import annotations

import json
import sys

EXIT_BAD_INPUT = 2


def add_arguments(parser):
    """Arguments of ``dmca-hpc table`` (sub-commands ``info`` and ``export``)."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="what a table is: material, shape, q/E ranges, "
                                       "completeness, all_electron",
                          description="Print what a form-factor table is: material, format, "
                                      "shape, q and E ranges with units, cell, scissor, "
                                      "completeness attributes, all_electron.")
    info.add_argument("table", metavar="X",
                      help="table file (our HDF5, QCDark HDF5, DMCA exciton HDF5, QEdark text) "
                           "or the name of a shipped table (Si, Si_gth, Ge, diamond)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    exp = sub.add_parser("export", help="write a table for a peer code (QEdark text for obscura)",
                         description="Write a table in the QEdark text layout obscura (and codes "
                                     "built on its Crystal target) read: one number per line, no "
                                     "header, E outer (500 bins of 0.1 eV), q inner (900 bins of "
                                     "0.02 alpha m_e), each |f|^2 divided by obscura's factor "
                                     "prefactor (qi + 1) / dE * w_k / 4 (w_k = 2/137; prefactor "
                                     "Si 2.0 eV, Ge 1.8 eV). obscura looks for it as "
                                     "data/Semiconductors/C.<Si|Ge>137.dat.")
    exp.add_argument("--qedark", required=True, metavar="OUT.dat", help="text file to write")
    src = exp.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", metavar="X", help="table file to export")
    src.add_argument("--material", metavar="NAME", help="export the shipped table of this material")
    exp.add_argument("--nq", type=int, default=None,
                     help="q bins written (default 900, obscura's N_q; bins beyond the table are 0)")
    exp.add_argument("--prefactor-ev", type=float, default=None,
                     help="obscura's material prefactor [eV] (default Si 2.0, Ge 1.8; needed for "
                          "other materials, which obscura itself does not read)")


def _load(x: str | None, material: str | None = None):
    """A table from a path, or from a shipped table's name when no such file
    exists (``info X``) or ``--material`` is given."""
    from pathlib import Path
    from dmca_hpc.tables import load, table_for_material
    if material is not None:
        return load(None, material)
    if not Path(x).exists():
        try:
            return load(table_for_material(x))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{x}: no such file, and not a shipped table ({exc})") from None
    return load(x)


def _fmt(v, unit="", digits=4):
    if v is None:
        return "not recorded"
    if isinstance(v, bool):
        return str(v)
    return f"{v:.{digits}g}{' ' + unit if unit else ''}"


def _run_info(args) -> int:
    from dmca_hpc import tables
    t = _load(args.table)
    s = tables.table_summary(t)
    if args.json:
        print(json.dumps(s, indent=1, default=str))
        return 0
    q0, q1 = s["q_range_alpha_me"]
    e0, e1 = s["e_range_ev"]
    print(f"{args.table}: {s['material'] or 'unknown material'}, format {s['format'] or 'unknown'}"
          f" ({s['source_file']})")
    print(f"  shape          {s['shape_q_e'][0]} x {s['shape_q_e'][1]} (q bins x E bins)")
    print(f"  q              {q0:g} - {q1:g} alpha m_e, bins of {s['dq_alpha_me']:g} alpha m_e "
          "(centres (a + 1/2) dq)")
    print(f"  E              {e0:g} - {e1:g} eV, bins of {s['de_ev']:g} eV (centres (b + 1/2) dE)")
    print(f"  cell           M_cell {s['cell_mass_ev'] / 1e9:.5g} GeV, V_cell "
          f"{s['cell_volume_angstrom3']:.5g} angstrom^3, gap {s['gap_ev']:g} eV, scissor "
          f"{s['scissor']}")
    print(f"  complete to    E <= {_fmt(s['e_complete_ev'], 'eV')} (e_complete_ev), q <= "
          f"{_fmt(s['q_complete_ame'], 'alpha m_e')} (q_complete_ame)")
    print(f"  all_electron   {_fmt(s['all_electron'])}")
    extra = [f"{k} {s[k]}" for k in ("basis", "xc", "kmesh") if s.get(k) is not None]
    if extra:
        print(f"  computed with  {', '.join(extra)}")
    print("  uncertainty    " + ("per-bin 1-sigma of f2 (f2_sigma)" if s["f2_sigma"] else "none"))
    if s["format"] == "dmca-exciton":
        print(f"  exciton table  dataset {s['dataset']!r}, {s['n_k']} k slices summed with "
              f"{s['k_weights']}; dft_form_factors {'present' if s['has_dft_form_factors'] else 'absent'}"
              + (f"; from the materials library: {', '.join(s['cell_from_library'])}"
                 if s["cell_from_library"] else ""))
    return 0


def _run_export(args) -> int:
    from dmca_hpc import tables
    t = _load(args.table, args.material)
    path = tables.write_qedark_text(args.qedark, t, prefactor_ev=args.prefactor_ev, nq=args.nq)
    nq = tables.OBSCURA_NQ if args.nq is None else args.nq
    ne = tables.OBSCURA_NE
    pref = args.prefactor_ev if args.prefactor_ev is not None else \
        tables.QEDARK_MATERIALS[t.material]["prefactor_ev"]
    print(f"wrote {path}: QEdark text layout as obscura reads it: {nq * ne} numbers, one per line, "
          f"no header, E outer ({ne} bins of {t.de_ev:g} eV), q inner ({nq} bins of "
          f"{t.dq_ame:g} alpha m_e)")
    print(f"  each number is |f_crystal|^2 / (prefactor (qi + 1) / dE * w_k / 4) with prefactor "
          f"{pref:g} eV, dE {t.de_ev:g} eV, w_k = 2/137: obscura multiplies it back")
    total = float(t.f2.sum())
    if t.nq > nq and total > 0:
        lost = float(t.f2[nq:].sum()) / total
        print(f"  note: q > {nq * t.dq_ame:g} alpha m_e not written (obscura's N_q = {nq}): "
              f"{100 * lost:.3g}% of the table's summed |f_crystal|^2")
    if t.ne > ne and total > 0:
        lost = float(t.f2[:, ne:].sum()) / total
        print(f"  note: E > {ne * t.de_ev:g} eV not written: {100 * lost:.3g}% of the summed "
              "|f_crystal|^2")
    if t.nq < nq or t.ne < ne:
        print("  note: bins beyond the table written as 0")
    if t.material in tables.QEDARK_MATERIALS:
        print(f"  obscura reads it as data/Semiconductors/C.{t.material}137.dat and takes M_cell, "
              "gap and pair energy from its own values, not from this table "
              f"(this table: M_cell {t.cell_mass_ev / 1e9:.5g} GeV, gap {t.gap_ev:g} eV)")
    else:
        print(f"  note: obscura's Crystal reads only Si and Ge; material {t.material!r} needs a "
              "reader that takes the prefactor given")
    return 0


def run_cli(args) -> int:
    """``dmca-hpc table info|export``; exit 2 with one line for bad input."""
    from dmca_hpc.tables import TableFormatError
    try:
        return {"info": _run_info, "export": _run_export}[args.action](args)
    except (OSError, TableFormatError, ValueError, KeyError) as exc:
        print(f"dmca-hpc table {args.action}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
