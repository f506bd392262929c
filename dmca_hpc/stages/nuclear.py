"""Stage ``nuclear`` (global): WIMP spin-independent nuclear recoil and
sterile-neutrino coherent scattering spectra (:mod:`dmca_hpc.detection.nuclear`)
for the section's targets and masses.  Defaults of the job section:
:mod:`dmca_hpc.settings`.  Units: masses in GeV, recoil energies in keV,
rates in events / tonne / year / keV."""
from __future__ import annotations

import json

import numpy as np

from dmca_hpc import settings


def run_stage(ctx) -> dict:
    """Pipeline stage ``nuclear``: dR/dE_R spectra for the section's targets
    and masses, one unit per (target, mass); writes nuclear.h5 (with its inputs
    sigma_n_cm2 or coupling and the halo as attributes) and nuclear.png."""
    from dmca_hpc.detection.halo import get_halo
    from dmca_hpc.detection.nuclear import canonical_target, recoil_rate, target_composition
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    from dmca_hpc.hpc.parallel import map_units
    from dmca_hpc.plots.detection import plot_nuclear
    sec = settings.with_defaults("nuclear", ctx.job.get("nuclear"))
    # fails early with the list of known targets; any case, written as known_targets() spells it
    targets = [canonical_target(t) for t in sec["targets"]]
    masses = list(sec["masses_gev"])
    e_kev = np.linspace(float(sec["e_min_kev"]), float(sec["e_max_kev"]), int(sec["n_energies"]))
    model = sec["model"]
    sigma = float(sec["sigma_n_cm2"])
    coupling = float(sec["coupling"])
    halo = sec["halo"]
    halo_params = get_halo(halo).params()
    units_ = [(t, m) for t in targets for m in masses]

    def work(u):
        return recoil_rate(u[0], u[1], e_kev, sigma_n_cm2=sigma, halo=halo, model=model,
                           coupling=coupling)

    def on_result(res):
        phys = {"material": res.unit[0], "mass_gev": float(res.unit[1]), "model": model}
        if model == "wimp":
            phys["wimp_sigma_cm2"] = sigma
        if res.ok:
            phys["rate_at_emin_per_tonne_year_kev"] = float(res.value[0])
            phys["computation_time_sec"] = res.wall_s
        ctx.telemetry.record_result("nuclear", res, physics=phys,
                                    unit=f"{res.unit[0]}:{res.unit[1]:g}GeV")

    results = map_units(work, units_, comm=ctx.comm, schedule="static", on_result=on_result)
    if ctx.comm.Get_rank() != 0:
        return {}
    failed = [r for r in results if not r.ok]
    summary = "; ".join(f"{r.unit}: {r.error}" for r in failed)
    if len(failed) == len(results):
        raise RuntimeError(f"nuclear stage: every unit failed: {summary}")
    path = ctx.stage_dir / "nuclear.h5"
    with atomic_h5(path, input_hash=ctx.input_hash, stage="nuclear", prov=ctx.prov) as f:
        f.attrs["model"] = model
        f.attrs["convention"] = "Helm, A = standard atomic weight, nucleon mass = u"
        # the inputs of the spectra (and of nuclear.png), units in the names and in attrs units
        units = {"halo": "JSON, units in the key names (km/s, GeV/cm^3)"}
        if model == "wimp":
            f.attrs["sigma_n_cm2"] = sigma
            units["sigma_n_cm2"] = "cm^2"
        else:
            f.attrs["coupling"] = coupling
            units["coupling"] = "1 (relative to an active Dirac neutrino's Z coupling squared)"
        f.attrs["halo"] = json.dumps(halo_params)
        f.attrs["units"] = json.dumps(units)
        write_dataset(f, "E_R", e_kev, "keV", "recoil energies")
        write_dataset(f, "mass", np.array(masses, dtype=float), "GeV", "DM masses")
        f.attrs["failed_units"] = json.dumps([[list(r.unit), r.error] for r in failed])
        for t in targets:
            # a failed unit keeps its row as NaN: the finished ones are written
            rows = np.vstack([r.value if r.ok else np.full(len(e_kev), np.nan)
                              for r in results if r.unit[0] == t])
            write_dataset(f, f"{t}/dR_dE", rows, "1/(tonne*year*keV)",
                          f"dR/dE_R, rows = masses, model {model}")
            f[t].attrs["mass_fractions"] = json.dumps(dict(target_composition(t)))
    png = plot_nuclear(ctx.stage_dir / "nuclear.png", e_kev,
                       [(f"{r.unit[0]} {r.unit[1]:g} GeV", r.value) for r in results if r.ok],
                       sigma_n_cm2=sigma, halo=halo_params, model=model, coupling=coupling)
    if failed:
        raise RuntimeError(f"nuclear stage: {len(failed)} of {len(results)} units failed (the "
                           f"finished ones are in {path}): {summary}")
    return {"nuclear": str(path), "nuclear_plot": str(png)}
