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
* ``dmca-hpc table systematic REF --vary V [V ...] --out OUT.hdf5``: REF
  with a per-bin 1-sigma ``f2_sigma`` from the spread of variant tables of
  one systematic (k mesh, basis, functional;
  :func:`dmca_hpc.tables.systematic_sigma`), its record appended to the
  metadata list ``f2_sigma_sources``, and the rate effect printed: per mass
  and mediator the variant/ref total-rate ratios and the relative 1-sigma
  of the rate the new f2_sigma gives (:func:`rate_effect`).
"""
from __future__ import annotations

import json
import sys

EXIT_BAD_INPUT = 2
#: DM masses [MeV] at which ``table systematic`` reports the rate effect
RATE_MASSES_MEV = (1.0, 3.0, 10.0, 100.0, 1000.0)
#: halo of those rates (ratios hardly depend on it; named in the output)
RATE_HALO = "shm-2021"


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
    sy = sub.add_parser("systematic", help="carry a DFT systematic (k mesh, basis, functional) "
                                           "into a table's per-bin 1-sigma f2_sigma",
                        description="Write REF with a per-bin 1-sigma f2_sigma built from variant "
                                    "tables of one systematic: the envelope (maximum over "
                                    "variants) of the difference f2_variant - f2_ref averaged "
                                    "over a box of +-SMOOTH_Q alpha m_e and +-SMOOTH_E eV, "
                                    "relative to the box average of f2_ref, times f2_ref "
                                    "averaged in E; on the bins both have above REF's gap (0 "
                                    "elsewhere), combined in quadrature with REF's own "
                                    "f2_sigma (dmca_hpc.tables.systematic_sigma). f2 is unchanged; the record goes to the metadata "
                                    "list f2_sigma_sources, so systematics stack when the output "
                                    "is the next REF. 'dmca-hpc reach --uncertainty' draws it.")
    sy.add_argument("ref", metavar="REF", help="reference table file or shipped table name "
                                               "(its f2 is kept)")
    how = sy.add_mutually_exclusive_group(required=True)
    how.add_argument("--vary", nargs="+", metavar="VARIANT",
                     help="variant table(s) (files or shipped names) of the same material and bin "
                          "widths; fewer q or E bins are allowed")
    how.add_argument("--carry-from", metavar="DONOR",
                     help="instead of variants: a table of REF's target with an f2_sigma (the "
                          "table before a fix, or another basis); its relative 1-sigma per bin "
                          "goes onto REF's shape and its records are kept, marked as carried. "
                          "A source measured without --base is accepted only where REF has "
                          "DONOR's value of the setting it varies, e.g. the same k mesh "
                          "(dmca_hpc.tables.carry_sigma)")
    sy.add_argument("--out", required=True, metavar="OUT.hdf5", help="table file to write")
    sy.add_argument("--label", default="", help="name of the systematic (kmesh, basis, functional)")
    sy.add_argument("--base", default=None, metavar="BASE",
                    help="the table the variants differ from in this setting alone (default: "
                         "REF). Their relative difference to BASE is carried onto REF's shape: "
                         "e.g. basis variants on a 4x4x4 mesh, BASE the same basis as REF on "
                         "that mesh, REF the 6x6x6 table")
    sy.add_argument("--smooth-q", type=float, default=None, metavar="ALPHA_ME",
                    help=f"half-width of the box filter in q [alpha m_e] (default {SMOOTH_Q_DEFAULT:g}; 0: none)")
    sy.add_argument("--smooth-e", type=float, default=None, metavar="EV",
                    help=f"half-width of the box filter in E [eV] (default {SMOOTH_E_DEFAULT:g}; 0: none)")
    sy.add_argument("--json", action="store_true", help="print the record as one JSON object")


#: box half-widths of the systematic's smoothing when not given [alpha m_e], [eV]
#: (tables.systematic_sigma's defaults; None on the parser tells "not given" apart)
SMOOTH_Q_DEFAULT, SMOOTH_E_DEFAULT = 0.2, 0.5


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
    from pathlib import Path
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
    def rate_tail(ms, rel):
        if not (ms and rel["heavy"] and rel["light"]):
            return ""
        return (f"rate 1-sigma heavy {100 * rel['heavy'][0]:.3g}% at {ms[0]:g} MeV, "
                f"{100 * rel['heavy'][-1]:.3g}% at {ms[-1]:g} MeV; light "
                f"{100 * rel['light'][0]:.3g}% / {100 * rel['light'][-1]:.3g}%")

    carried_seen = {}
    for src in (t.metadata or {}).get("f2_sigma_sources") or []:
        # each systematic stacked into f2_sigma by `dmca-hpc table systematic`: its label,
        # what it covers and the relative rate 1-sigma it gives at its first/last masses
        eff = src.get("rate_effect") or {}
        tail = rate_tail(eff.get("masses_mev") or [],
                         {f: (eff.get(f) or {}).get("rel_sigma") or [] for f in ("heavy", "light")})
        carried = src.get("carried") or {}
        if tail and carried:
            # a carried record's rate_effect was measured on the donor, not on this table
            tail = f"measured on {Path(str(carried.get('carried_from', '?'))).name}: {tail}"
        tail = f"; {tail}" if tail else ""
        q = src.get("q_range_ame") or [None, None]
        print(f"    {src.get('label') or 'systematic'}: {len(src.get('per_variant') or [])} variant(s), "
              f"q {q[0]:g} - {q[1]:g} alpha m_e" + tail if q[1] is not None else
              f"    {src.get('label') or 'systematic'}" + tail)
        if carried.get("carried_from") and carried.get("rel_sigma_on_ref"):
            carried_seen[carried["carried_from"]] = carried
    for key, carried in carried_seen.items():
        on = rate_tail(carried.get("masses_mev") or [], carried["rel_sigma_on_ref"])
        print(f"    carried from {Path(key).name} onto this table (its sources together): {on}")
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


def rate_effect(ref, variants, sigma_new, sigma_total=None, masses_mev=RATE_MASSES_MEV,
                halo=RATE_HALO, base=None) -> dict:
    """What a systematic does to rates (the CLI's part: tables may not import
    detection).  Total rates (all E bins) at sigma_e = 1e-39 cm^2 from
    :func:`dmca_hpc.detection.rates.electron_rates`, for each mediator:

    * ``variant_over_ref`` [n_variants][n_masses]: total rate of each
      variant over ref's, both cut to the q and E bins they share (a
      q <= 10 variant is compared with ref's q <= 10 part);
    * ``shift`` [n_variants][n_masses]: (variant's rate - ref's rate) on
      those bins over ref's rate on its whole table, the move a sigma
      meant to cover the variant should reach (with ``base``, both against
      base instead of ref: the relative move the sigma carries onto ref);
    * ``rel_sigma`` [n_masses]: rate(f2 + sigma_new) / rate(f2) - 1 over
      ref's whole table (sigma_new is 0 where no variant has bins), the
      relative 1-sigma of the rate that a draw of z = 1 gives
      (rates are linear in f2); ``rel_sigma_total`` likewise for
      ``sigma_total`` when given (the quadrature sum written).

    Ratios are dimensionless; None where ref's rate is 0 (mass below
    threshold).  Returns a JSON-ready dict."""
    import dataclasses
    import numpy as np
    from dmca_hpc import units as U
    from dmca_hpc.detection.rates import electron_rates
    masses = np.asarray(masses_mev, dtype=float) * U.MEV_EV

    def total(t, f2, fdm):
        return electron_rates(dataclasses.replace(t, f2=f2, f2_sigma=None), masses, fdm=fdm,
                              halo=halo).total

    def ratio(a, b):
        return [float(x / y) if y > 0 else None for x, y in zip(a, b)]

    out = {"masses_mev": [float(m) for m in masses_mev], "halo": halo,
           "quantity": "total rate (all E bins) ratio, dimensionless",
           "variants": [str(v.metadata.get("source_file", "")) for v in variants]}
    b0 = ref if base is None else base
    if base is not None:
        out["base"] = str(base.metadata.get("source_file", ""))
    for fdm in ("heavy", "light"):
        r_ref = total(ref, ref.f2, fdm)
        r_b0 = r_ref if base is None else total(b0, b0.f2, fdm)
        ratios, shifts = [], []
        for v in variants:
            nq, ne = min(b0.nq, v.nq), min(b0.ne, v.ne)
            common = r_b0 if (nq, ne) == (b0.nq, b0.ne) else total(b0, b0.f2[:nq, :ne], fdm)
            r_v = total(v, v.f2[:nq, :ne], fdm)
            ratios.append(ratio(r_v, common))
            shifts.append(ratio(r_v - common, r_b0))
        d = {"variant_over_ref": ratios, "shift": shifts,
             "rel_sigma": [None if x is None else x - 1.0
                           for x in ratio(total(ref, ref.f2 + sigma_new, fdm), r_ref)]}
        if sigma_total is not None:
            d["rel_sigma_total"] = [None if x is None else x - 1.0
                                    for x in ratio(total(ref, ref.f2 + sigma_total, fdm), r_ref)]
        out[fdm] = d
    return out


def _run_systematic(args) -> int:
    import dataclasses
    import math
    from pathlib import Path
    from dmca_hpc import tables
    from dmca_hpc.hpc.checkpoint import config_hash, file_sha256, provenance
    # flags first: a bad width should not wait for the tables to load
    if args.carry_from is not None:
        # a carried sigma is the donor's, measured with the donor's base, smoothing and
        # label: a flag that would shape it here would be silently ignored
        given = [f for f, v in (("--base", args.base), ("--smooth-q", args.smooth_q),
                                ("--smooth-e", args.smooth_e), ("--label", args.label or None))
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot be used with --carry-from: the carried "
                             "sigma keeps the donor's base, smoothing and label (see the donor's "
                             "f2_sigma_sources); expected REF --carry-from DONOR --out OUT.hdf5")
    if args.smooth_q is None:
        args.smooth_q = SMOOTH_Q_DEFAULT
    if args.smooth_e is None:
        args.smooth_e = SMOOTH_E_DEFAULT
    for flag, v, unit in (("--smooth-q", args.smooth_q, "alpha m_e"),
                          ("--smooth-e", args.smooth_e, "eV")):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{flag} is {v:g}; expected a box half-width >= 0 [{unit}] (0: none)")
    ref = _load(args.ref)
    if args.carry_from is not None:
        return _run_carry(args, ref, _load(args.carry_from))
    variants = [_load(v) for v in args.vary]
    base = None if args.base is None else _load(args.base)
    sigma, info = tables.systematic_sigma(ref, variants, args.smooth_q, args.smooth_e, args.label,
                                          base=base)
    # the new systematic alone (the written sigma also holds ref's earlier one)
    new = sigma if ref.f2_sigma is None else tables.systematic_sigma(
        dataclasses.replace(ref, f2_sigma=None), variants, args.smooth_q, args.smooth_e,
        base=base)[0]
    info["rate_effect"] = rate_effect(ref, variants, new,
                                      sigma if ref.f2_sigma is not None else None, base=base)
    files = ([ref.metadata.get("source_file", "")] + [v.metadata.get("source_file", "")
                                                       for v in variants]
             + ([] if base is None else [base.metadata.get("source_file", "")]))
    ih = config_hash({"systematic": {k: info[k] for k in ("label", "smoothing")},
                      "tables": [file_sha256(f) if f and Path(f).is_file() else f for f in files]})
    info["provenance"] = provenance(ih)
    meta = dict(ref.metadata)
    earlier = list(meta.get("f2_sigma_sources") or [])
    meta["f2_sigma_sources"] = earlier + [info]
    out = dataclasses.replace(ref, f2_sigma=sigma, metadata=meta)
    # the file's provenance stays ref's: its f2 is ref's, bit for bit; this command's is in info
    path = tables.write_table(args.out, out, input_hash=ih, prov=ref.metadata.get("provenance"))
    if args.json:
        print(json.dumps(dict(info, out=str(path)), indent=1, default=str))
        return 0
    _print_systematic(path, ref, info, len(earlier))
    return 0


def _run_carry(args, ref, donor) -> int:
    """``table systematic REF --carry-from DONOR``: DONOR's relative sigma on REF."""
    import dataclasses
    from pathlib import Path
    import numpy as np
    from dmca_hpc import tables
    from dmca_hpc.hpc.checkpoint import config_hash, file_sha256, provenance
    sigma, carry = tables.carry_sigma(ref, donor)
    earlier = ref.f2_sigma is not None
    total_sigma = np.hypot(ref.f2_sigma, sigma) if earlier else sigma
    sources = donor.metadata["f2_sigma_sources"]
    # the carried sigma's rate 1-sigma on REF (one sum of every source: computed once),
    # at the masses the donor's first record reported
    masses = ((sources[0].get("rate_effect") or {}).get("masses_mev")
              or list(RATE_MASSES_MEV))
    eff = rate_effect(ref, [], sigma, masses_mev=masses)
    on_ref = {fdm: eff[fdm]["rel_sigma"] for fdm in ("heavy", "light")}
    records = []
    for s in sources:
        rec = json.loads(json.dumps(s, default=str))
        rec["carried"] = dict(carry, onto=tables.table_source(ref), masses_mev=masses,
                              rel_sigma_on_ref=on_ref,
                              note="relative move measured on the donor's base "
                                   "and variants, not re-measured for this table")
        records.append(rec)
    meta = dict(ref.metadata)
    meta["f2_sigma_sources"] = list(meta.get("f2_sigma_sources") or []) + records
    files = [ref.metadata.get("source_file", ""), donor.metadata.get("source_file", "")]
    ih = config_hash({"carry_sigma": carry["method"],
                      "tables": [file_sha256(f) if f and Path(f).is_file() else f for f in files]})
    for rec in records:
        rec["carried"]["provenance"] = provenance(ih)
    out = dataclasses.replace(ref, f2_sigma=total_sigma, metadata=meta)
    path = tables.write_table(args.out, out, input_hash=ih, prov=ref.metadata.get("provenance"))
    if args.json:
        print(json.dumps({"out": str(path), "carried": records}, indent=1, default=str))
        return 0
    print(f"wrote {path}: {ref.material or 'table'} {tables.table_source(ref)} with the f2_sigma "
          f"of {carry['carried_from']} carried relatively ({', '.join(carry['labels'])}); "
          "f2 unchanged")
    if earlier:
        print("  combined       in quadrature with the table's own earlier f2_sigma")
    if carry["ref_weight_without_sigma"] > 1e-3:
        print(f"  note: {100 * carry['ref_weight_without_sigma']:.3g}% of the table's summed |f|^2 "
              "lies where the donor has none: sigma 0 there")
    for fdm in ("heavy", "light"):
        print(f"  {fdm:5} rate 1-sigma of the carried sigma on this table: "
              + ", ".join(f"{_fmt(mm, 'MeV')} " + ("no rate" if x is None else f"{100 * x:.3g} %")
                          for mm, x in zip(masses, on_ref[fdm])))
    return 0


def _distinct_names(paths) -> list[str]:
    """Column names for ``paths``: the file names, or where those coincide (two runs'
    tables are both formfactor.hdf5) the nearest directory that tells them apart before
    the file name: '/p/si_ae_k8/Si/formfactor/formfactor.hdf5' -> 'si_ae_k8/.../formfactor.hdf5'."""
    from pathlib import PurePath
    parts = [PurePath(str(p)).parts or (str(p),) for p in paths]
    names = [x[-1] for x in parts]
    if len(set(names)) == len(names):
        return names
    for i in range(2, max(len(x) for x in parts) + 1):
        level = [x[-i] if len(x) >= i else "" for x in parts]
        if len(set(level)) == len(level):
            gap = "/.../" if i > 2 else "/"
            return [(lv + gap if lv else "") + x[-1] for lv, x in zip(level, parts)]
    return [str(p) for p in paths]


def _print_systematic(path, ref, info, n_earlier: int) -> None:
    sm, re_ = info["smoothing"], info["rate_effect"]
    # what the variants are compared with: REF, or the --base table
    against = "base" if info.get("base") else "ref"
    q0, q1 = info["q_range_ame"]
    e0, e1 = info["e_range_ev"]
    print(f"wrote {path}: {ref.material or 'table'} {info['ref']} with f2_sigma from "
          f"{'systematic ' + repr(info['label']) if info['label'] else 'an unlabelled systematic'}"
          f" ({len(info['variants'])} variant(s): {', '.join(info['variants'])})")
    if against == "base":
        print(f"  base           {info['base']}: the variants' difference is taken to it and "
              "carried relatively onto ref")
    print(f"  sigma          envelope over variants of the difference to {against}, relative "
          "over a "
          f"box of +-{sm['half_width_q_ame']:g} alpha m_e x +-{sm['half_width_e_ev']:g} eV "
          f"({sm['box_bins_q_e'][0]} x {sm['box_bins_q_e'][1]} bins), times ref's f2 (smoothed "
          "in E); f2 unchanged")
    print(f"  covers         q {q0:g} - {q1:g} alpha m_e, E {e0:g} - {e1:g} eV; sigma = 0 beyond "
          "(the variants have no bins there)")
    if info["combined_with_earlier_sigma"]:
        print(f"  combined       in quadrature with the table's earlier f2_sigma ({n_earlier} "
              "recorded source(s) before this one)")
    for p in info["per_variant"]:
        if p["identical_to_ref"]:
            print(f"  note: {p['source']} equals the reference on its bins: it adds nothing")
        elif p["variant_weight_not_carried"] > 1e-3:
            print(f"  note: {100 * p['variant_weight_not_carried']:.3g}% of {p['source']}'s summed "
                  f"|f|^2 lies below ref's gap ({info['gap_ev']:g} eV) or where ref has none: "
                  "not carried by the sigma")
    names = _distinct_names(info["variants"])
    w = max([22] + [len(n) for n in names])
    total = "rel_sigma_total" in re_["heavy"]
    print(f"  total rates (all E bins, {re_['halo']} halo, sigma_e 1e-39 cm^2): "
          f"variant/{against} "
          "ratio over the q, E bins both have (dimensionless); rel. 1-sigma = rate(f2 + "
          "f2_sigma)/rate(f2) - 1 over the whole table [%]")
    head = (f"  {'mass':>9}  {'F_DM':5}  " + "  ".join(f"{n:>{w}}" for n in names)
            + f"  {'rel. 1-sigma':>12}" + (f"  {'total sigma':>12}" if total else ""))
    print(head)

    def fmt(x, pct=False):
        if x is None:
            return "no rate"
        return f"{100 * x:.3g} %" if pct else f"{x:.4g}"
    for i, m in enumerate(re_["masses_mev"]):
        for fdm in ("heavy", "light"):
            d = re_[fdm]
            row = (f"  {_fmt(m, 'MeV'):>9}  {fdm:5}  "
                   + "  ".join(f"{fmt(r[i]):>{w}}" for r in d["variant_over_ref"])
                   + f"  {fmt(d['rel_sigma'][i], True):>12}")
            if total:
                row += f"  {fmt(d['rel_sigma_total'][i], True):>12}"
            print(row)
    for fdm in ("heavy", "light"):
        d = re_[fdm]
        for name, sh in zip(names, d["shift"]):
            for m, x, sg in zip(re_["masses_mev"], sh, d["rel_sigma"]):
                if x is not None and sg is not None and abs(x) > sg * (1 + 1e-9):
                    print(f"  note: at {_fmt(m, 'MeV')} ({fdm}) {name} moves the rate by "
                          f"{100 * x:+.3g} % of {against}'s, more than the 1-sigma {100 * sg:.3g} %: "
                          "the sigma misses part of it (averaged away by the box, or weight "
                          "where ref has none; smaller --smooth-q/--smooth-e keep more)")


def run_cli(args) -> int:
    """``dmca-hpc table info|export|systematic``; exit 2 with one line for bad input."""
    from dmca_hpc.tables import TableFormatError
    try:
        return {"info": _run_info, "export": _run_export,
                "systematic": _run_systematic}[args.action](args)
    except (OSError, TableFormatError, ValueError, KeyError) as exc:
        print(f"dmca-hpc table {args.action}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
