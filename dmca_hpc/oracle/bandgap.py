"""Kohn-Sham band gap from pw.x: the backend cross-check of the PySCF stage.

An SCF on the ``kspacing`` mesh with ``nbnd`` bands, then a non-SCF
``bands`` run along the cell's standard band path, both under the oracle's
correction ladder (:func:`dmca_hpc.oracle.pwx.run_candidate` and
:func:`~dmca_hpc.oracle.pwx.run_ladder`: diagnosis from the text, corrections,
restarts, a bounded number of attempts, the correction log).  Energies in
eV; k-points of pw.x's eigenvalue blocks in 2 pi / alat.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from dmca_hpc.oracle.pwx import (OracleError, drop_scratch, fresh_directory, pw_command,
                                 run_candidate, run_ladder, settings_from, write_correction_log)


def parse_eigenvalues(text: str) -> tuple[list, list]:
    """(k-points [2pi/alat], eigenvalues [eV] per k) from the last
    ``End of ... calculation`` block of a pw.x output."""
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


def _eigenvalues_of(path: Path, atoms=None) -> list:
    """Validator of a ``bands`` run: its eigenvalues [eV] per k-point."""
    return parse_eigenvalues(Path(path).read_text(errors="replace"))[1]


def pw_band_gap(atoms, settings: dict | None = None, workdir: str | os.PathLike = "pw_gap",
                nbnd: int = 8, kspacing: float | None = None, line_points: int = 41) -> dict:
    """Kohn-Sham band gap [eV] from pw.x: an scf with ``nbnd`` bands on the
    ``kspacing`` mesh [1/angstrom, 2 pi included] (``workdir/scf``), then a
    non-SCF ``bands`` run along the cell's standard band path (ASE
    ``atoms.cell.bandpath``, ``line_points`` points; ``workdir/bands``,
    starting from the SCF's charge density).  Both runs go through the
    correction ladder; a run the ladder cannot rescue raises
    :class:`~dmca_hpc.oracle.pwx.OracleError` with its failure class.

    The gap is min(conduction) - max(valence) over the union of both k sets
    (insulator with fixed occupations; valence band count = electrons / 2).
    For Si the conduction minimum lies on Gamma-X (at ~0.85 X), which the path
    samples; for the PySCF cross-check, the functional is set by the UPF
    (e.g. Si.pbe-rrkj.UPF: PBE, norm-conserving RRKJ).

    Returns dict: gap_ev, vbm_ev, cbm_ev, direct_gap_ev, n_valence, kpts_scf,
    pseudopotentials, ecutwfc_ry, corrections (the ladder's log of both runs).
    """
    import numpy as np
    s = settings_from(settings or {})
    s["occupations"] = "fixed"
    if kspacing:
        s["kspacing"] = float(kspacing)
    extra = copy.deepcopy(s["extra_parameters"])
    extra.setdefault("system", {})["nbnd"] = int(nbnd)
    # the bands run reads the scf's data file and charge density
    extra.setdefault("control", {})["disk_io"] = "default"
    s["extra_parameters"] = extra
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    pw_cmd = pw_command(s)
    scf = run_candidate(atoms, {**s, "keep_scratch": True}, wd / "scf", "band-gap scf", pw_cmd)
    if not scf.success:
        raise OracleError(scf.error_class, f"band-gap scf failed in {wd / 'scf'}: {scf.error}")
    scf_dir = Path(scf.meta["attempts"][-1]["directory"])
    out_scf = (scf_dir / "pw.out").read_text(errors="replace")
    e_scf = parse_eigenvalues(out_scf)[1]
    m = re.search(r"number of electrons\s*=\s*([\d.]+)", out_scf)
    if m is None:
        raise OracleError("invalid_output", f"{scf_dir / 'pw.out'}: no 'number of electrons' line")
    nv = int(round(float(m.group(1)) / 2))

    kcr = atoms.cell.bandpath(npoints=int(line_points)).kpts  # fractional (crystal) coordinates
    kcards = np.column_stack([kcr, np.ones(len(kcr))])
    bparams = copy.deepcopy(scf.meta["final_parameters"])
    bparams["control"]["calculation"] = "bands"
    # forces and stress are undefined for a non-SCF run; a restart flag belonged to the scf
    for key in ("tstress", "tprnfor", "restart_mode"):
        bparams["control"].pop(key, None)
    bdir = fresh_directory(wd / "bands")
    bmeta = {"label": "band-gap bands"}
    bands = run_ladder(atoms, bparams, scf.meta["pseudopotentials"], kcards, s, bdir, bmeta,
                       pw_cmd=pw_cmd, validate=_eigenvalues_of, start_from=scf_dir,
                       label="band-gap bands")
    write_correction_log(bdir, bmeta, bands.ok, error_class=bands.diagnosis.error_class,
                         error=bands.error)
    if not s["keep_scratch"]:
        drop_scratch(wd / "scf")
        drop_scratch(bdir)
    if not bands.ok:
        raise OracleError(bands.diagnosis.error_class,
                          f"band-gap bands run failed in {bdir}: {bands.error}")
    eig = np.array([e[:nbnd] for e in e_scf + bands.parsed])
    if eig.shape[1] <= nv:
        raise OracleError("invalid_output", f"nbnd={nbnd} leaves no conduction band "
                          f"({nv} valence bands)")
    vbm, cbm = float(eig[:, nv - 1].max()), float(eig[:, nv].min())
    return {"gap_ev": cbm - vbm, "vbm_ev": vbm, "cbm_ev": cbm,
            "direct_gap_ev": float((eig[:, nv] - eig[:, nv - 1]).min()),
            "n_valence": nv, "kpts_scf": list(scf.meta["kpts"]),
            "pseudopotentials": scf.meta["pseudopotentials"], "ecutwfc_ry": float(s["ecutwfc"]),
            "corrections": scf.meta["corrections"] + bmeta["corrections"]}


def si_pbe_band_gap_ev(workdir: str | os.PathLike = "pw_gap_si", ecutwfc: float = 20.0,
                       pseudo: str = "Si.pbe-rrkj.UPF", pw: str = "/usr/bin/pw.x",
                       pseudo_dir: str = "/usr/share/espresso/pseudo") -> float:
    """PBE Kohn-Sham band gap of diamond Si [eV] from pw.x (a = 5.431
    angstrom from :mod:`dmca_hpc.materials`, norm-conserving PBE UPF,
    ``ecutwfc`` [Ry], kspacing 0.3 1/angstrom, band path through Gamma-X)."""
    from dmca_hpc.materials import get_material
    res = pw_band_gap(get_material("Si").atoms(),
                      {"ecutwfc": ecutwfc, "pseudopotentials": {"Si": pseudo}, "pw": pw,
                       "pseudo_dir": pseudo_dir, "kspacing": 0.3, "timeout_s": 600.0}, workdir)
    return res["gap_ev"]
