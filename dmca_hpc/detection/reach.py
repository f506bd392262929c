"""Reach and limits versus DM mass, and their uncertainty bands.

* Background-free reach: the cross section giving ``n_events`` (default 3)
  events in Q in [q_threshold, q_max] for an exposure in kg-year:
  sigma = n_events * sigma_ref / (exposure * R(sigma_ref)); rates are linear
  in sigma_e, so one rate evaluation per mass suffices.
* Poisson upper limit from observed counts per Q bin, no background
  subtraction: ``mode="combined"`` sums counts and expected rate over the Q
  range and uses the classical upper limit mu_up(n, CL) =
  chi2.ppf(CL, 2(n+1)) / 2 (zero counts at 95% CL: 2.996 events);
  ``mode="per-bin"`` takes, for each mass, the most constraining single Q bin
  (SENSEI/DAMIC practice; no trials factor applied).
* Uncertainty: Monte Carlo over halo parameters (independent Gaussians with
  the spreads of :data:`HALO_SPREADS`, truncated to physical values) and over
  two or more tables of the same material (the DFT systematic: each sample
  draws one table uniformly); 2.5/16/50/84/97.5 percentiles give the 68% and
  95% bands of dR/dQ and of the reach.  Fixed seed -> identical bands.
  A table carrying its own per-bin 1-sigma (``FormFactorTable.f2_sigma``,
  e.g. the ``uncertainty`` of an exciton table) is also drawn, per sample,
  as max(0, f2 + z f2_sigma) = max(0, f2 (1 + (f2_sigma/f2) z)) with one
  standard normal z per sample shared by every bin (:func:`draw_table`).

Units: masses in eV internally (MeV in files and on the command line),
cross sections in cm^2, exposure in kg-year, rates in events/kg/year.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmca_hpc import units as U

#: 1-sigma spreads of the halo Monte Carlo (Gaussian, absolute units):
#: v0 [km/s] spans the 220-238 km/s determinations (Baxter et al. 2021 sec. 2);
#: v_esc [km/s] ~ Piffl et al. 2014 (533 +54 -41) / Deason et al. 2019 (528 +24 -25);
#: v_E [km/s] follows v0 (v_E = v_circ + 12 km/s peculiar), so its spread matches v0's;
#: rho [GeV/cm^3] spans 0.3-0.5 (Read 2014 review).
HALO_SPREADS = {"v0_km_s": 10.0, "v_esc_km_s": 30.0, "v_earth_km_s": 10.0, "rho_gev_cm3": 0.1}
#: percentiles reported: 95% low, 68% low, median, 68% high, 95% high
PERCENTILES = (2.5, 16.0, 50.0, 84.0, 97.5)


def poisson_upper_limit(n_observed: int, cl: float = 0.95) -> float:
    """Classical one-sided Poisson upper limit on the mean for ``n_observed``
    events and no background: mu_up = chi2.ppf(cl, 2 (n + 1)) / 2
    (n = 0, cl = 0.95: -ln(0.05) = 2.9957)."""
    from scipy.stats import chi2
    n = int(n_observed)
    if n < 0:
        raise ValueError(f"observed counts must be >= 0, got {n_observed}")
    if not 0 < cl < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {cl}")
    return 0.5 * float(chi2.ppf(cl, 2 * (n + 1)))


@dataclass
class Reach:
    """A reach or limit curve.

    Attributes:
        masses_ev: [nm] DM masses [eV].
        sigma_cm2: [nm] cross section reached [cm^2] (inf where the rate is zero).
        rate_ref: [nm] rate in the Q range at sigma_ref [events/kg/year].
        inputs: every input, units in the key names.
        notes: list of notes.
    """

    masses_ev: np.ndarray
    sigma_cm2: np.ndarray
    rate_ref: np.ndarray
    inputs: dict
    notes: list = field(default_factory=list)


def reach_from_rates(rates, exposure_kg_year: float, q_threshold: int = 1,
                     q_max: int | None = None, n_events: float | None = None,
                     observed_counts=None, cl: float = 0.95, mode: str = "combined"):
    """Reach from an :class:`dmca_hpc.detection.rates.ElectronRates` (rates at sigma_ref).

    Exactly one of ``n_events`` (background-free, default 3) or
    ``observed_counts`` (list of counts for Q = 1, 2, ...) is used.  Counts
    may stop before the last Q bin: the bins without a count are not used
    (unconstrained; the limit comes from Q = q_threshold .. len(counts)) and
    a note says so."""
    from dmca_hpc.detection.rates import rate_in_q_range
    if not (0 < exposure_kg_year < np.inf):
        raise ValueError(f"exposure must be a finite number > 0 kg-year, got {exposure_kg_year}")
    if int(q_threshold) < 1:
        raise ValueError(f"Q threshold must be >= 1, got {q_threshold}")
    sigma_ref = rates.inputs["sigma_e_cm2"]
    nQ = rates.dr_dq.shape[1]
    if nQ == 0 and observed_counts is not None:
        raise ValueError("observed counts per Q need a Q spectrum, and this table's material "
                         "has no electron-hole pair energy: give pair_energy_ev / --pair-energy")
    hi = nQ if q_max is None else min(int(q_max), nQ)
    notes = []
    if observed_counts is None:
        n = 3.0 if n_events is None else float(n_events)
        if not n > 0:
            raise ValueError(f"n_events must be > 0, got {n_events}")
        if nQ == 0:
            # no Q spectrum (no pair energy: a scintillator): every deposit above the gap
            r = np.asarray(rates.total, dtype=float)
            notes.append("no Q spectrum (no electron-hole pair energy): the reach counts every "
                         "deposit above the gap (the total rate), whatever the Q threshold")
        else:
            r = rate_in_q_range(rates, q_threshold, hi)
        with np.errstate(divide="ignore"):
            sigma = np.where(r > 0, n * sigma_ref / (exposure_kg_year * np.where(r > 0, r, 1)),
                             np.inf)
        how = {"method": "background-free", "n_events": n}
    else:
        counts = [int(c) for c in observed_counts]
        if any(c < 0 for c in counts):
            raise ValueError(f"observed counts must be >= 0, got {observed_counts}")
        if len(counts) < int(q_threshold):
            raise ValueError(f"observed counts cover Q = 1..{len(counts)}, all below the Q "
                             f"threshold {q_threshold}: give counts up to Q >= {q_threshold}")
        if len(counts) < hi:
            # no count for Q > len(counts): those bins do not constrain the limit
            notes.append(f"observed counts given for Q = 1..{len(counts)}: Q = "
                         f"{len(counts) + 1}..{hi} not used (unconstrained)")
            hi = len(counts)
        bins = list(range(int(q_threshold), hi + 1))
        if mode == "combined":
            ntot = sum(counts[k - 1] for k in bins)
            mu = poisson_upper_limit(ntot, cl)
            r = rate_in_q_range(rates, q_threshold, hi)
            with np.errstate(divide="ignore"):
                sigma = np.where(r > 0, mu * sigma_ref / (exposure_kg_year * np.where(r > 0, r, 1)),
                                 np.inf)
            how = {"method": "poisson-combined", "observed_total": ntot, "mu_up": mu, "cl": cl}
        elif mode == "per-bin":
            sig = np.full((rates.dr_dq.shape[0], len(bins)), np.inf)
            for j, k in enumerate(bins):
                mu = poisson_upper_limit(counts[k - 1], cl)
                rk = rates.dr_dq[:, k - 1]
                pos = rk > 0
                sig[pos, j] = mu * sigma_ref / (exposure_kg_year * rk[pos])
            sigma = sig.min(axis=1)
            r = rate_in_q_range(rates, q_threshold, hi)
            how = {"method": "poisson-per-bin", "cl": cl,
                   "note": "most constraining single Q bin; no trials factor"}
        else:
            raise ValueError(f"mode must be 'combined' or 'per-bin', got {mode!r}")
    for i, m in enumerate(rates.masses_ev):
        if not np.isfinite(sigma[i]):
            notes.append(f"m_chi = {m / U.MEV_EV:g} MeV: zero rate in Q >= {q_threshold} "
                         "(kinematically inaccessible): no reach")
    inputs = dict(rates.inputs, exposure_kg_year=exposure_kg_year, q_threshold=int(q_threshold),
                  q_max=hi, **how)
    return Reach(masses_ev=rates.masses_ev.copy(), sigma_cm2=sigma, rate_ref=r, inputs=inputs,
                 notes=notes)


def reach_curve(table, masses_ev, exposure_kg_year: float, q_threshold: int = 1,
                q_max: int | None = None, fdm: str = "heavy", halo="shm-2021",
                n_events: float | None = None, observed_counts=None, cl: float = 0.95,
                mode: str = "combined", gap_ev=None, pair_energy_ev=None,
                screening=None) -> Reach:
    """Reach (or limit) for many masses [eV] in one call (one vectorized rate
    evaluation at sigma_ref = 1e-39 cm^2)."""
    from dmca_hpc.detection.rates import electron_rates
    r = electron_rates(table, masses_ev, fdm=fdm, halo=halo, sigma_e_cm2=1e-39, gap_ev=gap_ev,
                       pair_energy_ev=pair_energy_ev, screening=screening)
    return reach_from_rates(r, exposure_kg_year, q_threshold, q_max, n_events, observed_counts,
                            cl, mode)


def sample_halos(base, n: int, seed: int, spreads: dict | None = None) -> list:
    """``n`` SHM variants of ``base`` with parameters drawn from independent
    Gaussians (``spreads``, default :data:`HALO_SPREADS`), redrawn until
    physical (v0, v_esc, rho > 0, v_E >= 0, v_esc > v0)."""
    from dmca_hpc.detection.halo import SHM, get_halo
    base = get_halo(base)
    if not isinstance(base, SHM):
        raise ValueError("halo Monte Carlo needs an SHM-type halo (shm-2021, qedark-2016, "
                         "legacy or custom)")
    sp = dict(HALO_SPREADS if spreads is None else spreads)
    bad = set(sp) - set(HALO_SPREADS)
    if bad:
        raise ValueError(f"unknown halo spread keys {sorted(bad)} (known: {sorted(HALO_SPREADS)})")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        kw = {k: getattr(base, k) + (sp.get(k, 0.0) * rng.standard_normal()) for k in HALO_SPREADS}
        if kw["v0_km_s"] > 0 and kw["v_esc_km_s"] > kw["v0_km_s"] and kw["rho_gev_cm3"] > 0 \
                and kw["v_earth_km_s"] >= 0:
            out.append(SHM(name=f"{base.name}-mc{len(out)}", **kw))
    return out


#: sub-stream of the run seed for the table-sigma draws (``seed`` itself
#: draws the halos, ``[seed, 1]`` the pooled table)
TABLE_SIGMA_STREAM = 2
#: how :func:`draw_table` uses f2_sigma (stored in Bands.inputs and printed)
TABLE_SIGMA_MODEL = ("f2 * (1 + (f2_sigma/f2) * z), z ~ N(0, 1) one per sample shared by all "
                     "bins (fully correlated), clipped at 0")


def draw_table(table, z: float):
    """``table`` with f2 moved by ``z`` of its own 1-sigma, bin by bin:
    max(0, f2 + z * f2_sigma), i.e. f2 * (1 + (f2_sigma/f2) * z) written so
    that a bin with f2 = 0 and f2_sigma > 0 is defined.

    One ``z`` for every bin (fully correlated): the file gives each bin's
    sigma but not how bins correlate, and for a systematic (an exciton
    correction's screening model, k mesh, band count moves the whole table
    together) full correlation is the conservative choice: independent bins
    would average out in the sum over bins a rate makes.  Negative draws are
    clipped at 0 (|f|^2 >= 0).  A table without ``f2_sigma`` is returned
    as is.  Dimensionless, like f2."""
    import dataclasses
    if table.f2_sigma is None:
        return table
    f2 = np.maximum(table.f2 + float(z) * table.f2_sigma, 0.0)
    return dataclasses.replace(table, f2=f2)


@dataclass
class Bands:
    """Percentile bands (``PERCENTILES``) over Monte Carlo samples.

    Attributes:
        masses_ev: [nm].
        dr_dq: [5, nm, nQ] percentiles of dR/dQ at sigma_ref [events/kg/year].
        sigma_cm2: [5, nm] percentiles of the reach [cm^2].
        samples_sigma_cm2: [ns, nm] every sample's reach.
        nominal: the :class:`Reach` of the nominal halo and first table.
        inputs: dict (seed, n_samples, spreads, tables; ``table_sigma``
            only when a table's own f2_sigma was drawn: model, stream seed,
            the tables that carried one).
    """

    masses_ev: np.ndarray
    dr_dq: np.ndarray
    sigma_cm2: np.ndarray
    samples_sigma_cm2: np.ndarray
    nominal: Reach
    inputs: dict


def uncertainty_bands(tables_, masses_ev, exposure_kg_year: float, n_samples: int = 50,
                      seed: int = 0, halo="shm-2021", spreads: dict | None = None,
                      fdm: str = "heavy", q_threshold: int = 1, q_max: int | None = None,
                      n_events: float | None = None, observed_counts=None, cl: float = 0.95,
                      mode: str = "combined", gap_ev=None, pair_energy_ev=None,
                      screening=None, comm=None, table_sigma: bool = True) -> Bands:
    """68%/95% bands of dR/dQ and reach over halo parameters and tables.

    ``tables_``: one table (halo uncertainty only) or a list of >= 2 tables
    of the same material (adds the DFT systematic).  A table with its own
    per-bin 1-sigma (``f2_sigma``) is, with ``table_sigma`` (default), also
    drawn in every sample by :func:`draw_table`: one standard normal z per
    sample, shared by all bins (fully correlated, the conservative choice
    when the file gives no bin correlations), from the stream
    ``[seed, TABLE_SIGMA_STREAM]``; ``inputs['table_sigma']`` then says so.
    Without f2_sigma nothing is drawn and the bands are the halo (and
    pooled-table) bands alone.  The nominal curve is the first table's f2.
    Samples can be spread over MPI ranks with ``comm`` (results are
    identical for any rank count: each sample's parameters are drawn up
    front from ``seed``)."""
    from dmca_hpc.tables import load
    from dmca_hpc.detection.rates import electron_rates
    from dmca_hpc.detection.halo import get_halo
    if not isinstance(tables_, (list, tuple)):
        tables_ = [tables_]
    tabs = [load(t) for t in tables_]
    mats = {t.material for t in tabs if t.material}
    if len(mats) > 1:
        raise ValueError(f"DFT-systematic tables must be of one material, got {sorted(mats)}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 for bands, got {n_samples}")
    masses = np.atleast_1d(np.asarray(masses_ev, dtype=float))
    halos = sample_halos(halo, n_samples, seed, spreads)
    rng = np.random.default_rng([seed, 1])
    which = rng.integers(0, len(tabs), size=n_samples) if len(tabs) > 1 else np.zeros(n_samples, int)
    with_sigma = [i for i, t in enumerate(tabs) if t.f2_sigma is not None] if table_sigma else []
    # a stream of its own, so that halo and table draws are those of a run without sigma
    z = (np.random.default_rng([seed, TABLE_SIGMA_STREAM]).standard_normal(n_samples)
         if with_sigma else np.zeros(n_samples))
    kw = dict(fdm=fdm, sigma_e_cm2=1e-39, gap_ev=gap_ev, pair_energy_ev=pair_energy_ev,
              screening=screening)
    nominal_rates = electron_rates(tabs[0], masses, halo=get_halo(halo), **kw)
    nominal = reach_from_rates(nominal_rates, exposure_kg_year, q_threshold, q_max, n_events,
                               observed_counts, cl, mode)
    nQ = nominal_rates.dr_dq.shape[1]

    def one(i):
        t = tabs[which[i]]
        t = draw_table(t, z[i]) if which[i] in with_sigma else t
        r = electron_rates(t, masses, halo=halos[i], n_q_max=nQ, **kw)
        rc = reach_from_rates(r, exposure_kg_year, q_threshold, q_max, n_events,
                              observed_counts, cl, mode)
        return r.dr_dq, rc.sigma_cm2

    if comm is not None and comm.Get_size() > 1:
        from dmca_hpc.hpc.parallel import map_units
        res = map_units(one, list(range(n_samples)), comm=comm, schedule="static",
                        root_only=False)
        failed = [r for r in res if not r.ok]
        if failed:
            raise RuntimeError(f"uncertainty sample {failed[0].unit} failed: {failed[0].error}")
        vals = [r.value for r in res]
    else:
        vals = [one(i) for i in range(n_samples)]
    dq = np.stack([v[0] for v in vals])
    sg = np.stack([v[1] for v in vals])
    with np.errstate(invalid="ignore"):
        pdq = np.percentile(dq, PERCENTILES, axis=0)
        psg = np.percentile(sg, PERCENTILES, axis=0)
    inputs = {"seed": seed, "n_samples": n_samples, "spreads": dict(spreads or HALO_SPREADS),
              "n_tables": len(tabs), "percentiles": list(PERCENTILES),
              "tables": [t.metadata.get("source_file", "") for t in tabs]}
    if with_sigma:
        inputs["table_sigma"] = {
            "model": TABLE_SIGMA_MODEL, "seed": [seed, TABLE_SIGMA_STREAM],
            "tables": [tabs[i].metadata.get("source_file", "") for i in with_sigma],
            "n_tables_with_sigma": len(with_sigma)}
    return Bands(masses_ev=masses, dr_dq=pdq, sigma_cm2=psg, samples_sigma_cm2=sg,
                 nominal=nominal, inputs=inputs)


# ---------------------------------------------------------------------------
# HDF5 (beside the Reach and Bands it writes; the stage and the CLI share it)
# ---------------------------------------------------------------------------

def write_reach_h5(path, curves: dict, bands=None, input_hash: str = "",
                   prov=None) -> Path:
    """Write reach curves {label: Reach} (and bands) with units on every dataset.

    ``bands``: None, one :class:`Bands` or {label: Bands}.  The first bands go
    to group ``bands``, further ones to ``bands_<label>``; each group's
    ``mediator`` attribute names its F_DM."""
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    if bands is not None and not isinstance(bands, dict):
        bands = {bands.nominal.inputs.get("fdm", ""): bands}
    with atomic_h5(path, input_hash=input_hash, stage="reach", prov=prov) as f:
        for label, rc in curves.items():
            g = f.create_group(label)
            write_dataset(g, "mass", rc.masses_ev / U.MEV_EV, "MeV")
            write_dataset(g, "sigma", rc.sigma_cm2, "cm^2", "cross section reached (inf = none)")
            write_dataset(g, "rate_ref", rc.rate_ref, "1/(kg*year)",
                          "rate in the Q range at sigma_ref = 1e-39 cm^2")
            g.attrs["inputs"] = json.dumps(rc.inputs, default=str)
            g.attrs["notes"] = json.dumps(rc.notes)
        for i, (label, b) in enumerate((bands or {}).items()):
            g = f.create_group("bands" if i == 0 else f"bands_{label}")
            g.attrs["mediator"] = label
            write_dataset(g, "mass", b.masses_ev / U.MEV_EV, "MeV")
            write_dataset(g, "percentiles", np.array(PERCENTILES), "percent")
            write_dataset(g, "sigma", b.sigma_cm2, "cm^2", "[percentile, mass]")
            write_dataset(g, "dR_dQ", b.dr_dq, "1/(kg*year)",
                          "[percentile, mass, Q-1] at sigma_ref = 1e-39 cm^2")
            write_dataset(g, "samples_sigma", b.samples_sigma_cm2, "cm^2", "[sample, mass]")
            g.attrs["inputs"] = json.dumps(b.inputs, default=str)
    return Path(path)
