"""Telemetry: one JSON object per line, one line per unit of work.

Contract: config/telemetry.schema.json (DMCA core fields, HPC fields, optional
physics block).  Each rank appends to its own file ``rank-NNNNN.jsonl`` in
the run's telemetry directory with a single ``os.write`` of one whole line
(O_APPEND), and rank 0 merges the rank files into ``telemetry.jsonl`` at the
end of a run, so ranks never interleave partial lines.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

#: default price of one core-hour [USD], overridable per job (telemetry.price_per_core_hour_usd)
DEFAULT_PRICE_PER_CORE_HOUR_USD = 0.05

#: stage -> DMCA (domain, hypothesis) used when a record does not say otherwise
STAGE_DMCA = {
    "materials": ("materials", "none"),
    "dft": ("dm-electron", "none"),
    "bands": ("dm-electron", "none"),
    "formfactor": ("dm-electron", "DarkPhoton"),
    "dielectric": ("absorption", "DarkPhoton"),
    "rates": ("dm-electron", "DarkPhoton"),
    "nuclear": ("dm-nucleus", "WIMP"),
    "oracle": ("dft-oracle", "none"),
}


class Telemetry:
    """Writer of telemetry records for one rank (cost = core-seconds x price)."""

    def __init__(self, directory: str | os.PathLike, rank: int = 0, job_id: str | None = None,
                 price_per_core_hour_usd: float = DEFAULT_PRICE_PER_CORE_HOUR_USD,
                 step: str = "run", intervention: str = "baseline"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = int(rank)
        self.job_id = str(job_id or os.environ.get("SLURM_JOB_ID") or "local")
        self.price = float(price_per_core_hour_usd)
        self.step, self.intervention = step, intervention
        self.path = self.dir / f"rank-{self.rank:05d}.jsonl"

    def record(self, stage: str, unit: str, status: str, wall_s: float, cpu_s: float,
               peak_mem_mb: float, error: str | None = None,
               physics: Mapping[str, Any] | None = None,
               domain: str | None = None, hypothesis: str | None = None) -> dict:
        """Build, write (one atomic line) and return one record (times in s, memory in MiB)."""
        d, h = STAGE_DMCA.get(stage, ("dm-electron", "none"))
        cost = max(cpu_s, wall_s) / 3600.0 * self.price
        rec = {
            "timestamp": time.time(), "domain": domain or d, "hypothesis": hypothesis or h,
            "step": self.step, "intervention": self.intervention, "infra_cost_usd": cost,
            "qps": (1.0 / wall_s) if wall_s > 0 else 0.0, "latency_p95_ms": wall_s * 1e3,
            "hpc": {"job_id": self.job_id, "rank": self.rank, "stage": stage, "unit": str(unit),
                    "wall_seconds": wall_s, "cpu_seconds": cpu_s, "peak_memory_mb": peak_mem_mb,
                    "status": status, "error": error},
        }
        if physics:
            rec["physics"] = {k: v for k, v in physics.items() if v is not None}
        line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return rec

    def record_result(self, stage: str, result, physics: Mapping[str, Any] | None = None,
                      unit: str | None = None) -> dict:
        """Record a :class:`dmca_hpc.parallel.UnitResult`."""
        return self.record(stage, unit if unit is not None else str(result.unit),
                           "ok" if result.ok else "failed", result.wall_s, result.cpu_s,
                           result.peak_mem_mb, error=result.error, physics=physics)


def merge_rank_files(directory: str | os.PathLike, out_name: str = "telemetry.jsonl") -> Path:
    """Concatenate the per-rank files (rank order, whole lines only) atomically."""
    from .checkpoint import atomic_path
    d = Path(directory)
    out = d / out_name
    with atomic_path(out) as tmp, open(tmp, "wb") as dst:
        for p in sorted(d.glob("rank-*.jsonl")):
            with open(p, "rb") as src:
                for line in src:
                    if line.endswith(b"\n"):
                        dst.write(line)
    return out
