"""Which detector targets can see a dark-matter mass at all (kinematic threshold)."""
from __future__ import annotations

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
