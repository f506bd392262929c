"""Stage ``dielectric``: eps(q, w), its optical limit and ELF
(:mod:`dmca_hpc.response.dielectric`, optical limit from the DFT states by
:mod:`dmca_hpc.response.optical`) and the dark-photon / ALP absorption rates
and reach (:mod:`dmca_hpc.detection.absorption`) from the form-factor
stage's table.  Defaults of the job section: :mod:`dmca_hpc.settings`."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dmca_hpc import settings
from dmca_hpc.response import DielectricError


def _optical_plan(ctx, cfg):
    """Rank 0: (plan, table): the plan holds the table path, its energy bins
    [eV] and whether / how to compute the optical limit from the DFT states
    (scf path, scissor shift [eV]); the table is kept for rank 0's own use."""
    from dmca_hpc.tables import read_table
    try:
        table_path = ctx.outputs["formfactor"]["table"]
    except (KeyError, TypeError):
        raise DielectricError("dielectric stage: ctx.outputs['formfactor']['table'] missing "
                              "(expected the form-factor stage's table path)") from None
    route = cfg["optical_route"]
    if route not in ("auto", "states", "table"):
        raise DielectricError(f"dielectric.optical_route: expected auto, states or table, "
                              f"got {route!r}")
    table = read_table(table_path)
    scf = None
    if route != "table":
        scf = ((ctx.outputs or {}).get("dft") or {}).get("scf")
        if scf is None and route == "states":
            raise DielectricError("dielectric.optical_route = states needs the dft stage's "
                                  "scf.h5 in the same job (add 'dft' to stages)")
    scissor = 0.0
    if scf is not None:
        scissor = table.metadata.get("scissor_shift_ev")
        if scissor is None:
            from dmca_hpc.electronic.scf import band_gap_from, load_scf
            dd = load_scf(scf)
            nocc = int(round(dd["cell"].nelectron)) // 2
            gap = band_gap_from(np.asarray(dd["mo_energy"]), nocc)["gap_indirect_ev"]
            target = getattr(ctx.material, "scissor_gap_ev", None) or table.gap_ev
            scissor = float(target - gap) if target else 0.0
    plan = {"table": str(table_path), "e_ev": np.asarray(table.e_ev, float), "scf": scf,
            "scissor_ev": float(scissor or 0.0),
            "label": table.material or getattr(ctx.material, "name", "")}
    return plan, table


def run_stage(ctx) -> dict:
    """Pipeline stage ``dielectric``: eps(q, w), optical limit, ELF, and the
    dark-photon / ALP absorption rates and reach (dmca_hpc.detection.absorption) from
    the form-factor stage's table.  The optical limit from the DFT states
    (:mod:`dmca_hpc.response.optical`, when the job ran the dft stage) is spread over
    all ranks; the rest runs on rank 0 (a few seconds for a 1000 x 500
    table); the other ranks return {}.

    Writes ``dielectric.h5`` (units on every dataset; the plots' inputs as
    root attributes, units in the names: ``gap_ev``, ``e_complete_ev``,
    ``absorption_exposure_kg_year``, ``absorption_n_events``,
    ``absorption_rho_chi_gev_cm3``; the optical route and its smearing in
    ``method``), ``dielectric.png`` and ``absorption.png``.

    Telemetry: one record per optical-limit unit (``MAT:optical:START-STOP``, on the
    rank that ran it) and rank 0's last record (label: the material) for the rest of
    the stage: its wall and CPU time [s] leave out the optical limit (they are the
    time before it plus the time from its end), so the stage's records add up to its
    wall time on one rank instead of counting the optical units twice.  Its physics
    block carries ``darkphoton_epsilon`` and ``axion_coupling`` (reach at
    ``reference_mass_ev``, 3 events / exposure) and ``computation_time_sec`` (the
    same time as the record's wall).
    """
    from dmca_hpc.hpc.parallel import peak_memory_mb
    cfg = settings.with_defaults("dielectric", ctx.job.get("dielectric"), error=DielectricError)
    comm = ctx.comm
    rank = comm.Get_rank()
    t0, c0 = time.perf_counter(), time.process_time()
    plan = table = None
    if rank == 0:
        try:
            plan, table = _optical_plan(ctx, cfg)
        except Exception as exc:
            plan = {"error": f"{type(exc).__name__}: {exc}"}
    plan = comm.bcast(plan, root=0)
    if "error" in plan:
        raise DielectricError(plan["error"])
    optical = None
    # the optical part's time [s] on this rank: its units are recorded by themselves
    t_optical = c_optical = 0.0
    if plan["scf"]:
        from dmca_hpc.response.optical import optical_from_scf
        label = plan["label"]

        def on_unit(r):
            ctx.telemetry.record_result("dielectric", r,
                                        physics={"material": label, "kpts": int(r.unit[1] - r.unit[0])},
                                        unit=f"{label}:optical:{r.unit[0]}-{r.unit[1]}")

        t_a, c_a = time.perf_counter(), time.process_time()
        optical = optical_from_scf(
            plan["scf"], plan["e_ev"], kmesh=cfg["optical_kmesh"], sigma_ev=cfg["optical_sigma_ev"],
            scissor_ev=plan["scissor_ev"], dq_bohr=cfg["optical_dq_bohr"], comm=comm,
            workdir=Path(ctx.stage_dir) / "optical_units", input_hash=ctx.input_hash,
            chunk=cfg["optical_chunk"], on_unit=on_unit, label=label,
            tail=cfg["kk_tail"], tail_exponent=cfg["kk_tail_exponent"])
        t_optical, c_optical = time.perf_counter() - t_a, time.process_time() - c_a
    if rank != 0:
        return {}
    rejected = ""
    if optical is not None:
        gap = optical["meta"]["gap_direct_dft_ev"]
        if gap < cfg["optical_min_gap_ev"]:
            # near-degenerate valence/conduction pairs (a semilocal functional
            # closing the gap, e.g. PBE Ge at Gamma) make d_cv ~ p / w_cv blow
            # up, and a scissor moves w_cv but not d_cv: the sum is meaningless
            rejected = (f"smallest direct DFT gap on the optical mesh is {gap:.3f} eV < "
                        f"dielectric.optical_min_gap_ev = {cfg['optical_min_gap_ev']} eV: the "
                        "states route is unreliable (the functional closes the gap; use a "
                        "hybrid such as PBE0)")
            if cfg["optical_route"] == "auto":
                rejected += "; using the table's q -> 0 extrapolation instead"
                optical = None
            print(f"dmca_hpc dielectric: WARNING: {rejected}", file=sys.stderr)
    from dmca_hpc.detection import absorption as absn
    from dmca_hpc.plots.detection import plot_absorption
    from dmca_hpc.plots.response import optical_caption, plot_dielectric
    from dmca_hpc.response.dielectric import dielectric_from_table, write_dielectric
    d = dielectric_from_table(table, material=ctx.material, kmesh=cfg["kmesh"],
                              q_optical_max_ame=cfg["q_optical_max_ame"],
                              optical_bins=cfg["optical_bins"], static_bins=cfg["static_bins"],
                              optical_method=cfg["optical_method"],
                              broadening_ev=cfg["broadening_ev"], tail=cfg["kk_tail"],
                              tail_exponent=cfg["kk_tail_exponent"], optical=optical)
    if rejected:
        d.meta["optical_states_warning"] = rejected
    if ctx.material is not None and not d.material:
        d.material = ctx.material.name
    out_h5 = Path(ctx.stage_dir) / "dielectric.h5"
    absorption = None
    physics: dict[str, Any] = {"material": d.material or (ctx.material.name if ctx.material else "")}
    outs: dict[str, str] = {}
    # what the plots mark: the table's gap (absorption is masked below it: the
    # smeared optical limit leaks there) and the basis completeness limit
    gap_ev = float(table.gap_ev) if table.gap_ev else None
    e_ok = (table.metadata or {}).get("e_complete_ev")
    e_ok = float(e_ok) if e_ok is not None else None
    inputs_attrs: dict[str, Any] = {"gap_ev": gap_ev if gap_ev is not None else float("nan")}
    if e_ok is not None:
        inputs_attrs["e_complete_ev"] = e_ok
    if cfg["absorption"]:
        res = absn.absorption_curves(d, mass_min_ev=cfg["mass_min_ev"], mass_max_ev=cfg["mass_max_ev"],
                                     n_masses=cfg["n_masses"], rho_chi_gev_cm3=cfg["rho_chi_gev_cm3"],
                                     exposure_kg_year=cfg["exposure_kg_year"],
                                     n_events=cfg["n_events"])
        absorption = absn.curves_to_datasets(res)
        ref = absn.reach_at(res, cfg["reference_mass_ev"])
        physics.update({"darkphoton_epsilon": ref["kappa"], "axion_coupling": ref["g_ae"],
                        "reference_mass_ev": cfg["reference_mass_ev"]})
        inputs_attrs.update({"absorption_exposure_kg_year": float(cfg["exposure_kg_year"]),
                             "absorption_n_events": float(cfg["n_events"]),
                             "absorption_rho_chi_gev_cm3": float(cfg["rho_chi_gev_cm3"])})
        png = plot_absorption(res, Path(ctx.stage_dir) / "absorption.png", d.material,
                              gap_ev=gap_ev, smearing=optical_caption(d.meta), e_complete_ev=e_ok)
        outs["absorption_plot"] = str(png)
    eps_static = d.static_dielectric_constant()
    eps_static_kk = d.static_dielectric_constant("spectrum")
    elf_peak = d.plasmon_peak_ev()
    physics.update({"eps_static": eps_static, "eps_static_spectrum": eps_static_kk,
                    "plasmon_peak_ev": elf_peak,
                    "q_scan_points": int(len(d.q_ame))})
    write_dielectric(out_h5, d, input_hash=ctx.input_hash, prov=ctx.prov, absorption=absorption,
                     extra_attrs={"eps_static": eps_static, "eps_static_spectrum": eps_static_kk,
                                  "plasmon_peak_ev": elf_peak, **inputs_attrs})
    png = plot_dielectric(d, Path(ctx.stage_dir) / "dielectric.png", gap_ev=gap_ev,
                          e_complete_ev=e_ok)
    outs.update({"dielectric": str(out_h5), "dielectric_plot": str(png)})
    wall = time.perf_counter() - t0 - t_optical
    physics["computation_time_sec"] = wall
    ctx.telemetry.record("dielectric", d.material or "dielectric", "ok", wall,
                         time.process_time() - c0 - c_optical, peak_memory_mb(),
                         physics={k: v for k, v in physics.items()
                                  if v is None or isinstance(v, (int, float, str))
                                  and (not isinstance(v, float) or math.isfinite(v))})
    return outs
