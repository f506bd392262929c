"""Detector target materials: built-in library and structure files.

Every built-in target is built with ASE from its experimental lattice
constant.  Numbers and sources:

* Lattice constants a [angstrom] near 300 K and low-temperature band gaps
  [eV]: shared/reference/README.md (Materials table), which follows
  Kittel, *Introduction to Solid State Physics*, 8th ed., tables 1.3 and 8.1,
  and Madelung, *Semiconductors: Data Handbook* (2004).
* Scissor gaps (the gap a form-factor table is shifted to by default):
  shared/design/physics.md ("default gaps": Si 1.11, Ge 0.67, GaAs 1.42,
  diamond 5.47, SiC 2.36, NaI 5.9, CsI 6.2 eV); these are the values the
  peer tables (QEdark, QCDark) use.
* Electron-hole pair energies eps [eV]: Si 3.6 (Essig et al. 2016, some
  tables use 3.8), Ge 2.9, GaAs 4.7 (physics.md), diamond 13.0 (Kozorezov
  et al. / Canali et al.), 3C-SiC 7.8 (Bertuccio & Casiraghi, for 4H 7.8 eV;
  used as an estimate).  NaI and CsI are scintillators: no pair energy is
  given (None).
* Densities [g/cm^3] (experimental, CRC Handbook): Si 2.329, Ge 5.323,
  GaAs 5.3176, C 3.515, SiC 3.21, NaI 3.667, CsI 4.51.  Tests compare them
  with the density of the built cell (cell mass / cell volume).
* CsI has the CsCl (B2) structure, not rocksalt (Wyckoff 1963).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dmca_hpc import units

__all__ = ["Material", "LIBRARY", "get_material", "material_from_spec",
           "list_materials", "check_structure", "StructureError"]


@dataclass(frozen=True)
class Material:
    """A detector target.

    Attributes:
        name: short name (``"Si"``).
        structure: ASE crystal structure name (``diamond``, ``zincblende``,
            ``rocksalt``, ``cesiumchloride``) or ``"file"``.
        formula: chemical formula of the primitive cell basis (``"GaAs"``).
        a_angstrom: cubic lattice constant [angstrom].
        gap_ev: experimental low-temperature band gap [eV] (None if unknown).
        gap_type: ``"indirect"`` or ``"direct"``.
        scissor_gap_ev: gap that form-factor tables are shifted to by
            default [eV] (physics.md; peer-table convention).
        pair_energy_ev: mean energy per electron-hole pair [eV] (None: not
            an ionization detector / unknown).
        density_g_cm3: experimental density [g/cm^3].
        structure_file: path of a structure file (only for ``"file"``).
        source: where the numbers come from.
    """

    name: str
    structure: str
    formula: str
    a_angstrom: float | None
    gap_ev: float | None
    gap_type: str | None
    scissor_gap_ev: float | None
    pair_energy_ev: float | None
    density_g_cm3: float | None
    structure_file: str | None = None
    source: str = ""

    def atoms(self):
        """Primitive cell as ``ase.Atoms`` (angstrom)."""
        if self.structure == "file":
            from ase.io import read
            # parallel=False: under mpi4py ASE's read/write otherwise run on
            # rank 0 and broadcast, a collective that deadlocks or corrupts
            # messages when only some ranks call it
            return read(self.structure_file, parallel=False)
        from ase.build import bulk
        return bulk(self.formula, self.structure, a=self.a_angstrom)

    @property
    def cell_volume_angstrom3(self) -> float:
        """Primitive cell volume [angstrom^3]."""
        return float(self.atoms().get_volume())

    @property
    def cell_mass_ev(self) -> float:
        """Mass of the primitive cell M_cell [eV] (sum of standard atomic
        weights, 1 u = AMU_EV eV)."""
        return float(self.atoms().get_masses().sum()) * units.AMU_EV

    @property
    def natoms(self) -> int:
        return len(self.atoms())

    def cell_density_g_cm3(self) -> float:
        """Density of the built cell [g/cm^3] (M_cell / V_cell)."""
        import scipy.constants as sc
        m_g = self.atoms().get_masses().sum() * sc.atomic_mass * 1e3
        return float(m_g / (self.cell_volume_angstrom3 * 1e-24))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description with units in the key names."""
        d = asdict(self)
        d["cell_volume_angstrom3"] = self.cell_volume_angstrom3
        d["cell_mass_ev"] = self.cell_mass_ev
        d["natoms"] = self.natoms
        return d


_KITTEL = "a: shared/reference/README.md (Kittel 8th ed.); gap: low-T experimental"

LIBRARY: dict[str, Material] = {m.name: m for m in [
    Material("Si", "diamond", "Si", 5.431, 1.17, "indirect", 1.11, 3.6, 2.329, source=_KITTEL),
    Material("Ge", "diamond", "Ge", 5.658, 0.74, "indirect", 0.67, 2.9, 5.323, source=_KITTEL),
    Material("GaAs", "zincblende", "GaAs", 5.653, 1.52, "direct", 1.42, 4.7, 5.3176, source=_KITTEL),
    Material("C", "diamond", "C", 3.567, 5.47, "indirect", 5.47, 13.0, 3.515, source=_KITTEL),
    Material("SiC", "zincblende", "SiC", 4.360, 2.36, "indirect", 2.36, 7.8, 3.21, source=_KITTEL),
    Material("NaI", "rocksalt", "NaI", 6.47, 5.9, "direct", 5.9, None, 3.667, source=_KITTEL),
    Material("CsI", "cesiumchloride", "CsI", 4.567, 6.2, "direct", 6.2, None, 4.51,
             source=_KITTEL + "; CsCl (B2) structure, Wyckoff 1963"),
]}

#: aliases users type
_ALIASES = {"diamond": "C", "3C-SiC": "SiC", "sic": "SiC", "gaas": "GaAs"}


class MaterialError(ValueError):
    """Unknown material or unreadable structure file."""


#: a material name is a directory name inside the run's output directory: letters,
#: digits, _ . -, not starting with '.' (so no '/', no '..', not absolute); the job
#: schema's materials[].name pattern (config/job.schema.json) is the same expression
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def check_plain_name(name, what: str = "name") -> str:
    """``name`` if it is a plain name (:data:`PLAIN_NAME`), else MaterialError
    saying what is expected (a name like ``../../evil`` would write outside
    the output directory)."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name):
        raise MaterialError(f"{what} {name!r} is not a plain name; expected letters, digits, _ . - "
                            "(not starting with '.'): it names the material's directory inside "
                            "the output directory")
    return name


def list_materials() -> list[str]:
    return list(LIBRARY)


def get_material(name: str) -> Material:
    """Built-in material by name (case-insensitive; ``diamond`` = ``C``)."""
    key = _ALIASES.get(name, _ALIASES.get(name.lower(), name))
    for k, m in LIBRARY.items():
        if k.lower() == key.lower():
            return m
    raise MaterialError(f"unknown material {name!r}; expected one of: "
                        f"{', '.join(LIBRARY)} (or a structure file path)")


def material_from_spec(spec: str | dict, base_dir: str | os.PathLike = ".") -> Material:
    """Material from a job-file entry: a library name, or a mapping
    ``{name, structure_file, gap_ev, pair_energy_ev, scissor_gap_ev}`` for a
    structure ASE can read (CIF, POSCAR, extxyz...), relative paths taken
    from ``base_dir`` (the job file's directory).  The name of a structure
    file's material must be a plain name (:func:`check_plain_name`): it is
    a directory of the run."""
    if isinstance(spec, str):
        return get_material(spec)
    if "structure_file" not in spec:
        m = get_material(spec["name"])
        over = {k: spec[k] for k in ("gap_ev", "pair_energy_ev", "scissor_gap_ev") if k in spec}
        return Material(**{**asdict(m), **over}) if over else m
    path = Path(spec["structure_file"])
    if not path.is_absolute():
        path = Path(base_dir) / path
    name = check_plain_name(spec.get("name") or path.stem)
    if not path.exists():
        raise MaterialError(f"structure_file {str(path)!r} does not exist")
    try:
        from ase.io import read
        atoms = read(str(path), parallel=False)
    except Exception as exc:
        raise MaterialError(f"structure_file {str(path)!r}: ASE cannot read it ({exc})") from exc
    gap = spec.get("gap_ev")
    return Material(name=name, structure="file", formula=atoms.get_chemical_formula(),
                    a_angstrom=None, gap_ev=gap, gap_type=None,
                    scissor_gap_ev=spec.get("scissor_gap_ev", gap),
                    pair_energy_ev=spec.get("pair_energy_ev"), density_g_cm3=None,
                    structure_file=str(path.resolve()), source=f"structure file {path}")



def resolve_atoms(material):
    """``ase.Atoms`` (angstrom) of a material given as a
    :class:`dmca_hpc.materials.Material` (anything with ``.atoms()``), an
    ``ase.Atoms``, a library name or a structure file path."""
    if material is None:
        raise MaterialError("no material given (the stage runs per material)")
    if hasattr(material, "atoms") and callable(material.atoms):
        return material.atoms()
    from ase import Atoms
    if isinstance(material, Atoms):
        return material.copy()
    if isinstance(material, (str, os.PathLike)):
        if Path(material).exists():
            from ase.io import read
            return read(str(material))
        return get_material(str(material)).atoms()
    raise MaterialError(f"cannot make a structure from {material!r}")


def material_name(material) -> str:
    if material is None:
        return "unknown"
    if hasattr(material, "name"):
        return str(material.name)
    if isinstance(material, (str, os.PathLike)):
        return Path(str(material)).stem if Path(str(material)).exists() else str(material)
    if hasattr(material, "get_chemical_formula"):
        return material.get_chemical_formula()
    return str(material)


class StructureError(ValueError):
    """A structure no DFT code can run (message names the atoms and the limit)."""


def check_structure(atoms, min_distance_angstrom: float = 0.5, name: str = "structure",
                    key: str = "min_distance_angstrom", periodic: bool = True) -> None:
    """Raise :class:`StructureError` when the structure has no atoms, a
    degenerate cell (volume below 1e-3 angstrom^3, or not 3D periodic when
    ``periodic``), a lattice vector shorter than ``min_distance_angstrom``,
    or two atoms (periodic images included) closer than
    ``min_distance_angstrom`` [angstrom].  ``key`` is the job key that sets
    the limit, named in the message.  Runs before PySCF or pw.x, whose
    integrals blow up or hang on overlapping nuclei."""
    import numpy as np
    from ase.neighborlist import neighbor_list
    if len(atoms) == 0:
        raise StructureError(f"{name}: structure has no atoms")
    vol = abs(float(np.linalg.det(atoms.cell.array)))
    if (periodic and not all(atoms.pbc)) or vol < 1e-3:
        raise StructureError(f"{name}: needs a 3D periodic cell with a positive volume (pbc="
                             f"{list(map(bool, atoms.pbc))}, volume {vol:.3g} angstrom^3): the "
                             "cell is degenerate")
    if min_distance_angstrom <= 0:
        return
    i, j, d = neighbor_list("ijd", atoms, float(min_distance_angstrom), self_interaction=False)
    if len(d):
        k = int(np.argmin(d))
        sym = atoms.get_chemical_symbols()
        raise StructureError(
            f"{name}: overlapping atoms: atom {int(i[k])} ({sym[i[k]]}) and atom {int(j[k])} "
            f"({sym[j[k]]}) are {d[k]:.3f} angstrom apart (periodic images included), below "
            f"{key} = {min_distance_angstrom} angstrom")
    lengths = atoms.cell.lengths()
    if lengths.min() < min_distance_angstrom:
        raise StructureError(f"{name}: lattice vector of length {lengths.min():.3f} angstrom is "
                             f"below {key} = {min_distance_angstrom} angstrom")
