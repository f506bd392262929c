"""Stage ``formfactor``: bands.h5 -> formfactor.hdf5 (+ plot); the physics is
:mod:`dmca_hpc.electronic.formfactor`."""
from __future__ import annotations

from pathlib import Path

from dmca_hpc.electronic.formfactor import STAGE, check_bands, compute_table, make_table, settings
from dmca_hpc.plots.electronic import plot_formfactor


def run_stage(ctx) -> dict:
    """Pipeline stage: bands.h5 -> formfactor.hdf5 (+ plot).  See module doc."""
    from dmca_hpc.electronic.bands import load_bands
    from dmca_hpc.tables import write_table
    s = settings(ctx.job.get(STAGE))
    bands_path = ctx.outputs["bands"]["bands"]
    bd = load_bands(bands_path)
    check_bands(bd, ctx.material, ctx.job)
    gap = s["gap_ev"]
    if gap is None and ctx.material is not None:
        gap = getattr(ctx.material, "scissor_gap_ev", None) or ctx.material.gap_ev
    def on_unit(res, label, physics):
        ctx.telemetry.record_result(STAGE, res, unit=label, physics=physics)

    out = compute_table(bd, s, ctx.stage_dir, ctx.input_hash, comm=ctx.comm, on_unit=on_unit,
                        material_name=getattr(ctx.material, "name", bd.material),
                        gap_target_ev=gap)
    if out is None:
        return {}
    table = make_table(bd, out["engine"], out["f2"], s, ctx.material, ctx.prov)
    table.metadata["run"] = {"n_units": out["n_units"], "n_reused": out["n_reused"],
                             "wall_s": out["wall_s"], "peak_mem_mb": out["peak_mem_mb"],
                             "memory_bound_mb": out["engine"].memory_bound_mb}
    path = Path(ctx.stage_dir) / "formfactor.hdf5"
    write_table(path, table, input_hash=ctx.input_hash, prov=ctx.prov)
    res = {"table": str(path)}
    if s["plot"]:
        res["plot"] = str(plot_formfactor(table, Path(ctx.stage_dir) / "formfactor.png"))
    return res
