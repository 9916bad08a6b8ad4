"""Helpers shared by the devbox, blueprint and disk-snapshot HTTP tests (the test-double runtime)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from tests.api.conftest import ALICE
from tests.api.devbox_fixtures import needs_hooks


def assert_error(response, status, code=None, contains=None):
    """The simulator's error shape; deliberate errors say ``x-should-retry: false`` (so the SDK
    does not back off), a 408 hold timeout ``true`` (the SDK polls again at once)."""
    assert response.status_code == status, response.text
    assert response.headers.get("x-should-retry") == ("true" if status == 408 else "false"), response.headers
    body = response.json()
    assert set(body) == {"message", "error_code"}, body
    if code:
        assert body["error_code"] == code, body
    if contains:
        assert contains in body["message"], body["message"]
    return body


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def running_devbox(client, headers=ALICE, **body):
    view = ok(client.post("/v1/devboxes/create_and_await_running", json=body, headers=headers))
    assert view["status"] == "running", view
    return view


def sh(client, devbox_id, command, headers=ALICE):
    """Run a command to completion; (exit status, stdout)."""
    result = ok(client.post(f"/v1/devboxes/{devbox_id}/execute_sync", json={"command": command}, headers=headers))
    return result["exit_status"], result["stdout"]


def poll(fetch, done, timeout=10.0):
    """Bounded poll: ``fetch()`` until ``done(result)``; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result):
            return result
        assert time.monotonic() < deadline, f"still not done: {result}"
        time.sleep(0.02)


def snapshot_status(client, snapshot_id, headers=ALICE):
    return ok(client.get(f"/v1/devboxes/disk_snapshots/{snapshot_id}/status", headers=headers))


@contextmanager
def snapshot_held(client, runtime, devbox_id, headers=ALICE, **body):
    """``snapshot_disk_async`` with the runtime's capture held: yields the snapshot's view
    while it is ``in_progress``; the capture goes on when the block ends (also on failure)."""
    needs_hooks(runtime, "hold_snapshots")
    gate = runtime.hold_snapshots()
    try:
        yield ok(client.post(f"/v1/devboxes/{devbox_id}/snapshot_disk_async", json=body, headers=headers))
    finally:
        gate.set()


def settled_snapshot(client, snapshot_id, headers=ALICE):
    return poll(lambda: snapshot_status(client, snapshot_id, headers), lambda s: s["status"] != "in_progress")


def built(client, blueprint_id, headers=ALICE):
    """Poll like the SDK's await_build_complete: until it leaves queued/building."""
    return poll(
        lambda: ok(client.get(f"/v1/blueprints/{blueprint_id}", headers=headers)),
        lambda b: b["status"] not in ("queued", "provisioning", "building"),
    )


def blueprint(client, headers=ALICE, **body):
    view = ok(client.post("/v1/blueprints", json=body, headers=headers))
    return built(client, view["id"], headers)
