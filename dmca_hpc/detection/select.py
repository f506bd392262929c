"""Which detector targets can see a dark-matter mass: the kinematic threshold
(:func:`select_material`) and the ranking by the rate and reach of their
form-factor tables (:func:`rank_targets`).  Masses in eV, cross sections in
cm^2, rates in events / kg / year, exposure in kg year."""
from __future__ import annotations

from dmca_hpc import units as U
from dmca_hpc.materials import get_material, list_materials


def select_material(m_chi_ev: float, halo: str = "shm-2021",
                    materials: list[str] | None = None) -> list[dict]:
    """Which targets can see a DM particle of mass ``m_chi_ev`` [eV] at all.

    Kinematic threshold: the maximum deposit m_chi v_max^2 / 2 (the crystal,
    not one cell, absorbs the recoil momentum) with v_max = v_esc + v_E of the
    halo preset must exceed the band gap.

    Returns:
        One dict per material, viable ones first (ranked by the ratio of the
        maximum deposit to the gap, largest first: a larger ratio opens more
        of the phase space), each with ``name``, ``viable``, ``gap_ev``,
        ``max_deposit_ev``, ``ratio`` and a human ``reason``.
    """
    from dmca_hpc.detection.halo import get_halo
    from dmca_hpc.detection.rates import max_energy_transfer_ev
    v_max = get_halo(halo).v_max_km_s
    out = []
    for name in materials or list_materials():
        m = get_material(name)
        emax = float(max_energy_transfer_ev(m_chi_ev, v_max))
        gap = m.scissor_gap_ev
        viable = emax > gap
        out.append({
            "name": m.name, "viable": bool(viable), "gap_ev": gap,
            "max_deposit_ev": emax, "ratio": emax / gap,
            "reason": (f"max deposit {emax:.3g} eV {'>' if viable else '<='} gap {gap:g} eV "
                       f"(v_max = v_esc + v_E = {v_max:g} km/s, halo {halo})"),
        })
    out.sort(key=lambda d: (not d["viable"], -d["ratio"]))
    return out


# ---------------------------------------------------------------------------
# ranking by the computed rate (shipped form-factor tables)
# ---------------------------------------------------------------------------

def table_kind(table) -> str:
    """What kind of calculation a form-factor table comes from, from its
    metadata: ``"all-electron"``, ``"small-core ECP"`` (our def2 tables of
    I/Cs compounds: ``ecp`` names the ECPs), ``"GTH pseudopotential"``,
    ``"pseudopotential"`` or ``"unknown"``.

    The same reading of the metadata as the pseudopotential note of
    :func:`dmca_hpc.detection.rates.electron_rates` (``all_electron``, else
    a ``gth-*`` basis); a QCDark file that records ``ecp = 'None'`` is
    all-electron, any other ECP a pseudopotential."""
    meta = getattr(table, "metadata", None) or {}
    ae = meta.get("all_electron")
    basis = str(meta.get("basis", "")).lower()
    if ae is True:
        return "all-electron"
    if ae is False and "ECP" in str(meta.get("ecp", "")):
        # def2 small-core relativistic ECP (I, Cs): semicore shells kept
        return "small-core ECP"
    if ae is False or basis.startswith("gth"):
        return "GTH pseudopotential" if basis.startswith("gth") else "pseudopotential"
    ecp = meta.get("ecp")
    if ecp is not None:
        return "all-electron" if str(ecp).strip().lower() in ("", "none") else "pseudopotential"
    return "unknown"


def table_label(table, path=None) -> str:
    """``Si all-electron (Si.hdf5)``: material, kind and file name of a table,
    as plot legends and command output name it."""
    from pathlib import Path
    src = path or (getattr(table, "metadata", None) or {}).get("source_file", "")
    name = Path(str(src)).name if src else ""
    return f"{table.material or 'table'} {table_kind(table)}" + (f" ({name})" if name else "")


def _table_info(table) -> dict:
    """File, kind, basis and completeness limits of a table (None when absent)."""
    meta = table.metadata or {}
    num = lambda k: float(meta[k]) if meta.get(k) is not None else None
    return {"file": meta.get("source_file", ""), "kind": table_kind(table),
            "basis": meta.get("basis"), "material": table.material,
            "e_complete_ev": num("e_complete_ev"), "q_complete_ame": num("q_complete_ame"),
            "e_max_ev": table.e_ev[-1] + table.de_ev / 2, "q_max_ame": table.q_ame[-1] + table.dq_ame / 2}


def shipped_tables(materials: list[str] | None = None) -> tuple[dict, list[str]]:
    """The shipped form-factor tables (``tables.DATA_DIR``, i.e.
    :func:`dmca_hpc.resources.tables_dir`) by library material.

    Returns ``({material name: [FormFactorTable, ...]}, notes)``; each
    material's tables are ordered all-electron first (the one to trust
    above ~30 MeV), then the file named after the material, then by file
    name.  Tables that cannot be read, or whose material is not in the
    library, are left out with a note."""
    from dmca_hpc import tables as T
    from dmca_hpc.materials import MaterialError
    want = {get_material(n).name for n in materials} if materials else None
    out: dict = {}
    notes = []
    files = sorted(T.DATA_DIR.glob("*.hdf5")) if T.DATA_DIR.is_dir() else []
    for p in files:
        try:
            t = T.read_table(p)
        except (OSError, T.TableFormatError) as exc:
            notes.append(f"shipped table {p.name} not used: {exc}")
            continue
        try:
            name = get_material(t.material or p.stem.split("_")[0]).name
        except MaterialError:
            notes.append(f"shipped table {p.name}: material {t.material!r} is not in the "
                         "materials library; not ranked")
            continue
        if want is None or name in want:
            out.setdefault(name, []).append((p, t))
    for name, lst in out.items():
        lst.sort(key=lambda pt: (table_kind(pt[1]) != "all-electron", pt[0].stem != name, pt[0].name))
        out[name] = [t for _, t in lst]
    return out, notes


def rank_targets(m_chi_ev: float, fdm: str = "heavy", halo="shm-2021",
                 exposure_kg_year: float = 1.0, sigma_e_cm2: float = 1e-39,
                 q_threshold: int = 1, cl: float = 0.9,
                 materials: list[str] | None = None, tables: dict | None = None) -> dict:
    """Rank the detector targets for a DM mass ``m_chi_ev`` [eV] by the rate
    their form-factor tables give.

    For every table of a target: the rate in Q >= ``q_threshold`` at
    ``sigma_e_cm2`` [events / kg / year] (:func:`dmca_hpc.detection.rates.electron_rates`),
    the events expected in ``exposure_kg_year`` [kg year], and the reach:
    the sigma_e [cm^2] of the background-free upper limit at confidence
    ``cl`` for zero observed events (mu_up = -ln(1 - cl): 2.303 events at
    90% CL; :func:`dmca_hpc.detection.reach.reach_from_rates`).  Rate and
    reach rank alike (reach = mu_up sigma_e / (exposure rate)).

    Order: targets with a rate > 0, largest rate of their first table
    first (all-electron preferred, :func:`shipped_tables`); then targets
    without a table that are kinematically open (by the ratio of maximum
    deposit to gap, :func:`select_material`); last the closed ones and
    those whose rate is zero.

    Args:
        tables: ``{material: [table or path, ...]}`` to use instead of the
            shipped tables (tests, private tables); first table ranks.

    Returns:
        ``{"targets": [row, ...], "notes": [...], "inputs": {...}}``; a row
        is :func:`select_material`'s dict plus ``rank``, ``status``
        (``"rate"``, ``"no table"``, ``"zero rate"``, ``"not viable"``),
        ``rate_per_kg_year``, ``events``, ``reach_sigma_cm2`` (of its first
        table; None without a table, reach None where the rate is zero) and
        ``tables``: per table its file, kind, basis, completeness limits
        ``e_complete_ev`` [eV] / ``q_complete_ame`` [alpha m_e] (None when
        the table does not state them), the same three numbers,
        ``total_per_kg_year`` (all Q), ``share_beyond_e_complete`` (fraction
        of the total from E bins above e_complete_ev) and the rate notes
        (incompleteness, pseudopotential, kinematics).
    """
    import numpy as np
    from dmca_hpc.detection.halo import get_halo
    from dmca_hpc.detection.rates import electron_rates
    from dmca_hpc.detection.reach import poisson_upper_limit, reach_from_rates
    from dmca_hpc.tables import load
    if not (m_chi_ev > 0 and np.isfinite(m_chi_ev)):
        raise ValueError(f"DM mass must be > 0 and finite, got {m_chi_ev / U.MEV_EV:g} MeV")
    h = get_halo(halo)
    mu_up = poisson_upper_limit(0, cl)
    notes: list = []
    if tables is None:
        by_mat, notes = shipped_tables(materials)
    else:
        by_mat = {get_material(k).name: [load(t) for t in v] for k, v in tables.items()}
    rows = select_material(m_chi_ev, halo=halo, materials=materials)
    for row in rows:
        row["tables"] = []
        for t in by_mat.get(row["name"], []):
            info = _table_info(t)
            try:
                r = electron_rates(t, [m_chi_ev], fdm=fdm, halo=h, sigma_e_cm2=sigma_e_cm2)
            except ValueError as exc:  # e.g. no pair energy for the material
                info.update(rate_per_kg_year=None, events=None, reach_sigma_cm2=None,
                            total_per_kg_year=None, share_beyond_e_complete=None,
                            notes=[f"no rate: {exc}"])
                row["tables"].append(info)
                continue
            rc = reach_from_rates(r, exposure_kg_year, q_threshold, n_events=mu_up)
            rate = float(rc.rate_ref[0])
            total = float(r.total[0])
            e_ok = info["e_complete_ev"]
            share = None
            if e_ok is not None:
                # a fraction of the spectrum rates already returned, not another integral
                share = (float(r.dr_de[0, r.e_ev > e_ok].sum() * t.de_ev / total)
                         if total > 0 else 0.0)
            info.update(gap_ev=r.inputs["gap_ev"], pair_energy_ev=r.inputs["pair_energy_ev"],
                        rate_per_kg_year=rate, events=rate * exposure_kg_year,
                        reach_sigma_cm2=float(rc.sigma_cm2[0]) if np.isfinite(rc.sigma_cm2[0]) else None,
                        total_per_kg_year=total, share_beyond_e_complete=share,
                        notes=list(r.notes[0]))
            row["tables"].append(info)
        first = row["tables"][0] if row["tables"] else None
        row["rate_per_kg_year"] = first["rate_per_kg_year"] if first else None
        row["events"] = first["events"] if first else None
        row["reach_sigma_cm2"] = first["reach_sigma_cm2"] if first else None
        if first and (row["rate_per_kg_year"] or 0) > 0:
            row["status"] = "rate"
        elif first and row["viable"]:
            row["status"] = "zero rate"
        elif row["viable"]:
            row["status"] = "no table"
        else:
            row["status"] = "not viable"
    group = {"rate": 0, "no table": 1, "zero rate": 2, "not viable": 2}
    rows.sort(key=lambda d: (group[d["status"]],
                             -(d["rate_per_kg_year"] or 0) if d["status"] == "rate" else -d["ratio"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    inputs = {"mass_mev": m_chi_ev / U.MEV_EV, "fdm": fdm, "halo": h.params(),
              "exposure_kg_year": exposure_kg_year, "sigma_e_cm2": sigma_e_cm2,
              "q_threshold": int(q_threshold), "cl": cl, "reach_events": mu_up,
              "v_max_km_s": h.v_max_km_s}
    return {"targets": rows, "notes": notes, "inputs": inputs}
