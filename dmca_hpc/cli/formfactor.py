"""``dmca-hpc formfactor BANDS.h5 --out TABLE.hdf5``: a form-factor table from a bands file."""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser):
    """Arguments of ``dmca-hpc formfactor`` (cheap: no heavy imports)."""
    parser.add_argument("bands", help="bands.h5 from the bands stage")
    parser.add_argument("--out", required=True, help="output table (HDF5)")
    parser.add_argument("--workdir", default=None,
                        help="checkpoint directory (default: <out>.work)")
    for k in ("dq", "de", "q_max", "e_max", "gap_ev"):
        parser.add_argument("--" + k.replace("_", "-"), type=float, default=None,
                            help=f"formfactor.{k} (see config/schema/formfactor.schema.json)")
    parser.add_argument("--scissor", choices=["qcdark", "qedark", "none"], default=None)
    parser.add_argument("--route", choices=["auto", "fft", "analytic"], default=None,
                        help="formfactor.route: fft (grid; GTH bases), analytic (Gaussian "
                             "plane-wave overlaps, no grid; any basis, all-electron included), "
                             "auto (fft when every element has a GTH pseudopotential; the default)")
    parser.add_argument("--precision", type=float, default=None,
                        help="formfactor.precision [1]: relative cut of the plane-wave "
                             "expansion of the Gaussian basis (default 1e-8)")
    parser.add_argument("--no-symmetry", action="store_true", help="full (k, k') double sum")
    parser.add_argument("--plot", default=None, help="also write the heat map PNG here")


def run_cli(args) -> int:
    """``dmca-hpc formfactor``: compute a table from a bands file (MPI-aware)."""
    from dmca_hpc.electronic.formfactor import (FormFactorError, compute_table, make_table,
                                                settings)
    from dmca_hpc.electronic.bands import load_bands
    from dmca_hpc.hpc.checkpoint import config_hash, file_sha256, provenance
    from dmca_hpc.plots.electronic import plot_formfactor
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.tables import write_table
    comm = get_comm()
    sec = {k: getattr(args, k) for k in ("dq", "de", "q_max", "e_max", "gap_ev", "scissor",
                                                 "route", "precision")
           if getattr(args, k, None) is not None}
    if args.no_symmetry:
        sec["use_symmetry"] = False
    s = settings(sec)
    bd = load_bands(args.bands)
    gap = s["gap_ev"]
    if gap is None and s["scissor"] != "none":
        from dmca_hpc.materials import get_material
        try:
            mat = get_material(bd.material)
            gap = mat.scissor_gap_ev or mat.gap_ev
        except Exception as exc:
            raise FormFactorError(f"no scissor gap known for material {bd.material!r}: "
                                  f"pass --gap-ev or --scissor none") from exc
    ih = config_hash({"formfactor": s, "bands": file_sha256(args.bands), "gap": gap})
    workdir = Path(args.workdir or (str(args.out) + ".work"))
    out = compute_table(bd, s, workdir, ih, comm=comm, gap_target_ev=gap)
    if out is not None:
        prov = provenance(ih, comm.Get_size())
        table = make_table(bd, out["engine"], out["f2"], s, None, prov)
        write_table(args.out, table, input_hash=ih, prov=prov)
        if args.plot:
            plot_formfactor(table, args.plot)
        print(f"wrote {args.out} ({out['n_units']} units, {out['wall_s']:.1f} s)")
    return 0
