"""HTTP tests for disk snapshots (snapshot_disk[_async], status, list, update, delete) and
devboxes created from them, on the test-double runtime."""

from __future__ import annotations

import threading

import pytest

from simulator import ids
from tests.api.conftest import ALICE, BOB
from tests.api.devbox_fixtures import needs_hooks
from tests.api.disk_helpers import (
    assert_error,
    blueprint,
    ok,
    poll,
    running_devbox,
    settled_snapshot,
    snapshot_held,
    sh,
    snapshot_status,
)

SNAPSHOTS = "/v1/devboxes/disk_snapshots"
VIEW_FIELDS = {"id", "create_time_ms", "metadata", "source_devbox_id", "name", "commit_message", "size_bytes",
               "source_blueprint_id"}


def snapshot(client, devbox_id, headers=ALICE, **body):
    return ok(client.post(f"/v1/devboxes/{devbox_id}/snapshot_disk", json=body, headers=headers))


def test_snapshot_disk_captures_files_and_a_new_devbox_gets_them(devbox_client):
    client = devbox_client
    source = running_devbox(client)
    code, _ = sh(client, source["id"], "mkdir -p sub/deep && printf one > a.txt && printf two > sub/deep/b.txt"
                 " && chmod 600 a.txt && ln -s a.txt link && chmod 751 sub")
    assert code == 0
    view = snapshot(client, source["id"], name="first", commit_message="initial", metadata={"team": "x"})
    assert set(view) == VIEW_FIELDS
    assert ids.looks_like("snp", view["id"])
    assert view["source_devbox_id"] == source["id"] and view["name"] == "first"
    assert view["commit_message"] == "initial" and view["metadata"] == {"team": "x"}
    status = snapshot_status(client, view["id"])
    assert status["status"] == "complete" and status["error_message"] is None and status["snapshot"] == view
    # The source changes afterwards; the snapshot does not.
    sh(client, source["id"], "printf changed > a.txt")
    restored = running_devbox(client, snapshot_id=view["id"])
    assert restored["snapshot_id"] == view["id"] and restored["blueprint_id"] is None
    code, out = sh(client, restored["id"], "cat a.txt sub/deep/b.txt; echo; readlink link; stat -c %a a.txt sub")
    assert code == 0
    assert out == "onetwo\na.txt\n600\n751\n"
    # ... and the restored devbox is independent of the source.
    sh(client, restored["id"], "printf mine > a.txt")
    assert sh(client, source["id"], "cat a.txt")[1] == "changed"


def test_snapshot_async_is_in_progress_blocks_shutdown_and_delete(devbox_client, runtime):
    client = devbox_client
    source = running_devbox(client)
    with snapshot_held(client, runtime, source["id"], name="slow") as view:
        assert snapshot_status(client, view["id"])["status"] == "in_progress"
        body = assert_error(client.post(f"/v1/devboxes/{source['id']}/shutdown", headers=ALICE), 409, "snapshot_in_progress")
        assert view["id"] in body["message"]
        assert_error(client.post(f"{SNAPSHOTS}/{view['id']}/delete", headers=ALICE), 409, "snapshot_in_progress")
        assert_error(client.post("/v1/devboxes", json={"snapshot_id": view["id"]}, headers=ALICE), 400, "snapshot_not_ready")
        assert ok(client.get(f"/v1/devboxes/{source['id']}", headers=ALICE))["status"] == "running"
    assert settled_snapshot(client, view["id"])["status"] == "complete"
    assert ok(client.post(f"/v1/devboxes/{source['id']}/shutdown", headers=ALICE))["status"] == "shutdown"
    # The snapshot outlives its devbox.
    restored = running_devbox(client, snapshot_id=view["id"])
    assert restored["status"] == "running"


def test_a_failed_snapshot_reports_error(devbox_client, runtime):
    needs_hooks(runtime, "fail_snapshot")
    client = devbox_client
    source = running_devbox(client)
    runtime.fail_snapshot("disk exploded")
    view = ok(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk_async", headers=ALICE))
    status = settled_snapshot(client, view["id"])
    assert status["status"] == "error" and "disk exploded" in status["error_message"]
    runtime.fail_snapshot("disk exploded again")
    assert_error(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk", headers=ALICE), 400, "snapshot_failed",
                 "disk exploded again")
    assert_error(client.post("/v1/devboxes", json={"snapshot_id": view["id"]}, headers=ALICE), 400, "snapshot_not_ready")
    # An error snapshot can be deleted.
    assert ok(client.post(f"{SNAPSHOTS}/{view['id']}/delete", headers=ALICE)) == {}


def test_snapshot_errors(devbox_client):
    client = devbox_client
    assert_error(client.post("/v1/devboxes/dbx_nope/snapshot_disk", headers=ALICE), 404, "not_found")
    assert_error(client.post("/v1/devboxes/dbx_nope/snapshot_disk_async", headers=ALICE), 404, "not_found")
    source = running_devbox(client)
    assert_error(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk", headers=BOB), 404)  # another account
    too_long = {"commit_message": "m" * 1001}
    assert_error(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk", json=too_long, headers=ALICE), 400,
                 "invalid_request", "commit_message")
    assert_error(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk", json={"metadata": {"a": 1}}, headers=ALICE),
                 400, "invalid_request")
    assert_error(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk", json={"name": "n" * 257}, headers=ALICE),
                 400, "invalid_request")
    assert ok(client.get(SNAPSHOTS, params={"devbox_id": source["id"]}, headers=ALICE))["snapshots"] == []  # none made
    ok(client.post(f"/v1/devboxes/{source['id']}/shutdown", headers=ALICE))
    assert_error(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk", headers=ALICE), 400, "devbox_not_running")
    assert_error(client.get(f"{SNAPSHOTS}/snp_nope/status", headers=ALICE), 404, "not_found")
    assert_error(client.post(f"{SNAPSHOTS}/snp_nope", json={"name": "x"}, headers=ALICE), 404, "not_found")
    assert_error(client.post(f"{SNAPSHOTS}/snp_nope/delete", headers=ALICE), 404, "not_found")
    assert_error(client.post("/v1/devboxes", json={"snapshot_id": "snp_nope"}, headers=ALICE), 400, "unknown_snapshot")


def test_update_replaces_given_fields_only(devbox_client):
    client = devbox_client
    source = running_devbox(client)
    view = snapshot(client, source["id"], name="n1", commit_message="c1", metadata={"a": "1", "b": "2"})
    updated = ok(client.post(f"{SNAPSHOTS}/{view['id']}", json={"metadata": {"c": "3"}}, headers=ALICE))
    assert updated["metadata"] == {"c": "3"} and updated["name"] == "n1" and updated["commit_message"] == "c1"
    updated = ok(client.post(f"{SNAPSHOTS}/{view['id']}", json={"name": "n2", "commit_message": None}, headers=ALICE))
    assert updated["name"] == "n2" and updated["commit_message"] == "c1" and updated["metadata"] == {"c": "3"}
    assert ok(client.post(f"{SNAPSHOTS}/{view['id']}", headers=ALICE))["name"] == "n2"  # no body: nothing changes
    assert snapshot_status(client, view["id"])["snapshot"] == updated
    assert_error(client.post(f"{SNAPSHOTS}/{view['id']}", json={"commit_message": "x" * 1001}, headers=ALICE), 400)
    assert snapshot_status(client, view["id"])["snapshot"] == updated  # nothing half-applied
    assert_error(client.post(f"{SNAPSHOTS}/{view['id']}", json={"name": "y"}, headers=BOB), 404)
    assert_error(client.get(f"{SNAPSHOTS}/{view['id']}/status", headers=BOB), 404)
    assert ok(client.get(SNAPSHOTS, headers=BOB))["snapshots"] == []


def test_delete_keeps_a_deleted_status_and_removes_the_disk(devbox_client, runtime):
    client = devbox_client
    source = running_devbox(client)
    view = snapshot(client, source["id"])
    if hasattr(runtime, "disk_ids"):
        assert view["id"] in runtime.disk_ids()
    assert_error(client.post(f"{SNAPSHOTS}/{view['id']}/delete", headers=BOB), 404)
    assert ok(client.post(f"{SNAPSHOTS}/{view['id']}/delete", headers=ALICE)) == {}
    status = snapshot_status(client, view["id"])
    assert status["status"] == "deleted" and status["snapshot"]["id"] == view["id"]
    if hasattr(runtime, "disk_ids"):
        assert view["id"] not in runtime.disk_ids()
    assert ok(client.post(f"{SNAPSHOTS}/{view['id']}/delete", headers=ALICE)) == {}  # idempotent
    assert ok(client.get(SNAPSHOTS, headers=ALICE))["snapshots"] == []
    assert_error(client.post(f"{SNAPSHOTS}/{view['id']}", json={"name": "x"}, headers=ALICE), 404)
    assert_error(client.post("/v1/devboxes", json={"snapshot_id": view["id"]}, headers=ALICE), 400, "unknown_snapshot")


def test_list_filters_and_pages(devbox_client):
    client = devbox_client
    one, two = running_devbox(client), running_devbox(client)
    a = snapshot(client, one["id"], metadata={"env": "dev", "team": "red"})
    b = snapshot(client, one["id"], metadata={"env": "prod", "team": "red"})
    c = snapshot(client, two["id"], metadata={"env": "prod", "team": "blue", "key": "k"})
    snapshot(client, running_devbox(client, headers=BOB)["id"], headers=BOB)  # another account's

    def listed(**params):
        return [s["id"] for s in ok(client.get(SNAPSHOTS, params=params, headers=ALICE))["snapshots"]]

    assert listed() == [c["id"], b["id"], a["id"]]  # newest first, only this account's
    assert listed(devbox_id=one["id"]) == [b["id"], a["id"]]
    assert listed(**{"metadata[env]": "prod"}) == [c["id"], b["id"]]
    assert listed(**{"metadata[env]": "prod", "metadata[team]": "red"}) == [b["id"]]
    assert listed(**{"metadata[team][in]": "blue,red"}) == [c["id"], b["id"], a["id"]]
    assert listed(**{"metadata[env][in]": "dev,qa"}) == [a["id"]]
    assert listed(**{"metadata[nope]": "x"}) == []
    assert listed(source_blueprint_id="bpt_nothing") == []
    # What the SDK sends for metadata_key= (the literal key "key").
    assert listed(**{"metadata[key]": "k"}) == [c["id"]]
    page = ok(client.get(SNAPSHOTS, params={"limit": 2}, headers=ALICE))
    assert [s["id"] for s in page["snapshots"]] == [c["id"], b["id"]]
    assert page["has_more"] is True and page["total_count"] == 3
    page = ok(client.get(SNAPSHOTS, params={"limit": 2, "starting_after": b["id"], "include_total_count": "false"},
                         headers=ALICE))
    assert [s["id"] for s in page["snapshots"]] == [a["id"]] and page["has_more"] is False
    assert page["total_count"] is None
    for bad in ({"metadata[]": "x"}, {"metadata[a][b]": "x"}, {"metadata[a][in]": ","}, {"limit": 0}, {"limit": 5001}):
        assert_error(client.get(SNAPSHOTS, params=bad, headers=ALICE), 400, "invalid_request")
    # Bounded filters: a thousand of them was a 500 (SQLite's expression depth), not a 400.
    most = {f"metadata[k{i}]": "v" for i in range(63)} | {"metadata[team][in]": ",".join(["red"] * 1000)}
    assert listed(**most) == []
    for bad in ({f"metadata[k{i}]": "v" for i in range(1000)}, {"metadata[team][in]": ",".join(["red"] * 1001)}):
        body = assert_error(client.get(SNAPSHOTS, params=bad, headers=ALICE), 400, "invalid_request")
        assert "at most" in body["message"]


def test_policy_inherited_from_the_source_unless_the_request_sets_one(devbox_client):
    client = devbox_client
    p = ok(client.post("/v1/network-policies", json={"name": "snap-p", "allow_all": True}, headers=ALICE))
    q = ok(client.post("/v1/network-policies", json={"name": "snap-q", "allow_all": True}, headers=ALICE))
    source = running_devbox(client, launch_parameters={"network_policy_id": p["id"]})
    view = snapshot(client, source["id"])
    inherited = running_devbox(client, snapshot_id=view["id"])
    assert inherited["launch_parameters"]["network_policy_id"] == p["id"]
    overridden = running_devbox(client, snapshot_id=view["id"], launch_parameters={"network_policy_id": q["id"]})
    assert overridden["launch_parameters"]["network_policy_id"] == q["id"]
    # An empty id is an unknown policy: neither "none" nor "the source's".
    assert_error(client.post("/v1/devboxes", json={"snapshot_id": view["id"], "launch_parameters": {"network_policy_id": ""}},
                             headers=ALICE), 400, "unknown_network_policy")
    for devbox in (source, inherited):
        ok(client.post(f"/v1/devboxes/{devbox['id']}/shutdown", headers=ALICE))
    ok(client.post(f"/v1/network-policies/{p['id']}/delete", headers=ALICE))
    # The source's policy is gone: never unrestricted by accident, ask for one.
    assert_error(client.post("/v1/devboxes", json={"snapshot_id": view["id"]}, headers=ALICE), 400,
                 "unknown_network_policy", "launch_parameters.network_policy_id")
    again = running_devbox(client, snapshot_id=view["id"], launch_parameters={"network_policy_id": q["id"]})
    assert again["launch_parameters"]["network_policy_id"] == q["id"]


def test_at_most_one_source(devbox_client):
    client = devbox_client
    source = running_devbox(client)
    view = snapshot(client, source["id"])
    for other in ("bpt_x", ""):  # an empty id is a source too, not a way past this rule
        assert_error(client.post("/v1/devboxes", json={"snapshot_id": view["id"], "blueprint_id": other},
                                 headers=ALICE), 400, "invalid_request")
    assert_error(client.post("/v1/devboxes", json={"snapshot_id": view["id"]}, headers=BOB), 400, "unknown_snapshot")


def test_async_retry_with_the_same_request_id_returns_the_same_snapshot(devbox_client):
    client = devbox_client
    source = running_devbox(client)
    headers = {**ALICE, "x-request-id": "snap-retry-1"}
    first = ok(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk_async", headers=headers))
    second = ok(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk_async", headers=headers))
    assert first["id"] == second["id"]
    settled_snapshot(client, first["id"])
    assert len(ok(client.get(SNAPSHOTS, headers=ALICE))["snapshots"]) == 1
    # The same id for another devbox's snapshot is no retry: that devbox is snapshotted.
    other = running_devbox(client)
    third = ok(client.post(f"/v1/devboxes/{other['id']}/snapshot_disk_async", headers=headers))
    assert third["id"] != first["id"] and third["source_devbox_id"] == other["id"]
    settled_snapshot(client, third["id"])


def test_a_restart_turns_a_snapshot_in_progress_into_an_error(devbox_client, runtime):
    client = devbox_client
    source = running_devbox(client)
    with snapshot_held(client, runtime, source["id"]) as view:
        assert client.app.state.services.snapshots.reconcile() == [view["id"]]
        status = snapshot_status(client, view["id"])
        assert status["status"] == "error" and "restarted" in status["error_message"]
    # The late capture does not revive it, and its files are removed.
    poll(lambda: not any(t.name == f"snapshot-{view['id']}" for t in threading.enumerate()), bool)
    assert snapshot_status(client, view["id"])["status"] == "error"
    assert view["id"] not in runtime.disk_ids()


@pytest.mark.parametrize("path", ["/v1/devboxes/disk_snapshots", "/v1/blueprints"])
def test_endpoints_answer_503_without_a_runtime(client, path):
    assert_error(client.get(path, headers=ALICE), 503, "no_runtime")


def test_force_shutdown_during_a_snapshot_fails_the_snapshot(devbox_client, runtime):
    client = devbox_client
    source = running_devbox(client)
    with snapshot_held(client, runtime, source["id"]) as view:
        down = ok(client.post(f"/v1/devboxes/{source['id']}/shutdown", params={"force": "true"}, headers=ALICE))
        assert down["status"] == "shutdown"
    status = settled_snapshot(client, view["id"])
    assert status["status"] == "error" and source["id"] in status["error_message"]


def test_snapshots_survive_a_restart(devbox_server):
    import httpx

    from tests.server import ServerProcess

    with httpx.Client(base_url=devbox_server.url, headers=ALICE, timeout=30) as http:
        source = running_devbox(http)
        assert sh(http, source["id"], "echo kept > kept.txt")[0] == 0
        view = ok(http.post(f"/v1/devboxes/{source['id']}/snapshot_disk", json={"name": "durable"}))
    devbox_server.stop()
    with ServerProcess(devbox_server.data_dir, env=devbox_server.env) as again:
        with httpx.Client(base_url=again.url, headers=ALICE, timeout=30) as http:
            assert snapshot_status(http, view["id"])["status"] == "complete"
            restored = running_devbox(http, snapshot_id=view["id"])
            assert sh(http, restored["id"], "cat kept.txt") == (0, "kept\n")


def test_size_bytes_counts_the_files_bytes_not_sparse_holes(devbox_client, runtime):
    needs_hooks(runtime, "hold_snapshots")
    client = devbox_client
    source = running_devbox(client)
    code, _ = sh(client, source["id"], "head -c 300000 /dev/urandom > data.bin && truncate -s 1G sparse.bin"
                 " && mkdir d && printf abc > d/small")
    assert code == 0
    view = snapshot(client, source["id"])
    # 300,000 + 3 bytes of data; the 1 GiB hole costs nothing (the file system may round a
    # little: the tiny file counts at most its 3 bytes).
    assert 300_000 <= view["size_bytes"] <= 300_003, view
    assert snapshot_status(client, view["id"])["snapshot"]["size_bytes"] == view["size_bytes"]
    listed = ok(client.get(SNAPSHOTS, params={"devbox_id": source["id"]}, headers=ALICE))["snapshots"]
    assert [s["size_bytes"] for s in listed] == [view["size_bytes"]]
    restored = running_devbox(client, snapshot_id=view["id"])
    assert sh(client, restored["id"], "stat -c %s sparse.bin; wc -c < data.bin") == (0, "1073741824\n300000\n")
    # Unknown until the disk is captured.
    with snapshot_held(client, runtime, source["id"]) as pending:
        assert pending["size_bytes"] is None
    assert settled_snapshot(client, pending["id"])["snapshot"]["size_bytes"] == view["size_bytes"]


def test_a_restart_removes_disks_nothing_references(devbox_server):
    """A crash between recording a delete and removing the files leaves a disk behind: the
    next start removes every disk no snapshot or blueprint references, and only those."""
    import httpx

    from tests.server import ServerProcess

    with httpx.Client(base_url=devbox_server.url, headers=ALICE, timeout=30) as http:
        source = running_devbox(http)
        assert sh(http, source["id"], "echo kept > kept.txt")[0] == 0
        kept = ok(http.post(f"/v1/devboxes/{source['id']}/snapshot_disk", json={"name": "kept"}))
        deleted = ok(http.post(f"/v1/devboxes/{source['id']}/snapshot_disk", json={"name": "deleted"}))
        assert ok(http.post(f"{SNAPSHOTS}/{deleted['id']}/delete")) == {}
        built = blueprint(http, name="kept-blueprint", system_setup_commands=["echo built > b.txt"])
        assert built["status"] == "build_complete", built
    devbox_server.stop()
    disks = devbox_server.data_dir / "local-runtime" / "disks"
    assert sorted(p.name for p in disks.iterdir()) == sorted([kept["id"], built["id"]])
    # What the crash left: the deleted snapshot's files, and a disk nothing ever recorded.
    for stray in (deleted["id"], "snp_neverrecorded"):
        (disks / stray / "home").mkdir(parents=True)
        (disks / stray / "home" / "left.txt").write_text("left behind")
    with ServerProcess(devbox_server.data_dir, env=devbox_server.env) as again:
        assert sorted(p.name for p in disks.iterdir()) == sorted([kept["id"], built["id"]])
        assert any("removed 2 disks nothing references" in line for line in again.log), again.log
        with httpx.Client(base_url=again.url, headers=ALICE, timeout=30) as http:
            from_snapshot = running_devbox(http, snapshot_id=kept["id"])
            assert sh(http, from_snapshot["id"], "cat kept.txt") == (0, "kept\n")
            from_blueprint = running_devbox(http, blueprint_id=built["id"])
            assert sh(http, from_blueprint["id"], "cat b.txt") == (0, "built\n")


def test_a_suspended_devbox_can_be_snapshotted(devbox_client):
    client = devbox_client
    source = running_devbox(client)
    sh(client, source["id"], "echo frozen > state")
    assert ok(client.post(f"/v1/devboxes/{source['id']}/suspend", headers=ALICE))["status"] == "suspended"
    view = ok(client.post(f"/v1/devboxes/{source['id']}/snapshot_disk", headers=ALICE))
    assert snapshot_status(client, view["id"])["status"] == "complete"
    assert sh(client, running_devbox(client, snapshot_id=view["id"])["id"], "cat state") == (0, "frozen\n")


def test_a_snapshot_begun_during_a_shutdown_is_refused_or_refuses_it(devbox_client):
    """The shutdown's check for snapshots in progress and its move are one transaction: a
    snapshot asked for in between either finds the devbox shut down (400) or, begun first,
    makes the shutdown a 409. Never both accepted, the snapshot then failing."""
    client = devbox_client
    devbox = running_devbox(client)
    service = client.app.state.services.devboxes
    outcome = {}

    def snapshot_now():
        response = client.post(f"/v1/devboxes/{devbox['id']}/snapshot_disk_async", json={}, headers=ALICE)
        outcome["snapshot"] = response

    racer = threading.Thread(target=snapshot_now)

    def during_the_check(_devbox):  # runs where the guards run: the snapshot comes in now
        racer.start()
        racer.join(0.5)  # done at once if nothing holds it back (the race this test is about)

    service._shutdown_guards.append(during_the_check)  # after the real check: the window it left
    shutdown = client.post(f"/v1/devboxes/{devbox['id']}/shutdown", headers=ALICE)
    racer.join(10)
    snap = outcome["snapshot"]
    if shutdown.status_code == 200:
        assert shutdown.json()["status"] == "shutdown"
        assert_error(snap, 400, "devbox_not_running")
    else:
        assert_error(shutdown, 409, "snapshot_in_progress")
        assert snap.status_code == 200


def test_a_snapshot_being_restored_cannot_be_deleted_until_its_devboxes_run(devbox_client, runtime):
    """A devbox accepted from a snapshot copies its disk once provisioning gets to it: a
    delete before then would fail that devbox. It is a 409 until the devbox runs."""
    needs_hooks(runtime, "hold_provisioning")
    client = devbox_client
    source = running_devbox(client)
    view = snapshot(client, source["id"])
    gate = runtime.hold_provisioning()
    try:
        restoring = ok(client.post("/v1/devboxes", json={"snapshot_id": view["id"]}, headers=ALICE))
        assert restoring["status"] == "provisioning"
        body = assert_error(client.post(f"/v1/devboxes/disk_snapshots/{view['id']}/delete", headers=ALICE), 409,
                            "snapshot_in_use")
        assert restoring["id"] in body["message"]
    finally:
        gate.set()
    poll(lambda: client.get(f"/v1/devboxes/{restoring['id']}", headers=ALICE).json(),
         lambda devbox: devbox["status"] == "running")
    ok(client.post(f"/v1/devboxes/disk_snapshots/{view['id']}/delete", headers=ALICE))
