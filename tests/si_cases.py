"""Shared small Si cases of the tests, built by the real stages and reused
across test modules (imported as ``from si_cases import ...``; tests/ is on
sys.path through conftest.py)."""
import warnings
from pathlib import Path

from dmca_hpc.electronic import scf as dft
from dmca_hpc.materials import get_material
from dmca_hpc.pipeline import make_context
from dmca_hpc.stages import dft as dft_stage
from dmca_hpc.stages import bands as bands_stage

SI_DFT = {"basis": "gth-dzvp", "pseudo": "gth-pbe", "xc": "PBE", "kmesh": [2, 2, 2],
          "ke_cutoff_hartree": 10.0, "conv_tol_hartree": 1e-10, "max_cycles": 50}


def shared_si_scf(tmp_path_factory, section=SI_DFT, tag="si_dzvp"):
    """Run (or reuse, through the stage's own checkpoint) the Si SCF in a
    session-wide directory; returns (out_dir, scf.h5 path)."""
    out = tmp_path_factory.getbasetemp() / f"dmca_shared_{tag}"
    job = {"dft": dict(section)}
    res = dft_stage.run_stage(make_context("dft", out, get_material("Si"), job))
    return out, Path(res["scf"])



SMALL = {"q_max": 6.0, "dq": 0.2, "de": 1.0, "e_max": 30.0, "gap_ev": 1.11}


#: the dft section of the shared small Si case (gth-szv, 2x2x2 SCF)
SI_SZV_DFT = {"basis": "gth-szv", "kmesh": [2, 2, 2], "ke_cutoff_hartree": 40.0,
              "conv_tol_hartree": 1e-10, "pyscf_verbose": 0}


def make_si_bands(cache_dir, bands: dict | None = None) -> str:
    """bands.h5 of Si (gth-szv, 2x2x2 SCF) from the real dft and bands stages,
    built once into ``cache_dir`` (serially, by the caller's process).
    ``bands`` updates the bands section (default: the 2x2x2 mesh, one chunk);
    a ``cache_dir`` that already holds the SCF of :data:`SI_SZV_DFT` (a copied
    dft/ folder) reuses it through the stage's checkpoint."""
    from dmca_hpc.hpc.checkpoint import is_complete
    from dmca_hpc.hpc.parallel import SerialComm
    out = Path(cache_dir)
    p = out / "bands" / "bands.h5"
    if p.exists() and is_complete(p):
        return str(p)
    mat = get_material("Si")
    job = {"dft": dict(SI_SZV_DFT),
           "bands": {"kmesh": [2, 2, 2], "plots": False, "band_path_npoints": 0,
                     "chunk_size": 8, **(bands or {})}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # szv cannot reach 50 eV: known, tested below
        c1 = make_context("dft", out, mat, job, comm=SerialComm())
        r1 = dft_stage.run_stage(c1)
        c2 = make_context("bands", out, mat, job, outputs={"dft": r1}, comm=SerialComm())
        r2 = bands_stage.run_stage(c2)
    return r2["bands"]


def cached_si_bands(request, mkdtemp=None) -> str:
    """bands.h5 of :func:`make_si_bands` in pytest's cache directory (shared by
    the test modules and runs), or in ``mkdtemp(name)`` / a temporary
    directory when the cache is off (-p no:cacheprovider).  Its SCF is
    ``<dir>/dft/scf.h5``."""
    import tempfile
    import pyscf
    cache = getattr(request.config, "cache", None)
    name = f"dmca_formfactor_si_szv222_pyscf{pyscf.__version__}"
    if cache is not None:
        d = cache.mkdir(name)
    else:
        d = mkdtemp(name) if mkdtemp is not None else Path(tempfile.mkdtemp(prefix=name))
    return make_si_bands(d)


