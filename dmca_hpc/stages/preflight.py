"""Preflight: estimate every stage's memory, disk and time, and refuse what cannot finish.

Before a run starts (and again before each stage starts, with what the earlier stages
wrote), every stage of the job gets an estimate

* memory [bytes per rank]: the resident memory of the process (the libraries the stage
  loads, :data:`RSS_MB`) plus the arrays its physics module counts for it
  (:func:`dmca_hpc.electronic.scf.estimate_scf`, :func:`dmca_hpc.electronic.bands.estimate_bands`,
  :func:`dmca_hpc.electronic.formfactor.estimate_formfactor`,
  :func:`dmca_hpc.response.dielectric.estimate_dielectric`, and the small models here);
  for rank 0, which holds the most (the SCF, the merge of the bands, the sum of the tables);
* disk [bytes]: the checkpoints and outputs it writes into the output directory (and
  PySCF's scratch files in its TMPDIR), plus its telemetry lines (:data:`TELEMETRY_RECORD_BYTES`);
* time [s]: wall-clock on the run's ranks, from per-unit cost models fitted on this
  machine (each module's constants say where their numbers come from) with the units
  spread as the dynamic dispatch does (:func:`dmca_hpc.monitoring.planning.list_schedule`).
  When the output directory holds telemetry of an earlier run, each stage's model is
  calibrated by the units it measured: ratio = sum of their measured wall times / sum of
  the model's times for the same units, and the estimate says ``measured, N units``.
  A stage whose manifest is current for its inputs is skipped by the run: ``current``,
  nothing to add.

and is refused when it exceeds the machine or the user's limit:

* memory: per rank x ranks on this node > :data:`MEMORY_FRACTION` of the available
  memory (``psutil.virtual_memory().available``, the rule of
  :func:`dmca_hpc.electronic.formfactor.check_memory`);
* disk: more than the free space (``shutil.disk_usage``) of the output directory (its
  nearest existing parent) or of PySCF's scratch directory, a stage alone or the whole
  run together;
* time: with ``--max-hours H``, a stage alone (or the whole run) longer than H hours.

A refusal is one line per offending stage, ``JOB: key: label ...`` naming the job key
that drives the figure, the estimate and the limit (the pipeline raises
:class:`dmca_hpc.pipeline.ResourcesRefused` with them; ``dmca-hpc run`` and ``validate``
print them and exit 2).  Times assume one thread per rank (the SCF runs on rank 0 with
the node's ranks as OpenMP threads, which can only make it faster).  The estimates are models, good to a
factor of about 2 on the quickstart (see the README), not promises; an estimate that
cannot be made (a stage whose inputs are only known once it runs, the oracle's pw.x) is
shown as ``-`` and never refused.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

GIB = float(2 ** 30)
MIB = float(2 ** 20)

#: a stage may plan to use this fraction of the available memory (as check_memory does)
MEMORY_FRACTION = 0.8
#: resident memory [MiB] of the process before a stage's arrays, measured on this machine
#: (Python 3.11, VmHWM): interpreter with numpy, scipy, h5py, ase and dmca_hpc 66;
#: pyscf.pbc imported +34, and after a first (tiny) SCF +19 more (its C libraries); the
#: Numba kernels compiled (dmca-hpc warmup) +102; matplotlib with one figure saved +32
RSS_BASE_MB = 66.0
RSS_PYSCF_IMPORT_MB = 34.0
RSS_PYSCF_MB = 53.0
RSS_NUMBA_MB = 102.0
RSS_MPL_MB = 32.0
RSS_MB = {
    "materials": RSS_BASE_MB + RSS_PYSCF_IMPORT_MB,
    "dft": RSS_BASE_MB + RSS_PYSCF_MB,
    "bands": RSS_BASE_MB + RSS_PYSCF_MB + RSS_MPL_MB,
    "formfactor": RSS_BASE_MB + RSS_PYSCF_MB + RSS_NUMBA_MB + RSS_MPL_MB,
    "dielectric": RSS_BASE_MB + RSS_PYSCF_MB + RSS_NUMBA_MB + RSS_MPL_MB,
    "rates": RSS_BASE_MB + RSS_NUMBA_MB + RSS_MPL_MB,
    "nuclear": RSS_BASE_MB + RSS_MPL_MB,
    "oracle": RSS_BASE_MB + RSS_PYSCF_IMPORT_MB,
}
#: bytes of telemetry per record: the line in rank-NNNNN.jsonl and its copy in the merged
#: telemetry.jsonl (595 B per line measured on the quickstart)
TELEMETRY_RECORD_BYTES = 1200.0
#: meshes with more points than this get their irreducible count estimated as
#: N_k / (number of symmetry operations) instead of asking spglib for the wedge
EXACT_WEDGE_MAX_K = 1_000_000
#: unit counts above which the dispatch is projected in closed form, not simulated
SIMULATE_MAX_UNITS = 20000
#: small stages [s], measured on the quickstart (one thread): materials 0.08 s per
#: material; nuclear 0.35 s with its plot; rates 1.6 s of reading, plots and files plus
#: RATES_S_PER_BIN per (q, E) bin of each spectrum evaluated (2.6 s for the quickstart's
#: 6 spectra and 840 reach evaluations of a 500 x 500 table); the optical limit's
#: integrals 0.02 s per k on top of its 4 band evaluations (0.30 s per k measured)
MATERIALS_S = 0.1
NUCLEAR_S = 0.35
NUCLEAR_UNIT_S = 1e-3
RATES_T0_S = 1.6
RATES_S_PER_BIN = 1.5e-8
OPTICAL_INTOR_S = 0.02


@dataclass
class StageEstimate:
    """The estimate of one stage of one material (``material`` None: a job-wide stage).

    memory_bytes is per rank (rank 0, the largest), other_rank_bytes that of every
    other rank; disk_bytes goes to the output directory, scratch_bytes to PySCF's
    TMPDIR; time_s is the wall-clock on the run's ranks (None: not modelled); how is
    ``model``, ``measured, N units`` or ``current``; keys maps memory/disk/time to the
    job key that drives it, detail to a few words on what the figure counts."""

    stage: str
    material: str | None
    memory_bytes: float | None = None
    other_rank_bytes: float | None = None
    disk_bytes: float = 0.0
    scratch_bytes: float = 0.0
    time_s: float | None = None
    how: str = "model"
    units: int = 1
    keys: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)
    note: str = ""
    model_time_s: float | None = None

    @property
    def label(self) -> str:
        return f"{self.material or 'global'}/{self.stage}"


@dataclass
class Limits:
    """What the machine and the user allow: available memory [bytes], ranks on this
    node, free disk [bytes] of the output directory and of PySCF's scratch directory
    (and whether they are one file system), the wall-clock limit [h] (None: none)."""

    available_memory_bytes: float
    ranks_per_node: int
    out_dir: str
    out_free_bytes: float
    scratch_dir: str
    scratch_free_bytes: float
    same_filesystem: bool
    max_hours: float | None = None
    ranks: int = 1


# --------------------------------------------------------------------------- machine

def available_memory_bytes() -> float:
    """Memory available to new allocations [bytes] (psutil, as check_memory reads it)."""
    import psutil
    return float(psutil.virtual_memory().available)


def _existing(path) -> Path:
    """``path`` or its nearest existing parent (the run may not have created it yet)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def pyscf_scratch_dir() -> str:
    """PySCF's scratch directory (``$PYSCF_TMPDIR``, else the system's temporary
    directory: pyscf/__config__.py), without importing PySCF."""
    import tempfile
    return os.environ.get("PYSCF_TMPDIR") or tempfile.gettempdir()


def machine_limits(run_dir, ranks: int = 1, ranks_per_node: int | None = None,
                   max_hours: float | None = None) -> Limits:
    """The :class:`Limits` of this machine for a run writing ``run_dir`` on ``ranks``
    ranks (``ranks_per_node`` default: all of them on this node)."""
    out = _existing(run_dir)
    scratch = _existing(pyscf_scratch_dir())
    return Limits(available_memory_bytes=available_memory_bytes(),
                  ranks_per_node=int(ranks_per_node or ranks), out_dir=str(out),
                  out_free_bytes=float(shutil.disk_usage(out).free), scratch_dir=str(scratch),
                  scratch_free_bytes=float(shutil.disk_usage(scratch).free),
                  same_filesystem=os.stat(out).st_dev == os.stat(scratch).st_dev,
                  max_hours=max_hours, ranks=int(ranks))


# --------------------------------------------------------------------------- telemetry

def read_unit_records(tel_dir, key: bytes | None = None, stage: str | None = None,
                      require_encrypted: bool | None = None) -> dict[str, list[dict]]:
    """Unit records of a run directory's telemetry, by stage: ``{stage: [{unit, status,
    wall_s, kpts, material}]}`` (ok and failed units; skipped ones did no work), only
    ``stage``'s when given.  The per-rank files hold every record ever written there (a
    run appends to them and merges them into telemetry.jsonl at its end), so they are
    read when present, else what :func:`dmca_hpc.monitoring.collector.expand_inputs`
    picks (the merged file).  Lines are read as ``dmca-hpc collect`` reads them
    (:func:`dmca_hpc.monitoring.collector.iter_records` with a
    :class:`~dmca_hpc.monitoring.collector.TelemetryReader`): no invalid line, no
    plaintext line of an encrypted file (none at all with a key or
    ``require_encrypted``), each stream's seq once, so a replayed line does not weigh
    twice in the calibration."""
    from dmca_hpc.monitoring.collector import TelemetryReader, expand_inputs, iter_records
    d = Path(tel_dir)
    if not d.is_dir():
        return {}
    files = sorted(d.glob("rank-*.jsonl")) or expand_inputs([d])
    # the reader must see every line of a file (a replay is a seq seen before, a
    # plaintext line is refused by an envelope anywhere in the file), so the stage
    # filter comes after it (about 20 us per line on this machine: 1e6 lines, 20 s)
    reader = TelemetryReader(key=key, max_list=0, require_encrypted=require_encrypted)
    out: dict[str, list[dict]] = {}
    for rec, _f, _n in iter_records(files, reader):
        h = rec.get("hpc")
        if not isinstance(h, dict) or (stage is not None and h.get("stage") != stage):
            continue
        if h.get("status") not in ("ok", "failed"):
            continue
        phys = rec.get("physics") or {}
        out.setdefault(str(h.get("stage")), []).append(
            {"unit": str(h.get("unit", "")), "status": h["status"], "wall_s": float(h["wall_seconds"]),
             "kpts": phys.get("kpts"), "material": phys.get("material")})
    return out


# --------------------------------------------------------------------------- helpers

def _span(label: str) -> int | None:
    """k (or k') count of a unit label ending in ``START-STOP`` (``Si:mesh:0-4``)."""
    m = re.search(r"(\d+)-(\d+)$", label)
    return int(m.group(2)) - int(m.group(1)) if m else None


def schedule_time(groups: list[tuple[float, int]], ranks: int, dynamic: bool = True) -> float:
    """Wall time [s] of units ``[(seconds each, count), ...]`` on ``ranks`` ranks:
    :func:`dmca_hpc.monitoring.planning.list_schedule` (dynamic dispatch, rank 0 works
    too), in closed form (total / ranks + the longest unit) for very many units."""
    from dmca_hpc.monitoring import planning
    n = sum(c for _t, c in groups)
    if n == 0:
        return 0.0
    if ranks <= 1:
        return float(sum(t * c for t, c in groups))
    if n > SIMULATE_MAX_UNITS:
        return float(sum(t * c for t, c in groups) / ranks + max(t for t, _c in groups))
    walls = [t for t, c in groups for _ in range(c)]
    return planning.list_schedule(walls, ranks, planning._dispatch_default() if dynamic else 0.0)


def _n_irreducible(atoms, kmesh, symprec: float = 1e-5) -> int:
    """Irreducible k of the Gamma-centred ``kmesh`` (spglib, time reversal), or for a
    mesh above EXACT_WEDGE_MAX_K points N_k / (point-group operations incl. time
    reversal), the lower bound spglib would approach."""
    n = [int(x) for x in kmesh]
    nk = n[0] * n[1] * n[2]
    from dmca_hpc.electronic import symmetry
    if nk <= EXACT_WEDGE_MAX_K:
        import numpy as np
        with symmetry._quiet_spglib():
            import spglib
            res = spglib.get_ir_reciprocal_mesh(np.asarray(n), symmetry.spglib_cell(atoms),
                                                is_shift=[0, 0, 0], is_time_reversal=True,
                                                symprec=symprec)
        if res is not None:
            return int(len(np.unique(res[0])))
    rots = symmetry.reciprocal_rotations(atoms, symprec)
    nrot = len(rots[0]) if isinstance(rots, tuple) else len(rots)
    return max(1, -(-nk // max(nrot, 1)))


def _count(n: float) -> str:
    """A unit count as text: digits up to a million, then 3 significant figures."""
    return f"{int(n)}" if n < 1e6 else f"{n:.3g}"


def _fmt_hours(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s / 3600:.3g} h" + (f" ({s:.3g} s)" if s < 360 else "")


# --------------------------------------------------------------------------- per material

class _MaterialModel:
    """What the stage models of one material share: its atoms, the PySCF cell of the
    dft section, the SCF estimate, facts read from earlier stages' files."""

    def __init__(self, job: dict, material, facts: dict | None = None):
        from dmca_hpc import settings
        self.job, self.material = job, material
        self.name = getattr(material, "name", str(material))
        self.facts = dict(facts or {})
        self.dft = settings.with_defaults("dft", job.get("dft"))
        self.bands = settings.with_defaults("bands", job.get("bands"))
        self._cell = self._scf = self._atoms = None

    def atoms(self):
        if self._atoms is None:
            from dmca_hpc.materials import resolve_atoms
            self._atoms = resolve_atoms(self.material)
        return self._atoms

    def cell(self):
        if self._cell is None:
            from dmca_hpc.electronic.scf import build_cell
            self._cell = build_cell(self.atoms(), self.dft)
        return self._cell

    def scf(self) -> dict:
        if self._scf is None:
            from dmca_hpc.electronic.scf import estimate_scf
            self._scf = estimate_scf(self.cell(), self.dft)
        return self._scf

    def nocc(self) -> int:
        return int(self.facts.get("nocc") or self.cell().nelectron // 2)

    def nval(self, ff: dict) -> int | None:
        """Occupied bands the form factor's e_max window reaches (formfactor
        settings ``ff``), from the SCF's eigenvalues when known (their spread over
        the coarse SCF mesh, the scissor gap of the material or formfactor.gap_ev);
        None before the SCF exists (the estimate then counts every occupied band)."""
        mo = self.facts.get("mo_energy")
        if mo is None:
            return None
        import numpy as np
        from dmca_hpc import units as U
        from dmca_hpc.electronic.formfactor import valence_window
        e = np.asarray(mo, dtype=float)
        e = e.reshape(-1, e.shape[-1]) * U.HARTREE_EV
        nocc = self.nocc()
        if e.shape[-1] <= nocc:
            return None
        gap = ff.get("gap_ev")
        if ff.get("scissor") == "none" or gap is None:
            gap = getattr(self.material, "scissor_gap_ev", None) if ff.get("scissor") != "none" else None
        if gap is None:
            gap = float(e[:, nocc].min() - e[:, :nocc].max())
        return valence_window(e, nocc, float(gap), float(ff["e_max"]))

    def nbands(self) -> int:
        """Bands kept by the bands stage: the file's when known, else from the SCF's
        eigenvalues when known, else ``nocc + bands.n_conduction`` or every band of the
        basis (the bound: energy_above_gap_ev usually keeps most of them)."""
        if self.facts.get("nbands"):
            return int(self.facts["nbands"])
        nao = int(self.cell().nao_nr())
        if self.facts.get("mo_energy") is not None:
            from dmca_hpc.electronic.bands import choose_nbands
            return int(choose_nbands(self.facts["mo_energy"], self.nocc(), self.bands["n_conduction"],
                                     self.bands["energy_above_gap_ev"])[0])
        nc = self.bands["n_conduction"]
        return min(nao, self.nocc() + int(nc)) if nc is not None else nao

    def bands_route(self) -> str:
        from dmca_hpc.electronic.bands import fast_hamiltonian
        df = self.scf()["density_fit"]
        if df == "GDF":
            return "gdf"
        return "fast" if fast_hamiltonian(str(self.dft["xc"]), self.dft["pseudo"], df) else "get_bands"

    def ncomp(self) -> int:
        from pyscf.dft import libxc
        try:
            return {"LDA": 1, "GGA": 4, "MGGA": 10}.get(libxc.xc_type(str(self.dft["xc"])), 4)
        except (KeyError, ValueError):
            return 4


# --------------------------------------------------------------------------- stage models
# Each returns a dict: memory (rank 0 arrays [bytes]), other (other ranks' arrays), disk,
# scratch, groups [(s, count)] of parallel units, serial [s] (rank 0 only), fixed [s] (the
# part of serial no telemetry record measures: plots, merges), records (telemetry lines
# written), keys, detail, and record_time(unit, kpts) -> the model's seconds for one
# measured record (None: not comparable), for the telemetry calibration.

def _model_materials(mm: _MaterialModel, job: dict) -> dict:
    return {"memory": 0.0, "disk": 16e3, "serial": MATERIALS_S, "records": 1,
            "keys": {"memory": "materials", "disk": "materials", "time": "materials"},
            "detail": {"disk": "material.h5, structure.cif"},
            "record_time": lambda unit, kpts: MATERIALS_S}


def _model_dft(mm: _MaterialModel, job: dict) -> dict:
    from dmca_hpc.electronic.scf import estimate_scf
    e = mm.scf()
    mat_gib = e["matrix_bytes"] / GIB
    key = "dft.kmesh"
    if e["parts"]["FFT grid"] + e["parts"]["PySCF blocks"] > e["parts"]["k-mesh matrices"]:
        key = "dft.ke_cutoff_hartree" if e["density_fit"] == "FFTDF" else "dft.basis"

    def record_time(unit, kpts):
        if isinstance(kpts, list) and len(kpts) == 3:
            return estimate_scf(mm.cell(), {**mm.dft, "kmesh": kpts})["time_s"]
        return e["time_s"]

    detail = (f"{_count(e['nk'])} k x {e['nao']} AOs: {mm.scf()['parts']['k-mesh matrices'] / GIB:.3g} GiB "
              f"of k-mesh matrices ({mat_gib:.3g} GiB each), grid {e['ngrid']} points")
    return {"memory": e["memory_bytes"], "other": 0.0, "disk": e["disk_bytes"],
            "scratch": e["scratch_bytes"], "serial": e["time_s"], "records": 1,
            "keys": {"memory": key, "disk": "dft.kmesh", "time": "dft.kmesh"},
            "detail": {"memory": detail, "disk": "scf.h5 and the restart chkfile",
                       "scratch": "PySCF DIIS vectors / GDF 3-index tensor",
                       "time": f"SCF of {_count(e['nk'])} k on rank 0"},
            "record_time": record_time}


def _model_bands(mm: _MaterialModel, job: dict) -> dict:
    from dmca_hpc.electronic.bands import bvk_cells, estimate_bands
    from pyscf import lib
    sec = mm.bands
    km = [int(x) for x in sec["kmesh"]]
    nk = km[0] * km[1] * km[2]
    route = mm.bands_route()
    irr = sec["irreducible_only"]
    irr = (route != "fast") if irr == "auto" else bool(irr)
    n_work = _n_irreducible(mm.atoms(), km, float(sec["symprec_angstrom"])) if irr else nk
    n_path = max(int(sec["band_path_npoints"]), 0)
    scf = mm.scf()  # its naux is GDF's (the route 'gdf'), 0 otherwise
    e = estimate_bands(nk, n_work, n_path, int(sec["chunk_size"]), scf["nao"], mm.nbands(),
                       scf["nk"], scf["ngrid"], route, irr, bool(sec["plots"]), mm.ncomp(),
                       scf["naux"], float(lib.param.MAX_MEMORY),
                       bvk=bvk_cells(mm.dft["kmesh"], km, mm.cell().nimgs) if route == "gdf" else 0)
    t_k = e["time_per_k_s"]

    def record_time(unit, kpts):
        if unit.endswith(":merge"):  # its size is the measured run's mesh, not this one's
            return None
        n = _span(unit) or (kpts if isinstance(kpts, int) else None)
        return n * t_k if n else None

    units = e["units"]
    big = max(e["parts"].items(), key=lambda kv: kv[1])[0]
    return {"memory": e["memory_bytes"], "other": e["other_rank_bytes"],
            "disk": e["disk_bytes"], "groups": [(e["unit_time_s"], units)],
            "serial": e["merge_time_s"], "fixed": e["merge_time_s"], "records": units + 1,
            "keys": {"memory": {"AO blocks": "bands.chunk_size",
                                "GDF integrals": "bands.band_path_npoints"}.get(big, "bands.kmesh"),
                     # (GDF supercell translations: bands.kmesh, a multiple of dft.kmesh)
                     "disk": "bands.kmesh", "time": "bands.kmesh"},
            "detail": {"memory": (f"{big} {e['parts'][big] / GIB:.3g} GiB ({_count(nk)} k x {scf['nao']} AOs x "
                                  f"{mm.nbands()} bands)" if big != "GDF supercell translations" else
                                  f"{big} {e['parts'][big] / GIB:.3g} GiB: PySCF's GDF sums over the "
                                  f"common supercell of dft.kmesh {list(mm.dft['kmesh'])} and "
                                  f"bands.kmesh {km} ({_count(bvk_cells(mm.dft['kmesh'], km, mm.cell().nimgs))} cells); "
                                  f"a bands mesh that is a multiple of dft.kmesh keeps it small"),
                       "disk": f"{_count(units)} unit checkpoints of {e['unit_bytes'] / 1024:.3g} KiB, "
                               f"bands.h5 {e['bands_h5_bytes'] / GIB:.3g} GiB",
                       "time": f"{_count(units)} units of {e['unit_time_s']:.3g} s ({_count(n_work)} k, "
                               f"{route})"},
            "record_time": record_time, "units": units}


def _model_formfactor(mm: _MaterialModel, job: dict) -> dict:
    from dmca_hpc.electronic.formfactor import estimate_formfactor, settings as ff_settings
    s = ff_settings(job.get("formfactor"))
    km = [int(x) for x in mm.bands["kmesh"]]
    n_ibz = int(mm.facts.get("n_ibz") or _n_irreducible(mm.atoms(), km,
                                                         float(mm.bands["symprec_angstrom"])))
    e = estimate_formfactor(mm.cell(), s, km, mm.nbands(), mm.nocc(), n_ibz, mm.nval(s))
    units = e["units"]
    per_pair = e["time_s"] / max(units * (int(s["kprime_block"]) if e["route"] == "fft" else 1), 1)
    nk = km[0] * km[1] * km[2]

    def record_time(unit, kpts):
        if e["route"] == "fft":
            n = _span(unit)
            return n * per_pair if n else None
        return e["unit_time_s"]

    parts = e["parts"]
    grid_part = parts["engine"] + parts["grid indices"] + parts["table"] + parts["table sum"]
    mkey = "formfactor.q_max" if grid_part >= parts["bands coefficients"] + parts["units"] else "bands.kmesh"
    # time and disk grow as N_k^2 (pairs) with the mesh and as q_max^3 (grid) or q_max
    # (bins) with the range: name the one further above its default
    from dmca_hpc import settings
    q0 = float(settings.field("formfactor.q_max").default)
    k0 = float(math.prod(settings.field("bands.kmesh").default))
    grow_k = (nk / k0) ** 2
    tkey = "formfactor.q_max" if (s["q_max"] / q0) ** 3 > grow_k else "bands.kmesh"
    dkey = "formfactor.q_max" if s["q_max"] / q0 > grow_k else "bands.kmesh"
    grid = (f"FFT grid {'x'.join(map(str, e['mesh']))} ({e['ngrid']:.3g} points)" if e["mesh"]
            else "analytic overlaps")
    # rank 0 then sums the partial tables from their files, writes the table and its plot
    # (1.3 s on the quickstart)
    ff_serial = 1.0 + e["checkpoint_bytes"] / 100e6
    return {"memory": e["memory_bytes"], "disk": e["disk_bytes"],
            "groups": [(e["unit_time_s"], units)], "serial": ff_serial, "fixed": ff_serial,
            "records": units,
            "keys": {"memory": mkey, "disk": dkey, "time": tkey},
            "detail": {"memory": f"{grid}, bands {_count(nk)} k: engine and bands "
                                 f"{e['engine_bytes'] / GIB:.3g} GiB (the check_memory bound), "
                                 f"{_count(units)} units",
                       "disk": f"{_count(units)} partial tables of {e['nq']} x {e['ne']} bins",
                       "time": f"{_count(units)} units ({e['route']} route, {grid})"},
            "record_time": record_time, "units": units}


def _model_dielectric(mm: _MaterialModel, job: dict) -> dict:
    from dmca_hpc import settings
    from dmca_hpc.electronic.bands import time_per_k, unit_file_bytes, worker_memory_bytes
    from dmca_hpc.electronic.formfactor import settings as ff_settings, table_shape
    from dmca_hpc.response.dielectric import estimate_dielectric
    cfg = settings.with_defaults("dielectric", job.get("dielectric"))
    nq, ne = table_shape(ff_settings(job.get("formfactor")))
    e = estimate_dielectric(nq, ne, int(cfg["n_masses"]))
    route = cfg["optical_route"]
    states = route == "states" or (route == "auto" and "dft" in (job.get("stages") or []))
    mem, groups, disk, other = e["memory_bytes"], [], e["disk_bytes"], 0.0
    okm = [int(x) for x in cfg["optical_kmesh"]]
    t_opt = None
    n_ibz = 0
    if states:
        scf = mm.scf()
        nb = scf["nao"]
        nocc = mm.nocc()
        n_ibz = _n_irreducible(mm.atoms(), okm)
        chunk = int(cfg["optical_chunk"])
        units = -(-n_ibz // chunk)
        t_opt = 4 * time_per_k(scf["ngrid"], scf["nao"], mm.bands_route()) + OPTICAL_INTOR_S
        w = worker_memory_bytes(scf["ngrid"], scf["nao"], scf["nk"], 4, nb, mm.ncomp(),
                                scf["naux"], mm.bands_route())
        nkf = okm[0] * okm[1] * okm[2]
        other = sum(w.values()) + 140.0 * nkf
        mem = max(mem, other + 24.0 * n_ibz * nocc * (nb - nocc))
        groups = [(chunk * t_opt, units)]
        disk += units * unit_file_bytes(chunk * (24.0 * nocc * (nb - nocc)) + 8, 4)
    else:
        units = 0

    def record_time(unit, kpts):
        if ":optical:" in unit:
            n = _span(unit)
            return n * t_opt if (n and t_opt) else None
        # the stage's last record times the stage without its optical limit (whose
        # units have their own records)
        return e["time_s"]

    return {"memory": mem, "other": other, "disk": disk, "groups": groups, "serial": e["time_s"],
            "records": units + 1,
            "keys": {"memory": "dielectric.optical_kmesh" if states else "formfactor.q_max",
                     "disk": "formfactor.q_max",
                     "time": "dielectric.optical_kmesh" if states else "formfactor.q_max"},
            "detail": {"memory": f"eps(q, w) on {nq} x {ne} bins"
                                 + (f", optical limit on {n_ibz} irreducible k" if states else ""),
                       "disk": "dielectric.h5, plots" + (", optical-limit checkpoints" if states else ""),
                       "time": (f"optical limit {n_ibz} k x {t_opt:.3g} s, " if states else "")
                               + "eps(q, w) and absorption"},
            "record_time": record_time, "units": units + 1}


def _rates_shape(job: dict) -> tuple[int, int]:
    from dmca_hpc.electronic.formfactor import settings as ff_settings, table_shape
    return table_shape(ff_settings(job.get("formfactor")))


def _model_rates(mm, job: dict) -> dict:
    from dmca_hpc import settings
    sec = settings.with_defaults("rates", job.get("rates"))
    nq, ne = _rates_shape(job)
    nm, nf = len(sec["masses_mev"]), len(sec["fdm"])
    reach = float(sec["exposure_kg_year"]) > 0
    n_reach = nf * int(sec["reach_n_masses"]) * (1 + int(sec["uncertainty_samples"])) if reach else 0
    per = RATES_S_PER_BIN * nq * ne
    disk = (30e3 + 8.0 * nm * nf * (ne + 20) + (30e3 + 40.0 * nf * int(sec["reach_n_masses"])
                                                if reach else 0.0) + 240e3)

    def record_time(unit, kpts):
        return per * n_reach if unit.endswith(":reach") else per

    return {"memory": 4 * 8.0 * nq * ne, "disk": disk, "groups": [(per, nm * nf)],
            "serial": RATES_T0_S + per * n_reach, "fixed": RATES_T0_S,
            "records": nm * nf + (1 if reach else 0),
            "dynamic": False,
            "keys": {"memory": "formfactor.q_max", "disk": "rates.masses_mev",
                     "time": ("rates.masses_mev" if n_reach <= nm * nf else
                              "rates.uncertainty_samples" if int(sec["uncertainty_samples"]) > 0
                              else "rates.reach_n_masses")},
            "detail": {"memory": f"table of {nq} x {ne} bins", "disk": "rates.h5, reach.h5, plots",
                       "time": f"{nm * nf} spectra, {n_reach} reach evaluations"},
            "record_time": record_time, "units": nm * nf + (1 if reach else 0)}


def _model_nuclear(mm, job: dict) -> dict:
    from dmca_hpc import settings
    sec = settings.with_defaults("nuclear", job.get("nuclear"))
    n = len(sec["targets"]) * len(sec["masses_gev"])
    ne = int(sec["n_energies"])
    return {"memory": 8.0 * n * ne * 4, "disk": 20e3 + 8.0 * n * ne + 55e3,
            "serial": NUCLEAR_S + n * NUCLEAR_UNIT_S, "fixed": NUCLEAR_S, "records": n, "groups": [],
            "keys": {"memory": "nuclear.n_energies", "disk": "nuclear.n_energies",
                     "time": "nuclear.targets"},
            "detail": {"disk": "nuclear.h5 and plot", "time": f"{n} spectra"},
            "record_time": lambda unit, kpts: NUCLEAR_UNIT_S, "units": n}


def _model_oracle(mm, job: dict) -> dict:
    return {"memory": 0.0, "disk": 0.0, "serial": None, "records": 0,
            "keys": {"memory": "oracle", "disk": "oracle", "time": "oracle"},
            "detail": {"time": "pw.x runs: not modelled"}, "record_time": lambda unit, kpts: None}


MODELS: dict[str, Callable] = {
    "materials": _model_materials, "dft": _model_dft, "bands": _model_bands,
    "formfactor": _model_formfactor, "dielectric": _model_dielectric, "rates": _model_rates,
    "nuclear": _model_nuclear, "oracle": _model_oracle,
}


# --------------------------------------------------------------------------- the job

def stage_plan(job: dict) -> list[tuple[str, Any]]:
    """(stage, material or None) in the order the pipeline runs them."""
    from dmca_hpc.materials import material_from_spec
    from dmca_hpc.stages.registry import PER_MATERIAL, ordered
    stages = ordered(job.get("stages", []))
    materials = [material_from_spec(s, job.get("_job_dir", ".")) for s in job.get("materials", [])]
    plan: list[tuple[str, Any]] = []
    for mat in materials:
        plan += [(st, mat) for st in stages if st in PER_MATERIAL]
    if not materials and "rates" in stages:
        plan.append(("rates", None))
    plan += [(st, None) for st in stages if st not in PER_MATERIAL]
    return plan


def _calibration(records: list[dict], model: dict) -> tuple[float, int] | None:
    """(measured / model ratio, units used) of a stage's telemetry records, or None
    when none of them is comparable with the model."""
    meas = mod = 0.0
    n = 0
    for r in records:
        if r.get("status", "ok") != "ok":
            # a unit that failed (e.g. at once, on bad input) measured no work: a
            # 0.2 s failure must not calibrate a 40 min stage down to 3 s
            continue
        t = model["record_time"](r["unit"], r.get("kpts"))
        if t is None or not t > 0 or not math.isfinite(t):
            continue
        meas += r["wall_s"]
        mod += t
        n += 1
    if n == 0 or mod <= 0:
        return None
    return meas / mod, n


def estimate_stage(stage: str, mm, job: dict, ranks: int,
                   records: list[dict] | None = None) -> StageEstimate:
    """The :class:`StageEstimate` of ``stage`` for the material model ``mm`` (None for a
    job-wide stage) on ``ranks`` ranks; ``records``: the stage's measured telemetry
    units (:func:`read_unit_records`) to calibrate the time with: the measured cost of
    a unit is assumed to hold for units of the same kind (same basis, cutoff, q_max)."""
    m = MODELS[stage](mm, job)
    rss = RSS_MB.get(stage, RSS_BASE_MB) * MIB
    est = StageEstimate(stage=stage, material=getattr(mm, "name", None) if mm is not None else None,
                        memory_bytes=rss + m["memory"],
                        other_rank_bytes=rss + m.get("other", m["memory"]),
                        disk_bytes=m["disk"] + TELEMETRY_RECORD_BYTES * m["records"],
                        scratch_bytes=m.get("scratch", 0.0), units=m.get("units", 1),
                        keys=m["keys"], detail=m["detail"])
    if m["serial"] is None:
        est.how = "not modelled"
        return est
    fixed = m.get("fixed", 0.0)
    measured_part = schedule_time(m.get("groups", []), ranks, m.get("dynamic", True)) + m["serial"] - fixed
    est.model_time_s = est.time_s = measured_part + fixed
    if records:
        cal = _calibration(records, m)
        if cal is not None:  # the measured ratio scales what the records measure
            est.time_s = measured_part * cal[0] + fixed
            est.how = f"measured, {cal[1]} units"
    return est


def estimate_job(job: dict, ranks: int = 1, run_dir=None, current=frozenset(),
                 facts: dict | None = None, records: dict | None = None,
                 only: tuple[str, Any] | None = None) -> list[StageEstimate]:
    """Estimates of every stage of ``job`` (or of ``only`` = (stage, material)) on
    ``ranks`` ranks.

    Args:
        run_dir: output directory; its telemetry (``run_dir/telemetry``) calibrates the
            time models when ``records`` is not given.
        current: labels (``Si/dft``) of stages the run will skip as current.
        facts: {material name: {nocc, nbands, n_ibz, mo_energy}} read from earlier
            stages' files (see :func:`facts_from_outputs`).
        records: {stage: unit records} (default: read from run_dir's telemetry).
    """
    if records is None:
        records = {}
        if run_dir is not None:
            key = None
            encrypt = bool((job.get("telemetry") or {}).get("encrypt"))
            if encrypt:
                from dmca_hpc.monitoring.telemetry import KeyError_, load_key
                try:
                    key = load_key()
                except KeyError_:
                    key = None
            # the plaintext policy of the run's own summary (collector.write_run_summary)
            records = read_unit_records(Path(run_dir) / "telemetry", key,
                                        only[0] if only is not None else None,
                                        require_encrypted=encrypt or key is not None)
    mms: dict[str, _MaterialModel] = {}
    out: list[StageEstimate] = []
    for stage, mat in stage_plan(job):
        name = getattr(mat, "name", None)
        if only is not None and (stage, name) != (only[0], getattr(only[1], "name", only[1])):
            continue
        label = f"{name or 'global'}/{stage}"
        if label in current:
            out.append(StageEstimate(stage=stage, material=name, time_s=0.0, how="current"))
            continue
        mm = None
        if mat is not None:
            mm = mms.get(name) or _MaterialModel(job, mat, (facts or {}).get(name))
            mms[name] = mm
        recs = records.get(stage) or []
        # this material's units when it has measured ones, else the stage's (same machine)
        recs = [r for r in recs if r.get("material") == name] or recs
        try:
            out.append(estimate_stage(stage, mm, job, ranks, recs))
        except Exception as exc:  # an estimate must never stop a run: the stage reports itself
            out.append(StageEstimate(stage=stage, material=name, how="not estimated",
                                     note=f"{type(exc).__name__}: {exc}"))
    return out


def facts_from_outputs(outputs: dict) -> dict:
    """{nocc, nbands, n_ibz, mo_energy} from a material's finished stage outputs
    (``{stage: {label: path}}``): scf.h5's valence count and eigenvalues, bands.h5's
    band count and wedge (attributes and small datasets only)."""
    import h5py
    f: dict = {}
    scf = (outputs.get("dft") or {}).get("scf")
    bands = (outputs.get("bands") or {}).get("bands")
    try:
        if scf and Path(scf).exists():
            with h5py.File(scf, "r") as h:
                f["nocc"] = int(h.attrs["nocc"])
                if h["mo_energy"].size <= 10_000_000:
                    f["mo_energy"] = h["mo_energy"][()]
        if bands and Path(bands).exists():
            with h5py.File(bands, "r") as h:
                f["nocc"] = int(h.attrs["nocc"])
                f["nbands"] = int(h.attrs["nbands"])
                f["n_ibz"] = int(h["ibz_index"].shape[0])
    except (OSError, KeyError, ValueError):
        pass
    return f


# --------------------------------------------------------------------------- refusal

def check(estimates: list[StageEstimate], limits: Limits, job_file: str = "<job>",
          elapsed_s: float = 0.0, whole_run: bool = True) -> list[str]:
    """One line per stage that cannot finish within ``limits`` (empty: all fit).
    ``elapsed_s`` of the run so far counts against ``limits.max_hours``;
    ``whole_run`` adds the run-wide lines (stages that fit alone but not together)."""
    usable = MEMORY_FRACTION * limits.available_memory_bytes
    rpn = max(int(limits.ranks_per_node), 1)
    free_out, free_scr = limits.out_free_bytes, limits.scratch_free_bytes
    budget = None if limits.max_hours is None else limits.max_hours * 3600.0 - elapsed_s
    lines = []
    flagged = set()
    for e in estimates:
        if e.how in ("current", "not estimated"):
            continue
        bad = []
        if e.memory_bytes is not None:
            node = e.memory_bytes + (rpn - 1) * (e.other_rank_bytes or 0.0)
            if node > usable:
                per = f" per rank ({rpn} ranks on this node: {node / GIB:.3g} GiB)" if rpn > 1 else ""
                bad.append(("memory", f"memory {e.memory_bytes / GIB:.3g} GiB{per}, "
                            f"{e.detail.get('memory', '')}; this machine has "
                            f"{limits.available_memory_bytes / GIB:.3g} GiB available "
                            f"({MEMORY_FRACTION:.0%} usable)"))
        scratch_here = e.scratch_bytes if limits.same_filesystem else 0.0
        disk_here = e.disk_bytes + scratch_here
        if disk_here > free_out:
            scr = (f" and {scratch_here / GIB:.3g} GiB of {e.detail.get('scratch', 'scratch')} in "
                   f"{limits.scratch_dir}" if scratch_here > 0.01 * disk_here else "")
            bad.append(("disk", f"disk {disk_here / GIB:.3g} GiB ({e.detail.get('disk', 'outputs')}"
                        f"{scr}) > {free_out / GIB:.3g} GiB free in {limits.out_dir}"))
        if not limits.same_filesystem and e.scratch_bytes > free_scr:
            bad.append(("disk", f"scratch {e.scratch_bytes / GIB:.3g} GiB "
                        f"({e.detail.get('scratch', 'PySCF scratch')}) > {free_scr / GIB:.3g} GiB "
                        f"free in {limits.scratch_dir} (PYSCF_TMPDIR)"))
        if budget is not None and e.time_s is not None and e.time_s > budget:
            bad.append(("time", f"time {_fmt_hours(e.time_s)} on {limits.ranks} rank(s) ({e.how}; "
                        f"{e.detail.get('time', '')}) > --max-hours {limits.max_hours:g}"
                        + (f" less the {elapsed_s / 3600:.3g} h already run" if elapsed_s > 0 else "")))
        if bad:
            flagged.add(e.label)
            key = e.keys.get(bad[0][0], e.stage)
            parts = [txt if e.keys.get(res, key) == key else f"{txt} [{e.keys.get(res)}]"
                     for res, txt in bad]
            lines.append(f"{job_file}: {key}: {e.label} cannot finish: " + "; ".join(parts)
                         + f"; lower {key}")
    if whole_run and not lines:
        live = [e for e in estimates if e.how not in ("current", "not estimated")]
        disk = sum(e.disk_bytes + (e.scratch_bytes if limits.same_filesystem else 0.0) for e in live)
        if live and disk > free_out:
            big = max(live, key=lambda e: e.disk_bytes)
            key = big.keys.get("disk", big.stage)
            lines.append(f"{job_file}: {key}: the run's stages together need {disk / GIB:.3g} GiB of "
                         f"disk ({big.label} {big.disk_bytes / GIB:.3g} GiB the most) > "
                         f"{free_out / GIB:.3g} GiB free in {limits.out_dir}; lower {key}")
        timed = [e for e in live if e.time_s is not None]
        total = sum(e.time_s for e in timed)
        if budget is not None and timed and total > budget:
            big = max(timed, key=lambda e: e.time_s)
            key = big.keys.get("time", big.stage)
            lines.append(f"{job_file}: {key}: the run would take {_fmt_hours(total)} on "
                         f"{limits.ranks} rank(s) ({big.label} {_fmt_hours(big.time_s)} the most, "
                         f"{big.how}) > --max-hours {limits.max_hours:g}; lower {key}")
    return lines


def render_table(estimates: list[StageEstimate], limits: Limits | None = None) -> str:
    """The estimate as a small text table: one row per stage and a total."""
    rows = [("stage", "memory/rank [GiB]", "disk [GiB]", "time [h]", "how")]
    for e in estimates:
        mem = "-" if e.memory_bytes is None else f"{e.memory_bytes / GIB:.3g}"
        disk = "-" if e.how == "not estimated" else f"{(e.disk_bytes + e.scratch_bytes) / GIB:.3g}"
        t = "-" if e.time_s is None else f"{e.time_s / 3600:.3g}"
        how = e.how + (f" ({e.note})" if e.note else "")
        rows.append((e.label, mem, disk, t, how))
    timed = [e.time_s for e in estimates if e.time_s is not None]
    mems = [e.memory_bytes for e in estimates if e.memory_bytes is not None]
    rows.append(("total", f"{max(mems, default=0.0) / GIB:.3g} (max)",
                 f"{sum(e.disk_bytes + e.scratch_bytes for e in estimates) / GIB:.3g}",
                 f"{sum(timed) / 3600:.3g}", ""))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    text = "\n".join(f"  {r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}".rstrip()
                     for r in rows)
    if limits is not None:
        text += (f"\n  limits: {limits.available_memory_bytes / GIB:.3g} GiB memory available "
                 f"({MEMORY_FRACTION:.0%} usable, {limits.ranks_per_node} rank(s) on this node), "
                 f"{limits.out_free_bytes / GIB:.3g} GiB free in {limits.out_dir}, "
                 + (f"--max-hours {limits.max_hours:g}" if limits.max_hours is not None
                    else "no time limit")
                 + f", {limits.ranks} rank(s)")
    return text


def preflight_job(job: dict, run_dir, ranks: int = 1, ranks_per_node: int | None = None,
                  max_hours: float | None = None, current=frozenset()) -> tuple[list, Limits, list]:
    """(estimates, limits, refusal lines) of a whole job before it starts."""
    limits = machine_limits(run_dir, ranks, ranks_per_node, max_hours)
    facts = {}
    for stage, mat in stage_plan(job):  # files of current stages tell nbands etc.
        name = getattr(mat, "name", None)
        if name and f"{name}/{stage}" in current and stage in ("dft", "bands"):
            out = {"dft": {"scf": str(Path(run_dir) / name / "dft" / "scf.h5")},
                   "bands": {"bands": str(Path(run_dir) / name / "bands" / "bands.h5")}}
            facts[name] = facts_from_outputs({k: v for k, v in out.items()
                                              if f"{name}/{k}" in current})
    est = estimate_job(job, ranks, run_dir, current, facts)
    return est, limits, check(est, limits, job.get("_job_file", "<job>"))


def stage_problem(job: dict, stage: str, material, outputs: dict, run_dir, ranks: int,
                  ranks_per_node: int | None = None, max_hours: float | None = None,
                  elapsed_s: float = 0.0) -> str | None:
    """The refusal line of one stage about to start (with what the earlier stages of
    its material wrote: ``outputs``), or None when it fits."""
    limits = machine_limits(run_dir, ranks, ranks_per_node, max_hours)
    name = getattr(material, "name", None)
    facts = {name: facts_from_outputs(outputs or {})} if name else {}
    est = estimate_job(job, ranks, run_dir, facts=facts, only=(stage, name))
    lines = check(est, limits, job.get("_job_file", "<job>"), elapsed_s, whole_run=False)
    return lines[0] if lines else None
