"""Stage ``dft``: the SCF of one material on rank 0 (see :mod:`dmca_hpc.electronic.scf`)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dmca_hpc.electronic.scf import (DFTInputError, SCFNotConvergedError, check_basis,
                                     check_structure, run_scf, scf_keys, section_with_defaults,
                                     validate_section)


def _physics(material, sec, e_tot=None, gap=None):
    out = {"material": material, "kpts": [int(x) for x in sec["kmesh"]]}
    if e_tot is not None and np.isfinite(e_tot):
        out["e_tot_hartree"] = float(e_tot)
    if gap is not None and np.isfinite(gap) and gap >= 0:
        out["band_gap_ev"] = float(gap)
    return out


def run_stage(ctx) -> dict:
    """Pipeline stage ``dft`` (called on every rank).

    Rank 0 runs the SCF (the k-points of the coarse SCF are coupled through
    the density, so it is not split over ranks) with as many OpenMP threads
    as there are ranks on its node, while the other ranks sleep in a
    non-spinning barrier.  Reuses ``scf.h5`` when it is complete for the same
    input hash.  One telemetry record (unit ``<material>:scf``).

    Returns ``{'scf': path}`` on rank 0, ``{}`` elsewhere.

    Raises:
        DFTInputError: bad section or structure (on every rank).
        SCFNotConvergedError: after recording a failed unit (on every rank).
    """
    from dmca_hpc.hpc.checkpoint import is_complete
    from dmca_hpc.hpc.parallel import idle_barrier, node_local_size, peak_memory_mb
    from dmca_hpc.materials import MaterialError, material_name, resolve_atoms
    comm = ctx.comm
    rank = comm.Get_rank()
    sec = section_with_defaults((ctx.job or {}).get("dft"))
    validate_section(sec)
    name = material_name(ctx.material)
    try:
        atoms = resolve_atoms(ctx.material)
    except MaterialError as exc:
        raise DFTInputError(f"dft: {exc}") from None
    check_structure(atoms, float(sec["min_distance_angstrom"]), name=f"material {name}")
    stage_dir = Path(ctx.stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    out = stage_dir / "scf.h5"
    ih, chk_key = scf_keys(atoms, sec, ctx.input_hash or "")
    status = None
    # collective (Split_type): every rank must call it, before rank 0 goes off alone
    nthreads = node_local_size(comm) if comm.Get_size() > 1 else None
    if rank == 0:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            check_basis(atoms.get_chemical_symbols(), sec["basis"], sec["pseudo"])
            if is_complete(out, ih):
                status = ("reused", None)
                import h5py
                with h5py.File(out, "r") as f:
                    e_tot, gap = float(f.attrs["e_tot"]), float(f.attrs["gap_indirect_ev"])
                ctx.telemetry.record("dft", f"{name}:scf", "skipped", time.perf_counter() - t0,
                                     time.process_time() - c0, peak_memory_mb(),
                                     physics=_physics(name, sec, e_tot, gap))
            else:
                summ = run_scf(atoms, sec, out, ih, prov=ctx.prov,
                               chkfile=stage_dir / f"scf-{chk_key[:16]}.chk",
                               log_path=stage_dir / "pyscf_scf.log", material=name,
                               threads=nthreads)
                ctx.telemetry.record("dft", f"{name}:scf", "ok", time.perf_counter() - t0,
                                     time.process_time() - c0, peak_memory_mb(),
                                     physics=_physics(name, sec, summ["e_tot_hartree"],
                                                      summ.get("gap_indirect_ev")))
                status = ("ok", None)
        except Exception as exc:
            ctx.telemetry.record("dft", f"{name}:scf", "failed", time.perf_counter() - t0,
                                 time.process_time() - c0, peak_memory_mb(),
                                 error=f"{type(exc).__name__}: {exc}",
                                 physics=_physics(name, sec))
            status = ("error", (type(exc).__name__, str(exc)))
            if comm.Get_size() == 1:
                raise
    idle_barrier(comm)
    status = comm.bcast(status, root=0)
    if status[0] == "error":
        etype, msg = status[1]
        cls = {"DFTInputError": DFTInputError,
               "SCFNotConvergedError": SCFNotConvergedError}.get(etype, RuntimeError)
        raise cls(msg)
    return {"scf": str(out)} if rank == 0 else {}
