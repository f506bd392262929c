"""Each stage's plots exist after the stage ran on small inputs, show what a
reader needs (a caption's inputs, sensible axes) and the HDF5 file beside
them carries those inputs.  The shipped tables stand in for the form-factor
stage; the figures are caught before they are closed and inspected."""
import json

import h5py
import numpy as np
import pytest

from dmca_hpc import resources
from dmca_hpc.materials import get_material
from dmca_hpc.pipeline import make_context

SI_TABLE = resources.tables_dir() / "Si_gth.hdf5"


@pytest.fixture
def figures(monkeypatch):
    """{png file name: Figure} of every figure the plots save (kept open)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.figure
    import matplotlib.pyplot as plt
    caught = {}
    save = matplotlib.figure.Figure.savefig

    def savefig(fig, fname, *a, **kw):
        caught[str(fname).rsplit("/", 1)[-1]] = fig
        return save(fig, fname, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    monkeypatch.setattr(plt, "close", lambda *a, **kw: None)
    yield caught
    monkeypatch.undo()
    plt.close("all")


def _run(stage, tmp_path, job, outputs=None, material="Si"):
    import importlib
    from dmca_hpc.stages import registry
    ctx = make_context(stage, tmp_path, get_material(material) if material else None, job, outputs)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    return importlib.import_module(registry.get(stage).module).run_stage(ctx)


def _texts(fig):
    """Every title, axis label and legend entry of a figure, one string."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts()]
    return "\n".join(out)


def test_rates_stage_plots_and_inputs(tmp_path, figures):
    job = {"rates": {"material": "Si", "masses_mev": [10.0, 100.0], "fdm": ["heavy", "light"],
                     "sigma_e_cm2": 1e-38, "exposure_kg_year": 2.0, "reach_n_masses": 4,
                     "reach_mass_min_mev": 1.0, "reach_mass_max_mev": 100.0,
                     "uncertainty_samples": 3}}
    out = _run("rates", tmp_path, job)
    for k in ("dRdE", "dRdQ", "reach_plot"):
        assert (tmp_path / "rates" / out[k].rsplit("/", 1)[-1]).stat().st_size > 1000, k
    with h5py.File(out["rates"]) as f:
        assert f["heavy"].attrs["sigma_e_cm2"] == 1e-38
        assert json.loads(f.attrs["halo"])["name"] == "shm-2021"
        assert f.attrs["gap_ev"] == pytest.approx(1.11) and f.attrs["pair_energy_ev"] > 0
    with h5py.File(out["reach"]) as f:
        # bands for every mediator, each naming its mediator
        assert f["bands"].attrs["mediator"] == "heavy"
        assert f["bands_light"].attrs["mediator"] == "light"
        assert f["bands_light/sigma"].shape == (5, 4)
        assert json.loads(f["light"].attrs["inputs"])["exposure_kg_year"] == 2.0
    # dR/dQ: the Q = 1 bar spans [0.5, 1.5] like every other bar
    from matplotlib.patches import StepPatch
    for ax in figures["dRdQ.png"].axes:
        steps = [p for p in ax.patches if isinstance(p, StepPatch)]
        assert steps and all(p.get_data().edges[0] == pytest.approx(0.5) for p in steps)
    cap = _texts(figures["dRdQ.png"])
    assert "Si" in cap and "1e-38 cm^2" in cap and "shm-2021" in cap and "light mediator" in cap
    cap = _texts(figures["reach.png"])
    assert "heavy mediator: 68% band" in cap and "light mediator: 95% band" in cap
    assert "exposure 2 kg-year" in cap and "3 halo Monte Carlo samples" in cap


def test_nuclear_stage_plot_and_inputs(tmp_path, figures):
    # targets in any case (as rates --material si): written as the known spelling
    job = {"nuclear": {"targets": ["xe", "NAI"], "masses_gev": [50.0], "n_energies": 20,
                       "sigma_n_cm2": 2e-46}}
    out = _run("nuclear", tmp_path, job, material=None)
    assert (tmp_path / "nuclear" / "nuclear.png").stat().st_size > 1000
    with h5py.File(out["nuclear"]) as f:
        assert "Xe" in f and "NaI" in f
        assert f.attrs["sigma_n_cm2"] == 2e-46
        assert json.loads(f.attrs["units"])["sigma_n_cm2"] == "cm^2"
        assert json.loads(f.attrs["halo"])["v0_km_s"] == pytest.approx(238.0)
    cap = _texts(figures["nuclear.png"])
    assert "sigma_n = 2e-46 cm^2" in cap and "halo shm-2021" in cap and "Xe 50 GeV" in cap


def test_dielectric_stage_plots_and_inputs(tmp_path, figures):
    # the table route (no DFT states): the shipped Si table plays the form-factor stage
    job = {"dielectric": {"optical_route": "table", "n_masses": 60, "exposure_kg_year": 5.0,
                          "mass_min_ev": 0.5}}
    out = _run("dielectric", tmp_path, job, outputs={"formfactor": {"table": str(SI_TABLE)}})
    for k in ("dielectric_plot", "absorption_plot"):
        assert (tmp_path / "dielectric" / out[k].rsplit("/", 1)[-1]).stat().st_size > 1000, k
    with h5py.File(out["dielectric"]) as f:
        assert f.attrs["material"] == "Si" and f.attrs["gap_ev"] == pytest.approx(1.11)
        assert f.attrs["e_complete_ev"] > 10
        assert f.attrs["absorption_exposure_kg_year"] == 5.0
        assert f.attrs["absorption_n_events"] == 3.0
        assert f.attrs["absorption_rho_chi_gev_cm3"] == 0.3
        assert json.loads(f.attrs["method"])["optical_route"] == "table"
        e = f["E"][()]
        im, elf = f["optical/eps_im"][()], f["optical/elf"][()]
    # eps and the loss function on separate axes; E axis ends where the response does
    fig = figures["dielectric.png"]
    eps_ax, elf_ax = fig.axes[0], fig.axes[1]
    assert not any("-1/" in ln.get_label() for ln in eps_ax.get_lines())
    assert any("-1/" in ln.get_label() for ln in elf_ax.get_lines())
    # the last energy where Im eps or Im(-1/eps) is >= 1% of its maximum
    e_on = max(e[im >= 0.01 * im.max()][-1], e[elf >= 0.01 * elf.max()][-1])
    assert e_on < eps_ax.get_xlim()[1] <= 1.2 * e_on + 1e-9 < e[-1]
    cap = _texts(fig)
    assert "Si" in cap and "[eV]" in cap and "dimensionless" in cap and "no smearing" in cap
    # absorption: nothing below the 1.11 eV gap, nothing past the response's end
    fig = figures["absorption.png"]
    for ax in fig.axes:
        m, y = ax.get_lines()[0].get_data()
        drawn = m[np.isfinite(y)]
        assert drawn.size and drawn.min() >= 1.11 and drawn.max() <= e_on
        # (the table route's q -> 0 extrapolation has zero-loss holes: no reach there)
        assert np.isfinite(y[(m > 3) & (m < 10)]).mean() > 0.8
    cap = _texts(fig)
    assert "5 kg year" in cap and "gap 1.11 eV" in cap and "smearing" in cap
