"""Benchmark of the analytic all-electron matrix-element route (issue 14), one command:

    .venv/bin/python benchmarks/bench_ae_overlap.py [--out FILE] [--ref-q N] [--ref-k N]

Fixed case (QCDark v1's own, shared/design/allelectron.md): Si (diamond, a =
5.43 A, 2 atoms), all-electron def2-svp (36 spherical / 38 Cartesian AOs, s p d),
Gamma-centred 2x2x2 k mesh, every Q = q + G with |Q| <= 10 alpha m_e, precision
1e-8 for both routes (pyscf: ``cell.precision``; ours: ``precision``).  In one
run, one thread per route (OMP_NUM_THREADS = NUMBA_NUM_THREADS = 1 unless
``--threads``), it measures:

1. ours, all 64 k-pairs (8 q classes x 8 k): the AO build alone (the kernel;
   of each +-Q pair one is built, the other is its conjugate), the AO
   matrices materialized for every Q in the [k, Q, mu, nu] layout, and the
   MO matrix elements with every band of the basis (14 occupied x 22
   conduction, the form-factor use; 36 x 36; and the 4 valence bands a 50 eV
   table reaches x 22), per (k, Q) and per k-pair (core-seconds, the table
   build included);
2. pyscf's ``ft_aopair_kpts`` on the same Q sets for ``--ref-q`` q classes:
   (a) one call per k (``kptjs=[k]``, how ``matrix_elements.ft_aopair_bloch``
   uses it) for ``--ref-k`` k, (b) one call for all 8 k (``kptjs=kpts``,
   pyscf's best use: the lattice sum is shared by the k points), plus the same
   MO transform applied to its AO matrices;
3. the agreement of the two routes at this precision (max |diff| / max |S|),
   and against pyscf at precision 1e-12 on a Q sample;
4. the engine's memory bound and the measured peak RSS growth.

Ratios are measured in the same run; results go to --out (JSON, default
benchmarks/ae_overlap_results.json) and stdout.  Band coefficients are
random (orthonormal columns per k): timing does not depend on their values.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASE = {"material": "Si", "structure": "diamond", "a_angstrom": 5.43, "basis": "def2-svp",
        "pseudo": None, "kmesh": [2, 2, 2], "q_max_ame": 10.0, "precision": 1e-8,
        "qcdark_v1_core_s_per_kpair": 1155.0, "qcdark_v1_Q_per_kpair": 3380}


def make_cell(precision: float):
    import numpy as np
    from pyscf.pbc import gto
    h = CASE["a_angstrom"] / 2
    cell = gto.Cell()
    cell.atom = f"Si 0 0 0; Si {h / 2} {h / 2} {h / 2}"
    cell.a = np.array([[0, h, h], [h, 0, h], [h, h, 0]])
    cell.basis = CASE["basis"]
    cell.pseudo = None
    cell.precision = precision
    cell.verbose = 0
    cell.build()
    return cell


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def mo_transform(S, Ck, Ckqh):
    """[nQ, nb', nb] = Ckqh @ S[Q] @ Ck for spherical S [nQ, nao, nao] (the same
    two-GEMM scheme as AnalyticEngine.matrix_elements)."""
    nq, n, _ = S.shape
    nb, nbp = Ck.shape[1], Ckqh.shape[0]
    tmp = (S.reshape(nq * n, n) @ Ck).reshape(nq, n, nb).transpose(1, 0, 2).reshape(n, nq * nb)
    return (Ckqh @ tmp).reshape(nbp, nq, nb).transpose(1, 0, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "ae_overlap_results.json"))
    ap.add_argument("--ref-q", type=int, default=2, help="q classes timed with ft_aopair_kpts")
    ap.add_argument("--ref-k", type=int, default=2,
                    help="k per q class for the one-k-per-call mode")
    ap.add_argument("--threads", type=int, default=1, help="threads of both routes (pyscf OpenMP)")
    ap.add_argument("--batch", type=int, default=32, help="Q per batch of our route")
    args = ap.parse_args(argv)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[v] = str(args.threads)
    import numpy as np
    from pyscf import lib
    from pyscf.pbc.df import ft_ao
    from dmca_hpc.electronic.ae_overlap import AnalyticEngine, q_plus_g
    lib.num_threads(args.threads)

    res = {"case": dict(CASE), "threads": args.threads, "cpus": os.cpu_count(),
           "loadavg_start": os.getloadavg()}
    cell = make_cell(CASE["precision"])
    kpts = cell.make_kpts(CASE["kmesh"])
    nk, nao = len(kpts), cell.nao
    nocc = cell.nelectron // 2
    ncond = nao - nocc
    res["case"].update(nao=nao, nao_cart=int(cell.nao_cart()), nocc=nocc, ncond=ncond, nk=nk)
    rng = np.random.default_rng(0)
    C = np.linalg.qr(rng.normal(size=(nk, nao, nao)) + 1j * rng.normal(size=(nk, nao, nao)))[0]
    a = cell.lattice_vectors()

    def index_of(kv):
        f = (kpts - kv) @ a.T / (2 * np.pi)
        return int(np.nonzero(np.abs(f - np.round(f)).max(axis=1) < 1e-6)[0][0])

    rss0 = rss_mb()
    t0 = time.perf_counter()
    eng = AnalyticEngine(cell, precision=CASE["precision"])
    # warm up: numba compile / cache load
    Qw, _ = q_plus_g(cell, kpts[1] - kpts[0], 2.0)
    eng.matrix_elements(kpts, Qw, C[:, :, :nocc], C[:, :, nocc:])
    res["engine_setup_and_warmup_s"] = time.perf_counter() - t0
    rss1 = rss_mb()
    res["lattice_sum"] = eng.lattice_sum
    print(f"Si def2-svp: nao {nao} (cart {eng.nao_cart}), nocc {nocc}, ncond {ncond}, "
          f"{nk} k, route {eng.lattice_sum}", flush=True)

    # ---- ours: every q class, all k ------------------------------------
    classes = []
    tot = {"ao": 0.0, "aom": 0.0, "mo_vc": 0.0, "mo_v4": 0.0, "mo_all": 0.0, "nQk": 0}
    for iq in range(nk):
        q = kpts[iq] - kpts[0]
        Qv, _ = q_plus_g(cell, q, CASE["q_max_ame"])
        kq = [index_of(kpts[k] + q) for k in range(nk)]
        Ckq = C[kq]
        # AO build: the kernel (one Q of each +-Q pair; the other is its conjugate)
        c0 = time.process_time()
        for _b in eng._rep_batches(kpts, Qv, args.batch):
            pass
        t_ao = time.process_time() - c0
        # AO matrices materialized for every Q in the [k, Q, mu, nu] layout
        c0 = time.process_time()
        for _idx, _S in eng.ao_cart_batches(kpts, Qv, args.batch):
            pass
        t_aom = time.process_time() - c0
        # MO matrix elements streamed by batches (what a binning loop consumes)
        c0 = time.process_time()
        for _idx, _M in eng.iter_matrix_elements(kpts, Qv, C[:, :, :nocc], Ckq[:, :, nocc:],
                                                  args.batch):
            pass
        t_vc = time.process_time() - c0
        # only the bands a 50 eV table can reach: Si 3s3p (the 10 core bands 1s 2s 2p
        # lie > 90 eV below the gap)
        c0 = time.process_time()
        for _idx, _M in eng.iter_matrix_elements(kpts, Qv, C[:, :, nocc - 4:nocc],
                                                  Ckq[:, :, nocc:], args.batch):
            pass
        t_v4 = time.process_time() - c0
        c0 = time.process_time()
        for _idx, _M in eng.iter_matrix_elements(kpts, Qv, C, Ckq, args.batch):
            pass
        t_all = time.process_time() - c0
        classes.append({"q": q.tolist(), "nQ": len(Qv), "ao_build_s": t_ao,
                        "ao_materialized_s": t_aom, "mo_occ_x_cond_s": t_vc,
                        "mo_top4_occ_x_cond_s": t_v4,
                        "mo_all_x_all_s": t_all, "conjugate_pairs": eng.conjugate_partners(kpts, Qv)
                        is not None})
        tot["ao"] += t_ao
        tot["aom"] += t_aom
        tot["mo_vc"] += t_vc
        tot["mo_v4"] += t_v4
        tot["mo_all"] += t_all
        tot["nQk"] += len(Qv) * nk
        print(f"  q class {iq}: {len(Qv)} Q, AO build {t_ao:.2f} s (materialized {t_aom:.2f} s), "
              f"MO occ x cond {t_vc:.2f} s (top 4 occ {t_v4:.2f} s), MO all x all {t_all:.2f} s "
              "(8 k each)", flush=True)
    npairs = nk * nk
    ours = {"per_q_class": classes, "Q_per_kpair_mean": tot["nQk"] / npairs,
            "ao_us_per_kQ": 1e6 * tot["ao"] / tot["nQk"],
            "ao_materialized_us_per_kQ": 1e6 * tot["aom"] / tot["nQk"],
            "mo_occ_x_cond_us_per_kQ": 1e6 * tot["mo_vc"] / tot["nQk"],
            "mo_top4_occ_x_cond_us_per_kQ": 1e6 * tot["mo_v4"] / tot["nQk"],
            "mo_all_x_all_us_per_kQ": 1e6 * tot["mo_all"] / tot["nQk"],
            "core_s_per_kpair_mo_occ_x_cond": tot["mo_vc"] / npairs,
            "core_s_per_kpair_mo_top4_occ_x_cond": tot["mo_v4"] / npairs,
            "core_s_per_kpair_mo_all_x_all": tot["mo_all"] / npairs,
            "core_s_all_64_kpairs_mo_occ_x_cond": tot["mo_vc"]}
    res["ours"] = ours
    nq_max = max(c["nQ"] for c in classes)
    res["memory"] = {"engine_bound_mb": eng.memory_bytes(nk, args.batch, nq_max, nocc, ncond)
                     / 2 ** 20,
                     "tables_last_q_class_mb": eng.last_plan_bytes / 2 ** 20,
                     "rss_after_imports_mb": rss0, "rss_after_warmup_mb": rss1,
                     "peak_rss_mb": rss_mb(), "peak_rss_growth_after_warmup_mb": rss_mb() - rss1}
    print("ours:", json.dumps({k: v for k, v in ours.items() if k != "per_q_class"}), flush=True)

    # ---- pyscf ft_aopair_kpts on the same Q sets -------------------------
    ref = {"per_k_call_s": 0.0, "per_k_call_nQk": 0, "all_k_call_s": 0.0, "all_k_call_nQk": 0,
           "mo_s": 0.0, "mo_nQk": 0}
    acc = {"max_abs_diff": 0.0, "max_abs": 0.0}
    chunk = 512
    for iq in range(min(args.ref_q, nk)):
        q = kpts[iq] - kpts[0]
        Qv, _ = q_plus_g(cell, q, CASE["q_max_ame"])
        kq = [index_of(kpts[k] + q) for k in range(nk)]
        for s0 in range(0, len(Qv), chunk):
            Qc = Qv[s0:s0 + chunk]
            c0 = time.process_time()
            F = np.asarray(ft_ao.ft_aopair_kpts(cell, -(Qc - q), q=-q, kptjs=kpts))
            ref["all_k_call_s"] += time.process_time() - c0
            ref["all_k_call_nQk"] += len(Qc) * nk
            for k in range(min(args.ref_k, nk)):
                c0 = time.process_time()
                F1 = np.asarray(ft_ao.ft_aopair_kpts(cell, -(Qc - q), q=-q, kptjs=kpts[k:k + 1]))
                ref["per_k_call_s"] += time.process_time() - c0
                ref["per_k_call_nQk"] += len(Qc)
                assert np.abs(F1[0] - F[k]).max() < 1e-10
            c0 = time.process_time()
            for k in range(nk):
                mo_transform(F[k], C[k][:, :nocc], C[kq[k]][:, nocc:].conj().T)
            ref["mo_s"] += time.process_time() - c0
            ref["mo_nQk"] += len(Qc) * nk
            S = eng.ao_matrices(kpts, Qc)
            acc["max_abs_diff"] = max(acc["max_abs_diff"], float(np.abs(S - F).max()))
            acc["max_abs"] = max(acc["max_abs"], float(np.abs(F).max()))
        print(f"  pyscf q class {iq}: {len(Qv)} Q done", flush=True)
    pys = {"per_k_call_us_per_kQ": 1e6 * ref["per_k_call_s"] / ref["per_k_call_nQk"],
           "all_k_call_us_per_kQ": 1e6 * ref["all_k_call_s"] / ref["all_k_call_nQk"],
           "mo_transform_occ_x_cond_us_per_kQ": 1e6 * ref["mo_s"] / ref["mo_nQk"],
           "q_classes": min(args.ref_q, nk), "k_per_class_per_k_mode": min(args.ref_k, nk)}
    res["pyscf_ft_aopair_kpts"] = pys
    res["agreement_same_precision"] = {**acc, "max_rel": acc["max_abs_diff"] / acc["max_abs"]}

    # ---- accuracy against a tight reference (precision 1e-12) -----------
    tight = make_cell(1e-12)
    q = kpts[5] - kpts[0]
    Qv, _ = q_plus_g(cell, q, 20.0)
    pick = np.r_[0:60, np.linspace(60, len(Qv) - 1, 60).astype(int)]
    Qs = Qv[pick]
    F = np.asarray(ft_ao.ft_aopair_kpts(tight, -(Qs - q), q=-q, kptjs=kpts))
    tight_acc = {}
    for prec in (1e-6, 1e-8, 1e-10):
        S = AnalyticEngine(cell, precision=prec).ao_matrices(kpts, Qs)
        tight_acc[f"{prec:g}"] = {"max_abs_diff": float(np.abs(S - F).max()),
                                  "max_rel": float(np.abs(S - F).max() / np.abs(F).max())}
    res["accuracy_vs_pyscf_1e-12"] = {"nQ": len(Qs), "Q_max_in_sample": float(
        np.linalg.norm(Qs, axis=1).max()), "by_precision": tight_acc}

    # ---- ratios ----------------------------------------------------------
    o, p = ours, pys
    mo_ref_per_k = p["per_k_call_us_per_kQ"] + p["mo_transform_occ_x_cond_us_per_kQ"]
    mo_ref_all_k = p["all_k_call_us_per_kQ"] + p["mo_transform_occ_x_cond_us_per_kQ"]
    res["ratios"] = {
        "ao_vs_ft_aopair_one_k_per_call": p["per_k_call_us_per_kQ"] / o["ao_us_per_kQ"],
        "ao_vs_ft_aopair_all_k_per_call": p["all_k_call_us_per_kQ"] / o["ao_us_per_kQ"],
        "ao_materialized_vs_ft_aopair_one_k_per_call": p["per_k_call_us_per_kQ"]
        / o["ao_materialized_us_per_kQ"],
        "ao_materialized_vs_ft_aopair_all_k_per_call": p["all_k_call_us_per_kQ"]
        / o["ao_materialized_us_per_kQ"],
        "mo_vs_ft_aopair_one_k_per_call_plus_mo": mo_ref_per_k / o["mo_occ_x_cond_us_per_kQ"],
        "mo_vs_ft_aopair_all_k_per_call_plus_mo": mo_ref_all_k / o["mo_occ_x_cond_us_per_kQ"],
        "qcdark_v1_per_kpair_vs_ours": CASE["qcdark_v1_core_s_per_kpair"]
        / o["core_s_per_kpair_mo_occ_x_cond"],
        "targets": {"per_kQ_vs_ft_aopair": 30, "per_kpair_vs_qcdark_v1": 3000,
                    "core_s_per_kpair_max": 0.385},
    }
    res["loadavg_end"] = os.getloadavg()
    print("pyscf:", json.dumps(pys), flush=True)
    print("agreement (same precision):", json.dumps(res["agreement_same_precision"]))
    print("accuracy vs pyscf 1e-12:", json.dumps(res["accuracy_vs_pyscf_1e-12"]))
    print("memory:", json.dumps(res["memory"]))
    print("ratios:", json.dumps(res["ratios"], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
