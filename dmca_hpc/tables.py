"""Crystal form-factor tables: one in-memory type, three file formats.

The form-factor engine writes tables with :func:`write_table`; the rate,
reach and uncertainty code reads any supported file with :func:`read_table`.

Convention (shared/design/physics.md, QCDark): ``f2[a, b]`` is the
dimensionless |f_crystal(q_a, E_b)|^2 with k weights ``w_k = 1/N_k`` and bin
centres ``q_a = q_min + (a + 1/2) dq`` (q in alpha*m_e) and
``E_b = E_min + (b + 1/2) dE`` (eV).

Formats understood by :func:`read_table` (auto-detected):

1. **QCDark HDF5** (asingal14/QCDark ``results/*.hdf5``): dataset
   ``results/f2`` [nq, nE]; attributes of ``results``: ``dq`` [alpha m_e],
   ``dE`` [eV], ``VCell`` [eV^-3], ``mCell`` [eV], ``bandgap`` [eV],
   ``scissor`` (bool, optional in old files); group ``run_settings`` with
   ``a`` (angstrom), ``kpts``, ``binning``, attrs ``atom``, ``basis``, ``xc``...
2. **dmca_hpc HDF5**: exactly the QCDark layout (so QCDark's own reader opens
   it) plus: a ``units`` attribute on every dataset, bin-centre datasets
   ``results/q`` [alpha m_e] and ``results/E`` [eV], and root attributes
   ``format = "dmca_hpc-formfactor"``, ``material``, ``convention``,
   ``metadata`` (JSON: k mesh, basis, functional, scissor...), ``provenance``.
3. **QEdark text** (the ``C.Si137.dat`` / ``C.Ge137.dat`` files of Essig et
   al. 2016, as read by obscura): one number per line (or whitespace
   separated), E outer (500 bins of 0.1 eV), q inner (900 bins of
   0.02 alpha m_e).  QEdark's k weights sum to 2 (not 1) and its tables carry
   an extra ``w_k / 4`` factor with ``w_k = 2/137`` and a material energy
   prefactor (Si 2.0 eV, Ge 1.8 eV); the conversion to the QCDark convention
   used here is ``f2[qi, Ei] = prefactor_eV * (qi + 1) / dE_eV * (w_k / 4) *
   raw[Ei, qi]`` (obscura, src/Target_Crystal.cpp).  The text file carries no
   cell data, so the cell mass, volume and gap come from the built-in Si/Ge
   values of that paper or from keyword arguments.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dmca_hpc import units as U

#: root attribute ``format`` of our HDF5 tables
FORMAT_TAG = "dmca_hpc-formfactor"
#: version of our table layout (root attribute ``table_version``)
TABLE_VERSION = 1
#: convention string stamped into our tables
CONVENTION = ("QCDark: |f_crystal|^2 dimensionless, w_k = 1/N_k, bin centres "
              "(a+1/2)dq [alpha m_e] and (b+1/2)dE [eV], physics.md")

#: attributes of ``results`` that every HDF5 table must carry: name -> meaning
REQUIRED_RESULT_ATTRS = {
    "dq": "q bin width [alpha m_e]",
    "dE": "energy bin width [eV]",
    "VCell": "unit-cell volume [eV^-3]",
    "mCell": "unit-cell mass [eV]",
    "bandgap": "band gap after scissor [eV]",
}

#: directory of the tables shipped with the package
from dmca_hpc.resources import tables_dir  # noqa: E402

DATA_DIR = tables_dir()


class TableFormatError(ValueError):
    """A table file is unreadable or lacks a required item (the message names
    the file, the item and what was expected)."""


@dataclass
class FormFactorTable:
    """A binned crystal form factor |f_crystal(q, E)|^2 and its cell data.

    Attributes:
        f2: array [nq, nE], dimensionless |f_crystal|^2 (physics.md convention).
        dq_ame: q bin width [alpha m_e].
        de_ev: energy bin width [eV].
        vcell_ev3: unit-cell volume [eV^-3] (QCDark's ``VCell``).
        cell_mass_ev: unit-cell mass [eV].
        gap_ev: band gap used for the table (after scissor) [eV].
        scissor: scissor information: True/False, or a string naming the
            scheme (``"qcdark"`` conduction-only, ``"qedark"`` symmetric), or
            ``"unknown"`` for old files.
        material: material name ("Ge", "Si", ...), "" if unknown.
        metadata: free-form dict (k mesh, basis, functional, source file...).
        q_min_ame, e_min_ev: lower edge of the first bin (0 for every table
            we know; kept because QCDark's ``binning`` records it).
    """

    f2: np.ndarray
    dq_ame: float
    de_ev: float
    vcell_ev3: float
    cell_mass_ev: float
    gap_ev: float
    scissor: Any = "unknown"
    material: str = ""
    metadata: dict = field(default_factory=dict)
    q_min_ame: float = 0.0
    e_min_ev: float = 0.0

    def __post_init__(self):
        self.f2 = np.ascontiguousarray(self.f2, dtype=np.float64)
        if self.f2.ndim != 2:
            raise TableFormatError(f"f2 must be 2-D [nq, nE], got shape {self.f2.shape}")
        for name in ("dq_ame", "de_ev", "vcell_ev3", "cell_mass_ev"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise TableFormatError(f"{name} must be a positive number, got {v!r}")
            setattr(self, name, v)
        self.gap_ev = float(self.gap_ev)
        if not np.all(np.isfinite(self.f2)):
            raise TableFormatError("f2 contains NaN or inf")

    # -- grids -------------------------------------------------------------
    @property
    def nq(self) -> int:
        return self.f2.shape[0]

    @property
    def ne(self) -> int:
        return self.f2.shape[1]

    @property
    def q_ame(self) -> np.ndarray:
        """q bin centres [alpha m_e]."""
        return self.q_min_ame + (np.arange(self.nq) + 0.5) * self.dq_ame

    @property
    def q_ev(self) -> np.ndarray:
        """q bin centres [eV]."""
        return self.q_ame * U.ALPHA_ME_EV

    @property
    def e_ev(self) -> np.ndarray:
        """Energy bin centres [eV]."""
        return self.e_min_ev + (np.arange(self.ne) + 0.5) * self.de_ev

    # -- cell --------------------------------------------------------------
    @property
    def cell_volume_bohr3(self) -> float:
        """Unit-cell volume [bohr^3] (1 bohr = 1/(alpha m_e))."""
        return self.vcell_ev3 * U.ALPHA_ME_EV**3

    @property
    def cell_volume_angstrom3(self) -> float:
        """Unit-cell volume [angstrom^3]."""
        return self.cell_volume_bohr3 * U.BOHR_ANGSTROM**3

    def same_grid(self, other: "FormFactorTable") -> bool:
        return (self.f2.shape == other.f2.shape and np.isclose(self.dq_ame, other.dq_ame)
                and np.isclose(self.de_ev, other.de_ev))


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

def read_table(path: str | os.PathLike, **qedark_kw) -> FormFactorTable:
    """Read a form-factor table, detecting its format (module docstring).

    ``qedark_kw`` are passed to :func:`read_qedark_text` for text files.
    Every message starts with the file name and says what was expected:
    FileNotFoundError if the path does not exist; :class:`TableFormatError`
    for a directory, an unreadable (truncated, damaged) HDF5 file, a missing
    item, a bin width or cell value that is not a positive number, NaN /
    infinite or negative |f|^2 bins, and an ``f2`` whose shape disagrees with
    the file's own ``run_settings/binning`` (a transposed table).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected a form-factor table: HDF5 or "
                                "QEdark text)")
    if path.is_dir():
        raise TableFormatError(f"{path}: is a directory (expected a form-factor table file: HDF5 "
                               "or QEdark text)")
    import h5py
    if h5py.is_hdf5(path):
        try:
            return _read_h5(path)
        except OSError as exc:  # h5py: truncated file, damaged B-tree, unreadable chunk
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TableFormatError(f"{path}: HDF5 file cannot be read ({why}); expected a complete "
                                   "form-factor table (truncated or damaged copy?)") from None
    return read_qedark_text(path, **qedark_kw)


def _attr(obj, name, path, where, meaning):
    if name not in obj.attrs:
        raise TableFormatError(
            f"{path}: attribute '{name}' missing from '{where}' (expected {meaning})")
    return obj.attrs[name]


def _number_attr(obj, name, path, where, meaning, positive=True) -> float:
    """A finite number attribute (> 0 when ``positive``, else >= 0), or
    TableFormatError naming the file, the attribute and what was expected."""
    raw = _attr(obj, name, path, where, meaning)
    try:
        v = float(np.asarray(raw).reshape(-1)[0]) if np.size(raw) == 1 else None
    except (TypeError, ValueError):
        v = None
    if v is None or not np.isfinite(v) or (v <= 0 if positive else v < 0):
        want = "a positive number" if positive else "a number >= 0"
        raise TableFormatError(f"{path}: attribute '{name}' of '{where}' is {_to_py(raw)!r}; "
                               f"expected {want}: {meaning}")
    return v


def check_f2(f2, path, item: str = "dataset 'results/f2'") -> np.ndarray:
    """``f2`` as a 2-D float array of finite |f|^2 >= 0, or TableFormatError
    naming the file, the dataset, the first bad bin and what was expected
    (a negative |f|^2 gives negative rates that look like numbers)."""
    try:
        a = np.asarray(f2, dtype=np.float64)
    except (TypeError, ValueError):
        raise TableFormatError(f"{path}: {item} is not numeric; expected |f_crystal|^2 "
                               "[nq, nE] numbers") from None
    if a.ndim != 2:
        raise TableFormatError(f"{path}: {item} has shape {a.shape}; expected a 2-D "
                               "array [nq, nE]")
    for bad, what in ((~np.isfinite(a), "NaN or infinite"), (a < 0, "negative")):
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            raise TableFormatError(f"{path}: {item} has {int(bad.sum())} {what} bins "
                                   f"(first [{i}, {j}] = {float(a[i, j])!r}); expected finite "
                                   "|f_crystal|^2 >= 0")
    return a


def _material_from_atom_string(atom) -> str:
    """'Ge 0 0 0; Ge 1.4 ...' -> 'Ge'; 'Ga ...; As ...' -> 'GaAs'."""
    if isinstance(atom, bytes):
        atom = atom.decode()
    syms = []
    for line in str(atom).replace(";", "\n").splitlines():
        parts = line.split()
        if parts and parts[0] not in syms and parts[0].isalpha():
            syms.append(parts[0])
    return "".join(syms)


def _to_py(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _read_h5(path: Path) -> FormFactorTable:
    import h5py
    with h5py.File(path, "r") as f:
        if not isinstance(f.get("results"), h5py.Group) or "f2" not in f["results"]:
            raise TableFormatError(
                f"{path}: dataset 'results/f2' missing (expected |f_crystal|^2 [nq, nE], "
                "QCDark / dmca_hpc layout)")
        res = f["results"]
        vals = {k: _number_attr(res, k, path, "results", m, positive=(k != "bandgap"))
                for k, m in REQUIRED_RESULT_ATTRS.items()}
        scissor = _to_py(res.attrs["scissor"]) if "scissor" in res.attrs else "unknown"
        f2 = check_f2(res["f2"][()], path)
        ours = f.attrs.get("format", b"") in (FORMAT_TAG, FORMAT_TAG.encode())
        meta: dict = {}
        material = ""
        q_min = e_min = 0.0
        if "run_settings" in f:
            rs = f["run_settings"]
            for k, v in rs.attrs.items():
                meta[k] = _to_py(v)
            for k in rs:
                meta[k] = _to_py(rs[k][()])
            if "atom" in rs.attrs:
                material = _material_from_atom_string(rs.attrs["atom"])
            if "binning" in rs:
                b = np.asarray(rs["binning"][()], dtype=float)
                if b.shape == (2, 3):
                    q_min, e_min = float(b[0, 0]), float(b[1, 0])
                    _check_binning(path, b, f2.shape, vals["dq"], vals["dE"])
        if ours:
            material = _to_py(f.attrs.get("material", material)) or material
            for k in ("metadata", "provenance"):
                if k not in f.attrs:
                    continue
                try:
                    v = json.loads(_to_py(f.attrs[k]))
                except (TypeError, ValueError):
                    raise TableFormatError(f"{path}: root attribute '{k}' is not JSON; expected "
                                           "the JSON object dmca_hpc writes") from None
                if k == "provenance":
                    meta["provenance"] = v
                elif isinstance(v, dict):
                    meta.update(v)
                else:
                    raise TableFormatError(f"{path}: root attribute 'metadata' is a JSON "
                                           f"{type(v).__name__}; expected a JSON object")
            meta["format"] = "dmca_hpc"
        else:
            meta["format"] = "qcdark"
        meta["source_file"] = str(path)
    return FormFactorTable(f2=f2, dq_ame=vals["dq"], de_ev=vals["dE"], vcell_ev3=vals["VCell"],
                           cell_mass_ev=vals["mCell"], gap_ev=vals["bandgap"], scissor=scissor,
                           material=material, metadata=meta, q_min_ame=q_min, e_min_ev=e_min)


def _check_binning(path, b, shape, dq, de) -> None:
    """The table agrees with its own ``run_settings/binning`` [[q_min, dq, nq],
    [E_min, dE, nE]]: a transposed f2 (nE x nq) would otherwise be read as
    q bins of the wrong width and give wrong rates silently."""
    nq, ne = b[0, 2], b[1, 2]
    if (nq, ne) != tuple(float(x) for x in shape):
        hint = " (transposed?)" if (ne, nq) == tuple(float(x) for x in shape) else ""
        raise TableFormatError(f"{path}: dataset 'results/f2' has shape {tuple(shape)} but "
                               f"'run_settings/binning' says nq = {nq:g}, nE = {ne:g}{hint}; "
                               "expected f2 of shape [nq, nE]")
    for name, v, ref in (("dq", b[0, 1], dq), ("dE", b[1, 1], de)):
        if not np.isclose(v, ref, rtol=1e-6, atol=0):
            raise TableFormatError(f"{path}: 'run_settings/binning' says {name} = {v:g} but "
                                   f"attribute '{name}' of 'results' is {ref:g}; expected one bin width")


#: QEdark (Essig et al. 2016) cell data and energy prefactor for the
#: published Si and Ge text tables: lattice constant [angstrom] (diamond,
#: 2 atoms per primitive cell), mean atomic mass [amu], gap [eV], prefactor [eV].
QEDARK_MATERIALS = {
    "Si": {"a_angstrom": 5.431, "atom_mass_amu": 28.08, "gap_ev": 1.11, "prefactor_ev": 2.0},
    "Ge": {"a_angstrom": 5.658, "atom_mass_amu": 72.6, "gap_ev": 0.67, "prefactor_ev": 1.8},
}
#: QEdark's k weight factor (its weights sum to 2 over 137 k points)
QEDARK_WK = 2.0 / 137.0


def read_qedark_text(path: str | os.PathLike, material: str | None = None,
                     ne: int = 500, dq_ame: float = 0.02, de_ev: float = 0.1,
                     prefactor_ev: float | None = None, cell_mass_ev: float | None = None,
                     vcell_ev3: float | None = None, gap_ev: float | None = None) -> FormFactorTable:
    """Read a QEdark text table and convert it to the QCDark convention.

    Args:
        path: the text file (E outer, q inner).
        material: "Si" or "Ge" to use QEdark's cell data; guessed from the
            file name (``C.Si137.dat``) when None.  Other materials need
            ``prefactor_ev``, ``cell_mass_ev``, ``vcell_ev3`` and ``gap_ev``.
        ne: number of energy bins (QEdark: 500); nq = (number of values) / ne.
        dq_ame, de_ev: bin widths [alpha m_e], [eV].
    """
    path = Path(path)
    try:
        raw = np.loadtxt(path, dtype=float).ravel()
    except ValueError as exc:
        raise TableFormatError(f"{path}: not an HDF5 file and not a QEdark text table "
                               f"(numbers, E outer, q inner): {exc}") from None
    if raw.size == 0 or raw.size % ne:
        raise TableFormatError(f"{path}: QEdark text table has {raw.size} values, expected a "
                               f"multiple of ne={ne} (E outer, q inner)")
    nq = raw.size // ne
    if material is None:
        for name in QEDARK_MATERIALS:
            if f".{name}" in path.name or path.name.startswith(name):
                material = name
    ref = QEDARK_MATERIALS.get(material or "", {})
    need = {"prefactor_ev": prefactor_ev, "cell_mass_ev": cell_mass_ev,
            "vcell_ev3": vcell_ev3, "gap_ev": gap_ev}
    if not ref:
        missing = [k for k, v in need.items() if v is None]
        if missing:
            raise TableFormatError(
                f"{path}: QEdark text table of unknown material {material!r}: give "
                f"{', '.join(missing)} (built-in: {sorted(QEDARK_MATERIALS)})")
    if prefactor_ev is None:
        prefactor_ev = ref["prefactor_ev"]
    if cell_mass_ev is None:
        cell_mass_ev = 2.0 * ref["atom_mass_amu"] * U.AMU_EV
    if vcell_ev3 is None:
        v_bohr3 = (ref["a_angstrom"] * U.ANGSTROM_BOHR) ** 3 / 4.0  # fcc primitive cell
        vcell_ev3 = v_bohr3 / U.ALPHA_ME_EV**3
    if gap_ev is None:
        gap_ev = ref["gap_ev"]
    check_f2(raw.reshape(ne, nq), path, "the table's values [nE, nq] (E outer, q inner)")
    table = raw.reshape(ne, nq).T  # -> [nq, nE]
    qi = np.arange(1, nq + 1, dtype=float)[:, None]
    f2 = prefactor_ev * qi / de_ev * (QEDARK_WK / 4.0) * table
    return FormFactorTable(f2=f2, dq_ame=dq_ame, de_ev=de_ev, vcell_ev3=vcell_ev3,
                           cell_mass_ev=cell_mass_ev, gap_ev=gap_ev, scissor="qedark",
                           material=material or "",
                           metadata={"format": "qedark-text", "source_file": str(path),
                                     "qedark_prefactor_ev": prefactor_ev, "qedark_wk": QEDARK_WK})


def write_qedark_text(path: str | os.PathLike, table: FormFactorTable,
                      prefactor_ev: float) -> Path:
    """Write ``table`` in QEdark's text convention (inverse of
    :func:`read_qedark_text`); used for tests and for feeding QEdark-era tools."""
    from dmca_hpc.hpc.checkpoint import atomic_path
    qi = np.arange(1, table.nq + 1, dtype=float)[:, None]
    raw = table.f2 / (prefactor_ev * qi / table.de_ev * (QEDARK_WK / 4.0))
    with atomic_path(path) as tmp:
        np.savetxt(tmp, raw.T.ravel(), fmt="%.17g")
    return Path(path)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

def write_table(path: str | os.PathLike, table: FormFactorTable, input_hash: str = "",
                prov: Mapping | None = None) -> Path:
    """Write ``table`` in our HDF5 format (QCDark layout + units + metadata),
    atomically (:func:`dmca_hpc.hpc.checkpoint.atomic_h5`)."""
    from dmca_hpc.hpc.checkpoint import atomic_h5, canonical_json, write_dataset
    path = Path(path)
    meta = dict(table.metadata)
    meta.pop("provenance", None)
    meta.pop("source_file", None)
    meta.pop("format", None)
    with atomic_h5(path, input_hash=input_hash, stage="formfactor", prov=prov) as f:
        f.attrs["format"] = FORMAT_TAG
        f.attrs["table_version"] = TABLE_VERSION
        f.attrs["material"] = table.material
        f.attrs["convention"] = CONVENTION
        f.attrs["metadata"] = canonical_json(meta)
        res = f.create_group("results")
        write_dataset(res, "f2", table.f2, "1",
                      "|f_crystal(q, E)|^2, [nq, nE], QCDark convention (w_k = 1/N_k)")
        write_dataset(res, "q", table.q_ame, "alpha*m_e", "q bin centres")
        write_dataset(res, "E", table.e_ev, "eV", "energy bin centres")
        res.attrs["dq"] = table.dq_ame
        res.attrs["dE"] = table.de_ev
        res.attrs["VCell"] = table.vcell_ev3
        res.attrs["mCell"] = table.cell_mass_ev
        res.attrs["bandgap"] = table.gap_ev
        sc = table.scissor
        res.attrs["scissor"] = sc if isinstance(sc, (bool, np.bool_, str)) else str(sc)
        res.attrs["units"] = canonical_json({"dq": "alpha*m_e", "dE": "eV", "VCell": "eV^-3",
                                             "mCell": "eV", "bandgap": "eV"})
        rs = f.create_group("run_settings")
        write_dataset(rs, "binning", np.array([[table.q_min_ame, table.dq_ame, table.nq],
                                               [table.e_min_ev, table.de_ev, table.ne]]),
                      "alpha*m_e|eV|1",
                      "[[q_min, dq, nq], [E_min, dE, nE]]; row 0 in alpha*m_e, row 1 in eV")
        # QCDark's run_settings attributes, when the metadata has them
        for k in ("atom", "basis", "xc", "ecp", "df", "method", "numval", "numcon"):
            if k in meta and isinstance(meta[k], (str, int, float)):
                rs.attrs[k] = meta[k]
        for k, unit in (("a", "angstrom"), ("kpts", "bohr^-1"), ("Rvec", "bohr")):
            if k in meta:
                write_dataset(rs, k, np.asarray(meta[k], dtype=float), unit)
    return path


def table_for_material(name: str) -> Path:
    """Path of the shipped table ``dmca_hpc/data/tables/<name>.hdf5``; library
    names and aliases resolve case-insensitively (``diamond`` -> ``C.hdf5``,
    ``si`` -> ``Si.hdf5``).

    Raises FileNotFoundError listing the shipped tables when absent."""
    from dmca_hpc.materials import get_material
    try:
        name = get_material(name).name
    except (KeyError, ValueError):
        pass  # not a library material: look for the file as named
    p = DATA_DIR / f"{name}.hdf5"
    if p.exists():
        return p
    shipped = sorted(x.stem for x in DATA_DIR.glob("*.hdf5")) if DATA_DIR.is_dir() else []
    raise FileNotFoundError(
        f"no shipped form-factor table for material {name!r} (looked for {p}); shipped "
        f"tables: {', '.join(shipped) if shipped else 'none yet'}; pass a table file instead")


def load(table: "FormFactorTable | str | os.PathLike | None" = None,
         material: str | None = None) -> FormFactorTable:
    """A table from a FormFactorTable, a path, or a shipped material name."""
    if isinstance(table, FormFactorTable):
        return table
    if table is not None:
        return read_table(table)
    if material:
        return read_table(table_for_material(material))
    raise ValueError("give a form-factor table (path) or a material name")
