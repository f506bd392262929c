"""Job files: load, validate against config/job.schema.json, apply defaults.

Every problem is reported as one line ``FILE: key.path[i]: what is wrong
(expected ...)`` and collected in a :class:`JobError`; nothing here raises a
traceback at a user.  The stage sections are described by fragments in
config/schema/<section>.schema.json referenced from the job schema.

Defaults: the job file over :mod:`dmca_hpc.settings` (the one model of every
section's defaults, units and docs; the schema fragments are tested against
it).  config/experiment.yaml keeps the DMCA structure (domains, hypotheses,
interventions) and documents the same PySCF defaults in its ``pyscf`` block.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from dmca_hpc.stages.registry import PER_MATERIAL, STAGE_NEEDS, STAGE_ORDER  # noqa: F401


class JobError(ValueError):
    """Invalid job file; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


from dmca_hpc.resources import config_dir, install_roots  # noqa: E402  (the one locator)


@lru_cache(maxsize=None)
def _load_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def job_schema() -> dict:
    """The job schema with the stage fragments inlined.  A fragment file
    that does not exist yet stands as an object without constraints."""
    d = config_dir()
    schema = copy.deepcopy(_load_json(str(d / "job.schema.json")))
    for key, sub in schema["properties"].items():
        ref = sub.get("$ref") if isinstance(sub, dict) else None
        if ref:
            p = d / ref
            frag = copy.deepcopy(_load_json(str(p))) if p.exists() else {"type": "object"}
            frag.pop("$schema", None)
            frag.pop("$id", None)
            schema["properties"][key] = frag
    return schema


def experiment_defaults() -> dict:
    """config/experiment.yaml as a dict."""
    import yaml
    with open(config_dir() / "experiment.yaml") as fh:
        return yaml.safe_load(fh)


def key_path(parts) -> str:
    """``['dft', 'kmesh', 2]`` -> ``dft.kmesh[2]``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def _type_name(v) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _describe(err) -> list[tuple[str, str]]:
    """(key path, message) pairs for one jsonschema error."""
    path = list(err.absolute_path)
    v, inst, sch = err.validator, err.instance, err.schema
    if v == "additionalProperties":
        allowed = sorted(sch.get("properties", {}))
        out = []
        for k in sorted(set(inst) - set(allowed), key=str):  # YAML keys need not be strings
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append((key_path(path + [k]),
                        f"unknown key {k!r}{hint}; expected one of: {', '.join(allowed)}"))
        return out
    if v == "required":
        missing = err.validator_value
        names = [k for k in missing if k not in inst] if isinstance(inst, dict) else missing
        return [(key_path(path + [k]), f"missing required key {k!r}") for k in names]
    if v == "enum":
        what = "material" if path[:1] == ["materials"] else "value"
        extra = " (or a mapping with structure_file)" if what == "material" else ""
        return [(key_path(path), f"unknown {what} {inst!r}; expected one of: "
                 f"{', '.join(map(str, err.validator_value))}{extra}")]
    if v == "type":
        exp = err.validator_value
        exp = " or ".join(exp) if isinstance(exp, list) else exp
        return [(key_path(path), f"expected {exp}, got {_type_name(inst)} {inst!r}")]
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return [(key_path(path), f"got {inst!r}, expected a number {op} {err.validator_value}")]
    if v in ("minItems", "maxItems"):
        return [(key_path(path), f"expected a list of {'at least' if v == 'minItems' else 'at most'} "
                 f"{err.validator_value} items, got {len(inst)}")]
    if v == "uniqueItems":
        return [(key_path(path), "expected every item once, got duplicates")]
    if v == "pattern":
        # a schema may say in words what its pattern means ("x-expected", ignored by jsonschema)
        exp = sch.get("x-expected") or f"text matching {err.validator_value}"
        return [(key_path(path), f"got {inst!r}, expected {exp}")]
    if v in ("anyOf", "oneOf") and err.context:
        from jsonschema.exceptions import best_match
        return _describe(best_match(err.context))
    return [(key_path(path), err.message)]


def _nonfinite(obj, path=()):
    """Key paths of the NaN / infinite numbers in ``obj`` (YAML's .nan, .inf)."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            yield list(path), obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nonfinite(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nonfinite(v, path + (i,))


def validate(job: Any, filename: str = "<job>") -> list[str]:
    """All problems of ``job`` as ``FILE: key: message`` lines (empty = valid)."""
    from jsonschema import Draft202012Validator
    if not isinstance(job, dict):
        return [f"{filename}: (top level): expected a mapping of keys, got {_type_name(job)}"]
    val = Draft202012Validator(job_schema())
    # JSON Schema's minimum/maximum let .inf through and every comparison with .nan
    # passes: no job number may be either
    lines = [f"{filename}: {key_path(kp)}: got {v!r}, expected a finite number"
             for kp, v in _nonfinite(job)]
    for err in sorted(val.iter_errors(job), key=lambda e: (list(map(str, e.absolute_path)), e.validator)):
        for kp, msg in _describe(err):
            line = f"{filename}: {kp}: {msg}"
            if line not in lines:
                lines.append(line)
    stages = job.get("stages") if isinstance(job.get("stages"), list) else []
    for st in stages:
        for need in (STAGE_NEEDS.get(st, ()) if isinstance(st, str) else ()):
            if need not in stages:
                lines.append(f"{filename}: stages: stage {st!r} needs stage {need!r} in the same job")
    needs_material = [s for s in stages if s in ("materials", "dft", "bands", "formfactor", "dielectric")]
    if needs_material and not job.get("materials"):
        lines.append(f"{filename}: materials: stages {', '.join(needs_material)} need at least one material")
    return lines


def _fill_defaults(obj: dict, schema: dict):
    for key, sub in schema.get("properties", {}).items():
        if not isinstance(sub, dict):
            continue
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if sub.get("type") == "object" and isinstance(obj.get(key), dict):
            _fill_defaults(obj[key], sub)


def _path_props(schema: dict, prefix=()):
    """(key path, is_list) of every property marked ``"format": "path"``."""
    for key, sub in schema.get("properties", {}).items():
        if not isinstance(sub, dict):
            continue
        if sub.get("format") == "path":
            yield prefix + (key,), False
        elif isinstance(sub.get("items"), dict) and sub["items"].get("format") == "path":
            yield prefix + (key,), True
        elif "properties" in sub:
            yield from _path_props(sub, prefix + (key,))


def resolve_paths(job: dict, base_dir: str | os.PathLike, filename: str = "<job>") -> list[str]:
    """Make every path-valued key (schema ``"format": "path"``) absolute,
    relative to the job file's directory, in place; returns one problem line
    per path that does not exist."""
    problems = []
    for keys, is_list in _path_props(job_schema()):
        parent = job
        for k in keys[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or parent.get(keys[-1]) in (None, ""):
            continue
        vals = parent[keys[-1]]
        items = list(enumerate(vals)) if is_list else [(None, vals)]
        out = []
        for i, v in items:
            p = Path(os.path.expanduser(str(v)))
            if not p.is_absolute():
                p = (Path(base_dir) / p).resolve()
            if not p.exists():
                kp = key_path(list(keys) + ([i] if i is not None else []))
                problems.append(f"{filename}: {kp}: file or directory {str(p)!r} does not exist")
            out.append(str(p))
        parent[keys[-1]] = out if is_list else out[0]
    return problems


def apply_defaults(job: dict) -> dict:
    """A copy of a valid job with every default filled in: each section's
    fields from :mod:`dmca_hpc.settings` (the one model of the defaults), then
    the defaults of nested objects (``oracle.generate`` ...) from the schema."""
    from dmca_hpc import settings
    job = copy.deepcopy(job)
    for f in settings.TOP_LEVEL:
        job.setdefault(f.name, copy.deepcopy(f.default))
    for name in settings.SECTIONS:
        job[name] = settings.with_defaults(name, job.get(name), error=lambda m: JobError([m]))
    _fill_defaults(job, job_schema())
    return job


class _DuplicateKey(Exception):
    """A mapping of a YAML document gives one key twice."""

    def __init__(self, path: list, key, line: int, first_line: int):
        super().__init__(f"{key_path(path)}: key {key!r} given twice (line {line}, first at line "
                         f"{first_line}); expected each key once")


@lru_cache(maxsize=None)
def _job_loader():
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping
    (PyYAML keeps the last one silently, so a second ``dft:`` block would
    quietly replace the first).  Merge keys (``<<``) may still be overridden."""
    import yaml

    class JobLoader(yaml.SafeLoader):
        def construct_document(self, node):
            self._check_mappings(node, [], set())
            return super().construct_document(node)

        def _check_mappings(self, node, path, done):
            if id(node) in done:  # an alias: checked where its anchor stands (and no cycles)
                return
            done.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    self._check_mappings(item, path + [i], done)
            elif isinstance(node, yaml.MappingNode):
                first: dict = {}
                for knode, vnode in node.value:
                    key = knode.value if isinstance(knode, yaml.ScalarNode) else None
                    if key is not None and knode.tag != "tag:yaml.org,2002:merge":
                        try:
                            key = self.construct_object(knode)  # 'seed' and "seed" are one key
                            hash(key)
                        except Exception:
                            key = knode.value
                        if key in first:
                            raise _DuplicateKey(path + [key], key, knode.start_mark.line + 1,
                                                first[key])
                        first[key] = knode.start_mark.line + 1
                    self._check_mappings(vnode, path + ([key] if key is not None else []), done)

    return JobLoader


def load_yaml_text(stream) -> Any:
    """YAML of a str, bytes or binary stream, refusing duplicate keys
    (raises ``yaml.YAMLError`` or :class:`_DuplicateKey`)."""
    import yaml
    return yaml.load(stream, Loader=_job_loader())


def parse_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file; raises JobError with one line on any read/parse
    error: unreadable file, not UTF-8 text (a binary file), malformed YAML,
    a key given twice in one mapping."""
    import yaml
    p = str(path)
    try:
        with open(p, "rb") as fh:  # bytes: PyYAML decodes (UTF-8/16) and reports bad bytes
            return load_yaml_text(fh)
    except OSError as exc:
        raise JobError([f"{p}: cannot read the file: {exc.strerror}"]) from None
    except _DuplicateKey as exc:
        raise JobError([f"{p}: {exc}"]) from None
    except yaml.reader.ReaderError as exc:
        raise JobError([f"{p}: (top level): not a YAML text file ({exc.reason} at position "
                        f"{exc.position}); expected a UTF-8 YAML job file"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobError([f"{p}: (top level): malformed YAML{where}: {problem}"]) from None


def set_key(job: dict, dotted: str, value: Any) -> None:
    """Set ``job['a']['b']`` for ``dotted = 'a.b'`` (creating mappings)."""
    parts = dotted.split(".")
    d = job
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def load_job(path: str | os.PathLike, overrides: dict | None = None) -> dict:
    """Read, validate and complete a job file.

    Args:
        path: the YAML job file.
        overrides: ``{"dotted.key": value}`` applied before validation (the
            command line's ``--set``, ``--material``, ``--mass-mev``).  With
            ``materials`` given as names, entries of the job with the same
            name are kept as written (structure files included).

    Returns the effective job (defaults applied) with ``_job_file`` and
    ``_job_dir`` set; raises :class:`JobError` listing every problem.
    """
    raw = parse_yaml(path)
    if overrides and isinstance(raw, dict):
        for key, val in overrides.items():
            if key == "materials" and isinstance(val, list):
                # names given on the command line keep the job's own entry of that name;
                # anything else (mappings, wrong types) is left for validation to report
                have = raw.get("materials") if isinstance(raw.get("materials"), list) else []
                byname = {(m if isinstance(m, str) else m.get("name")): m for m in have
                          if isinstance(m, str) or (isinstance(m, dict) and isinstance(m.get("name"), str))}
                val = [byname.get(v, v) if isinstance(v, str) else v for v in val]
            set_key(raw, key, val)
    problems = validate(raw, str(path))
    if not problems:
        from dmca_hpc.materials import MaterialError, material_from_spec
        for i, spec in enumerate(raw.get("materials", [])):
            try:
                material_from_spec(spec, Path(path).parent)
            except MaterialError as exc:
                problems.append(f"{path}: materials[{i}]: {exc}")
    if problems:
        raise JobError(problems)
    job = apply_defaults(raw)
    problems = resolve_paths(job, Path(path).resolve().parent, str(path))
    if problems:
        raise JobError(problems)
    job["_job_file"] = str(Path(path).resolve())
    job["_job_dir"] = str(Path(path).resolve().parent)
    return job


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set`` -> (dotted key, value).  The key must be a
    field of :mod:`dmca_hpc.settings` (or ``materials``/``stages``/``name``);
    VALUE is YAML.  Raises ValueError with one line naming the key, what was
    wrong and what is expected (the field's type, unit and doc)."""
    import yaml
    from dmca_hpc import settings
    key, sep, val = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. dft.kmesh=[3,3,3]")
    try:
        f = settings.field(".".join(key.split(".")[:2]))  # sec.key; deeper: inside an object field
        if key.count(".") > 1 and "object" not in f.type:
            raise KeyError(key)
    except KeyError:
        if key in ("materials", "stages", "name", "description"):
            f = None
        else:
            sec, _, sub = key.partition(".")
            known = ([f"{sec}.{k}" for k in settings.SECTIONS[sec].keys()] if sec in settings.SECTIONS
                     else [s for s in settings.SECTIONS] + [x.name for x in settings.TOP_LEVEL])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"--set {item!r}: unknown job key {key!r}{hint}; the keys are listed by "
                             "'dmca-hpc validate --keys'") from None
    try:
        value = load_yaml_text(val)
    except _DuplicateKey as exc:
        raise ValueError(f"--set {item!r}: VALUE: {exc}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        want = f"; expected {f.type} [{f.unit}]: {f.doc}" if f is not None else ""
        raise ValueError(f"--set {item!r}: VALUE is not valid YAML ({problem}){want}") from None
    return key, value


def public_job(job: dict) -> dict:
    """The job without private (``_``-prefixed) keys, as hashed and saved."""
    return {k: v for k, v in job.items() if not k.startswith("_")}


def ordered_stages(job: dict) -> list[str]:
    from dmca_hpc.stages.registry import ordered
    return ordered(job.get("stages", []))
