#!/usr/bin/env python
"""Record what tests/reference/test_target_states.py checks of the DFT states of
the production form-factor runs (jobs/*_ae_reference.yaml, jobs/ge_ae_pbe0.yaml)
into tests/reference/data/target_states.json.

Usage::

    python tests/reference/record_target_states.py RUN_DIR [RUN_DIR ...] [--json PATH]

RUN_DIR is one run's output directory (``dmca-hpc run jobs/X.yaml --out RUN_DIR``).
Every ``RUN_DIR/<Material>/bands/bands.h5`` found is read (it must be marked
complete); the entry of that run's job in the JSON is replaced, the other jobs'
entries are kept.  Entries are keyed by job name, not material: Ge has two jobs
(PBE and PBE0).  The bands.h5 files (10-100 MB) are too big to commit; the JSON
holds only the numbers the test compares, ~3 kB per job.

Per job the JSON holds (units in the top-level ``units`` map, hartree atomic
units unless the key says otherwise):

* ``states``: ``charge`` (electrons per primitive cell) counted from the states,
  2 (1/N_k) sum_k sum_{i < nocc} <ik|S(k)|ik> over the full k mesh of bands.h5
  and ALL its occupied bands (core included for an all-electron basis), S(k) the
  AO overlap of the cell rebuilt as the package does (``BandData.cell()``) at the
  precision the states were solved with (``dmca_hpc.electronic.bands.accurate_intor``,
  PySCF's get_ovlp); ``orthogonality_max_abs``, the
  largest |C^H S C - 1| over every band pair of the file and every k; ``nk``,
  ``kmesh``, ``nocc``, ``nbands``.
* ``bethe``: the f-sum ratio of :func:`dmca_hpc.electronic.formfactor.bethe_sum_ratio`
  (route ``auto``: analytic for these all-electron / ECP bases) for
  n_c = 4, 8 and all conduction bands of the file, at the reciprocal-lattice shells
  nearest to ``q_targets`` = 1, 3, 5, 10 bohr^-1 (= alpha m_e): ``shells`` [bohr^-1],
  ``ratio[i][j]`` for ``n_conduction[i]`` and ``shells[j]``.  It is given the whole
  mesh (all N_k points, every G of each shell): measured 10 s for 3C-SiC and
  diamond, 45 s for Ge (def2-SVP, 18 valence x 22 conduction bands), one thread
  beside a two-rank production run, well under the ~5 min per material that would
  have called for a restriction (summing over the irreducible k with their weights
  would be exact: the file's states at R k are the rotated states at k and each
  shell is closed under the point group).  The ratio's N_val is the function's:
  the valence bands within 60 eV of the VBM (deep core left out of both sides).
* ``gaps``: the bands.h5 attrs ``gap_indirect_ev``, ``gap_direct_ev``, ``vbm_ev``,
  ``cbm_ev`` (DFT scale) and ``scissor_convention``, ``scissor_gap_ev`` (target),
  ``scissor_delta_ev``, ``scissor_shift_valence_ev``, ``scissor_shift_conduction_ev``.
* ``structure``: ``spacegroup`` (bands.h5 attr, spglib's), ``lattice`` (fcc, bcc or
  sc from the primitive vectors' angles), ``a_conventional_angstrom`` recovered from
  the primitive vectors (fcc: |a_i| sqrt 2, bcc: 2 |a_i| / sqrt 3, sc: |a_i|),
  ``primitive_vectors_angstrom``, ``positions_frac`` (fractions of those vectors),
  ``symbols`` (one per atom), ``natoms``, ``species``.
* ``electrons``: ``ecp`` (scf.h5 attrs['ecp'] where the dft stage wrote it, else
  :func:`dmca_hpc.electronic.scf.ecp_label` of the cell; ``ecp_from`` says which),
  ``nelectron`` (electrons outside the ECP cores, scf.h5 attrs, else the cell's).
* ``basis``, ``xc``, ``pseudo``, ``density_fit`` (bands.h5 attrs).
* where it came from, as tests/reference/record_target_dielectric.py: ``job`` (the
  repository's job file), ``job_name``, ``job_hash``, ``job_spec_sha256``,
  ``job_keys_differing``, ``git_sha``, ``nranks``, ``finished_at`` and
  ``bands_wall_seconds`` (the bands stage's stage.json or run.json), ``run_dir``;
  ``job_as_run`` when the run was started from a job file outside the repository
  (a snapshot of jobs/): the run is then checked against the repository's
  jobs/<job name>.yaml.

A run is refused when a key its job file sets has another value in the run's
job.yaml, when its bands.h5 is not complete, or when its scf.h5 was not the one
the bands were computed from.  Bad input gives one line per problem and exit code
2; the runs that could be read are still recorded.  The output is sorted JSON;
the recorder's own wall times are printed, not stored, so recording the same runs
twice gives the same bytes.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "data" / "target_states.json"


def _load_dielectric_recorder():
    """tests/reference/record_target_dielectric.py, for its job-file, provenance and
    JSON helpers (a script beside this one, loaded by path as its test does)."""
    spec = importlib.util.spec_from_file_location(
        "record_target_dielectric", HERE / "record_target_dielectric.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_base = _load_dielectric_recorder()
RecordError = _base.RecordError
REPO = _base.REPO
job_spec = _base.job_spec
job_keys_differing = _base.job_keys_differing
dumps = _base.dumps
_load_json_file = _base._load_json_file

#: q [bohr^-1 = alpha m_e] whose nearest reciprocal-lattice shells the f-sum ratio is taken at
Q_TARGETS = (1.0, 3.0, 5.0, 10.0)
#: conduction-band counts of the f-sum ratio besides "all bands of the file"
N_CONDUCTION = (4, 8)
GAP_KEYS = ("gap_indirect_ev", "gap_direct_ev", "vbm_ev", "cbm_ev", "scissor_gap_ev",
            "scissor_delta_ev", "scissor_shift_valence_ev", "scissor_shift_conduction_ev")

UNITS = {
    "states.charge": "electrons per primitive cell",
    "states.orthogonality_max_abs": "1",
    "states.kmesh": "k points per axis",
    "bethe.q_targets": "bohr^-1 (= alpha m_e)",
    "bethe.shells": "bohr^-1 (= alpha m_e)",
    "bethe.ratio": "1",
    **{f"gaps.{k}": "eV" for k in GAP_KEYS},
    "structure.a_conventional_angstrom": "angstrom",
    "structure.primitive_vectors_angstrom": "angstrom",
    "structure.positions_frac": "1 (fractions of the primitive vectors)",
    "electrons.nelectron": "electrons per primitive cell",
    "bands_wall_seconds": "s",
}


def _attr(a: dict, key: str, path: Path):
    if key not in a:
        raise RecordError(f"{path}: attrs[{key!r}] missing; expected a bands-stage bands.h5")
    v = a[key]
    return v.decode() if isinstance(v, bytes) else v


def states_checks(bd) -> dict:
    """Charge [electrons per cell] and orthogonality of the states of a
    :class:`dmca_hpc.electronic.bands.BandData` (see the module docstring)."""
    import numpy as np
    from dmca_hpc.electronic.bands import accurate_intor
    # the overlap the states were solved with (PySCF's get_ovlp precision): the default
    # pbc_intor is 1.4e-10 off for CsI def2-SVP, 2.7e-6 in C^H S C after |C|^2 ~ 5e5
    S = accurate_intor(bd.cell(), "int1e_ovlp", bd.kpts)
    if S.ndim == 2:
        S = S[None]
    # M[k] = C^H S C over every band of the file: its diagonal gives the norms the
    # charge sums, its distance from 1 says whether the states are an S-orthonormal set
    M = np.einsum("kma,kmn,knb->kab", bd.coeffs.conj(), S, bd.coeffs, optimize=True)
    occ = np.einsum("kii->k", M[:, :bd.nocc, :bd.nocc]).real
    eye = np.eye(bd.nbands)
    return {"charge": float(2.0 * occ.sum() / bd.nk),
            "orthogonality_max_abs": float(np.abs(M - eye).max()),
            "nk": int(bd.nk), "kmesh": [int(x) for x in bd.kmesh],
            "nocc": int(bd.nocc), "nbands": int(bd.nbands)}


def bethe_checks(bd) -> dict:
    """The f-sum ratio table of :func:`dmca_hpc.electronic.formfactor.bethe_sum_ratio`
    on the whole mesh, n_c = 4, 8 and all conduction bands (capped at those in the
    file), shells nearest to :data:`Q_TARGETS`."""
    from dmca_hpc.electronic.formfactor import bethe_sum_ratio, choose_route
    n_all = bd.nbands - bd.nocc
    ncs = sorted({min(n, n_all) for n in N_CONDUCTION} | {n_all})
    r = bethe_sum_ratio(bd, ncs, q_targets=list(Q_TARGETS), route="auto")
    shells = sorted(next(iter(r.values())))
    return {"route": choose_route(bd.cell(), {"route": "auto"}), "n_conduction": ncs,
            "q_targets": list(Q_TARGETS), "shells": shells,
            "ratio": [[float(r[nc][q]) for q in shells] for nc in ncs],
            "k": f"full mesh, {bd.nk} k, weights 1/N_k; every G of each shell"}


def structure_of(bd) -> dict:
    """Lattice, conventional cubic constant [angstrom] and atoms of the bands' cell."""
    import numpy as np
    from dmca_hpc.units import BOHR_ANGSTROM
    cell = bd.cell()
    lat = np.asarray(cell.lattice_vectors()) * BOHR_ANGSTROM
    lengths = np.linalg.norm(lat, axis=1)
    cosines = [float(lat[i] @ lat[j] / (lengths[i] * lengths[j]))
               for i, j in ((0, 1), (0, 2), (1, 2))]
    # primitive vectors of the cubic Bravais lattices, ASE's bulk() choice: equal lengths
    # and pair angles of 60 deg (fcc, cos 1/2), 109.47 deg (bcc, cos -1/3) or 90 deg (sc)
    kinds = {"fcc": (0.5, math.sqrt(2.0)), "bcc": (-1.0 / 3.0, 2.0 / math.sqrt(3.0)),
             "sc": (0.0, 1.0)}
    lattice = None
    if np.ptp(lengths) <= 1e-6 * lengths.mean():
        for name, (cos, _) in kinds.items():
            if all(abs(abs(c) - abs(cos)) < 1e-6 for c in cosines):
                lattice = name
    if lattice is None:
        raise RecordError(f"{bd.path}: attrs['cell'] lattice vectors {lat.round(4).tolist()} "
                          f"angstrom are not the primitive vectors of a cubic lattice "
                          f"(fcc, bcc or sc); expected a cubic target")
    symbols = [cell.atom_pure_symbol(i) for i in range(cell.natm)]
    frac = np.asarray(cell.atom_coords()) @ np.linalg.inv(np.asarray(cell.lattice_vectors()))
    return {"spacegroup": str(bd.attrs.get("spacegroup", "")), "lattice": lattice,
            "a_conventional_angstrom": float(lengths.mean() * kinds[lattice][1]),
            "primitive_vectors_angstrom": lat.tolist(),
            "positions_frac": frac.tolist(), "symbols": symbols,
            "natoms": len(symbols), "species": sorted(set(symbols))}


def electrons_of(bd, scf_path: Path) -> dict:
    """ECP record and electrons outside the ECP cores, from scf.h5 where it says so."""
    import h5py
    from dmca_hpc.electronic.scf import ecp_label
    cell = bd.cell()
    out = {"ecp": ecp_label(cell), "ecp_from": "bands.h5 cell (scf.h5 has no attrs['ecp'])",
           "nelectron": int(cell.nelectron)}
    try:
        with h5py.File(scf_path, "r") as f:
            a = dict(f.attrs)
    except OSError as exc:
        raise RecordError(f"{scf_path}: cannot read as HDF5 ({exc}); expected the run's "
                          f"dft-stage scf.h5") from None
    if not bool(a.get("complete", False)):
        raise RecordError(f"{scf_path}: attrs['complete'] is not true; expected a finished "
                          f"dft stage")
    want = bd.attrs.get("scf_input_hash")
    got = a.get("input_hash")
    if want and got != want:
        raise RecordError(f"{scf_path}: input_hash {got!r} differs from the bands' "
                          f"scf_input_hash {want!r}; expected the SCF the bands came from")
    if "ecp" in a:
        ecp = a["ecp"].decode() if isinstance(a["ecp"], bytes) else str(a["ecp"])
        if ecp != out["ecp"]:
            raise RecordError(f"{scf_path}: attrs['ecp'] = {ecp!r} but the bands' cell has "
                              f"{out['ecp']!r}; expected the same ECPs")
        out["ecp_from"] = "scf.h5"
    if "nelectron" in a:
        out["nelectron"] = int(a["nelectron"])
    return out


def provenance_of(run_dir: Path, mat: str, bd) -> dict:
    """Job file, hashes, git sha, ranks and the bands stage's time of one run
    (the dielectric recorder's ``run_provenance``)."""
    prov = json.loads(bd.attrs["provenance"]) if "provenance" in bd.attrs else {}
    return _base.run_provenance(run_dir, prov, mat, "bands")


def record_run(h5_path: str | Path, timings: dict | None = None) -> dict:
    """Everything recorded for one ``<run>/<Material>/bands/bands.h5`` (the module
    docstring lists the keys).  ``timings``, when given, receives the wall seconds
    of each part of the recording.  The test builds its checks from this dict
    whether it reads a run directory or the JSON, so both give the same keys.
    Raises :class:`RecordError` with one line."""
    import h5py
    from dmca_hpc.electronic.bands import BandsFileError, load_bands
    h5_path = Path(h5_path)
    mat_dir = h5_path.parent.parent
    run_dir = mat_dir.parent
    try:
        with h5py.File(h5_path, "r") as f:
            complete = bool(f.attrs.get("complete", False))
    except OSError as exc:
        raise RecordError(f"{h5_path}: cannot read as HDF5 ({exc})") from None
    if not complete:
        raise RecordError(f"{h5_path}: attrs['complete'] is not true; expected a finished "
                          f"bands stage (still running?)")
    try:
        bd = load_bands(h5_path)
    except BandsFileError as exc:
        raise RecordError(str(exc).splitlines()[0]) from None
    if bd.material and bd.material != mat_dir.name:
        raise RecordError(f"{h5_path}: attrs['material'] = {bd.material!r} in directory "
                          f"{mat_dir.name!r}; expected <run>/<Material>/bands/")
    a = bd.attrs
    rec = {"material": mat_dir.name, **provenance_of(run_dir, mat_dir.name, bd)}
    rec.update({k: str(a.get(k, "")) for k in ("basis", "xc", "pseudo", "density_fit")})
    rec["gaps"] = {k: float(_attr(a, k, h5_path)) for k in GAP_KEYS}
    rec["gaps"]["scissor_convention"] = str(_attr(a, "scissor_convention", h5_path))
    rec["structure"] = structure_of(bd)
    rec["electrons"] = electrons_of(bd, mat_dir / "dft" / "scf.h5")
    t0 = time.perf_counter()
    rec["states"] = states_checks(bd)
    t1 = time.perf_counter()
    rec["bethe"] = bethe_checks(bd)
    t2 = time.perf_counter()
    if timings is not None:
        timings.update({"states_s": t1 - t0, "bethe_s": t2 - t1})
    return {k: v for k, v in rec.items() if v is not None}


def find_runs(run_dir: Path) -> list[Path]:
    """The ``<Material>/bands/bands.h5`` files of one run directory."""
    if not run_dir.is_dir():
        raise RecordError(f"{run_dir}: not a directory; expected a run's output directory")
    found = sorted(run_dir.glob("*/bands/bands.h5"))
    if not found:
        raise RecordError(f"{run_dir}: no <Material>/bands/bands.h5; expected a run with its "
                          f"bands stage finished")
    return found


ABOUT = ("DFT states of the production form-factor runs (jobs/*_ae_*.yaml) checked by "
         "tests/reference/test_target_states.py, keyed by job name; written by "
         "tests/reference/record_target_states.py RUN_DIR ... (do not edit by hand)")


def main(argv: list[str] | None = None) -> int:
    args = _base.recorder_args(argv, __doc__, DEFAULT_JSON,
                               "output directory of one run (holds job.yaml and <Material>/bands/)")

    def report(key, rec, timings):
        s, b, g, st = rec["states"], rec["bethe"], rec["gaps"], rec["structure"]
        print(f"{key} ({rec['material']}, {rec['xc']}/{rec['basis']}, ecp "
              f"{rec['electrons']['ecp']}): charge {s['charge']:.9f} electrons/cell "
              f"(nelectron {rec['electrons']['nelectron']}), max|C^H S C - 1| "
              f"{s['orthogonality_max_abs']:.2e}; {st['spacegroup']}, {st['lattice']} a = "
              f"{st['a_conventional_angstrom']:.4f} angstrom; gap {g['gap_indirect_ev']:.4f} "
              f"eV indirect, {g['gap_direct_ev']:.4f} eV direct, scissor "
              f"{g['scissor_delta_ev']:+.4f} eV to {g['scissor_gap_ev']} eV; "
              f"[{timings['states_s']:.1f} s states, {timings['bethe_s']:.1f} s Bethe]")
        for nc, row in zip(b["n_conduction"], b["ratio"]):
            print(f"  Bethe n_c = {nc:3d}: " + ", ".join(
                f"|G| {q:.3f} bohr^-1: {v:.6f}" for q, v in zip(b["shells"], row)))

    return _base.record_into_json(args.run_dirs, args.json, "jobs", find_runs, record_run,
                                  lambda rec: rec["job_name"], report, ABOUT, UNITS)


if __name__ == "__main__":
    sys.exit(main())
