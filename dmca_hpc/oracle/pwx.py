"""Quantum ESPRESSO oracle: the pw.x runner.

Labels one structure with a DFT energy, forces and stress.  Each candidate
runs pw.x under the correction ladder: every attempt is diagnosed from its
text (:mod:`dmca_hpc.oracle.handlers`), and a failed one is corrected and
restarted (:mod:`dmca_hpc.oracle.ladder`), as custodian and
aiida-quantumespresso's PwBaseWorkChain do.  The rest of the oracle builds
on this module: candidates and their checkpoints
(:mod:`~dmca_hpc.oracle.candidates`), batches over MPI ranks
(:mod:`~dmca_hpc.oracle.batch`) and the band-gap cross-check
(:mod:`~dmca_hpc.oracle.bandgap`).

Units and conventions of every number that leaves this module:

* energy [eV] (pw.x's ``!`` total energy, converted by ASE's reader),
* forces [eV/angstrom], shape (natoms, 3),
* stress [eV/angstrom^3], full 3x3 tensor in ASE's sign convention
  (positive = tensile; an isotropically compressed cell has negative
  diagonal, i.e. stress = -pressure),
* k-point density ``kspacing`` [1/angstrom] *including* the 2*pi factor
  (as VASP's KSPACING and aiida's kpoints_distance):
  ``n_i = max(1, ceil(2*pi*|b_i| / kspacing))`` with ``b`` the reciprocal
  lattice without 2*pi (``atoms.cell.reciprocal()``),
* cutoffs ``ecutwfc`` / ``ecutrho`` [Ry], ``conv_thr_per_atom`` [Ry/atom],
  ``degauss`` [Ry] -- pw.x's own units, written unchanged to its input.

Running pw.x: an absolute, existing, executable path is required (no shell;
a PATH lookup only with ``pw_search_path: true``), arguments as a list,
``-in pw.in`` (never stdin), each attempt in its own directory
``<workdir>/attempt-NN`` with ``pw.in``, ``pw.out``, ``pw.err`` and
``CRASH`` kept.  Inside an ``mpiexec``-started Python rank pw.x is run
serially (``OMP_NUM_THREADS=1``, MPI launcher variables removed from its
environment): Debian's pw.x is built on Open MPI while the package's mpi4py
uses the MPICH wheel, and nesting launchers is fragile; an optional
``mpi_prefix`` (e.g. ``["/usr/bin/mpirun", "-n", "2"]``) is meant for
batches that are *not* themselves under mpiexec.

Heavy imports (numpy, ASE) happen inside functions, so
``import dmca_hpc.oracle.pwx`` is fast.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from dmca_hpc import settings as job_settings
from dmca_hpc.oracle.handlers import Diagnosis, diagnose
from dmca_hpc.oracle.ladder import CorrectionState, apply_correction, default_handlers

#: defaults of the ``oracle.generate`` sub-section (config/schema/oracle.schema.json
#: carries the same values; dmca_hpc.settings models the section's top-level keys only)
GENERATE_DEFAULTS: dict[str, Any] = {
    "include_primitive": True,
    "supercell": [2, 1, 1],
    "n_rattled": 4,
    "rattle_stdev_angstrom": 0.05,
    "strains": [-0.02, 0.02],
}

#: settings that do not change the numbers of a finished candidate (left out
#: of its checkpoint hash, so e.g. a longer timeout does not redo the batch)
OPERATIONAL = frozenset({"structures", "pw", "pw_search_path", "mpi_prefix", "timeout_s",
                         "max_attempts", "omp_num_threads", "keep_scratch", "retry_failed",
                         "generate", "pseudo_dir", "pseudopotentials", "functional_tag"})

#: environment variables of MPI launchers, removed from pw.x's environment
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPIR_", "MPICH_", "OMPI_", "I_MPI_")
_LAUNCHER_NAMES = ("MPI_LOCALRANKID", "MPI_LOCALNRANKS", "DMCA_HPC_MPI")

#: pw.x ``prefix`` and ``outdir`` inside an attempt directory
PREFIX = "pw"
OUTDIR = "tmp"


class OracleError(Exception):
    """A candidate-level failure with a failure class of
    :data:`dmca_hpc.oracle.handlers.ERROR_CLASSES`."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class OracleSetupError(ValueError):
    """Bad oracle configuration (executable, pseudo directory, structures file)."""


# --- result --------------------------------------------------------------------------

@dataclass
class DFTResult:
    """Outcome of one candidate.

    Attributes:
        atoms: final ``ase.Atoms`` (the candidate as computed; an scf run
            does not move atoms).
        energy_ev: total energy [eV] (None on failure).
        forces_ev_per_angstrom: forces [eV/angstrom], shape (natoms, 3).
        stress_ev_per_angstrom3: full 3x3 stress [eV/angstrom^3], ASE sign
            convention (positive = tensile).
        success: True when a validated pw.x run produced the numbers.
        error: message of the final failure (None on success).
        error_class: failure class (handlers.ERROR_CLASSES) or None.
        meta: ``scf_steps`` (of the final attempt), ``scf_steps_total``,
            ``wall_s``, ``pw_cpu_s`` (CPU seconds of the pw.x children),
            ``kpts``, ``pseudopotentials``, ``attempts`` (one dict per pw.x
            launch: number, directory, the namelists used, k-mesh, exit code,
            wall time, failure class and message, the correction applied
            after it and why), ``corrections`` (the custodian-like log).
    """

    atoms: Any
    energy_ev: float | None = None
    forces_ev_per_angstrom: Any = None
    stress_ev_per_angstrom3: Any = None
    success: bool = False
    error: str | None = None
    error_class: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as nested lists, units in the key names)."""
        a = self.atoms
        return {
            "numbers": [int(z) for z in a.numbers],
            "positions_angstrom": a.positions.tolist(),
            "cell_angstrom": a.cell.array.tolist(),
            "pbc": [bool(p) for p in a.pbc],
            "energy_ev": self.energy_ev,
            "forces_ev_per_angstrom": _tolist(self.forces_ev_per_angstrom),
            "stress_ev_per_angstrom3": _tolist(self.stress_ev_per_angstrom3),
            "success": self.success,
            "error": self.error,
            "error_class": self.error_class,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DFTResult":
        import numpy as np
        from ase import Atoms
        atoms = Atoms(numbers=d["numbers"], positions=d["positions_angstrom"],
                      cell=d["cell_angstrom"], pbc=d["pbc"])
        f = d.get("forces_ev_per_angstrom")
        s = d.get("stress_ev_per_angstrom3")
        return cls(atoms=atoms, energy_ev=d.get("energy_ev"),
                   forces_ev_per_angstrom=None if f is None else np.asarray(f, float),
                   stress_ev_per_angstrom3=None if s is None else np.asarray(s, float),
                   success=bool(d.get("success")), error=d.get("error"),
                   error_class=d.get("error_class"), meta=d.get("meta", {}))

    def to_atoms(self):
        """A copy of ``atoms`` with a SinglePointCalculator holding energy
        [eV], forces [eV/angstrom] and stress [eV/angstrom^3, Voigt order
        xx yy zz yz xz xy, ASE convention] -- what extxyz writes as the
        standard ``energy``/``forces``/``stress`` keys."""
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.stress import full_3x3_to_voigt_6_stress
        a = self.atoms.copy()
        if self.success:
            a.calc = SinglePointCalculator(
                a, energy=self.energy_ev, free_energy=self.energy_ev,
                forces=self.forces_ev_per_angstrom,
                stress=full_3x3_to_voigt_6_stress(self.stress_ev_per_angstrom3))
        return a


def _tolist(x):
    return None if x is None else x.tolist()


# --- configuration ---------------------------------------------------------------------

def settings_from(section: dict | None = None, **overrides) -> dict:
    """The effective oracle settings: the defaults of the job's ``oracle:``
    section (:mod:`dmca_hpc.settings`, ``generate`` filled from
    :data:`GENERATE_DEFAULTS`), then ``section``, then keyword overrides
    (``None`` values ignored).  An unknown key, here or in ``generate``, is
    an :class:`OracleSetupError` naming it and the known ones."""
    values: dict[str, Any] = {}
    generate = copy.deepcopy(GENERATE_DEFAULTS)
    for src in (section or {}), {k: v for k, v in overrides.items() if v is not None}:
        for k, v in src.items():
            if k != "generate":
                values[k] = copy.deepcopy(v)
                continue
            if not isinstance(v, dict):
                raise OracleSetupError(f"oracle.generate must be a mapping with keys "
                                       f"{sorted(GENERATE_DEFAULTS)}, got {v!r}")
            unknown = set(v) - set(GENERATE_DEFAULTS)
            if unknown:
                raise OracleSetupError(f"oracle.generate: unknown key(s) {sorted(unknown)}; "
                                       f"expected {sorted(GENERATE_DEFAULTS)}")
            generate.update(copy.deepcopy(v))
    s = job_settings.with_defaults("oracle", values, error=OracleSetupError)
    s["generate"] = generate
    if float(s["ecutwfc"]) <= 0:
        raise OracleSetupError(f"oracle.ecutwfc must be > 0 Ry, got {s['ecutwfc']!r}")
    if float(s["kspacing"]) <= 0:
        raise OracleSetupError(f"oracle.kspacing must be > 0 1/angstrom, got {s['kspacing']!r}")
    if int(s["max_attempts"]) < 1:
        raise OracleSetupError(f"oracle.max_attempts must be >= 1, got {s['max_attempts']!r}")
    return s


def physics_settings(settings: dict) -> dict:
    """The settings that determine a candidate's numbers (everything but
    :data:`OPERATIONAL`): what checkpoint and input hashes are made of."""
    return {k: v for k, v in settings.items() if k not in OPERATIONAL}


def resolve_executable(path: str, search_path: bool = False, what: str = "pw") -> str:
    """Absolute path of an executable, checked: it must be absolute (a bare
    name is looked up on PATH only when ``search_path``), exist, be a
    regular file and be executable.  Raises :class:`OracleSetupError`."""
    p = str(path)
    if not os.path.isabs(p):
        if not search_path:
            raise OracleSetupError(f"oracle.{what}: {p!r} is not an absolute path (set "
                                   "pw_search_path: true to allow a PATH lookup)")
        found = shutil.which(p)
        if found is None:
            raise OracleSetupError(f"oracle.{what}: {p!r} not found on PATH")
        p = os.path.abspath(found)
    if not os.path.exists(p):
        raise OracleSetupError(f"oracle.{what}: {p} does not exist (install quantum-espresso "
                               "or give the absolute path of pw.x)")
    if not os.path.isfile(p):
        raise OracleSetupError(f"oracle.{what}: {p} is not a regular file")
    if not os.access(p, os.X_OK):
        raise OracleSetupError(f"oracle.{what}: {p} is not executable")
    return p


def resolve_pseudopotentials(symbols: Sequence[str], pseudo_dir: str, mapping: dict | None = None,
                             functional_tag: str = "pbe") -> dict[str, str]:
    """UPF file name per element, each checked to exist in ``pseudo_dir``.

    An explicit ``mapping`` entry wins; otherwise the first (sorted) file
    named ``<El>.<functional_tag>*.UPF`` (case-insensitive extension) is taken,
    preferring norm-conserving names (no ``rrkjus``/``kjpaw``/``van``) because
    the default ``ecutrho = 4 ecutwfc`` suits them.  Raises
    :class:`OracleError` (``missing_pseudopotential``) naming the element, the
    directory and the file looked for.
    """
    mapping = mapping or {}
    d = Path(pseudo_dir)
    out = {}
    for el in sorted(set(symbols)):
        if el in mapping:
            f = d / mapping[el]
            if not f.is_file():
                raise OracleError("missing_pseudopotential",
                                  f"pseudopotential for {el}: {f} not found "
                                  f"(oracle.pseudopotentials[{el!r}] in pseudo_dir {d})")
            out[el] = mapping[el]
            continue
        cands = sorted(p.name for p in d.glob(f"{el}.*") if p.suffix.lower() == ".upf"
                       and p.name[len(el) + 1:].lower().startswith(functional_tag.lower()))
        if not cands:
            raise OracleError("missing_pseudopotential",
                              f"no pseudopotential for {el} in {d} (looked for "
                              f"{el}.{functional_tag}*.UPF; set oracle.pseudopotentials.{el})")
        nc = [c for c in cands if not any(t in c.lower() for t in ("rrkjus", "kjpaw", "van"))]
        out[el] = (nc or cands)[0]
    return out


def kpoint_grid(atoms, kspacing_inv_angstrom: float) -> tuple[int, int, int]:
    """Monkhorst-Pack mesh for a k-point spacing [1/angstrom, 2*pi included]:
    ``n_i = max(1, ceil(2*pi*|b_i| / kspacing))`` (1 along non-periodic axes)."""
    import numpy as np
    rec = np.linalg.norm(atoms.cell.reciprocal(), axis=1) * 2.0 * np.pi
    return tuple(int(max(1, math.ceil(r / kspacing_inv_angstrom - 1e-9))) if pbc else 1
                 for r, pbc in zip(rec, atoms.pbc))


def check_structure(atoms, min_distance_angstrom: float, name: str = "structure") -> None:
    """:func:`dmca_hpc.materials.check_structure` as an :class:`OracleError`
    (``impossible_structure``): no atoms, a degenerate cell, or two atoms
    (periodic images included) closer than ``min_distance_angstrom``
    [angstrom].  Cells that are not periodic along every axis are allowed
    (the k-mesh is 1 along those axes)."""
    from dmca_hpc.materials import StructureError
    from dmca_hpc.materials import check_structure as check
    try:
        check(atoms, float(min_distance_angstrom), name, key="oracle.min_distance_angstrom",
              periodic=False)
    except StructureError as exc:
        raise OracleError("impossible_structure", str(exc)) from None


def base_parameters(settings: dict, natoms: int) -> dict:
    """pw.x namelists for one candidate (scf, tprnfor and tstress always on).

    ``conv_thr`` [Ry] = conv_thr_per_atom * natoms; ``ecutrho`` = 4 ecutwfc
    when not given (norm-conserving pseudopotentials); ``max_seconds`` is set
    to 90 % of the attempt timeout so pw.x stops itself cleanly (and writes a
    restartable checkpoint) before the runner has to kill it."""
    ecutwfc = float(settings["ecutwfc"])
    ecutrho = float(settings["ecutrho"]) or 4.0 * ecutwfc
    p = {
        "control": {"calculation": "scf", "tprnfor": True, "tstress": True,
                    "outdir": f"./{OUTDIR}", "prefix": PREFIX, "disk_io": "low"},
        "system": {"ecutwfc": ecutwfc, "ecutrho": ecutrho,
                   "occupations": settings["occupations"]},
        "electrons": {"conv_thr": float(settings["conv_thr_per_atom"]) * natoms,
                      "mixing_beta": float(settings["mixing_beta"]),
                      "mixing_mode": settings["mixing_mode"],
                      "diagonalization": settings["diagonalization"],
                      "electron_maxstep": int(settings["electron_maxstep"])},
    }
    if settings["occupations"] == "smearing":
        p["system"]["smearing"] = settings["smearing"]
        p["system"]["degauss"] = float(settings["degauss"])
    if float(settings["timeout_s"]) > 0:
        p["control"]["max_seconds"] = round(0.9 * float(settings["timeout_s"]), 3)
    for sec, vals in (settings.get("extra_parameters") or {}).items():
        p.setdefault(sec, {}).update(vals)
    # these are the oracle's contract: never overridden
    p["control"].update({"calculation": "scf", "tprnfor": True, "tstress": True,
                         "outdir": f"./{OUTDIR}", "prefix": PREFIX})
    return p


def pw_environment(omp_num_threads: int = 1) -> dict:
    """Environment for pw.x: this process's, without MPI launcher variables
    (a serial pw.x inside an mpiexec rank must not try to join that job),
    with OMP_NUM_THREADS set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_LAUNCHER_PREFIXES) and k not in _LAUNCHER_NAMES}
    env["OMP_NUM_THREADS"] = str(int(omp_num_threads))
    return env


def _set_pdeathsig():  # runs in the child before exec: die with the parent
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# --- one pw.x attempt --------------------------------------------------------------------

def write_pw_input(path: Path, atoms, params: dict, pseudos: dict, kpts, pseudo_dir: str):
    """Write pw.in through ASE's espresso writer (positions in angstrom)."""
    from ase.io.espresso import write_espresso_in
    data = copy.deepcopy(params)
    data["control"]["pseudo_dir"] = str(Path(pseudo_dir).resolve())
    with open(path, "w") as fh:
        write_espresso_in(fh, atoms, input_data=data, pseudopotentials=pseudos,
                          kpts=kpts if hasattr(kpts, "shape") else tuple(int(k) for k in kpts))


def run_pw(cmd: list[str], cwd: Path, timeout_s: float, env: dict, name: str = "pw") -> dict:
    """Run pw.x once: no shell, stdout -> ``<name>.out``, stderr -> ``<name>.err``.

    On timeout the whole process group (pw.x and any mpirun children) is
    killed.  Returns returncode, timed_out, wall_s and pw_cpu_s (CPU seconds
    of the finished children, from RUSAGE_CHILDREN)."""
    import resource
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    timed_out = False
    with open(cwd / f"{name}.out", "wb") as out, open(cwd / f"{name}.err", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=str(cwd), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, shell=False, start_new_session=True,
                                preexec_fn=_set_pdeathsig)
        try:
            rc = proc.wait(timeout=timeout_s if timeout_s and timeout_s > 0 else None)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"returncode": rc, "timed_out": timed_out, "wall_s": time.perf_counter() - t0,
            "pw_cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)}


def parse_pw_output(path: Path, atoms) -> dict:
    """Energy [eV], forces [eV/angstrom], stress [eV/angstrom^3, 3x3, ASE
    sign] and SCF steps from a finished pw.out; raises :class:`OracleError`
    (``invalid_output``) when a number is missing, not finite, or the
    output's structure is not the one that was sent (validator)."""
    import re
    import numpy as np
    from ase.io.espresso import read_espresso_out
    text = path.read_text(errors="replace")
    try:
        with open(path) as fh:
            frames = list(read_espresso_out(fh, index=slice(None)))
    except Exception as exc:  # ASE raises assorted errors on odd files
        raise OracleError("invalid_output", f"{path}: ASE could not parse it: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not frames:
        raise OracleError("invalid_output", f"{path}: no configuration with results")
    fin = frames[-1]
    res = fin.calc.results if fin.calc is not None else {}
    missing = [k for k in ("energy", "forces", "stress") if res.get(k) is None]
    if missing:
        raise OracleError("invalid_output", f"{path}: missing {', '.join(missing)} "
                          "(tprnfor/tstress output not found)")
    e = float(res["energy"])
    f = np.asarray(res["forces"], float)
    s = np.asarray(fin.get_stress(voigt=False), float)
    if f.shape != (len(atoms), 3):
        raise OracleError("invalid_output", f"{path}: forces of shape {f.shape}, expected "
                          f"({len(atoms)}, 3)")
    if not (np.isfinite(e) and np.isfinite(f).all() and np.isfinite(s).all()):
        raise OracleError("invalid_output", f"{path}: non-finite energy/forces/stress")
    if len(fin) != len(atoms) or np.abs(fin.positions - atoms.positions).max() > 1e-4:
        raise OracleError("invalid_output", f"{path}: the structure in the output is not the "
                          "structure that was sent")
    m = re.findall(r"convergence has been achieved in\s+(\d+)\s+iterations", text)
    return {"energy_ev": e, "forces": f, "stress": s,
            "scf_steps": int(m[-1]) if m else None,
            "unconverged_band_warnings": len(re.findall(r"eigenvalues not converged", text))}


def _copy_restart(prev: Path, new: Path, kind: str) -> bool:
    """Bring the previous attempt's files into the new attempt's outdir.

    ``charge_density``: the ``<prefix>.save`` directory (charge density and
    data file; pw.x reads it with ``startingpot='file'``).
    ``checkpoint``: the whole outdir (with the wavefunction restart files pw.x
    wrote at max_seconds; read with ``restart_mode='restart'``).
    Returns False when the files are not there."""
    src_out = prev / OUTDIR
    save = src_out / f"{PREFIX}.save"
    if kind == "charge_density":
        rho = list(save.glob("charge-density*")) if save.is_dir() else []
        if not rho:
            return False
        shutil.copytree(save, new / OUTDIR / f"{PREFIX}.save",
                        ignore=shutil.ignore_patterns("wfc*"))
        return True
    if kind == "checkpoint":
        if not save.is_dir():
            return False
        shutil.copytree(src_out, new / OUTDIR)
        return True
    return False


def atomic_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (numpy values converted)."""
    from dmca_hpc.hpc.checkpoint import _json_default, atomic_path
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_json_default))


def run_candidate(atoms, settings: dict, workdir: str | os.PathLike, label: str = "candidate",
                  pw_cmd: list[str] | None = None, handlers=None) -> DFTResult:
    """Label one structure with an SCF pw.x run, correcting failures up the ladder.

    Args:
        atoms: the structure (``ase.Atoms``, angstrom; periodic cell).
        settings: oracle settings (:func:`settings_from`).
        workdir: the candidate's directory; previous content is removed
            (a candidate restarted after a kill starts clean).
        label: name used in messages.
        pw_cmd: resolved command prefix (default: from ``settings``).
        handlers: correction handlers (default :func:`dmca_hpc.oracle.ladder.default_handlers`).

    Returns:
        :class:`DFTResult`; never raises for pw.x or structure failures (they
        become ``success=False`` with ``error_class``), only for setup errors
        (:class:`OracleSetupError`).  ``workdir/corrections.json`` holds the
        custodian-like log (attempts, errors, actions).
    """
    atoms = atoms.copy()
    atoms.calc = None
    wd = fresh_directory(workdir)
    if pw_cmd is None:
        pw_cmd = pw_command(settings)
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"label": label, "attempts": [], "corrections": [],
                            "pw_cpu_s": 0.0, "scf_steps_total": 0}

    def finish(res: DFTResult) -> DFTResult:
        meta["wall_s"] = time.perf_counter() - t0
        meta["n_attempts"] = len(meta["attempts"])
        res.meta = meta
        write_correction_log(wd, meta, res.success, error_class=res.error_class, error=res.error)
        if not settings["keep_scratch"]:
            drop_scratch(wd)
        return res

    try:
        check_structure(atoms, float(settings["min_distance_angstrom"]), label)
        pseudos = resolve_pseudopotentials(atoms.get_chemical_symbols(), settings["pseudo_dir"],
                                           settings["pseudopotentials"], settings["functional_tag"])
    except OracleError as exc:
        return finish(DFTResult(atoms, success=False, error=str(exc), error_class=exc.error_class))
    kpts = kpoint_grid(atoms, float(settings["kspacing"]))
    meta.update(kpts=list(kpts), pseudopotentials=pseudos)
    out = run_ladder(atoms, base_parameters(settings, len(atoms)), pseudos, kpts, settings, wd,
                     meta, pw_cmd=pw_cmd, handlers=handlers, label=label)
    if not out.ok:
        return finish(DFTResult(atoms, success=False, error_class=out.diagnosis.error_class,
                                error=out.error))
    parsed = out.parsed
    meta["scf_steps"] = parsed["scf_steps"]
    meta["scf_steps_total"] += parsed["scf_steps"] or 0
    meta["unconverged_band_warnings"] = parsed["unconverged_band_warnings"]
    return finish(DFTResult(atoms, parsed["energy_ev"], parsed["forces"], parsed["stress"],
                            success=True))


@dataclass
class LadderOutcome:
    """How one pw.x calculation under the correction ladder ended.

    Attributes:
        parsed: what the validator returned for the accepted attempt (None on failure).
        diagnosis: the last attempt's :class:`~dmca_hpc.oracle.handlers.Diagnosis`.
        error: message of the final failure, with the reason the ladder
            stopped (None on success).
        directory: the accepted attempt's directory (None on failure).
    """

    parsed: Any
    diagnosis: Diagnosis
    error: str | None = None
    directory: Path | None = None

    @property
    def ok(self) -> bool:
        return self.parsed is not None


def run_ladder(atoms, params: dict, pseudos: dict, kpts, settings: dict, workdir: Path,
               meta: dict, pw_cmd: list[str] | None = None, handlers=None,
               validate: Callable[[Path, Any], Any] | None = None,
               start_from: Path | None = None, label: str = "candidate") -> LadderOutcome:
    """Run pw.x until an attempt is validated, or the ladder gives up.

    Attempt n runs in ``workdir/attempt-NN``; its text is diagnosed
    (:func:`~dmca_hpc.oracle.handlers.diagnose`), a clean run is validated,
    and a failure is corrected (:func:`~dmca_hpc.oracle.ladder.apply_correction`)
    and restarted from the previous attempt's files when the correction asks
    for it.  At most ``settings["max_attempts"]`` launches.

    Args:
        atoms: the structure written into every ``pw.in`` (angstrom).
        params: the first attempt's namelists (pw.x units; not modified).
        pseudos: UPF file name per element.
        kpts: Monkhorst-Pack mesh (3 integers), or an (N, 4) array of
            crystal k-points and weights for a non-SCF run.
        settings: oracle settings (``pseudo_dir``, ``timeout_s``,
            ``max_attempts``, ``omp_num_threads``, ``allow_smearing_correction``).
        workdir: existing directory of the calculation; the in-progress
            correction log goes to ``workdir/corrections.json``.
        meta: the calculation's record, updated in place: ``attempts`` (one
            dict per launch: number, directory, namelists, k-mesh, exit code,
            wall time, failure class and message, the correction applied after
            it and why), ``corrections``, ``pw_cpu_s``, ``scf_steps_total``
            (iterations of the failed attempts), ``final_parameters``.
        pw_cmd: resolved command prefix (default: from ``settings``).
        handlers: correction handlers (default
            :func:`~dmca_hpc.oracle.ladder.default_handlers`).
        validate: ``validate(pw_out_path, atoms)`` -> the numbers of a clean
            run, raising :class:`OracleError` when they are unusable (default
            :func:`parse_pw_output`).
        start_from: an earlier calculation's attempt directory whose charge
            density (``tmp/pw.save``) each attempt starts from when its
            correction asks for no other restart (a ``bands`` run after its SCF).
        label: name written into the correction log.
    """
    wd = Path(workdir)
    pw_cmd = pw_cmd if pw_cmd is not None else pw_command(settings)
    handlers = handlers if handlers is not None else default_handlers(
        bool(settings["allow_smearing_correction"]))
    validate = validate or parse_pw_output
    for key, empty in (("attempts", []), ("corrections", []), ("pw_cpu_s", 0.0),
                       ("scf_steps_total", 0)):
        meta.setdefault(key, empty)
    meta.setdefault("label", label)
    params = copy.deepcopy(params)
    state = CorrectionState()
    env = pw_environment(settings["omp_num_threads"])
    restart_kind = None
    prev_dir = None
    max_attempts = int(settings["max_attempts"])
    diag = Diagnosis("missing_output", "pw.x never ran")
    for n in range(1, max_attempts + 1):
        adir = wd / f"attempt-{n:02d}"
        adir.mkdir()
        params["electrons"].pop("startingpot", None)
        restarted = None
        if restart_kind and prev_dir is not None:
            if _copy_restart(prev_dir, adir, restart_kind):
                restarted = restart_kind
            elif restart_kind == "checkpoint":
                # nothing to restart from: start over instead of failing on a missing file
                params["control"].pop("restart_mode", None)
        if restarted is None and start_from is not None and \
                _copy_restart(Path(start_from), adir, "charge_density"):
            restarted = "charge_density"
        if restarted == "charge_density":
            params["electrons"]["startingpot"] = "file"
        write_pw_input(adir / "pw.in", atoms, params, pseudos, kpts, settings["pseudo_dir"])
        run = run_pw([*pw_cmd, "-in", "pw.in"], adir, float(settings["timeout_s"]), env)
        meta["pw_cpu_s"] += run["pw_cpu_s"]
        out_p, crash_p = adir / "pw.out", adir / "CRASH"
        stdout = out_p.read_text(errors="replace") if out_p.exists() else None
        crash = crash_p.read_text(errors="replace") if crash_p.exists() else None
        diag = diagnose(stdout, crash, run["returncode"], run["timed_out"])
        parsed = None
        if diag.ok:
            try:
                parsed = validate(out_p, atoms)
            except OracleError as exc:
                diag = Diagnosis(exc.error_class, str(exc))
        rec = {"attempt": n, "directory": str(adir), "parameters": copy.deepcopy(params),
               "kpts": _kpts_record(kpts), "restarted_from": restarted,
               "returncode": run["returncode"], "timed_out": run["timed_out"],
               "wall_s": round(run["wall_s"], 4), "pw_cpu_s": round(run["pw_cpu_s"], 4),
               "error_class": diag.error_class, "message": diag.message}
        meta["attempts"].append(rec)
        if parsed is not None:
            meta["final_parameters"] = copy.deepcopy(params)
            return LadderOutcome(parsed, diag, None, adir)
        if stdout:
            import re
            meta["scf_steps_total"] += len(re.findall(r"iteration #\s*\d+", stdout))
        if n == max_attempts:
            rec["correction"] = None
            rec["reason"] = f"attempt limit reached (max_attempts={max_attempts})"
            break
        new, corr, reason = apply_correction(diag, params, state, handlers, n)
        rec["reason"] = reason
        if new is None:
            rec["correction"] = None
            return LadderOutcome(None, diag, f"{diag.message} [{reason}]")
        rec["correction"] = corr.to_dict()
        meta["corrections"].append(corr.to_dict())
        write_correction_log(wd, meta, None)
        params = new
        restart_kind = next((a["restart"] for a in corr.actions if "restart" in a), None)
        prev_dir = adir
    return LadderOutcome(None, diag, f"{diag.message} [failed after {max_attempts} attempts]")


def _kpts_record(kpts):
    """The k-points of an attempt as JSON: the mesh (3 integers), or
    ``{"explicit_crystal": N}`` for an explicit list of N points."""
    if hasattr(kpts, "shape"):
        return {"explicit_crystal": int(len(kpts))}
    return [int(k) for k in kpts]


def write_correction_log(workdir: Path, meta: dict, success: bool | None, **extra) -> None:
    """``workdir/corrections.json``: the custodian-like log of a calculation
    (``success`` None while it is still running)."""
    atomic_json(Path(workdir) / "corrections.json",
                {"label": meta.get("label"), "success": success, **extra,
                 "corrections": meta["corrections"], "attempts": meta["attempts"]})


def fresh_directory(path: str | os.PathLike) -> Path:
    """``path`` as a new, empty directory (previous content removed)."""
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def drop_scratch(workdir: Path) -> None:
    """Remove pw.x's outdir (wavefunctions, charge density) of every attempt;
    pw.in / pw.out / pw.err / CRASH stay."""
    for a in Path(workdir).glob("attempt-*"):
        shutil.rmtree(a / OUTDIR, ignore_errors=True)


def pw_command(settings: dict) -> list[str]:
    """The checked command prefix: optional ``mpi_prefix`` (its first element
    checked like pw.x) followed by the absolute pw.x path."""
    pw = resolve_executable(settings["pw"], bool(settings["pw_search_path"]), "pw")
    prefix = list(settings.get("mpi_prefix") or [])
    if prefix:
        prefix[0] = resolve_executable(prefix[0], bool(settings["pw_search_path"]), "mpi_prefix")
    return [*prefix, pw]


