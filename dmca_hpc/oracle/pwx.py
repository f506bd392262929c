"""Quantum ESPRESSO oracle: self-correcting pw.x runs for training data.

Labels candidate structures (rattled, strained, defected cells) with DFT
energies, forces and stress.  Each candidate runs pw.x under a correction
ladder (:mod:`dmca_hpc.oracle.handlers`, modelled on custodian and
aiida-quantumespresso's PwBaseWorkChain); a batch of candidates is dealt to
MPI ranks by dynamic dispatch and each finished candidate is checkpointed at
once, so a killed batch restarts where it stopped.

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
``work/cand-NNNNNNN/attempt-NN`` with ``pw.in``, ``pw.out``, ``pw.err`` and
``CRASH`` kept.  Inside an ``mpiexec``-started Python rank pw.x is run
serially (``OMP_NUM_THREADS=1``, MPI launcher variables removed from its
environment): Debian's pw.x is built on Open MPI while the package's mpi4py
uses the MPICH wheel, and nesting launchers is fragile; an optional
``mpi_prefix`` (e.g. ``["/usr/bin/mpirun", "-n", "2"]``) is meant for
batches that are *not* themselves under mpiexec.

Heavy imports (numpy, ASE, h5py, mpi4py) happen inside functions, so
``import dmca_hpc.oracle.pwx`` is fast.  ASE's ``read``/``write`` are called
with ``parallel=False``: by default ASE reads/writes on its rank 0 and
broadcasts over MPI_COMM_WORLD once mpi4py is imported, which deadlocks (or
mismatches collectives) when only rank 0 writes the results.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dmca_hpc.oracle import handlers as qe

STAGE = "oracle"

#: defaults of the job file's ``oracle:`` section (config/schema/oracle.schema.json
#: carries the same values; tests/test_oracle.py checks they agree)
DEFAULTS: dict[str, Any] = {
    "structures": "",
    "pw": "/usr/bin/pw.x",
    "pw_search_path": False,
    "mpi_prefix": [],
    "pseudo_dir": "/usr/share/espresso/pseudo",
    "pseudopotentials": {},
    "functional_tag": "pbe",
    "ecutwfc": 30.0,
    "ecutrho": 0.0,
    "kspacing": 0.3,
    "conv_thr_per_atom": 1e-9,
    "mixing_beta": 0.7,
    "mixing_mode": "plain",
    "diagonalization": "david",
    "electron_maxstep": 100,
    "occupations": "fixed",
    "smearing": "marzari-vanderbilt",
    "degauss": 0.01,
    "allow_smearing_correction": True,
    "extra_parameters": {},
    "timeout_s": 3600.0,
    "max_attempts": 6,
    "min_distance_angstrom": 0.5,
    "omp_num_threads": 1,
    "keep_scratch": False,
    "retry_failed": False,
    "generate": {
        "include_primitive": True,
        "supercell": [2, 1, 1],
        "n_rattled": 4,
        "rattle_stdev_angstrom": 0.05,
        "strains": [-0.02, 0.02],
    },
}

#: settings that do not change the numbers of a finished candidate (left out
#: of its checkpoint hash, so e.g. a longer timeout does not redo the batch)
_OPERATIONAL = {"structures", "pw", "pw_search_path", "mpi_prefix", "timeout_s", "max_attempts",
                "omp_num_threads", "keep_scratch", "retry_failed", "generate", "pseudo_dir",
                "pseudopotentials", "functional_tag"}

#: environment variables of MPI launchers, removed from pw.x's environment
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPIR_", "MPICH_", "OMPI_", "I_MPI_")
_LAUNCHER_NAMES = ("MPI_LOCALRANKID", "MPI_LOCALNRANKS", "DMCA_HPC_MPI")

#: pw.x ``prefix`` and ``outdir`` inside an attempt directory
PREFIX = "pw"
OUTDIR = "tmp"


class OracleError(Exception):
    """A candidate-level failure with a failure class of qe_errors.ERROR_CLASSES."""

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
        error_class: failure class (qe_errors.ERROR_CLASSES) or None.
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
    """The effective oracle settings: DEFAULTS, then the job section, then
    keyword overrides (``None`` values ignored).  Unknown keys are an error
    naming the key and the known ones."""
    s = copy.deepcopy(DEFAULTS)
    for src in (section or {}), {k: v for k, v in overrides.items() if v is not None}:
        for k, v in src.items():
            if k not in DEFAULTS:
                raise OracleSetupError(f"oracle: unknown setting {k!r}; expected one of "
                                       f"{sorted(DEFAULTS)}")
            if k == "generate":
                unknown = set(v) - set(DEFAULTS["generate"])
                if unknown:
                    raise OracleSetupError(f"oracle.generate: unknown key(s) {sorted(unknown)}; "
                                           f"expected {sorted(DEFAULTS['generate'])}")
                s[k].update(copy.deepcopy(v))
            else:
                s[k] = copy.deepcopy(v)
    if float(s["ecutwfc"]) <= 0:
        raise OracleSetupError(f"oracle.ecutwfc must be > 0 Ry, got {s['ecutwfc']!r}")
    if float(s["kspacing"]) <= 0:
        raise OracleSetupError(f"oracle.kspacing must be > 0 1/angstrom, got {s['kspacing']!r}")
    if int(s["max_attempts"]) < 1:
        raise OracleSetupError(f"oracle.max_attempts must be >= 1, got {s['max_attempts']!r}")
    return s


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


def check_structure(atoms, min_distance_angstrom: float) -> None:
    """Raise :class:`OracleError` (``impossible_structure``) for an empty
    structure, a degenerate cell, or two atoms (periodic images included)
    closer than ``min_distance_angstrom``."""
    import numpy as np
    from ase.neighborlist import neighbor_list
    if len(atoms) == 0:
        raise OracleError("impossible_structure", "structure has no atoms")
    vol = abs(np.linalg.det(atoms.cell.array))
    if vol < 1e-3:
        raise OracleError("impossible_structure",
                          f"cell volume {vol:.3g} angstrom^3: the cell is degenerate "
                          "(pw.x needs three lattice vectors)")
    if min_distance_angstrom > 0:
        i, j, d = neighbor_list("ijd", atoms, float(min_distance_angstrom))
        if len(d):
            k = int(np.argmin(d))
            raise OracleError("impossible_structure",
                              f"atoms {int(i[k])} ({atoms[int(i[k])].symbol}) and {int(j[k])} "
                              f"({atoms[int(j[k])].symbol}) are {d[k]:.3f} angstrom apart, below "
                              f"min_distance_angstrom = {min_distance_angstrom}")


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


def _atomic_json(path: Path, obj) -> None:
    from dmca_hpc.hpc.checkpoint import _json_default, atomic_path
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_json_default))


def run_candidate(atoms, settings: dict, workdir: str | os.PathLike, label: str = "candidate",
                  pw_cmd: list[str] | None = None, handlers=None) -> DFTResult:
    """Label one structure with pw.x, correcting failures up the ladder.

    Args:
        atoms: the structure (``ase.Atoms``, angstrom; periodic cell).
        settings: oracle settings (:func:`settings_from`).
        workdir: the candidate's directory; previous content is removed
            (a candidate restarted after a kill starts clean).
        label: name used in messages.
        pw_cmd: resolved command prefix (default: from ``settings``).
        handlers: correction handlers (default :func:`qe_errors.default_handlers`).

    Returns:
        :class:`DFTResult`; never raises for pw.x or structure failures (they
        become ``success=False`` with ``error_class``), only for setup errors
        (:class:`OracleSetupError`).  ``workdir/corrections.json`` holds the
        custodian-like log (attempts, errors, actions).
    """
    atoms = atoms.copy()
    atoms.calc = None
    wd = Path(workdir)
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    if pw_cmd is None:
        pw_cmd = pw_command(settings)
    handlers = handlers if handlers is not None else qe.default_handlers(
        bool(settings["allow_smearing_correction"]))
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"label": label, "attempts": [], "corrections": [],
                            "pw_cpu_s": 0.0, "scf_steps_total": 0}
    log_path = wd / "corrections.json"

    def finish(res: DFTResult) -> DFTResult:
        meta["wall_s"] = time.perf_counter() - t0
        meta["n_attempts"] = len(meta["attempts"])
        res.meta = meta
        _atomic_json(log_path, {"label": label, "success": res.success,
                                "error_class": res.error_class, "error": res.error,
                                "corrections": meta["corrections"], "attempts": meta["attempts"]})
        if not settings["keep_scratch"]:
            for a in wd.glob("attempt-*"):
                shutil.rmtree(a / OUTDIR, ignore_errors=True)
        return res

    try:
        check_structure(atoms, float(settings["min_distance_angstrom"]))
        pseudos = resolve_pseudopotentials(atoms.get_chemical_symbols(), settings["pseudo_dir"],
                                           settings["pseudopotentials"], settings["functional_tag"])
    except OracleError as exc:
        return finish(DFTResult(atoms, success=False, error=str(exc), error_class=exc.error_class))
    kpts = kpoint_grid(atoms, float(settings["kspacing"]))
    meta.update(kpts=list(kpts), pseudopotentials=pseudos)
    params = base_parameters(settings, len(atoms))
    state = qe.CorrectionState()
    env = pw_environment(settings["omp_num_threads"])
    restart_kind = None
    prev_dir = None
    max_attempts = int(settings["max_attempts"])
    diag = qe.Diagnosis("missing_output", "pw.x never ran")
    for n in range(1, max_attempts + 1):
        adir = wd / f"attempt-{n:02d}"
        adir.mkdir()
        params["electrons"].pop("startingpot", None)
        restarted = None
        if restart_kind and prev_dir is not None:
            if _copy_restart(prev_dir, adir, restart_kind):
                restarted = restart_kind
                if restart_kind == "charge_density":
                    params["electrons"]["startingpot"] = "file"
            elif restart_kind == "checkpoint":
                # nothing to restart from: start over instead of failing on a missing file
                params["control"].pop("restart_mode", None)
        write_pw_input(adir / "pw.in", atoms, params, pseudos, kpts, settings["pseudo_dir"])
        run = run_pw([*pw_cmd, "-in", "pw.in"], adir, float(settings["timeout_s"]), env)
        meta["pw_cpu_s"] += run["pw_cpu_s"]
        out_p, crash_p = adir / "pw.out", adir / "CRASH"
        stdout = out_p.read_text(errors="replace") if out_p.exists() else None
        crash = crash_p.read_text(errors="replace") if crash_p.exists() else None
        diag = qe.diagnose(stdout, crash, run["returncode"], run["timed_out"])
        parsed = None
        if diag.ok:
            try:
                parsed = parse_pw_output(out_p, atoms)
            except OracleError as exc:
                diag = qe.Diagnosis(exc.error_class, str(exc))
        rec = {"attempt": n, "directory": str(adir), "parameters": copy.deepcopy(params),
               "kpts": list(kpts), "restarted_from": restarted,
               "returncode": run["returncode"], "timed_out": run["timed_out"],
               "wall_s": round(run["wall_s"], 4), "pw_cpu_s": round(run["pw_cpu_s"], 4),
               "error_class": diag.error_class, "message": diag.message}
        meta["attempts"].append(rec)
        if parsed is not None:
            meta["scf_steps"] = parsed["scf_steps"]
            meta["scf_steps_total"] += parsed["scf_steps"] or 0
            meta["unconverged_band_warnings"] = parsed["unconverged_band_warnings"]
            meta["final_parameters"] = copy.deepcopy(params)
            return finish(DFTResult(atoms, parsed["energy_ev"], parsed["forces"], parsed["stress"],
                                    success=True))
        if stdout:
            import re
            meta["scf_steps_total"] += len(re.findall(r"iteration #\s*\d+", stdout))
        if n == max_attempts:
            rec["correction"] = None
            rec["reason"] = f"attempt limit reached (max_attempts={max_attempts})"
            break
        new, corr, reason = qe.apply_correction(diag, params, state, handlers, n)
        rec["reason"] = reason
        if new is None:
            rec["correction"] = None
            return finish(DFTResult(atoms, success=False, error_class=diag.error_class,
                                    error=f"{diag.message} [{reason}]"))
        rec["correction"] = corr.to_dict()
        meta["corrections"].append(corr.to_dict())
        _atomic_json(log_path, {"label": label, "success": None, "corrections": meta["corrections"],
                                "attempts": meta["attempts"]})
        params = new
        restart_kind = next((a["restart"] for a in corr.actions if "restart" in a), None)
        prev_dir = adir
    return finish(DFTResult(atoms, success=False, error_class=diag.error_class,
                            error=f"{diag.message} [failed after {max_attempts} attempts]"))


def pw_command(settings: dict) -> list[str]:
    """The checked command prefix: optional ``mpi_prefix`` (its first element
    checked like pw.x) followed by the absolute pw.x path."""
    pw = resolve_executable(settings["pw"], bool(settings["pw_search_path"]), "pw")
    prefix = list(settings.get("mpi_prefix") or [])
    if prefix:
        prefix[0] = resolve_executable(prefix[0], bool(settings["pw_search_path"]), "mpi_prefix")
    return [*prefix, pw]


# --- candidates ---------------------------------------------------------------------------

def read_candidates(path: str | os.PathLike) -> list:
    """All frames of an extxyz (or any ASE-readable) file; clear errors."""
    from ase.io import read
    p = Path(path)
    if not p.is_file():
        raise OracleSetupError(f"oracle: structures file {p} does not exist")
    try:
        frames = read(str(p), index=":", parallel=False)
    except Exception as exc:
        raise OracleSetupError(f"oracle: cannot read structures from {p}: "
                               f"{type(exc).__name__}: {exc}") from exc
    if not frames:
        raise OracleSetupError(f"oracle: {p} holds no structures")
    out = []
    for a in frames:
        a = a.copy()
        a.calc = None
        out.append(a)
    return out


def generate_candidates(atoms, gen: dict, seed: int) -> list:
    """Candidates from a primitive cell, deterministic for a given ``seed``.

    * the primitive cell itself (``include_primitive``),
    * ``n_rattled`` supercells (``supercell`` repeats) with every Cartesian
      coordinate displaced by N(0, rattle_stdev_angstrom^2), random stream
      ``numpy.random.default_rng([seed, i])``,
    * for each ``strains`` entry e: the primitive cell scaled isotropically by
      (1 + e), and one with a random symmetric strain tensor of entries in
      [-|e|, |e|] (stream ``default_rng([seed, 1000 + j])``), atoms moved
      with the cell (scaled positions kept).
    Each candidate carries ``info['origin']`` describing how it was made.
    """
    import numpy as np
    gen = {**DEFAULTS["generate"], **(gen or {})}
    prim = atoms.copy()
    prim.calc = None
    out = []
    if gen["include_primitive"]:
        a = prim.copy()
        a.info["origin"] = "primitive"
        out.append(a)
    sc = [int(x) for x in gen["supercell"]]
    for i in range(int(gen["n_rattled"])):
        a = prim.repeat(sc)
        rng = np.random.default_rng([int(seed), i])
        a.positions = a.positions + rng.normal(0.0, float(gen["rattle_stdev_angstrom"]),
                                               a.positions.shape)
        a.info["origin"] = f"rattled supercell {sc} stdev {gen['rattle_stdev_angstrom']} A #{i}"
        out.append(a)
    for j, e in enumerate(gen["strains"]):
        e = float(e)
        a = prim.copy()
        a.set_cell(prim.cell.array * (1.0 + e), scale_atoms=True)
        a.info["origin"] = f"isotropic strain {e:+g}"
        out.append(a)
        rng = np.random.default_rng([int(seed), 1000 + j])
        m = rng.uniform(-abs(e), abs(e), (3, 3))
        eps = 0.5 * (m + m.T)
        b = prim.copy()
        b.set_cell(prim.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        b.info["origin"] = f"random symmetric strain |e|<={abs(e):g}"
        out.append(b)
    return out


def candidate_hash(atoms, settings: dict) -> str:
    """Hash of what determines a candidate's numbers: the structure and the
    physics settings (operational ones like timeouts excluded), plus the
    resolved pseudopotential files' SHA-256 (a changed UPF redoes it)."""
    from dmca_hpc.hpc.checkpoint import config_hash, file_sha256
    phys = {k: v for k, v in settings.items() if k not in _OPERATIONAL}
    try:
        pp = resolve_pseudopotentials(atoms.get_chemical_symbols(), settings["pseudo_dir"],
                                      settings["pseudopotentials"], settings["functional_tag"])
        pp = {el: file_sha256(Path(settings["pseudo_dir"]) / f) for el, f in pp.items()}
    except OracleError as exc:
        pp = {"missing": str(exc)}
    return config_hash({
        "settings": phys, "pseudopotentials": pp,
        "numbers": [int(z) for z in atoms.numbers],
        "positions": [[round(float(x), 8) for x in row] for row in atoms.positions],
        "cell": [[round(float(x), 8) for x in row] for row in atoms.cell.array],
        "pbc": [bool(p) for p in atoms.pbc],
    })


class CandidateStore:
    """One atomic JSON file per finished candidate (``candidates/cand-NNNNNNN.json``).

    Any rank writes its own candidates without coordination; a file counts
    as done only when it parses, says ``complete`` and carries the
    candidate's current hash (so a changed structure or setting redoes just
    that candidate)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.dir / f"cand-{index:07d}.json"

    def save(self, index: int, label: str, chash: str, result: DFTResult) -> Path:
        p = self.path(index)
        _atomic_json(p, {"complete": True, "index": index, "label": label,
                         "candidate_hash": chash, "result": result.to_dict()})
        return p

    def load(self, index: int, chash: str | None = None) -> dict | None:
        try:
            d = json.loads(self.path(index).read_text())
        except (OSError, ValueError):
            return None
        if not d.get("complete") or (chash is not None and d.get("candidate_hash") != chash):
            return None
        return d


def run_batch(candidates: Sequence, settings: dict, out_dir: str | os.PathLike, comm=None,
              telemetry=None, material: str | None = None, prov: dict | None = None,
              input_hash: str = "", log=None) -> dict:
    """Label every candidate, dealt to the ranks of ``comm`` dynamically.

    Call on every rank with the same ``candidates``.  Each finished candidate
    is checkpointed at once by the rank that ran it (``out_dir/candidates``)
    and gets one telemetry record; candidates already checkpointed for the
    same structure and settings are skipped (failed ones too, unless
    ``retry_failed``).  Rank 0 then writes, from the checkpoints:

    * ``results.extxyz``: one frame per successful candidate, input order,
      ``info['index']`` = candidate index, energy/forces/stress in the
      standard extxyz keys (eV, eV/angstrom, eV/angstrom^3 Voigt, ASE sign),
    * ``results.h5``: every candidate (NaN for failures), ``units`` on every
      dataset,
    * ``failures.json``: index, label, error class, message, attempts and
      corrections of each failed candidate.

    Returns on rank 0 ``{label: path}`` of those files (others: ``{}``).
    """
    from dmca_hpc.hpc.parallel import get_comm, map_units
    comm = comm or get_comm()
    rank = comm.Get_rank()
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    store = CandidateStore(out / "candidates")
    # every rank computes the hashes itself (cheap) instead of a broadcast
    hashes = [candidate_hash(a, settings) for a in candidates]
    labels = [f"{material + '/' if material else ''}cand-{i:07d}" for i in range(len(candidates))]
    done = set()
    if rank == 0:
        for i, h in enumerate(hashes):
            d = store.load(i, h)
            if d is not None and (d["result"]["success"] or not settings["retry_failed"]):
                done.add(i)
    done = comm.bcast(done, root=0)
    if rank == 0 and telemetry is not None:
        for i in sorted(done):
            telemetry.record(STAGE, labels[i], "skipped", 0.0, 0.0, 0.0,
                             physics={"material": material} if material else None)
    if rank == 0 and log:
        log(f"oracle: {len(candidates)} candidates, {len(done)} already done, "
            f"{len(candidates) - len(done)} to run on {comm.Get_size()} rank(s)")
    pw_cmd = pw_command(settings)  # checked once on every rank, before any work

    def work(i):
        return run_candidate(candidates[i], settings, out / "work" / f"cand-{i:07d}",
                             labels[i], pw_cmd=pw_cmd).to_dict()

    def on_result(r):
        res = DFTResult.from_dict(r.value) if r.ok else None
        if res is not None:
            store.save(r.index, labels[r.index], hashes[r.index], res)
        if telemetry is not None:
            _telemetry_record(telemetry, labels[r.index], r, res, material)

    map_units(work, list(range(len(candidates))), comm=comm, schedule="dynamic",
              on_result=on_result, skip=done)
    comm.barrier()
    if rank != 0:
        return {}
    return write_outputs(candidates, hashes, labels, store, out, prov or {}, input_hash)


def _telemetry_record(telemetry, label: str, r, res: DFTResult | None, material: str | None):
    meta = res.meta if res is not None else {}
    physics = {
        "material": material,
        "n_atoms": len(res.atoms) if res is not None else None,
        "energy_ev": res.energy_ev if res is not None else None,
        "attempts": meta.get("n_attempts"),
        "n_corrections": len(meta.get("corrections", [])),
        "corrections": ",".join(c["handler"] for c in meta.get("corrections", [])) or None,
        "error_class": (res.error_class if res is not None else "internal_error"),
        "scf_steps_total": meta.get("scf_steps_total"),
        "kpts": meta.get("kpts"),
        "computation_time_sec": meta.get("pw_cpu_s"),
    }
    ok = r.ok and res is not None and res.success
    error = r.error if not r.ok else (None if ok else f"{res.error_class}: {res.error}")
    telemetry.record(STAGE, label, "ok" if ok else "failed", r.wall_s,
                     r.cpu_s + float(meta.get("pw_cpu_s", 0.0)), r.peak_mem_mb,
                     error=error, physics=physics)


def write_outputs(candidates, hashes, labels, store: CandidateStore, out: Path,
                  prov: dict, input_hash: str) -> dict:
    """Assemble results.extxyz, results.h5 and failures.json from the
    checkpoints (rank 0 only; atomic writes)."""
    import numpy as np
    from ase.io import write
    from dmca_hpc.hpc.checkpoint import atomic_h5, atomic_path, canonical_json, write_dataset
    n = len(candidates)
    results: list[DFTResult | None] = []
    for i in range(n):
        d = store.load(i, hashes[i])
        results.append(DFTResult.from_dict(d["result"]) if d else None)
    frames, failures = [], []
    for i, res in enumerate(results):
        if res is not None and res.success:
            a = res.to_atoms()
            a.info.update({"index": i, "label": labels[i],
                           "attempts": int(res.meta.get("n_attempts", 0)),
                           "corrections": ",".join(c["handler"] for c in res.meta.get("corrections", []))
                           or "none"})
            origin = candidates[i].info.get("origin") if hasattr(candidates[i], "info") else None
            if origin:
                a.info["origin"] = origin
            frames.append(a)
        else:
            failures.append({
                "index": i, "label": labels[i],
                "error_class": res.error_class if res is not None else "internal_error",
                "message": res.error if res is not None else
                "no checkpoint: the candidate raised inside the oracle (see telemetry/traceback)",
                "attempts": res.meta.get("attempts", []) if res is not None else [],
                "corrections": res.meta.get("corrections", []) if res is not None else [],
            })
    paths = {}
    xyz = out / "results.extxyz"
    with atomic_path(xyz) as tmp:
        if frames:
            write(str(tmp), frames, format="extxyz", parallel=False)
        else:
            tmp.write_text("")
    paths["results_extxyz"] = str(xyz)
    fj = out / "failures.json"
    with atomic_path(fj) as tmp:
        tmp.write_text(json.dumps(failures, indent=1, default=str))
    paths["failures"] = str(fj)

    natoms = np.array([len(a) for a in candidates], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(natoms)[:-1]]).astype(np.int64)
    tot = int(natoms.sum())
    numbers = np.zeros(tot, np.int64)
    pos = np.full((tot, 3), np.nan)
    forces = np.full((tot, 3), np.nan)
    cells = np.full((n, 3, 3), np.nan)
    stress = np.full((n, 3, 3), np.nan)
    energy = np.full(n, np.nan)
    success = np.zeros(n, bool)
    attempts = np.zeros(n, np.int64)
    ncorr = np.zeros(n, np.int64)
    scf = np.zeros(n, np.int64)
    wall = np.full(n, np.nan)
    eclass = []
    for i, a in enumerate(candidates):
        sl = slice(offs[i], offs[i] + natoms[i])
        numbers[sl] = a.numbers
        pos[sl] = a.positions
        cells[i] = a.cell.array
        res = results[i]
        eclass.append("" if res is None or res.success else (res.error_class or ""))
        if res is None:
            eclass[-1] = "internal_error"
            continue
        attempts[i] = res.meta.get("n_attempts", 0)
        ncorr[i] = len(res.meta.get("corrections", []))
        scf[i] = res.meta.get("scf_steps_total", 0) or 0
        wall[i] = res.meta.get("wall_s", np.nan)
        if res.success:
            success[i] = True
            energy[i] = res.energy_ev
            forces[sl] = res.forces_ev_per_angstrom
            stress[i] = res.stress_ev_per_angstrom3
    h5 = out / "results.h5"
    import h5py
    with atomic_h5(h5, input_hash=input_hash, stage=STAGE, prov=prov) as f:
        f.attrs["stress_convention"] = ("full 3x3, ASE sign: positive = tensile "
                                        "(stress = -pressure)")
        f.attrs["energy_reference"] = "pw.x total energy (pseudopotential reference)"
        write_dataset(f, "index", np.arange(n), "1", "candidate index (input order)")
        write_dataset(f, "label", np.array(labels, dtype=h5py.string_dtype()), "1", "candidate label")
        write_dataset(f, "success", success, "1", "True when pw.x produced validated results")
        write_dataset(f, "error_class", np.array(eclass, dtype=h5py.string_dtype()), "1",
                      "failure class ('' on success); see dmca_hpc.oracle.handlers.ERROR_CLASSES")
        write_dataset(f, "energy", energy, "eV", "total energy per cell (NaN on failure)")
        write_dataset(f, "stress", stress, "eV/angstrom^3", "stress tensor (NaN on failure)")
        write_dataset(f, "cell", cells, "angstrom", "lattice vectors (rows)")
        write_dataset(f, "natoms", natoms, "1", "atoms per candidate")
        write_dataset(f, "atom_offset", offs, "1", "first row of each candidate in the per-atom arrays")
        write_dataset(f, "numbers", numbers, "1", "atomic numbers (concatenated)")
        write_dataset(f, "positions", pos, "angstrom", "Cartesian positions (concatenated)")
        write_dataset(f, "forces", forces, "eV/angstrom", "forces (concatenated; NaN on failure)")
        write_dataset(f, "attempts", attempts, "1", "pw.x launches")
        write_dataset(f, "n_corrections", ncorr, "1", "corrections applied")
        write_dataset(f, "scf_steps_total", scf, "1", "SCF iterations over all attempts")
        write_dataset(f, "wall", wall, "s", "wall time of the candidate")
        f.attrs["candidate_hashes"] = canonical_json(hashes)
    paths["results_h5"] = str(h5)
    return paths


# --- band gap (backend cross-check) ------------------------------------------------------

def parse_eigenvalues(text: str) -> tuple[list, list]:
    """(k-points [2pi/alat], eigenvalues [eV] per k) from the last
    ``End of ... calculation`` block of a pw.x output."""
    import re
    idx = max(text.rfind("End of self-consistent calculation"),
              text.rfind("End of band structure calculation"))
    if idx < 0:
        raise OracleError("invalid_output", "no eigenvalue block in the pw.x output")
    block = text[idx:]
    stop = re.search(r"(highest occupied|the Fermi energy|Writing output|!\s+total energy)", block)
    block = block[:stop.start()] if stop else block
    kpts, eigs = [], []
    parts = re.split(r"\n\s*k =", block)[1:]
    for part in parts:
        head, _, rest = part.partition("\n")
        kpts.append([float(x) for x in re.findall(r"-?\d+\.\d+", head)[:3]])
        body = rest.split("occupation numbers")[0]
        eigs.append([float(x) for x in re.findall(r"-?\d+\.\d+", body)])
    if not eigs:
        raise OracleError("invalid_output", "no eigenvalues found in the pw.x output")
    return kpts, eigs


def pw_band_gap(atoms, settings: dict | None = None, workdir: str | os.PathLike = "pw_gap",
                nbnd: int = 8, kspacing: float | None = None, line_points: int = 41) -> dict:
    """Kohn-Sham band gap [eV] from pw.x: an scf with ``nbnd`` bands on the
    ``kspacing`` mesh, then a non-SCF ``bands`` run along the cell's standard
    band path (ASE ``atoms.cell.bandpath``, ``line_points`` points).

    The gap is min(conduction) - max(valence) over the union of both k sets
    (insulator with fixed occupations; valence band count = electrons / 2).
    For Si the conduction minimum lies on Gamma-X (at ~0.85 X), which the path
    samples; for the PySCF cross-check, the functional is set by the UPF
    (e.g. Si.pbe-rrkj.UPF: PBE, norm-conserving RRKJ).

    Returns dict: gap_ev, vbm_ev, cbm_ev, direct_gap_ev, n_valence, kpts_scf,
    pseudopotentials, ecutwfc_ry.
    """
    import numpy as np
    s = settings_from(settings or {})
    s["occupations"] = "fixed"
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    pseudos = resolve_pseudopotentials(atoms.get_chemical_symbols(), s["pseudo_dir"],
                                       s["pseudopotentials"], s["functional_tag"])
    kpts = kpoint_grid(atoms, float(kspacing or s["kspacing"]))
    params = base_parameters(s, len(atoms))
    params["system"]["nbnd"] = int(nbnd)
    params["control"]["disk_io"] = "default"  # the bands run reads the scf wavefunction set-up
    cmd = pw_command(s)
    env = pw_environment(s["omp_num_threads"])
    write_pw_input(wd / "scf.in", atoms, params, pseudos, kpts, s["pseudo_dir"])
    run = run_pw([*cmd, "-in", "scf.in"], wd, float(s["timeout_s"]), env, name="scf")
    out_scf = (wd / "scf.out").read_text(errors="replace")
    d = qe.diagnose(out_scf, None, run["returncode"], run["timed_out"])
    if not d.ok:
        raise OracleError(d.error_class, f"band-gap scf failed in {wd}: {d.message}")
    _, e_scf = parse_eigenvalues(out_scf)
    import re
    nel = float(re.search(r"number of electrons\s*=\s*([\d.]+)", out_scf).group(1))
    nv = int(round(nel / 2))
    path = atoms.cell.bandpath(npoints=int(line_points))
    kcr = path.kpts  # fractional (crystal) coordinates
    kcards = np.column_stack([kcr, np.ones(len(kcr))])
    bparams = copy.deepcopy(params)
    bparams["control"]["calculation"] = "bands"
    # forces and stress are undefined for a non-SCF run
    bparams["control"].pop("tstress", None)
    bparams["control"].pop("tprnfor", None)
    write_pw_input(wd / "bands.in", atoms, bparams, pseudos, kcards, s["pseudo_dir"])
    run = run_pw([*cmd, "-in", "bands.in"], wd, float(s["timeout_s"]), env, name="bands")
    out_b = (wd / "bands.out").read_text(errors="replace")
    d = qe.diagnose(out_b, None, run["returncode"], run["timed_out"])
    if not d.ok:
        raise OracleError(d.error_class, f"band-gap bands run failed in {wd}: {d.message}")
    _, e_b = parse_eigenvalues(out_b)
    eig = np.array([e[:nbnd] for e in e_scf + e_b])
    if eig.shape[1] <= nv:
        raise OracleError("invalid_output", f"nbnd={nbnd} leaves no conduction band "
                          f"({nv} valence bands)")
    vbm, cbm = float(eig[:, nv - 1].max()), float(eig[:, nv].min())
    return {"gap_ev": cbm - vbm, "vbm_ev": vbm, "cbm_ev": cbm,
            "direct_gap_ev": float((eig[:, nv] - eig[:, nv - 1]).min()),
            "n_valence": nv, "kpts_scf": list(kpts), "pseudopotentials": pseudos,
            "ecutwfc_ry": float(s["ecutwfc"])}


def si_pbe_band_gap_ev(workdir: str | os.PathLike = "pw_gap_si", ecutwfc: float = 20.0,
                       pseudo: str = "Si.pbe-rrkj.UPF", pw: str = "/usr/bin/pw.x",
                       pseudo_dir: str = "/usr/share/espresso/pseudo") -> float:
    """PBE Kohn-Sham band gap of diamond Si [eV] from pw.x (a = 5.431
    angstrom from dmca_hpc.materials when available, norm-conserving PBE UPF,
    ``ecutwfc`` Ry, kspacing 0.3 1/angstrom, band path through Gamma-X)."""
    atoms = _material_atoms("Si")
    res = pw_band_gap(atoms, {"ecutwfc": ecutwfc, "pseudopotentials": {"Si": pseudo},
                              "pw": pw, "pseudo_dir": pseudo_dir, "kspacing": 0.3,
                              "timeout_s": 600.0}, workdir)
    return res["gap_ev"]


def _material_atoms(name: str):
    try:
        from dmca_hpc.materials import get_material
        return get_material(name).atoms()
    except ImportError:  # materials module absent in a partial checkout
        from ase.build import bulk
        return bulk("Si", "diamond", a=5.431)


# --- pipeline stage and CLI ----------------------------------------------------------------

def run_stage(ctx) -> dict:
    """Pipeline stage ``oracle``: candidates from ``oracle.structures``
    (extxyz, relative to the job file) or generated with ``ctx.seed`` from
    ``ctx.material`` (per-material stage) or, for the global stage, from every
    material of the job in order (``info['origin']`` names the material);
    outputs in ``ctx.stage_dir``."""
    section = dict(ctx.job.get(STAGE, {}) or {})
    settings = settings_from(section)
    if settings["structures"]:
        p = Path(settings["structures"])
        if not p.is_absolute():
            p = Path(ctx.job.get("_job_dir", ".")) / p
        candidates = read_candidates(p)
    elif ctx.material is not None:
        candidates = generate_candidates(ctx.material.atoms(), settings["generate"], int(ctx.seed))
    else:
        # global stage: candidates from every material of the job, in job order
        from dmca_hpc.materials import material_from_spec
        specs = ctx.job.get("materials") or []
        if not specs:
            raise OracleSetupError("oracle: no oracle.structures file and no materials in the "
                                   "job to generate candidates from")
        candidates = []
        for spec in specs:
            mat = material_from_spec(spec, ctx.job.get("_job_dir", "."))
            for a in generate_candidates(mat.atoms(), settings["generate"], int(ctx.seed)):
                a.info["origin"] = f"{mat.name}: {a.info['origin']}"
                candidates.append(a)
    name = getattr(ctx.material, "name", None)
    log = (lambda m: print(m, flush=True)) if ctx.comm.Get_rank() == 0 else None
    return run_batch(candidates, settings, ctx.stage_dir, comm=ctx.comm, telemetry=ctx.telemetry,
                     material=name, prov=ctx.prov, input_hash=ctx.input_hash, log=log)


def add_arguments(parser) -> None:
    """Arguments of ``dmca-hpc oracle``."""
    parser.add_argument("--structures", required=True, metavar="FILE.extxyz",
                        help="candidate structures (any ASE-readable multi-frame file)")
    parser.add_argument("--pseudo-dir", required=True, metavar="DIR", help="directory of UPF files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--pw", default=None, metavar="PATH",
                        help=f"absolute path of pw.x (default {DEFAULTS['pw']})")
    parser.add_argument("--ecutwfc", type=float, default=None, metavar="RY",
                        help=f"wavefunction cutoff [Ry] (default {DEFAULTS['ecutwfc']})")
    parser.add_argument("--kspacing", type=float, default=None, metavar="INV_ANGSTROM",
                        help="k-point spacing [1/angstrom, 2*pi included] "
                             f"(default {DEFAULTS['kspacing']})")
    parser.add_argument("--pseudo", action="append", default=[], metavar="EL=FILE",
                        help="UPF file for an element (repeatable), e.g. Si=Si.pbe-rrkj.UPF")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help=f"per-attempt timeout [s] (default {DEFAULTS['timeout_s']})")
    parser.add_argument("--max-attempts", type=int, default=None,
                        help=f"pw.x launches per candidate (default {DEFAULTS['max_attempts']})")
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML/JSON file with further oracle settings (job-file section keys)")
    parser.add_argument("--telemetry", default=None, metavar="DIR",
                        help="telemetry directory (default OUT/telemetry)")


def run_cli(args) -> int:
    """``dmca-hpc oracle``: exit 0 when the batch finished (even with failed
    candidates), 2 on a setup error (message names the bad value)."""
    from dmca_hpc.hpc.checkpoint import config_hash, file_sha256, provenance
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry, merge_rank_files
    comm = get_comm()
    rank = comm.Get_rank()
    try:
        section = {}
        if args.config:
            import yaml
            with open(args.config) as fh:
                section = yaml.safe_load(fh) or {}
            section = section.get(STAGE, section)
        pseudos = dict(section.get("pseudopotentials", {}))
        for item in args.pseudo:
            el, sep, f = item.partition("=")
            if not sep or not el or not f:
                raise OracleSetupError(f"--pseudo {item!r}: expected EL=FILE")
            pseudos[el] = f
        section["pseudopotentials"] = pseudos
        settings = settings_from(section, pw=args.pw, pseudo_dir=args.pseudo_dir,
                                 ecutwfc=args.ecutwfc, kspacing=args.kspacing,
                                 timeout_s=args.timeout, max_attempts=args.max_attempts,
                                 structures=args.structures)
        if not Path(settings["pseudo_dir"]).is_dir():
            raise OracleSetupError(f"--pseudo-dir {settings['pseudo_dir']}: not a directory")
        pw_command(settings)
        candidates = read_candidates(args.structures)
    except (OracleSetupError, OSError) as exc:
        if rank == 0:
            print(f"dmca-hpc oracle: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    ih = config_hash({"settings": {k: v for k, v in settings.items() if k not in _OPERATIONAL},
                      "structures": file_sha256(args.structures)})
    prov = provenance(input_hash=ih, nranks=comm.Get_size())
    tdir = Path(args.telemetry) if args.telemetry else out / "telemetry"
    tel = Telemetry(tdir, rank=rank)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if rank == 0 else None
    paths = run_batch(candidates, settings, out, comm=comm, telemetry=tel, prov=prov,
                      input_hash=ih, log=log)
    comm.barrier()
    if rank == 0:
        merge_rank_files(tdir)
        nfail = len(json.loads(Path(paths["failures"]).read_text()))
        print(json.dumps({"candidates": len(candidates), "failed": nfail, **paths}, indent=1))
    return 0


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="dmca-hpc oracle",
                                description="label structures with self-correcting pw.x runs")
    add_arguments(p)
    from dmca_hpc.hpc.parallel import abort_on_exception
    return int(abort_on_exception(run_cli)(p.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
