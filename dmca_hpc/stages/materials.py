"""Stage ``materials``: the target's structure and properties, with units."""
from __future__ import annotations


def run_stage(ctx) -> dict:
    """Pipeline stage ``materials``: writes the target's structure and
    properties (material.h5 with units, structure.cif) into the stage dir."""
    import time
    m = ctx.material
    out = {}
    if ctx.comm.Get_rank() == 0:
        t0, c0 = time.perf_counter(), time.process_time()
        import numpy as np
        from ase.io import write
        from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
        atoms = m.atoms()
        path = ctx.stage_dir / "material.h5"
        with atomic_h5(path, input_hash=ctx.input_hash, stage="materials", prov=ctx.prov) as f:
            f.attrs["material"] = m.name
            f.attrs["structure"] = m.structure
            f.attrs["formula"] = m.formula
            write_dataset(f, "cell", np.asarray(atoms.cell), "angstrom", "lattice vectors (rows)")
            write_dataset(f, "positions", atoms.positions, "angstrom", "cartesian positions")
            write_dataset(f, "numbers", atoms.numbers, "1", "atomic numbers")
            for key, unit in (("gap_ev", "eV"), ("scissor_gap_ev", "eV"), ("pair_energy_ev", "eV"),
                              ("density_g_cm3", "g/cm^3"), ("a_angstrom", "angstrom")):
                val = getattr(m, key)
                write_dataset(f, key, np.nan if val is None else val, unit)
            write_dataset(f, "cell_mass_ev", m.cell_mass_ev, "eV", "M_cell")
            write_dataset(f, "cell_volume_angstrom3", m.cell_volume_angstrom3, "angstrom^3")
        cif = ctx.stage_dir / "structure.cif"
        write(str(cif), atoms, parallel=False)
        out = {"material": str(path), "structure": str(cif)}
        from dmca_hpc.hpc.parallel import peak_memory_mb
        ctx.telemetry.record("materials", m.name, "ok", time.perf_counter() - t0,
                             time.process_time() - c0, peak_memory_mb(),
                             physics={"material": m.name})
    return out
