"""The one table of pipeline stages.

Every fact about a stage lives in :data:`STAGES`: its place in the canonical
order, the stages it needs in the same job, the stages whose outputs it reads
(and whose input hashes enter its own), whether it runs once per material or
once per job, the module holding its ``run_stage(ctx)``, and its DMCA
(domain, hypothesis) for telemetry records.  The job schema's ``stages`` enum,
config validation, the pipeline and telemetry all read it.

Implementations are named as module paths (strings), so this module imports
nothing and is cheap to read from a login node.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Stage:
    """One stage: see the module docstring."""

    name: str
    module: str
    per_material: bool
    needs: tuple = ()
    reads: tuple = ()
    domain: str = "dm-electron"
    hypothesis: str = "none"
    doc: str = ""


#: canonical order: a job's stages always run in this order
STAGES: tuple[Stage, ...] = (
    Stage("materials", "dmca_hpc.stages.materials", True, domain="materials",
          doc="structure and properties of each target (material.h5)"),
    Stage("dft", "dmca_hpc.stages.dft", True, reads=("materials",),
          doc="PySCF Kohn-Sham SCF on the coarse mesh (scf.h5)"),
    Stage("bands", "dmca_hpc.stages.bands", True, needs=("dft",), reads=("dft",),
          doc="dense-mesh bands from the converged density over ranks (bands.h5)"),
    Stage("formfactor", "dmca_hpc.stages.formfactor", True, needs=("bands",), reads=("bands",),
          hypothesis="DarkPhoton", doc="crystal form factor |f(q, E)|^2 table (formfactor.hdf5)"),
    Stage("dielectric", "dmca_hpc.stages.dielectric", True, needs=("formfactor",),
          reads=("formfactor",), domain="absorption", hypothesis="DarkPhoton",
          doc="dielectric function, optical limit, dark-photon / ALP absorption (dielectric.h5)"),
    Stage("rates", "dmca_hpc.stages.rates", True, reads=("formfactor", "dielectric"),
          hypothesis="DarkPhoton", doc="DM-electron rates, Q spectra, reach and bands (rates.h5)"),
    Stage("nuclear", "dmca_hpc.stages.nuclear", False, domain="dm-nucleus", hypothesis="WIMP",
          doc="WIMP nuclear recoil and sterile-neutrino coherent scattering (nuclear.h5)"),
    Stage("oracle", "dmca_hpc.stages.oracle", False, domain="dft-oracle",
          doc="self-correcting pw.x labels of candidate structures"),
)

_BY_NAME = {s.name: s for s in STAGES}

#: stage names in canonical order
STAGE_ORDER = tuple(s.name for s in STAGES)
#: stage -> stages it needs in the same job
STAGE_NEEDS = {s.name: s.needs for s in STAGES if s.needs}
#: stage -> stages whose outputs (and input hashes) it reads when they are in the job
STAGE_READS = {s.name: s.reads for s in STAGES if s.reads}
#: stages run once per material (the others once per job)
PER_MATERIAL = tuple(s.name for s in STAGES if s.per_material)
#: stage -> (DMCA domain, hypothesis) of its telemetry records
STAGE_DMCA = {s.name: (s.domain, s.hypothesis) for s in STAGES}


def get(name: str) -> Stage:
    """The stage called ``name`` (KeyError listing the known stages)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGE_ORDER)}") from None


def implementation(name: str):
    """The ``run_stage(ctx)`` function of a stage (imports its module)."""
    return import_module(get(name).module).run_stage


def ordered(names) -> list[str]:
    """``names`` in the canonical order."""
    names = set(names)
    return [s for s in STAGE_ORDER if s in names]
