"""Fit of the analytic form-factor route's time model (issue 14/17 follow-up), one command:

    .venv/bin/python benchmarks/fit_analytic_time.py [--out FILE] [--repeat N] [--n-q N]
                                                     [--only LABEL ...] [--telemetry DIR ...]
                                                     [--rows EARLIER.json]

The model (dmca_hpc.electronic.formfactor.estimate_formfactor): the time of one
(k, Q) of a unit is

    t = a * W_AO + b * W_MO,
    W_AO = products + elements + tables        (formfactor.analytic_ao_work),
    W_MO = nao_c^2 nval + nao_c nval ncond     (the two GEMMs of the MO transform),

W_AO counting the complex multiply-adds over the (k, character) columns of the
factorized AO kernels: the screened Cartesian primitive-pair products, the
nao_c^2 elements of S(k, Q) (zeroed, summed over the characters, stored) and
the unit's 1D tables over its Q.  Units whose 2q is a reciprocal lattice vector
build one Q of each +-Q pair: half the products and elements.

Measured here, per case (one cell built with pyscf through
dmca_hpc.electronic.scf.build_cell, the 6x6x6 mesh, one q, its little-group k set
of ``symmetry.pair_kset`` as ``Engine.unit_kset`` runs it, or every k; random
complex MO coefficients: the timings do not depend on their values), one
BLAS/OpenMP/numba thread, nice'd by the caller:

* ``plan_sphere``: ``AnalyticEngine._plan_factorized`` for the whole sphere
  |Q| <= 20 alpha m_e of q (the 1D tables a unit builds once), the least of up
  to 3 calls;
* on a block of ~``--n-q`` Q of that sphere (whole lines of constant (Q_y, Q_z),
  the kernel's order: it reuses the y*z products along a line, nearest a random
  point at 0.6 of the disc's radius, with their mirrors: closed under -Q), with
  its plan built once and left out: ``eval``, ``_eval_plan`` over the batches
  (the AO matrices, at the batch size Engine uses, ``min(64, 256 MiB / (nk
  nao_c^2 16 B))``), and ``full``, ``iter_matrix_elements`` plus
  ``kernels.bin_batch`` into a 1000 x 500 table (what ``Engine.compute_unit``
  does per batch); each timed per batch, the least over ``--repeat`` passes of
  every batch summed (on shared cores a batch of a few ms often runs
  undisturbed, a pass of seconds seldom does);
* ``unit`` per (k, Q) = plan_sphere / (nk nQ_sphere) + full / (nk nQ_block).

Times are CPU seconds of this process (time.process_time: another job on the
cores inflates it less than wall time; wall seconds are recorded too).  The
exact counts come from the plans themselves (their tabulated maxima give the
kernel's own screening: the count of kept pairs equals the kernel's return
value, checked): products and elements of the block, tables of the sphere.  a
and b are the least-squares fit of ``unit`` on (W_AO, W_MO) with relative
residuals (each row divided by its time).  Some cases run with two valence
counts (the bands an e_max = 50 eV table starts from, and every occupied band),
which separates b from a.

Checks written with the fit: the screening proxy of ``analytic_ao_work`` against
the exact kept products on the whole sphere (for a two-k set {0, -q}: the
maxima over 216 k agree to 0.3 %), and, for every ``--telemetry`` run directory
(default /work/prod/c_ae and /work/prod/ge_ae when present), the production
figures: per-unit wall and CPU seconds of the formfactor stage's telemetry
(rank-*.jsonl, plain JSON lines) against the old model (11.8 us per (k, Q) of
Si def2-svp scaled with W_MO only) and the new one with the fitted a and b, both
for the k set those units ran (the record's ``kpts``) and with the bands
file's nbands and nocc as the preflight passes them (nocc, not the valence bands
the e_max window reaches: those are not known before the bands exist), and
what ``estimate_formfactor`` says for the job now (little-group k sets, the
module's constants).  ``--rows`` refits and rechecks the rows of an earlier
output without timing anything.  Results go to --out (JSON, default
benchmarks/analytic_time_fit.json) and stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KMESH = (6, 6, 6)
Q_MAX = 20.0
#: (label, material, basis, pseudo, mesh index of q, [nval, ...], ncond): q = 36 is
#: (1/6, 0, 0) (56 k in its little-group set), 78 = (1/3, 1/6, 0) (126 k), 0 = Gamma
#: (29 k, +-Q pairs); "all k": the whole mesh (216 k, as the production units ran);
#: nval: an e_max = 50 eV table's valence bands (Engine.nval of the production bands:
#: C 4, Ge 14 with the 3d; Si 4) and every occupied band
CASES = [
    ("C def2-svp q36", "C", "def2-svp", None, 36, [4, 6], 14),
    ("C def2-svp q78", "C", "def2-svp", None, 78, [4], 14),
    ("C def2-svp q0", "C", "def2-svp", None, 0, [4], 14),
    ("C def2-svp q36 all k", "C", "def2-svp", None, 36, [4], 14),
    ("Si def2-svp q36", "Si", "def2-svp", None, 36, [4, 14], 22),
    ("Ge def2-svp q36", "Ge", "def2-svp", None, 36, [14, 32], 22),
    ("Ge def2-svp q0", "Ge", "def2-svp", None, 0, [14], 22),
    ("Si gth-dzvp q36", "Si", "gth-dzvp", "gth-pbe", 36, [4], 22),
    ("C cc-pvdz q36", "C", "cc-pvdz", None, 36, [4], 22),
    ("C def2-tzvp q36", "C", "def2-tzvp", None, 36, [4, 6], 30),
]
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
#: the model before this fit (formfactor.py up to issue 17): 11.8 us per (k, Q) for Si
#: def2-svp (nao_c 38, 14 x 22 bands), scaled with W_MO
OLD_REF = (11.8e-6, 38, 14, 22)


def make_cell(material: str, basis: str, pseudo):
    from dmca_hpc.electronic.scf import build_cell, section_with_defaults
    from dmca_hpc.materials import get_material
    return build_cell(get_material(material).atoms(),
                      section_with_defaults({"basis": basis, "pseudo": pseudo}))


def block_of_lines(Qv, n_min: int, rng):
    """Whole lines of constant (Q_y, Q_z) of ``Qv`` nearest a random point of the
    (y, z) disc at 0.6 of its radius, and their mirrors (-Q_y, -Q_z), until at least
    ``n_min`` Q: a compact block, so few distinct Q_y, Q_z enter the 1D tables."""
    import numpy as np
    yz = np.round(Qv[:, 1:] * 1e6).astype(np.int64)
    keys, inv = np.unique(yz, axis=0, return_inverse=True)
    inv = inv.ravel()
    size = np.bincount(inv, minlength=len(keys))
    cent = keys / 1e6
    phi = rng.uniform(0, 2 * np.pi)
    r = 0.6 * np.abs(Qv[:, 1:]).max()
    target = r * np.array([np.cos(phi), np.sin(phi)])
    order = np.argsort(((cent - target) ** 2).sum(axis=1), kind="stable")
    lut = {tuple(k): i for i, k in enumerate(keys)}
    chosen, n = set(), 0
    for i in order:
        for j in {int(i), lut.get(tuple(-keys[i]), int(i))}:
            if j not in chosen:
                chosen.add(j)
                n += int(size[j])
        if n >= n_min:
            break
    return Qv[np.isin(inv, sorted(chosen))]


def least(f, repeat: int) -> tuple[float, float]:
    """(least wall s, least CPU s) of ``repeat`` calls of f."""
    w = c = math.inf
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        f()
        w = min(w, time.perf_counter() - t0)
        c = min(c, time.process_time() - c0)
    return w, c


def least_by_batch(passes, repeat: int) -> tuple[float, float]:
    """(wall s, CPU s): the sum over batches of each batch's least time over ``repeat``
    passes; ``passes()`` returns a fresh iterator whose every step does one batch.
    Per batch (a few ms), not per pass: on shared cores a short step often runs
    undisturbed, a pass of seconds seldom does."""
    bw, bc = [], []
    for _ in range(repeat):
        it = passes()
        j = 0
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                next(it)
            except StopIteration:
                break
            dw, dc = time.perf_counter() - t0, time.process_time() - c0
            if j == len(bw):
                bw.append(dw)
                bc.append(dc)
            else:
                bw[j], bc[j] = min(bw[j], dw), min(bc[j], dc)
            j += 1
    return float(sum(bw)), float(sum(bc))


def plan_counts(eng, plan, nk: int, n_q: int) -> dict:
    """Exact W_AO parts per (k, Q) of the measured set from the plan (the kernel's
    screening: pcmax * prod_d fmax_d >= eps), and the kept-pair count."""
    import numpy as np
    B = eng.basis
    pa, pb, loc = plan["pa"], plan["pb"], plan["local"]
    nc = lambda l: (l + 1) * (l + 2) // 2  # noqa: E731
    w = nc(B.l[pa]) * nc(B.l[pb])
    f, qi = plan["fmax"], plan["qidx"]
    bound = plan["pcmax"][:, None] * f[:, 0, qi[:, 0]] * f[:, 1, qi[:, 1]] * f[:, 2, qi[:, 2]]
    kept = bound >= eng.eps
    D = int(plan["nchi"])
    # images of each plan pair: its (a, b) in the engine's kept list
    fk = eng._fkeep
    key = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(eng._pa[fk], eng._pb[fk]))}
    idx = np.array([key[(int(a), int(b))] for a, b in zip(pa, pb)], np.int64)
    nimg = eng._mhi[idx] - eng._mlo[idx] + 1
    toff = plan["toff"].ravel()
    sizes = np.diff(np.r_[toff, len(plan["tre"])]).reshape(-1, 3)
    n_rep = qi.shape[0]
    return {"products": float(D * (w[:, None] * kept)[~loc].sum()) / n_q,
            "elements": float(eng.nao_cart ** 2) * n_rep / n_q,
            "tables": float((sizes * nimg).sum()) / (nk * n_q),
            "kept_pairs": int(kept.sum()), "n_rep": int(n_rep), "D": D,
            "n_qd": [int(len(np.unique(qi[:, d]))) for d in range(3)]}


def measure(case, n_q: int, repeat: int, seed: int = 0) -> list[dict]:
    """Timings and counts of one case (one row per valence count)."""
    import numpy as np
    from dmca_hpc.electronic import symmetry
    from dmca_hpc.electronic.ae_overlap import AnalyticEngine, q_plus_g
    from dmca_hpc.electronic.kernels import bin_batch, q_bins
    label, material, basis, pseudo, iq, nvals, ncond = case
    cell = make_cell(material, basis, pseudo)
    eng = AnalyticEngine(cell, precision=1e-8)
    kall = cell.get_abs_kpts(symmetry.mesh_frac(KMESH))
    rots = symmetry.mesh_rotations(
        symmetry.reciprocal_rotations(symmetry.atoms_from_cell(cell))[0], KMESH)
    # the little-group set (Engine.unit_kset), or every k as the production runs
    # before the reduction (and use_symmetry: false) have it
    ks = np.arange(len(kall)) if label.endswith("all k") else symmetry.pair_kset(rots, KMESH, iq)[0]
    kpts = kall[ks]
    rng = np.random.default_rng(seed)
    Qall, _ = q_plus_g(cell, kall[iq], Q_MAX)
    Qv = block_of_lines(Qall, n_q, rng)
    nk, nc, nao = len(kpts), eng.nao_cart, eng.nao
    batch = int(max(1, min(64, (256 * 2 ** 20) // (nk * nc * nc * 16))))
    pm = eng.conjugate_partners(kpts, Qv)
    rep = np.arange(len(Qv)) if pm is None else pm[0]
    if eng.partner_kpoints(kpts, Qv) is None:
        raise RuntimeError(f"{label}: the k set misses partners -k-q")
    box = {}
    # compile / load the kernels
    eng._plan_factorized(kpts[:2], Qv[:4])
    # the unit's tables: the plan of the whole sphere (built once per unit, so its share
    # per (k, Q) is the whole sphere's, not the block's)
    pm_all = eng.conjugate_partners(kpts, Qall)
    rep_all = np.arange(len(Qall)) if pm_all is None else pm_all[0]

    def plan_all():
        box["plan"] = eng._plan_factorized(kpts, Qall[rep_all])

    t_plan_all = least(plan_all, min(repeat, 3))
    tables_all = plan_counts(eng, box["plan"], nk, len(Qall))["tables"]
    plan_gb = eng.last_plan_bytes / 1e9
    del box["plan"]
    # the block's plan, built once: the timings below leave it out (a copy with the
    # unsorted Q order for every pass, as _rep_batches expects)
    P = eng._plan_factorized(kpts, Qv[rep])
    qidx0 = P["qidx"].copy()
    cnt = plan_counts(eng, P, nk, len(Qv))
    eng._plan_factorized = lambda _k, _q: dict(P, qidx=qidx0.copy())
    kept_kernel = [0]
    buf = np.zeros((nk, nc, batch, nc), np.complex128)

    def ev():
        kept_kernel[0] = 0
        for s0 in range(0, len(rep), batch):
            s1 = min(s0 + batch, len(rep))
            S = np.zeros((nk, nc, s1 - s0, nc), np.complex128) if s1 - s0 != batch else buf
            S[...] = 0.0
            kept_kernel[0] += eng._eval_plan(Ps, slice(s0, s1), S)
            yield

    Ps = dict(P)
    qi = P["qidx"]
    Ps["qidx"] = np.ascontiguousarray(qi[np.lexsort((qi[:, 0], qi[:, 2], qi[:, 1]))])
    t_eval = least_by_batch(ev, repeat)
    if cnt["kept_pairs"] != kept_kernel[0]:
        raise RuntimeError(f"{label}: counted {cnt['kept_pairs']} kept pairs, "
                           f"the kernel {kept_kernel[0]}")
    rows = []
    table = np.zeros((1000, 500))
    wk = np.full(nk, 1.0 / nk)
    for nval in nvals:
        ck = rng.standard_normal((nk, nao, nval)) + 1j * rng.standard_normal((nk, nao, nval))
        ckq = rng.standard_normal((nk, nao, ncond)) + 1j * rng.standard_normal((nk, nao, ncond))
        eb = rng.integers(-1, 500, (nk, nval, ncond)).astype(np.int64)

        def full():
            for idx, M in eng.iter_matrix_elements(kpts, Qv, ck, ckq, batch=batch):
                sel, qb = q_bins(np.linalg.norm(Qv[idx], axis=1), 0.02, 1000)
                bin_batch(table, M, sel, qb, eb, wk)
                yield

        for _ in full():  # warm (bin kernel, BLAS)
            pass
        t_full = least_by_batch(full, repeat)
        nkq = nk * len(Qv)
        nkq_all = nk * len(Qall)
        w_mo = nc * nc * nval + nc * nval * ncond

        def per_kq(i):
            # a unit of the whole sphere: its tables once, then per (k, Q) the block's
            # AO matrices, MO transform and binning
            return {"plan_sphere": t_plan_all[i] / nkq_all * 1e6, "eval": t_eval[i] / nkq * 1e6,
                    "mo_and_bin": (t_full[i] - t_eval[i]) / nkq * 1e6,
                    "block_without_plan": t_full[i] / nkq * 1e6,
                    "unit": (t_plan_all[i] / nkq_all + t_full[i] / nkq) * 1e6}

        row = {"label": label, "material": material, "basis": basis, "pseudo": pseudo,
               "iq": int(iq), "nk": int(nk), "n_q": int(len(Qv)), "n_q_sphere": int(len(Qall)),
               "conjugate": pm is not None, "batch": batch, "nao_cart": int(nc),
               "nval": int(nval), "ncond": int(ncond), **cnt, "tables_block": cnt["tables"],
               "plan_block_note": "not timed: built once, left out",
               "tables": tables_all, "plan_sphere_gb": plan_gb,
               "w_ao": cnt["products"] + cnt["elements"] + tables_all, "w_mo": int(w_mo),
               "cpu_us_per_kQ": per_kq(1), "wall_us_per_kQ": per_kq(0)}
        rows.append(row)
        c = row["cpu_us_per_kQ"]
        print(f"{label} nval {nval}: nk {nk} nQ {len(Qv)} of {len(Qall)} W_AO {row['w_ao']:.0f} "
              f"(products {cnt['products']:.0f}, elements {cnt['elements']:.0f}, tables "
              f"{tables_all:.0f}) W_MO {w_mo}: cpu us/(k,Q) tables {c['plan_sphere']:.2f} AO "
              f"{c['eval']:.2f} MO+bin {c['mo_and_bin']:.2f} unit {c['unit']:.2f}", flush=True)
    return rows


def fit(rows: list[dict]) -> dict:
    """a, b [s per count] of t_full = a W_AO + b W_MO (relative least squares) and
    each row's model / measured; also the AO-only fit of plan + eval on the three
    W_AO parts separately (how close their per-count costs are)."""
    import numpy as np
    t = np.array([r["cpu_us_per_kQ"]["unit"] for r in rows]) * 1e-6
    X = np.array([[r["w_ao"], r["w_mo"]] for r in rows], float)
    coef, *_ = np.linalg.lstsq(X / t[:, None], np.ones(len(t)), rcond=None)
    ratio = X @ coef / t
    tao = np.array([r["cpu_us_per_kQ"]["plan_sphere"] + r["cpu_us_per_kQ"]["eval"]
                    for r in rows]) * 1e-6
    Xa = np.array([[r["products"], r["elements"], r["tables"]] for r in rows], float)
    ca, *_ = np.linalg.lstsq(Xa / tao[:, None], np.ones(len(tao)), rcond=None)
    return {"a_s": float(coef[0]), "b_s": float(coef[1]),
            "model_over_measured": {f"{r['label']} nval {r['nval']}": float(x)
                                    for r, x in zip(rows, ratio)},
            "max_abs_rel_residual": float(np.abs(ratio - 1).max()),
            "rms_rel_residual": float(np.sqrt(((ratio - 1) ** 2).mean())),
            "ao_parts_s_per_count": {"products": float(ca[0]), "elements": float(ca[1]),
                                     "tables": float(ca[2])}}


def proxy_check(cases) -> list[dict]:
    """analytic_ao_work's products against the kernel's screening on the whole
    sphere |Q| <= Q_MAX (k set {0, -q}: fmax over 2 k instead of the unit's)."""
    import numpy as np
    from dmca_hpc.electronic import symmetry
    from dmca_hpc.electronic.ae_overlap import AnalyticEngine, q_plus_g
    from dmca_hpc.electronic.formfactor import analytic_ao_work
    out, seen = [], set()
    for label, material, basis, pseudo, iq, _nv, _nc in cases:
        if (material, basis) in seen:
            continue
        seen.add((material, basis))
        cell = make_cell(material, basis, pseudo)
        eng = AnalyticEngine(cell, precision=1e-8)
        q = cell.get_abs_kpts(symmetry.mesh_frac(KMESH))[36]
        Qv, _ = q_plus_g(cell, q, Q_MAX)
        kp = np.stack([np.zeros(3), -q])
        plan = eng._plan_factorized(kp, Qv)
        exact = plan_counts(eng, plan, 2, len(Qv))
        model = analytic_ao_work(eng, Q_MAX)
        out.append({"case": f"{material} {basis}", "n_q": int(len(Qv)),
                    "products_exact": exact["products"], "products_model": model["products"],
                    "ratio": model["products"] / exact["products"],
                    "n_qd_exact": exact["n_qd"], "n_qd_model": model["n_qd"]})
        print(f"proxy {material} {basis}: products model {model['products']:.0f} exact "
              f"{exact['products']:.0f} ({model['products'] / exact['products']:.3f}), n_Qd "
              f"{exact['n_qd']} vs {[round(x, 1) for x in model['n_qd']]}", flush=True)
    return out


def production(run_dir: Path, a: float, b: float) -> dict:
    """Per-unit formfactor times of a run's telemetry against the old and the new
    model (the records' k count per unit, the bands file's sizes)."""
    import yaml
    from dmca_hpc.electronic.ae_overlap import AnalyticEngine, q_plus_g
    from dmca_hpc.electronic.bands import load_bands
    from dmca_hpc.electronic.formfactor import (analytic_ao_work, estimate_formfactor, settings,
                                                table_shape, unit_conjugate)
    job = yaml.safe_load((run_dir / "job.yaml").read_text())
    mat = job["materials"][0]
    s = settings(job.get("formfactor"))
    bd = load_bands(run_dir / mat / "bands" / "bands.h5")
    cell = bd.cell()
    ana = AnalyticEngine(cell, precision=float(s["precision"]))
    nq, _ne = table_shape(s)
    qmax = nq * s["dq"]
    work = analytic_ao_work(ana, qmax)
    nc = ana.nao_cart
    nocc, ncond = bd.nocc, bd.nbands - bd.nocc
    w_mo = nc * nc * nocc + nc * nocc * ncond
    t0, n0, v0, c0 = OLD_REF
    old = t0 * w_mo / (n0 * n0 * v0 + n0 * v0 * c0)
    conj = dict(zip([int(i) for i in bd.ibz_index], unit_conjugate(cell, bd.kmesh)))
    recs = []
    for path in sorted((run_dir / "telemetry").glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            h = r["hpc"]
            if h.get("stage") == "formfactor" and h.get("status") == "ok":
                recs.append(r)
    units = []
    for r in recs:
        h, ph = r["hpc"], r.get("physics", {})
        iq = int(h["unit"].split(":")[0][1:])
        nk = int(ph["kpts"])
        n_q = len(q_plus_g(cell, bd.kpts[iq], qmax)[0])
        f = 0.5 if conj[iq] else 1.0
        new = a * (f * (work["products"] + work["elements"]) + work["tables"]) + b * w_mo
        units.append({"unit": h["unit"], "rank": h["rank"], "nk": nk, "n_q": n_q,
                      "conjugate": conj[iq], "wall_s": h["wall_seconds"], "cpu_s": h["cpu_seconds"],
                      "old_s": old * nk * n_q, "new_s": new * nk * n_q})
    tot = {k: float(sum(u[k] for u in units)) for k in ("wall_s", "cpu_s", "old_s", "new_s")}
    # what the preflight says now for this job (little-group k sets, the module's constants)
    est = estimate_formfactor(cell, s, bd.kmesh, bd.nbands, bd.nocc, len(bd.ibz_index))
    return {"run": str(run_dir), "material": mat, "basis": job["dft"]["basis"], "units": len(units),
            "nocc": nocc, "ncond": ncond, "nao_cart": nc, "w_mo_nocc": w_mo, "work": work,
            "per_unit": units, "totals": tot,
            "estimate_formfactor_now": {"time_s": est["time_s"], "unit_time_s": est["unit_time_s"],
                                        "units": est["units"],
                                        "note": "little-group k sets, module constants"},
            "ratio_old_over_wall": tot["old_s"] / tot["wall_s"],
            "ratio_new_over_wall": tot["new_s"] / tot["wall_s"],
            "ratio_old_over_cpu": tot["old_s"] / tot["cpu_s"],
            "ratio_new_over_cpu": tot["new_s"] / tot["cpu_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "analytic_time_fit.json"))
    ap.add_argument("--repeat", type=int, default=5, help="calls per timing (the least counts)")
    ap.add_argument("--n-q", type=int, default=1200, help="Q per case (whole lines)")
    ap.add_argument("--only", nargs="*", default=None, help="case labels to run")
    ap.add_argument("--telemetry", nargs="*", default=None,
                    help="run directories with job.yaml, telemetry/ and the bands file")
    ap.add_argument("--rows", default=None,
                    help="an earlier output: refit and recheck its measured rows, no timing")
    args = ap.parse_args(argv)
    for v in THREAD_VARS:
        if os.environ.get(v) != "1":
            print(f"warning: {v} is not 1: BLAS/numba threads change the timings", file=sys.stderr)
    warnings.simplefilter("ignore")
    cases = [c for c in CASES if args.only is None or c[0] in args.only]
    res = {"model": "t per (k, Q) = a W_AO + b W_MO; see the script's docstring",
           "kmesh": list(KMESH), "q_max_ame": Q_MAX, "precision": 1e-8, "repeat": args.repeat,
           "n_q_target": args.n_q, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
           "threads": {v: os.environ.get(v) for v in THREAD_VARS},
           "units": {"cpu_us_per_kQ": "CPU microseconds per (k, Q)", "a_s": "s per W_AO count",
                     "b_s": "s per W_MO complex multiply-add", "wall_s": "s", "cpu_s": "s"}}
    if args.rows:
        prev = json.loads(Path(args.rows).read_text())
        rows = prev["rows"]
        for k in ("repeat", "n_q_target", "loadavg_start", "threads", "cpus"):
            res[k] = prev.get(k)
        res["rows_from"] = args.rows
    else:
        rows = []
        for c in cases:
            rows.extend(measure(c, args.n_q, args.repeat))
    res["rows"] = rows
    res["fit"] = fit(rows)
    a, b = res["fit"]["a_s"], res["fit"]["b_s"]
    print(f"fit: a = {a * 1e9:.3f} ns per W_AO count, b = {b * 1e9:.3f} ns per W_MO count, "
          f"max |model/measured - 1| = {res['fit']['max_abs_rel_residual']:.3f}", flush=True)
    res["proxy"] = proxy_check(cases)
    dirs = args.telemetry
    if dirs is None:
        dirs = [d for d in ("/work/prod/c_ae", "/work/prod/ge_ae") if Path(d, "telemetry").is_dir()]
    res["production"] = []
    for d in dirs:
        p = production(Path(d), a, b)
        res["production"].append(p)
        print(f"production {p['material']} ({d}): {p['units']} units, measured wall "
              f"{p['totals']['wall_s']:.0f} s, cpu {p['totals']['cpu_s']:.0f} s; old model "
              f"{p['totals']['old_s']:.0f} s (x{p['ratio_old_over_wall']:.2f} wall, "
              f"x{p['ratio_old_over_cpu']:.2f} cpu), new {p['totals']['new_s']:.0f} s "
              f"(x{p['ratio_new_over_wall']:.2f} wall, x{p['ratio_new_over_cpu']:.2f} cpu)",
              flush=True)
    res["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
