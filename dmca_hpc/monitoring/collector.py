"""Standalone telemetry collector: ``dmca-hpc collect FILE... [--json] [--markdown] [--gate]``.

Reads telemetry JSONL files (plaintext, AES-GCM-encrypted or mixed; see
:mod:`dmca_hpc.monitoring.telemetry`) in one streaming pass and reports what the run
cost, how fast it went and what failed.  It needs neither MPI, PySCF nor
Numba (it imports none of them, nor numpy) and never crashes on bad input:
every line that is not a valid record (binary garbage, broken JSON, a
truncated last line, a schema violation, a wrong key, an altered encrypted
line) is counted and listed with its file, line number and reason.

Definitions (all figures in the ``--json`` object)
--------------------------------------------------
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
lambda_effective
    effective throughput [units/s] = successful units / T.  In queueing
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
fti_avg
    cost-weighted mean of the stage FTIs, sum(C_s FTI_s) / sum(C_s), so the
    figure follows where the money went (unweighted mean when nothing cost
    anything); ``fti_grade_worst`` is the worst stage grade.

Quantiles use a DDSketch-style log-binned histogram with relative accuracy
alpha = 0.5 %: memory is O(log(max/min)/alpha) per group (about 3,000
counters for 1 us .. 1e6 s), independent of the number of lines, and the
reported quantile q is within 0.5 % (relative) of the exact order statistic
x_(floor(q (n-1))) (``numpy.quantile(..., method="lower")``).  Lists of
failed units and invalid lines keep the first ``--max-list`` entries (the
totals are always exact), so memory is bounded for any input size.

Gate (``--gate``): exit code 1 when any stage FTI exceeds ``--fti-max``
(default 1.05, the FAIL threshold), failed units exceed ``--max-failures``
(default 0) or invalid lines exceed ``--max-invalid`` (default 0: a tampered
or undecryptable line is a breach).  Exit code 2 for unreadable input
files or bad arguments; 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

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
                return 2.0 * self.gamma ** k / (self.gamma + 1.0)
        return 2.0 * self.gamma ** max(self.bins) / (self.gamma + 1.0)  # pragma: no cover


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
            "lambda_effective": (self.ok / T) if T > 0 else None,
            "concurrency_mean": (self.wall / T) if T > 0 else None,
        }


def _num(v, default=0.0) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


class Aggregator:
    """Streaming aggregation of telemetry lines (bounded memory).

    Args:
        key: AES-256 key for encrypted lines (None: they are reported as ``no_key``).
        max_list: keep at most this many entries in the failed-unit and
            invalid-line lists (totals stay exact).
    """

    def __init__(self, key: bytes | None = None, max_list: int = 1000):
        from dmca_hpc.monitoring.telemetry import LineDecoder
        self.decoder = LineDecoder(key=key, validate=True)
        self.max_list = int(max_list)
        self.lines = 0
        self.blank = 0
        self.encrypted = 0
        self.cells: dict[tuple, GroupStats] = {}
        self.invalid: list[dict] = []
        self.invalid_total = 0
        self.invalid_by_code: dict[str, int] = {}
        self.failed: list[dict] = []
        self.failed_total = 0
        self.files: list[str] = []
        self.unreadable: list[dict] = []

    # -- input
    def _bad(self, fname: str, lineno: int, code: str, reason: str) -> None:
        self.invalid_total += 1
        self.invalid_by_code[code] = self.invalid_by_code.get(code, 0) + 1
        if len(self.invalid) < self.max_list:
            self.invalid.append({"file": fname, "line": lineno, "code": code, "reason": reason})

    def consume(self, path: str | os.PathLike, offset: int = 0, start_line: int = 0,
                tail: bool = False) -> tuple[int, int]:
        """Read ``path`` from byte ``offset`` (line numbers continue from
        ``start_line``); returns ``(end_offset, last_line_number)``.  With
        ``tail`` an unfinished last line is left for the next call (live
        files); otherwise it is reported as truncated unless it parses.
        An unreadable file is recorded in ``unreadable`` (never raises)."""
        from dmca_hpc.monitoring.telemetry import LineError, MAX_LINE_BYTES, iter_raw_lines
        fname = str(path)
        if fname not in self.files:
            self.files.append(fname)
        decode = self.decoder.decode
        add = self._add
        end, last = offset, start_line
        try:
            with open(path, "rb") as fh:
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
                        rec, enc = decode(raw, complete)
                    except LineError as exc:
                        self._bad(fname, lineno, exc.code, str(exc))
                        continue
                    if enc:
                        self.encrypted += 1
                    add(rec, fname, lineno)
        except OSError as exc:
            self.unreadable.append({"file": fname, "reason": f"{type(exc).__name__}: {exc.strerror or exc}"})
        return end, last

    def _add(self, rec: dict, fname: str, lineno: int) -> None:
        hpc = rec.get("hpc")
        phys = rec.get("physics")
        material = phys.get("material", "unknown") if phys else "unknown"
        cost = _num(rec["infra_cost_usd"])
        ts = rec.get("timestamp")
        if hpc is not None:
            stage, rank, status = hpc["stage"], hpc["rank"], hpc["status"]
            wall, cpu = _num(hpc["wall_seconds"]), _num(hpc["cpu_seconds"])
            core = _num(hpc.get("core_seconds"), max(wall, cpu))
            mem = _num(hpc["peak_memory_mb"])
            lat = wall * 1e3
        else:  # old-style record: core fields only
            stage, rank, status = "unknown", "unknown", "ok"
            lat = _num(rec["latency_p95_ms"])
            wall = lat / 1e3
            cpu, core, mem = 0.0, wall, 0.0
        # one update per record into the (stage, material, rank) cell; the stage,
        # material, rank and total groups are merged from the cells at report time
        # (4x fewer updates; memory grows with the number of distinct cells, not lines)
        ck = (stage, material, rank)
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
        for (stage, material, rank), c in self.cells.items():
            total.merge(c)
            for table, k in ((st, stage), (ma, material), (ra, str(rank))):
                g = table.get(k)
                if g is None:
                    g = table[k] = GroupStats()
                g.merge(c)
        return total, st, ma, ra

    # -- output
    def report(self, baseline: dict | None = None, fti_max: float = FTI_WARN,
               max_failures: int = 0, max_invalid: int = 0) -> dict:
        """The report dict (module docstring defines every figure).

        ``baseline``: {stage: {"cost_per_ok_unit_usd": c0, "latency_p50_ms": L0}}
        (a previous report's ``stages`` works as is); stages not in it use the
        run itself as baseline."""
        baseline = baseline or {}
        total, by_stage, by_material, by_rank = self.groups()
        out = total.summary()
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
        out["fti_avg"] = (weighted / wsum) if wsum > 0 else (sum(plain) / len(plain) if plain else None)
        out["fti_grade_worst"] = worst
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
        out["quantile_relative_error"] = total.lat.alpha
        reasons = []
        for name, s in stages.items():
            if s["fti"] is None or s["fti"] > fti_max:
                reasons.append(f"stage {name}: FTI {s['fti'] if s['fti'] is not None else 'undefined'} "
                               f"> {fti_max} ({s['fti_grade']})")
        if self.failed_total > max_failures:
            reasons.append(f"{self.failed_total} failed units > {max_failures} allowed")
        if self.invalid_total > max_invalid:
            reasons.append(f"{self.invalid_total} invalid lines > {max_invalid} allowed")
        if self.unreadable:
            reasons.append(f"{len(self.unreadable)} unreadable files")
        out["gate"] = {"breached": bool(reasons), "reasons": reasons, "fti_max": fti_max,
                       "max_failures": max_failures, "max_invalid": max_invalid}
        return out


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to read: a directory stands for its merged ``telemetry.jsonl``
    when present, else its ``rank-*.jsonl`` files (never both: that would
    count every record twice)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            merged = p / "telemetry.jsonl"
            out.extend([merged] if merged.is_file() else sorted(p.glob("rank-*.jsonl")))
        else:
            out.append(p)
    return out


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
            max_list: int = 1000) -> dict:
    """Read telemetry files and return the report dict (see module docstring)."""
    agg = Aggregator(key=key, max_list=max_list)
    for p in expand_inputs(paths):
        agg.consume(p)
    return agg.report(baseline=baseline, fti_max=fti_max, max_failures=max_failures,
                      max_invalid=max_invalid)


def write_run_summary(tel_path: str | os.PathLike, run_dir: str | os.PathLike,
                      baseline: dict | None = None) -> dict:
    """Collect a run's merged telemetry and write ``telemetry_summary.json`` and
    ``telemetry_summary.md`` into ``run_dir`` (atomically).  Encrypted lines are
    read with ``$DMCA_TELEMETRY_KEY`` when set.  Returns the paths and the
    headline figures (for the pipeline's run.json)."""
    from dmca_hpc.hpc.checkpoint import atomic_path
    from dmca_hpc.monitoring.telemetry import KEY_ENV, load_key
    key = load_key() if os.environ.get(KEY_ENV) else None
    rep = collect([tel_path], key=key, baseline=baseline)
    run_dir = Path(run_dir)
    pj, pm = run_dir / "telemetry_summary.json", run_dir / "telemetry_summary.md"
    with atomic_path(pj) as tmp:
        Path(tmp).write_text(json.dumps(rep, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    with atomic_path(pm) as tmp:
        Path(tmp).write_text(render_markdown(rep), encoding="utf-8")
    return {"telemetry_summary": str(pj), "telemetry_summary_md": str(pm), "cost_usd": rep["cost_usd"],
            "latency_p95_ms": rep["latency_p95_ms"], "failed_units": rep["failed_units_total"],
            "invalid_telemetry_lines": rep["invalid_lines_total"], "fti_avg": rep["fti_avg"],
            "fti_grade_worst": rep["fti_grade_worst"], "lambda_effective": rep["lambda_effective"]}


# --------------------------------------------------------------------------- rendering

def _f(v, fmt="{:.4g}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt.format(v)
    return str(v)


def render_markdown(rep: dict) -> str:
    """Markdown report: totals, per-stage / material / rank tables, failures, invalid lines."""
    L = ["# dmca_hpc telemetry report", ""]
    L.append(f"Files: {', '.join(rep['files']) or '-'}  ")
    L.append(f"Records: {rep['records']} valid ({rep['encrypted_records']} encrypted), "
             f"{rep['invalid_lines_total']} invalid, {rep['failed_units_total']} failed units  ")
    L.append(f"Cost: {_f(rep['cost_usd'], '{:.6g}')} USD; latency p50 {_f(rep['latency_p50_ms'])} ms, "
             f"p95 {_f(rep['latency_p95_ms'])} ms (+-{rep['quantile_relative_error']*100:g} %)  ")
    L.append(f"Span {_f(rep['span_seconds'])} s; qps {_f(rep['qps'])} /s; lambda_effective "
             f"{_f(rep['lambda_effective'])} /s; mean concurrency {_f(rep['concurrency_mean'])}  ")
    L.append(f"FTI avg {_f(rep['fti_avg'])}, worst grade **{rep['fti_grade_worst'] or '-'}**; gate: "
             f"{'BREACHED: ' + '; '.join(rep['gate']['reasons']) if rep['gate']['breached'] else 'ok'}")
    L.append("")
    L.append("## Stages")
    L.append("")
    L.append("| stage | records | ok | failed | cost USD | wasted USD | p50 ms | p95 ms | lambda_eff /s | FTI | grade |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for k, s in rep["stages"].items():
        L.append(f"| {k} | {s['records']} | {s['ok']} | {s['failed']} | {_f(s['cost_usd'])} | "
                 f"{_f(s['wasted_cost_usd'])} | {_f(s['latency_p50_ms'])} | {_f(s['latency_p95_ms'])} | "
                 f"{_f(s['lambda_effective'])} | {_f(s['fti'])} | {s['fti_grade']} |")
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
    if rep["invalid_lines"]:
        L += ["", f"## Invalid lines ({rep['invalid_lines_total']})", "",
              "| file:line | code | reason |", "|---|---|---|"]
        for b in rep["invalid_lines"]:
            L.append(f"| {b['file']}:{b['line']} | {b['code']} | {b['reason'].replace('|', '/')[:200]} |")
    if rep["unreadable_files"]:
        L += ["", "## Unreadable files", ""] + [f"- {u['file']}: {u['reason']}" for u in rep["unreadable_files"]]
    return "\n".join(L) + "\n"


def render_text(rep: dict) -> str:
    """Short plain-text summary (default output)."""
    lines = [f"records {rep['records']}  invalid {rep['invalid_lines_total']}  failed {rep['failed_units_total']}  "
             f"cost {_f(rep['cost_usd'], '{:.6g}')} USD  p95 {_f(rep['latency_p95_ms'])} ms  "
             f"qps {_f(rep['qps'])}  lambda_eff {_f(rep['lambda_effective'])}  "
             f"FTI avg {_f(rep['fti_avg'])} worst {rep['fti_grade_worst'] or '-'}"]
    for k, s in rep["stages"].items():
        lines.append(f"  stage {k:<12} n={s['records']:<8} ok={s['ok']:<8} failed={s['failed']:<6} "
                     f"cost={_f(s['cost_usd'])} p95={_f(s['latency_p95_ms'])}ms FTI={_f(s['fti'])} {s['fti_grade']}")
    for f in rep["failed_units"][:20]:
        lines.append(f"  FAILED {f['file']}:{f['line']} {f['stage']}/{f['unit']} rank {f['rank']}: {f['error']}")
    for b in rep["invalid_lines"][:20]:
        lines.append(f"  INVALID {b['file']}:{b['line']} [{b['code']}] {b['reason']}")
    more = rep["invalid_lines_total"] - min(20, len(rep["invalid_lines"]))
    if more > 0:
        lines.append(f"  ... {more} more invalid lines (use --json)")
    for u in rep["unreadable_files"]:
        lines.append(f"  UNREADABLE {u['file']}: {u['reason']}")
    if rep["gate"]["breached"]:
        lines.append("  gate breached: " + "; ".join(rep["gate"]["reasons"]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dmca-hpc collect``."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="telemetry JSONL files (or run telemetry directories)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    parser.add_argument("--output", "-o", metavar="PATH", help="write the output to PATH instead of stdout")
    parser.add_argument("--gate", action="store_true",
                        help="exit 1 when FTI > --fti-max, failures > --max-failures or invalid lines > --max-invalid")
    parser.add_argument("--fti-max", type=float, default=FTI_WARN,
                        help=f"largest acceptable stage FTI for --gate [dimensionless] (default {FTI_WARN})")
    parser.add_argument("--max-failures", type=int, default=0, help="failed units tolerated by --gate (default 0)")
    parser.add_argument("--max-invalid", type=int, default=0, help="invalid lines tolerated by --gate (default 0)")
    parser.add_argument("--baseline", metavar="REPORT.json",
                        help="previous collect --json report (or {stage: {cost_per_ok_unit_usd, latency_p50_ms}}) "
                             "used as FTI baseline")
    parser.add_argument("--key-env", default=None, metavar="VAR",
                        help="environment variable with the AES key (base64 of 32 bytes; default DMCA_TELEMETRY_KEY)")
    parser.add_argument("--max-list", type=int, default=1000,
                        help="keep at most this many failed units / invalid lines in the lists (default 1000)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``dmca-hpc collect``; returns the exit code (0, 1 gate breached, 2 bad input)."""
    from dmca_hpc.monitoring.telemetry import KEY_ENV, KeyError_, load_key
    env = args.key_env or KEY_ENV
    key = None
    if os.environ.get(env):
        try:
            key = load_key(env)
        except KeyError_ as exc:
            print(f"dmca-hpc collect: {exc}", file=sys.stderr)
            return 2
    baseline = None
    if args.baseline:
        try:
            baseline = load_baseline(args.baseline)
        except (OSError, ValueError) as exc:
            print(f"dmca-hpc collect: cannot use --baseline {args.baseline}: {exc}", file=sys.stderr)
            return 2
    rep = collect(args.files, key=key, baseline=baseline, fti_max=args.fti_max,
                  max_failures=args.max_failures, max_invalid=args.max_invalid, max_list=args.max_list)
    parts = []
    if args.json:
        parts.append(json.dumps(rep, indent=1, allow_nan=False, default=str) + "\n")
    if args.markdown:
        parts.append(render_markdown(rep))
    if not parts:
        parts.append(render_text(rep))
    text = "".join(parts)
    if args.output:
        from dmca_hpc.hpc.checkpoint import atomic_path
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    for u in rep["unreadable_files"]:
        print(f"dmca-hpc collect: cannot read {u['file']}: {u['reason']}", file=sys.stderr)
    if rep["unreadable_files"]:
        return 2
    if args.gate and rep["gate"]["breached"]:
        print("dmca-hpc collect: gate breached: " + "; ".join(rep["gate"]["reasons"]), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dmca_hpc.monitoring.collector FILE...`` (same as ``dmca-hpc collect``)."""
    p = argparse.ArgumentParser(prog="dmca-hpc collect", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
