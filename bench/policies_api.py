"""Benchmark: create + get + list with 1,000 network policies over HTTP, paced at 200 req/s.

Latency is measured from each request's *scheduled* start (open loop, bench/_http.py: raw
keep-alive sockets, so the generator's own CPU does not swamp the 2-core machine), so a slow
response that delays the next request counts against us (no coordinated omission). The baseline is
`GET /healthz` on the same server in the same run; ratios are op p50 / baseline p50.
Then a closed-loop burst measures the maximum requests/s of `get`.

Writes bench/results/policies_api.json. Goal: p99 < 10 ms at 200 requests/s.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._http import encode, open_loop  # noqa: E402
from bench._stats import percentile, write_results  # noqa: E402
from tests.server import ServerProcess  # noqa: E402

RATE = 200.0
POLICIES = 1000
ACCOUNTS = 10  # 100 policies each: the default per-account quota
BURST_SECONDS = 3.0



def paced(base_url: str, requests: list[tuple[str, str, dict]], rate: float) -> list[float]:
    """Open loop at `rate`/s (bench/_http.py); latency in ms from each request's due time."""
    host = urlsplit(base_url).netloc
    encoded = [
        encode(host, method, url, headers=kw.get("headers"), params=kw.get("params"), body=kw.get("json"))
        for method, url, kw in requests
    ]
    return open_loop(base_url, encoded, rate)


def summary(latencies: list[float], baseline: list[float] | None = None) -> dict:
    result = {
        "count": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
    }
    if baseline:
        result["p50_vs_baseline"] = round(result["p50_ms"] / percentile(baseline, 50), 2)
        result["p99_vs_baseline"] = round(result["p99_ms"] / percentile(baseline, 99), 2)
    return result


def main() -> int:
    headers = [{"Authorization": f"Bearer bench-{i}"} for i in range(ACCOUNTS)]
    # The server logs every request, as in production, to a file (see ServerProcess.log_file).
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "data", log_file=Path(tmp) / "server.log") as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            baseline = paced(server.url, [("GET", "/healthz", {})] * 500, RATE)
            creates = [
                (
                    "POST",
                    "/v1/network-policies",
                    {
                        "headers": headers[i % ACCOUNTS],
                        "json": {
                            "name": f"bench-{i}",
                            "allowed_hostnames": [f"h{i}.example.com", "*.npmjs.org"],
                            "allowed_cidrs": [{"cidr": "192.0.2.0/24", "ports": [{"port": 443, "protocol": "TCP"}]}],
                        },
                    },
                )
                for i in range(POLICIES)
            ]
            create_lat = paced(server.url, creates, RATE)
            ids: list[tuple[str, dict]] = []
            for h in headers:
                page = client.get("/v1/network-policies", params={"limit": 5000}, headers=h).json()
                ids += [(p["id"], h) for p in page["network_policies"]]
            assert len(ids) == POLICIES, len(ids)
            get_lat = paced(server.url, [("GET", f"/v1/network-policies/{pid}", {"headers": h}) for pid, h in ids], RATE)
            lists = [
                ("GET", "/v1/network-policies", {"headers": h, "params": {"limit": 20, "starting_after": pid}})
                for pid, h in ids[::2]
            ]
            list_lat = paced(server.url, lists, RATE)
            # Closed loop: as fast as one client connection goes, bounded in time.
            count, deadline = 0, time.perf_counter() + BURST_SECONDS
            start = time.perf_counter()
            while time.perf_counter() < deadline:
                pid, h = ids[count % len(ids)]
                client.get(f"/v1/network-policies/{pid}", headers=h)
                count += 1
            burst_rps = count / (time.perf_counter() - start)

    results = {
        "benchmark": "policies_api",
        "rate_per_s": RATE,
        "policies": POLICIES,
        "baseline_healthz": summary(baseline),
        "create": summary(create_lat, baseline),
        "get": summary(get_lat, baseline),
        "list_limit_20": summary(list_lat, baseline),
        "get_closed_loop_requests_per_s": round(burst_rps, 1),
        "goal": "p99 < 10 ms at 200 requests/s",
    }
    results["goal_met"] = all(results[k]["p99_ms"] < 10 for k in ("create", "get", "list_limit_20"))
    out = write_results("policies_api", results)
    for key in ("baseline_healthz", "create", "get", "list_limit_20"):
        r = results[key]
        ratio = f"  ({r['p50_vs_baseline']}x / {r['p99_vs_baseline']}x baseline p50 / p99)" if "p50_vs_baseline" in r else ""
        print(f"{key:18} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  max {r['max_ms']:6.2f} ms{ratio}")
    print(f"get, closed loop: {results['get_closed_loop_requests_per_s']} requests/s")
    print(f"goal ({results['goal']}): {'met' if results['goal_met'] else 'NOT met'}; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
