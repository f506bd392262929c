"""``dmca-hpc dft``: the SCF (and dense-mesh bands) of one material, outside a job."""
from __future__ import annotations

import sys
from pathlib import Path

from dmca_hpc import settings


def add_arguments(parser):
    """``dmca-hpc dft``: SCF and dense-mesh bands of one material, standalone.
    Option help and defaults come from the settings model (dft.* and bands.*)."""
    def doc(key):
        f = settings.field(key)
        return f.doc.replace("%", "%%")

    parser.add_argument("material", help="library name (Si, Ge, ...) or structure file")
    parser.add_argument("--out", required=True, help="output directory")
    d = settings.defaults("dft")
    parser.add_argument("--basis", default=d["basis"], help=doc("dft.basis"))
    parser.add_argument("--pseudo", default=d["pseudo"],
                        help="GTH pseudopotential name, or 'none' for all-electron bases")
    parser.add_argument("--xc", default=d["xc"], help=doc("dft.xc"))
    parser.add_argument("--kmesh", type=int, nargs=3, default=d["kmesh"], help=doc("dft.kmesh"))
    parser.add_argument("--density-fit", choices=("auto", "FFTDF", "GDF"), default=d["density_fit"],
                        help=doc("dft.density_fit"))
    parser.add_argument("--ke-cutoff-hartree", type=float, default=None,
                        help=doc("dft.ke_cutoff_hartree"))
    parser.add_argument("--conv-tol-hartree", type=float, default=d["conv_tol_hartree"],
                        help=doc("dft.conv_tol_hartree"))
    parser.add_argument("--max-cycles", type=int, default=d["max_cycles"], help=doc("dft.max_cycles"))
    parser.add_argument("--dense-kmesh", type=int, nargs=3, default=None,
                        help="dense bands mesh [k-points per reciprocal axis] (omit to run the SCF only)")
    b = settings.defaults("bands")
    parser.add_argument("--chunk-size", type=int, default=b["chunk_size"], help=doc("bands.chunk_size"))
    parser.add_argument("--n-conduction", type=int, default=None, help=doc("bands.n_conduction"))
    parser.add_argument("--energy-above-gap-ev", type=float, default=b["energy_above_gap_ev"],
                        help=doc("bands.energy_above_gap_ev"))
    parser.add_argument("--band-path-npoints", type=int, default=b["band_path_npoints"],
                        help=doc("bands.band_path_npoints"))
    parser.add_argument("--no-plots", action="store_true", help="no band-structure and DOS plots")
    return parser


def run_cli(args) -> int:
    """Run the dft stage (and the bands stage with ``--dense-kmesh``)."""
    from dmca_hpc.electronic.scf import DFTInputError, SCFNotConvergedError
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import merge_rank_files
    from dmca_hpc.pipeline import make_context
    from dmca_hpc.stages import dft as dft_stage
    comm = get_comm()
    mat = args.material
    try:
        if not Path(mat).exists():
            from dmca_hpc.materials import get_material
            mat = get_material(mat)
    except Exception as exc:
        print(f"dmca-hpc dft: {exc}", file=sys.stderr)
        return 2
    dft = {"basis": args.basis, "pseudo": None if str(args.pseudo).lower() == "none" else args.pseudo,
           "xc": args.xc, "kmesh": list(args.kmesh), "ke_cutoff_hartree": args.ke_cutoff_hartree,
           "conv_tol_hartree": args.conv_tol_hartree, "max_cycles": args.max_cycles,
           "density_fit": args.density_fit}
    job = {"dft": dft}
    if args.dense_kmesh:
        b = {"kmesh": list(args.dense_kmesh)}
        for k in ("chunk_size", "n_conduction", "energy_above_gap_ev", "band_path_npoints"):
            v = getattr(args, k)
            if v is not None:
                b[k] = v
        if args.no_plots:
            b["plots"] = False
        job["bands"] = b
    try:
        outs = {"dft": dft_stage.run_stage(make_context("dft", args.out, mat, job, comm=comm))}
        if args.dense_kmesh:
            from dmca_hpc.stages import bands as bands_stage
            outs["bands"] = bands_stage.run_stage(make_context("bands", args.out, mat, job,
                                                         outputs=outs, comm=comm))
    except (DFTInputError, SCFNotConvergedError, RuntimeError, ValueError) as exc:
        if comm.Get_rank() == 0:
            print(f"dmca-hpc dft: error: {exc}", file=sys.stderr)
        return 1
    if comm.Get_rank() == 0:
        merge_rank_files(Path(args.out) / "telemetry")
        for st, o in outs.items():
            for k, v in o.items():
                print(f"{st}.{k}: {v}")
    return 0
