"""Physics-level input checks (issue #17): a negative gap or a non-finite
pair energy, cross section or exposure is refused with the quantity, its
unit and what is expected, before any rate is computed."""
import numpy as np
import pytest

from dmca_hpc import units as U
from dmca_hpc.detection.rates import electron_rates
from dmca_hpc.detection.reach import reach_from_rates
from dmca_hpc.tables import FormFactorTable


@pytest.fixture
def table():
    return FormFactorTable(f2=np.ones((20, 10)), dq_ame=0.02, de_ev=0.1,
                           vcell_ev3=40.0 * U.ANGSTROM_CM**3 / U.HBARC_EV_CM**3, cell_mass_ev=52e9,
                           gap_ev=1.1, material="Si")


@pytest.mark.parametrize("kw,match", [
    ({"gap_ev": -1.0}, r"gap must be a finite number >= 0 eV, got -1\.0"),
    ({"gap_ev": np.inf}, r"gap must be a finite number >= 0 eV, got inf"),
    ({"pair_energy_ev": np.inf}, r"pair energy must be a finite number > 0 eV, got inf"),
    ({"sigma_e_cm2": np.inf}, r"sigma_e must be a finite number > 0 cm\^2, got inf"),
])
def test_electron_rates_refuses_bad_inputs(table, kw, match):
    with pytest.raises(ValueError, match=match):
        electron_rates(table, [1e7], **kw)


@pytest.mark.parametrize("exposure", [-1.0, 0.0, np.inf, np.nan])
def test_reach_refuses_bad_exposure(exposure):
    with pytest.raises(ValueError, match=r"exposure must be a finite number > 0 kg-year"):
        reach_from_rates(None, exposure)
