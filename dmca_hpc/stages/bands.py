"""Stage ``bands``: dense-mesh Kohn-Sham bands from the converged density, in
k-chunks over the ranks (see :mod:`dmca_hpc.electronic.bands` for the
physics, the conventions and the file it writes)."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from dmca_hpc import settings
from dmca_hpc.electronic.bands import (_UNIT_KEYS, BandsInputError, BandWorker, apply_scissor,
                                       band_path, choose_nbands, chunk_units, density_of_states,
                                       fast_hamiltonian, gap_summary, segment_of, symmetry_kpoints,
                                       unfold_states, validate_section, write_bands)
from dmca_hpc.electronic.exchange import singular_exchange_weight
from dmca_hpc.plots.electronic import plot_bands

STAGE = "bands"


def _section(ctx) -> dict:
    out = settings.with_defaults("bands", (ctx.job or {}).get("bands"), error=BandsInputError)
    validate_section(out)
    return out


def _scf_path(ctx) -> str:
    p = ((ctx.outputs or {}).get("dft") or {}).get("scf")
    if p is None:
        p = str(Path(ctx.stage_dir).parent / "dft" / "scf.h5")
    return str(p)


def run_stage(ctx) -> dict:
    """Pipeline stage ``bands`` (called on every rank).

    Returns on rank 0 ``{'bands': bands.h5, 'band_structure_plot': png,
    'dos_plot': png}`` (plots only with ``plots: true``), ``{}`` elsewhere.

    Raises:
        BandsInputError: bad section (every rank).
        RuntimeError: some k-chunks failed (their error is in telemetry; the
            finished ones are checkpointed, so a rerun only redoes those).
    """
    from dmca_hpc.hpc.checkpoint import UnitStore
    from dmca_hpc.hpc.parallel import Progress, idle_barrier, map_units, peak_memory_mb, set_threads
    from dmca_hpc.materials import material_name
    from dmca_hpc.units import HARTREE_EV
    comm = ctx.comm
    rank, size = comm.Get_rank(), comm.Get_size()
    sec = _section(ctx)
    name = material_name(ctx.material)
    stage_dir = Path(ctx.stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)

    # rank 0 reads the small SCF summary and decides; everyone gets the plan
    plan = None
    if rank == 0:
        try:
            plan = _plan(ctx, sec, name)
        except Exception as exc:
            plan = {"error": (type(exc).__name__, str(exc))}
    plan = comm.bcast(plan, root=0)
    if "error" in plan:
        etype, msg = plan["error"]
        raise (BandsInputError if etype == "BandsInputError" else RuntimeError)(msg)
    # the form-factor stage of the same job states the consequence (up to which E
    # its table is complete): one line for the user, not two; bands.h5 keeps it
    # (attribute nbands_warning) either way
    if plan["warning"] and rank == 0 and "formfactor" not in (ctx.job or {}).get("stages", []):
        warnings.warn(plan["warning"])

    out_path = stage_dir / "bands.h5"
    outputs = {"bands": str(out_path)}
    if sec["plots"]:
        outputs["band_structure_plot"] = str(stage_dir / "band_structure.png")
        outputs["dos_plot"] = str(stage_dir / "dos.png")
    if plan["reuse"]:
        if rank == 0:
            ctx.telemetry.record(STAGE, f"{name}:merge", "skipped", 0.0, 0.0, peak_memory_mb(),
                                 physics={"material": name, "kpts": list(sec["kmesh"])})
        return outputs if rank == 0 else {}

    units = plan["units"]
    store = UnitStore(stage_dir / "units", plan["unit_hash"])
    if size > 1:
        set_threads(1)  # one core per rank: the k-chunks are the parallelism
    worker = BandWorker(plan["scf"], plan["nbands"])
    kcart = {"mesh": plan["work_kpts"], "path": plan["path_kpts"]}
    progress = Progress(f"{name} bands", len(units), comm=comm, done=len(plan["done"]))
    t_files = time.time()
    unit_pos = {tuple(u): j for j, u in enumerate(units)}

    def work(unit):
        kind, s, t = unit
        e, c = worker.bands(kcart[kind][s:t])
        i = unit_pos[tuple(unit)]
        store.save(i, {"energies": e, "coeffs": c, "k_index": np.arange(s, t)},
                   {"energies": "hartree", "coeffs": "1", "k_index": "1"},
                   attrs={"kind": kind, "start": s, "stop": t})
        nocc = plan["nocc"]
        return {"gap_direct_ev": float((e[:, nocc] - e[:, nocc - 1]).min() * HARTREE_EV)}

    def on_result(r):
        kind, s, t = r.unit
        phys = {"material": name, "kpts": int(t - s), "e_tot_hartree": plan["e_tot"]}
        if r.ok and r.value["gap_direct_ev"] >= 0:
            phys["band_gap_ev"] = r.value["gap_direct_ev"]
        ctx.telemetry.record_result(STAGE, r, physics=phys, unit=f"{name}:{kind}:{s}-{t}")
        if rank == 0:  # every rank's units of this run, from the file names and times
            progress.update(len(plan["done"]) + store.written_since(t_files, len(units)))

    results = map_units(work, units, comm=comm, schedule=sec["schedule"],
                        on_result=on_result, skip=plan["done"])
    failed = None
    if rank == 0:
        failed = [(r.index, str(r.unit), r.error) for r in results if not r.ok]
    failed = comm.bcast(failed, root=0)
    if failed:
        raise RuntimeError(f"bands: {len(failed)} of {len(units)} k-chunks failed for {name} "
                           f"(finished ones are checkpointed in {store.dir}); first: "
                           f"unit {failed[0][1]}: {failed[0][2]}")

    status = None
    if rank == 0:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            _merge(ctx, sec, plan, store, out_path, name)
            status = ("ok", None)
            ctx.telemetry.record(STAGE, f"{name}:merge", "ok", time.perf_counter() - t0,
                                 time.process_time() - c0, peak_memory_mb(),
                                 physics={"material": name, "kpts": list(sec["kmesh"]),
                                          "e_tot_hartree": plan["e_tot"]})
        except Exception as exc:
            status = ("error", f"{type(exc).__name__}: {exc}")
            ctx.telemetry.record(STAGE, f"{name}:merge", "failed", time.perf_counter() - t0,
                                 time.process_time() - c0, peak_memory_mb(), error=status[1])
            if size == 1:
                raise
    idle_barrier(comm)
    status = comm.bcast(status, root=0)
    if status[0] == "error":
        raise RuntimeError(f"bands merge failed: {status[1]}")
    return outputs if rank == 0 else {}


def _plan(ctx, sec: dict, name: str) -> dict:
    """Rank 0: read the SCF, choose nbands, build the k lists and units,
    find finished units.  Returns a picklable dict for every rank."""
    import h5py
    from dmca_hpc.hpc.checkpoint import UnitStore, config_hash, is_complete
    from dmca_hpc.electronic.symmetry import mesh_frac
    scf = _scf_path(ctx)
    if not is_complete(scf):
        raise RuntimeError(f"bands: SCF file {scf} is missing or incomplete; run the dft stage "
                           "first (ctx.outputs['dft']['scf'])")
    with h5py.File(scf, "r") as f:
        scf_hash = str(f.attrs["input_hash"])
        nocc = int(f.attrs["nocc"])
        e_tot = float(f.attrs["e_tot"])
        mo_energy = f["mo_energy"][()]
        cell_str = f.attrs["cell"]
        xc = str(f.attrs["xc"])
        fast = fast_hamiltonian(xc, str(f.attrs["pseudo"]), str(f.attrs["density_fit"]))
        smat = {k: f["structure"][k][()] for k in ("cell", "positions", "numbers")}
    from ase import Atoms
    atoms = Atoms(numbers=smat["numbers"], positions=smat["positions"], cell=smat["cell"], pbc=True)
    nbands, warn = choose_nbands(mo_energy, nocc, sec["n_conduction"], sec["energy_above_gap_ev"])
    frac = mesh_frac(sec["kmesh"])
    from pyscf.pbc import gto
    cell = gto.loads(cell_str)
    mesh_kpts = cell.get_abs_kpts(frac)
    if int(sec["band_path_npoints"]) > 0:
        bp = atoms.cell.bandpath(path=sec["band_path"], npoints=int(sec["band_path_npoints"]))
        path_frac = np.asarray(bp.kpts)
    else:
        path_frac = np.zeros((0, 3))
    path_kpts = cell.get_abs_kpts(path_frac) if len(path_frac) else np.zeros((0, 3))
    irreducible = sec["irreducible_only"]
    if irreducible == "auto":
        irreducible = not fast
    work_kpts = mesh_kpts
    if irreducible:
        kp = symmetry_kpoints(cell_str, sec["kmesh"])
        if np.abs(kp.kpts - mesh_kpts).max() > 1e-9:
            raise RuntimeError("bands: PySCF's symmetry k-points are not the Gamma-centred mesh "
                               "in mesh order; set bands.irreducible_only: false")
        work_kpts = np.asarray(kp.kpts_ibz)
    if not fast and len(path_frac):
        _check_gdf_path_memory(cell, int(mo_energy.shape[0]), min(int(sec["chunk_size"]), len(path_frac)),
                               ctx.comm.Get_size())
    units = chunk_units(len(work_kpts), len(path_frac), int(sec["chunk_size"]))
    hashed = {"stage": STAGE, "ctx": ctx.input_hash, "scf": scf_hash, "nbands": nbands,
              "section": {k: sec[k] for k in _UNIT_KEYS}}
    if singular_exchange_weight(xc)[1] != "none":
        # hybrid bands off the SCF mesh changed (dmca_hpc.electronic.exchange): chunks
        # written before hold PySCF's mesh-only Madelung term and must not be reused
        hashed["offmesh_exchange"] = "madelung-offset-1"
    unit_hash = config_hash(hashed)
    out_hash = config_hash({"unit_hash": unit_hash, "section": sec,
                            "material_gap": _target_gap(ctx.material, sec)})
    out_path = Path(ctx.stage_dir) / "bands.h5"
    plots_ok = (not sec["plots"]) or all((Path(ctx.stage_dir) / p).exists()
                                         for p in ("band_structure.png", "dos.png"))
    reuse = is_complete(out_path, out_hash) and plots_ok
    done = sorted(UnitStore(Path(ctx.stage_dir) / "units", unit_hash).done(len(units))) \
        if not reuse else []
    return {"scf": scf, "scf_hash": scf_hash, "nocc": nocc, "nbands": nbands, "warning": warn,
            "e_tot": e_tot, "mesh_frac": frac, "mesh_kpts": mesh_kpts, "path_frac": path_frac,
            "irreducible": bool(irreducible), "work_kpts": work_kpts,
            "path_kpts": path_kpts, "units": units, "unit_hash": unit_hash, "out_hash": out_hash,
            "reuse": reuse, "done": done, "atoms": atoms, "cell_str": cell_str}


def _check_gdf_path_memory(cell, n_scf_k: int, n_chunk_k: int, nranks: int,
                           available_bytes: float | None = None) -> None:
    """Refuse band-path chunks whose GDF rebuild cannot fit in memory.

    PySCF's ``get_bands`` with GDF builds 3-index integrals for every pair of
    an SCF k and a band k whose difference is new; off-mesh path points make
    every pair new: about 3 x n_scf_k x n_chunk_k x nao^2 x naux x 16 bytes per
    rank (measured: 23 GB for Si cc-pVTZ, 27 x 16 k, naux 242, against 7.7 GB
    for the bare integrals)."""
    from pyscf.pbc.df import df, incore
    naux = incore.make_auxcell(cell, df.GDF(cell).auxbasis).nao_nr()
    per_k = 3.0 * n_scf_k * cell.nao_nr() ** 2 * naux * 16
    if available_bytes is None:
        import psutil
        available_bytes = float(psutil.virtual_memory().available)
    if per_k * n_chunk_k * nranks > 0.8 * available_bytes:
        fit = int(0.8 * available_bytes // (per_k * nranks))
        raise BandsInputError(
            f"bands.band_path_npoints with GDF (all-electron) bands: each path chunk of "
            f"{n_chunk_k} k needs about {per_k * n_chunk_k / 2**30:.3g} GiB per rank ({nranks} "
            f"rank(s)) for PySCF's 3-index integrals against the {n_scf_k} SCF k-points, and "
            f"this machine has {available_bytes / 2**30:.3g} GiB available; set "
            f"bands.band_path_npoints: 0 or bands.chunk_size <= {max(fit, 0)} "
            "(every chunk rebuilds the integrals)")


def _target_gap(material, sec) -> float | None:
    if sec["scissor_gap_ev"] is not None:
        return float(sec["scissor_gap_ev"])
    for attr in ("scissor_gap_ev", "gap_ev"):
        v = getattr(material, attr, None)
        if v is not None:
            return float(v)
    return None


def _merge(ctx, sec, plan, store, out_path: Path, name: str):
    """Rank 0: gather the unit files into bands.h5 (+ plots), atomically."""
    from dmca_hpc.electronic.symmetry import irreducible_mesh
    from dmca_hpc.units import HARTREE_EV
    units, nocc, nbands = plan["units"], plan["nocc"], plan["nbands"]
    nk, npath = len(plan["work_kpts"]), len(plan["path_frac"])
    energies = coeffs = None
    path_e = np.zeros((npath, nbands))
    for i, (kind, s, t) in enumerate(units):
        arrays, attrs = store.load(i)
        if (attrs.get("kind"), int(attrs.get("start", -1)), int(attrs.get("stop", -1))) != (kind, s, t):
            raise RuntimeError(f"unit file {store.path(i)} holds {attrs.get('kind')} "
                               f"{attrs.get('start')}-{attrs.get('stop')}, expected {kind} {s}-{t}")
        if kind == "mesh":
            if energies is None:
                nao = arrays["coeffs"].shape[1]
                energies = np.zeros((nk, nbands))
                coeffs = np.zeros((nk, nao, nbands), dtype=complex)
            energies[s:t] = arrays["energies"]
            coeffs[s:t] = arrays["coeffs"]
        else:
            path_e[s:t] = arrays["energies"]
    if plan["irreducible"]:  # states at the irreducible k -> the full mesh
        energies, coeffs = unfold_states(symmetry_kpoints(plan["cell_str"], sec["kmesh"]),
                                         energies, coeffs)
    gaps = gap_summary(energies, nocc, plan["mesh_frac"])
    target = _target_gap(ctx.material, sec)
    if target is None and sec["scissor_convention"] != "none":
        warnings.warn(f"bands: no experimental gap known for {name} (bands.scissor_gap_ev is "
                      "null and the material has none): no scissor applied")
    e_sc, sc = apply_scissor(energies, nocc, gaps["vbm_ev"], gaps["gap_indirect_ev"], target,
                             sec["scissor_convention"])
    ir = irreducible_mesh(plan["atoms"], sec["kmesh"], symprec=float(sec["symprec_angstrom"]))
    grid, dos = density_of_states(energies, float(sec["dos_sigma_ev"]), float(sec["dos_step_ev"]))
    path_info = {}
    if npath:
        bp, x, xs, labels = band_path(plan["atoms"], sec["band_path"], int(sec["band_path_npoints"]))
        pv = path_e[:, nocc - 1].max()
        ic = int(np.argmin(path_e[:, nocc]))
        seg, fr = segment_of(x[ic], xs, labels)
        path_info = {"x": x, "xs": xs, "labels": labels, "path": bp.path,
                     "cbm_segment": seg, "cbm_fraction": fr,
                     "gap_indirect_ev": float((path_e[:, nocc].min() - pv) * HARTREE_EV),
                     "vbm_ev": float(pv * HARTREE_EV)}

    if path_info:
        path_info.update(kpts_frac=plan["path_frac"], energies=path_e)
    write_bands(out_path, input_hash=plan["out_hash"], prov=ctx.prov, cell_str=plan["cell_str"],
                material=name, scf_path=plan["scf"], scf_hash=plan["scf_hash"],
                kmesh=sec["kmesh"], energy_above_gap_ev=float(sec["energy_above_gap_ev"]),
                nbands_warning=plan["warning"], kpts_frac=plan["mesh_frac"],
                kpts=plan["mesh_kpts"], energies=energies, energies_scissored=e_sc,
                coeffs=coeffs, nocc=nocc, scissor=sc, gaps=gaps, ibz=ir, dos_energy_ev=grid,
                dos=dos, dos_sigma_ev=float(sec["dos_sigma_ev"]),
                band_path=path_info or None)
    if sec["plots"]:
        plot_bands(Path(ctx.stage_dir), name, len(plan["mesh_frac"]), path_e, path_info, grid, dos,
                   gaps["vbm_ev"], nocc, sc)
