"""Causal effect of an intervention on a telemetry figure, from the records themselves.

``dmca-hpc causal TELEMETRY... --treatment KEY --outcome KEY [--adjust KEY...]``
(:mod:`dmca_hpc.cli.causal`) answers "what did changing X do to Y": X is a
DMCA intervention label or a job setting read from the records (basis, k mesh,
rank count, ...), Y is cost, latency, throughput or a physics figure.

Records
    Exactly those ``dmca-hpc collect`` counts, read through the collector
    (:func:`dmca_hpc.monitoring.collector.iter_records`): no plaintext line
    of an encrypted file (none at all with a key or ``require_encrypted``),
    each stream's seq once (a replayed or copied line would otherwise weigh
    twice in the fit), no invalid line.  :func:`read_records` says how many
    lines were refused and why.

Variables (keys)
    Every record is flattened: the core fields (``intervention``, ``step``,
    ``infra_cost_usd``, ``qps``, ``latency_p95_ms``, ...), ``hpc.<field>``,
    ``physics.<field>`` and ``x_<name>`` extension fields.  Derived keys:
    ``intervention.<k>`` for every ``k=v`` part of an intervention label such
    as ``"basis=gth-szv,kmesh=4x4x4,ranks=2"`` (the campaign convention);
    ``ranks`` = the rank count of the run that wrote the record: its
    ``hpc.nranks`` (the communicator size, written by the pipeline since
    that field exists) when the record carries it, else the number of
    distinct ``hpc.rank`` values among the records of its ``hpc.job_id``
    (older records; this undercounts a run whose higher ranks recorded no
    unit, e.g. stages [materials, dft], where only rank 0 records, and needs
    a job id per run); ``nkpts`` = the number of k
    points of ``physics.kpts``; ``failed`` = 1 for a failed unit, else 0.
    Aliases: ``cost`` = infra_cost_usd [USD], ``latency`` = latency_p95_ms
    [ms], ``throughput`` = qps [1/s].  A key that is not found as written is
    looked up as ``intervention.KEY``, ``physics.KEY``, ``hpc.KEY``, ``x_KEY``
    (so ``basis`` finds ``intervention.basis``).  A variable whose values are
    all numbers (or strings that parse as numbers) is numeric, else
    categorical; ``--categorical`` forces a numeric treatment to levels.

Estimate: backdoor adjustment by regression
    Under the backdoor criterion with the adjustment set Z (``--adjust``: the
    common causes of treatment and outcome, e.g. the stage or the material),
    the effect is the coefficient of the treatment in the OLS fit
        Y = a + sum_l b_l [T = l] + Z g + e         (categorical T, reference level r)
        Y = a + b T + Z g + e                       (numeric T: b per unit of T)
    with categorical Z one-hot encoded.  b_l is the average effect of level l
    against the reference (``-``/``baseline`` when present, else the most
    frequent level) under a linear, additive outcome model.  Standard errors
    are heteroskedasticity-robust HC3 (MacKinnon & White 1985:
    (X'X)^-1 X' diag(e_i^2 / (1 - h_ii)^2) X (X'X)^-1), the 95 % interval
    b +- 1.96 se; a nonparametric bootstrap (resampling records with the
    given seed) gives a second, percentile interval.  The naive estimate (the
    same fit without Z: the raw difference of means) is reported beside it,
    so confounding shows as the gap between the two.

Identifiability
    The effect is "not identifiable" from these records when the treatment
    columns cannot be separated from the adjustment columns: the part of the
    treatment not explained by Z (the residual of regressing each treatment
    column on the constant and Z) has less than 1e-8 of the treatment's
    variance (e.g. every basis change came with a k-mesh change and the k
    mesh is adjusted for).  The report then names the adjustment variables
    that are collinear with the treatment and gives no estimate.

Refutations (in the spirit of DoWhy's refuters)
    placebo treatment: the treatment is permuted at random (seeded) K times
        and the effect re-estimated; a real effect stands out of that null
        distribution (p = (1 + #|placebo| >= |b|) / (K + 1)).
    random common cause: an independent random covariate is added to Z; the
        estimate must not move (by more than 2 se).
    data subset: the estimate on random 80 % subsets must stay within 2 se.

Causal discovery (optional extra ``[causal]``)
    :func:`discover` runs the PC algorithm of causal-learn (Fisher-z test) on
    chosen numeric keys and returns the edges of the CPDAG; causal-learn is
    imported only there, with a message naming ``pip install 'dmca_hpc[causal]'``
    when it is missing.

All random draws come from ``numpy.random.default_rng(seed)``: a report is
deterministic for a seed.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

#: aliases of the outcome / treatment keys
ALIASES = {"cost": "infra_cost_usd", "latency": "latency_p95_ms", "throughput": "qps"}

#: prefixes tried, in order, for a key not found as written
PREFIXES = ("intervention.", "physics.", "hpc.", "x_")

#: fewest records an estimate is attempted on (and at least 3 more than fitted parameters)
MIN_RECORDS = 8

#: treatment variance not explained by Z below this fraction = not separable (collinear)
COLLINEAR_TOL = 1e-8

#: reference levels preferred for a categorical treatment (DMCA's "no intervention")
REFERENCE_LEVELS = ("-", "baseline", "none", "control")


class CausalInputError(ValueError):
    """Bad input for the analysis (unknown key, single-valued treatment, too few records)."""


# --------------------------------------------------------------------------- reading

def _kpts_label(v) -> tuple[str | None, float | None]:
    if isinstance(v, list) and v and all(isinstance(x, int) for x in v):
        return "x".join(map(str, v)), float(math.prod(v))
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v), float(v)
    return None, None


def flatten(rec: dict) -> dict:
    """One record as a flat {key: value} mapping (module docstring)."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if k in ("hpc", "physics") and isinstance(v, dict):
            for kk, vv in v.items():
                if kk == "kpts":
                    label, nk = _kpts_label(vv)
                    out[f"{k}.kpts"] = label
                    out["nkpts"] = nk
                elif not isinstance(vv, (list, dict)):
                    out[f"{k}.{kk}"] = vv
        elif not isinstance(v, (list, dict)):
            out[k] = v
    iv = rec.get("intervention")
    if isinstance(iv, str) and "=" in iv:
        for part in iv.replace(";", ",").split(","):
            kk, sep, vv = part.partition("=")
            if sep and kk.strip():
                out[f"intervention.{kk.strip()}"] = vv.strip()
    h = rec.get("hpc")
    if isinstance(h, dict):
        out["failed"] = 1.0 if h.get("status") == "failed" else 0.0
    return out


def read_records(paths: Iterable[str | os.PathLike], key: bytes | None = None,
                 require_encrypted: bool | None = None) -> tuple[list[dict], dict]:
    """Flattened records of the telemetry files, exactly those ``dmca-hpc
    collect`` counts (:func:`dmca_hpc.monitoring.collector.iter_records`:
    directories as the collector reads them, its plaintext policy with
    ``require_encrypted`` defaulting to "when a key is given", a replayed
    line used once), and ``info``: ``invalid`` (lines refused), ``unreadable``
    (``"FILE: reason"`` strings), ``refused`` (one line saying how many were
    refused and why, None when none was) and ``input`` (the reader's
    :meth:`~dmca_hpc.monitoring.collector.TelemetryReader.input_summary`).
    The records are held in memory: a causal fit needs them all."""
    from dmca_hpc.monitoring.collector import TelemetryReader, iter_records
    reader = TelemetryReader(key=key, max_list=100, require_encrypted=require_encrypted)
    rows = [flatten(rec) for rec, _f, _n in iter_records(paths, reader)]
    info = {"invalid": reader.invalid_total,
            "unreadable": [f"{u['file']}: {u['reason']}" for u in reader.unreadable],
            "refused": reader.refusal_line(), "input": reader.input_summary()}
    # ranks: the run's communicator size when recorded, else the distinct hpc.rank
    # values of the job (what older records allow; module docstring)
    per_job: dict[str, set] = {}
    for r in rows:
        if "hpc.job_id" in r:
            per_job.setdefault(r["hpc.job_id"], set()).add(r.get("hpc.rank"))
    for r in rows:
        n = r.get("hpc.nranks")
        if type(n) is int and n >= 1:  # the reader validated it; bool is no int here
            r["ranks"] = float(n)
        elif "hpc.job_id" in r:
            r["ranks"] = float(len(per_job[r["hpc.job_id"]]))
    return rows, info


def known_keys(rows: Sequence[dict]) -> list[str]:
    keys = set()
    for r in rows:
        keys.update(r)
    return sorted(keys) + sorted(ALIASES)


def resolve_key(rows: Sequence[dict], key: str, role: str) -> str:
    """The flattened key that ``key`` names (aliases, prefixes); CausalInputError listing the known keys."""
    present = set()
    for r in rows:
        present.update(r)
    for cand in (ALIASES.get(key, key), *(p + key for p in PREFIXES)):
        if cand in present:
            return cand
    shown = ", ".join(known_keys(rows)[:60]) or "(no records)"
    raise CausalInputError(f"unknown {role} key {key!r}: no record has it; known keys: {shown}")


def _as_number(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def _column(values: list, force_categorical: bool = False) -> tuple[str, list]:
    """("numeric", floats) or ("categorical", strings)."""
    nums = [_as_number(v) for v in values]
    if not force_categorical and all(x is not None for x in nums):
        return "numeric", nums
    return "categorical", [str(v) for v in values]


# --------------------------------------------------------------------------- estimation

def _ols_hc3(X, y):
    """OLS coefficients and HC3 covariance; None when X'X is singular."""
    import numpy as np
    XtX = X.T @ X
    try:
        inv = np.linalg.inv(XtX)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(inv)):
        return None
    beta = inv @ (X.T @ y)
    e = y - X @ beta
    h = np.einsum("ij,jk,ik->i", X, inv, X)
    w = (e / np.clip(1.0 - h, 1e-12, None)) ** 2
    cov = inv @ (X.T * w) @ X @ inv
    return beta, cov


def _encode(kind: str, vals: list, name: str, reference: str | None = None):
    """Design columns of one variable: numeric -> itself; categorical -> one-hot
    without the reference level.  Returns (columns (n x k), column names, levels, reference)."""
    import numpy as np
    if kind == "numeric":
        return np.asarray(vals, float)[:, None], [name], None, None
    levels = sorted(set(vals))
    if reference is None:
        reference = next((r for r in REFERENCE_LEVELS if r in levels), None)
        if reference is None:
            counts = {lv: vals.count(lv) for lv in levels}
            reference = max(levels, key=lambda lv: (counts[lv], -levels.index(lv)))
    others = [lv for lv in levels if lv != reference]
    cols = np.array([[1.0 if v == lv else 0.0 for lv in others] for v in vals]).reshape(len(vals), len(others))
    return cols, [f"{name}={lv}" for lv in others], levels, reference


class _Problem:
    """Numeric arrays of one analysis (rows with a missing variable dropped)."""

    def __init__(self, rows, treatment, outcome, adjust, categorical=False, reference=None):
        import numpy as np
        self.t_key, self.y_key = treatment, outcome
        self.z_keys = list(adjust)
        need = [treatment, outcome, *adjust]
        keep = [r for r in rows if all(r.get(k) is not None for k in need)]
        self.n_dropped = len(rows) - len(keep)
        ykind, y = _column([r[outcome] for r in keep])
        if ykind != "numeric":
            bad = next(str(r[outcome]) for r in keep if _as_number(r[outcome]) is None)
            raise CausalInputError(f"outcome {outcome!r} is not numeric (value {bad!r}); "
                                   f"choose a cost, latency, throughput or physics figure")
        self.y = np.asarray(y, float)
        self.t_kind, tv = _column([r[treatment] for r in keep], force_categorical=categorical)
        if len(set(tv)) < 2:
            raise CausalInputError(f"treatment {treatment!r} takes a single value "
                                   f"({tv[0] if tv else 'no records'!r}) in the {len(keep)} usable records: "
                                   f"nothing to compare")
        self.T, self.t_names, self.levels, self.reference = _encode(self.t_kind, tv, treatment, reference)
        self.t_raw = tv
        zc, self.z_names, self.z_groups = [], [], []
        for k in adjust:
            kind, vals = _column([r[k] for r in keep])
            c, names, _lv, _ref = _encode(kind, vals, k)
            zc.append(c)
            self.z_names += names
            self.z_groups += [k] * len(names)
        n = len(keep)
        self.Z = np.hstack(zc) if zc else np.zeros((n, 0))
        self.n = n
        p = 1 + self.T.shape[1] + self.Z.shape[1]
        if n < max(MIN_RECORDS, p + 3):
            raise CausalInputError(f"too few records: {n} usable (of {len(rows)}) for {p} fitted parameters; "
                                   f"need at least {max(MIN_RECORDS, p + 3)}")

    def design(self, T=None, Z=None, idx=None):
        import numpy as np
        T = self.T if T is None else T
        Z = self.Z if Z is None else Z
        X = np.hstack([np.ones((T.shape[0], 1)), T, Z])
        return X if idx is None else X[idx]

    def fit(self, T=None, Z=None, idx=None, y=None):
        """Treatment coefficients and their HC3 standard errors (None if singular)."""
        import numpy as np
        X = self.design(T, Z)
        y = self.y if y is None else y
        if idx is not None:
            X, y = X[idx], y[idx]
        res = _ols_hc3(X, y)
        if res is None:
            return None
        beta, cov = res
        k = self.T.shape[1]
        return beta[1:1 + k], np.sqrt(np.clip(np.diag(cov)[1:1 + k], 0, None))


def separability(prob: _Problem) -> dict:
    """Share of each treatment column's variance that Z leaves unexplained, and
    the adjustment variables collinear with the treatment (module docstring)."""
    import numpy as np
    n = prob.n
    base = np.hstack([np.ones((n, 1)), prob.Z])
    worst = math.inf
    for j in range(prob.T.shape[1]):
        t = prob.T[:, j]
        var = float(np.var(t))
        coef, *_ = np.linalg.lstsq(base, t, rcond=None)
        r = t - base @ coef
        share = float(np.var(r)) / var if var > 0 else 0.0
        worst = min(worst, share)
    culprits = []
    if worst < COLLINEAR_TOL:
        for k in prob.z_keys:
            cols = [i for i, g in enumerate(prob.z_groups) if g == k]
            sub = np.hstack([np.ones((n, 1)), prob.Z[:, cols]])
            for j in range(prob.T.shape[1]):
                t = prob.T[:, j]
                coef, *_ = np.linalg.lstsq(sub, t, rcond=None)
                if np.var(t - sub @ coef) < COLLINEAR_TOL * max(np.var(t), 1e-300):
                    culprits.append(k)
                    break
        if not culprits:
            culprits = list(prob.z_keys)
    return {"unexplained_treatment_variance_share": worst if math.isfinite(worst) else 1.0,
            "collinear_with": culprits}


def estimate(rows: Sequence[dict], treatment: str, outcome: str, adjust: Sequence[str] = (),
             seed: int = 0, n_boot: int = 500, n_refute: int = 50, categorical: bool = False,
             reference: str | None = None) -> dict:
    """Backdoor-adjusted effect of ``treatment`` on ``outcome`` (module docstring).

    Args:
        rows: flattened records (:func:`read_records`).
        treatment, outcome, adjust: keys (aliases and prefixes resolved).
        seed: seed of the bootstrap and the refutations.
        n_boot: bootstrap resamples.
        n_refute: simulations per refutation.
        categorical: treat a numeric treatment as levels.
        reference: reference level of a categorical treatment.

    Returns:
        The report dict; ``identifiable`` False (and no estimate) when the
        treatment cannot be separated from the adjustment set.
    Raises:
        CausalInputError: unknown key, single-valued treatment, too few records.
    """
    import numpy as np
    t_key = resolve_key(rows, treatment, "treatment")
    y_key = resolve_key(rows, outcome, "outcome")
    z_keys = [resolve_key(rows, k, "adjustment") for k in adjust]
    if t_key in z_keys or y_key in z_keys or t_key == y_key:
        raise CausalInputError(f"treatment {t_key!r}, outcome {y_key!r} and adjustment {z_keys} must be "
                               f"different keys")
    prob = _Problem(rows, t_key, y_key, z_keys, categorical=categorical, reference=reference)
    rep: dict[str, Any] = {
        "treatment": t_key, "outcome": y_key, "adjust": z_keys, "n": prob.n, "n_dropped": prob.n_dropped,
        "treatment_kind": prob.t_kind, "levels": prob.levels, "reference": prob.reference,
        "method": "backdoor adjustment: OLS with HC3 robust errors, percentile bootstrap",
        "seed": seed, "n_boot": n_boot, "n_refute": n_refute,
    }
    sep = separability(prob)
    rep["separability"] = sep
    if sep["unexplained_treatment_variance_share"] < COLLINEAR_TOL:
        rep["identifiable"] = False
        rep["reason"] = (f"not identifiable: treatment {t_key!r} cannot be separated from adjustment "
                         f"variable(s) {', '.join(sep['collinear_with'])} (collinear in these records: "
                         f"{sep['unexplained_treatment_variance_share']:.2g} of its variance is left once "
                         f"they are accounted for); vary them independently, or drop one from --adjust "
                         f"if it is not a common cause")
        rep["effects"] = []
        return rep
    rep["identifiable"] = True
    fit = prob.fit()
    if fit is None:  # pragma: no cover - excluded by the separability test above
        raise CausalInputError("the regression is singular (an adjustment variable is constant?)")
    b, se = fit
    naive = prob.fit(Z=np.zeros((prob.n, 0)))
    rng = np.random.default_rng(seed)
    # bootstrap: resample records; a resample that leaves the fit singular is redrawn-free skipped
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, prob.n, prob.n)
        f = prob.fit(idx=idx)
        if f is not None:
            boots.append(f[0])
    boots = np.array(boots) if boots else np.zeros((0, len(b)))
    from scipy import stats
    z = float(stats.norm.ppf(0.975))
    effects = []
    for j, name in enumerate(prob.t_names):
        eff = {"term": name, "estimate": float(b[j]), "se_hc3": float(se[j]),
               "ci95": [float(b[j] - z * se[j]), float(b[j] + z * se[j])],
               "p_value": float(2 * stats.norm.sf(abs(b[j]) / se[j])) if se[j] > 0 else 0.0,
               "naive_estimate": float(naive[0][j]) if naive is not None else None,
               "bootstrap_ci95": ([float(np.quantile(boots[:, j], 0.025)), float(np.quantile(boots[:, j], 0.975))]
                                  if len(boots) >= 20 else None),
               "bootstrap_used": int(len(boots))}
        if prob.t_kind == "categorical":
            lv = name.split("=", 1)[1]
            eff.update({"level": lv, "vs": prob.reference})
        else:
            eff["per"] = f"1 unit of {t_key}"
        effects.append(eff)
    rep["effects"] = effects
    rep["refutations"] = refute(prob, b, se, rng, n_refute)
    return rep


def refute(prob: _Problem, b, se, rng, n: int) -> dict:
    """Placebo treatment, random common cause and data subset (module docstring)."""
    import numpy as np
    k = len(b)
    # placebo: permute the treatment rows (breaks any T -> Y link, keeps T's distribution)
    plac = []
    for _ in range(n):
        f = prob.fit(T=prob.T[rng.permutation(prob.n)])
        if f is not None:
            plac.append(f[0])
    plac = np.array(plac).reshape(-1, k)
    # random common cause: one extra standard-normal covariate
    rcc = []
    for _ in range(n):
        extra = rng.standard_normal((prob.n, 1))
        f = prob.fit(Z=np.hstack([prob.Z, extra]))
        if f is not None:
            rcc.append(f[0])
    rcc = np.array(rcc).reshape(-1, k)
    # data subset: 80 % of the records without replacement
    m = max(int(round(0.8 * prob.n)), 1)
    sub = []
    for _ in range(n):
        f = prob.fit(idx=np.sort(rng.choice(prob.n, m, replace=False)))
        if f is not None:
            sub.append(f[0])
    sub = np.array(sub).reshape(-1, k)
    out = {"placebo_treatment": [], "random_common_cause": [], "data_subset": []}
    for j in range(k):
        bj, sj = float(b[j]), float(se[j])
        if len(plac):
            p = (1 + int(np.sum(np.abs(plac[:, j]) >= abs(bj)))) / (len(plac) + 1)
            out["placebo_treatment"].append({
                "term": prob.t_names[j], "mean_effect": float(plac[:, j].mean()), "sd_effect": float(plac[:, j].std()),
                "p_value": p, "passed": bool(p <= 0.05),
                "meaning": "effect after permuting the treatment: should be ~0; p = share of placebo "
                           "effects at least as large as the estimate"})
        for name, arr in (("random_common_cause", rcc), ("data_subset", sub)):
            if len(arr):
                shift = float(arr[:, j].mean() - bj)
                out[name].append({"term": prob.t_names[j], "mean_effect": float(arr[:, j].mean()),
                                  "sd_effect": float(arr[:, j].std()), "shift": shift,
                                  "passed": bool(abs(shift) <= 2 * sj),
                                  "meaning": "estimate should not move by more than 2 se"})
    return out


# --------------------------------------------------------------------------- discovery

CAUSAL_LEARN_HINT = "causal discovery needs causal-learn: pip install 'dmca_hpc[causal]' (or pip install causal-learn)"


def discover(rows: Sequence[dict], keys: Sequence[str], alpha: float = 0.05) -> dict:
    """PC algorithm (causal-learn, Fisher-z test at level ``alpha``) over the
    numeric ``keys``; returns {"nodes", "edges": [[a, "->" | "--", b], ...]}.
    Raises ImportError with :data:`CAUSAL_LEARN_HINT` when causal-learn is missing."""
    import numpy as np
    try:
        from causallearn.search.ConstraintBased.PC import pc
    except ImportError:
        raise ImportError(CAUSAL_LEARN_HINT) from None
    cols = [resolve_key(rows, k, "discovery") for k in keys]
    keep = [r for r in rows if all(_as_number(r.get(k)) is not None for k in cols)]
    if len(keep) < MIN_RECORDS:
        raise CausalInputError(f"too few records with numeric {', '.join(cols)} for discovery: {len(keep)}")
    data = np.array([[_as_number(r[k]) for k in cols] for r in keep])
    cg = pc(data, alpha, "fisherz", stable=True, show_progress=False, node_names=cols)
    G = cg.G.graph  # G[i, j] = -1 and G[j, i] = 1: i -> j; both -1: i -- j
    edges = []
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            a, b = G[i, j], G[j, i]
            if a == -1 and b == 1:
                edges.append([cols[i], "->", cols[j]])
            elif a == 1 and b == -1:
                edges.append([cols[j], "->", cols[i]])
            elif a == -1 and b == -1:
                edges.append([cols[i], "--", cols[j]])
            elif a == 1 and b == 1:
                edges.append([cols[i], "<->", cols[j]])
    return {"nodes": cols, "edges": edges, "alpha": alpha, "test": "fisherz", "n": len(keep)}


# --------------------------------------------------------------------------- rendering

def _g(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def render_markdown(rep: dict) -> str:
    """Markdown report of :func:`estimate` (plus ``rep["discovery"]`` when present)."""
    L = [f"# Causal effect of `{rep['treatment']}` on `{rep['outcome']}`", ""]
    L.append(f"Records used: {rep['n']} ({rep['n_dropped']} dropped for a missing variable); "
             f"adjusted for: {', '.join(f'`{k}`' for k in rep['adjust']) or 'nothing'}; "
             f"treatment {rep['treatment_kind']}"
             + (f", reference level `{rep['reference']}`" if rep.get("reference") is not None else "") + ".  ")
    L.append(f"Method: {rep['method']} (seed {rep['seed']}, {rep['n_boot']} resamples).")
    L.append("")
    if not rep["identifiable"]:
        L += ["**Not identifiable.** " + rep["reason"], ""]
    else:
        L += ["| term | estimate | HC3 se | 95 % CI | bootstrap 95 % CI | p | naive (unadjusted) |",
              "|---|---:|---:|---|---|---:|---:|"]
        for e in rep["effects"]:
            bci = e["bootstrap_ci95"]
            L.append(f"| {e['term']} | {_g(e['estimate'])} | {_g(e['se_hc3'])} | "
                     f"[{_g(e['ci95'][0])}, {_g(e['ci95'][1])}] | "
                     f"{'[' + _g(bci[0]) + ', ' + _g(bci[1]) + ']' if bci else '-'} | {_g(e['p_value'])} | "
                     f"{_g(e['naive_estimate'])} |")
        L += ["", "## Refutations", "", "| refuter | term | mean new effect | sd | p / shift | passed |",
              "|---|---|---:|---:|---:|---|"]
        for name, items in rep["refutations"].items():
            for it in items:
                extra = it.get("p_value", it.get("shift"))
                L.append(f"| {name} | {it['term']} | {_g(it['mean_effect'])} | {_g(it['sd_effect'])} | "
                         f"{_g(extra)} | {'yes' if it['passed'] else 'NO'} |")
    d = rep.get("discovery")
    if d:
        L += ["", f"## Causal discovery (PC, {d['test']}, alpha {d['alpha']}, n {d['n']})", ""]
        L += [f"- `{a}` {arrow} `{b}`" for a, arrow, b in d["edges"]] or ["- no edges"]
    return "\n".join(L) + "\n"
