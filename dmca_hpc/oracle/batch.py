"""Oracle batches: candidates dealt to MPI ranks, checkpointed, assembled.

:func:`run_batch` labels a list of candidates with
:func:`dmca_hpc.oracle.pwx.run_candidate`, dealt to the ranks of ``comm``
by dynamic dispatch (a slow candidate never stalls the others); each
finished candidate is checkpointed at once (:class:`CandidateStore`) and
reported through a callback, so the caller decides where the report goes
(the pipeline stage and ``dmca-hpc oracle`` wire it to their telemetry).
Rank 0 assembles the outputs from the checkpoints (:func:`write_outputs`).

Units: energy [eV], forces [eV/angstrom], stress [eV/angstrom^3] (full 3x3,
ASE sign: positive = tensile), positions and cells [angstrom], times [s].

ASE's ``read``/``write`` are called with ``parallel=False``: by default ASE
reads/writes on its rank 0 and broadcasts over MPI_COMM_WORLD once mpi4py is
imported, which deadlocks (or mismatches collectives) when only rank 0
writes the results.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from dmca_hpc.oracle.candidates import CandidateStore, candidate_hash
from dmca_hpc.oracle.pwx import DFTResult, pw_command, run_candidate

#: producer name written into results.h5 (its ``stage`` attribute)
STAGE = "oracle"

#: the per-candidate report: ``record(unit, status, wall_s, cpu_s, peak_mem_mb,
#: error=None, physics=None)`` with status "ok", "failed" or "skipped", times
#: [s], memory [MiB], ``error`` "class: message" and ``physics`` a flat dict --
#: the arguments of :meth:`dmca_hpc.monitoring.telemetry.Telemetry.record`
#: after its stage name
Record = Callable[..., Any]


def run_batch(candidates: Sequence, settings: dict, out_dir: str | os.PathLike, comm=None,
              record: Record | None = None, material: str | None = None,
              prov: dict | None = None, input_hash: str = "",
              log: Callable[[str], None] | None = None) -> dict:
    """Label every candidate, dealt to the ranks of ``comm`` dynamically.

    Call on every rank with the same ``candidates``.  Each finished candidate
    is checkpointed at once by the rank that ran it (``out_dir/candidates``)
    and reported once through ``record`` (see :data:`Record`; rank 0 also
    reports the skipped ones); candidates already checkpointed for the same
    structure and settings are skipped (failed ones too, unless
    ``retry_failed``).  ``log`` receives progress lines on rank 0.  Rank 0
    then writes, from the checkpoints:

    * ``results.extxyz``: one frame per successful candidate, input order,
      ``info['index']`` = candidate index, energy/forces/stress in the
      standard extxyz keys (eV, eV/angstrom, eV/angstrom^3 Voigt, ASE sign),
    * ``results.h5``: every candidate (NaN for failures), ``units`` on every
      dataset,
    * ``failures.json``: index, label, error class, message, attempts and
      corrections of each failed candidate.

    Returns on rank 0 ``{label: path}`` of those files (others: ``{}``).
    """
    from dmca_hpc.hpc.parallel import get_comm, map_units
    comm = comm or get_comm()
    rank = comm.Get_rank()
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    store = CandidateStore(out / "candidates")
    # every rank computes the hashes itself (cheap) instead of a broadcast
    hashes = [candidate_hash(a, settings) for a in candidates]
    labels = [f"{material + '/' if material else ''}cand-{i:07d}" for i in range(len(candidates))]
    done = set()
    if rank == 0:
        for i, h in enumerate(hashes):
            d = store.load(i, h)
            if d is not None and (d["result"]["success"] or not settings["retry_failed"]):
                done.add(i)
    done = comm.bcast(done, root=0)
    if rank == 0 and record is not None:
        for i in sorted(done):
            record(labels[i], "skipped", 0.0, 0.0, 0.0,
                   physics={"material": material} if material else None)
    if rank == 0 and log:
        log(f"oracle: {len(candidates)} candidates, {len(done)} already done, "
            f"{len(candidates) - len(done)} to run on {comm.Get_size()} rank(s)")
    pw_cmd = pw_command(settings)  # checked once on every rank, before any work

    def work(i):
        return run_candidate(candidates[i], settings, out / "work" / f"cand-{i:07d}",
                             labels[i], pw_cmd=pw_cmd).to_dict()

    def on_result(r):
        res = DFTResult.from_dict(r.value) if r.ok else None
        if res is not None:
            store.save(r.index, labels[r.index], hashes[r.index], res)
        if record is not None:
            report_candidate(record, labels[r.index], r, res, material)

    map_units(work, list(range(len(candidates))), comm=comm, schedule="dynamic",
              on_result=on_result, skip=done)
    comm.barrier()
    if rank != 0:
        return {}
    return write_outputs(candidates, hashes, labels, store, out, prov or {}, input_hash)


def report_candidate(record: Record, label: str, r, res: DFTResult | None,
                     material: str | None) -> None:
    """Report one finished candidate through ``record``: status ok/failed,
    wall time [s], CPU time [s] of the rank plus its pw.x children, peak
    memory [MiB], the failure, and a physics block (material, atoms, energy
    [eV], attempts, corrections, failure class, SCF steps, k-mesh, pw.x CPU
    time [s]).  ``r`` is the :class:`dmca_hpc.hpc.parallel.UnitResult` of
    the candidate, ``res`` its result (None when the work raised)."""
    meta = res.meta if res is not None else {}
    physics = {
        "material": material,
        "n_atoms": len(res.atoms) if res is not None else None,
        "energy_ev": res.energy_ev if res is not None else None,
        "attempts": meta.get("n_attempts"),
        "n_corrections": len(meta.get("corrections", [])),
        "corrections": ",".join(c["handler"] for c in meta.get("corrections", [])) or None,
        "error_class": (res.error_class if res is not None else "internal_error"),
        "scf_steps_total": meta.get("scf_steps_total"),
        "kpts": meta.get("kpts"),
        "computation_time_sec": meta.get("pw_cpu_s"),
    }
    ok = r.ok and res is not None and res.success
    error = r.error if not r.ok else (None if ok else f"{res.error_class}: {res.error}")
    record(label, "ok" if ok else "failed", r.wall_s,
           r.cpu_s + float(meta.get("pw_cpu_s", 0.0)), r.peak_mem_mb,
           error=error, physics=physics)


def write_outputs(candidates, hashes, labels, store: CandidateStore, out: Path,
                  prov: dict, input_hash: str) -> dict:
    """Assemble results.extxyz, results.h5 and failures.json from the
    checkpoints (rank 0 only; atomic writes)."""
    import numpy as np
    from ase.io import write
    from dmca_hpc.hpc.checkpoint import atomic_h5, atomic_path, canonical_json, write_dataset
    n = len(candidates)
    results: list[DFTResult | None] = []
    for i in range(n):
        d = store.load(i, hashes[i])
        results.append(DFTResult.from_dict(d["result"]) if d else None)
    frames, failures = [], []
    for i, res in enumerate(results):
        if res is not None and res.success:
            a = res.to_atoms()
            a.info.update({"index": i, "label": labels[i],
                           "attempts": int(res.meta.get("n_attempts", 0)),
                           "corrections": ",".join(c["handler"] for c in res.meta.get("corrections", []))
                           or "none"})
            origin = candidates[i].info.get("origin") if hasattr(candidates[i], "info") else None
            if origin:
                a.info["origin"] = origin
            frames.append(a)
        else:
            failures.append({
                "index": i, "label": labels[i],
                "error_class": res.error_class if res is not None else "internal_error",
                "message": res.error if res is not None else
                "no checkpoint: the candidate raised inside the oracle (see telemetry/traceback)",
                "attempts": res.meta.get("attempts", []) if res is not None else [],
                "corrections": res.meta.get("corrections", []) if res is not None else [],
            })
    paths = {}
    xyz = out / "results.extxyz"
    with atomic_path(xyz) as tmp:
        if frames:
            write(str(tmp), frames, format="extxyz", parallel=False)
        else:
            tmp.write_text("")
    paths["results_extxyz"] = str(xyz)
    fj = out / "failures.json"
    with atomic_path(fj) as tmp:
        tmp.write_text(json.dumps(failures, indent=1, default=str))
    paths["failures"] = str(fj)

    natoms = np.array([len(a) for a in candidates], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(natoms)[:-1]]).astype(np.int64)
    tot = int(natoms.sum())
    numbers = np.zeros(tot, np.int64)
    pos = np.full((tot, 3), np.nan)
    forces = np.full((tot, 3), np.nan)
    cells = np.full((n, 3, 3), np.nan)
    stress = np.full((n, 3, 3), np.nan)
    energy = np.full(n, np.nan)
    success = np.zeros(n, bool)
    attempts = np.zeros(n, np.int64)
    ncorr = np.zeros(n, np.int64)
    scf = np.zeros(n, np.int64)
    wall = np.full(n, np.nan)
    eclass = []
    for i, a in enumerate(candidates):
        sl = slice(offs[i], offs[i] + natoms[i])
        numbers[sl] = a.numbers
        pos[sl] = a.positions
        cells[i] = a.cell.array
        res = results[i]
        eclass.append("" if res is None or res.success else (res.error_class or ""))
        if res is None:
            eclass[-1] = "internal_error"
            continue
        attempts[i] = res.meta.get("n_attempts", 0)
        ncorr[i] = len(res.meta.get("corrections", []))
        scf[i] = res.meta.get("scf_steps_total", 0) or 0
        wall[i] = res.meta.get("wall_s", np.nan)
        if res.success:
            success[i] = True
            energy[i] = res.energy_ev
            forces[sl] = res.forces_ev_per_angstrom
            stress[i] = res.stress_ev_per_angstrom3
    h5 = out / "results.h5"
    import h5py
    with atomic_h5(h5, input_hash=input_hash, stage=STAGE, prov=prov) as f:
        f.attrs["stress_convention"] = ("full 3x3, ASE sign: positive = tensile "
                                        "(stress = -pressure)")
        f.attrs["energy_reference"] = "pw.x total energy (pseudopotential reference)"
        write_dataset(f, "index", np.arange(n), "1", "candidate index (input order)")
        write_dataset(f, "label", np.array(labels, dtype=h5py.string_dtype()), "1", "candidate label")
        write_dataset(f, "success", success, "1", "True when pw.x produced validated results")
        write_dataset(f, "error_class", np.array(eclass, dtype=h5py.string_dtype()), "1",
                      "failure class ('' on success); see dmca_hpc.oracle.handlers.ERROR_CLASSES")
        write_dataset(f, "energy", energy, "eV", "total energy per cell (NaN on failure)")
        write_dataset(f, "stress", stress, "eV/angstrom^3", "stress tensor (NaN on failure)")
        write_dataset(f, "cell", cells, "angstrom", "lattice vectors (rows)")
        write_dataset(f, "natoms", natoms, "1", "atoms per candidate")
        write_dataset(f, "atom_offset", offs, "1", "first row of each candidate in the per-atom arrays")
        write_dataset(f, "numbers", numbers, "1", "atomic numbers (concatenated)")
        write_dataset(f, "positions", pos, "angstrom", "Cartesian positions (concatenated)")
        write_dataset(f, "forces", forces, "eV/angstrom", "forces (concatenated; NaN on failure)")
        write_dataset(f, "attempts", attempts, "1", "pw.x launches")
        write_dataset(f, "n_corrections", ncorr, "1", "corrections applied")
        write_dataset(f, "scf_steps_total", scf, "1", "SCF iterations over all attempts")
        write_dataset(f, "wall", wall, "s", "wall time of the candidate")
        f.attrs["candidate_hashes"] = canonical_json(hashes)
    paths["results_h5"] = str(h5)
    return paths
