"""HTTP tests for executions: execute_async / execute / execute_sync, get, wait, kill."""

from __future__ import annotations

import concurrent.futures
import threading

import time

import pytest

from simulator.executions import watch_key
from tests.api.conftest import ALICE, BOB
from tests.api.test_devboxes import URL, assert_error, create, create_running, in_thread, until
from tests.api.devbox_fixtures import needs_hooks


@pytest.fixture
def devbox(devbox_client):
    return create_running(devbox_client, environment_variables={"GREETING": "hello there"})["id"]


def start(client, devbox_id, command, headers=ALICE):
    response = client.post(f"{URL}/{devbox_id}/execute_async", json={"command": command}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def wait(client, devbox_id, execution_id, statuses=("completed",), timeout=20, headers=ALICE, **params):
    return client.post(
        f"{URL}/{devbox_id}/executions/{execution_id}/wait_for_status",
        json={"statuses": list(statuses), "timeout_seconds": timeout},
        params=params,
        headers=headers,
    )


def run(client, devbox_id, command):
    execution = start(client, devbox_id, command)
    response = wait(client, devbox_id, execution["execution_id"])
    assert response.status_code == 200, response.text
    return response.json()


def test_execute_async_then_wait_gives_output_and_exit_code(devbox_client, devbox):
    execution = start(devbox_client, devbox, 'echo "$GREETING"; echo oops >&2; pwd; exit 3')
    assert execution["devbox_id"] == devbox
    assert execution["execution_id"].startswith("exn_")
    assert execution["status"] in ("running", "completed")
    done = wait(devbox_client, devbox, execution["execution_id"]).json()
    assert done["status"] == "completed" and done["exit_status"] == 3
    stdout_lines = done["stdout"].splitlines()
    assert stdout_lines[0] == "hello there"
    assert stdout_lines[1].endswith("home")  # commands start in the devbox user's home
    assert done["stderr"] == "oops\n"
    assert done["stdout_truncated"] is False and done["stderr_truncated"] is False
    got = devbox_client.get(f"{URL}/{devbox}/executions/{execution['execution_id']}", headers=ALICE).json()
    assert got == done


def test_output_is_empty_string_not_null_once_completed(devbox_client, devbox):
    done = run(devbox_client, devbox, "true")
    assert done["stdout"] == "" and done["stderr"] == "" and done["exit_status"] == 0


def test_running_execution_has_no_output_fields_yet(devbox_client, devbox):
    execution = start(devbox_client, devbox, "sleep 30")
    got = devbox_client.get(f"{URL}/{devbox}/executions/{execution['execution_id']}", headers=ALICE).json()
    assert got["status"] == "running" and got["exit_status"] is None and got["stdout"] is None
    devbox_client.post(f"{URL}/{devbox}/executions/{execution['execution_id']}/kill", headers=ALICE)


def test_two_thousand_lines_come_back_complete(devbox_client, devbox):
    done = run(devbox_client, devbox, "seq 1 2000; seq 1 2000 >&2")
    expected = "".join(f"{i}\n" for i in range(1, 2001))
    assert done["stdout"] == expected and done["stderr"] == expected
    assert done["stdout_truncated"] is False


def test_large_output_is_complete(devbox_client, devbox):
    done = run(devbox_client, devbox, "head -c 3000000 /dev/zero | tr '\\0' x")
    assert done["stdout"] == "x" * 3_000_000


def test_output_beyond_the_cap_is_truncated(devbox_client, devbox):
    devbox_client.app.state.services.executions.max_output_bytes = 1000
    done = run(devbox_client, devbox, "seq 1 5000; echo small >&2")
    assert len(done["stdout"]) == 1000 and done["stdout_truncated"] is True
    assert done["stderr"] == "small\n" and done["stderr_truncated"] is False
    assert done["exit_status"] == 0  # the rest was drained, the command was not blocked


def test_invalid_utf8_is_replaced(devbox_client, devbox):
    done = run(devbox_client, devbox, "printf 'a\\377b'")
    assert done["stdout"] == "a\ufffdb"


def test_stdin_is_closed(devbox_client, devbox):
    done = run(devbox_client, devbox, "cat; echo after")
    assert done["stdout"] == "after\n"


def test_last_n_returns_the_tail(devbox_client, devbox):
    execution = start(devbox_client, devbox, "seq 1 10")
    done = wait(devbox_client, devbox, execution["execution_id"], last_n="3").json()
    assert done["stdout"] == "8\n9\n10\n" and done["stdout_truncated"] is True
    path = f"{URL}/{devbox}/executions/{execution['execution_id']}"
    assert devbox_client.get(path, params={"last_n": "100"}, headers=ALICE).json()["stdout_truncated"] is False
    assert_error(devbox_client.get(path, params={"last_n": "many"}, headers=ALICE), 400, contains="last_n")


def test_execute_sync_returns_the_sync_view(devbox_client, devbox):
    response = devbox_client.post(f"{URL}/{devbox}/execute_sync", json={"command": "echo hi; exit 4"}, headers=ALICE)
    assert response.json() == {"devbox_id": devbox, "exit_status": 4, "stdout": "hi\n", "stderr": ""}


def test_execute_holds_until_done_and_is_idempotent_by_command_id(devbox_client, devbox):
    body = {"command": "echo run >> runs.txt; echo done", "command_id": "0190c2b4-0000-7000-8000-000000000001"}
    first = devbox_client.post(f"{URL}/{devbox}/execute", json=body, headers=ALICE).json()
    assert first["status"] == "completed" and first["stdout"] == "done\n"
    again = devbox_client.post(f"{URL}/{devbox}/execute", json=body, headers=ALICE).json()
    assert again == first
    runs = devbox_client.post(f"{URL}/{devbox}/execute_sync", json={"command": "cat runs.txt"}, headers=ALICE).json()
    assert runs["stdout"] == "run\n"  # ran once


def test_execute_returns_running_after_the_optimistic_timeout(devbox_client, devbox):
    started = time.monotonic()
    response = devbox_client.post(
        f"{URL}/{devbox}/execute",
        json={"command": "sleep 1; echo late", "command_id": "cid-2", "optimistic_timeout": 0.2},
        headers=ALICE,
    )
    assert time.monotonic() - started < 0.9
    assert response.json()["status"] == "running"
    done = wait(devbox_client, devbox, response.json()["execution_id"]).json()
    assert done["stdout"] == "late\n"


def test_execute_requires_a_command_id(devbox_client, devbox):
    assert_error(devbox_client.post(f"{URL}/{devbox}/execute", json={"command": "true"}, headers=ALICE), 400, contains="command_id")
    body = assert_error(devbox_client.post(f"{URL}/{devbox}/execute", headers=ALICE,
                                           json={"command": "true", "command_id": "neg", "optimistic_timeout": -1}), 400)
    assert body["message"] == "optimistic_timeout must not be negative, got -1"  # the field the caller gave


def test_retried_execute_async_with_same_request_id_runs_once(devbox_client, devbox):
    headers = {**ALICE, "x-request-id": "exec-retry"}
    first = devbox_client.post(f"{URL}/{devbox}/execute_async", json={"command": "echo x >> once"}, headers=headers).json()
    again = devbox_client.post(f"{URL}/{devbox}/execute_async", json={"command": "echo x >> once"}, headers=headers).json()
    assert again["execution_id"] == first["execution_id"]
    assert run(devbox_client, devbox, "cat once")["stdout"] == "x\n"


def test_one_request_id_for_other_requests_runs_them(devbox_client, devbox):
    """A client reusing one x-request-id for everything (tracing, say): only a retry of the
    same command on the same devbox is the first one again."""
    headers = {**ALICE, "x-request-id": "one-for-all"}
    first = devbox_client.post(f"{URL}/{devbox}/execute_async", json={"command": "echo first"}, headers=headers).json()
    other = devbox_client.post(f"{URL}/{devbox}/execute_async", json={"command": "echo other"}, headers=headers).json()
    assert other["execution_id"] != first["execution_id"]
    assert wait(devbox_client, devbox, other["execution_id"]).json()["stdout"] == "other\n"
    second_box = create_running(devbox_client)["id"]
    there = devbox_client.post(f"{URL}/{second_box}/execute_async", json={"command": "echo first"}, headers=headers)
    assert there.status_code == 200, there.text  # was a 404 naming the first devbox's execution
    assert wait(devbox_client, second_box, there.json()["execution_id"]).json()["stdout"] == "first\n"


def test_two_first_uses_of_one_request_id_both_run(devbox_client, devbox, monkeypatch):
    """Starts on two devboxes do not share a lock: both may look the id up, find nothing, and
    store - the second keeps its execution without the id (it was a 500)."""
    from simulator import execution_store

    monkeypatch.setattr(execution_store, "by_request_id", lambda *args: None)  # both look before either stores
    headers = {**ALICE, "x-request-id": "raced"}
    other = create_running(devbox_client)["id"]
    for box in (devbox, other):
        response = devbox_client.post(f"{URL}/{box}/execute_async", json={"command": "echo ran"}, headers=headers)
        assert response.status_code == 200, response.text
        assert wait(devbox_client, box, response.json()["execution_id"]).json()["stdout"] == "ran\n"


def test_a_new_command_id_is_a_new_command_whatever_the_request_id(devbox_client, devbox):
    headers = {**ALICE, "x-request-id": "same-id"}
    body = {"command": "echo x >> twice", "command_id": "0190c2b4-0000-7000-8000-0000000000a1"}
    first = devbox_client.post(f"{URL}/{devbox}/execute", json=body, headers=headers).json()
    second = devbox_client.post(f"{URL}/{devbox}/execute", headers=headers,
                                json={**body, "command_id": "0190c2b4-0000-7000-8000-0000000000a2"}).json()
    assert first["execution_id"] != second["execution_id"]
    assert run(devbox_client, devbox, "cat twice")["stdout"] == "x\nx\n"


def test_the_environment_is_capped_as_exec_would_refuse_it(devbox_client):
    from simulator.devboxes import MAX_ENVIRONMENT_BYTES

    big = {"A": "a" * MAX_ENVIRONMENT_BYTES}
    assert_error(devbox_client.post(URL, json={"environment_variables": big}, headers=ALICE), 400, "invalid_request",
                 "environment_variables")
    fits = create_running(devbox_client, environment_variables={"A": "a" * (MAX_ENVIRONMENT_BYTES - 4)})
    assert len(run(devbox_client, fits["id"], "printf %s \"$A\"")["stdout"]) == MAX_ENVIRONMENT_BYTES - 4


def test_a_command_over_the_kernel_s_argument_limit_is_a_400(devbox_client, devbox):
    from simulator.devboxes import MAX_COMMAND_BYTES

    long = "echo " + "a" * MAX_COMMAND_BYTES
    assert_error(devbox_client.post(f"{URL}/{devbox}/execute_async", json={"command": long}, headers=ALICE), 400,
                 "invalid_request", "write_file_contents")
    assert_error(devbox_client.post(URL, json={"launch_parameters": {"launch_commands": [long]}}, headers=ALICE), 400,
                 "invalid_request", "launch_commands")
    assert_error(devbox_client.post("/v1/blueprints", json={"name": "b", "system_setup_commands": [long]}, headers=ALICE),
                 400, "invalid_request", "at most")
    hooks = {"lifecycle": {"lifecycle_hooks": {"suspend_commands": [long]}}}
    assert_error(devbox_client.post("/v1/blueprints", json={"name": "b", "launch_parameters": hooks}, headers=ALICE),
                 400, "invalid_request", "suspend_commands")
    fits = "echo " + "a" * (MAX_COMMAND_BYTES - 5)
    assert len(run(devbox_client, devbox, fits)["stdout"]) == MAX_COMMAND_BYTES - 4


def test_wait_for_status_holds_until_completion(devbox_client, devbox):
    # The command waits for a file the test creates: completion happens only after we act.
    execution = start(devbox_client, devbox, "while [ ! -e go ]; do sleep 0.01; done; echo went")
    execution_id = execution["execution_id"]
    watch = devbox_client.app.state.services.executions.watch
    thread, box = in_thread(lambda: wait(devbox_client, devbox, execution_id))
    until(lambda: watch.waiting(watch_key(execution_id)) == 1)
    assert thread.is_alive()
    start(devbox_client, devbox, "touch go")
    thread.join(10)
    assert box["result"].json()["stdout"] == "went\n"


def test_wait_for_status_408_says_retry(devbox_client, devbox):
    execution = start(devbox_client, devbox, "sleep 30")
    response = wait(devbox_client, devbox, execution["execution_id"], timeout=0.2)
    assert_error(response, 408, "timeout")
    assert response.headers["x-should-retry"] == "true"
    running = wait(devbox_client, devbox, execution["execution_id"], statuses=("running", "completed"), timeout=0.2)
    assert running.status_code == 200 and running.json()["status"] == "running"
    devbox_client.post(f"{URL}/{devbox}/executions/{execution['execution_id']}/kill", headers=ALICE)


def test_wait_for_status_rejects_unknown_statuses(devbox_client, devbox):
    execution = start(devbox_client, devbox, "true")
    assert_error(wait(devbox_client, devbox, execution["execution_id"], statuses=("done",)), 400, contains="done")


def test_kill_kills_the_process_group(devbox_client, devbox):
    execution = start(devbox_client, devbox, "sleep 300 & echo $! > child.pid; wait")
    execution_id = execution["execution_id"]
    until(lambda: run(devbox_client, devbox, "test -s child.pid")["exit_status"] == 0)
    killed = devbox_client.post(
        f"{URL}/{devbox}/executions/{execution_id}/kill", json={"kill_process_group": True}, headers=ALICE
    ).json()
    assert killed["status"] == "completed" and killed["exit_status"] == 137
    assert killed["stdout"] == "" and killed["stderr"] == ""
    # The background child was in the group: it is gone too (or a zombie nobody reaped yet).
    gone = 'state=$(cut -d" " -f3 /proc/$(cat child.pid)/stat 2>/dev/null); [ -z "$state" ] || [ "$state" = Z ]'
    assert run(devbox_client, devbox, gone)["exit_status"] == 0
    again = devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE).json()
    assert again == killed


def test_shutdown_completes_running_executions(devbox_client, devbox):
    execution = start(devbox_client, devbox, "echo started; sleep 300")
    devbox_client.post(f"{URL}/{devbox}/shutdown", headers=ALICE)
    got = devbox_client.get(f"{URL}/{devbox}/executions/{execution['execution_id']}", headers=ALICE).json()
    assert got["status"] == "completed" and got["exit_status"] == 137
    assert got["stdout"] == "started\n"


def test_background_child_holding_stdout_does_not_keep_it_running(devbox_client, devbox):
    started = time.monotonic()
    done = run(devbox_client, devbox, "sleep 30 & echo parent")
    assert done["stdout"] == "parent\n" and done["exit_status"] == 0
    assert time.monotonic() - started < 10


def test_executions_need_a_running_devbox(devbox_client, runtime):
    needs_hooks(runtime, "hold_provisioning")
    gate = runtime.hold_provisioning()
    devbox_id = create(devbox_client)["id"]
    for path, body in [
        ("execute_async", {"command": "true"}),
        ("execute", {"command": "true", "command_id": "c"}),
        ("execute_sync", {"command": "true"}),
    ]:
        assert_error(
            devbox_client.post(f"{URL}/{devbox_id}/{path}", json=body, headers=ALICE), 400, "devbox_not_running"
        )
    gate.set()


def test_unknown_and_foreign_executions_are_404(devbox_client, devbox):
    execution_id = run(devbox_client, devbox, "echo secret")["execution_id"]
    other = create_running(devbox_client)["id"]
    paths = [
        (ALICE, f"{URL}/{devbox}/executions/exn_unknown"),
        (ALICE, f"{URL}/{other}/executions/{execution_id}"),  # right id, wrong devbox
        (BOB, f"{URL}/{devbox}/executions/{execution_id}"),  # someone else's
        (ALICE, f"{URL}/dbx_unknown/executions/{execution_id}"),
    ]
    for headers, path in paths:
        assert_error(devbox_client.get(path, headers=headers), 404, "not_found")
        assert_error(devbox_client.post(f"{path}/kill", headers=headers), 404)
        response = devbox_client.post(
            f"{path}/wait_for_status", json={"statuses": ["completed"], "timeout_seconds": 0.1}, headers=headers
        )
        assert_error(response, 404)
    assert_error(devbox_client.post(f"{URL}/{devbox}/execute_async", json={"command": "id"}, headers=BOB), 404)


def test_execute_async_validates_the_body(devbox_client, devbox):
    for body in ({}, {"command": 5}, {"command": "a\u0000b"}):
        assert_error(devbox_client.post(f"{URL}/{devbox}/execute_async", json=body, headers=ALICE), 400)


def test_the_store_keeps_the_newest_output_and_drops_the_oldest(devbox_client, devbox):
    """Retention: past the store's budget for command output (all devboxes), the oldest
    commands keep their row and exit status, not their output - flagged as truncated."""
    from simulator import execution_store

    services = devbox_client.app.state.services
    services.executions.max_stored_output_bytes = 2500
    done = [run(devbox_client, devbox, f"yes {i} | head -c 1000; echo err >&2") for i in range(5)]
    views = [
        devbox_client.get(f"{URL}/{devbox}/executions/{d['execution_id']}", headers=ALICE).json() for d in done
    ]
    assert [v["exit_status"] for v in views] == [0] * 5  # every row stays
    kept, dropped = views[3:], views[:3]  # 1,004 bytes each: the newest two fit in 2,500
    assert [v["stdout"] for v in kept] == [f"{i}\n" * 500 for i in (3, 4)]
    assert all(v["stderr"] == "err\n" and not v["stdout_truncated"] for v in kept)
    assert all((v["stdout"], v["stderr"], v["stdout_truncated"], v["stderr_truncated"]) == ("", "", True, True)
               for v in dropped)
    with services.db.read() as conn:
        (total,) = conn.execute("SELECT bytes FROM stored_output").fetchone()
        (summed,) = conn.execute("SELECT SUM(output_bytes) FROM executions").fetchone()
    assert total == summed == 2 * 1004
    assert execution_store.MAX_STORED_OUTPUT_BYTES == 1 << 30  # the default


def test_past_the_budget_the_account_storing_the_most_loses_its_oldest_output(devbox_client, devbox):
    """One account's chatty commands must not wipe another's results: the budget is all
    accounts', but what it drops is the biggest account's oldest output first."""
    services = devbox_client.app.state.services
    services.executions.max_stored_output_bytes = 3000
    alices = run(devbox_client, devbox, "yes a | head -c 1000")  # the oldest output in the store
    bobs_devbox = create_running(devbox_client, headers=BOB)["id"]

    def bob_runs(i):
        execution = start(devbox_client, bobs_devbox, f"yes {i} | head -c 1000", headers=BOB)
        return wait(devbox_client, bobs_devbox, execution["execution_id"], headers=BOB).json()

    bobs = [bob_runs(i) for i in range(5)]
    view = devbox_client.get(f"{URL}/{devbox}/executions/{alices['execution_id']}", headers=ALICE).json()
    assert view["stdout"] == "a\n" * 500 and not view["stdout_truncated"]  # alice's survived
    views = [devbox_client.get(f"{URL}/{bobs_devbox}/executions/{b['execution_id']}", headers=BOB).json() for b in bobs]
    assert [v["stdout_truncated"] for v in views] == [True, True, True, False, False]  # bob's oldest went
    with services.db.read() as conn:
        per_account = dict(conn.execute("SELECT account, bytes FROM stored_output_accounts"))
        summed = dict(conn.execute("SELECT account, SUM(output_bytes) FROM executions GROUP BY account"))
        (total,) = conn.execute("SELECT bytes FROM stored_output").fetchone()
    assert per_account == summed and sorted(per_account.values()) == [1000, 2000] and total == 3000


def test_commands_running_at_once_are_capped_per_devbox_and_account(devbox_client, monkeypatch):
    import simulator.executions as executions

    monkeypatch.setattr(executions, "MAX_RUNNING_PER_DEVBOX", 2)
    monkeypatch.setattr(executions, "MAX_RUNNING_PER_ACCOUNT", 3)
    first = create_running(devbox_client)["id"]
    second = create_running(devbox_client)["id"]
    running = [start(devbox_client, first, "sleep 60") for _ in range(2)]
    response = devbox_client.post(f"{URL}/{first}/execute_async", json={"command": "true"}, headers=ALICE)
    assert response.status_code == 400 and response.json()["error_code"] == "too_many_executions"
    running.append(start(devbox_client, second, "sleep 60"))
    response = devbox_client.post(f"{URL}/{second}/execute_async", json={"command": "true"}, headers=ALICE)
    assert response.status_code == 400 and "this account" in response.json()["message"]
    bob = create_running(devbox_client, headers=BOB)["id"]  # another account is not held up
    assert start(devbox_client, bob, "true", headers=BOB)["devbox_id"] == bob
    killed = running.pop(0)
    devbox_client.post(f"{URL}/{first}/executions/{killed['execution_id']}/kill", headers=ALICE)
    assert wait(devbox_client, first, killed["execution_id"]).json()["status"] == "completed"
    assert run(devbox_client, first, "echo again")["stdout"] == "again\n"  # room again
    for execution in running:
        devbox_client.post(f"{URL}/{execution['devbox_id']}/executions/{execution['execution_id']}/kill", headers=ALICE)


def test_the_account_cap_holds_for_starts_on_several_devboxes_at_once(devbox_client, runtime, monkeypatch):
    """Starts on different devboxes hold different start locks: all of them read the running
    count before any was added, and all passed the cap."""
    import simulator.executions as executions

    monkeypatch.setattr(executions, "MAX_RUNNING_PER_ACCOUNT", 2)
    boxes = [create_running(devbox_client)["id"] for _ in range(4)]
    real_exec = runtime.exec
    arrived = threading.Barrier(2, timeout=5)

    def slow_exec(devbox_id, command, **kwargs):  # the two admitted starts meet here
        arrived.wait()
        return real_exec(devbox_id, command, **kwargs)

    monkeypatch.setattr(runtime, "exec", slow_exec)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(
            lambda box: devbox_client.post(f"{URL}/{box}/execute_async", json={"command": "sleep 60"}, headers=ALICE), boxes))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 400, 400], [r.text for r in responses]
    for box, response in zip(boxes, responses):
        if response.status_code == 200:
            devbox_client.post(f"{URL}/{box}/executions/{response.json()['execution_id']}/kill", headers=ALICE)


def test_a_nan_timeout_is_a_400_and_runs_nothing(devbox_client, devbox):
    """JSON lets NaN through; no hold can be computed from it. A 400 before anything happens
    (it was a 500, after /execute had started the command)."""
    headers = {**ALICE, "content-type": "application/json"}
    execute = devbox_client.post(
        f"{URL}/{devbox}/execute", headers=headers,
        content=b'{"command": "echo ran > nan.txt", "command_id": "0190a0b0-0000-7000-8000-0000000000fe",'
                b' "optimistic_timeout": NaN}')
    assert_error(execute, 400, "invalid_request", "NaN")
    execution = start(devbox_client, devbox, "sleep 30")
    for path in (f"{URL}/{devbox}/wait_for_status", f"{URL}/{devbox}/executions/{execution}/wait_for_status"):
        body = b'{"statuses": ["suspended", "completed"], "timeout_seconds": NaN}'
        assert_error(devbox_client.post(path, headers=headers, content=body), 400, "invalid_request", "NaN")
    assert "nan.txt" not in run(devbox_client, devbox, "ls")["stdout"]
    # Infinity, and an integer no float holds, stay a long hold, capped (not an error).
    for huge in (b"Infinity", b"1" + b"0" * 400):
        assert devbox_client.post(f"{URL}/{devbox}/wait_for_status", headers=headers,
                                  content=b'{"statuses": ["running"], "timeout_seconds": ' + huge + b"}").status_code == 200
