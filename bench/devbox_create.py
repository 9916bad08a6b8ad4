"""Benchmark: devbox create -> running through the API on the netns runtime.

Phase 1: 100 in a row (each shut down before the next). Phase 2: 500 held alive at once,
measuring how creation slows as devboxes accumulate (growth = p50 of the last 50 / p50 of the
first 50). Each create is `POST /v1/devboxes/create_and_await_running`, timed from request to
a `running` response. Baseline in the same run: `GET /healthz` on the same server.
Goals: p50 <= 25 ms, p95 <= 50 ms, growth <= 2x. Writes bench/results/devbox_create.json.
Needs root; uses an offline world, so no packet leaves the machine.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._stats import percentile, write_results  # noqa: E402
from tests.server import ServerProcess  # noqa: E402

IN_A_ROW = 100
HELD = 500
HEADERS = {"Authorization": "Bearer bench-devboxes"}



def stats(values):
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p95_ms": round(percentile(values, 95), 2),
        "max_ms": round(max(values), 2),
    }


def create(client: httpx.Client, body: dict) -> tuple[str, float]:
    start = time.perf_counter()
    response = client.post("/v1/devboxes/create_and_await_running", json=body, headers=HEADERS)
    elapsed = (time.perf_counter() - start) * 1000
    view = response.json()
    if response.status_code != 200 or view.get("status") != "running":
        raise RuntimeError(f"create failed: {response.status_code} {view}")
    return view["id"], elapsed


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world.toml"
        world.write_text('resolver = "198.51.100.53"\n[hosts."github.com"]\naddress = "192.0.2.10"\n')
        args = ("--runtime", "netns", "--world", str(world), "--subnet", "10.93.0.0/16")
        # Every request logged, as in production, to a file (see ServerProcess.log_file).
        with ServerProcess(Path(tmp) / "data", *args, log_file=Path(tmp) / "server.log") as server, httpx.Client(base_url=server.url, timeout=60) as client:
            policy = client.post("/v1/network-policies", json={"name": "bench", "allowed_hostnames": ["github.com"]},
                                 headers=HEADERS).json()
            body = {"launch_parameters": {"network_policy_id": policy["id"]}}
            baseline = []
            for _ in range(200):
                start = time.perf_counter()
                client.get("/healthz")
                baseline.append((time.perf_counter() - start) * 1000)
            in_a_row = []
            for _ in range(IN_A_ROW):
                devbox_id, elapsed = create(client, body)
                in_a_row.append(elapsed)
                client.post(f"/v1/devboxes/{devbox_id}/shutdown", headers=HEADERS)
            held, ids = [], []
            try:
                for _ in range(HELD):
                    devbox_id, elapsed = create(client, body)
                    held.append(elapsed)
                    ids.append(devbox_id)
            finally:
                shutdown = []
                for devbox_id in ids:
                    start = time.perf_counter()
                    client.post(f"/v1/devboxes/{devbox_id}/shutdown", headers=HEADERS)
                    shutdown.append((time.perf_counter() - start) * 1000)

    first, last = held[:50], held[-50:]
    result = {
        "benchmark": "devbox_create",
        "baseline_healthz": stats(baseline),
        "in_a_row_100": stats(in_a_row),
        "held_500": stats(held),
        "held_first_50": stats(first),
        "held_last_50": stats(last),
        "growth_last_vs_first_p50": round(percentile(last, 50) / percentile(first, 50), 2),
        "shutdown": stats(shutdown) if shutdown else None,
        "goal": "p50 <= 25 ms, p95 <= 50 ms, growth <= 2x",
    }
    result["goal_met"] = (
        result["in_a_row_100"]["p50_ms"] <= 25
        and result["in_a_row_100"]["p95_ms"] <= 50
        and result["held_500"]["p50_ms"] <= 25
        and result["held_500"]["p95_ms"] <= 50
        and result["growth_last_vs_first_p50"] <= 2
    )
    write_results("devbox_create", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
