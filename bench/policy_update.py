"""Benchmark: policy update -> enforcement in N running devboxes (goal: p99 <= 5 ms at N=100).

`DataPlane.policy_updated` returns once the nft transaction rewriting the policy's shared
chain and sets is committed (and, as the update revokes something, learned addresses of
revoked names are removed and revoked flows cut), i.e. when enforcement is visible in every
devbox using the policy; the API calls it inside the update request. The two variants below
alternate, and each narrows the other (hostnames and CIDRs removed), so every measured update
takes the revocation path. Baseline in the same run: the same update with the policy used by
a single devbox, taking turns with the measured one (update by update), so that a slow spell
of the VM falls on both; the hypervisor's steal time over the run is recorded. Writes
bench/results/policy_update.json.
Needs root (namespaces, nftables); only namespaces it creates are touched.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._stats import percentile, steal_seconds, write_results  # noqa: E402

from simulator.dataplane import DataPlane, DataPlaneConfig  # noqa: E402
from simulator.policy_model import AllowedCidr, Egress, NetworkPolicy, PortRule  # noqa: E402
from simulator.runtime.base import DevboxSpec  # noqa: E402
from simulator.runtime.netns_runtime import NetnsRuntime  # noqa: E402
from simulator.world import WorldConfig  # noqa: E402

DEVBOXES = 100
UPDATES = 300  # each: p99 is then the 4th slowest, not the slowest

VARIANTS = [
    Egress(allowed_hostnames=("github.com", "*.npmjs.org"),
           allowed_cidrs=(AllowedCidr("192.0.2.0/24", (PortRule(443, None, "TCP"),)),)),
    Egress(allowed_hostnames=("github.com",),
           allowed_cidrs=(AllowedCidr("198.51.100.0/24", (PortRule(8000, 8100, None),)), AllowedCidr("203.0.113.7/32"))),
]



def measure(dataplane: DataPlane, policies: list[NetworkPolicy], count: int) -> list[list[float]]:
    """``count`` updates of each policy, taking turns; the milliseconds of each, per policy."""
    timings: list[list[float]] = [[] for _ in policies]
    for index in range(count):
        for which, policy in enumerate(policies):
            after = dataclasses.replace(policy, egress=VARIANTS[(index + 1) % 2], update_time_ms=index + 1)
            start = time.perf_counter()
            dataplane.policy_updated(policy, after)
            timings[which].append((time.perf_counter() - start) * 1000)
            policies[which] = after
    return timings


def main() -> int:
    policy_one = NetworkPolicy("npol_one", "bench", "one", None, VARIANTS[0], 0, 0)
    policy_many = NetworkPolicy("npol_many", "bench", "many", None, VARIANTS[0], 0, 0)
    world = WorldConfig.from_dict({"hosts": {"github.com": {"address": "192.0.2.10"}}})
    dataplane = DataPlane(DataPlaneConfig(instance=secrets.token_hex(3), world=world, subnet="10.90.0.0/16"))
    dataplane.start()
    runtime = NetnsRuntime(dataplane, Path(tempfile.mkdtemp(prefix="bench-policy-")))
    try:
        runtime.provision(DevboxSpec("dbx_bench_one", "bench", policy_one))
        provision = []
        for index in range(DEVBOXES):
            start = time.perf_counter()
            runtime.provision(DevboxSpec(f"dbx_bench_{index}", "bench", policy_many))
            provision.append((time.perf_counter() - start) * 1000)
        stolen, began = steal_seconds(), time.monotonic()
        baseline, many = measure(dataplane, [policy_one, policy_many], UPDATES)
        stolen, seconds = steal_seconds() - stolen, time.monotonic() - began
    finally:
        runtime.close()

    result = {
        "benchmark": "policy_update",
        "devboxes": DEVBOXES,
        "updates": UPDATES,
        "baseline_1_devbox": {"p50_ms": round(percentile(baseline, 50), 3), "p99_ms": round(percentile(baseline, 99), 3)},
        f"{DEVBOXES}_devboxes": {
            "p50_ms": round(percentile(many, 50), 3),
            "p99_ms": round(percentile(many, 99), 3),
            "mean_ms": round(statistics.fmean(many), 3),
        },
        "provision_ms_p50": round(percentile(provision, 50), 3),
        "vm_steal_ms_per_s": round(stolen * 1000 / seconds, 1),
        "goal": f"p99 <= 5 ms with {DEVBOXES} devboxes",
    }
    result["ratio_p50_vs_baseline"] = round(result[f"{DEVBOXES}_devboxes"]["p50_ms"] / result["baseline_1_devbox"]["p50_ms"], 2)
    result["goal_met"] = result[f"{DEVBOXES}_devboxes"]["p99_ms"] <= 5
    write_results("policy_update", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
