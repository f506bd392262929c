"""Shared oracle cases of the tests (real pw.x): imported as ``from oracle_cases import ...``."""
import json
from pathlib import Path

from dmca_hpc.oracle import pwx

HERE = Path(__file__).resolve().parent  # tests/
FAKE = HERE / "fake_pw" / "pw.x"
PW = "/usr/bin/pw.x"
PSEUDO_DIR = "/usr/share/espresso/pseudo"
UPF = "Si.pbe-rrkj.UPF"


def have_pw() -> bool:
    import os
    return os.access(PW, os.X_OK) and os.path.isfile(os.path.join(PSEUDO_DIR, UPF))


def candidates():
    """6 good 2-atom Si cells (strained, displaced), one with overlapping
    atoms, one with Sn (no Sn UPF in the directory): 8 in all."""
    from dmca_hpc.materials import get_material
    base = get_material("Si").atoms()
    out = []
    for e in (-0.02, -0.01, 0.0, 0.01, 0.02):
        a = base.copy()
        a.set_cell(base.cell.array * (1 + e), scale_atoms=True)
        out.append(a)
    d = base.copy()
    d.positions[1] += [0.05, -0.03, 0.02]
    out.append(d)
    bad = base.copy()
    bad.positions[1] = bad.positions[0] + [0.02, 0.0, 0.0]
    sn = base.copy()
    sn.symbols[1] = "Sn"
    out.insert(3, bad)
    out.append(sn)
    return out            # indices: bad = 3, sn = 7


def settings(**kw):
    base = {"pw": PW, "pseudo_dir": PSEUDO_DIR, "pseudopotentials": {"Si": UPF},
            "ecutwfc": 14.0, "kspacing": 0.7, "timeout_s": 120.0}
    base.update(kw)
    return pwx.settings_from(base)


def check_outputs(out: Path):
    from ase.io import read
    frames = read(out / "results.extxyz", index=":", parallel=False)
    assert [f.info["index"] for f in frames] == [0, 1, 2, 4, 5, 6]
    fails = json.loads((out / "failures.json").read_text())
    assert [(f["index"], f["error_class"]) for f in fails] == [(3, "impossible_structure"),
                                                              (7, "missing_pseudopotential")]
    assert "apart" in fails[0]["message"] and "Sn" in fails[1]["message"]
    return {f.info["index"]: f.get_potential_energy() for f in frames}
