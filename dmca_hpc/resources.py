"""The one locator of the project's installed files.

config/ (job and telemetry schemas, experiment.yaml, the Grafana dashboard),
jobs/ (the job catalogue, the quickstart), slurm/ (sbatch templates) and the
shipped form-factor tables are found here and nowhere else.  The roots, in
order of preference:

1. the source tree beside the package (checkout, editable install);
2. ``$DMCA_HPC_HOME`` (the container's copy of the source tree);
3. ``<prefix>/share/dmca_hpc`` for ``sys.prefix`` and the user base: what a
   wheel installs through setup.cfg's ``data_files``.

``DMCA_HPC_CONFIG_DIR`` and ``DMCA_HPC_SLURM_DIR`` override one folder each.
A missing file raises :class:`FileNotFoundError` naming every place looked in
and the variable that fixes it.  Only the standard library is imported.
"""
from __future__ import annotations

import os
import site
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: folder -> (a file that proves the folder is the right one, overriding variable)
_FOLDERS = {
    "config": ("job.schema.json", "DMCA_HPC_CONFIG_DIR"),
    "jobs": ("quickstart.yaml", None),
    "slurm": ("common.sh", "DMCA_HPC_SLURM_DIR"),
}


def install_roots() -> list[Path]:
    """Candidate roots holding config/, jobs/ and slurm/, most preferred first."""
    roots = [PACKAGE_DIR.parent]
    if os.environ.get("DMCA_HPC_HOME"):
        roots.append(Path(os.environ["DMCA_HPC_HOME"]))
    for prefix in (sys.prefix, getattr(site, "USER_BASE", None) or ""):
        if prefix:
            roots.append(Path(prefix) / "share" / "dmca_hpc")
    return roots


def folder(kind: str) -> Path:
    """The installed folder ``config``, ``jobs`` or ``slurm``."""
    marker, env = _FOLDERS[kind]
    if env and os.environ.get(env):
        return Path(os.environ[env])
    tried = [root / kind for root in install_roots()]
    for cand in tried:
        if (cand / marker).is_file():
            return cand
    fix = f"set {env} or DMCA_HPC_HOME" if env else "set DMCA_HPC_HOME"
    raise FileNotFoundError(f"dmca_hpc: the {kind}/ folder (with {marker}) was not found; looked in "
                            + ", ".join(map(str, tried)) + f"; {fix} to the dmca_hpc source tree")


def config_dir() -> Path:
    """Folder with job.schema.json, schema/, telemetry.schema.json, experiment.yaml."""
    return folder("config")


def config_file(name: str) -> Path:
    """A file below config/ (``"schema/slurm.schema.json"``, ``"telemetry.schema.json"``)."""
    p = config_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"dmca_hpc: {name} not found in {p.parent}; set DMCA_HPC_CONFIG_DIR "
                                "or DMCA_HPC_HOME to the dmca_hpc source tree")
    return p


def job_file(name: str) -> Path:
    """A job of the catalogue (``"quickstart.yaml"``)."""
    p = folder("jobs") / name
    if not p.is_file():
        raise FileNotFoundError(f"dmca_hpc: job {name} not found in {p.parent}")
    return p


def slurm_dir() -> Path:
    """Folder with the sbatch templates and common.sh."""
    return folder("slurm")


def tables_dir() -> Path:
    """Package data folder of the shipped form-factor tables (inside the package)."""
    return PACKAGE_DIR / "data" / "tables"
