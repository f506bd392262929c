"""Benchmark: a 50-mass reach curve from a form-factor table, timed against a
straightforward quadrature of the same integrals in the same run.

Fast path: dmca_hpc.detection.reach.reach_curve (one Numba kernel over all masses, closed
form eta, analytic pruning of the q range where v_min > v_esc + v_E).

Baseline ("straightforward", QCDark's dark_matter_rates.py style): for each
mass and each energy bin, the q integral with scipy.integrate.trapezoid over
the table's q bin centres, the integrand built point by point in Python with
the scalar closed-form eta; the Q bins summed from dR/dE.  The trapezoid on
the bin centres differs from the midpoint sum only by half the end bins
(|f|^2 vanishes at the lowest q; the highest q bin is suppressed by 1/q^2),
so the two agree to ~1e-4.  (Simpson's rule on these binned data would differ
by several per cent and is not "the same integral".)

Usage: python benchmarks/bench_reach.py [--table PATH] [--n-masses 50]
       [--baseline-masses N]  (time the baseline on N of the masses and
       scale, for a quick run; default: all)
Prints the times, the speed-up ratio and the largest relative difference.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = ROOT.parent / "shared" / "reference" / "qcdark" / "Ge_final.hdf5"


def baseline_reach(table, masses_ev, halo, exposure, q_threshold, gap, eps, sigma_ref=1e-39):
    """Straightforward scipy.integrate evaluation of the same reach."""
    from scipy.integrate import trapezoid
    from dmca_hpc import units as U
    from dmca_hpc.detection.rates import rate_prefactor_per_kg_year, q_bins
    q = table.q_ev
    e = table.e_ev
    f2 = table.f2
    v0 = U.km_s_to_c(halo.v0_km_s)
    ve = U.km_s_to_c(halo.v_earth_km_s)
    vesc = U.km_s_to_c(halo.v_esc_km_s)
    z, y = vesc / v0, ve / v0
    ez = math.exp(-z * z)
    norm = math.erf(z) - 2 * z * ez / math.sqrt(math.pi)

    def eta(vmin):  # scalar closed form, 1/c
        x = vmin / v0
        if x < z - y:
            num = math.erf(x + y) - math.erf(x - y) - 4 * y * ez / math.sqrt(math.pi)
        elif x < z + y:
            num = math.erf(z) - math.erf(x - y) - 2 * (z + y - x) * ez / math.sqrt(math.pi)
        else:
            return 0.0
        return num / (2 * norm * y * v0)

    qb = q_bins(e, gap, eps)
    sel = np.nonzero(qb >= q_threshold)[0]
    out = []
    for m in masses_ev:
        pref = rate_prefactor_per_kg_year(m, table.cell_mass_ev, halo.rho_gev_cm3, sigma_ref)
        total = 0.0
        for b in sel:
            integrand = [f2[a, b] / (q[a] ** 2) * eta(q[a] / (2 * m) + e[b] / q[a])
                         for a in range(len(q))]
            total += pref * trapezoid(integrand, q) * table.de_ev
        out.append(3.0 * sigma_ref / (exposure * total) if total > 0 else math.inf)
    return np.array(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default=str(DEFAULT_TABLE))
    p.add_argument("--n-masses", type=int, default=50)
    p.add_argument("--baseline-masses", type=int, default=None,
                   help="time the baseline on this many of the masses (evenly picked) and scale")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from dmca_hpc.detection import reach
    from dmca_hpc import tables
    from dmca_hpc import units as U
    from dmca_hpc.detection.halo import get_halo
    if not Path(a.table).exists():
        print(f"table {a.table} not found; pass --table", file=sys.stderr)
        return 2
    table = tables.read_table(a.table)
    halo = get_halo("shm-2021")
    masses = np.logspace(np.log10(0.5), np.log10(1000.0), a.n_masses) * U.MEV_EV
    gap, eps = table.gap_ev, 2.9 if table.material == "Ge" else 3.6
    kw = dict(exposure_kg_year=1.0, q_threshold=1, halo=halo, gap_ev=gap, pair_energy_ev=eps)

    t0 = time.perf_counter()
    reach.reach_curve(table, masses[:1], **kw)  # JIT compile / load the on-disk cache
    t_compile = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        fast = reach.reach_curve(table, masses, **kw)
        runs.append(time.perf_counter() - t0)
    t_fast = min(runs)

    idx = np.arange(a.n_masses) if a.baseline_masses is None else \
        np.unique(np.linspace(0, a.n_masses - 1, a.baseline_masses).round().astype(int))
    t0 = time.perf_counter()
    slow = baseline_reach(table, masses[idx], halo, 1.0, 1, gap, eps)
    t_slow = (time.perf_counter() - t0) * a.n_masses / len(idx)
    fin = np.isfinite(fast.sigma_cm2[idx])
    assert np.array_equal(fin, np.isfinite(slow)), "fast and baseline disagree on zero rates"
    rel = np.max(np.abs(fast.sigma_cm2[idx][fin] / slow[fin] - 1)) if fin.any() else 0.0
    res = {"table": a.table, "n_masses": a.n_masses, "fast_seconds": t_fast,
           "first_call_seconds": t_compile, "baseline_seconds": t_slow,
           "baseline_masses_timed": int(len(idx)), "speedup": t_slow / t_fast,
           "max_rel_difference": float(rel)}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"reach curve, {a.n_masses} masses, table {Path(a.table).name} {table.f2.shape}")
        print(f"  fast (Numba kernel):         {t_fast * 1e3:9.1f} ms  (first call incl. JIT/cache "
              f"load {t_compile:.2f} s)")
        extra = "" if len(idx) == a.n_masses else f" (timed on {len(idx)} masses, scaled)"
        print(f"  baseline (scipy trapezoid):  {t_slow:9.1f} s{extra}")
        print(f"  speed-up: {t_slow / t_fast:.0f}x   max relative difference: {rel:.2e}")
    ok = (t_slow / t_fast >= 100) and rel < 1e-3
    print("PASS" if ok else "FAIL: need >= 100x and < 0.1% difference")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
