"""The package's design rule, read from the source with ``ast``.

Imports point down only (README "Code map"):

    cli -> pipeline, config -> stages -> plots, detection -> response -> electronic
        -> oracle, tables, slurm -> materials, monitoring -> hpc, settings, resources, units

A module may import modules of its own floor or of floors below it, never
above; physics packages never import argparse or matplotlib; only
``dmca_hpc.plots`` imports matplotlib, only ``dmca_hpc.cli`` argparse, only
``dmca_hpc.hpc.parallel`` mpi4py; and the module graph (imports inside
functions included) has no circle.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "dmca_hpc"

#: top-level component of a module -> floor (0 = top)
FLOORS = {
    "cli": 0, "api": 0,
    "pipeline": 1, "config": 1,
    "stages": 2,
    "plots": 3, "detection": 3,
    "response": 4,
    "electronic": 5,
    "oracle": 6, "tables": 6, "slurm": 6,
    "materials": 7, "monitoring": 7,
    "hpc": 8, "settings": 8, "resources": 8, "units": 8, "__init__": 8,
}
PHYSICS = ("electronic", "response", "detection", "oracle")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name, path):
    """(imported module, line) of every import in the file, functions included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None or mod == "dmca_hpc":
                for a in node.names:  # from dmca_hpc import units / from . import x
                    yield f"{mod}.{a.name}", node.lineno
            else:
                yield mod, node.lineno


def _component(mod):
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = dict(_modules())
NAMES = set(MODULES)


def _resolve(mod):
    """The package module an import names (``dmca_hpc.x.y.attr`` -> ``dmca_hpc.x.y``)."""
    while mod and mod not in NAMES:
        mod = mod.rpartition(".")[0]
    return mod or None


def test_every_module_has_a_floor():
    missing = sorted({_component(m) for m in MODULES} - set(FLOORS))
    assert not missing, f"top-level modules/packages without a floor in this test: {missing}"


def test_imports_point_down_only():
    bad = []
    for name, path in MODULES.items():
        here = FLOORS[_component(name)]
        for mod, line in _imports(name, path):
            if not mod.startswith("dmca_hpc"):
                continue
            target = _resolve(mod)
            if target is None or target == "dmca_hpc":
                continue
            there = FLOORS[_component(target)]
            if there < here:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {name} (floor {here}) imports "
                           f"{target} (floor {there}), which is above it")
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("lib, allowed", [
    ("matplotlib", ("plots",)),
    ("argparse", ("cli",)),
    ("mpi4py", ("hpc.parallel",)),
])
def test_forbidden_imports(lib, allowed):
    bad = []
    for name, path in MODULES.items():
        rest = name.split(".", 1)[1] if "." in name else ""
        if any(rest == a or rest.startswith(a + ".") for a in allowed):
            continue
        for mod, line in _imports(name, path):
            if mod == lib or mod.startswith(lib + "."):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: imports {mod}")
    assert not bad, f"only {allowed} may import {lib}:\n" + "\n".join(bad)


def test_physics_packages_stay_physics():
    bad = []
    for name, path in MODULES.items():
        if _component(name) not in PHYSICS:
            continue
        for mod, line in _imports(name, path):
            target = _resolve(mod) if mod.startswith("dmca_hpc") else None
            if target and _component(target) in ("stages", "cli", "pipeline", "config", "plots"):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {name} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    graph = {n: set() for n in MODULES}
    for name, path in MODULES.items():
        for mod, _ in _imports(name, path):
            if mod.startswith("dmca_hpc"):
                t = _resolve(mod)
                # a package's __init__ is not a dependency of its own modules
                if t and t != name and t != "dmca_hpc" and not name.startswith(t + "."):
                    graph[name].add(t)
    # Tarjan's strongly connected components
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not comps, "import circles: " + "; ".join(" <-> ".join(c) for c in comps)
