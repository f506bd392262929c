"""eps_inf (and the plasmon) of GaAs, 3C-SiC, NaI and CsI from the dielectric stage
against measured values (issue 15).

The numbers come from runs of jobs/eps_gaas.yaml, jobs/eps_sic.yaml,
jobs/eps_nai.yaml and jobs/eps_csi.yaml (GTH PBE, optical limit from the DFT
states, scissor to the library gap).  Nothing is computed here.  Two sources, one
set of checks (a dict per material, built by
tests/reference/record_target_dielectric.py's ``record_run`` in both cases):

* ``DMCA_EPS_RUNS`` unset (CI): the recorded results in
  tests/reference/data/target_dielectric.json (or the file named by
  ``DMCA_EPS_JSON``), written by ``python tests/reference/record_target_dielectric.py
  RUN_DIR ...`` from the runs (the dielectric.h5 files, 3 MB each, are not
  committed).  A material not recorded there is skipped with the reason.
* ``DMCA_EPS_RUNS`` set: each run's ``dielectric.h5`` read directly, as
  ``$DMCA_EPS_RUNS/<job name>/<Material>/dielectric/dielectric.h5``
  (``DMCA_EPS_RUNS=runs`` after ``dmca-hpc run jobs/eps_sic.yaml``, whose default
  output is runs/eps_sic) or ``$DMCA_EPS_RUNS/<Material>/dielectric/dielectric.h5``
  (one run's --out directory).  Not a directory: skipped with the reason; a target
  whose file is missing is skipped by itself.

Either way the run must be of the job file as it stands: every key
jobs/eps_X.yaml sets has the run's value, and (recorded results) the job file as
written has not changed since the recording.

What is compared: ``attrs['eps_static']`` (the exact transition sum
1 + (16 pi / V) sum w_k |d_cv|^2 / w_cv of dmca_hpc.response.optical, no
broadening) and ``attrs['plasmon_peak_ev']`` (peak of the optical energy-loss
function after 1 eV smoothing), both dimensionless / eV as the stage writes them.

Tolerances (stated before any of these runs, from the method's known errors):

* eps_inf within 10%.  RPA without local fields on PBE + scissor is not an
  exact theory: on the same route the README finds Si 12.3 against 11.7
  (+5%) and diamond 5.39 against 5.70 (-5%).  Local fields lower eps_inf by
  ~5-10% (more in ionic crystals, whose occupied states are localized), the
  scissor with fixed d_cv (Del Sole & Girlanda, PRB 48, 11789 (1993)) and the
  finite double-zeta basis move it either way by a few per cent; 10% is twice
  the spread seen on Si and diamond.
* plasmon within 15%, as tests/unit/response/test_optical.py for Si: on this
  route the ELF peak lands 7-8% high in Si (17.9 vs 16.7 eV) and diamond
  (36.6 vs ~34 eV), and measured peaks differ by a few per cent between EELS
  and optical data.
* Kramers-Kronig of the binned spectrum (``eps_static_spectrum``) against the
  exact sum to 2%: the spectrum the plasmon is read from holds the oscillator
  strength below e_max = 50 eV (tests/unit/response/test_optical.py asks 1%
  of Si; transitions above 50 eV enter the KK only through its tail).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

from dmca_hpc.materials import get_material

RUNS_ENV = "DMCA_EPS_RUNS"
JSON_ENV = "DMCA_EPS_JSON"  # overrides tests/reference/data/target_dielectric.json


def _li1976_eps_electronic(a0: float, strengths) -> float:
    """Electronic (lambda -> infinity of the UV terms) limit of a Li (1976)
    Sellmeier n^2 - 1 = a0 + sum_i B_i lambda^2 / (lambda^2 - C_i^2): 1 + a0 + sum B_i
    (the infrared-phonon term is left out: eps_inf is the dielectric constant
    above the phonons and below the electronic absorption)."""
    return 1.0 + a0 + sum(strengths)


# material -> (job name, measured eps_inf, source)
EPS_INF = {
    "GaAs": ("eps_gaas", 10.9,
             "O. Madelung, Semiconductors: Data Handbook, 3rd ed. (Springer 2004), GaAs; "
             "J. S. Blakemore, J. Appl. Phys. 53, R123 (1982): 10.89 at 300 K"),
    "SiC": ("eps_sic", 6.52,
            "3C-SiC: L. Patrick and W. J. Choyke, Phys. Rev. B 2, 2255 (1970) (also in "
            "Madelung, Semiconductors: Data Handbook)"),
    # H. H. Li, J. Phys. Chem. Ref. Data 5, 329 (1976), NaI at 297 K:
    # n^2 - 1 = 0.478 + 1.532 l^2/(l^2 - 0.170^2) + 4.27 l^2/(l^2 - 86.21^2), l in um.
    # Its electronic limit is 3.01; n_D = 1.7745 at 589 nm (n^2 = 3.15) still holds the
    # dispersion toward the UV edge and is not eps_inf; the issue quotes 2.9.
    "NaI": ("eps_nai", _li1976_eps_electronic(0.478, [1.532]),
            "NaI: Li (1976) Sellmeier, electronic terms only (n^2 -> 3.01 between the UV "
            "absorption and the 86 um TO phonon)"),
    # CsI: n = 1.74 in the infrared window (~10 um, Li 1976, where the UV dispersion has
    # died out and the TO phonon at 62 cm^-1 pulls n^2 down by only ~0.01): n^2 = 3.03
    "CsI": ("eps_csi", 1.74 ** 2,
            "CsI: refractive index n = 1.74 at long (infrared) wavelength, "
            "H. H. Li, J. Phys. Chem. Ref. Data 5, 329 (1976)"),
}
EPS_REL_TOL = 0.10

# material -> why its eps_inf misses EPS_REL_TOL (a strict xfail: it fails the day the
# job converges, and the entry must then go)
EPS_KNOWN_MISSES = {
    "GaAs": ("GaAs eps_inf is not converged in the optical k mesh: 19.6 on 8^3, 13.4 on "
             "12^3 (jobs/eps_gaas.yaml) against 10.9 measured. PBE leaves GaAs a 0.43 eV "
             "direct gap at Gamma in a conduction valley ~0.07 m_e light, so the dipoles "
             "d_cv = p_cv / w_DFT there are large and the Gamma point of a Gamma-centred "
             "mesh stands for a far larger volume than the valley occupies; the scissor "
             "(fixed d_cv) does not remove that.  A denser (or shifted) optical mesh is "
             "needed: 16^3 costs ~2.4x the 12^3 run"),
}

# material -> (measured bulk plasmon [eV], source); NaI and CsI have none: their
# loss functions carry several comparable peaks (I 5p, Na 2p / Cs 5p, I 4d onsets),
# no single free-electron-like plasmon to compare the ELF maximum with
PLASMON_EV = {
    "GaAs": (15.8, "ELF peak from reflectance, H. R. Philipp and H. Ehrenreich, "
                   "Phys. Rev. 129, 1550 (1963)"),
    # 6H and 3C have the same valence density to 0.1%, so the same plasmon
    "SiC": (22.5, "bulk plasmon loss 22.5 eV in XPS/AES of a SiC single crystal ('Electron "
                  "spectroscopy study of SiC', in agreement with optical data); inelastic "
                  "x-ray scattering on 6H-SiC: 22-23 eV at low q (ANL/BNL, OSTI 201761, 1995)"),
}
PLASMON_REL_TOL = 0.15
KK_REL_TOL = 0.02


def _load_recorder():
    """tests/reference/record_target_dielectric.py as a module (a script beside this
    file, not a package: loaded by path so no sys.path or import mode matters)."""
    spec = importlib.util.spec_from_file_location(
        "record_target_dielectric", Path(__file__).resolve().parent / "record_target_dielectric.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recorder = _load_recorder()


def _runs_root(value: str) -> Path:
    root = Path(value)
    if not root.is_dir():
        pytest.skip(f"{RUNS_ENV}={value}: not a directory")
    return root


def _dielectric_file(material: str, root: Path) -> Path:
    job = EPS_INF[material][0]
    for path in (root / job / material / "dielectric" / "dielectric.h5",
                 root / material / "dielectric" / "dielectric.h5"):
        if path.is_file():
            return path
    pytest.skip(f"no {job}/{material}/dielectric/dielectric.h5 under {root} "
                f"(run: dmca-hpc run jobs/{job}.yaml)")


@functools.lru_cache(maxsize=None)
def _recorded(path: str) -> dict:
    """The recorder's JSON, its units checked against the ones the checks assume."""
    doc = json.loads(Path(path).read_text())
    if doc.get("units") != recorder.UNITS:
        pytest.fail(f"{path}: units {doc.get('units')} differ from the recorder's "
                    f"{recorder.UNITS}; re-record with tests/reference/record_target_dielectric.py")
    return doc


def _record(material: str) -> tuple[dict, str]:
    """(record, where it came from) of one material: from the run directories of
    $DMCA_EPS_RUNS when set, else from the recorded JSON."""
    runs = os.environ.get(RUNS_ENV)
    if runs:
        path = _dielectric_file(material, _runs_root(runs))
        try:
            return recorder.record_run(path), str(path)
        except recorder.RecordError as exc:
            pytest.fail(str(exc))
    override = os.environ.get(JSON_ENV)
    path = Path(override) if override else recorder.DEFAULT_JSON
    if override and not path.is_file():
        pytest.fail(f"{JSON_ENV}={override}: no such file (expected a target_dielectric.json)")
    rec = _recorded(str(path))["materials"].get(material) if path.is_file() else None
    if rec is None:
        pytest.skip(f"no recorded run of jobs/{EPS_INF[material][0]}.yaml; run it and "
                    f"tests/reference/record_target_dielectric.py")
    return rec, (f"{path} [{material}: run {rec.get('run_dir')}, git "
                 f"{str(rec.get('git_sha'))[:10]}, {rec.get('finished_at')}]")


@pytest.fixture(scope="module", params=sorted(EPS_INF))
def run(request):
    material = request.param
    rec, where = _record(material)
    return material, {**rec["values"], "method": rec["method"], "path": where, "record": rec}


def test_run_is_of_the_current_job_file(run):
    """The numbers are those of jobs/eps_X.yaml as it stands: the run's job sets
    every key the file sets to the file's value, and the file as written (comments
    aside) is the one that was recorded."""
    material, a = run
    rec = a["record"]
    job = f"jobs/{EPS_INF[material][0]}.yaml"
    assert rec["job"] == job, (a["path"], rec["job"])
    assert rec["job_keys_differing"] == [], (a["path"], rec["job_keys_differing"])
    _, spec = recorder.job_spec(recorder.REPO / job)
    assert rec["job_spec_sha256"] == spec, (
        f"{job} changed since the run in {a['path']}: re-run it and "
        f"tests/reference/record_target_dielectric.py")


def test_run_is_the_states_route_at_the_library_gap(run):
    """The number under test is the one the jobs are for: optical limit from the
    states (not the table's q -> 0 extrapolation), no states-route warning, the
    table scissored to the material library's gap."""
    material, a = run
    m = a["method"]
    assert m.get("optical_route") == "states", (a["path"], m.get("optical_route"))
    assert "optical_states_warning" not in m, (a["path"], m.get("optical_states_warning"))
    assert a["gap_ev"] == pytest.approx(get_material(material).scissor_gap_ev, abs=1e-6)
    assert len(m.get("optical_states_kmesh", [])) == 3


def test_eps_inf_against_measured(run, request):
    material, a = run
    if material in EPS_KNOWN_MISSES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=EPS_KNOWN_MISSES[material]))
    _job, measured, source = EPS_INF[material]
    eps = float(a["eps_static"])
    m = a["method"]
    print(f"{material}: eps_inf {eps:.3f} (optical mesh {m.get('optical_states_kmesh')}, "
          f"scissor {m.get('optical_states_scissor_ev', float('nan')):.3f} eV) against "
          f"{measured:.3f} measured ({source})")
    assert math.isfinite(eps) and eps > 1.0
    assert abs(eps / measured - 1.0) <= EPS_REL_TOL, (material, eps, measured)


def test_spectrum_keeps_the_static_limit(run):
    """Kramers-Kronig of the binned, broadened Im eps reproduces the exact sum."""
    material, a = run
    assert float(a["eps_static_spectrum"]) == pytest.approx(float(a["eps_static"]),
                                                            rel=KK_REL_TOL), material


def test_plasmon_against_measured(run):
    material, a = run
    if material not in PLASMON_EV:
        pytest.skip(f"{material}: no single bulk plasmon to compare with (see PLASMON_EV)")
    measured, source = PLASMON_EV[material]
    peak = float(a["plasmon_peak_ev"])
    print(f"{material}: ELF peak {peak:.2f} eV against {measured} eV measured ({source})")
    assert abs(peak / measured - 1.0) <= PLASMON_REL_TOL, (material, peak, measured)
