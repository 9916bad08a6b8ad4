"""State survives a restart on the same data directory."""

import http.client
import json
import signal
import time

import httpx

from tests.server import ServerProcess, send_held_request

HEADERS = {"Authorization": "Bearer restart-token"}


def test_everything_survives_a_restart(tmp_path):
    data = tmp_path / "data"
    with ServerProcess(data) as first:
        made = []
        for index in range(5):
            response = httpx.post(
                f"{first.url}/v1/network-policies",
                json={"name": f"keep-{index}", "allowed_hostnames": [f"h{index}.example.com"],
                      "allowed_cidrs": [{"cidr": "192.0.2.0/24", "ports": [{"port": 80}]}]},
                headers=HEADERS,
            )
            assert response.status_code == 200
            made.append(response.json())
        deleted = made.pop(0)
        assert httpx.post(f"{first.url}/v1/network-policies/{deleted['id']}/delete", headers=HEADERS).status_code == 200
        before = httpx.get(f"{first.url}/v1/network-policies", headers=HEADERS).json()
    assert first.proc.returncode is not None

    with ServerProcess(data) as second:
        after = httpx.get(f"{second.url}/v1/network-policies", headers=HEADERS).json()
        assert after == before
        assert [p["id"] for p in after["network_policies"]] == [p["id"] for p in made[::-1]]
        for policy in made:
            assert httpx.get(f"{second.url}/v1/network-policies/{policy['id']}", headers=HEADERS).json() == policy
        assert httpx.get(f"{second.url}/v1/network-policies/{deleted['id']}", headers=HEADERS).status_code == 404
        # New ids keep sorting after the old ones (the list stays newest first), names may repeat.
        again = httpx.post(f"{second.url}/v1/network-policies", json={"name": "keep-1"}, headers=HEADERS).json()
        listed = httpx.get(f"{second.url}/v1/network-policies", params={"name": "keep-1"}, headers=HEADERS).json()
        assert [p["id"] for p in listed["network_policies"]][0] == again["id"] and listed["total_count"] == 2


def test_a_stopped_server_ends_its_devboxes_when_it_stops(tmp_path):
    """SIGTERM (systemctl stop) takes the devboxes down with the runtime: the store must say so
    at once - failure, "the simulator stopped", the stop's time - not only at the next start."""
    from tests.runtime_servers import local_runtime_env

    data = tmp_path / "data"
    devboxes = "/v1/devboxes"
    with ServerProcess(data, env=local_runtime_env()) as first:
        def running():
            view = httpx.post(f"{first.url}{devboxes}/create_and_await_running", json={}, headers=HEADERS, timeout=60)
            assert view.status_code == 200 and view.json()["status"] == "running", view.text
            return view.json()["id"]

        busy, frozen = running(), running()
        command = httpx.post(f"{first.url}{devboxes}/{busy}/execute_async", json={"command": "sleep 60"}, headers=HEADERS)
        assert command.status_code == 200
        suspended = httpx.post(f"{first.url}{devboxes}/{frozen}/suspend", headers=HEADERS)
        assert suspended.json()["status"] == "suspended", suspended.text
        finished = running()
        assert httpx.post(f"{first.url}{devboxes}/{finished}/shutdown", headers=HEADERS).json()["status"] == "shutdown"
    stopped_ms = int(time.time() * 1000)
    # The server's own log has each devbox's one-line summary, as for an API shutdown.
    for devbox_id in (busy, frozen):
        assert any(f"devbox {devbox_id} failure:" in line for line in first.log), first.log[-20:]

    with ServerProcess(data, env=local_runtime_env()) as second:
        assert not any("from a previous run are gone" in line for line in second.log)
        for devbox_id in (busy, frozen):
            view = httpx.get(f"{second.url}{devboxes}/{devbox_id}", headers=HEADERS).json()
            assert (view["status"], view["failure_reason"]) == ("failure", "health_check_failed")
            assert view["state_transitions"][-1]["failure_reason"] == "the simulator stopped"
            assert view["end_time_ms"] <= stopped_ms
        assert httpx.get(f"{second.url}{devboxes}/{finished}", headers=HEADERS).json()["status"] == "shutdown"
        execution = httpx.get(
            f"{second.url}{devboxes}/{busy}/executions/{command.json()['execution_id']}", headers=HEADERS
        ).json()
        assert (execution["status"], execution["exit_status"]) == ("completed", 137)


def test_a_stop_ends_devboxes_before_waiting_for_streams_and_long_polls(tmp_path):
    """uvicorn waits for open connections before the app's shutdown; a command's output stream
    and a long poll end only when their devbox does. So the devboxes end first, or a stop would
    hang until killed (or until uvicorn's grace period cancels the requests)."""
    import threading

    from tests.runtime_servers import local_runtime_env

    devboxes = "/v1/devboxes"
    server = ServerProcess(tmp_path / "data", env=local_runtime_env()).start()
    try:
        view = httpx.post(f"{server.url}{devboxes}/create_and_await_running", json={}, headers=HEADERS, timeout=60)
        devbox_id = view.json()["id"]
        started = httpx.post(f"{server.url}{devboxes}/{devbox_id}/execute_async", json={"command": "sleep 600"}, headers=HEADERS)
        execution_id = started.json()["execution_id"]
        connected, ended = threading.Event(), {}

        def stream():
            url = f"{server.url}{devboxes}/{devbox_id}/executions/{execution_id}/stream_stdout_updates"
            with httpx.stream("GET", url, headers=HEADERS, timeout=60) as response:
                connected.set()
                for _ in response.iter_lines():
                    pass
            ended["stream"] = True

        # The long poll is sent first and stop waits until the server has read it; from a
        # thread alone it could still be connecting when the server stops.
        poll = send_held_request(server.url, "POST", f"{devboxes}/{devbox_id}/wait_for_status",
                                 json.dumps({"statuses": ["failure"], "timeout_seconds": 25}).encode(),
                                 {**HEADERS, "Content-Type": "application/json"}, timeout=60)

        def long_poll():
            with poll:
                response = http.client.HTTPResponse(poll)
                response.begin()
                ended["poll"] = json.loads(response.read())["status"]

        evictions_open = threading.Event()

        def evictions():  # an account-wide stream (no devbox ends it): the stop itself must
            with httpx.stream("GET", f"{server.url}{devboxes}/evictions/watch", headers=HEADERS, timeout=60) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.iter_lines()
                assert next(lines) == ": keep-alive"  # at once: nothing is ever evicted here
                evictions_open.set()
                ended["evictions"] = [line for line in lines if line]  # until the stop ends it

        threads = [threading.Thread(target=stream), threading.Thread(target=long_poll), threading.Thread(target=evictions)]
        for thread in threads:
            thread.start()
        assert connected.wait(10) and evictions_open.wait(10)
    finally:
        code = server.stop()
    for thread in threads:
        thread.join(10)
    # uvicorn re-raises the SIGTERM it handled once it is done: -15, not -9 from
    # ServerProcess.stop's kill after 30 s.
    assert code == -signal.SIGTERM
    assert not any("timeout graceful shutdown exceeded" in line for line in server.log)
    assert ended == {"stream": True, "poll": "failure", "evictions": []}


def test_a_restart_without_a_runtime_fails_the_devboxes_the_store_shows_active(tmp_path):
    """--runtime none after a run with devboxes (a crash: the store still shows them): they
    are marked failed, not shown running with nothing behind them, and their policy can go."""
    import warnings

    from simulator.app import create_app
    from simulator.config import Settings
    from tests.api.local_runtime import LocalRuntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    data = tmp_path / "data"
    runtime = LocalRuntime(tmp_path / "runtime")
    try:
        first = TestClient(create_app(Settings(data_dir=data), runtime))
        policy = first.post("/v1/network-policies", json={"name": "p"}, headers=HEADERS).json()
        devbox = first.post("/v1/devboxes/create_and_await_running", headers=HEADERS,
                            json={"launch_parameters": {"network_policy_id": policy["id"]}}).json()
        assert devbox["status"] == "running"
        # No shutdown: as after kill -9, the store says running.
    finally:
        runtime.close()
    with TestClient(create_app(Settings(data_dir=data, runtime="none"))) as second:
        # (Devbox endpoints are 503 without a runtime.) The policy is no longer held.
        assert second.post(f"/v1/network-policies/{policy['id']}/delete", headers=HEADERS).status_code == 200
    again = LocalRuntime(tmp_path / "runtime2")
    try:
        third = TestClient(create_app(Settings(data_dir=data), again))
        view = third.get(f"/v1/devboxes/{devbox['id']}", headers=HEADERS).json()
        assert view["status"] == "failure" and "restarted" in json.dumps(view["state_transitions"][-1]), view
    finally:
        again.close()
