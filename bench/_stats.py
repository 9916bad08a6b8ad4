"""Shared by the benchmarks: nearest-rank percentiles and the results file."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while this VM wanted it (all CPUs, /proc/stat).

    Benchmarks report its growth per measured round: a round with steal time was partly
    measuring the host, not us.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    steal = int(fields[8]) if len(fields) > 8 else 0
    return steal / os.sysconf("SC_CLK_TCK")


def write_results(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
