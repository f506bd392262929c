"""HDF5 checkpoints that survive a kill, and run provenance.

Rules (shared/design/architecture.md, Checkpoints):

* Every file is written under a temporary name in the same directory and
  renamed into place only when complete (``os.replace`` is atomic on POSIX),
  so a kill never leaves a half-written file that looks complete.  A file
  that is complete carries ``attrs['complete'] = True``, written last.
* Every file carries the hash of the configuration it depends on
  (``attrs['input_hash']``), the schema version, the package version, the git
  SHA when known, and ``units`` attributes on every dataset.
* Per-unit results go to one small file per unit (:class:`UnitStore`), which
  any rank can write without coordination (PyPI's h5py has no parallel HDF5);
  rank 0 merges them at the end.  A restart with any rank count reads which
  units are done; a truncated or corrupt unit file, or one written for other
  inputs, counts as not done and is recomputed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

SCHEMA_VERSION = 1


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def config_hash(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes (used to tie a stage to its input files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_GIT_SHA: str | None | bool = False


def git_sha() -> str | None:
    """Git SHA of the package source tree, or None when not in a checkout."""
    global _GIT_SHA
    if _GIT_SHA is False:
        here = Path(__file__).resolve().parent
        try:
            out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                                 capture_output=True, text=True, timeout=5)
            _GIT_SHA = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            _GIT_SHA = None
    return _GIT_SHA


def library_versions() -> dict[str, str]:
    """Versions of the libraries that can change results (only those already
    imported or cheaply importable metadata; never imports pyscf itself)."""
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "h5py", "pyscf", "ase", "spglib", "numba", "mpi4py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(input_hash: str | None = None, nranks: int | None = None,
               seeds: Mapping[str, int] | None = None, job_hash: str | None = None) -> dict:
    """Provenance recorded with every output: package version, git SHA,
    hash of the effective job config and of the stage's inputs, library
    versions, rank count, seeds, host and command line."""
    from dmca_hpc import __version__
    return {
        "package": "dmca_hpc",
        "package_version": __version__,
        "git_sha": git_sha() or "unknown",
        "job_hash": job_hash or "",
        "input_hash": input_hash or "",
        "nranks": int(nranks) if nranks is not None else 1,
        "seeds": dict(seeds or {}),
        "libraries": library_versions(),
        "host": platform.node(),
        "argv": list(sys.argv),
    }


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if
    the block finishes without an exception (else remove it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, input_hash: str = "", stage: str = "",
              prov: Mapping | None = None):
    """Open a new HDF5 file for writing, stamped and renamed into place on
    success.  ``attrs['complete']`` is set last, just before closing."""
    import h5py
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["input_hash"] = input_hash
            f.attrs["stage"] = stage
            f.attrs["complete"] = False
            if prov is not None:
                f.attrs["provenance"] = canonical_json(prov)
            yield f
            f.attrs["complete"] = True


def write_dataset(group, name: str, data, units: str, description: str = "", **kw):
    """Create a dataset with its ``units`` (and optional description) attribute.
    ``units`` is mandatory: use ``"1"`` for dimensionless numbers."""
    ds = group.create_dataset(name, data=data, **kw)
    ds.attrs["units"] = units
    if description:
        ds.attrs["description"] = description
    return ds


def is_complete(path: str | os.PathLike, input_hash: str | None = None) -> bool:
    """True if ``path`` is a readable HDF5 file marked complete (and, when
    ``input_hash`` is given, written for those inputs)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                return False
            if input_hash is not None and f.attrs.get("input_hash", "") != input_hash:
                return False
            return True
    except (OSError, KeyError, ValueError):
        return False


class UnitStore:
    """One small HDF5 file per finished unit, in ``directory``.

    ``save`` may be called from any rank; files are atomic.  ``done()``
    returns the unit indices whose file is complete and was written for
    ``input_hash``; anything else (truncated, corrupt, other inputs) is not
    done and gets recomputed (and a stale file is removed by rank 0 only
    when it is overwritten).
    """

    def __init__(self, directory: str | os.PathLike, input_hash: str):
        self.dir = Path(directory)
        self.input_hash = input_hash
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.dir / f"unit-{index:07d}.h5"

    def save(self, index: int, arrays: Mapping[str, Any], units: Mapping[str, str],
             attrs: Mapping[str, Any] | None = None) -> Path:
        """Write unit ``index``: every array needs an entry in ``units``."""
        p = self.path(index)
        with atomic_h5(p, input_hash=self.input_hash, stage=self.dir.name) as f:
            f.attrs["unit_index"] = index
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
            for k, v in arrays.items():
                write_dataset(f, k, v, units[k])
        return p

    def load(self, index: int) -> tuple[dict, dict]:
        """(arrays, attrs) of unit ``index`` (raises if it is not done)."""
        import h5py
        with h5py.File(self.path(index), "r") as f:
            arrays = {k: f[k][()] for k in f.keys()}
            attrs = dict(f.attrs)
        return arrays, attrs

    def is_done(self, index: int) -> bool:
        return is_complete(self.path(index), self.input_hash)

    def done(self, n: int | None = None) -> set[int]:
        """Indices of complete units for this input hash (< n if given)."""
        out = set()
        for p in self.dir.glob("unit-*.h5"):
            try:
                i = int(p.stem.split("-")[1])
            except (IndexError, ValueError):
                continue
            if (n is None or i < n) and is_complete(p, self.input_hash):
                out.add(i)
        return out

    def written_since(self, t_epoch: float, n: int | None = None) -> int:
        """How many unit files (index < n if given) were written at or after
        ``t_epoch`` [s since the epoch]: the units any rank finished in this run,
        counted from the file names and times only (cheap enough for a progress
        line; files of earlier runs, other inputs included, are older)."""
        c = 0
        for p in self.dir.glob("unit-*.h5"):
            try:
                i = int(p.stem.split("-")[1])
                if (n is None or i < n) and p.stat().st_mtime >= t_epoch:
                    c += 1
            except (IndexError, ValueError, OSError):
                continue
        return c

    def clear(self):
        for p in self.dir.glob("unit-*.h5"):
            p.unlink()
