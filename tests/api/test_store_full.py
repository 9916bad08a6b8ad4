"""When the store cannot be written (the data dir's file system full): clear errors for
requests, and outcomes of background work (a command's end, a snapshot, a build) kept and
stored once it can be written again, never left ``running`` or ``in_progress`` for good.

The store's writes are made to fail the way SQLite fails on a full disk; the disk itself is
not filled (that would fill the machine's for every other test).
"""

from __future__ import annotations

import sqlite3

import pytest
from fastapi.testclient import TestClient

from simulator import blueprint_store, devbox_store, execution_store, policy_store, snapshot_store, store_retry
from tests.api.conftest import ALICE
from tests.api.disk_helpers import built, ok, running_devbox, settled_snapshot
from tests.api.test_devboxes import URL, until
from tests.api.test_executions import wait

FULL = sqlite3.OperationalError("database or disk is full")


class Full:
    """Replaces a store function with one that fails while ``on`` (for the calls ``when`` picks:
    ``when(*args)``, e.g. the update that records a given status)."""

    def __init__(self, monkeypatch, module, name, when=lambda *args: True):
        self.on = True
        self.failures = 0
        real = getattr(module, name)

        def failing(*args, **kwargs):
            if self.on and when(*args):
                self.failures += 1
                raise FULL
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, failing)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(store_retry, "RETRY_SECONDS", 0.05)


def test_a_write_the_store_cannot_take_is_a_clear_507_and_nothing_is_half_stored(client, monkeypatch):
    full = Full(monkeypatch, policy_store, "insert")
    unraised = TestClient(client.app, raise_server_exceptions=False)  # as a real server answers
    response = unraised.post("/v1/network-policies", json={"name": "p"}, headers=ALICE)
    assert response.status_code == 507, response.text
    body = response.json()
    assert body["error_code"] == "insufficient_storage" and "disk is full" in body["message"]
    full.on = False
    assert client.get("/v1/network-policies", headers=ALICE).json()["total_count"] == 0
    assert ok(client.post("/v1/network-policies", json={"name": "p"}, headers=ALICE))["name"] == "p"


def test_a_command_that_ends_while_the_store_is_full_is_answered_from_memory_then_stored(devbox_client, monkeypatch):
    client = devbox_client
    devbox = running_devbox(client)["id"]
    full = Full(monkeypatch, execution_store, "complete")
    started = ok(client.post(f"{URL}/{devbox}/execute_async", json={"command": "echo done"}, headers=ALICE))
    # Completed at once for every reader (it was "running" for good: waits never ended) ...
    finished = ok(wait(client, devbox, started["execution_id"], timeout=5))
    assert (finished["status"], finished["exit_status"], finished["stdout"]) == ("completed", 0, "done\n")
    got = ok(client.get(f"{URL}/{devbox}/executions/{started['execution_id']}", headers=ALICE))
    assert got["status"] == "completed" and got["stdout"] == "done\n"
    until(lambda: full.failures >= 2)  # retried, not given up
    # ... and stored once the store takes it.
    full.on = False
    services = client.app.state.services
    account = services.executions._live[started["execution_id"]].execution.account

    def stored():
        with services.db.read() as conn:
            row = execution_store.get(conn, account, devbox, started["execution_id"])
        return row is not None and row.status == "completed" and row.stdout == "done\n"

    until(stored)
    until(lambda: started["execution_id"] not in services.executions._live)
    assert ok(client.get(f"{URL}/{devbox}/executions/{started['execution_id']}", headers=ALICE))["stdout"] == "done\n"


def test_a_snapshot_that_finishes_while_the_store_is_full_completes_once_it_can_be_stored(devbox_client, monkeypatch):
    client = devbox_client
    devbox = running_devbox(client)["id"]
    full = Full(monkeypatch, snapshot_store, "update")
    view = ok(client.post(f"{URL}/{devbox}/snapshot_disk_async", headers=ALICE))
    until(lambda: full.failures >= 2)
    full.on = False
    assert settled_snapshot(client, view["id"])["status"] == "complete"
    ok(client.post(f"{URL}/{devbox}/shutdown", headers=ALICE))  # was a 409 snapshot_in_progress for good


def test_a_build_that_ends_while_the_store_is_full_is_recorded_once_it_can_be(devbox_client, monkeypatch):
    client = devbox_client
    # the start is recorded, the finish not
    full = Full(monkeypatch, blueprint_store, "update", when=lambda conn, blueprint: blueprint.status == "build_complete")
    view = ok(client.post("/v1/blueprints", json={"name": "bp", "system_setup_commands": ["echo hi"]}, headers=ALICE))
    until(lambda: full.failures >= 2, timeout=30)
    full.on = False
    assert built(client, view["id"])["status"] == "build_complete"


def test_the_stop_ends_every_devbox_even_when_the_store_cannot_record_it(devbox_client, runtime, monkeypatch):
    client = devbox_client
    devbox = running_devbox(client)["id"]
    assert devbox in runtime.alive_ids()
    services = client.app.state.services

    def cannot_record(*args, **kwargs):
        raise FULL

    monkeypatch.setattr(services.devboxes, "_move", cannot_record)
    assert services.devboxes.stop_all("the simulator stopped") == [devbox]
    assert devbox not in runtime.alive_ids()  # its runtime released all the same


def test_the_stop_cancels_a_provisioning_even_when_the_store_cannot_record_it(devbox_client, runtime, monkeypatch):
    from simulator import devboxes as devboxes_module

    client = devbox_client
    services = client.app.state.services
    gate = runtime.hold_provisioning()  # released only at the end: the cancellation ends it
    try:
        devbox = ok(client.post(URL, json={}, headers=ALICE))["id"]
        monkeypatch.setattr(devboxes_module, "STOP_PROVISIONING_WAIT_SECONDS", 5)

        def cannot_record(*args, **kwargs):
            raise FULL

        monkeypatch.setattr(services.devboxes, "_move", cannot_record)
        assert services.devboxes.stop_all("the simulator stopped") == [devbox]
        assert not services.devboxes._provisioning and devbox not in runtime.alive_ids()
    finally:
        gate.set()


def _devbox(client, devbox_id):
    return client.get(f"{URL}/{devbox_id}", headers=ALICE).json()


def test_a_suspend_whose_last_write_fails_thaws_the_devbox_which_runs_on(devbox_client, runtime, monkeypatch):
    """The freeze happened, "suspended" could not be stored: stuck "suspending", frozen, with
    suspend and resume both refused, was the outcome. Now it is thawed and "running" again."""
    client = devbox_client
    devbox = running_devbox(client)["id"]
    full = Full(monkeypatch, devbox_store, "update", when=lambda conn, view: view.status in ("suspended", "running"))
    response = TestClient(client.app, raise_server_exceptions=False).post(f"{URL}/{devbox}/suspend", headers=ALICE)
    assert response.status_code == 507, response.text
    assert devbox not in runtime.suspended  # thawed at once
    full.on = False
    until(lambda: _devbox(client, devbox)["status"] == "running")
    assert ok(client.post(f"{URL}/{devbox}/execute_sync", json={"command": "echo alive"}, headers=ALICE))["stdout"] == "alive\n"
    assert ok(client.post(f"{URL}/{devbox}/suspend", headers=ALICE))["status"] == "suspended"


def test_a_resume_whose_write_fails_freezes_the_devbox_again_as_the_store_says(devbox_client, runtime, monkeypatch):
    """The thaw happened, "running" could not be stored: the devbox ran on while stored
    "suspended" (commands refused, no keep-alive timer). Now it is frozen again; a resume
    once the store can write works."""
    client = devbox_client
    devbox = running_devbox(client)["id"]
    assert ok(client.post(f"{URL}/{devbox}/suspend", headers=ALICE))["status"] == "suspended"
    full = Full(monkeypatch, devbox_store, "update", when=lambda conn, view: view.status == "running")
    response = TestClient(client.app, raise_server_exceptions=False).post(f"{URL}/{devbox}/resume", headers=ALICE)
    assert response.status_code == 507, response.text
    assert devbox in runtime.suspended  # frozen again
    assert _devbox(client, devbox)["status"] == "suspended"
    full.on = False
    assert ok(client.post(f"{URL}/{devbox}/resume", headers=ALICE))["status"] == "running"
    assert devbox not in runtime.suspended
    assert ok(client.post(f"{URL}/{devbox}/execute_sync", json={"command": "echo alive"}, headers=ALICE))["stdout"] == "alive\n"


def test_a_resume_not_stored_nor_frozen_again_is_stored_running_once_it_can_be(devbox_client, runtime, monkeypatch):
    client = devbox_client
    devbox = running_devbox(client)["id"]
    assert ok(client.post(f"{URL}/{devbox}/suspend", headers=ALICE))["status"] == "suspended"
    full = Full(monkeypatch, devbox_store, "update", when=lambda conn, view: view.status == "running")

    def cannot_freeze(devbox_id):
        raise RuntimeError("the freezer is gone")

    monkeypatch.setattr(runtime, "suspend", cannot_freeze)
    response = TestClient(client.app, raise_server_exceptions=False).post(f"{URL}/{devbox}/resume", headers=ALICE)
    assert response.status_code == 507, response.text
    assert devbox not in runtime.suspended  # it runs: the store must come to say so
    full.on = False
    until(lambda: _devbox(client, devbox)["status"] == "running")
    assert ok(client.post(f"{URL}/{devbox}/execute_sync", json={"command": "echo alive"}, headers=ALICE))["stdout"] == "alive\n"


def test_an_entrypoint_ending_while_the_store_is_full_shuts_the_devbox_down_once_stored(devbox_client, monkeypatch):
    client = devbox_client
    full = Full(monkeypatch, devbox_store, "update", when=lambda conn, view: view.status == "shutdown")
    devbox = running_devbox(client, entrypoint="echo done")["id"]
    until(lambda: full.failures >= 2)
    full.on = False
    until(lambda: _devbox(client, devbox)["status"] == "shutdown")
    assert _devbox(client, devbox)["shutdown_reason"] == "entrypoint_exit"


def test_a_devbox_whose_start_cannot_be_stored_fails_once_it_can_be_and_frees_its_runtime(devbox_client, runtime, monkeypatch):
    client = devbox_client
    full = Full(monkeypatch, devbox_store, "update", when=lambda conn, view: view.status in ("running", "failure"))
    devbox = ok(client.post(URL, json={}, headers=ALICE))["id"]
    until(lambda: full.failures >= 3)
    full.on = False
    until(lambda: _devbox(client, devbox)["status"] == "failure")  # was "provisioning" for good
    until(lambda: devbox not in runtime.alive_ids())
