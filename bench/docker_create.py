"""Benchmark: Docker-runtime devboxes against plain Docker, same image, same run.

- create -> running: ``POST /v1/devboxes/create_and_await_running`` (policy with a hostname:
  container + veth + nft chain + resolver view) vs ``docker run -d --network none`` of the
  same image (CLI, the baseline the goal names) and vs docker-py ``containers.run`` (API, no
  CLI start-up). Goal: API create <= 1.2x ``docker run``.
- exec round trip of ``true``: ``POST .../execute_sync`` through the API, and the runtime's
  Popen-like exec directly, vs ``docker exec`` (CLI) and docker-py ``exec_run``.

Rounds interleave the variants so a slow minute hits all of them. Every container is labelled
and removed at the end, also on failure. Needs root and a Docker daemon; uses an offline
world, so no packet leaves the machine. Writes bench/results/docker_create.json.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._stats import percentile, write_results  # noqa: E402
from simulator.runtime.docker_image import default_image  # noqa: E402
from simulator.runtime.docker_runtime import KEEPALIVE_LOOP, docker_client  # noqa: E402
from tests.server import ServerProcess  # noqa: E402

ROUNDS = 40
EXEC_ROUNDS = 200
HEADERS = {"Authorization": "Bearer bench-docker"}
BENCH_LABEL = "devbox-sim.bench"


def stats(values):
    return {"count": len(values), "p50_ms": round(percentile(values, 50), 2),
            "p95_ms": round(percentile(values, 95), 2), "max_ms": round(max(values), 2)}


def timed(fn) -> float:
    return timed_call(fn)[1]


def timed_call(fn):
    """(what ``fn`` returned, milliseconds it took)."""
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1000


def main() -> int:
    client = docker_client()
    image = default_image(client)
    run_id = secrets.token_hex(4)
    label = f"{BENCH_LABEL}={run_id}"
    results: dict[str, list[float]] = {k: [] for k in (
        "api_create", "docker_run_cli", "dockerpy_run", "api_shutdown",
        "api_execute_sync", "docker_exec_cli", "dockerpy_exec_run")}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            world = Path(tmp) / "world.toml"
            world.write_text('resolver = "198.51.100.53"\n[hosts."github.com"]\naddress = "192.0.2.10"\n')
            args = ("--runtime", "docker", "--world", str(world), "--subnet", "10.94.0.0/16", "--log-level", "warning")
            with ServerProcess(Path(tmp) / "data", *args) as server, httpx.Client(base_url=server.url, timeout=60) as http:
                policy = http.post("/v1/network-policies", json={"name": "bench", "allowed_hostnames": ["github.com"]},
                                   headers=HEADERS).json()
                body = {"launch_parameters": {"network_policy_id": policy["id"]}}

                def api_create() -> str:
                    response = http.post("/v1/devboxes/create_and_await_running", json=body, headers=HEADERS)
                    view = response.json()
                    if response.status_code != 200 or view.get("status") != "running":
                        raise RuntimeError(f"create failed: {response.status_code} {view}")
                    return view["id"]

                def cli_run() -> str:
                    out = subprocess.run(["docker", "run", "-d", "--network", "none", "--init", "--label", label,
                                          image, *KEEPALIVE_LOOP], capture_output=True, text=True, check=True)
                    return out.stdout.strip()

                def py_run() -> str:
                    return client.containers.run(image, KEEPALIVE_LOOP, detach=True, network_mode="none", init=True,
                                                 labels={BENCH_LABEL: run_id}).id

                api_create()  # warm-up: image build / first-connection costs stay out of the figures
                for i in range(ROUNDS):
                    order = [("api_create", api_create), ("docker_run_cli", cli_run), ("dockerpy_run", py_run)]
                    for name, fn in (order if i % 2 == 0 else order[::-1]):
                        made, elapsed = timed_call(fn)
                        results[name].append(elapsed)
                        if name == "api_create":
                            shutdown = f"/v1/devboxes/{made}/shutdown"
                            results["api_shutdown"].append(timed(lambda: http.post(shutdown, headers=HEADERS)))  # noqa: B023 (called at once)
                        else:
                            client.api.remove_container(made, force=True)

                # Exec round trips: one devbox and one plain container, alive throughout.
                devbox_id = api_create()
                plain = py_run()
                ops = [
                    ("api_execute_sync", lambda: http.post(f"/v1/devboxes/{devbox_id}/execute_sync",
                                                           json={"command": "true"}, headers=HEADERS).raise_for_status()),
                    ("docker_exec_cli", lambda: subprocess.run(["docker", "exec", plain, "true"], check=True)),
                    ("dockerpy_exec_run", lambda: client.containers.get(plain).exec_run(["true"])),
                ]
                for i in range(EXEC_ROUNDS):
                    for name, fn in (ops if i % 2 == 0 else ops[::-1]):
                        results[name].append(timed(fn))
                http.post(f"/v1/devboxes/{devbox_id}/shutdown", headers=HEADERS)
    finally:
        for container in client.api.containers(all=True, quiet=True, filters={"label": label}):
            client.api.remove_container(container["Id"], force=True)
        client.close()

    p50 = {name: percentile(values, 50) for name, values in results.items()}
    result = {
        "benchmark": "docker_create",
        "image": image,
        **{name: stats(values) for name, values in results.items()},
        "ratio_create_vs_docker_run_cli_p50": round(p50["api_create"] / p50["docker_run_cli"], 2),
        "ratio_create_vs_dockerpy_run_p50": round(p50["api_create"] / p50["dockerpy_run"], 2),
        "ratio_exec_vs_docker_exec_cli_p50": round(p50["api_execute_sync"] / p50["docker_exec_cli"], 2),
        "ratio_exec_vs_dockerpy_exec_run_p50": round(p50["api_execute_sync"] / p50["dockerpy_exec_run"], 2),
        "goal": "create -> running <= 1.2x plain `docker run` (p50)",
    }
    result["goal_met"] = result["ratio_create_vs_docker_run_cli_p50"] <= 1.2
    write_results("docker_create", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
