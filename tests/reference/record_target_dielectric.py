#!/usr/bin/env python
"""Record what tests/reference/test_target_dielectric.py checks from runs of
jobs/eps_{gaas,sic,nai,csi}.yaml into tests/reference/data/target_dielectric.json.

Usage::

    python tests/reference/record_target_dielectric.py RUN_DIR [RUN_DIR ...] [--json PATH]

RUN_DIR is one run's output directory (``dmca-hpc run jobs/eps_sic.yaml --out
RUN_DIR``; the default is runs/eps_sic).  Every ``RUN_DIR/<Material>/dielectric/
dielectric.h5`` found is read; its entry in the JSON is replaced, the other
materials' entries are kept.  The dielectric.h5 files (3 MB each) are too big to
commit; the JSON holds only the numbers the test compares, ~1 kB per material.

Per material the JSON holds (units in the top-level ``units`` map, as the stage
writes them: its scalar attrs carry their unit in the name, ``_ev`` = eV, no suffix
= dimensionless):

* ``values``: the dielectric.h5 attrs ``eps_static`` (1), ``eps_static_spectrum``
  (1), ``plasmon_peak_ev`` (eV), ``gap_ev`` (eV);
* ``method``: from attrs ``method`` the optical route, the states-route k mesh
  (k points per axis) and scissor (eV), and every ``*warning*`` key the stage set;
* where it came from: ``job`` (the job file, relative to the repository),
  ``job_name``, ``job_hash`` (SHA-256 of the effective job, as in provenance.json),
  ``job_spec_sha256`` (SHA-256 of the canonical JSON of the job file as written:
  comments and later-added defaults do not change it), ``git_sha``, ``nranks``,
  ``finished_at`` (the dielectric stage's stage.json) and ``dielectric_wall_seconds``
  (s, the same stage.json or run.json), ``run_dir``.

A run is refused when a key its job file sets has another value in the run's
job.yaml (the run was not of this job file as it stands now).  Bad input gives one
line per problem and exit code 2; the runs that could be read are still recorded.
The output is sorted JSON, so recording the same runs twice gives the same bytes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_JSON = HERE / "data" / "target_dielectric.json"

# the dielectric.h5 attrs the test compares -> unit (the stage writes bare floats)
VALUE_UNITS = {"eps_static": "1", "eps_static_spectrum": "1", "plasmon_peak_ev": "eV",
               "gap_ev": "eV"}
# attrs['method'] keys the test reads -> unit; '*warning*' keys are copied as well,
# because the test asserts their absence and a recording that dropped them would pass
METHOD_UNITS = {"optical_route": "", "optical_states_kmesh": "k points per axis",
                "optical_states_scissor_ev": "eV"}
UNITS = {**VALUE_UNITS, **{f"method.{k}": u for k, u in METHOD_UNITS.items() if u},
         "dielectric_wall_seconds": "s"}


class RecordError(Exception):
    """One problem with one run, worded for a single line."""


def _load_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise RecordError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except ValueError as exc:
        raise RecordError(f"{path}: not JSON ({exc}); expected {what}") from None


def read_dielectric(path: str | Path) -> dict:
    """The quantities the test checks, from one dielectric.h5.

    Returns ``{"material", "values": {attr: float}, "method": {key: value}}``
    (units: :data:`UNITS`).  Raises :class:`RecordError` naming the file and the
    missing attr."""
    import h5py
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs.keys()}
    except OSError as exc:
        raise RecordError(f"{path}: cannot read as HDF5 ({exc})") from None
    missing = [k for k in (*VALUE_UNITS, "method") if k not in attrs]
    if missing:
        raise RecordError(f"{path}: attrs {missing} missing; expected a dielectric-stage "
                          f"dielectric.h5 (attrs {sorted(VALUE_UNITS)} and 'method')")
    try:
        method = json.loads(attrs["method"])
    except (TypeError, ValueError):
        raise RecordError(f"{path}: attrs['method'] is not JSON; expected the stage's "
                          f"method record") from None
    keep = {k: method[k] for k in METHOD_UNITS if k in method}
    keep.update({k: method[k] for k in method if "warning" in k})
    material = attrs.get("material", "")
    return {"material": material.decode() if isinstance(material, bytes) else str(material),
            "values": {k: float(attrs[k]) for k in VALUE_UNITS},
            "method": keep,
            "provenance": json.loads(attrs["provenance"]) if "provenance" in attrs else {}}


def _leaves(d: dict, prefix: tuple = ()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,)


def _get(d: Any, path: tuple):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return KeyError
        d = d[k]
    return d


def job_spec(job_file: Path) -> tuple[dict, str]:
    """(effective job, SHA-256 of the job file as written) of a repository job file.
    Raises :class:`RecordError` when it is missing or invalid."""
    from dmca_hpc.config import JobError, load_job, parse_yaml, public_job
    from dmca_hpc.hpc.checkpoint import config_hash
    try:
        raw = parse_yaml(job_file)
        job = public_job(load_job(job_file))
    except JobError as exc:
        raise RecordError(str(exc).splitlines()[0]) from None
    return job, config_hash(raw)


def job_keys_differing(job_file: Path, run_job: dict) -> list[str]:
    """Dotted keys that ``job_file`` sets (as loaded now: defaults applied, paths
    resolved) to a value the run's effective job (its job.yaml) does not have."""
    from dmca_hpc.config import parse_yaml
    effective, _ = job_spec(job_file)
    raw = parse_yaml(job_file)
    return sorted(".".join(map(str, p)) for p in _leaves(raw)
                  if _get(effective, p) != _get(run_job, p))


def record_run(h5_path: str | Path) -> dict:
    """Everything recorded for one ``<run>/<Material>/dielectric/dielectric.h5``:
    :func:`read_dielectric` plus the run's provenance (the h5's attrs, else
    provenance.json), job file, stage time and the job-file consistency check
    (``job_keys_differing``, empty when the run was of the job file as it stands).

    The test builds its checks from this dict whether it reads a run directory or
    the JSON, so both give the same keys."""
    h5_path = Path(h5_path)
    stage_dir = h5_path.parent
    mat_dir = stage_dir.parent
    run_dir = mat_dir.parent
    rec = read_dielectric(h5_path)
    if rec["material"] and rec["material"] != mat_dir.name:
        raise RecordError(f"{h5_path}: attrs['material'] = {rec['material']!r} in directory "
                          f"{mat_dir.name!r}; expected <run>/<Material>/dielectric/")
    rec["material"] = mat_dir.name
    rec.update(run_provenance(run_dir, rec.pop("provenance"), mat_dir.name, "dielectric"))
    return {k: v for k, v in rec.items() if v is not None}


def run_provenance(run_dir: Path, prov: dict, material: str, stage: str) -> dict:
    """Job file, hashes, git sha, ranks and one stage's wall time [s] of one run.

    ``prov``: the stage output's own provenance (its attrs), completed by the
    run's provenance.json.  The job file is the one given on the command line
    (relative to the repository root), else jobs/<job name>.yaml; a run started
    from a copy of jobs/ outside the repository (a production snapshot) is
    checked against the repository's job file of that name, and the path it was
    run from is kept as ``job_as_run``.  Shared by the recorders of
    tests/reference (record_target_states.py imports it)."""
    import yaml
    if (run_dir / "provenance.json").is_file():
        prov = {**_load_json_file(run_dir / "provenance.json", "the run's provenance"), **prov}
    job_yaml = run_dir / "job.yaml"
    if not job_yaml.is_file():
        raise RecordError(f"{job_yaml}: missing; expected the run's job.yaml (a directory "
                          f"written by dmca-hpc run)")
    run_job = yaml.safe_load(job_yaml.read_text()) or {}
    name = run_job.get("name") or ""
    argv = [a for a in prov.get("argv", []) if a.endswith((".yaml", ".yml"))]
    as_run = Path(argv[0]) if argv else Path("jobs") / f"{name}.yaml"
    job_file = as_run if as_run.is_absolute() else REPO / as_run
    out: dict = {}
    try:
        job_rel = job_file.resolve().relative_to(REPO)
    except ValueError:
        out["job_as_run"] = str(as_run)
        job_rel = Path("jobs") / f"{name}.yaml"
        job_file = REPO / job_rel
    if not job_file.is_file():
        raise RecordError(f"{job_file}: job file of run {run_dir} (job {name!r}) not found; "
                          f"expected it in the repository")
    _, spec_sha = job_spec(job_file)
    out.update({"job": job_rel.as_posix(), "job_name": name, "job_spec_sha256": spec_sha,
                "job_keys_differing": job_keys_differing(job_file, run_job),
                "job_hash": prov.get("job_hash") or None, "git_sha": prov.get("git_sha") or None,
                "nranks": prov.get("nranks"), "run_dir": str(run_dir)})
    stage_dir = run_dir / material / stage
    manifest = (_load_json_file(stage_dir / "stage.json", "the stage manifest")
                if (stage_dir / "stage.json").is_file() else {})
    wall = manifest.get("wall_seconds")
    if wall is None and (run_dir / "run.json").is_file():
        run = _load_json_file(run_dir / "run.json", "the run summary")
        wall = ((run.get("stages") or {}).get(f"{material}/{stage}") or {}).get("wall_seconds")
    out["finished_at"] = manifest.get("finished_at")
    # a wall time is a measurement of one machine's load: 0.1 s says all it can
    out[f"{stage}_wall_seconds"] = round(float(wall), 1) if wall is not None else None
    return out


def find_runs(run_dir: Path) -> list[Path]:
    """The ``<Material>/dielectric/dielectric.h5`` files of one run directory."""
    if not run_dir.is_dir():
        raise RecordError(f"{run_dir}: not a directory; expected a run's output directory")
    found = sorted(run_dir.glob("*/dielectric/dielectric.h5"))
    if not found:
        raise RecordError(f"{run_dir}: no <Material>/dielectric/dielectric.h5; expected a run "
                          f"of jobs/eps_*.yaml with its dielectric stage finished")
    return found


def dumps(doc: dict) -> str:
    """The file's bytes: sorted keys, one-space indent, trailing newline."""
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"


ABOUT = ("dielectric-stage results of jobs/eps_*.yaml checked by "
         "tests/reference/test_target_dielectric.py; written by "
         "tests/reference/record_target_dielectric.py RUN_DIR ... (do not edit by hand)")


def recorder_args(argv, doc: str, default_json: Path, run_dir_help: str):
    """The recorders' command line: RUN_DIR... and --json (default ``default_json``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help=run_dir_help)
    ap.add_argument("--json", type=Path, default=default_json,
                    help=f"file to write/update (default: {default_json.relative_to(REPO)})")
    return ap.parse_args(argv)


def record_into_json(run_dirs, json_path: Path, top_key: str, find, record, key_of,
                     report, about: str, units: dict) -> int:
    """The recorders' common loop: read ``json_path`` first (an unreadable file stops
    before any recording, since writing over it could lose entries), record every run
    ``find(run_dir)`` yields with ``record(path, timings)``, refuse a run whose job.yaml
    differs from the job file or whose key (``key_of(rec)``) was given twice, merge the
    records into ``doc[top_key]`` and write atomically; ``report(key, rec, timings)``
    prints each record.  Returns the exit code: 2 when anything was refused."""
    doc: dict = {top_key: {}}
    if json_path.is_file():
        try:
            doc = _load_json_file(json_path, f"a {json_path.name}")
            if not isinstance(doc.get(top_key), dict):
                raise RecordError(f"{json_path}: key {top_key!r} missing; expected the "
                                  f"recorder's own file")
        except RecordError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    problems: list[str] = []
    records: dict[str, dict] = {}
    for run_dir in run_dirs:
        try:
            paths = find(run_dir)
        except RecordError as exc:
            problems.append(str(exc))
            continue
        for h5 in paths:
            timings: dict = {}
            try:
                rec = record(h5, timings)
            except RecordError as exc:
                problems.append(str(exc))
                continue
            if rec["job_keys_differing"]:
                problems.append(f"{rec['run_dir']}: {rec['material']}: the run's job.yaml "
                                f"differs from {rec['job']} at {rec['job_keys_differing']}; "
                                f"expected a run of the job file as it stands (re-run it)")
                continue
            key = key_of(rec)
            if key in records:
                problems.append(f"{h5}: {key!r} given twice (also "
                                f"{records[key]['run_dir']}); expected one run each")
                continue
            records[key] = rec
            report(key, rec, timings)
    doc["about"] = about
    doc["units"] = units
    doc[top_key].update(records)
    if records:
        from dmca_hpc.hpc.checkpoint import atomic_path
        with atomic_path(json_path) as tmp:
            tmp.write_text(dumps(doc))
        print(f"{sorted(records)} -> {json_path}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 2 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = recorder_args(argv, __doc__, DEFAULT_JSON, "output directory of one run of jobs/eps_*.yaml")

    def report(mat, rec, timings):
        v = rec["values"]
        print(f"{mat}: eps_static {v['eps_static']:.4f}, eps_static_spectrum "
              f"{v['eps_static_spectrum']:.4f}, plasmon {v['plasmon_peak_ev']:.2f} eV, gap "
              f"{v['gap_ev']:.3f} eV ({rec['job']}, git {str(rec.get('git_sha'))[:10]}, "
              f"dielectric stage {rec.get('dielectric_wall_seconds', 'n/a')} s)")

    return record_into_json(args.run_dirs, args.json, "materials", find_runs,
                            lambda h5, timings: record_run(h5), lambda rec: rec["material"],
                            report, ABOUT, UNITS)


if __name__ == "__main__":
    sys.exit(main())
