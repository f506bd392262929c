"""The Python API for notebooks: the names a user needs, from their homes.

    from dmca_hpc import api
    t = api.load_table(material="Si")                       # a shipped |f_crystal|^2 table
    r = api.electron_rates(t, [10e6, 100e6], fdm="heavy")   # masses in eV
    r.total                                                 # events / kg / year per mass

Everything here is a re-export (one way to do each thing): the README's
"Python API" section shows the units and a worked example; each function's
docstring states its units and conventions.  This module sits on the top
floor with the CLI (it imports from every package), so nothing inside the
package imports it.
"""
from dmca_hpc.config import load_job
from dmca_hpc.detection.halo import get_halo, known_halos
from dmca_hpc.detection.nuclear import recoil_rate, total_rate
from dmca_hpc.detection.rates import ElectronRates, electron_rates, rate_in_q_range
from dmca_hpc.detection.reach import Reach, poisson_upper_limit, reach_curve, uncertainty_bands
from dmca_hpc.detection.select import select_material
from dmca_hpc.electronic.bands import BandData, load_bands
from dmca_hpc.materials import Material, get_material, list_materials
from dmca_hpc.pipeline import make_context, run_job
from dmca_hpc.response.dielectric import DielectricFunction, dielectric_from_table, read_dielectric
from dmca_hpc.tables import FormFactorTable, read_table, table_for_material, write_table
from dmca_hpc.tables import load as load_table

__all__ = ["load_job", "get_halo", "known_halos", "recoil_rate", "total_rate", "ElectronRates",
           "electron_rates", "rate_in_q_range", "Reach", "poisson_upper_limit", "reach_curve",
           "uncertainty_bands", "select_material", "BandData", "load_bands", "Material",
           "get_material", "list_materials", "make_context", "run_job", "DielectricFunction",
           "dielectric_from_table", "read_dielectric", "FormFactorTable", "read_table",
           "table_for_material", "write_table", "load_table"]
