"""Crystal form-factor tables: one in-memory type, four file formats.

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
   ``results/q`` [alpha m_e] and ``results/E`` [eV], optionally
   ``results/f2_sigma`` [nq, nE] (per-bin 1-sigma of f2, see
   :attr:`FormFactorTable.f2_sigma`), and root attributes
   ``format = "dmca_hpc-formfactor"``, ``material``, ``convention``,
   ``metadata`` (JSON: k mesh, basis, functional, scissor...), ``provenance``.
3. **QEdark text** (the ``C.Si137.dat`` / ``C.Ge137.dat`` files of Essig et
   al. 2016, as obscura reads them in ``src/Target_Crystal.cpp``): numbers
   separated by white space (one per line), no header line, E outer (500
   bins of 0.1 eV), q inner (900 bins of 0.02 alpha m_e).  obscura turns the
   number ``raw[Ei, qi]`` into |f|^2 as ``prefactor * (qi + 1) / dE * w_k / 4
   * raw`` with ``w_k = 2/137`` (QEdark's 137 k weights sum to 2) and
   ``prefactor`` = 2.0 eV (Si), 1.8 eV (Ge); :func:`read_qedark_text` applies
   the same factor (:func:`qedark_text_factor`) and keeps bin (qi, Ei) as our
   bin (qi, Ei) (centres (qi + 1/2) dq, (Ei + 1/2) dE; obscura evaluates the
   same numbers at (qi + 1) dq, (Ei + 1) dE).  The text file carries no cell
   data, so the cell mass, volume and gap come from the built-in Si/Ge values
   of that paper or from keyword arguments.  :func:`write_qedark_text`
   writes the layout obscura reads.
4. **DMCA exciton tables** (the layout of the original DMCA, for
   exciton-corrected |f|^2 from an external Bethe-Salpeter code, e.g. NaI
   and GaAs of arXiv:2507.14345), recognised by a root dataset
   ``form_factors``; read by :func:`read_exciton_h5`, whose docstring states
   the conventions (k weights, units, metadata keys, uncertainty, binning).
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
        f2_sigma: None, or array [nq, nE]: the 1-sigma uncertainty of each
            bin of ``f2`` (absolute, dimensionless like f2), e.g. of an
            exciton correction (:func:`read_exciton_h5`) or of a DFT
            systematic (:func:`systematic_sigma`).  Kept with the
            table (and written as ``results/f2_sigma``); the rate engine
            uses ``f2`` only, reach's uncertainty bands draw it
            (:func:`dmca_hpc.detection.reach.draw_table`).
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
    f2_sigma: np.ndarray | None = None

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
        if self.f2_sigma is not None:
            sig = np.ascontiguousarray(self.f2_sigma, dtype=np.float64)
            if sig.shape != self.f2.shape:
                raise TableFormatError(f"f2_sigma has shape {sig.shape}; expected f2's "
                                       f"{self.f2.shape} (one 1-sigma per bin)")
            if not np.all(np.isfinite(sig)) or np.any(sig < 0):
                raise TableFormatError("f2_sigma must be finite and >= 0 (1-sigma per bin)")
            self.f2_sigma = sig

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
    A DMCA exciton table (root dataset ``form_factors``) gives its corrected
    table (:func:`read_exciton_h5`).
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
        return _guard_h5(path, _read_h5)
    return read_qedark_text(path, **qedark_kw)


def _guard_h5(path: Path, reader, *args):
    """``reader(path, *args)`` with h5py's OSError (truncated file, damaged
    B-tree, unreadable chunk) turned into one TableFormatError line."""
    try:
        return reader(path, *args)
    except OSError as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TableFormatError(f"{path}: HDF5 file cannot be read ({why}); expected a complete "
                               "form-factor table (truncated or damaged copy?)") from None


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
            if "form_factors" in f:
                return _read_exciton(f, path, "corrected")
            raise TableFormatError(
                f"{path}: dataset 'results/f2' missing (expected |f_crystal|^2 [nq, nE], "
                "QCDark / dmca_hpc layout, or 'form_factors' [nk, nq, nE], DMCA exciton layout)")
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
        sigma = None
        if "f2_sigma" in res:
            sigma = check_f2(res["f2_sigma"][()], path, "dataset 'results/f2_sigma'")
            if sigma.shape != f2.shape:
                raise TableFormatError(f"{path}: dataset 'results/f2_sigma' has shape "
                                       f"{sigma.shape}; expected f2's {f2.shape} (1-sigma per bin)")
    return FormFactorTable(f2=f2, dq_ame=vals["dq"], de_ev=vals["dE"], vcell_ev3=vals["VCell"],
                           cell_mass_ev=vals["mCell"], gap_ev=vals["bandgap"], scissor=scissor,
                           material=material, metadata=meta, q_min_ame=q_min, e_min_ev=e_min,
                           f2_sigma=sigma)


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


# ---------------------------------------------------------------------------
# DMCA exciton tables
# ---------------------------------------------------------------------------

#: datasets every DMCA exciton table holds: name -> what is expected
EXCITON_DATASETS = {
    "form_factors": "the exciton-corrected per-k |f_crystal|^2 [nk, nq, nE] (dimensionless)",
    "kpoints": "the k points of the first axis of form_factors [nk, 3]",
    "qpoints": "q bin centres [nq] with a 'units' attribute",
    "omega": "energy-transfer bin centres [nE] with a 'units' attribute",
    "metadata": "a JSON-object string dataset (or a group of attributes) with the key "
                "'material' and, unless it is a library material, cell_mass_ev, "
                "cell_volume_ev3 and gap_ev",
}
#: accepted ``units`` of ``qpoints`` (spaces and '*' ignored) -> factor to alpha m_e
Q_UNITS = {"alpham_e": 1.0, "alpha_me": 1.0, "alphame": 1.0, "bohr^-1": 1.0, "1/bohr": 1.0,
           "eV": 1.0 / U.ALPHA_ME_EV, "keV": 1e3 / U.ALPHA_ME_EV, "MeV": 1e6 / U.ALPHA_ME_EV}
#: accepted ``units`` of ``omega`` (spaces ignored) -> factor to eV
OMEGA_UNITS = {"eV": 1.0, "meV": 1e-3, "keV": 1e3, "hartree": U.HARTREE_EV,
               "Hartree": U.HARTREE_EV, "Ha": U.HARTREE_EV, "Ry": U.RYDBERG_EV}
#: cell keys of the exciton-table metadata: name -> meaning
EXCITON_CELL_KEYS = {
    "cell_mass_ev": "the unit-cell mass [eV]",
    "cell_volume_ev3": "the unit-cell volume [eV^-3] (or cell_volume_angstrom3 [angstrom^3])",
    "gap_ev": "the band gap the charge (Q) model counts from [eV]",
}
#: relative tolerance (in bin widths) for uniform bins starting at 0
BIN_TOLERANCE = 1e-6


def read_exciton_h5(path: str | os.PathLike, which: str = "corrected") -> FormFactorTable:
    """Read a DMCA exciton table as a :class:`FormFactorTable`.

    Layout (HDF5, root datasets; :data:`EXCITON_DATASETS`):

    * ``form_factors`` [nk, nq, nE]: the exciton-corrected |f_crystal|^2,
      resolved by the k of the first axis.  Slice ``k`` is normalised as a
      QCDark table of that k alone (weight 1), so the table is
      ``f2[q, E] = sum_k w_k form_factors[k, q, E]`` with ``w_k`` from the
      optional dataset ``kweights`` [nk] (finite, >= 0, summing to 1 within
      1e-6: QEdark-style weights summing to 2 are refused) or, without it,
      equal weights ``w_k = 1/N_k`` (QCDark, physics.md).  A file with
      ``nk = 1`` is simply a table.  Only the weighted sum is used; the
      slices are not interpreted one by one.
    * ``kpoints`` [nk, 3]: the k of each slice (kept in the metadata, with
      its ``units`` attribute if any; not used in any number).
    * ``qpoints`` [nq], ``omega`` [nE]: bin centres, each with a ``units``
      attribute: q in ``alpha m_e`` (also ``alpha*m_e``, ``bohr^-1``,
      ``eV``, ``keV``, ``MeV``: :data:`Q_UNITS`), omega in ``eV`` (also
      ``meV``, ``keV``, ``hartree``, ``Ry``: :data:`OMEGA_UNITS`).  The
      centres must be uniform and start at 0, ``(a + 1/2) d`` within
      :data:`BIN_TOLERANCE` bin widths, as our tables are; any other grid is
      refused rather than resampled (redistributing a binned |f|^2 over other
      bins is not exact and would move the rates by an amount nobody checked:
      rebin at the source).  The uniform centres are used.
    * ``metadata``: a scalar string dataset holding a JSON object, or a
      group whose attributes (and scalar datasets) are the keys.  Required:
      ``material`` (a name; the pair-energy default and reach's
      one-material check use it).  ``cell_mass_ev`` [eV], ``cell_volume_ev3``
      [eV^-3] (or ``cell_volume_angstrom3``) and ``gap_ev`` [eV, the Q
      threshold] are required unless ``material`` is a library material
      (:mod:`dmca_hpc.materials`), whose cell mass, cell volume and scissor
      gap then fill the missing ones (listed in
      ``metadata['cell_from_library']``).  Other keys are kept;
      ``e_complete_ev``, ``q_complete_ame``, ``all_electron``, ``basis``,
      ``scissor`` mean what they mean in our tables (rate notes use them).
    * optional ``dft_form_factors`` [nk, nq, nE]: the uncorrected table in
      the same convention (``which="dft"`` reads it).
    * optional ``uncertainty`` [nk, nq, nE]: the absolute 1-sigma of
      ``form_factors``, per slice.  It becomes
      :attr:`FormFactorTable.f2_sigma` = ``sum_k w_k uncertainty[k]``: the
      slices' errors are added linearly (fully correlated), because the
      uncertainty of an exciton correction (screening model, k mesh, bands)
      moves all k together; adding them in quadrature would shrink it as
      1/sqrt(N_k) for no physical reason.

    Every array must be finite and >= 0.  Nothing is added to or scaled in
    the file's numbers: no enhancement factor is assumed anywhere.

    Args:
        which: ``"corrected"`` (``form_factors``, with ``f2_sigma`` from
            ``uncertainty``) or ``"dft"`` (``dft_form_factors``).

    Raises:
        TableFormatError: one line naming the file, the dataset or key and
            what was expected.
    """
    if which not in ("corrected", "dft"):
        raise ValueError(f"which must be 'corrected' or 'dft', got {which!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected a DMCA exciton table, HDF5)")
    import h5py
    if path.is_dir() or not h5py.is_hdf5(path):
        raise TableFormatError(f"{path}: not an HDF5 file; expected a DMCA exciton table "
                               "(HDF5 with dataset 'form_factors' [nk, nq, nE])")

    def one(p, w):
        with h5py.File(p, "r") as f:
            return _read_exciton(f, p, w)
    return _guard_h5(path, one, which)


def _read_exciton(f, path: Path, which: str) -> FormFactorTable:
    import h5py
    for name, meaning in EXCITON_DATASETS.items():
        if name not in f:
            raise TableFormatError(f"{path}: dataset '{name}' missing (expected {meaning}; DMCA "
                                   "exciton-table layout)")
        if name != "metadata" and not isinstance(f[name], h5py.Dataset):
            raise TableFormatError(f"{path}: '{name}' is a group; expected a dataset: {meaning}")
    ff = f["form_factors"]
    if ff.ndim != 3 or 0 in ff.shape:
        raise TableFormatError(f"{path}: dataset 'form_factors' has shape {ff.shape}; expected "
                               "a non-empty 3-D array [nk, nq, nE]")
    nk, nq, ne = ff.shape
    kp = _exciton_array(f, path, "kpoints", (nk, 3), "[nk, 3] with nk = form_factors' first axis")
    qv, q_unit = _exciton_axis(f, path, "qpoints", nq, Q_UNITS, "q bin centres")
    ev, e_unit = _exciton_axis(f, path, "omega", ne, OMEGA_UNITS, "energy bin centres")
    dq = _uniform_from_zero(path, "qpoints", qv, Q_UNITS[q_unit], q_unit)
    de = _uniform_from_zero(path, "omega", ev, OMEGA_UNITS[e_unit], e_unit)
    for opt in ("dft_form_factors", "uncertainty"):
        if opt in f and (not isinstance(f[opt], h5py.Dataset) or f[opt].shape != ff.shape):
            shape = f[opt].shape if isinstance(f[opt], h5py.Dataset) else "a group"
            raise TableFormatError(f"{path}: dataset '{opt}' has shape {shape}; expected "
                                   f"form_factors' {ff.shape} [nk, nq, nE]")
    name = "form_factors" if which == "corrected" else "dft_form_factors"
    if name not in f:
        raise TableFormatError(f"{path}: dataset 'dft_form_factors' missing (optional in the DMCA "
                               "exciton layout, but needed for the uncorrected table [nk, nq, nE])")
    meta = _exciton_metadata(f, path)
    weights, wsource = _exciton_kweights(f, path, nk)
    cell, filled, material = _exciton_cell(path, meta)
    f2 = _weighted_k_sum(f[name], weights, path, name)
    sigma = None
    if which == "corrected" and "uncertainty" in f:
        sigma = _weighted_k_sum(f["uncertainty"], weights, path, "uncertainty")
    k_units = _to_py(f["kpoints"].attrs.get("units", "not given"))
    meta.update({
        "format": "dmca-exciton", "dataset": name, "exciton_corrected": which == "corrected",
        "n_k": nk, "k_weights": wsource, "kpoints": kp.tolist(), "kpoints_units": k_units,
        "qpoints_units": q_unit, "omega_units": e_unit,
        "has_dft_form_factors": "dft_form_factors" in f, "has_uncertainty": "uncertainty" in f,
        "cell_from_library": filled, "source_file": str(path)})
    return FormFactorTable(f2=f2, dq_ame=dq, de_ev=de, vcell_ev3=cell["cell_volume_ev3"],
                           cell_mass_ev=cell["cell_mass_ev"], gap_ev=cell["gap_ev"],
                           scissor=meta.get("scissor", "unknown"), material=material,
                           metadata=meta, f2_sigma=sigma)


def _exciton_array(f, path, name, shape, expected) -> np.ndarray:
    try:
        a = np.asarray(f[name][()], dtype=np.float64)
    except (TypeError, ValueError):
        raise TableFormatError(f"{path}: dataset '{name}' is not numeric; expected {expected}") from None
    if a.shape != tuple(shape):
        raise TableFormatError(f"{path}: dataset '{name}' has shape {a.shape}; expected {expected}")
    if not np.all(np.isfinite(a)):
        raise TableFormatError(f"{path}: dataset '{name}' has NaN or infinite values; expected "
                               f"finite numbers, {expected}")
    return a


def _exciton_axis(f, path, name, n, accepted, what):
    """(values in the file's unit, the unit's key in ``accepted``)."""
    vals = _exciton_array(f, path, name, (n,), f"{what} [{n}] (one per bin of form_factors)")
    ds = f[name]
    want = ", ".join(repr(k) for k in accepted)
    if "units" not in ds.attrs:
        raise TableFormatError(f"{path}: dataset '{name}' has no 'units' attribute; expected one "
                               f"of {want} ({what})")
    unit = str(_to_py(ds.attrs["units"])).replace(" ", "").replace("*", "")
    if unit not in accepted:
        raise TableFormatError(f"{path}: dataset '{name}' has units {_to_py(ds.attrs['units'])!r}; "
                               f"expected one of {want} ({what})")
    return vals, unit


def _uniform_from_zero(path, name, x, factor, unit) -> float:
    """Bin width (in our unit: x * factor) of uniform centres (a + 1/2) d, or
    TableFormatError naming the dataset and what it holds."""
    n = x.size
    width = 2.0 * x[0] if n == 1 else (x[-1] - x[0]) / (n - 1)
    if not width > 0:
        raise TableFormatError(f"{path}: dataset '{name}' is not increasing (first {x[0]:g}, last "
                               f"{x[-1]:g} {unit}); expected increasing bin centres")
    tol = BIN_TOLERANCE * width
    if n > 1 and np.max(np.abs(np.diff(x) - width)) > tol:
        d = np.diff(x)
        raise TableFormatError(f"{path}: dataset '{name}' is not uniform (spacing {d.min():g} to "
                               f"{d.max():g} {unit}); expected uniform bin centres (a + 1/2) d "
                               "(a non-uniform binned |f|^2 cannot be resampled exactly: rebin "
                               "at the source)")
    lo = x[0] - width / 2
    if abs(lo) > tol:
        raise TableFormatError(f"{path}: dataset '{name}' starts at the centre {x[0]:g} {unit}, so "
                               f"its first bin starts at {lo:g} {unit}; expected bins from 0 "
                               f"(centres (a + 1/2) d with d = {width:g} {unit}); shifting or padding "
                               "would invent bins the file does not hold")
    return float(width * factor)


def _exciton_metadata(f, path) -> dict:
    import h5py
    obj = f["metadata"]
    if isinstance(obj, h5py.Group):
        meta = {k: _to_py(v) for k, v in obj.attrs.items()}
        for k, v in obj.items():
            if isinstance(v, h5py.Dataset):
                meta[k] = _to_py(v[()])
        return meta
    raw = _to_py(obj[()])
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise TableFormatError(f"{path}: dataset 'metadata' is not a JSON object; expected "
                               f"{EXCITON_DATASETS['metadata']}")
    return meta


def _exciton_kweights(f, path, nk):
    if "kweights" not in f:
        return np.full(nk, 1.0 / nk), "equal weights 1/N_k (no 'kweights' dataset)"
    w = _exciton_array(f, path, "kweights", (nk,), f"one weight per k [{nk}], >= 0, summing to 1")
    if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-6:
        raise TableFormatError(f"{path}: dataset 'kweights' sums to {w.sum():.12g} (min "
                               f"{w.min():g}); expected weights >= 0 summing to 1 (QCDark "
                               "w_k = 1/N_k convention; QEdark's sum to 2)")
    return w, "dataset 'kweights'"


def _exciton_cell(path, meta):
    """({cell_mass_ev, cell_volume_ev3, gap_ev}, keys filled from the library, material)."""
    from dmca_hpc.materials import LIBRARY, MaterialError, get_material
    mat = meta.get("material")
    if not isinstance(mat, str) or not mat.strip():
        raise TableFormatError(f"{path}: metadata key 'material' missing or not a name (got "
                               f"{mat!r}); expected the target's name, e.g. 'NaI' (the pair-energy "
                               "default and reach's one-material check use it)")
    try:
        lib = get_material(mat)
    except MaterialError:
        lib = None
    if "cell_volume_ev3" not in meta and "cell_volume_angstrom3" in meta:
        v = _meta_number(path, meta, "cell_volume_angstrom3", "the unit-cell volume [angstrom^3]")
        meta["cell_volume_ev3"] = (v * U.ANGSTROM_BOHR**3) / U.ALPHA_ME_EV**3
    cell, filled = {}, []
    for key, meaning in EXCITON_CELL_KEYS.items():
        if key in meta:
            cell[key] = _meta_number(path, meta, key, meaning, positive=(key != "gap_ev"))
        elif lib is not None and not (key == "gap_ev" and lib.scissor_gap_ev is None):
            cell[key] = {"cell_mass_ev": lambda: lib.cell_mass_ev,
                         "cell_volume_ev3": lambda: (lib.cell_volume_angstrom3 * U.ANGSTROM_BOHR**3)
                         / U.ALPHA_ME_EV**3,
                         "gap_ev": lambda: lib.scissor_gap_ev}[key]()
            filled.append(key)
        else:
            why = (f"material {mat!r} is not in the built-in library ({', '.join(LIBRARY)}), so it "
                   "cannot be filled in") if lib is None else "the library has no value for it"
            raise TableFormatError(f"{path}: metadata key '{key}' missing (expected {meaning}; "
                                   f"{why})")
    return cell, filled, lib.name if lib is not None else mat.strip()


def _meta_number(path, meta, key, meaning, positive=True) -> float:
    raw = meta[key]
    try:
        v = float(raw)
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or (v <= 0 if positive else v < 0):
        want = "a positive number" if positive else "a number >= 0"
        raise TableFormatError(f"{path}: metadata key '{key}' is {raw!r}; expected {want}: {meaning}")
    return v


def _weighted_k_sum(ds, weights, path, name) -> np.ndarray:
    """sum_k w_k ds[k], read one k slice at a time (a 216-k table of 1000 x 500
    bins is 0.9 GB), each slice checked finite and >= 0."""
    acc = np.zeros(ds.shape[1:])
    for k in range(ds.shape[0]):
        try:
            a = np.asarray(ds[k], dtype=np.float64)
        except (TypeError, ValueError):
            raise TableFormatError(f"{path}: dataset '{name}' is not numeric; expected "
                                   "|f_crystal|^2 numbers [nk, nq, nE]") from None
        for bad, what in ((~np.isfinite(a), "NaN or infinite"), (a < 0, "negative")):
            if bad.any():
                i, j = (int(x) for x in np.argwhere(bad)[0])
                raise TableFormatError(f"{path}: dataset '{name}' has {what} bins (first "
                                       f"[{k}, {i}, {j}] = {float(a[i, j])!r}); expected finite "
                                       "values >= 0")
        acc += weights[k] * a
    return acc


#: QEdark (Essig et al. 2016) cell data and energy prefactor for the
#: published Si and Ge text tables: lattice constant [angstrom] (diamond,
#: 2 atoms per primitive cell), mean atomic mass [amu], gap [eV], prefactor [eV].
QEDARK_MATERIALS = {
    "Si": {"a_angstrom": 5.431, "atom_mass_amu": 28.08, "gap_ev": 1.11, "prefactor_ev": 2.0},
    "Ge": {"a_angstrom": 5.658, "atom_mass_amu": 72.6, "gap_ev": 0.67, "prefactor_ev": 1.8},
}
#: QEdark's k weight factor (its weights sum to 2 over 137 k points)
QEDARK_WK = 2.0 / 137.0
#: the grid obscura's Crystal hard-codes for the QEdark text tables
#: (src/Target_Crystal.cpp): E bins, q bins, dE [eV], dq [alpha m_e]
OBSCURA_NE, OBSCURA_NQ, OBSCURA_DE_EV, OBSCURA_DQ_AME = 500, 900, 0.1, 0.02


def read_qedark_text(path: str | os.PathLike, material: str | None = None,
                     ne: int = 500, dq_ame: float = 0.02, de_ev: float = 0.1,
                     prefactor_ev: float | None = None, cell_mass_ev: float | None = None,
                     vcell_ev3: float | None = None, gap_ev: float | None = None) -> FormFactorTable:
    """Read a QEdark text table and convert it to the QCDark convention.

    The layout is the one obscura reads (see :func:`write_qedark_text`): all
    numbers in order, no header, E outer, q inner, each multiplied by
    :func:`qedark_text_factor`; bin (qi, Ei) of the file is our bin (qi, Ei).

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
    f2 = qedark_text_factor(nq, prefactor_ev, de_ev) * table
    return FormFactorTable(f2=f2, dq_ame=dq_ame, de_ev=de_ev, vcell_ev3=vcell_ev3,
                           cell_mass_ev=cell_mass_ev, gap_ev=gap_ev, scissor="qedark",
                           material=material or "",
                           metadata={"format": "qedark-text", "source_file": str(path),
                                     "qedark_prefactor_ev": prefactor_ev, "qedark_wk": QEDARK_WK})


def write_qedark_text(path: str | os.PathLike, table: FormFactorTable,
                      prefactor_ev: float | None = None, nq: int | None = None,
                      ne: int | None = None) -> Path:
    """Write ``table`` in the QEdark text layout exactly as obscura reads it
    (the inverse of :func:`read_qedark_text`).

    What obscura does with the file (temken/obscura ``src/Target_Crystal.cpp``,
    ``Crystal::Crystal``; libphysica ``Import_List``): it reads every
    white-space separated number from the start (no header line is skipped:
    a header would be taken as two table values and shift every bin), takes
    the first ``N_E * N_q`` of them with ``N_E = 500``, ``N_q = 900``, ``dE =
    0.1 eV``, ``dq = 0.02 alpha m_e`` hard-coded, E outer and q inner, and
    sets ``|f|^2[qi][Ei] = prefactor * (qi + 1) / dE * w_k / 4 * number`` with
    ``w_k = 2/137`` (QEdark's k weights, which sum to 2) and ``prefactor`` =
    2.0 eV for Si, 1.8 eV for Ge (:func:`qedark_text_factor`).  So this
    writes ``f2[qi, Ei] / qedark_text_factor`` one number per line
    (``%.17g``), E outer, q inner, no header.  It takes the cell mass, gap
    and pair energy from its own Si / Ge values, never from the file, and
    evaluates the numbers at q = (qi + 1) dq, E = (Ei + 1) dE, half a bin
    above our centres (our reader keeps the bin index, so the round trip is
    exact).  Measured with our engine on our Si table (shm-2021): evaluating
    at obscura's points lowers the rates by 2.0 / 1.0 / 1.0% (heavy mediator)
    and 6.3 / 5.4 / 5.3% (light) at 10 MeV / 100 MeV / 1 GeV, and cutting q
    at 18 alpha m_e (N_q = 900) costs 0.7-0.8% of the heavy-mediator rate
    above 100 MeV: a difference of grid, not of normalisation.

    Args:
        prefactor_ev: obscura's material prefactor [eV]; default from the
            table's material (Si 2.0, Ge 1.8, :data:`QEDARK_MATERIALS`); any
            other material needs it (obscura itself reads only Si and Ge).
        nq, ne: number of q and E bins written (default obscura's N_q = 900,
            N_E = 500); q (E) bins beyond the table are written as 0, table
            bins beyond them are not written.

    Values below the smallest normal double (2.2e-308) are written as 0:
    C++ stream extraction may flag such numbers as a range error, which
    would end obscura's read loop early.

    Raises:
        ValueError: a grid other than obscura's (dq 0.02 alpha m_e, dE 0.1 eV,
            bins from 0), or no prefactor for the material.
    """
    from dmca_hpc.hpc.checkpoint import atomic_path
    nq = OBSCURA_NQ if nq is None else int(nq)
    ne = OBSCURA_NE if ne is None else int(ne)
    if nq < 1 or ne < 1:
        raise ValueError(f"nq and ne must be >= 1, got nq = {nq}, ne = {ne}")
    src = table.metadata.get("source_file") or table.material or "table"
    for name, have, want, unit in (("dq", table.dq_ame, OBSCURA_DQ_AME, "alpha m_e"),
                                   ("dE", table.de_ev, OBSCURA_DE_EV, "eV")):
        if not np.isclose(have, want, rtol=1e-9, atol=0):
            raise ValueError(f"{src}: {name} = {have:g} {unit}; the QEdark text layout obscura "
                             f"reads has {name} = {want:g} {unit} fixed (not resampled here)")
    if table.q_min_ame != 0 or table.e_min_ev != 0:
        raise ValueError(f"{src}: bins start at q = {table.q_min_ame:g} alpha m_e, E = "
                         f"{table.e_min_ev:g} eV; the QEdark text layout starts both at 0")
    if prefactor_ev is None:
        ref = QEDARK_MATERIALS.get(table.material)
        if ref is None:
            raise ValueError(f"{src}: material {table.material!r}: obscura's Crystal reads only "
                             + ", ".join(f"{k} (prefactor {v['prefactor_ev']:g} eV)"
                                         for k, v in QEDARK_MATERIALS.items())
                             + "; give prefactor_ev (--prefactor-ev) to write the QEdark layout for another reader")
        prefactor_ev = ref["prefactor_ev"]
    if not (np.isfinite(prefactor_ev) and prefactor_ev > 0):
        raise ValueError(f"prefactor_ev must be a positive number [eV], got {prefactor_ev!r}")
    out = np.zeros((nq, ne))
    a, b = min(nq, table.nq), min(ne, table.ne)
    out[:a, :b] = table.f2[:a, :b]
    raw = out / qedark_text_factor(nq, prefactor_ev, table.de_ev)
    raw[raw < np.finfo(float).tiny] = 0.0
    with atomic_path(path) as tmp:
        np.savetxt(tmp, raw.T.ravel(), fmt="%.17g")
    return Path(path)


def qedark_text_factor(nq: int, prefactor_ev: float, de_ev: float = 0.1) -> np.ndarray:
    """[nq, 1] factor that turns QEdark text numbers into QCDark |f|^2 as
    obscura does: ``prefactor (qi + 1) / dE * w_k / 4``, ``w_k = 2/137``
    (:data:`QEDARK_WK`), prefactor and dE in eV."""
    qi = np.arange(1, nq + 1, dtype=float)[:, None]
    return prefactor_ev * qi / de_ev * (QEDARK_WK / 4.0)


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
        # lossless gzip: the shipped tables are package data (Si with f2_sigma 8.0 -> 5.0 MB,
        # read in 30 ms)
        packed = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        write_dataset(res, "f2", table.f2, "1",
                      "|f_crystal(q, E)|^2, [nq, nE], QCDark convention (w_k = 1/N_k)", **packed)
        write_dataset(res, "q", table.q_ame, "alpha*m_e", "q bin centres")
        write_dataset(res, "E", table.e_ev, "eV", "energy bin centres")
        if table.f2_sigma is not None:
            write_dataset(res, "f2_sigma", table.f2_sigma, "1",
                          "1-sigma uncertainty of each bin of f2, [nq, nE]", **packed)
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


def table_summary(table: FormFactorTable) -> dict:
    """What a table is, for ``dmca-hpc table info``: material, format,
    shape, q and E ranges (bin edges), cell, scissor, completeness
    (``e_complete_ev``, ``q_complete_ame``: None when the table does not
    record them), ``all_electron``, basis / functional / k mesh when
    recorded, and the exciton-table facts.  Units are in the key names."""
    m = table.metadata or {}
    out = {
        "material": table.material, "format": m.get("format", ""),
        "source_file": m.get("source_file", ""), "shape_q_e": [table.nq, table.ne],
        "q_range_alpha_me": [table.q_min_ame, table.q_min_ame + table.nq * table.dq_ame],
        "dq_alpha_me": table.dq_ame,
        "e_range_ev": [table.e_min_ev, table.e_min_ev + table.ne * table.de_ev],
        "de_ev": table.de_ev, "cell_mass_ev": table.cell_mass_ev,
        "cell_volume_angstrom3": table.cell_volume_angstrom3, "gap_ev": table.gap_ev,
        "scissor": table.scissor if isinstance(table.scissor, (bool, str)) else str(table.scissor),
        "e_complete_ev": m.get("e_complete_ev"), "q_complete_ame": m.get("q_complete_ame"),
        "all_electron": m.get("all_electron"),
        "basis": m.get("basis"), "xc": m.get("xc"), "kmesh": m.get("kmesh"),
        "f2_sigma": table.f2_sigma is not None,
    }
    if m.get("format") == "dmca-exciton":
        out.update({k: m.get(k) for k in ("dataset", "exciton_corrected", "n_k", "k_weights",
                                           "has_dft_form_factors", "has_uncertainty",
                                           "cell_from_library")})
    return out


# ---------------------------------------------------------------------------
# DFT systematics as a per-bin 1-sigma
# ---------------------------------------------------------------------------

#: how :func:`systematic_sigma` builds its sigma (stored in its info)
SYSTEMATIC_METHOD = ("per-bin maximum over variants (envelope) of B_E(f2_ref) * |B(f2_variant - "
                     "f2_ref)| / B(f2_ref), B a box average over q and E, B_E over E alone, on "
                     "the bins both tables have above the reference's gap (0 elsewhere), "
                     "combined in quadrature with the reference's earlier f2_sigma")
#: metadata keys that say how a table was computed (compared in the info)
SYSTEMATIC_SETTINGS = ("kmesh", "basis", "xc", "ecp", "all_electron", "scissor_scheme",
                       "q_max_ame", "e_max_ev")
#: of SYSTEMATIC_SETTINGS, the ones that say how far a table reaches, not how it was made
_RANGE_SETTINGS = ("q_max_ame", "e_max_ev")


def table_source(t: FormFactorTable) -> str:
    """The file a table came from, or a stand-in naming its material."""
    return str((t.metadata or {}).get("source_file") or f"<{t.material or 'unnamed'} table>")


def _check_same_target(ref: FormFactorTable, var: FormFactorTable) -> None:
    """TableFormatError naming both sources unless ``var`` is of ``ref``'s
    material and bins (same widths and lower edges; the number of bins may
    differ)."""
    rs, vs = table_source(ref), table_source(var)
    if var.material != ref.material:
        raise TableFormatError(f"{vs}: material {var.material or 'unknown'!r} differs from the "
                               f"reference {rs} ({ref.material or 'unknown'!r}); expected variants "
                               "of one target")
    for what, v, r, unit, width in (
            ("q bin width dq", var.dq_ame, ref.dq_ame, "alpha m_e", ref.dq_ame),
            ("E bin width dE", var.de_ev, ref.de_ev, "eV", ref.de_ev),
            ("q of the first bin's lower edge", var.q_min_ame, ref.q_min_ame, "alpha m_e",
             ref.dq_ame),
            ("E of the first bin's lower edge", var.e_min_ev, ref.e_min_ev, "eV", ref.de_ev)):
        if abs(v - r) > 1e-6 * width:
            raise TableFormatError(f"{vs}: {what} is {v:g} {unit}, the reference {rs} has {r:g} "
                                   f"{unit}; expected the same binning (a systematic compares bin "
                                   "by bin; rebin at the source)")


def _box_mean(a: np.ndarray, half_q: int, half_e: int) -> np.ndarray:
    """Box average over (2 half_q + 1) x (2 half_e + 1) bins, edges by
    repeating the last bin (``mode='nearest'``): the filter of
    :func:`scipy.ndimage.uniform_filter`, summed directly bin by bin
    (:func:`scipy.ndimage.correlate1d`) instead of as a running sum, whose
    rounding leaves ~1e-16 of a table's largest value in boxes that hold
    only zeros or tiny bins (below the gap, low q), where it would be
    divided by."""
    from scipy.ndimage import correlate1d
    out = np.asarray(a, dtype=np.float64)
    for axis, h in ((0, half_q), (1, half_e)):
        if h > 0:
            out = correlate1d(out, np.full(2 * h + 1, 1.0 / (2 * h + 1)), axis=axis,
                              mode="nearest")
    return out


def systematic_sigma(ref: FormFactorTable, variants, smooth_q_ame: float = 0.2,
                     smooth_e_ev: float = 0.5, label: str = "",
                     base: FormFactorTable | None = None) -> tuple[np.ndarray, dict]:
    """A per-bin 1-sigma of ``ref.f2`` from variant tables of one systematic
    (k mesh, basis, functional): the spread of the variants becomes the
    ``f2_sigma`` that reach's uncertainty bands draw (issue 14).

    Per variant, on the q and E bins both tables have (a variant may stop
    at a lower q, e.g. q <= 10 against the reference's 20 alpha m_e)::

        d = B_E(f2_ref) * |B(f2_variant - f2_ref)| / B(f2_ref)

    (with ``base`` given, ``d = B_E(f2_ref) min(1, |B(f2_variant -
    f2_base)| / B(f2_base))``: the relative move of the variants against
    the table they differ from in this one setting, carried onto ref's
    shape, e.g. a basis systematic measured on a 4x4x4 mesh for a 6x6x6
    table without counting the mesh change; capped at 100% because where
    the base's box is nearly empty and ref's is not, the ratio says nothing
    (measured, Si def2-TZVP vs def2-SVP on 4x4x4 for the 6x6x6 table: the
    base's box at q = 0.33, E = 1.35 eV holds 1e-12, the variant's 1e-3, a
    ratio of 9e8; with base = ref the product with ref's own shape keeps d
    bounded, so no cap is applied),
    with ``B`` a box average (the filter of
    :func:`scipy.ndimage.uniform_filter`, mode ``'nearest'``) of half-width
    ``smooth_q_ame`` [alpha m_e] in q and ``smooth_e_ev`` [eV] in E, rounded
    to whole bins, and ``B_E`` the same box in E alone; ``d = 0`` in bins
    that lie wholly below the reference's gap and where ``B(f2_ref) = 0``.
    Without smoothing (both widths 0) ``d = |f2_variant - f2_ref|`` where
    f2_ref > 0.  A variant c x ref gives ``d = |c - 1| B_E(f2_ref)``, i.e.
    ``|c - 1| f2_ref`` wherever f2_ref is linear over the E box (away from
    the table's edges and from spikes).

    Why smooth: a single bin carries k-sampling noise that cancels in any
    rate (a rate sums many bins with smooth weights), and reach draws
    f2_sigma fully correlated over bins
    (:func:`dmca_hpc.detection.reach.draw_table`), so raw per-bin
    differences would count that noise as a systematic.  Measured on
    Si.hdf5 against Si_gth.hdf5 (all-electron vs GTH), light mediator, 100
    MeV: the rate ratio is 1.032; raw |f2_Si_gth - f2_Si| gives a rate
    1-sigma of 24%, this sigma 3.7%.  The signed difference is averaged,
    so the noise cancels instead of adding up as |noise|.

    Why the ratio of box averages, and B_E: a plain box average of the
    difference puts sigma where f2_ref is small or 0: below the gap (the
    draw f2 + z sigma would invent transitions there) and at the lowest q,
    where f2 ~ q^2 rises across the box and the light mediator weighs
    1/q^4 (Ge_pbe vs the pre-fix PBE0 Ge, 1 MeV, light: a rate 1-sigma of +1440% for a
    PBE0/PBE rate ratio of 2.97).  The box's relative difference
    ``|B(d)| / B(f2_ref)`` is applied to the table's own shape in q (which
    is physics) but to its shape smoothed in E (near the gap a 6x6x6 table
    is spiky in E, whole 0.1 eV bins empty where the variant has weight:
    k sampling, not physics).  That sigma covers the measured rate moves:
    pre-fix PBE0 vs Ge_pbe, heavy / light, 1 MeV: +166% / +213% against rate ratios
    2.64 / 2.97; 10 MeV: 16% / 36% against 1.08 / 1.34; 1 GeV: 36% / 30%
    against 0.76 / 1.26.

    The sigma is the per-bin maximum of ``d`` over the variants (their
    envelope: the variants of one systematic are not independent draws, so
    they are not added in quadrature).  Beyond the bins a variant covers it
    contributes 0: where no variant has bins (e.g. q > 10 alpha m_e for
    q <= 10 variants) the sigma is 0, because the variants say nothing
    there, not because the table is exact there; ``info`` states the range
    covered.  A variant's weight in bins the sigma leaves at 0 (below the
    reference's gap, or where the reference's box is empty) is not carried;
    ``info['per_variant'][i]['variant_weight_not_carried']`` gives its
    share of the variant's summed |f|^2.  An existing ``ref.f2_sigma`` (an
    earlier systematic, an exciton table's uncertainty) is combined with
    the new one in quadrature, as an independent source.  A variant's own
    f2_sigma is not used.  Nothing here computes rates (that is the
    detection layer's; the CLI adds their ratios to the info).

    Args:
        ref: the table whose f2 the sigma belongs to (its f2 is not changed).
        variants: one or more tables of ``ref``'s material with the same bin
            widths and lower edges (the number of bins may differ).
        smooth_q_ame: box half-width in q [alpha m_e], >= 0.
        smooth_e_ev: box half-width in E [eV], >= 0.
        label: name of the systematic ("kmesh", "functional", ...), kept in info.
        base: the table the variants differ from in this systematic's setting
            alone (same material and bins as ref; default: ref itself).

    Returns:
        ``(sigma, info)``: ``sigma`` [ref.nq, ref.nE], dimensionless like f2,
        the absolute 1-sigma to store as ``f2_sigma`` (the quadrature sum
        with the earlier one if ref had one); ``info`` a JSON-ready dict:
        label, method, ref and variant sources, their recorded settings (k
        mesh, basis, functional...), the q [alpha m_e] and E [eV] ranges the
        new sigma covers (all and per variant), the smoothing actually used
        (half-widths and box sizes in bins), whether an earlier sigma was
        combined.

    Raises:
        TableFormatError: a variant of another material or other bin widths
            or edges (the message names both sources and what differs).
        ValueError: no variants, or a smoothing width that is not a finite
            number >= 0.
    """
    if isinstance(variants, FormFactorTable):
        variants = [variants]
    variants = list(variants)
    if not variants:
        raise ValueError("systematic_sigma needs at least one variant table")
    for name, v in (("smooth_q_ame", smooth_q_ame), ("smooth_e_ev", smooth_e_ev)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    for var in variants:
        _check_same_target(ref, var)
    if base is not None:
        _check_same_target(ref, base)
    b0 = ref if base is None else base
    hq = int(round(smooth_q_ame / ref.dq_ame))
    he = int(round(smooth_e_ev / ref.de_ev))
    # bins wholly below the gap hold no transitions: no sigma there
    above_gap = (ref.e_ev + 0.5 * ref.de_ev > ref.gap_ev)[None, :]
    new = np.zeros_like(ref.f2)
    per_variant = []
    for var in variants:
        nq, ne = min(ref.nq, var.nq, b0.nq), min(ref.ne, var.ne, b0.ne)
        r, v, rb = ref.f2[:nq, :ne], var.f2[:nq, :ne], b0.f2[:nq, :ne]
        den = _box_mean(rb, hq, he)
        keep = above_gap[:, :ne] & (den > 0)
        shape = _box_mean(r, 0, he)
        rel = np.divide(np.abs(_box_mean(v - rb, hq, he)), den, out=np.zeros_like(r),
                        where=keep)
        if base is not None:
            # where the base's box is nearly empty and ref's is not (a coarser mesh
            # misses transitions near the gap; another basis has its onset elsewhere)
            # the ratio says nothing and can be ~1e9: at most 100% of ref there
            np.minimum(rel, 1.0, out=rel)
        d = shape * rel
        np.maximum(new[:nq, :ne], d, out=new[:nq, :ne])
        vsum = float(v.sum())
        per_variant.append({
            "source": table_source(var), "nq_ne": [nq, ne],
            "q_range_ame": [ref.q_min_ame, ref.q_min_ame + nq * ref.dq_ame],
            "e_range_ev": [ref.e_min_ev, ref.e_min_ev + ne * ref.de_ev],
            "identical_to_ref": bool(np.array_equal(v, rb)),
            "variant_weight_not_carried": float(v[~keep].sum()) / vsum if vsum > 0 else 0.0})
    nq_cov = max(p["nq_ne"][0] for p in per_variant)
    ne_cov = max(p["nq_ne"][1] for p in per_variant)
    earlier = ref.f2_sigma is not None
    sigma = np.hypot(ref.f2_sigma, new) if earlier else new

    def settings(t):
        m = t.metadata or {}
        return {k: _to_py(m[k]) for k in SYSTEMATIC_SETTINGS if k in m}

    info = {
        "label": str(label), "method": SYSTEMATIC_METHOD,
        "ref": table_source(ref), "variants": [p["source"] for p in per_variant],
        "base": None if base is None else table_source(base),
        "settings": {"ref": settings(ref), "variants": [settings(v) for v in variants],
                     **({} if base is None else {"base": settings(base)})},
        "q_range_ame": [ref.q_min_ame, ref.q_min_ame + nq_cov * ref.dq_ame],
        "e_range_ev": [ref.e_min_ev, ref.e_min_ev + ne_cov * ref.de_ev],
        "beyond_range": "sigma = 0 (the variants have no bins there)",
        "gap_ev": ref.gap_ev,
        "per_variant": per_variant,
        "smoothing": {"filter": "box averages, mode 'nearest' at the table's edges",
                      "half_width_q_ame": hq * ref.dq_ame, "half_width_e_ev": he * ref.de_ev,
                      "requested_q_ame": float(smooth_q_ame), "requested_e_ev": float(smooth_e_ev),
                      "box_bins_q_e": [2 * hq + 1, 2 * he + 1]},
        "combined_with_earlier_sigma": earlier,
    }
    return sigma, info


def carry_sigma(ref: FormFactorTable, donor: FormFactorTable) -> tuple[np.ndarray, dict]:
    """Carry the f2_sigma of ``donor`` (an earlier make of ``ref``'s target,
    e.g. the table before a fix of the bands stage, or the same target in
    another basis) onto ``ref``: the same relative 1-sigma per bin on ref's
    own shape.

    For a systematic the donor records as measured against a ``base``
    (:func:`systematic_sigma` with ``base``) each source's
    sigma is ``B_E(f2_donor) * rel`` with ``rel`` a function of the variant
    and base tables alone, so ``rel`` is recovered exactly as
    ``f2_sigma_donor / B_E(f2_donor)`` (quadrature sums too, with one E box
    for all sources) and the result ``B_E(f2_ref) * rel`` is what
    :func:`systematic_sigma` with those variants and base would give for
    ref.  A source measured against its own ref (no base) is the relative
    move from the donor's setting to the variants' (``rel`` a function of
    the variants and the donor's f2): it is carried as if the donor were
    its base, which holds when ref sits at the donor's setting in every
    key the source's variants vary (e.g. a k-mesh sigma measured on a
    def2-SVP 6x6x6 table carried onto a cc-pVTZ 6x6x6 one: the k-mesh move
    is taken as independent of the basis); otherwise, or when the source
    records no settings, ValueError naming the source and the key.
    ``q_max_ame`` and ``e_max_ev`` are ranges, not settings, and are not
    compared.  Where the
    donor's E-smoothed f2 is 0 (a bin below its onset) the relative move is
    unknown and the sigma is 0; ``info['ref_weight_without_sigma']`` gives
    ref's share of summed |f|^2 in such bins above ref's gap.

    Args:
        ref: the table that gets the sigma (its f2 is not changed).
        donor: a table of ref's material and bins with ``f2_sigma`` and the
            metadata list ``f2_sigma_sources``.

    Returns:
        ``(sigma, info)``: sigma [ref.nq, ref.nE], dimensionless like f2;
        info a JSON-ready dict: donor source, the smoothing used, the
        sources carried (labels), ``ref_weight_without_sigma``.

    Raises:
        TableFormatError: donor of another material or binning.
        ValueError: donor without f2_sigma, or with a source that has no base
            and either records no varied setting or varied one at which ref
            differs from the donor.
    """
    _check_same_target(ref, donor)
    src = table_source(donor)
    if donor.f2_sigma is None:
        raise ValueError(f"{src}: no f2_sigma to carry (expected a table written by "
                         "'dmca-hpc table systematic ... --base')")
    sources = list((donor.metadata or {}).get("f2_sigma_sources") or [])
    if not sources:
        raise ValueError(f"{src}: f2_sigma without a metadata record f2_sigma_sources; expected "
                         "the record of 'dmca-hpc table systematic --base' (what it measured)")
    widths = set()
    as_base = []
    ref_meta = ref.metadata or {}
    for i, s in enumerate(sources):
        if not s.get("base"):
            name = f"{src}: f2_sigma_sources[{i}] ({s.get('label') or 'unlabelled'})"
            rebuild = ("; rebuild it with 'dmca-hpc table systematic REF --vary ... --base ...'")
            st = s.get("settings") or {}
            own, varied = st.get("ref") or {}, set()
            for v in st.get("variants") or []:
                # a key one side lacks is unknown there (older records), not a difference
                varied |= {k for k in set(v) & set(own)
                           if k not in _RANGE_SETTINGS and v[k] != own[k]}
            if not varied:
                raise ValueError(f"{name} was measured against its own ref, not a base table, "
                                 "and records no setting its variants vary: what it moved "
                                 f"from is unknown and it cannot be carried{rebuild}")
            for k in sorted(varied):
                mine = _to_py(ref_meta[k]) if k in ref_meta else None
                if mine != own.get(k):
                    raise ValueError(
                        f"{name} was measured against its own ref at {k} = {own.get(k)!r}; "
                        f"{table_source(ref)} has {k} = {mine!r}: the move it measured does "
                        f"not start from this table's setting and cannot be carried{rebuild}")
            as_base.append({"label": s.get("label", ""), "varied": sorted(varied)})
        widths.add(float(s["smoothing"]["half_width_e_ev"]))
    if len(widths) != 1:
        raise ValueError(f"{src}: its f2_sigma sources used different E boxes "
                         f"({sorted(widths)} eV): their quadrature sum cannot be split")
    he = int(round(widths.pop() / donor.de_ev))
    nq, ne = min(ref.nq, donor.nq), min(ref.ne, donor.ne)
    shape_d = _box_mean(donor.f2[:nq, :ne], 0, he)
    above_gap = (ref.e_ev[:ne] + 0.5 * ref.de_ev > ref.gap_ev)[None, :]
    keep = above_gap & (shape_d > 0)
    rel = np.divide(donor.f2_sigma[:nq, :ne], shape_d, out=np.zeros((nq, ne)), where=keep)
    sigma = np.zeros_like(ref.f2)
    sigma[:nq, :ne] = _box_mean(ref.f2, 0, he)[:nq, :ne] * rel
    tot = float(ref.f2.sum())
    lost = np.zeros(ref.f2.shape, dtype=bool)
    lost[:nq, :ne] = above_gap & ~keep
    info = {"carried_from": src, "labels": [s.get("label", "") for s in sources],
            "method": "f2_sigma_ref = B_E(f2_ref) * f2_sigma_donor / B_E(f2_donor), B_E the "
                      "sources' box average in E; 0 where B_E(f2_donor) = 0",
            "smoothing_e_half_width_ev": he * ref.de_ev,
            "donor_settings": {k: _to_py(donor.metadata[k]) for k in SYSTEMATIC_SETTINGS
                               if k in (donor.metadata or {})},
            "ref_weight_without_sigma": float(ref.f2[lost].sum()) / tot if tot > 0 else 0.0,
            "donor_as_base": as_base}
    return sigma, info
