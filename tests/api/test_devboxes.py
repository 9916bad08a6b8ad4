"""HTTP tests for /v1/devboxes: every endpoint, the lifecycle and the error paths.

Written against the ``runtime`` fixture (today the subprocess test double).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import threading
import time
import warnings

import httpx
import pytest

from simulator.app import create_app
from simulator.config import Settings
from simulator.devboxes import watch_key
from simulator.runtime.base import cpu_limit, memory_limit
from tests.api.conftest import ALICE, BOB
from tests.api.devbox_fixtures import needs_hooks
from tests.api.disk_helpers import assert_error  # noqa: F401 (also imported from here by other tests)
from tests.api.local_runtime import LocalRuntime

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

URL = "/v1/devboxes"
REQUIRED = {"id", "status", "create_time_ms", "launch_parameters", "metadata", "state_transitions", "capabilities"}


def create(client, headers=ALICE, **body):
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def create_running(client, headers=ALICE, **body):
    response = client.post(f"{URL}/create_and_await_running", json=body, headers=headers)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["status"] == "running", view
    return view


def wait_status(client, devbox_id, statuses, timeout=10, headers=ALICE):
    return client.post(
        f"{URL}/{devbox_id}/wait_for_status", json={"statuses": statuses, "timeout_seconds": timeout}, headers=headers
    )


def settle(client, devbox_id, headers=ALICE):
    response = wait_status(client, devbox_id, ["running", "failure", "shutdown"], headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def until(predicate, timeout=5.0):
    """Poll a condition with a deadline (only to learn that a request is being held)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, result holder)."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    thread.start()
    return thread, box


def statuses_of(view):
    return [t["status"] for t in view["state_transitions"]]


# --- create and view -------------------------------------------------------------------


def test_create_minimal_view_has_every_required_field(devbox_client):
    view = create(devbox_client)
    assert REQUIRED <= set(view)
    assert re.fullmatch(r"dbx_[0-9A-Za-z]{21}", view["id"])
    assert view["status"] in ("provisioning", "running")
    assert view["metadata"] == {} and view["capabilities"] == [] and view["launch_parameters"] == {}
    assert view["initiator_type"] == "api"
    assert view["name"] is None and view["end_time_ms"] is None
    assert isinstance(view["create_time_ms"], int) and view["create_time_ms"] > 1_600_000_000_000
    assert view["state_transitions"][0]["status"] == "provisioning"
    settled = settle(devbox_client, view["id"])
    assert settled["status"] == "running"
    assert statuses_of(settled) == ["provisioning", "running"]
    times = [t["transition_time_ms"] for t in settled["state_transitions"]]
    assert times == sorted(times) and times[0] == view["create_time_ms"]


def test_create_echoes_launch_parameters_name_and_metadata(devbox_client):
    launch = {
        "resource_size_request": "SMALL",
        "keep_alive_time_seconds": 600,
        "architecture": "arm64",
        "launch_commands": ["true"],
        "user_parameters": {"username": "user", "uid": 1000},
        "some_future_field": {"x": 1},
    }
    view = create_running(
        devbox_client,
        name="box",
        metadata={"team": "a"},
        launch_parameters=launch,
        entrypoint="sleep 300",
        file_mounts={"a": "b"},
        secrets={},
        tunnel={"auth_mode": "open"},
    )
    assert view["name"] == "box" and view["metadata"] == {"team": "a"}
    assert view["launch_parameters"] == launch
    assert devbox_client.get(f"{URL}/{view['id']}", headers=ALICE).json() == view


def logs(client, devbox_id):
    response = client.get(f"{URL}/{devbox_id}/logs", headers=ALICE)
    assert response.status_code == 200, response.text
    return response.json()["logs"]


def test_the_entrypoint_runs_once_running_and_its_end_shuts_the_devbox_down(devbox_client):
    """The SDK: "the devbox lifecycle will be bound to entrypoint, shutting down when the
    process is complete"."""
    view = create_running(devbox_client, launch_parameters={"launch_commands": ["echo setup > setup.txt"]},
                          environment_variables={"WHO": "entry"},
                          entrypoint="mkfifo go; cat setup.txt; echo $WHO; read line < go; echo got $line")
    devbox = view["id"]
    until(lambda: any(e["source"] == "entrypoint" and e["message"] == "entry" for e in logs(devbox_client, devbox)))
    assert devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()["status"] == "running"  # while it runs
    ran = devbox_client.post(f"{URL}/{devbox}/execute_sync", json={"command": "echo go > go"}, headers=ALICE)
    assert ran.status_code == 200, ran.text
    ended = wait_status(devbox_client, devbox, ["shutdown"]).json()
    assert (ended["status"], ended["shutdown_reason"]) == ("shutdown", "entrypoint_exit")
    lines = [e["message"] for e in logs(devbox_client, devbox) if e["source"] == "entrypoint"]
    assert lines == ["started", "setup", "entry", "got go", "exited with 0", "the entrypoint ended: shutting the devbox down"]


def test_a_shutdown_just_before_the_entrypoint_starts_ends_the_devbox_once(devbox_client):
    """The terminal hooks (the log's summary line, commands finished, tunnels cut) run once, with
    the devbox as it ended: a second release reported it as still "running"."""
    devboxes = devbox_client.app.state.services.devboxes
    ended = []
    devboxes.add_terminal_hook(lambda devbox: ended.append((devbox.id, devbox.status)))
    start_entrypoint = devboxes._entrypoint_runner

    def shutdown_first(devbox, command):
        devboxes.shutdown_devbox(devbox.account, devbox.id)
        return start_entrypoint(devbox, command)

    devboxes.set_entrypoint_runner(shutdown_first)
    devbox_id = create(devbox_client, entrypoint="sleep 100")["id"]
    until(lambda: ended and not devboxes._provisioning)
    assert [status for box, status in ended if box == devbox_id] == ["shutdown"]
    assert devbox_client.get(f"{URL}/{devbox_id}", headers=ALICE).json()["shutdown_reason"] == "api_shutdown"


def test_a_suspend_asked_as_the_devbox_starts_running_waits_for_its_entrypoint(devbox_client):
    """A suspend between "running" and the entrypoint's start made the start fail, and the
    devbox with it."""
    devboxes = devbox_client.app.state.services.devboxes
    start_entrypoint = devboxes._entrypoint_runner
    suspended = {}

    def suspend_meanwhile(devbox, command):
        thread = threading.Thread(target=lambda: suspended.setdefault("view", devboxes.suspend_devbox(devbox.account, devbox.id)))
        thread.start()
        thread.join(0.2)  # it waits for the entrypoint's start (the lifecycle lock)
        suspended["waited"] = thread.is_alive()
        start_entrypoint(devbox, command)
        suspended["thread"] = thread

    devboxes.set_entrypoint_runner(suspend_meanwhile)
    sleep = f"sleep 100.{secrets.randbelow(10**6)}"  # its own, among the machine's processes
    devbox_id = create(devbox_client, entrypoint=sleep)["id"]
    until(lambda: "thread" in suspended)
    suspended["thread"].join(10)
    assert suspended["waited"] and suspended["view"].status == "suspended"
    resumed = devbox_client.post(f"{URL}/{devbox_id}/resume", headers=ALICE).json()
    assert resumed["status"] == "running"
    ps = devbox_client.post(f"{URL}/{devbox_id}/execute_sync", json={"command": "ps -o args= -u $(id -u)"}, headers=ALICE)
    assert sleep in ps.json()["stdout"]  # the entrypoint runs


def test_a_devbox_shut_down_while_its_entrypoint_runs_says_api_shutdown(devbox_client):
    devbox = create_running(devbox_client, entrypoint="sleep 300")["id"]
    ended = devbox_client.post(f"{URL}/{devbox}/shutdown", headers=ALICE).json()
    assert (ended["status"], ended["shutdown_reason"]) == ("shutdown", "api_shutdown")
    assert devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()["shutdown_reason"] == "api_shutdown"


@pytest.mark.parametrize("field, value", [("secrets", {"DB_PASS": "DATABASE_PASSWORD"}),
                                          ("mounts", [{"type": "object_mount", "object_id": "obj_1", "object_path": "/x"}]),
                                          ("code_mounts", [{"repo_name": "r", "repo_owner": "o"}])])
def test_what_the_simulator_has_not_got_is_refused_not_ignored(devbox_client, field, value):
    """A test reading an empty secret, or missing a mount, would fail with no error to say why."""
    body = assert_error(devbox_client.post(URL, json={field: value}, headers=ALICE), 400, "not_supported", field)
    assert devbox_client.get(URL, headers=ALICE).json()["devboxes"] == []
    assert devbox_client.post(URL, json={field: type(value)()}, headers=ALICE).status_code == 200, body  # empty: fine


def test_create_and_await_running_holds_until_running(devbox_client):
    view = create_running(devbox_client, launch_parameters={"launch_commands": ["echo one > one.txt", "echo two"]})
    assert statuses_of(view) == ["provisioning", "initializing", "running"]


def test_launch_commands_run_before_running(devbox_client):
    view = create_running(devbox_client, launch_parameters={"launch_commands": ["echo ready > marker"]})
    response = devbox_client.post(f"{URL}/{view['id']}/execute_sync", json={"command": "cat marker"}, headers=ALICE)
    assert response.json()["stdout"] == "ready\n"


def test_failing_launch_command_fails_the_devbox(devbox_client):
    response = devbox_client.post(
        f"{URL}/create_and_await_running",
        json={"launch_parameters": {"launch_commands": ["true", "echo boom >&2; exit 7", "touch never"]}},
        headers=ALICE,
    )
    assert response.status_code == 200
    view = response.json()
    assert view["status"] == "failure"
    assert view["failure_reason"] == "execution_failed"
    assert view["end_time_ms"] is not None and view["shutdown_reason"] is None
    assert statuses_of(view) == ["provisioning", "initializing", "failure"]
    detail = view["state_transitions"][-1]["failure_reason"]
    assert "exited with 7" in detail and "boom" in detail


def test_runtime_failure_fails_the_devbox(devbox_client, runtime):
    needs_hooks(runtime, "fail_provisioning")
    runtime.fail_provisioning("no addresses left")
    view = settle(devbox_client, create(devbox_client)["id"])
    assert view["status"] == "failure" and view["failure_reason"] == "execution_failed"
    assert "no addresses left" in view["state_transitions"][-1]["failure_reason"]
    assert_error(
        devbox_client.post(f"{URL}/{view['id']}/execute_async", json={"command": "true"}, headers=ALICE),
        400,
        "devbox_not_running",
    )


def test_retried_create_with_same_request_id_returns_same_devbox(devbox_client):
    headers = {**ALICE, "x-request-id": "retry-1"}
    first = devbox_client.post(URL, json={"name": "once"}, headers=headers).json()
    again = devbox_client.post(f"{URL}/create_and_await_running", json={"name": "once"}, headers=headers).json()
    assert again["id"] == first["id"]
    assert [d["id"] for d in devbox_client.get(URL, headers=ALICE).json()["devboxes"]] == [first["id"]]
    other = devbox_client.post(URL, json={}, headers={**BOB, "x-request-id": "retry-1"}).json()
    assert other["id"] != first["id"]
    another = devbox_client.post(URL, json={"name": "another"}, headers=headers).json()
    assert another["id"] != first["id"] and another["name"] == "another"  # not a retry: another body


@pytest.mark.parametrize(
    "body, contains",
    [
        ({"name": 5}, "name"),
        ({"launch_parameters": {"launch_commands": "echo"}}, "launch_commands"),
        ({"launch_parameters": {"resource_size_request": "HUGE"}}, "resource_size_request"),
        ({"launch_parameters": {"keep_alive_time_seconds": 10**9}}, "keep_alive_time_seconds"),
        ({"launch_parameters": {"resource_size_request": "CUSTOM_SIZE"}}, "custom_cpu_cores"),
        ({"launch_parameters": {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 3, "custom_gb_memory": 12}},
         "custom_cpu_cores"),
        ({"launch_parameters": {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 1e308, "custom_gb_memory": 2}},
         "custom_cpu_cores"),
        ({"launch_parameters": {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 2, "custom_gb_memory": 10**30}},
         "custom_gb_memory"),
        ({"launch_parameters": {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 2, "custom_gb_memory": 64}},
         "2 to 8 times"),
        ({"launch_parameters": {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 2, "custom_gb_memory": 8,
                                "custom_disk_size": 65}}, "custom_disk_size"),
        ({"launch_parameters": {"resource_size_request": "SMALL", "custom_cpu_cores": 2}}, "CUSTOM_SIZE"),
        ({"environment_variables": {"A": 1}}, "environment_variables"),
        ({"environment_variables": {"A=B": "x"}}, "A=B"),
        ({"metadata": {"k": ["v"]}}, "metadata"),
        ({"blueprint_id": "bpt_1", "snapshot_id": "snp_1"}, "at most one"),
        ({"name": "x" * 300}, "name"),
    ],
)
def test_create_rejects_invalid_bodies(devbox_client, body, contains):
    assert_error(devbox_client.post(URL, json=body, headers=ALICE), 400, contains=contains)
    assert devbox_client.get(URL, headers=ALICE).json()["devboxes"] == []


def test_a_validators_message_reads_without_pydantics_prefix(devbox_client):
    body = {"launch_parameters": {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 3, "custom_gb_memory": 12}}
    response = devbox_client.post(URL, json=body, headers=ALICE)
    assert response.status_code == 400
    assert response.json()["message"] == "launch_parameters: custom_cpu_cores must be 0.5, 1 or a multiple of 2 up to 16, not 3"


def test_body_is_optional_and_auth_is_required(devbox_client):
    response = devbox_client.post(URL, headers={**ALICE, "Content-Type": "application/json"})
    assert response.status_code == 200
    assert_error(devbox_client.post(URL, json={}), 401, "unauthorized")
    assert_error(devbox_client.get(f"{URL}/{response.json()['id']}"), 401)


# --- network policies ------------------------------------------------------------------


def test_network_policy_is_validated_stored_and_shown(devbox_client):
    assert_error(
        devbox_client.post(URL, json={"launch_parameters": {"network_policy_id": "npol_missing"}}, headers=ALICE),
        400,
        "unknown_network_policy",
    )
    bobs = devbox_client.post("/v1/network-policies", json={"name": "bob"}, headers=BOB).json()
    assert_error(
        devbox_client.post(URL, json={"launch_parameters": {"network_policy_id": bobs["id"]}}, headers=ALICE),
        400,
        "unknown_network_policy",
    )
    # An empty id is an unknown policy, not "no policy" (which would be unrestricted egress).
    assert_error(devbox_client.post(URL, json={"launch_parameters": {"network_policy_id": ""}}, headers=ALICE),
                 400, "unknown_network_policy")
    assert devbox_client.get(URL, headers=ALICE).json()["devboxes"] == []

    policy = devbox_client.post("/v1/network-policies", json={"name": "p"}, headers=ALICE).json()
    view = create_running(devbox_client, launch_parameters={"network_policy_id": policy["id"]})
    assert view["launch_parameters"]["network_policy_id"] == policy["id"]


def test_policy_in_use_cannot_be_deleted_until_shutdown(devbox_client):
    policy = devbox_client.post("/v1/network-policies", json={"name": "p"}, headers=ALICE).json()
    view = create_running(devbox_client, launch_parameters={"network_policy_id": policy["id"]})
    delete = f"/v1/network-policies/{policy['id']}/delete"
    assert_error(devbox_client.post(delete, headers=ALICE), 400, "policy_in_use", f"devbox {view['id']}")
    devbox_client.post(f"{URL}/{view['id']}/shutdown", headers=ALICE)
    assert devbox_client.post(delete, headers=ALICE).status_code == 200


def test_policy_of_a_failed_devbox_can_be_deleted(devbox_client):
    policy = devbox_client.post("/v1/network-policies", json={"name": "p"}, headers=ALICE).json()
    response = devbox_client.post(
        f"{URL}/create_and_await_running",
        json={"launch_parameters": {"network_policy_id": policy["id"], "launch_commands": ["false"]}},
        headers=ALICE,
    )
    assert response.json()["status"] == "failure"
    assert devbox_client.post(f"/v1/network-policies/{policy['id']}/delete", headers=ALICE).status_code == 200


# --- retrieve, list, update ------------------------------------------------------------


def test_unknown_and_foreign_devboxes_are_404(devbox_client):
    mine = create_running(devbox_client)["id"]
    for devbox_id in ("dbx_unknown", mine):
        headers = BOB if devbox_id == mine else ALICE
        assert_error(devbox_client.get(f"{URL}/{devbox_id}", headers=headers), 404, "not_found")
        assert_error(devbox_client.post(f"{URL}/{devbox_id}", json={"name": "x"}, headers=headers), 404)
        assert_error(devbox_client.post(f"{URL}/{devbox_id}/shutdown", headers=headers), 404)
        assert_error(devbox_client.post(f"{URL}/{devbox_id}/keep_alive", headers=headers), 404)
        assert_error(wait_status(devbox_client, devbox_id, ["running"], 0.1, headers=headers), 404)
        assert_error(
            devbox_client.post(f"{URL}/{devbox_id}/execute_async", json={"command": "true"}, headers=headers), 404
        )
    assert devbox_client.get(URL, headers=BOB).json() == {"devboxes": [], "has_more": False, "total_count": 0}
    assert devbox_client.get(f"{URL}/{mine}", headers=ALICE).json()["status"] == "running"


def test_list_newest_first_with_filter_and_pages(devbox_client):
    made = [create_running(devbox_client, name=f"d{i}")["id"] for i in range(5)]
    devbox_client.post(f"{URL}/{made[1]}/shutdown", headers=ALICE)
    listing = devbox_client.get(URL, headers=ALICE).json()
    assert [d["id"] for d in listing["devboxes"]] == made[::-1]
    assert listing["has_more"] is False and listing["total_count"] == 5

    running = devbox_client.get(URL, params={"status": "running"}, headers=ALICE).json()
    assert [d["id"] for d in running["devboxes"]] == [made[4], made[3], made[2], made[0]]
    assert running["total_count"] == 4
    shut = devbox_client.get(URL, params={"status": "shutdown"}, headers=ALICE).json()
    assert [d["id"] for d in shut["devboxes"]] == [made[1]]

    pages, cursor = [], None
    while True:
        params = {"limit": 2, "include_total_count": "false", **({"starting_after": cursor} if cursor else {})}
        page = devbox_client.get(URL, params=params, headers=ALICE).json()
        assert page["total_count"] is None
        pages.append([d["id"] for d in page["devboxes"]])
        if not page["has_more"]:
            break
        cursor = page["devboxes"][-1]["id"]
    assert pages == [made[4:2:-1], made[2:0:-1], made[0:1]]

    assert_error(devbox_client.get(URL, params={"status": "sleeping"}, headers=ALICE), 400, contains="sleeping")
    assert_error(devbox_client.get(URL, params={"limit": 0}, headers=ALICE), 400, contains="limit")


def test_update_name_and_metadata(devbox_client):
    view = create_running(devbox_client, name="old", metadata={"a": "1"})
    updated = devbox_client.post(f"{URL}/{view['id']}", json={"name": "new"}, headers=ALICE).json()
    assert updated["name"] == "new" and updated["metadata"] == {"a": "1"}
    updated = devbox_client.post(f"{URL}/{view['id']}", json={"metadata": {"b": "2"}}, headers=ALICE).json()
    assert updated["name"] == "new" and updated["metadata"] == {"b": "2"}
    assert devbox_client.post(f"{URL}/{view['id']}", headers=ALICE).json() == updated
    assert devbox_client.get(f"{URL}/{view['id']}", headers=ALICE).json() == updated
    assert_error(devbox_client.post(f"{URL}/{view['id']}", json={"metadata": "x"}, headers=ALICE), 400)


# --- wait_for_status -------------------------------------------------------------------


def test_wait_for_status_holds_until_a_transition(devbox_client):
    devbox_id = create_running(devbox_client)["id"]
    watch = devbox_client.app.state.services.devboxes.watch
    thread, box = in_thread(lambda: wait_status(devbox_client, devbox_id, ["shutdown"], 20))
    until(lambda: watch.waiting(watch_key(devbox_id)) == 1)
    assert thread.is_alive()  # held, not answered
    devbox_client.post(f"{URL}/{devbox_id}/shutdown", headers=ALICE)
    thread.join(10)
    assert box["result"].status_code == 200
    assert box["result"].json()["status"] == "shutdown"


def test_wait_for_status_is_released_by_provisioning(devbox_client, runtime):
    needs_hooks(runtime, "hold_provisioning")
    gate = runtime.hold_provisioning()
    devbox_id = create(devbox_client)["id"]
    watch = devbox_client.app.state.services.devboxes.watch
    thread, box = in_thread(lambda: wait_status(devbox_client, devbox_id, ["running"], 20))
    until(lambda: watch.waiting(watch_key(devbox_id)) == 1)
    assert devbox_client.get(f"{URL}/{devbox_id}", headers=ALICE).json()["status"] == "provisioning"
    assert_error(
        devbox_client.post(f"{URL}/{devbox_id}/execute_async", json={"command": "true"}, headers=ALICE),
        400,
        "devbox_not_running",
        "provisioning",
    )
    assert thread.is_alive()
    gate.set()
    thread.join(10)
    assert box["result"].status_code == 200 and box["result"].json()["status"] == "running"


def test_shutdown_while_provisioning(devbox_client, runtime):
    needs_hooks(runtime, "hold_provisioning")
    gate = runtime.hold_provisioning()
    devbox_id = create(devbox_client)["id"]
    view = devbox_client.post(f"{URL}/{devbox_id}/shutdown", headers=ALICE).json()
    assert view["status"] == "shutdown"
    # The provisioning stops without the gate: nothing more is built for a devbox shut down
    # (a disk copy, a network with a policy that may be deleted by then).
    services = devbox_client.app.state.services.devboxes
    until(lambda: not services._provisioning)
    gate.set()
    assert devbox_id not in runtime.provisioned and devbox_id not in runtime.alive_ids()
    view = devbox_client.get(f"{URL}/{devbox_id}", headers=ALICE).json()
    assert view["status"] == "shutdown" and [t["status"] for t in view["state_transitions"]] == ["provisioning", "shutdown"]
    assert statuses_of(view) == ["provisioning", "shutdown"]


def test_a_shutdown_answers_once_the_provisioning_has_undone_its_work(devbox_client, runtime, monkeypatch):
    """The runtime had nothing of the devbox to free yet, and the answer came at once: a
    Docker container being made lived on 0.3 s after "shutdown" was answered."""
    needs_hooks(runtime, "hold_provisioning")
    runtime.hold_provisioning()
    undone = threading.Event()
    real = runtime.provision

    def provision(spec):
        try:
            real(spec)
        except Exception:
            undone.wait(0.5)  # undoing what was made takes a while (removing a container)
            undone.set()
            raise

    monkeypatch.setattr(runtime, "provision", provision)
    devbox_id = create(devbox_client)["id"]
    view = devbox_client.post(f"{URL}/{devbox_id}/shutdown", headers=ALICE).json()
    assert view["status"] == "shutdown"
    assert undone.is_set()
    assert not devbox_client.app.state.services.devboxes._provisioning


def test_a_stop_ends_a_wait_for_a_status_the_devbox_will_not_reach(devbox_client):
    """The stop ends every devbox (as failure): a wait for "shutdown" (or "suspended") would
    hold the stop until uvicorn's graceful timeout cancelled it."""
    devbox_id = create_running(devbox_client)["id"]
    watch = devbox_client.app.state.services.devboxes.watch
    thread, box = in_thread(lambda: wait_status(devbox_client, devbox_id, ["shutdown"], 25))
    until(lambda: watch.waiting(watch_key(devbox_id)) == 1)
    started = time.monotonic()
    devbox_client.app.state.services.devboxes.stop_all("the simulator stopped")
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert_error(box["result"], 503, "stopping", "failure")


def test_a_wait_that_read_the_devbox_just_before_the_stop_began_waits_for_its_end(devbox_client, monkeypatch):
    """It told "the simulator is stopping; devbox ... is running" of a devbox the stop was
    about to end (CI saw it once)."""
    devbox_id = create_running(devbox_client)["id"]
    services = devbox_client.app.state.services.devboxes
    real = services.retrieve_devbox
    accounts = []

    def read_then_stop_begins(account, devbox_id):
        devbox = real(account, devbox_id)
        accounts.append(account)
        if len(accounts) > 1:
            services.stopping.set()  # the stop begins right after this read
        return devbox

    monkeypatch.setattr(services, "retrieve_devbox", read_then_stop_begins)
    assert devbox_client.get(f"{URL}/{devbox_id}", headers=ALICE).status_code == 200  # the account, as the API has it
    check = services._status_check(accounts[0], devbox_id, ["shutdown"])
    assert check() is None and services.stopping.is_set()  # still running: no answer yet
    monkeypatch.setattr(services, "retrieve_devbox", real)
    services.stop_all("the simulator stopped")
    with pytest.raises(Exception, match="is failure"):
        check()


def test_wait_for_status_times_out_with_408(devbox_client):
    devbox_id = create_running(devbox_client)["id"]
    started = time.monotonic()
    response = wait_status(devbox_client, devbox_id, ["suspended"], 0.25)
    elapsed = time.monotonic() - started
    assert_error(response, 408, "timeout", "running")
    assert response.headers["x-should-retry"] == "true"
    assert 0.2 <= elapsed < 5


def test_wait_for_status_answers_at_once_when_already_there(devbox_client):
    devbox_id = create_running(devbox_client)["id"]
    response = devbox_client.post(f"{URL}/{devbox_id}/wait_for_status", json={"statuses": ["running"]}, headers=ALICE)
    assert response.status_code == 200 and response.json()["status"] == "running"


@pytest.mark.parametrize(
    "body, contains",
    [
        ({"statuses": ["running", "sleeping"]}, "sleeping"),
        ({"statuses": []}, "statuses"),
        ({}, "statuses"),
        ({"statuses": ["running"], "timeout_seconds": -1}, "timeout_seconds"),
        ({"statuses": ["running"], "timeout_seconds": "soon"}, "timeout_seconds"),
    ],
)
def test_wait_for_status_rejects_bad_requests(devbox_client, body, contains):
    devbox_id = create_running(devbox_client)["id"]
    assert_error(
        devbox_client.post(f"{URL}/{devbox_id}/wait_for_status", json=body, headers=ALICE), 400, contains=contains
    )


def test_fifty_waits_do_not_block_other_requests(devbox_client):
    app = devbox_client.app
    devbox_id = create_running(devbox_client)["id"]
    watch = app.state.services.devboxes.watch

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim", headers=ALICE) as client:
            waits = [
                asyncio.create_task(
                    client.post(f"{URL}/{devbox_id}/wait_for_status", json={"statuses": ["shutdown"], "timeout_seconds": 20})
                )
                for _ in range(50)
            ]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while (held := watch.waiting(watch_key(devbox_id))) < 50:
                assert loop.time() < deadline, (
                    f"only {held} of 50 wait_for_status requests were waiting after 10 s "
                    f"({sum(task.done() for task in waits)} already answered)")
                await asyncio.sleep(0.01)  # polling with a deadline: each request registers its waiter
            # Sync endpoints run on the thread pool (40 threads): it must still be free.
            got = await asyncio.wait_for(client.get(f"{URL}/{devbox_id}"), 5)
            assert got.status_code == 200 and got.json()["status"] == "running"
            other = await asyncio.wait_for(client.post(f"{URL}/{devbox_id}", json={"name": "busy"}), 5)
            assert other.status_code == 200
            assert not any(task.done() for task in waits)
            shut = await asyncio.wait_for(client.post(f"{URL}/{devbox_id}/shutdown"), 10)
            assert shut.status_code == 200
            answers = await asyncio.wait_for(asyncio.gather(*waits), 10)
            assert {(r.status_code, r.json()["status"]) for r in answers} == {(200, "shutdown")}

    asyncio.run(scenario())


# --- shutdown and keep_alive -----------------------------------------------------------


def test_shutdown_is_synchronous_and_idempotent(devbox_client, runtime):
    devbox_id = create_running(devbox_client)["id"]
    view = devbox_client.post(f"{URL}/{devbox_id}/shutdown", headers=ALICE).json()
    assert view["status"] == "shutdown" and view["shutdown_reason"] == "api_shutdown"
    assert view["end_time_ms"] == view["state_transitions"][-1]["transition_time_ms"]
    assert devbox_id in runtime.shut_down
    again = devbox_client.post(f"{URL}/{devbox_id}/shutdown", params={"force": "true"}, json={}, headers=ALICE)
    assert again.status_code == 200 and again.json() == view
    assert_error(
        devbox_client.post(f"{URL}/{devbox_id}/execute_async", json={"command": "true"}, headers=ALICE),
        400,
        "devbox_not_running",
        "shutdown",
    )


def test_keep_alive_returns_empty_object(devbox_client):
    devbox_id = create_running(devbox_client)["id"]
    response = devbox_client.post(f"{URL}/{devbox_id}/keep_alive", headers=ALICE)
    assert response.status_code == 200 and response.json() == {}


# --- no runtime, restart ---------------------------------------------------------------


def test_without_a_runtime_devbox_endpoints_answer_503(client):
    for method, path in [
        ("post", URL),
        ("post", f"{URL}/create_and_await_running"),
        ("get", URL),
        ("get", f"{URL}/dbx_x"),
        ("post", f"{URL}/dbx_x/shutdown"),
        ("post", f"{URL}/dbx_x/execute_async"),
        ("get", f"{URL}/dbx_x/executions/exn_x"),
    ]:
        response = getattr(client, method)(path, headers=ALICE)
        body = assert_error(response, 503, "no_runtime", "runtime")
        assert response.headers["x-should-retry"] == "false", body
    assert_error(client.get(URL), 401)
    assert client.post("/v1/network-policies", json={"name": "still works"}, headers=ALICE).status_code == 200


def test_restart_reconciles_devboxes_that_are_gone(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    first_runtime = LocalRuntime(tmp_path / "rt1")
    first = TestClient(create_app(settings, first_runtime))
    first.__enter__()
    kept = create_running(first)["id"]
    lost = create_running(first)["id"]
    finished = create_running(first)["id"]
    first.post(f"{URL}/{finished}/shutdown", headers=ALICE)
    running = first.post(f"{URL}/{lost}/execute_async", json={"command": "sleep 30"}, headers=ALICE).json()
    first.__exit__(None, None, None)
    first_runtime.close()  # the "crash": every process is gone

    second_runtime = LocalRuntime(tmp_path / "rt2")
    second = TestClient(create_app(settings, second_runtime))
    second.__enter__()
    try:
        services = second.app.state.services
        # Stored as running: nothing rewrites it until the runtime's findings are reconciled.
        assert second.get(f"{URL}/{lost}", headers=ALICE).json()["status"] == "running"
        assert services.devboxes.reconcile({kept}) == [lost]
        gone = second.get(f"{URL}/{lost}", headers=ALICE).json()
        assert gone["status"] == "failure" and gone["failure_reason"] == "health_check_failed"
        assert "restarted" in gone["state_transitions"][-1]["failure_reason"]
        assert second.get(f"{URL}/{kept}", headers=ALICE).json()["status"] == "running"
        assert second.get(f"{URL}/{finished}", headers=ALICE).json()["status"] == "shutdown"
        execution = second.get(f"{URL}/{lost}/executions/{running['execution_id']}", headers=ALICE).json()
        assert execution["status"] == "completed" and execution["exit_status"] == 137
        assert execution["stdout"] == "" and execution["stderr"] == ""
        assert services.devboxes.reconcile(set()) == [kept]
        assert services.devboxes.reconcile(set()) == []
    finally:
        second.__exit__(None, None, None)
        second_runtime.close()


# --- the lifecycle table and holds -----------------------------------------------------


def test_lifecycle_table_is_consistent():
    from simulator import lifecycle

    assert lifecycle.TERMINAL == {"failure", "shutdown"}
    for status in lifecycle.ACTIVE:
        assert {"failure", "shutdown"} <= lifecycle.TRANSITIONS[status], status
    assert lifecycle.can_move("provisioning", "initializing") and lifecycle.can_move("initializing", "running")
    assert not lifecycle.can_move("running", "provisioning")
    assert not lifecycle.can_move("shutdown", "running")
    with pytest.raises(lifecycle.InvalidTransition, match="dbx_1 is shutdown and cannot become running"):
        lifecycle.check_move("dbx_1", "shutdown", "running")


def test_holds_accept_floats_and_are_capped():
    from simulator.devboxes import hold_seconds
    from simulator.errors import InvalidRequest

    assert hold_seconds(None, 10, 30) == 10
    assert hold_seconds(29.97, 10, 30) == 29.97
    assert hold_seconds(300, 10, 30) == 30
    assert hold_seconds(0, 10, 30) == 0
    with pytest.raises(InvalidRequest):
        hold_seconds(-0.5, 10, 30)


def test_provisioning_gets_the_policy_and_environment(devbox_client, runtime):
    seen = []
    original = runtime.provision
    runtime.provision = lambda spec: (seen.append(spec), original(spec))[1]
    policy = devbox_client.post("/v1/network-policies", json={"name": "p", "allow_all": True}, headers=ALICE).json()
    devbox_id = create_running(
        devbox_client, launch_parameters={"network_policy_id": policy["id"]}, environment_variables={"A": "1"}
    )["id"]
    [spec] = seen
    assert spec.id == devbox_id and spec.policy.id == policy["id"] and spec.policy.egress.allow_all is True
    assert spec.environment_variables == {"A": "1"} and spec.account.startswith("acct_")
    no_policy = create_running(devbox_client)["id"]
    assert seen[1].id == no_policy and seen[1].policy is None


@pytest.mark.parametrize("body, named", [
    ({"launch_parameters": {"network_policyid": "npol_x"}}, "'network_policyid' is not a launch parameter"),
    ({"launch_parameters": {"networkPolicyId": "npol_x"}}, "did you mean 'network_policy_id'"),
    ({"launch_parameters": {"policy_id": "npol_x", "launch_commands": []}}, "'policy_id'"),
    ({"network_policy_id": "npol_x"}, "goes in launch_parameters.network_policy_id"),
    ({"policy": "npol_x"}, "'policy' is not a devbox field"),
])
def test_a_policy_given_where_it_would_be_ignored_is_refused(devbox_client, body, named):
    """Ignored like other unknown keys, these would leave the devbox unrestricted."""
    body = assert_error(devbox_client.post(URL, json=body, headers=ALICE), 400, "invalid_request", named)
    assert "unrestricted" in body["message"]
    assert_error(devbox_client.post(f"{URL}/create_and_await_running", json={"launch_parameters": {"policy": "x"}},
                                    headers=ALICE), 400, "invalid_request", "network_policy_id")
    assert_error(devbox_client.post("/v1/blueprints", json={"name": "b", "launch_parameters": {"policyId": "x"}},
                                    headers=ALICE), 400, "invalid_request", "network_policy_id")
    for key in ("network_policyid", "policy_id", "networkPolicyId"):  # a blueprint's build policy, misspelt
        assert_error(devbox_client.post("/v1/blueprints", json={"name": "b", key: "x"}, headers=ALICE), 400,
                     "invalid_request", "leave the build unrestricted")
    assert devbox_client.get(URL, headers=ALICE).json()["devboxes"] == []
    assert devbox_client.get("/v1/blueprints", headers=ALICE).json()["blueprints"] == []
    # Other unknown keys are still ignored and echoed (a newer SDK may send more), those that
    # name some other policy too.
    others = {"some_new_field": 1, "restart_policy": "always", "pull_policy": "never", "network_id": "n"}
    assert create(devbox_client, launch_parameters=others)["launch_parameters"] == others
    assert create(devbox_client, idle_policy="x", policies=[])["launch_parameters"] is not None


def test_a_custom_size_within_the_sdks_limits_is_taken_and_echoed(devbox_client):
    launch = {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 0.5, "custom_gb_memory": 4, "custom_disk_size": 2}
    assert create(devbox_client, launch_parameters=launch)["launch_parameters"] == launch


def test_listing_a_devboxs_connections_does_not_hold_up_other_requests(devbox_client, runtime, monkeypatch):
    """The router's connection set grows with every devbox's traffic: reading it took seconds
    on the event loop, and every account's requests waited."""
    devbox_id = create_running(devbox_client)["id"]
    started, release, outcome = threading.Event(), threading.Event(), {}

    class SlowDataPlane:
        def allowed_connections(self, devbox):
            started.set()
            outcome["released"] = release.wait(10)  # False: nothing else was answered meanwhile
            return [{"destination": "192.0.2.10", "protocol": "tcp", "port": 443, "connections": 1}]

    monkeypatch.setattr(runtime, "dataplane", SlowDataPlane(), raising=False)
    thread, box = in_thread(lambda: devbox_client.get(f"{URL}/{devbox_id}/network_connections", headers=ALICE))
    assert started.wait(10)
    assert devbox_client.get("/healthz").status_code == 200  # answered while the listing runs
    release.set()
    thread.join(10)
    assert outcome["released"] and box["result"].json()["connections"][0]["destination"] == "192.0.2.10"


def test_names_are_text_without_control_characters(devbox_client):
    """Devbox, blueprint and snapshot names, like policy names: a line break in one would
    forge a line of the server's log, NUL and escapes garble the CLI's tables."""
    for name in ("a\x00b", "line\nbreak", "del\x7f", "c1\x85next-line"):
        assert_error(devbox_client.post(URL, json={"name": name}, headers=ALICE), 400, "invalid_request", "control")
        assert_error(devbox_client.post("/v1/blueprints", json={"name": name}, headers=ALICE), 400, "invalid_request",
                     "control")
    view = create_running(devbox_client, name="ok")
    assert_error(devbox_client.post(f"{URL}/{view['id']}", json={"name": "bad\x1b[2J"}, headers=ALICE), 400,
                 "invalid_request", "control")
    assert_error(devbox_client.post(f"{URL}/{view['id']}/snapshot_disk_async", json={"name": "bad\nname"},
                                    headers=ALICE), 400, "invalid_request", "control")
    assert devbox_client.get(f"{URL}/{view['id']}", headers=ALICE).json()["name"] == "ok"
    assert devbox_client.get("/v1/blueprints", headers=ALICE).json()["blueprints"] == []


GIB = 1024**3


@pytest.mark.parametrize(
    "launch_parameters, cpus, memory, cap",
    [
        ({}, 1, 2, 2),  # SMALL when unset
        ({"resource_size_request": "X_SMALL"}, 0.5, 1, 1),
        ({"resource_size_request": "XX_LARGE"}, 8, 32, 2),  # memory: at most the host-safe 2 GiB
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 4, "custom_gb_memory": 8, "custom_disk_size": 4}, 4, 8, 2),
    ],
)
def test_the_runtime_holds_a_devbox_to_its_size(devbox_client, runtime, monkeypatch, launch_parameters, cpus, memory, cap):
    asked = []
    real = runtime.provision

    def provision(spec):
        asked.append((spec.cpus, spec.memory, memory_limit(spec), cpu_limit(spec)))
        return real(spec)

    monkeypatch.setattr(runtime, "provision", provision)
    create_running(devbox_client, launch_parameters=launch_parameters)
    # The CPU cap: at most the machine's CPUs (Docker refuses more; as a quota more is none).
    assert asked == [(cpus, memory * GIB, cap * GIB, min(cpus, len(os.sched_getaffinity(0))))]
