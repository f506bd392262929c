"""Stage ``rates``: DM-electron spectra for the section's masses and F_DM
(:mod:`dmca_hpc.detection.rates`) and, with an exposure, reach curves and
their uncertainty bands (:mod:`dmca_hpc.detection.reach`).  Defaults of the
job section: :mod:`dmca_hpc.settings`.

Units: masses in MeV in the job and the files, eV inside the physics;
rates in events / kg / year; cross sections in cm^2.
"""
from __future__ import annotations

import json
import time

import numpy as np

from dmca_hpc import settings
from dmca_hpc import units as U


def _section_table(ctx, sec):
    """The form-factor table: rates.table, else the formfactor stage's, else
    the shipped table of rates.material or of the job's material."""
    from dmca_hpc.tables import load, table_for_material
    if sec["table"]:
        return load(sec["table"])
    ff = (ctx.outputs or {}).get("formfactor", {})
    if ff.get("table"):
        return load(ff["table"])
    name = sec["material"] or (ctx.material.name if ctx.material is not None else None)
    if name:
        return load(table_for_material(name))
    raise ValueError("rates stage: no form-factor table: run the formfactor stage, or set "
                     "rates.table (path) or rates.material (shipped table)")


def _screening(sec, table, ctx=None):
    """|eps(q, E)|^2 on the table's bins from rates.screening_file, else from
    the rates.screening model (RPA from the dielectric stage's file when the
    job ran it), else None (unscreened)."""
    path = sec["screening_file"]
    model = sec["screening"]
    if not path and model != "none":
        from dmca_hpc.response.screening import screening_eps2
        diel = ((ctx.outputs or {}).get("dielectric") or {}).get("dielectric") if ctx else None
        return screening_eps2(table, model, diel)
    if not path:
        return None
    import h5py
    key = sec["screening_dataset"]
    with h5py.File(path, "r") as f:
        if key not in f:
            raise ValueError(f"{path}: dataset {key!r} (|eps(q,E)|^2 [nq, nE]) missing")
        return f[key][()]


def run_stage(ctx) -> dict:
    """Pipeline stage ``rates``: spectra for the section's masses and F_DM,
    plus (when ``exposure_kg_year`` > 0) reach curves with uncertainty bands.

    Writes ``rates.h5`` (units on every dataset), ``dRdE.png``, ``dRdQ.png``
    and, with reach, ``reach.h5`` / ``reach.png`` (bands for every F_DM when
    ``uncertainty_samples`` > 0).  All ranks call it; the
    (mass, fdm) units are spread over ranks with :func:`map_units`.
    """
    from dmca_hpc.detection.rates import CONVENTION, electron_rates
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    from dmca_hpc.hpc.parallel import map_units
    from dmca_hpc.plots.detection import plot_spectra
    sec = settings.with_defaults("rates", ctx.job.get("rates"))
    comm = ctx.comm
    rank = comm.Get_rank()
    table = _section_table(ctx, sec)
    if ctx.material is not None and not table.material:
        table.material = ctx.material.name
    screening = _screening(sec, table, ctx)
    masses_mev = list(sec["masses_mev"])
    fdms = list(sec["fdm"])
    halo = sec["halo"]
    sigma = float(sec["sigma_e_cm2"])
    gap = sec["gap_ev"]
    eps = sec["pair_energy_ev"]
    if eps is None and ctx.material is not None and getattr(ctx.material, "pair_energy_ev", None):
        eps = ctx.material.pair_energy_ev
    units_ = [(f, m) for f in fdms for m in masses_mev]

    def work(u):
        f, m = u
        r = electron_rates(table, [m * U.MEV_EV], fdm=f, halo=halo, sigma_e_cm2=sigma,
                           gap_ev=gap, pair_energy_ev=eps)
        return r

    def on_result(res):
        phys = {"material": table.material or "unknown", "band_gap_ev": float(table.gap_ev),
                "q_scan_points": int(table.nq), "mass_mev": float(res.unit[1]),
                "fdm": res.unit[0], "sigma_e_cm2": sigma}
        if res.ok:
            phys["rate_total_per_kg_year"] = float(res.value.total[0])
            phys["computation_time_sec"] = res.wall_s
        ctx.telemetry.record_result("rates", res, physics=phys,
                                    unit=f"{table.material}:{res.unit[0]}:{res.unit[1]:g}MeV")

    results = map_units(work, units_, comm=comm, schedule="static", on_result=on_result)
    outputs: dict = {}
    reach_out = {}
    if float(sec["exposure_kg_year"]) > 0:
        reach_out = stage_reach(ctx, sec, table, screening, gap, eps)
    if rank != 0:
        return {}
    failed = [r for r in results if not r.ok]
    ok = [r for r in results if r.ok]
    summary = "; ".join(f"{r.unit}: {r.error}" for r in failed)
    if not ok:
        raise RuntimeError(f"rates stage: every unit failed: {summary}")
    # the finished units are written even when others failed (NaN rows mark
    # the failed ones), then the stage reports the failure
    path = ctx.stage_dir / "rates.h5"
    with atomic_h5(path, input_hash=ctx.input_hash, stage="rates", prov=ctx.prov) as f:
        f.attrs["material"] = table.material
        f.attrs["convention"] = CONVENTION
        f.attrs["halo"] = json.dumps(ok[0].value.inputs["halo"])
        # the Q model of the dR/dQ plot (units in the names)
        f.attrs["gap_ev"] = float(ok[0].value.inputs["gap_ev"])
        pe = ok[0].value.inputs["pair_energy_ev"]
        # NaN: no pair energy (a scintillator), no Q spectrum (dR_dQ has no columns)
        f.attrs["pair_energy_ev"] = float(pe) if pe is not None else float("nan")
        f.attrs["failed_units"] = json.dumps([[list(r.unit), r.error] for r in failed])
        write_dataset(f, "E", table.e_ev, "eV", "energy bin centres")
        for fdm in fdms:
            rr = [r for r in results if r.unit[0] == fdm]
            vals = [r.value for r in rr if r.ok]
            nQ = max((v.dr_dq.shape[1] for v in vals), default=1)
            de = np.full((len(rr), table.ne), np.nan)
            tot = np.full(len(rr), np.nan)
            dq = np.full((len(rr), nQ), np.nan)
            for i, r in enumerate(rr):
                if r.ok:
                    de[i], tot[i] = r.value.dr_de[0], r.value.total[0]
                    dq[i] = 0.0
                    dq[i, :r.value.dr_dq.shape[1]] = r.value.dr_dq[0]
            g = f.create_group(fdm)
            write_dataset(g, "mass", np.array([r.unit[1] for r in rr], dtype=float), "MeV")
            write_dataset(g, "dR_dE", de, "1/(kg*year*eV)",
                          "dR/dE_e at sigma_e, rows = masses (NaN: unit failed)")
            write_dataset(g, "total", tot, "1/(kg*year)")
            write_dataset(g, "dR_dQ", dq, "1/(kg*year)", "rate in Q = 1, 2, ... (columns)")
            g.attrs["sigma_e_cm2"] = sigma
            g.attrs["notes"] = json.dumps([r.value.notes[0] if r.ok else f"failed: {r.error}"
                                           for r in rr])
    outputs["rates"] = str(path)
    outputs.update(plot_spectra(ok, fdms, ctx.stage_dir, table.material))
    outputs.update(reach_out)
    if failed:
        raise RuntimeError(f"rates stage: {len(failed)} of {len(results)} units failed (the "
                           f"finished ones are in {path}): {summary}")
    return outputs


def stage_reach(ctx, sec, table, screening, gap, eps) -> dict:
    """Reach part of the ``rates`` stage for the filled section ``sec``
    (called on all ranks; rank 0 writes reach.h5 and reach.png)."""
    from dmca_hpc.detection.reach import reach_curve, uncertainty_bands, write_reach_h5
    from dmca_hpc.hpc.parallel import peak_memory_mb
    from dmca_hpc.plots.detection import plot_reach
    t0, c0 = time.perf_counter(), time.process_time()
    masses = np.logspace(np.log10(float(sec["reach_mass_min_mev"])),
                         np.log10(float(sec["reach_mass_max_mev"])),
                         int(sec["reach_n_masses"])) * U.MEV_EV
    common = dict(exposure_kg_year=float(sec["exposure_kg_year"]),
                  q_threshold=int(sec["q_threshold"]), q_max=sec["q_max"],
                  n_events=sec["n_events"], observed_counts=sec["observed_counts"],
                  cl=float(sec["cl"]), mode=sec["limit_mode"],
                  gap_ev=gap, pair_energy_ev=eps, screening=screening)
    halo = sec["halo"]
    curves = {}
    bands = {}
    for fdm in sec["fdm"]:
        curves[f"{fdm}"] = reach_curve(table, masses, fdm=fdm, halo=halo, **common)
    nmc = int(sec["uncertainty_samples"])
    if nmc > 0:
        # every mediator gets its bands (same seed: the same halo samples)
        extra = [table] + list(sec["systematic_tables"])
        for fdm in sec["fdm"]:
            bands[f"{fdm}"] = uncertainty_bands(extra, masses, n_samples=nmc, seed=int(ctx.seed),
                                                halo=halo, fdm=fdm, comm=ctx.comm, **common)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    heavy = curves.get("heavy") or next(iter(curves.values()))
    fin = heavy.sigma_cm2[np.isfinite(heavy.sigma_cm2)]
    ctx.telemetry.record("rates", f"{table.material}:reach", "ok", wall, cpu, peak_memory_mb(),
                         physics={"material": table.material or "unknown",
                                  "q_scan_points": int(masses.size),
                                  "reach_min_sigma_cm2": float(fin.min()) if fin.size else None,
                                  "uncertainty_samples": nmc,
                                  "computation_time_sec": wall})
    if ctx.comm.Get_rank() != 0:
        return {}
    p = write_reach_h5(ctx.stage_dir / "reach.h5", curves, bands or None, ctx.input_hash, ctx.prov)
    img = plot_reach(ctx.stage_dir / "reach.png", curves, bands or None)
    return {"reach": str(p), "reach_plot": str(img)}
