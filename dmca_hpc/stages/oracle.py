"""Stage ``oracle``: self-correcting pw.x labels of candidate structures.

Wires the oracle package (:mod:`dmca_hpc.oracle`) to the pipeline: the job's
``oracle:`` section, where the candidates come from, the stage directory,
provenance and telemetry (each finished candidate is one record of stage
``oracle``)."""
from __future__ import annotations

import functools
from pathlib import Path

STAGE = "oracle"


def candidates_for(ctx, settings: dict) -> list:
    """The stage's candidates: ``oracle.structures`` (extxyz, relative to the
    job file), else generated with ``ctx.seed`` from ``ctx.material``
    (per-material run) or, for the global stage, from every material of the
    job in order (``info['origin']`` names the material)."""
    from dmca_hpc.oracle.candidates import generate_candidates, read_candidates
    from dmca_hpc.oracle.pwx import OracleSetupError
    job_dir = ctx.job.get("_job_dir", ".")
    if settings["structures"]:
        p = Path(settings["structures"])
        return read_candidates(p if p.is_absolute() else Path(job_dir) / p)
    if ctx.material is not None:
        return generate_candidates(ctx.material.atoms(), settings["generate"], int(ctx.seed))
    from dmca_hpc.materials import material_from_spec
    specs = ctx.job.get("materials") or []
    if not specs:
        raise OracleSetupError("oracle: no oracle.structures file and no materials in the "
                               "job to generate candidates from")
    out = []
    for spec in specs:
        mat = material_from_spec(spec, job_dir)
        for a in generate_candidates(mat.atoms(), settings["generate"], int(ctx.seed)):
            a.info["origin"] = f"{mat.name}: {a.info['origin']}"
            out.append(a)
    return out


def run_stage(ctx) -> dict:
    """Pipeline stage ``oracle``: label the candidates (:func:`candidates_for`)
    with :func:`dmca_hpc.oracle.batch.run_batch` over ``ctx.comm``; outputs
    (results.extxyz, results.h5, failures.json) in ``ctx.stage_dir``."""
    from dmca_hpc.oracle.batch import run_batch
    from dmca_hpc.oracle.pwx import settings_from
    settings = settings_from(dict(ctx.job.get(STAGE, {}) or {}))
    candidates = candidates_for(ctx, settings)
    name = getattr(ctx.material, "name", None)
    log = (lambda m: print(m, flush=True)) if ctx.comm.Get_rank() == 0 else None
    record = functools.partial(ctx.telemetry.record, STAGE) if ctx.telemetry is not None else None
    return run_batch(candidates, settings, ctx.stage_dir, comm=ctx.comm, record=record,
                     material=name, prov=ctx.prov, input_hash=ctx.input_hash, log=log)
