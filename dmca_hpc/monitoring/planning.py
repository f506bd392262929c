"""Allocation planning from telemetry: makespan, efficiency and cost at N ranks.

``dmca-hpc plan TELEMETRY... [--ranks 1-1024] [--efficiency-min 0.8]``
(:mod:`dmca_hpc.cli.plan`).  The measured units of a run (one telemetry
record each) are replayed under the package's dynamic dispatch
(:func:`dmca_hpc.hpc.parallel.map_units`, ``schedule="dynamic"``) on N ranks:

Model
    Stages run one after another (the pipeline's barriers).  Within a stage
    the units are handed out in their order by a counter on rank 0: each rank
    takes the next unit when it is free, so unit i starts on the rank that
    frees first (greedy list scheduling, simulated with a heap).  Rank 0 also
    works; it takes its units at once, every other rank pays the dispatch
    round trip ``dispatch_s`` per request (rank 0's service thread polls every
    ``_Dispatcher.POLL_S`` = 2 ms, so on average half of that plus a message),
    also for its last, empty request.  Every unit also carries the per-unit
    bookkeeping measured in the run (the gap between consecutive units of
    one rank: checkpoint write, telemetry line), and every stage a fixed
    serial part: the time of the stage's span not covered by its units on
    the busiest rank (set-up on rank 0, gather, writing the output file).
    The time between stages (job set-up, merges) is serial too.
        T(N) = serial_between + sum over stages [serial_s + list_schedule(units, N)]
    Unit wall times are taken as measured, i.e. independent of N (no memory
    bandwidth or network contention is modelled: real runs can only be slower).
Efficiency and cost
    E(N) = T(1) / (N T(N)); cost(N) = N T(N) cores price / 3600 [USD] (a
    cluster bills every allocated core for the whole makespan), with cores
    per rank and the price per core-hour read back from the records
    (``infra_cost_usd`` / ``core_seconds``).  The plan names the largest N in
    the requested range that keeps E >= ``efficiency_min`` (default 80 %).

Input
    The records ``dmca-hpc collect`` counts (its reader,
    :func:`dmca_hpc.monitoring.collector.iter_records`: its plaintext policy,
    a replayed line once) with an ``hpc`` block and a timestamp; the plan's
    ``telemetry_input`` says how many lines were refused and why.

The N grid is every N up to 64, then steps of ~5 % up to the maximum
(a few hundred simulations); the largest N meeting the efficiency bound is
then searched exactly between the two grid points that bracket it.
"""
from __future__ import annotations

import heapq
import math
import os
from typing import Iterable, Sequence

#: default lower bound of the parallel efficiency for the recommendation
EFFICIENCY_MIN = 0.8


def _dispatch_default() -> float:
    """Mean wait of a non-root rank for its next index [s]: half the dispatcher's
    polling period plus ~0.1 ms for the two messages (loopback MPICH)."""
    from dmca_hpc.hpc.parallel import _Dispatcher
    return _Dispatcher.POLL_S / 2 + 1e-4


class PlanInputError(ValueError):
    """Telemetry that cannot be planned from (no unit records with an hpc block)."""


def measure(paths: Iterable[str | os.PathLike], key: bytes | None = None,
            require_encrypted: bool | None = None) -> dict:
    """Unit costs per stage from telemetry: {"stages": {stage: {"walls": [...],
    "overhead_s", "serial_s", "ranks"}}, "serial_between_s", "cores", "price_per_core_hour_usd",
    "measured_ranks", "measured_makespan_s", "telemetry_input"}.

    The records are those ``dmca-hpc collect`` counts
    (:func:`dmca_hpc.monitoring.collector.iter_records`: its plaintext policy,
    ``require_encrypted`` defaulting to "when a key is given"; a replayed
    line used once); ``telemetry_input`` says what was read and refused
    (:meth:`~dmca_hpc.monitoring.collector.TelemetryReader.input_summary`, with
    ``refused``: one line saying how many lines were refused and why, or None).
    Raises :class:`PlanInputError` for an unreadable input file."""
    from dmca_hpc.monitoring.collector import TelemetryReader, iter_records
    reader = TelemetryReader(key=key, max_list=100, require_encrypted=require_encrypted)
    recs = [rec for rec, _f, _n in iter_records(paths, reader)
            if rec.get("hpc") is not None and rec.get("timestamp") is not None]
    if reader.unreadable:
        u = reader.unreadable[0]
        raise PlanInputError(f"cannot read {u['file']}: {u['reason']}")
    read = dict(reader.input_summary(), refused=reader.refusal_line())
    if not recs:
        raise PlanInputError("no unit records with an hpc block and a timestamp: nothing to plan from "
                             "(core-only DMCA records carry no unit times)"
                             + (f"; {read['refused']}" if read["refused"] else ""))
    recs.sort(key=lambda r: r["timestamp"])
    stages: dict[str, dict] = {}
    order: list[str] = []
    core_s = cost = 0.0
    cores = set()
    for r in recs:
        h = r["hpc"]
        st = stages.get(h["stage"])
        if st is None:
            st = stages[h["stage"]] = {"walls": [], "t0": math.inf, "t1": -math.inf, "by_rank": {}}
            order.append(h["stage"])
        w = float(h["wall_seconds"])
        end = float(r["timestamp"])
        st["walls"].append(w)
        st["t0"], st["t1"] = min(st["t0"], end - w), max(st["t1"], end)
        st["by_rank"].setdefault(h["rank"], []).append((end - w, end))
        core_s += float(h.get("core_seconds", w))
        cost += float(r["infra_cost_usd"])
        cores.add(int(h.get("cores", 1)))
    out_st = {}
    covered = 0.0
    for name in order:
        st = stages[name]
        gaps, n_gaps, busiest = 0.0, 0, 0.0
        for spans in st["by_rank"].values():
            spans.sort()
            for (s0, e0), (s1, _e1) in zip(spans, spans[1:]):
                gaps += max(s1 - e0, 0.0)
                n_gaps += 1
            busiest = max(busiest, spans[-1][1] - spans[0][0])
        span = st["t1"] - st["t0"]
        covered += span
        out_st[name] = {"walls": st["walls"], "units": len(st["walls"]),
                        "overhead_s": gaps / n_gaps if n_gaps else 0.0,
                        "serial_s": max(span - busiest, 0.0), "span_s": span, "ranks": len(st["by_rank"])}
    t0 = min(s["t0"] for s in stages.values())
    t1 = max(s["t1"] for s in stages.values())
    ranks = {r["hpc"]["rank"] for r in recs}
    # hpc.nranks (the communicator size) also counts ranks that wrote no record
    nranks = max([len(ranks)] + [int(r["hpc"]["nranks"]) for r in recs if "nranks" in r["hpc"]])
    return {"stages": out_st, "order": order, "serial_between_s": max((t1 - t0) - covered, 0.0),
            "cores": max(cores) if cores else 1,
            "price_per_core_hour_usd": (cost / core_s * 3600.0) if core_s > 0 else 0.0,
            "measured_ranks": nranks, "measured_makespan_s": t1 - t0, "records": len(recs),
            "telemetry_input": read}


def list_schedule(walls: Sequence[float], n: int, dispatch_s: float, overhead_s: float = 0.0) -> float:
    """Makespan [s] of ``walls`` (in order) on ``n`` ranks under dynamic dispatch
    (module docstring): rank 0 takes indices at no cost, ranks 1.. pay ``dispatch_s``
    per request, including the final empty one."""
    if n < 1:
        raise ValueError(f"ranks must be >= 1, got {n}")
    if n == 1:
        return float(sum(walls)) + overhead_s * len(walls)
    # (time the rank is free, rank); ties go to the lower rank, as the counter serves them in turn
    free = [(0.0, r) for r in range(n)]
    heapq.heapify(free)
    finish = [0.0] * n
    for w in walls:
        t, r = heapq.heappop(free)
        start = t + (dispatch_s if r else 0.0)
        end = start + w + overhead_s
        finish[r] = end
        heapq.heappush(free, (end, r))
    for r in range(1, n):  # the "no more work" answer every non-root rank waits for
        finish[r] = max(finish[r], 0.0) + dispatch_s
    return max(finish)


def makespan(m: dict, n: int, dispatch_s: float) -> float:
    """Projected job makespan T(n) [s] of a :func:`measure` result."""
    t = m["serial_between_s"]
    for st in m["stages"].values():
        t += st["serial_s"] + list_schedule(st["walls"], n, dispatch_s, st["overhead_s"])
    return t


def _grid(n_max: int) -> list[int]:
    g = list(range(1, min(n_max, 64) + 1))
    n = 64
    while n < n_max:
        n = min(max(n + 1, int(math.ceil(n * 1.05))), n_max)
        g.append(n)
    return g


def project(m: dict, n_max: int = 1024, efficiency_min: float = EFFICIENCY_MIN,
            dispatch_s: float | None = None, ranks: Sequence[int] | None = None) -> dict:
    """The plan: makespan, efficiency and cost at each N of the grid (or of
    ``ranks``), and the largest N in 1..n_max with efficiency >= ``efficiency_min``."""
    if not 0 < efficiency_min <= 1:
        raise ValueError(f"efficiency_min must be in (0, 1], got {efficiency_min}")
    if n_max < 1:
        raise ValueError(f"the largest rank count must be >= 1, got {n_max}")
    d = _dispatch_default() if dispatch_s is None else float(dispatch_s)
    price, cores = m["price_per_core_hour_usd"], m["cores"]
    t1 = makespan(m, 1, d)
    cache: dict[int, float] = {}

    def T(n):
        if n not in cache:
            cache[n] = makespan(m, n, d)
        return cache[n]

    def eff(n):
        return t1 / (n * T(n)) if T(n) > 0 else 1.0

    grid = sorted(set(ranks)) if ranks else _grid(n_max)
    rows = [{"ranks": n, "makespan_s": T(n), "speedup": t1 / T(n) if T(n) > 0 else 1.0, "efficiency": eff(n),
             "cost_usd": n * T(n) * cores * price / 3600.0} for n in grid]
    # largest N meeting the bound: the last grid point that does, refined up to the next grid point
    full = _grid(n_max)
    ok = [n for n in full if eff(n) >= efficiency_min]
    best = max(ok) if ok else None
    if best is not None:
        nxt = next((n for n in full if n > best), None)
        if nxt is not None:
            for n in range(best + 1, nxt):
                if eff(n) >= efficiency_min:
                    best = n
    units = sum(st["units"] for st in m["stages"].values())
    return {"projection": rows, "efficiency_min": efficiency_min, "max_ranks_at_efficiency": best,
            "n_max": n_max, "dispatch_s": d, "t1_s": t1, "units": units,
            "stages": {k: {kk: v for kk, v in st.items() if kk != "walls"} for k, st in m["stages"].items()},
            "serial_between_s": m["serial_between_s"], "cores_per_rank": cores,
            "price_per_core_hour_usd": price, "measured_ranks": m["measured_ranks"],
            "measured_makespan_s": m["measured_makespan_s"],
            "projected_at_measured_ranks_s": T(m["measured_ranks"]),
            "telemetry_input": m.get("telemetry_input")}


def render_markdown(plan: dict, every: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)) -> str:
    """Markdown table of the plan at the rank counts ``every`` (those in the projection)."""
    L = ["# Allocation plan from telemetry", ""]
    L.append(f"{plan['units']} units in {len(plan['stages'])} stage(s); measured on {plan['measured_ranks']} rank(s): "
             f"makespan {plan['measured_makespan_s']:.4g} s (model at that N: "
             f"{plan['projected_at_measured_ranks_s']:.4g} s); dispatch {plan['dispatch_s'] * 1e3:.3g} ms per "
             f"request; {plan['cores_per_rank']} core(s) per rank at {plan['price_per_core_hour_usd']:.4g} USD "
             f"per core-hour.  ")
    best = plan["max_ranks_at_efficiency"]
    L.append(f"**Largest N with efficiency >= {plan['efficiency_min']:.0%}: {best if best else 'none'}** "
             f"(N <= {plan['n_max']}).")
    L += ["", "| N | makespan s | speedup | efficiency | cost USD |", "|---:|---:|---:|---:|---:|"]
    want = set(every) | ({best} if best else set())
    for r in plan["projection"]:
        if r["ranks"] in want:
            L.append(f"| {r['ranks']} | {r['makespan_s']:.4g} | {r['speedup']:.3g} | {r['efficiency']:.3f} | "
                     f"{r['cost_usd']:.4g} |")
    return "\n".join(L) + "\n"
