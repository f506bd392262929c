"""Standalone telemetry collector (``dmca-hpc collect FILE... [--json] [--markdown] [--gate]``,
see :mod:`dmca_hpc.cli.collect`).

Reads telemetry JSONL files (plaintext, AES-GCM-encrypted or mixed; see
:mod:`dmca_hpc.monitoring.telemetry`) in one streaming pass and reports what the run
cost, how fast it went and what failed.  It needs neither MPI, PySCF nor
Numba (it imports none of them, nor numpy) and never crashes on bad input:
every line that is not a valid record (binary garbage, broken JSON, a
truncated last line, a schema violation, a wrong key, an altered encrypted
line) is counted and listed with its file, line number and reason.

The DMCA report (the fields of the original DMCA collector, same meanings)
--------------------------------------------------------------------------
count
    number of valid records (= ``records``).
medians
    {qps, latency_p95_ms, infra_cost_usd}: the median of each core field over
    all valid records, as the records carry it (for our HPC records qps =
    1 / wall, latency = wall, cost = the unit's cost).  Exact (mean of the two
    middle values for an even count) up to 20,000 records (``medians_exact``),
    beyond that the 0.5 quantile of the sketch below (+-0.5 %).
DMCA rows and their FTI
    DMCA grades *rows*: one measurement of a service (cost, qps, p95 latency).
    A record with only the core fields (the DMCA format) is a row by itself.
    Our HPC records are units of work, not measurements of a service, so they
    form one row per (stage, job_id, step, intervention): qps = successful
    units / makespan, latency_p95_ms = p95 latency of its successful units,
    infra_cost_usd = cost per successful unit (failed units raise it).  The
    DMCA FTI of a row against the medians of its group (core-only records
    together; HPC rows per stage, so a dft unit is never compared with a
    rates unit) is
        FTI = (c / c_med) / sqrt((q / q_med) (l_med / l)),
    every denominator floored at 1e-9.  A single run has one row per stage,
    hence FTI 1; a campaign (several steps or interventions of one job) ranks
    its interventions.  Grades OK (FTI <= 1.0) < WARN (<= 1.05) < FAIL.
fti_avg, fti_grade_worst
    plain mean of the row FTIs (DMCA), and the worst row grade.
lambda_effective
    the DMCA evolution rate lambda_SIBG exp(-lambda_ASDPI d):
    lambda_SIBG = clamp(lambda_current + sibg_beta (fti_avg / fti_ref - 1),
    sibg_min, sibg_max), the learning pressure from the FTI, and
    lambda_ASDPI = clamp(asdpi_lambda0 + asdpi_alpha (deploy_rate_ref /
    deploy_rate - 1), asdpi_min, asdpi_max) [1/day], the deployment damping;
    d = days since the last change of intervention (from the timestamps, 7
    without them).  Parameters: job key ``telemetry.lambda_effective``,
    ``--lambda-param KEY=VALUE``, ``--days-since-change``; the report's
    ``lambda`` object lists what was used (:func:`lambda_effective`).

HPC figures (all in the ``--json`` object)
------------------------------------------
records
    number of valid records.
cost_usd
    sum of ``infra_cost_usd`` over all valid records [USD].
latency_p50_ms, latency_p95_ms
    median and 95th percentile of the latency of the *successful* units
    (status ``ok``) [ms]; latency = ``hpc.wall_seconds`` * 1000, or the
    record's ``latency_p95_ms`` for old-style records.  Failed units are
    accounted in cost and failures, not in latency (a unit that crashes in
    1 ms would otherwise make a run look fast).
span_seconds (T)
    makespan [s]: latest unit end minus earliest unit start, where end =
    ``timestamp`` and start = ``timestamp - wall_seconds``.  Records without
    a timestamp contribute their wall time serially (T falls back to the sum
    of wall times when no record has one).
qps
    offered throughput [units/s] = all records (ok, failed, skipped) / T.
throughput_units_per_s
    effective throughput [units/s] = successful units / T (called
    lambda_effective before the DMCA figure took that name).  In queueing
    terms (Little's law L = lambda W) this is the rate at which work
    *completes usefully*, lambda_eff = lambda (1 - P_fail): the arrival rate
    minus what is lost to failures (and skips).  ``concurrency_mean`` =
    sum of wall times / T is L, the mean number of units in service (the
    effective parallelism the ranks achieved), so lambda_eff * W_mean(ok)
    <= L.
FTI (per stage)
    FTI = normalized cost / normalized performance, with
    normalized cost = (stage cost / successful units) / c0  and
    normalized performance = L0 / (median latency of successful units),
    i.e. FTI = (c / c0) * (L / L0): cost per useful unit relative to a
    baseline, times latency relative to the baseline latency.  The baseline
    (c0 [USD per unit], L0 [ms]) of a stage comes from ``--baseline
    REPORT.json`` (a previous ``collect --json`` report of a reference run:
    its ``cost_per_ok_unit_usd`` and ``latency_p50_ms``) or from the job
    file (``telemetry.fti_baseline``); without one, the run is its own
    baseline: c0 = mean cost of a *successful* unit and L0 = the run's own
    median, so FTI = total cost / cost of the successful units
    = 1 + (money spent on failed and skipped units) / (money that bought
    results).  So FTI = 1 means every dollar bought a result at baseline
    speed; FTI = 1.05 means 5 % more spent per result (or 5 % slower) than
    the baseline.  Grades: OK (FTI <= 1.0) < WARN (<= 1.05) < FAIL.
    A stage without a successful unit has FTI = null and grade FAIL.
fti_stage_avg
    cost-weighted mean of the stage FTIs, sum(C_s FTI_s) / sum(C_s), so the
    figure follows where the money went (unweighted mean when nothing cost
    anything); ``fti_stage_grade_worst`` is the worst stage grade.

Quantiles use a DDSketch-style log-binned histogram with relative accuracy
alpha = 0.5 %: memory is O(log(max/min)/alpha) per group (about 3,000
counters for 1 us .. 1e6 s), independent of the number of lines, and the
reported quantile q is within 0.5 % (relative) of the exact order statistic
x_(floor(q (n-1))) (``numpy.quantile(..., method="lower")``).  Lists of
failed units and invalid lines keep the first ``--max-list`` entries (the
totals are always exact), so memory is bounded for any input size.

Inputs
------
A directory stands for its merged ``telemetry.jsonl`` when present, else
its ``rank-*.jsonl`` files.  A run writes only regular files there: a FIFO,
socket or device under one of those names (in a directory, or named on the
command line) would block the reader forever, so it is skipped with the
reason in ``skipped_files``; any other FIFO named on the command line is
streamed (the data need never exist as a file).  Given the merged file and
rank files of the same directory (``collect runs/X/telemetry/*.jsonl``),
the collector compares them: when the merged file is exactly the rank
files' whole lines (what the pipeline merged), the rank files are skipped
(``skipped_files``); otherwise the merged file is refused (listed in
``unreadable_files``: pass one or the other) and only the rank files are
read.  Either way no record is counted twice.  :func:`iter_records` (with a
:class:`TelemetryReader`) yields exactly the records a report counts, under
the same input choice, plaintext policy and stream checks below; the causal
analysis and the planner read telemetry through it, so a line ``collect``
refuses (a replay, plaintext in an encrypted file) is used nowhere.

Integrity (the ``integrity`` object of the report)
--------------------------------------------------
Encrypted mode accepts only authenticated records: a file holding any
encrypted line is an encrypted file, and a plaintext line in it is an
invalid line (code ``plaintext``, "plaintext line in an encrypted file"),
not counted; with a key given (``DMCA_TELEMETRY_KEY``, ``--key-env``) or
``--require-encrypted``, every plaintext line is (``--allow-plaintext``
reads plaintext files beside a key; plaintext in an encrypted file stays
invalid).  A regular file is scanned for an encrypted line before it is
read; a stream (FIFO) or a file read live by the exporter cannot be, so
plaintext lines read before its first encrypted line were counted: that is
reported as a ``mixed`` issue at the encrypted line.  Records with a stream
identity (``hpc.run_id``, ``hpc.rank``, ``hpc.seq``; for encrypted lines
bound into the authentication, :mod:`dmca_hpc.monitoring.telemetry`) are
checked per stream ``(run_id, rank)`` over all files read:

gap
    seqs missing before a line (a deleted line; also missing leading seqs
    of a stream whose first line read is not seq 0), reported at the first
    line after the hole.
reorder
    a seq lower than one already read of its stream (swapped lines), at
    the lower seq's line; counted.
duplicate
    a seq read again (a replayed or copied line): counted once, the repeat
    is an invalid line (code ``duplicate``).
foreign
    a record of a stream whose first line was read in another file (a
    writer appends to one file only; the merged ``telemetry.jsonl`` and its
    rank files are never both read); counted.

``--gate`` fails on any gap, reorder, duplicate, foreign or mixed issue,
whatever ``--max-invalid`` allows.  Old records without an identity and
version-1 envelopes are counted as ``unsequenced_records`` /
``v1_envelopes``.  Not detectable from the lines alone: a deleted last line
of a stream (or trailing lines, or a whole stream or file).  Memory: one
seen-seq interval per stream when it is in order, one more per hole; at most
:data:`MAX_SEQ_INTERVALS` in all, beyond which records are counted but not
checked (``untracked_records``, a gate breach).

Non-finite numbers: a line whose number overflows a double (``1e400``) or
is NaN/Infinity is an invalid line (code ``nonfinite``); sums that overflow
are reported as null, never as a crash of ``--json`` or the exporter.

Gate (``--gate``): exit code 1 when the DMCA fti_avg exceeds ``--fti-max``
(default 1.05, the DMCA gate and the FAIL threshold), any stage FTI exceeds it
(waste or a regression against the baseline), failed units exceed ``--max-failures``
(default 0) or invalid lines exceed ``--max-invalid`` (default 0: a tampered
or undecryptable line is a breach) or any stream integrity issue is found
(above).  Exit code 2 for unreadable input
files or bad arguments; 0 otherwise.
"""
from __future__ import annotations

import bisect
import fnmatch
import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Iterable, Iterator

#: FTI grade thresholds (architecture.md): OK <= 1.0 < WARN <= 1.05 < FAIL
FTI_OK, FTI_WARN = 1.0, 1.05
_GRADE_RANK = {"OK": 0, "WARN": 1, "FAIL": 2}


def fti_grade(fti: float | None) -> str:
    """OK (<= 1.0), WARN (<= 1.05) or FAIL (above, or undefined)."""
    if fti is None or not math.isfinite(fti):
        return "FAIL"
    if fti <= FTI_OK:
        return "OK"
    if fti <= FTI_WARN:
        return "WARN"
    return "FAIL"


class QuantileSketch:
    """Log-binned histogram (DDSketch, Masson et al., VLDB 2019) for quantiles
    with bounded memory and relative accuracy ``alpha``.

    Values <= ``min_value`` go to a zero bucket (reported as 0).  Bucket k
    holds values in (gamma^(k-1), gamma^k], gamma = (1+alpha)/(1-alpha), and
    is reported as 2 gamma^k / (gamma+1), within alpha (relative) of any value
    in it.
    """

    __slots__ = ("alpha", "gamma", "_inv_lg", "min_value", "bins", "zero", "n")

    def __init__(self, alpha: float = 0.005, min_value: float = 1e-9):
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._inv_lg = 1.0 / math.log(self.gamma)
        self.min_value = min_value
        self.bins: dict[int, int] = {}
        self.zero = 0
        self.n = 0

    def add(self, x: float) -> None:
        self.n += 1
        if x <= self.min_value:
            self.zero += 1
            return
        if not x < math.inf:  # a finite latency in s becomes inf in ms: the top bucket
            x = sys.float_info.max
        k = math.ceil(math.log(x) * self._inv_lg)
        b = self.bins
        b[k] = b.get(k, 0) + 1

    def merge(self, other: "QuantileSketch") -> None:
        self.n += other.n
        self.zero += other.zero
        for k, c in other.bins.items():
            self.bins[k] = self.bins.get(k, 0) + c

    def quantile(self, q: float) -> float | None:
        """Estimate of the order statistic x_(floor(q (n-1))) (0-based); None if empty."""
        if self.n == 0:
            return None
        rank = math.floor(q * (self.n - 1))
        seen = self.zero
        if rank < seen:
            return 0.0
        for k in sorted(self.bins):
            seen += self.bins[k]
            if rank < seen:
                return self._value(k)
        return self._value(max(self.bins))  # pragma: no cover

    def _value(self, k: int) -> float:
        try:
            return 2.0 * self.gamma ** k / (self.gamma + 1.0)
        except OverflowError:  # the bucket of values near the largest double
            return sys.float_info.max


class GroupStats:
    """Running totals for one group of records (a stage, a material, a rank, or all)."""

    __slots__ = ("n", "ok", "failed", "skipped", "cost", "cost_ok", "wall", "wall_ok", "cpu",
                 "core", "peak_mem", "t0", "t1", "serial_wall", "lat")

    def __init__(self):
        self.n = self.ok = self.failed = self.skipped = 0
        self.cost = self.cost_ok = self.wall = self.wall_ok = self.cpu = self.core = 0.0
        self.peak_mem = 0.0
        self.t0, self.t1 = math.inf, -math.inf
        self.serial_wall = 0.0  # wall of records without timestamp (added serially to the span)
        self.lat = QuantileSketch()

    def add(self, status: str, cost: float, wall: float, cpu: float, core: float, mem: float,
            ts: float | None, lat_ms: float) -> None:
        self.n += 1
        self.cost += cost
        self.wall += wall
        self.cpu += cpu
        self.core += core
        if mem > self.peak_mem:
            self.peak_mem = mem
        if status == "ok":
            self.ok += 1
            self.cost_ok += cost
            self.wall_ok += wall
            self.lat.add(lat_ms)
        elif status == "failed":
            self.failed += 1
        else:
            self.skipped += 1
        if ts is None:
            self.serial_wall += wall
        else:
            s = ts - wall
            if s < self.t0:
                self.t0 = s
            if ts > self.t1:
                self.t1 = ts

    def merge(self, o: "GroupStats") -> None:
        self.n += o.n
        self.ok += o.ok
        self.failed += o.failed
        self.skipped += o.skipped
        self.cost += o.cost
        self.cost_ok += o.cost_ok
        self.wall += o.wall
        self.wall_ok += o.wall_ok
        self.cpu += o.cpu
        self.core += o.core
        self.peak_mem = max(self.peak_mem, o.peak_mem)
        self.t0, self.t1 = min(self.t0, o.t0), max(self.t1, o.t1)
        self.serial_wall += o.serial_wall
        self.lat.merge(o.lat)

    def span(self) -> float:
        """Makespan T [s] (see module docstring)."""
        span = (self.t1 - self.t0) if self.t1 >= self.t0 else 0.0
        return span + self.serial_wall

    def summary(self) -> dict:
        T = self.span()
        p50, p95 = self.lat.quantile(0.5), self.lat.quantile(0.95)
        return {
            "records": self.n, "ok": self.ok, "failed": self.failed, "skipped": self.skipped,
            "cost_usd": self.cost,
            "wasted_cost_usd": self.cost - self.cost_ok,
            "cost_per_ok_unit_usd": (self.cost / self.ok) if self.ok else None,
            "wall_seconds_total": self.wall, "cpu_seconds_total": self.cpu,
            "core_seconds_total": self.core,
            "peak_memory_mb_max": self.peak_mem,
            "latency_p50_ms": p50, "latency_p95_ms": p95,
            "latency_mean_ms": (self.wall_ok / self.ok * 1e3) if self.ok else None,
            "span_seconds": T,
            "qps": (self.n / T) if T > 0 else None,
            "throughput_units_per_s": (self.ok / T) if T > 0 else None,
            "concurrency_mean": (self.wall / T) if T > 0 else None,
        }


class MedianTracker:
    """Median of a stream with bounded memory: exact (the mean of the two middle
    values for an even count, ``statistics.median``, as DMCA computes it) up to
    :data:`EXACT_MEDIAN_MAX` values, then the 0.5 quantile of a
    :class:`QuantileSketch` (relative accuracy 0.5 %) fed with every value."""

    __slots__ = ("values", "sketch", "n")

    def __init__(self):
        self.values: list[float] | None = []
        self.sketch: QuantileSketch | None = None
        self.n = 0

    def add(self, x: float) -> None:
        self.n += 1
        v = self.values
        if v is not None:
            v.append(x)
            if len(v) > EXACT_MEDIAN_MAX:  # switch to the sketch for good
                self.sketch = QuantileSketch(min_value=1e-300)
                for y in v:
                    self.sketch.add(y)
                self.values = None
        else:
            self.sketch.add(x)

    def median(self) -> float | None:
        if self.n == 0:
            return None
        if self.values is not None:
            import statistics
            return float(statistics.median(self.values))
        return self.sketch.quantile(0.5)

    @property
    def exact(self) -> bool:
        return self.values is not None


#: up to this many records the DMCA medians are exact, beyond it they come from the sketch
EXACT_MEDIAN_MAX = 20_000

#: floor of every DMCA denominator (the original collector's max(1e-9, x))
_EPS = 1e-9


class CoreRows:
    """DMCA FTI of core-only records (each such record is a DMCA row) in one
    streaming pass.

    DMCA: FTI_i = (c_i / c_med) / max(eps, sqrt((q_i / q_med) (l_med / l_i)))
    with c = infra_cost_usd, q = qps, l = latency_p95_ms and the medians over
    the rows.  It factorises as FTI_i = b_i K with b_i = c_i sqrt(l_i / q_i)
    (the record alone) and K = sqrt(q_med / l_med) / c_med (the medians alone),
    so the mean and the largest FTI follow from sum(b_i) and max(b_i) once the
    medians are known: no second pass and no stored rows.  A row with q = 0
    has no performance to normalise: FTI = c / (c_med eps) as in DMCA (huge,
    or 0 when it cost nothing)."""

    __slots__ = ("n", "sum_b", "max_b", "n0", "sum_c0", "max_c0", "qps", "lat", "cost")

    def __init__(self):
        self.n = self.n0 = 0
        self.sum_b = self.sum_c0 = 0.0
        self.max_b = self.max_c0 = -math.inf
        self.qps, self.lat, self.cost = MedianTracker(), MedianTracker(), MedianTracker()

    def add(self, q: float, l: float, c: float) -> None:
        self.n += 1
        self.qps.add(q)
        self.lat.add(l)
        self.cost.add(c)
        if q > 0:
            b = c * math.sqrt(max(_EPS, l) / q)
            self.sum_b += b
            if b > self.max_b:
                self.max_b = b
        else:
            self.n0 += 1
            self.sum_c0 += c
            if c > self.max_c0:
                self.max_c0 = c

    def fti(self) -> tuple[float | None, float | None]:
        """(sum of the rows' FTIs, largest FTI); (None, None) without rows."""
        if self.n == 0:
            return None, None
        cm = max(_EPS, self.cost.median())
        K = math.sqrt(max(_EPS, self.qps.median()) / max(_EPS, self.lat.median())) / cm
        total = K * self.sum_b + self.sum_c0 / (cm * _EPS)
        worst = max(K * self.max_b if self.max_b > -math.inf else -math.inf,
                    self.max_c0 / (cm * _EPS) if self.n0 else -math.inf)
        return total, worst


def dmca_fti(cost: float, qps: float, lat_ms: float, med: tuple[float, float, float]) -> float:
    """DMCA FTI of one row against the medians ``med`` = (cost, qps, latency)
    of its group: (c / c_med) / sqrt((q / q_med) (l_med / l)), every
    denominator floored at 1e-9 as in the original collector."""
    c_med, q_med, l_med = med
    norm_cost = cost / max(_EPS, c_med)
    norm_perf = math.sqrt((qps / max(_EPS, q_med)) * (max(_EPS, l_med) / max(_EPS, lat_ms)))
    return norm_cost / max(_EPS, norm_perf)


def lambda_defaults() -> dict:
    """Default DMCA lambda_effective parameters: the job model's
    ``telemetry.lambda_effective`` (:mod:`dmca_hpc.settings`; the original DMCA
    collector's values)."""
    from dmca_hpc import settings
    return dict(settings.field("telemetry.lambda_effective").default)


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def lambda_effective(fti_avg: float | None, days_since_change: float | None,
                     params: dict | None = None) -> dict:
    """DMCA evolution rate lambda_effective = lambda_SIBG exp(-lambda_ASDPI d).

    lambda_SIBG = clamp(lambda_current + sibg_beta (FTI / fti_ref - 1), sibg_min, sibg_max)
        is the learning pressure from the FinOps trade-off: a run that got more
        expensive per unit of performance (FTI above the reference) pushes to evolve
        faster, one that improved relaxes it [dimensionless].
    lambda_ASDPI = clamp(asdpi_lambda0 + asdpi_alpha (deploy_rate_ref / deploy_rate - 1),
        asdpi_min, asdpi_max) is the deployment damping [1/day]: deploying more slowly
        than the reference pace damps harder.
    d = days since the last change of intervention [day]: ``params["days_since_change"]``
        when set, else ``days_since_change`` measured from the telemetry, else 7 (the
        original collector's fixed value, for records without timestamps).
    FTI = ``fti_avg`` (1 = fti_ref when undefined).  Returns the three lambdas and the
    inputs used, so a report says how its figure came about."""
    p = lambda_defaults()
    unknown = sorted(set(params or {}) - set(p))
    if unknown:
        raise ValueError(f"telemetry.lambda_effective: unknown key(s) {unknown}; expected a subset of {sorted(p)}")
    p.update({k: v for k, v in (params or {}).items() if v is not None or k == "days_since_change"})
    fti = fti_avg if fti_avg is not None and math.isfinite(fti_avg) else p["fti_ref"]
    sibg = _clamp(p["lambda_current"] + p["sibg_beta"] * (fti / max(_EPS, p["fti_ref"]) - 1.0),
                  p["sibg_min"], p["sibg_max"])
    asdpi = _clamp(p["asdpi_lambda0"] + p["asdpi_alpha"] * (p["deploy_rate_ref"] / max(0.01, p["deploy_rate"]) - 1.0),
                   p["asdpi_min"], p["asdpi_max"])
    if p.get("days_since_change") is not None:
        d, source = float(p["days_since_change"]), "parameter"
    elif days_since_change is not None:
        d, source = days_since_change, "telemetry"
    else:
        d, source = 7.0, "default (no timestamps)"
    return {"lambda_effective": sibg * math.exp(-asdpi * d), "lambda_sibg": sibg, "lambda_asdpi_per_day": asdpi,
            "days_since_change": d, "days_since_change_source": source, "fti_used": fti,
            "params": {k: v for k, v in p.items() if k != "days_since_change"}}


#: seen-seq intervals kept over all streams (module docstring, "Integrity"): an in-order
#: stream needs one, each hole one more; ~100 bytes each, so ~20 MiB at the limit
MAX_SEQ_INTERVALS = 200_000


class _Stream:
    """Seqs read of one stream: sorted disjoint intervals ``[los[i], his[i]]``,
    ``locs[i]`` = (file, line) where ``los[i]`` was read (the line after a
    hole), ``top_loc`` where the highest seq was read, ``home`` the file of
    its first record."""

    __slots__ = ("los", "his", "locs", "top_loc", "home")

    def __init__(self, seq: int, loc: tuple[str, int]):
        self.los, self.his, self.locs = [seq], [seq], [loc]
        self.top_loc = loc
        self.home = loc[0]


class SequenceCheck:
    """Per-stream gap / reorder / duplicate / foreign check of sequenced
    records (module docstring, "Integrity"); streaming, memory bounded by
    ``max_intervals``."""

    KINDS = ("gap", "reorder", "duplicate", "foreign", "mixed")

    def __init__(self, max_list: int = 1000, max_intervals: int = MAX_SEQ_INTERVALS):
        self.max_list = int(max_list)
        self.max_intervals = int(max_intervals)
        self.streams: dict[tuple[str, int], _Stream] = {}
        self.intervals = 0
        self.events: list[dict] = []  # all but the gaps, which are derived at report time
        self.totals = dict.fromkeys(self.KINDS, 0)
        self.sequenced = 0
        self.untracked = 0

    def _event(self, kind: str, fname: str, lineno: int, reason: str, **extra) -> None:
        self.totals[kind] += 1
        if len(self.events) < self.max_list:
            self.events.append({"file": fname, "line": lineno, "kind": kind, **extra, "reason": reason})

    def mixed(self, fname: str, lineno: int, plain_counted: int) -> None:
        """A file seen to be encrypted only at ``lineno``, after ``plain_counted`` plaintext records of it were counted."""
        self._event("mixed", fname, lineno, f"first encrypted line of a file whose {plain_counted} earlier "
                    "plaintext line(s) were already counted (read as a stream or live, so not refused): "
                    "plaintext in an encrypted file")

    def check(self, run: str, rank: int, seq: int, fname: str, lineno: int) -> str | None:
        """Record seq ``seq`` of stream ``(run, rank)`` read at ``fname:lineno``;
        returns None to count the record, or the reason it is a duplicate."""
        st = self.streams.get((run, rank))
        loc = (fname, lineno)
        if st is None:
            if self.intervals >= self.max_intervals:
                self.untracked += 1
                return None
            self.streams[(run, rank)] = _Stream(seq, loc)
            self.intervals += 1
            self.sequenced += 1
            return None
        los, his, locs = st.los, st.his, st.locs
        top = his[-1]
        if seq == top + 1:  # the common case: the next line of an in-order stream
            his[-1] = seq
            st.top_loc = loc
        else:
            i = bisect.bisect_right(los, seq) - 1  # the interval starting at or below seq
            if i >= 0 and seq <= his[i]:
                reason = (f"duplicate: seq {seq} of stream {run}/rank {rank} was already read (a replayed "
                          "or copied line); counted once")
                self._event("duplicate", fname, lineno, reason, run_id=run, rank=rank, seq=seq)
                return reason
            join_prev = i >= 0 and his[i] + 1 == seq
            join_next = i + 1 < len(los) and los[i + 1] == seq + 1
            if not (join_prev or join_next) and self.intervals >= self.max_intervals:
                self.untracked += 1
                return None
            if seq < top:
                self._event("reorder", fname, lineno,
                            f"seq {seq} of stream {run}/rank {rank} read after seq {top} "
                            f"({st.top_loc[0]}:{st.top_loc[1]}): lines out of order",
                            run_id=run, rank=rank, seq=seq)
            if join_prev and join_next:  # fills a one-seq hole
                his[i] = his[i + 1]
                del los[i + 1], his[i + 1], locs[i + 1]
                self.intervals -= 1
            elif join_prev:
                his[i] = seq
            elif join_next:
                los[i + 1], locs[i + 1] = seq, loc
            else:
                los.insert(i + 1, seq)
                his.insert(i + 1, seq)
                locs.insert(i + 1, loc)
                self.intervals += 1
            if seq > top:
                st.top_loc = loc
        self.sequenced += 1
        if fname != st.home:
            self._event("foreign", fname, lineno,
                        f"seq {seq} of stream {run}/rank {rank}, whose first line was read in {st.home}: a "
                        "writer appends to one file only (line moved or copied from another file)",
                        run_id=run, rank=rank, seq=seq)
        return None

    def gaps(self) -> list[dict]:
        """Every hole of every stream (missing seqs), at the first line read after it."""
        out = []
        for (run, rank), st in self.streams.items():
            prev = -1
            for lo, hi, (fname, lineno) in zip(st.los, st.his, st.locs):
                if lo > prev + 1:
                    a, b = prev + 1, lo - 1
                    what = f"seq {a}" if a == b else f"seqs {a}..{b}"
                    out.append({"file": fname, "line": lineno, "kind": "gap", "run_id": run, "rank": rank,
                                "seq": lo, "missing_from": a, "missing_to": b, "missing": b - a + 1,
                                "reason": f"{what} of stream {run}/rank {rank} missing before this line "
                                          f"({b - a + 1} line(s) deleted or lost)"})
                prev = hi
        return out

    def summary(self, file_order: list[str]) -> dict:
        """Totals and the issues (at most ``max_list``; duplicates are also invalid
        lines) sorted by file (in reading order) and line."""
        gaps = self.gaps()
        rank_of = {f: i for i, f in enumerate(file_order)}
        issues = sorted(self.events + gaps, key=lambda e: (rank_of.get(e["file"], len(rank_of)), e["line"]))
        t = dict(self.totals, gap=len(gaps))
        return {"streams": len(self.streams), "sequenced_records": self.sequenced,
                "untracked_records": self.untracked,
                "gaps_total": t["gap"], "missing_records": sum(g["missing"] for g in gaps),
                "reorders_total": t["reorder"], "duplicates_total": t["duplicate"],
                "foreign_total": t["foreign"], "mixed_files_total": t["mixed"],
                "issues_total": sum(t.values()), "issues": issues[:self.max_list]}


#: LineError codes of a line that is an encrypted envelope (however broken)
_ENVELOPE_CODES = frozenset(("envelope", "no_key", "wrong_key", "tampered"))


def _holds_envelope(fh) -> bool:
    """True if the regular file ``fh`` (at offset 0) has an encrypted line;
    False for a pipe / FIFO, which cannot be read twice.  Leaves ``fh`` at 0.

    Scans 1 MiB blocks for the bytes an envelope line must contain (``"enc"``,
    or a ``\\u`` escape hiding a letter of it) and parses only the lines that
    have them, so a plaintext file costs a read at memory speed, not a
    second parse."""
    from dmca_hpc.monitoring.telemetry import MAX_LINE_BYTES, is_envelope_line
    try:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return False
    except (OSError, ValueError, AttributeError):  # no descriptor: read without the scan
        return False

    def any_envelope(data: bytes, end: int) -> bool:  # in the lines of data[:end]
        for needle in (b'"enc"', b"\\u"):
            i = data.find(needle, 0, end)
            while i >= 0:
                a = data.rfind(b"\n", 0, i) + 1
                b = data.find(b"\n", i, end)
                b = end if b < 0 else b
                if b - a <= MAX_LINE_BYTES and is_envelope_line(data[a:b]):
                    return True
                i = data.find(needle, b, end)
        return False

    try:
        tail, skipping = b"", False  # skipping: inside a line too long to be a record
        while True:
            block = fh.read(1 << 20)
            if not block:
                return not skipping and any_envelope(tail, len(tail))
            if skipping:
                nl = block.find(b"\n")
                if nl < 0:
                    continue
                block, skipping = block[nl + 1:], False
            data = tail + block if tail else block
            cut = data.rfind(b"\n") + 1
            if any_envelope(data, cut):
                return True
            tail = data[cut:]
            if len(tail) > MAX_LINE_BYTES:
                tail, skipping = b"", True
    except OSError:
        return False
    finally:
        try:
            fh.seek(0)
        except OSError:
            pass


def _num(v, default=0.0) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


class TelemetryReader:
    """The collector's one way to read telemetry lines: decoding and
    decryption, the plaintext policy, the per-stream checks (module
    docstring, "Integrity").  :meth:`records` yields the valid records a
    report counts (each stream's seq once); everything else is counted and
    listed by file and line.  The causal analysis and the planner read
    through it too (:func:`iter_records`), so a line refused by ``collect``
    is never used there either.

    Args:
        key: AES-256 key for encrypted lines (None: they are reported as ``no_key``).
        max_list: keep at most this many entries in the invalid-line and
            integrity-issue lists (totals stay exact).
        require_encrypted: refuse every plaintext line (code ``plaintext``);
            default: when a key is given.  Plaintext lines in a file holding
            an encrypted line are refused either way (module docstring).
    """

    def __init__(self, key: bytes | None = None, max_list: int = 1000,
                 require_encrypted: bool | None = None):
        from dmca_hpc.monitoring.telemetry import LineDecoder
        self.decoder = LineDecoder(key=key, validate=True)
        self.max_list = int(max_list)
        self.require_encrypted = (key is not None) if require_encrypted is None else bool(require_encrypted)
        self.seqcheck = SequenceCheck(max_list=self.max_list)
        self.v1 = 0
        self.unsequenced = 0
        self.plaintext_refused = 0
        # file -> [holds an encrypted line, plaintext records of it counted]
        self.file_state: dict[str, list] = {}
        self.lines = 0
        self.blank = 0
        self.encrypted = 0
        self.records_read = 0
        self.invalid: list[dict] = []
        self.invalid_total = 0
        self.invalid_by_code: dict[str, int] = {}
        self.files: list[str] = []
        self.unreadable: list[dict] = []
        self.skipped: list[dict] = []
        #: (end offset, last line number) reached by the latest :meth:`records` of a file
        self.position: tuple[int, int] = (0, 0)

    def _bad(self, fname: str, lineno: int, code: str, reason: str) -> None:
        self.invalid_total += 1
        self.invalid_by_code[code] = self.invalid_by_code.get(code, 0) + 1
        if len(self.invalid) < self.max_list:
            self.invalid.append({"file": fname, "line": lineno, "code": code, "reason": reason})

    def records(self, path: str | os.PathLike, offset: int = 0, start_line: int = 0,
                tail: bool = False) -> Iterator[tuple[dict, str, int]]:
        """Yield ``(record, file, line)`` for every valid record of ``path``
        read from byte ``offset`` (line numbers continue from
        ``start_line``), each stream's seq once; afterwards ``position`` is
        ``(end_offset, last_line_number)``.  With ``tail`` an unfinished last
        line is left for the next call (live files); otherwise it is reported
        as truncated unless it parses.  An unreadable file is recorded in
        ``unreadable`` (never raises)."""
        from dmca_hpc.monitoring.telemetry import LineError, MAX_LINE_BYTES, iter_raw_lines, record_identity
        fname = str(path)
        if fname not in self.files:
            self.files.append(fname)
        decode = self.decoder.decode_line
        check = self.seqcheck.check
        require = self.require_encrypted
        end, last = offset, start_line
        try:
            with open(path, "rb") as fh:
                state = self.file_state.get(fname)
                if state is None:
                    state = self.file_state[fname] = [False, 0]
                    if offset == 0:
                        state[0] = _holds_envelope(fh)
                if offset:  # no seek at 0: the input may be a pipe or FIFO (streamed, never stored)
                    fh.seek(offset)
                for lineno, raw, complete, end in iter_raw_lines(fh, start_line, tail):
                    last = lineno
                    self.lines += 1
                    if raw is None:
                        self._bad(fname, lineno, "too_long", f"line longer than {MAX_LINE_BYTES} bytes")
                        continue
                    if not raw.strip():
                        self.blank += 1
                        continue
                    try:
                        rec, version = decode(raw, complete)
                    except LineError as exc:
                        if exc.code in _ENVELOPE_CODES:
                            self._saw_envelope(state, fname, lineno)
                        self._bad(fname, lineno, exc.code, str(exc))
                        continue
                    if version:
                        self._saw_envelope(state, fname, lineno)
                    elif require or state[0]:
                        self.plaintext_refused += 1
                        self._bad(fname, lineno, "plaintext",
                                  "plaintext line in an encrypted file (not authenticated; not counted)"
                                  if state[0] else "plaintext line refused: encrypted telemetry required "
                                  "(a key was given, or --require-encrypted; not counted)")
                        continue
                    ident = record_identity(rec)
                    if ident is not None:
                        dup = check(ident[0], ident[1], ident[2], fname, lineno)
                        if dup is not None:
                            self._bad(fname, lineno, "duplicate", dup)
                            continue
                    else:
                        self.unsequenced += 1
                    if version:
                        self.encrypted += 1
                        if version == 1:
                            self.v1 += 1
                    else:
                        state[1] += 1
                    self.records_read += 1
                    self.position = (end, last)  # also right if the caller stops here
                    yield rec, fname, lineno
        except OSError as exc:
            self.unreadable.append({"file": fname, "reason": f"{type(exc).__name__}: {exc.strerror or exc}"})
        self.position = (end, last)

    def _saw_envelope(self, state: list, fname: str, lineno: int) -> None:
        if not state[0]:
            state[0] = True
            if state[1]:  # plaintext of this file already counted: say so (the sums cannot drop it)
                self.seqcheck.mixed(fname, lineno, state[1])

    def integrity(self) -> dict:
        """The report's ``integrity`` object (module docstring)."""
        integ = self.seqcheck.summary(self.files)
        integ.update({"unsequenced_records": self.unsequenced, "v1_envelopes": self.v1,
                      "plaintext_refused": self.plaintext_refused,
                      "encrypted_files": sum(1 for st in self.file_state.values() if st[0]),
                      "plaintext_policy": ("refused in every file (encrypted telemetry required)"
                                           if self.require_encrypted else "refused in encrypted files")})
        return integ

    def input_summary(self) -> dict:
        """What was read and what was refused, for a report that is not the
        collector's own (causal, plan): files, lines, records used, invalid
        lines by reason (the first ``max_list`` listed), the stream issue
        counts by kind (:data:`SequenceCheck.KINDS`), unreadable and skipped files."""
        integ = self.integrity()
        return {"files": list(self.files), "lines": self.lines, "blank_lines": self.blank,
                "records": self.records_read, "encrypted_records": self.encrypted,
                "invalid_lines_total": self.invalid_total,
                "invalid_by_reason": dict(sorted(self.invalid_by_code.items())),
                "invalid_lines": list(self.invalid),
                "stream_issues": sequence_issues(integ),
                "missing_records": integ["missing_records"], "untracked_records": integ["untracked_records"],
                "plaintext_policy": integ["plaintext_policy"],
                "unreadable_files": list(self.unreadable), "skipped_files": list(self.skipped)}

    def refusal_line(self) -> str | None:
        """One line saying how many lines were refused and why (counts by
        reason, the first refused line with its reason) and any stream issue
        that refuses no line (gaps, reorders, foreign lines, mixed files);
        None when every line was used."""
        issues = sequence_issues(self.integrity())
        others = {k: v for k, v in issues.items() if v and k != "duplicate"}
        if not self.invalid_total and not others:
            return None
        parts = []
        if self.invalid_total:
            by = ", ".join(f"{n} {code}" for code, n in sorted(self.invalid_by_code.items(),
                                                                key=lambda kv: (-kv[1], kv[0])))
            text = (f"refused {self.invalid_total} of {self.lines - self.blank} telemetry lines "
                    f"({by})")
            if self.invalid:
                b = self.invalid[0]
                text += f"; first {b['file']}:{b['line']}: {b['reason']}"
            parts.append(text)
        else:
            parts.append(f"refused 0 of {self.lines - self.blank} telemetry lines")
        if others:
            parts.append("stream integrity: " + ", ".join(f"{n} {k}" for k, n in others.items())
                         + " (dmca-hpc collect lists them by file and line)")
        return "; ".join(parts)


def sequence_issues(integrity: dict) -> dict:
    """{kind: count} of the stream issues of a report's ``integrity`` object,
    for every kind of :data:`SequenceCheck.KINDS` (gap, reorder, duplicate,
    foreign, mixed)."""
    return {"gap": integrity.get("gaps_total", 0), "reorder": integrity.get("reorders_total", 0),
            "duplicate": integrity.get("duplicates_total", 0), "foreign": integrity.get("foreign_total", 0),
            "mixed": integrity.get("mixed_files_total", 0)}


class Aggregator(TelemetryReader):
    """Streaming aggregation of telemetry lines (bounded memory): the
    records of :meth:`TelemetryReader.records` summed into the report.

    Args:
        key: AES-256 key for encrypted lines (None: they are reported as ``no_key``).
        max_list: keep at most this many entries in the failed-unit,
            invalid-line and integrity-issue lists (totals stay exact).
        require_encrypted: refuse every plaintext line (code ``plaintext``);
            default: when a key is given.  Plaintext lines in a file holding
            an encrypted line are refused either way (module docstring).
    """

    def __init__(self, key: bytes | None = None, max_list: int = 1000,
                 require_encrypted: bool | None = None):
        super().__init__(key=key, max_list=max_list, require_encrypted=require_encrypted)
        # DMCA medians of the records' own core fields, and the DMCA rows of core-only records
        self.med_qps, self.med_lat, self.med_cost = MedianTracker(), MedianTracker(), MedianTracker()
        self.core_rows = CoreRows()
        self.cells: dict[tuple, GroupStats] = {}
        self.failed: list[dict] = []
        self.failed_total = 0

    # -- input
    def consume(self, path: str | os.PathLike, offset: int = 0, start_line: int = 0,
                tail: bool = False) -> tuple[int, int]:
        """Add the records of ``path`` (:meth:`TelemetryReader.records`, same
        arguments); returns ``(end_offset, last_line_number)``."""
        add = self._add
        for rec, fname, lineno in self.records(path, offset, start_line, tail):
            add(rec, fname, lineno)
        return self.position


    def _add(self, rec: dict, fname: str, lineno: int) -> None:
        hpc = rec.get("hpc")
        phys = rec.get("physics")
        material = phys.get("material", "unknown") if phys else "unknown"
        cost = _num(rec["infra_cost_usd"])
        qps, lat95 = _num(rec["qps"]), _num(rec["latency_p95_ms"])
        self.med_qps.add(qps)
        self.med_lat.add(lat95)
        self.med_cost.add(cost)
        ts = rec.get("timestamp")
        if hpc is not None:
            stage, rank, status = hpc["stage"], hpc["rank"], hpc["status"]
            wall, cpu = _num(hpc["wall_seconds"]), _num(hpc["cpu_seconds"])
            core = _num(hpc.get("core_seconds"), max(wall, cpu))
            mem = _num(hpc["peak_memory_mb"])
            lat = wall * 1e3
            job = hpc["job_id"]
        else:  # old-style / DMCA record: core fields only; it is a DMCA row by itself
            stage, rank, status = "unknown", "unknown", "ok"
            lat = lat95
            wall = lat / 1e3
            cpu, core, mem = 0.0, wall, 0.0
            job = None
            self.core_rows.add(qps, lat95, cost)
        # one update per record into the (stage, material, rank, job, step, intervention)
        # cell; the stage, material, rank, DMCA-row and total groups are merged from the
        # cells at report time (memory grows with the number of distinct cells, not lines)
        ck = (stage, material, rank, job, rec["step"], rec["intervention"])
        g = self.cells.get(ck)
        if g is None:
            g = self.cells[ck] = GroupStats()
        g.add(status, cost, wall, cpu, core, mem, float(ts) if ts is not None else None, lat)
        if status == "failed":
            self.failed_total += 1
            if len(self.failed) < self.max_list:
                self.failed.append({"file": fname, "line": lineno, "job_id": hpc["job_id"],
                                    "rank": hpc["rank"], "stage": stage, "material": material,
                                    "unit": hpc["unit"], "error": hpc.get("error")})

    def groups(self) -> tuple[GroupStats, dict, dict, dict]:
        """(total, by stage, by material, by rank) merged from the cells."""
        total, st, ma, ra = GroupStats(), {}, {}, {}
        for (stage, material, rank, _job, _step, _iv), c in self.cells.items():
            total.merge(c)
            for table, k in ((st, stage), (ma, material), (ra, str(rank))):
                g = table.get(k)
                if g is None:
                    g = table[k] = GroupStats()
                g.merge(c)
        return total, st, ma, ra

    def hpc_rows(self) -> dict:
        """DMCA rows of the HPC records: (stage, job_id, step, intervention) -> GroupStats."""
        rows: dict[tuple, GroupStats] = {}
        for (stage, _m, _r, job, step, iv), c in self.cells.items():
            if job is None:
                continue
            k = (stage, job, step, iv)
            g = rows.get(k)
            if g is None:
                g = rows[k] = GroupStats()
            g.merge(c)
        return rows

    def days_since_change(self) -> float | None:
        """Days from the first unit start of the latest (step, intervention) to the
        latest unit end, both from the record timestamps; None without timestamps."""
        spans: dict[tuple, list] = {}
        for (_s, _m, _r, _j, step, iv), c in self.cells.items():
            if c.t1 < c.t0:
                continue
            sp = spans.setdefault((repr(step), iv), [math.inf, -math.inf])
            sp[0], sp[1] = min(sp[0], c.t0), max(sp[1], c.t1)
        if not spans:
            return None
        t0, t1 = max(spans.values(), key=lambda v: v[1])
        return max(t1 - t0, 0.0) / 86400.0

    # -- output
    def dmca_rows(self) -> tuple[list[dict], float | None, float | None]:
        """DMCA rows with their FTI and grade, the sum and the number of defined
        row FTIs, including the core-only records (module docstring)."""
        rows = []
        for (stage, job, step, iv), g in sorted(self.hpc_rows().items(), key=lambda kv: repr(kv[0])):
            sm = g.summary()
            rows.append({"group": f"stage:{stage}", "stage": stage, "job_id": job, "step": step,
                         "intervention": iv, "records": g.n, "ok": g.ok,
                         "qps": sm["throughput_units_per_s"], "latency_p95_ms": sm["latency_p95_ms"],
                         "infra_cost_usd": sm["cost_per_ok_unit_usd"]})
        by_group: dict[str, list[dict]] = {}
        for r in rows:
            by_group.setdefault(r["group"], []).append(r)
        import statistics
        total, n_def = 0.0, 0
        for grp in by_group.values():
            good = [r for r in grp if r["ok"] and r["qps"] is not None and r["latency_p95_ms"] is not None]
            med = tuple(statistics.median([r[k] for r in good]) for k in ("infra_cost_usd", "qps", "latency_p95_ms")) \
                if good else None
            ids = {id(r) for r in good}
            for r in grp:
                f = dmca_fti(r["infra_cost_usd"], r["qps"], r["latency_p95_ms"], med) if id(r) in ids else None
                if f is not None and not math.isfinite(f):
                    f = None
                r["fti"], r["fti_grade"] = f, fti_grade(f)
                if f is not None:
                    total += f
                    n_def += 1
        core_sum, core_max = self.core_rows.fti()
        if core_sum is not None:
            total += core_sum
            n_def += self.core_rows.n
            rows.append({"group": "core-only records", "records": self.core_rows.n,
                         "fti_mean": core_sum / self.core_rows.n, "fti_max": core_max,
                         "fti_grade": fti_grade(core_max),
                         "medians": {"qps": self.core_rows.qps.median(),
                                     "latency_p95_ms": self.core_rows.lat.median(),
                                     "infra_cost_usd": self.core_rows.cost.median()}})
        return rows, (total if n_def else None), n_def

    def report(self, baseline: dict | None = None, fti_max: float = FTI_WARN,
               max_failures: int = 0, max_invalid: int = 0, lambda_params: dict | None = None) -> dict:
        """The report dict (module docstring defines every figure).

        ``baseline``: {stage: {"cost_per_ok_unit_usd": c0, "latency_p50_ms": L0}}
        (a previous report's ``stages`` works as is); stages not in it use the
        run itself as baseline.  ``lambda_params``: DMCA lambda_effective
        parameters over :func:`lambda_defaults`."""
        baseline = baseline or {}
        total, by_stage, by_material, by_rank = self.groups()
        out = {"count": total.n,
               "medians": {"qps": self.med_qps.median(), "latency_p95_ms": self.med_lat.median(),
                           "infra_cost_usd": self.med_cost.median()},
               "medians_exact": self.med_qps.exact}
        rows, fti_sum, n_def = self.dmca_rows()
        out["fti_avg"] = (fti_sum / n_def) if n_def else None
        out["fti_grade_worst"] = max((r["fti_grade"] for r in rows), key=_GRADE_RANK.__getitem__) if rows else None
        lam = lambda_effective(out["fti_avg"], self.days_since_change(), lambda_params)
        out["lambda_effective"] = lam.pop("lambda_effective")
        out["lambda"] = lam
        out["fti_rows"] = n_def
        out["dmca_rows_total"] = len(rows)
        out["dmca_rows"] = rows[:self.max_list]
        out.update(total.summary())
        out["records"] = total.n
        stages = {}
        weighted, wsum, plain = 0.0, 0.0, []
        worst = "OK" if by_stage else None
        for name in sorted(by_stage):
            g = by_stage[name]
            s = g.summary()
            b = baseline.get(name) or {}
            c0, L0 = b.get("cost_per_ok_unit_usd"), b.get("latency_p50_ms")
            source = "baseline" if (c0 is not None or L0 is not None) else "self"
            if g.ok == 0:
                fti = norm_cost = norm_perf = None
            else:
                c = g.cost / g.ok
                if c0 is None:
                    c0 = g.cost_ok / g.ok
                norm_cost = (c / c0) if c0 > 0 else (1.0 if c == 0 else math.inf)
                L = s["latency_p50_ms"] or 0.0
                if L0 is None:
                    L0 = L
                norm_perf = (L0 / L) if L > 0 else (1.0 if L0 == 0 else math.inf)
                fti = norm_cost / norm_perf if norm_perf > 0 else math.inf
                # JSON has no Infinity: an unbounded ratio is reported as null (grade FAIL)
                fti, norm_cost, norm_perf = (v if v is not None and math.isfinite(v) else None
                                             for v in (fti, norm_cost, norm_perf))
            grade = fti_grade(fti)
            s.update({"fti": fti, "fti_grade": grade, "fti_norm_cost": norm_cost,
                      "fti_norm_perf": norm_perf, "fti_baseline": source,
                      "fti_baseline_cost_per_unit_usd": c0, "fti_baseline_latency_ms": L0})
            if fti is not None:
                plain.append(fti)
                weighted += g.cost * fti
                wsum += g.cost
            if _GRADE_RANK[grade] > _GRADE_RANK[worst]:
                worst = grade
            stages[name] = s
        out["fti_stage_avg"] = (weighted / wsum) if wsum > 0 else (sum(plain) / len(plain) if plain else None)
        out["fti_stage_grade_worst"] = worst
        out["stages"] = stages
        out["materials"] = {k: by_material[k].summary() for k in sorted(by_material)}
        out["ranks"] = {k: by_rank[k].summary()
                        for k in sorted(by_rank, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r))}
        out["failed_units_total"] = self.failed_total
        out["failed_units"] = self.failed
        out["invalid_lines_total"] = self.invalid_total
        out["invalid_by_reason"] = dict(sorted(self.invalid_by_code.items()))
        out["invalid_lines"] = self.invalid
        out["lines"] = self.lines
        out["blank_lines"] = self.blank
        out["encrypted_records"] = self.encrypted
        out["files"] = self.files
        out["unreadable_files"] = self.unreadable
        out["skipped_files"] = self.skipped
        out["quantile_relative_error"] = total.lat.alpha
        integ = self.integrity()
        out["integrity"] = integ
        reasons = []
        if out["fti_avg"] is not None and out["fti_avg"] > fti_max:
            reasons.append(f"DMCA fti_avg {out['fti_avg']:.6g} > {fti_max} ({fti_grade(out['fti_avg'])})")
        for name, s in stages.items():
            if s["fti"] is None or s["fti"] > fti_max:
                reasons.append(f"stage {name}: FTI {s['fti'] if s['fti'] is not None else 'undefined'} "
                               f"> {fti_max} ({s['fti_grade']})")
        if self.failed_total > max_failures:
            reasons.append(f"{self.failed_total} failed units > {max_failures} allowed")
        if self.invalid_total > max_invalid:
            reasons.append(f"{self.invalid_total} invalid lines > {max_invalid} allowed")
        found = [f"{integ[k]} {what}" + (f" ({integ['missing_records']} records missing)" if k == "gaps_total"
                                          else "")
                 for k, what in (("gaps_total", "gaps"), ("reorders_total", "reorders"),
                                 ("duplicates_total", "duplicates"), ("foreign_total", "foreign lines"),
                                 ("mixed_files_total", "mixed files")) if integ[k]]
        if found:
            reasons.append("stream integrity: " + ", ".join(found))
        if integ["untracked_records"]:
            reasons.append(f"{integ['untracked_records']} records not checked for gaps/replays "
                           f"(more than {self.seqcheck.max_intervals} seq intervals)")
        if self.unreadable:
            reasons.append(f"{len(self.unreadable)} unreadable files")
        out["gate"] = {"breached": bool(reasons), "reasons": reasons, "fti_max": fti_max,
                       "max_failures": max_failures, "max_invalid": max_invalid}
        return finite_json(out)


def finite_json(obj):
    """``obj`` with every NaN / infinite float replaced by None (JSON has
    neither; sums of huge finite values can still overflow)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_json(v) for v in obj]
    return obj


#: names of the files a run writes into its telemetry directory (dmca_hpc.monitoring.telemetry)
MERGED_NAME = "telemetry.jsonl"
RANK_GLOB = "rank-*.jsonl"

_NOT_REGULAR = ("not a regular file ({kind}): a run writes only regular telemetry files and "
                "reading this one could block forever; not read")


def _kind(p: Path) -> str | None:
    """None for a regular file (or a path that does not exist), else what it is."""
    try:
        mode = p.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a directory" if stat.S_ISDIR(mode) else "a device")


def _run_file(p: Path) -> bool:
    return p.name == MERGED_NAME or fnmatch.fnmatch(p.name, RANK_GLOB)


def _whole_lines_size(fh, size: int) -> int:
    """Bytes up to and including the last newline of a file of ``size`` bytes."""
    pos = size
    while pos > 0:
        n = min(1 << 16, pos)
        pos -= n
        fh.seek(pos)
        i = fh.read(n).rfind(b"\n")
        if i >= 0:
            return pos + i + 1
    return 0


def merged_matches(merged: Path, ranks: list[Path]) -> bool:
    """True if ``merged`` is exactly the whole lines of ``ranks`` in order
    (what :func:`dmca_hpc.monitoring.telemetry.merge_rank_files` writes);
    streamed in blocks, memory bounded."""
    try:
        with open(merged, "rb") as m:
            for r in ranks:
                with open(r, "rb") as fh:
                    left = _whole_lines_size(fh, os.fstat(fh.fileno()).st_size)
                    fh.seek(0)
                    while left:
                        a = fh.read(min(1 << 20, left))
                        if not a or m.read(len(a)) != a:
                            return False
                        left -= len(a)
            return m.read(1) == b""
    except OSError:
        return False


def select_inputs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[dict], list[dict]]:
    """(files to read, skipped, refused) for the given paths (module
    docstring, "Inputs"): directories expanded, non-regular run files
    skipped, the merged file of a directory whose rank files are also given
    either used alone (it is their exact merge: the rank files are skipped)
    or refused (the rank files are read).  ``skipped`` and ``refused`` are
    ``{"file", "reason"}`` entries."""
    files: list[Path] = []
    skipped: list[dict] = []
    for p in map(Path, paths):
        if p.is_dir():
            merged = p / MERGED_NAME
            cands = [merged] if merged.is_file() else sorted(p.glob(RANK_GLOB))
        else:
            cands = [p]
        for c in cands:
            kind = _kind(c) if (p.is_dir() or _run_file(c)) else None
            if kind:
                skipped.append({"file": str(c), "reason": _NOT_REGULAR.format(kind=kind)})
            elif c not in files:
                files.append(c)
    refused: list[dict] = []
    where = lambda f: os.path.realpath(f.parent)  # noqa: E731  (./x and /abs/x are one directory)
    merged_given = [f for f in files if f.name == MERGED_NAME]
    for m in merged_given:
        given = [f for f in files if fnmatch.fnmatch(f.name, RANK_GLOB) and where(f) == where(m)]
        if not given or not m.is_file():
            continue
        every = sorted(x for x in m.parent.glob(RANK_GLOB) if x.is_file())
        if merged_matches(m, every):
            for f in given:
                files.remove(f)
                skipped.append({"file": str(f), "reason": f"its records are in {m} (the run's merge "
                                                          "of its rank files); counted once"})
        else:
            files.remove(m)
            refused.append({"file": str(m), "reason": f"holds records of the rank files given with it "
                                                      f"({len(given)} of {m.parent}) but is not their "
                                                      "exact merge; not read, so nothing is counted "
                                                      "twice: pass the merged file or the rank files, "
                                                      "not both"})
    return files, skipped, refused


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to read (:func:`select_inputs` without its skip reasons): a
    directory stands for its merged ``telemetry.jsonl`` when present, else
    its ``rank-*.jsonl`` files (never both: that would count every record
    twice)."""
    return select_inputs(paths)[0]


def iter_records(paths: Iterable[str | os.PathLike],
                 reader: TelemetryReader) -> Iterator[tuple[dict, str, int]]:
    """Yield ``(record, file, line)`` for every record of the telemetry
    ``paths`` that ``collect`` counts: inputs chosen as the collector chooses
    them (:func:`select_inputs`; a refused merged file is listed in
    ``reader.unreadable``, skipped files in ``reader.skipped``), lines read
    under ``reader``'s key and plaintext policy, each stream's seq once (a
    replayed line is refused as ``duplicate``).  What was refused is in
    ``reader`` afterwards (:meth:`TelemetryReader.input_summary`,
    :meth:`TelemetryReader.refusal_line`)."""
    files, skipped, refused = select_inputs(paths)
    reader.skipped.extend(skipped)
    reader.unreadable.extend(refused)
    for p in files:
        yield from reader.records(p)


def load_baseline(path: str | os.PathLike) -> dict:
    """Per-stage baseline from a previous ``collect --json`` report, or a
    plain {stage: {cost_per_ok_unit_usd, latency_p50_ms}} mapping."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    stages = data.get("stages", data) if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        raise ValueError(f"{path}: expected a collect --json report or a {{stage: {{cost_per_ok_unit_usd, "
                         f"latency_p50_ms}}}} object")
    return {k: {"cost_per_ok_unit_usd": v.get("cost_per_ok_unit_usd"), "latency_p50_ms": v.get("latency_p50_ms")}
            for k, v in stages.items() if isinstance(v, dict)}


def collect(paths: Iterable[str | os.PathLike], key: bytes | None = None, baseline: dict | None = None,
            fti_max: float = FTI_WARN, max_failures: int = 0, max_invalid: int = 0,
            max_list: int = 1000, lambda_params: dict | None = None,
            require_encrypted: bool | None = None) -> dict:
    """Read telemetry files and return the report dict (see module docstring);
    ``require_encrypted`` as in :class:`Aggregator` (default: when ``key`` is given)."""
    agg = Aggregator(key=key, max_list=max_list, require_encrypted=require_encrypted)
    add = agg._add
    for rec, fname, lineno in iter_records(paths, agg):
        add(rec, fname, lineno)
    return agg.report(baseline=baseline, fti_max=fti_max, max_failures=max_failures,
                      max_invalid=max_invalid, lambda_params=lambda_params)


def write_run_summary(tel_path: str | os.PathLike, run_dir: str | os.PathLike,
                      baseline: dict | None = None, section: dict | None = None) -> dict:
    """Collect a run's merged telemetry and write ``telemetry_summary.json`` and
    ``telemetry_summary.md`` into ``run_dir`` (atomically).  Encrypted lines are
    read with ``$DMCA_TELEMETRY_KEY`` when set; plaintext lines are refused when
    it is set or the job encrypts (``telemetry.encrypt``).  ``section``: the job's
    ``telemetry:`` section (its ``encrypt``, ``fti_max``, ``fti_baseline`` and
    ``lambda_effective`` are used; ``baseline`` wins over ``fti_baseline``).
    Returns the paths and the headline figures (for the pipeline's run.json)."""
    from dmca_hpc.hpc.checkpoint import atomic_path
    from dmca_hpc.monitoring.telemetry import KEY_ENV, load_key
    sec = dict(section or {})
    key = load_key() if os.environ.get(KEY_ENV) else None
    base = baseline or sec.get("fti_baseline") or None
    rep = collect([tel_path], key=key, baseline=base,
                  fti_max=float(sec.get("fti_max", FTI_WARN)), lambda_params=sec.get("lambda_effective"),
                  require_encrypted=bool(sec.get("encrypt")) or key is not None)
    run_dir = Path(run_dir)
    pj, pm = run_dir / "telemetry_summary.json", run_dir / "telemetry_summary.md"
    with atomic_path(pj) as tmp:
        Path(tmp).write_text(json.dumps(rep, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    with atomic_path(pm) as tmp:
        Path(tmp).write_text(render_markdown(rep), encoding="utf-8")
    return {"telemetry_summary": str(pj), "telemetry_summary_md": str(pm), "cost_usd": rep["cost_usd"],
            "latency_p95_ms": rep["latency_p95_ms"], "failed_units": rep["failed_units_total"],
            "invalid_telemetry_lines": rep["invalid_lines_total"], "fti_avg": rep["fti_avg"],
            "fti_grade_worst": rep["fti_grade_worst"], "lambda_effective": rep["lambda_effective"],
            "throughput_units_per_s": rep["throughput_units_per_s"], "fti_stage_avg": rep["fti_stage_avg"],
            "fti_stage_grade_worst": rep["fti_stage_grade_worst"], "fti_baseline": base,
            "telemetry_integrity_issues": rep["integrity"]["issues_total"]}


# --------------------------------------------------------------------------- rendering

def _f(v, fmt="{:.4g}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt.format(v)
    return str(v)


def render_markdown(rep: dict) -> str:
    """Markdown report: totals, per-stage / material / rank tables, failures, stream integrity, invalid lines."""
    L = ["# dmca_hpc telemetry report", ""]
    L.append(f"Files: {', '.join(rep['files']) or '-'}  ")
    L.append(f"Records: {rep['records']} valid ({rep['encrypted_records']} encrypted), "
             f"{rep['invalid_lines_total']} invalid, {rep['failed_units_total']} failed units  ")
    L.append(f"Cost: {_f(rep['cost_usd'], '{:.6g}')} USD; latency p50 {_f(rep['latency_p50_ms'])} ms, "
             f"p95 {_f(rep['latency_p95_ms'])} ms (+-{rep['quantile_relative_error']*100:g} %)  ")
    L.append(f"Span {_f(rep['span_seconds'])} s; qps {_f(rep['qps'])} /s; throughput "
             f"{_f(rep['throughput_units_per_s'])} successful units/s; mean concurrency {_f(rep['concurrency_mean'])}  ")
    m = rep["medians"]
    L.append(f"DMCA: count {rep['count']}; medians qps {_f(m['qps'])}, latency_p95_ms {_f(m['latency_p95_ms'])}, "
             f"infra_cost_usd {_f(m['infra_cost_usd'])}; FTI avg {_f(rep['fti_avg'])}, worst grade "
             f"**{rep['fti_grade_worst'] or '-'}**; lambda_effective {_f(rep['lambda_effective'])} "
             f"(SIBG {_f(rep['lambda']['lambda_sibg'])}, ASDPI {_f(rep['lambda']['lambda_asdpi_per_day'])} /day, "
             f"{_f(rep['lambda']['days_since_change'])} days since change)  ")
    L.append(f"Stage FTI avg {_f(rep['fti_stage_avg'])}, worst stage grade {rep['fti_stage_grade_worst'] or '-'}; gate: "
             f"{'BREACHED: ' + '; '.join(rep['gate']['reasons']) if rep['gate']['breached'] else 'ok'}")
    L.append("")
    L.append("## Stages")
    L.append("")
    L.append("| stage | records | ok | failed | cost USD | wasted USD | p50 ms | p95 ms | throughput /s | FTI | grade |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for k, s in rep["stages"].items():
        L.append(f"| {k} | {s['records']} | {s['ok']} | {s['failed']} | {_f(s['cost_usd'])} | "
                 f"{_f(s['wasted_cost_usd'])} | {_f(s['latency_p50_ms'])} | {_f(s['latency_p95_ms'])} | "
                 f"{_f(s['throughput_units_per_s'])} | {_f(s['fti'])} | {s['fti_grade']} |")
    hpc_rows = [r for r in rep["dmca_rows"] if "stage" in r]
    if hpc_rows:
        L += ["", "## DMCA rows (one per stage, job, step and intervention)", "",
              "| stage | job | step | intervention | records | qps /s | p95 ms | USD per ok unit | FTI | grade |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in hpc_rows:
            L.append(f"| {r['stage']} | {r['job_id']} | {r['step']} | {r['intervention']} | {r['records']} | "
                     f"{_f(r['qps'])} | {_f(r['latency_p95_ms'])} | {_f(r['infra_cost_usd'])} | {_f(r['fti'])} | "
                     f"{r['fti_grade']} |")
    for title, key in (("Materials", "materials"), ("Ranks", "ranks")):
        L += ["", f"## {title}", "",
              f"| {key[:-1]} | records | ok | failed | cost USD | p50 ms | p95 ms | peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k, s in rep[key].items():
            L.append(f"| {k} | {s['records']} | {s['ok']} | {s['failed']} | {_f(s['cost_usd'])} | "
                     f"{_f(s['latency_p50_ms'])} | {_f(s['latency_p95_ms'])} | {_f(s['peak_memory_mb_max'])} |")
    if rep["failed_units"]:
        L += ["", f"## Failed units ({rep['failed_units_total']})", "",
              "| file:line | stage | material | rank | unit | error |", "|---|---|---|---:|---|---|"]
        for f in rep["failed_units"]:
            err = (f["error"] or "").replace("|", "\\|").replace("\n", " ")[:200]
            L.append(f"| {f['file']}:{f['line']} | {f['stage']} | {f['material']} | {f['rank']} | {f['unit']} | {err} |")
    ig = rep.get("integrity")
    if ig:
        L += ["", "## Stream integrity", "",
              f"{ig['streams']} streams, {ig['sequenced_records']} sequenced records "
              f"({ig['unsequenced_records']} unsequenced, {ig['v1_envelopes']} version-1 envelopes); "
              f"{ig['gaps_total']} gaps ({ig['missing_records']} records missing), {ig['reorders_total']} "
              f"reorders, {ig['duplicates_total']} duplicates, {ig['foreign_total']} foreign, "
              f"{ig['mixed_files_total']} mixed files; plaintext lines {ig['plaintext_policy']} "
              f"({ig['plaintext_refused']} refused)"]
        if ig["issues"]:
            L += ["", "| file:line | issue | stream | seq | reason |", "|---|---|---|---:|---|"]
            for e in ig["issues"]:
                stream = f"{e['run_id']}/{e['rank']}" if "run_id" in e else "-"
                L.append(f"| {e['file']}:{e['line']} | {e['kind']} | {stream} | {e.get('seq', '-')} | "
                         f"{e['reason'].replace('|', '/')[:200]} |")
    if rep["invalid_lines"]:
        L += ["", f"## Invalid lines ({rep['invalid_lines_total']})", "",
              "| file:line | code | reason |", "|---|---|---|"]
        for b in rep["invalid_lines"]:
            L.append(f"| {b['file']}:{b['line']} | {b['code']} | {b['reason'].replace('|', '/')[:200]} |")
    if rep["unreadable_files"]:
        L += ["", "## Unreadable files", ""] + [f"- {u['file']}: {u['reason']}" for u in rep["unreadable_files"]]
    if rep.get("skipped_files"):
        L += ["", "## Skipped files", ""] + [f"- {u['file']}: {u['reason']}" for u in rep["skipped_files"]]
    return "\n".join(L) + "\n"


def render_text(rep: dict) -> str:
    """Short plain-text summary (default output)."""
    lines = [f"records {rep['records']}  invalid {rep['invalid_lines_total']}  failed {rep['failed_units_total']}  "
             f"cost {_f(rep['cost_usd'], '{:.6g}')} USD  p95 {_f(rep['latency_p95_ms'])} ms  "
             f"qps {_f(rep['qps'])}  throughput {_f(rep['throughput_units_per_s'])}/s  "
             f"FTI avg {_f(rep['fti_avg'])} worst {rep['fti_grade_worst'] or '-'}  "
             f"lambda_effective {_f(rep['lambda_effective'])}"]
    for k, s in rep["stages"].items():
        lines.append(f"  stage {k:<12} n={s['records']:<8} ok={s['ok']:<8} failed={s['failed']:<6} "
                     f"cost={_f(s['cost_usd'])} p95={_f(s['latency_p95_ms'])}ms FTI={_f(s['fti'])} {s['fti_grade']}")
    for f in rep["failed_units"][:20]:
        lines.append(f"  FAILED {f['file']}:{f['line']} {f['stage']}/{f['unit']} rank {f['rank']}: {f['error']}")
    ig = rep.get("integrity")
    if ig and (ig["streams"] or ig["issues_total"] or ig["v1_envelopes"] or ig["plaintext_refused"]):
        lines.append(f"  integrity: {ig['streams']} streams, {ig['sequenced_records']} sequenced records, "
                     f"{ig['unsequenced_records']} unsequenced ({ig['v1_envelopes']} v1 envelopes); "
                     f"{ig['gaps_total']} gaps, {ig['reorders_total']} reorders, {ig['duplicates_total']} "
                     f"duplicates, {ig['foreign_total']} foreign, {ig['mixed_files_total']} mixed; "
                     f"{ig['plaintext_refused']} plaintext lines refused")
        for e in ig["issues"][:20]:
            if e["kind"] != "duplicate":  # a duplicate is listed below as an invalid line
                lines.append(f"  {e['kind'].upper()} {e['file']}:{e['line']} {e['reason']}")
    for b in rep["invalid_lines"][:20]:
        lines.append(f"  INVALID {b['file']}:{b['line']} [{b['code']}] {b['reason']}")
    more = rep["invalid_lines_total"] - min(20, len(rep["invalid_lines"]))
    if more > 0:
        lines.append(f"  ... {more} more invalid lines (use --json)")
    for u in rep["unreadable_files"]:
        lines.append(f"  UNREADABLE {u['file']}: {u['reason']}")
    for u in rep.get("skipped_files", []):
        lines.append(f"  SKIPPED {u['file']}: {u['reason']}")
    if rep["gate"]["breached"]:
        lines.append("  gate breached: " + "; ".join(rep["gate"]["reasons"]))
    return "\n".join(lines) + "\n"
