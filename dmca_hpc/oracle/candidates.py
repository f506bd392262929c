"""Oracle candidates: where the structures come from, and their checkpoints.

Candidates are read from any ASE-readable multi-frame file (extxyz) or
generated from a primitive cell (rattled supercells, strained cells),
deterministically for a seed.  Each finished candidate is kept as one
atomic JSON file keyed by a hash of its structure and physics settings, so
a killed batch restarts where it stopped and a changed structure or setting
redoes only what it changes.  Positions and cells are in angstrom.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from dmca_hpc.oracle.pwx import (GENERATE_DEFAULTS, DFTResult, OracleError, OracleSetupError,
                                 atomic_json, physics_settings, resolve_pseudopotentials)


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
    gen = {**GENERATE_DEFAULTS, **(gen or {})}
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
    phys = physics_settings(settings)
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
        atomic_json(p, {"complete": True, "index": index, "label": label,
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
