"""HTTP tests for suspend / resume and the keep-alive timer, on the subprocess test double
(suspend there is SIGSTOP of every command's process group)."""

from __future__ import annotations

import threading
import time
from typing import get_args

import pytest
from runloop_api_client.types.devboxes.devbox_logs_list_view import Log

LogSource = Log.model_fields["source"].annotation

from simulator.keep_alive import KeepAliveTimers
from tests.api.conftest import ALICE, BOB
from tests.api.devbox_fixtures import needs_hooks
from tests.api.test_devboxes import (
    URL,
    assert_error,
    create,
    create_running,
    statuses_of,
    until,
    wait_status,
)
from tests.api.test_executions import run, start, wait


@pytest.fixture
def devbox(devbox_client):
    return create_running(devbox_client)["id"]


def suspend(client, devbox_id, headers=ALICE):
    return client.post(f"{URL}/{devbox_id}/suspend", headers=headers)


def resume(client, devbox_id, headers=ALICE):
    return client.post(f"{URL}/{devbox_id}/resume", headers=headers)


# --- suspend / resume --------------------------------------------------------------------


def test_suspend_then_resume(devbox_client, devbox, runtime):
    view = suspend(devbox_client, devbox)
    assert view.status_code == 200, view.text
    view = view.json()
    assert view["status"] == "suspended"
    assert statuses_of(view)[-2:] == ["suspending", "suspended"]
    assert devbox in runtime.suspended
    assert devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()["status"] == "suspended"
    assert wait_status(devbox_client, devbox, ["suspended"], timeout=1).status_code == 200
    resumed = resume(devbox_client, devbox).json()
    assert resumed["status"] == "running" and statuses_of(resumed)[-1] == "running"
    assert "resuming" not in statuses_of(resumed)  # never shown
    assert devbox not in runtime.suspended
    assert run(devbox_client, devbox, "echo back")["stdout"] == "back\n"


def test_suspend_and_resume_only_from_the_right_status(devbox_client, devbox):
    assert_error(resume(devbox_client, devbox), 400, "invalid_state", "running")
    suspend(devbox_client, devbox)
    assert_error(suspend(devbox_client, devbox), 400, "invalid_state", "suspended")
    for path, body in [("execute_async", {"command": "true"}), ("keep_alive", None)]:
        assert_error(devbox_client.post(f"{URL}/{devbox}/{path}", json=body, headers=ALICE), 400, "devbox_not_running")
    assert_error(
        devbox_client.post(f"{URL}/{devbox}/read_file_contents", json={"file_path": "x"}, headers=ALICE),
        400,
        "devbox_not_running",
    )
    resume(devbox_client, devbox)
    devbox_client.post(f"{URL}/{devbox}/shutdown", headers=ALICE)
    assert_error(suspend(devbox_client, devbox), 400, "invalid_state", "shutdown")
    assert_error(resume(devbox_client, devbox), 400, "invalid_state")
    assert_error(suspend(devbox_client, "dbx_nope"), 404)
    assert_error(resume(devbox_client, devbox, headers=BOB), 404)


def test_suspended_processes_make_no_progress_until_resumed(devbox_client, devbox, runtime):
    counter = runtime.root / devbox / "home" / "counter"
    execution = start(devbox_client, devbox, "i=0; while :; do i=$((i+1)); echo $i > counter.tmp; mv counter.tmp counter; sleep 0.01; done")
    until(lambda: counter.exists() and int(counter.read_text() or 0) > 3)
    suspend(devbox_client, devbox)
    frozen = counter.read_text()
    time.sleep(0.3)  # an observation window: nothing may change in it
    assert counter.read_text() == frozen
    state = devbox_client.get(f"{URL}/{devbox}/executions/{execution['execution_id']}", headers=ALICE).json()
    assert state["status"] == "running"  # frozen, not ended
    assert_error(
        devbox_client.post(f"{URL}/{devbox}/executions/{execution['execution_id']}/kill", headers=ALICE),
        400,
        "devbox_not_running",
    )
    resume(devbox_client, devbox)
    until(lambda: int(counter.read_text() or 0) > int(frozen) + 3)
    devbox_client.post(f"{URL}/{devbox}/executions/{execution['execution_id']}/kill", headers=ALICE)


def test_shutdown_of_a_suspended_devbox_ends_its_commands(devbox_client, devbox):
    execution = start(devbox_client, devbox, "sleep 300")
    suspend(devbox_client, devbox)
    view = devbox_client.post(f"{URL}/{devbox}/shutdown", headers=ALICE).json()
    assert view["status"] == "shutdown" and view["shutdown_reason"] == "api_shutdown"
    done = wait(devbox_client, devbox, execution["execution_id"]).json()
    assert done["status"] == "completed" and done["exit_status"] == 137


def test_a_failed_freeze_keeps_the_devbox_running(devbox_client, devbox, runtime):
    from simulator.runtime.base import RuntimeFailure

    def broken(devbox_id):
        raise RuntimeFailure("no freezer here")

    runtime.suspend = broken
    body = assert_error(suspend(devbox_client, devbox), 409, "suspend_failed", "no freezer here")
    view = devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()
    assert view["status"] == "running", body
    assert statuses_of(view)[-2:] == ["suspending", "running"]
    assert "suspend failed" in view["state_transitions"][-1]["failure_reason"]


def test_a_resume_that_a_shutdown_overtook_answers_the_shut_down_devbox(devbox_client, devbox, runtime):
    """A shutdown does not wait for a resume: when it ends the devbox while the runtime is
    thawing it, the thaw fails - the devbox did not, and the resume answers it as it is."""
    assert suspend(devbox_client, devbox).status_code == 200
    thaw = runtime.resume

    def overtaken(devbox_id):
        assert devbox_client.post(f"{URL}/{devbox_id}/shutdown", headers=ALICE).status_code == 200
        thaw(devbox_id)  # the runtime no longer has it: RuntimeFailure
        raise AssertionError("the runtime resumed a devbox that was shut down")

    runtime.resume = overtaken
    response = resume(devbox_client, devbox)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["status"] == "shutdown" and statuses_of(view)[-2:] == ["suspended", "shutdown"]


# --- keep-alive --------------------------------------------------------------------------


def test_keep_alive_time_expiry_shuts_the_devbox_down(devbox_client):
    devbox = create_running(devbox_client, launch_parameters={"keep_alive_time_seconds": 1})["id"]
    response = wait_status(devbox_client, devbox, ["shutdown"], timeout=10)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["shutdown_reason"] == "keep_alive_timeout" and view["end_time_ms"] is not None
    running_at = next(t["transition_time_ms"] for t in view["state_transitions"] if t["status"] == "running")
    assert 900 <= view["end_time_ms"] - running_at < 5000  # a second without activity, then the end
    assert devbox_client.app.state.services.devboxes.keep_alive_timers.deadline(devbox) is None


def test_keep_alive_and_activity_reset_the_timer(devbox_client):
    timers = devbox_client.app.state.services.devboxes.keep_alive_timers
    now = [1000.0]
    timers.clock, timers.automatic = (lambda: now[0]), False  # a hand-driven clock: no waiting
    devbox = create_running(devbox_client, launch_parameters={"keep_alive_time_seconds": 60})["id"]
    assert timers.deadline(devbox) == 1060.0
    actions = [
        lambda: devbox_client.post(f"{URL}/{devbox}/keep_alive", headers=ALICE),
        lambda: start(devbox_client, devbox, "true"),
        lambda: devbox_client.post(f"{URL}/{devbox}/write_file_contents", json={"file_path": "f", "contents": "x"}, headers=ALICE),
        lambda: devbox_client.post(f"{URL}/{devbox}/read_file_contents", json={"file_path": "f"}, headers=ALICE),
    ]
    for action in actions:
        now[0] += 50
        assert timers.expire_due() == []
        response = action()
        assert response is not None and (not hasattr(response, "status_code") or response.status_code == 200)
        assert timers.deadline(devbox) == pytest.approx(now[0] + 60), action
    now[0] += 61
    assert timers.expire_due() == [devbox]
    view = devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()
    assert view["status"] == "shutdown" and view["shutdown_reason"] == "keep_alive_timeout"


def test_a_suspended_devbox_has_no_timer_and_resume_starts_a_fresh_one(devbox_client):
    timers = devbox_client.app.state.services.devboxes.keep_alive_timers
    now = [5000.0]
    timers.clock, timers.automatic = (lambda: now[0]), False
    devbox = create_running(devbox_client, launch_parameters={"keep_alive_time_seconds": 10})["id"]
    suspend(devbox_client, devbox)
    assert timers.deadline(devbox) is None
    now[0] += 1000
    assert timers.expire_due() == []
    resume(devbox_client, devbox)
    assert timers.deadline(devbox) == 6010.0


def test_default_keep_alive_is_an_hour_and_shutdown_stops_the_timer(devbox_client):
    timers = devbox_client.app.state.services.devboxes.keep_alive_timers
    devbox = create_running(devbox_client)["id"]
    assert 3590 < timers.deadline(devbox) - timers.clock() <= 3600
    devbox_client.post(f"{URL}/{devbox}/shutdown", headers=ALICE)
    assert timers.deadline(devbox) is None


def test_keep_alive_needs_a_running_devbox(devbox_client, runtime):
    needs_hooks(runtime, "hold_provisioning")
    gate = runtime.hold_provisioning()
    devbox = create(devbox_client)["id"]
    assert_error(devbox_client.post(f"{URL}/{devbox}/keep_alive", headers=ALICE), 400, "devbox_not_running")
    gate.set()
    assert_error(devbox_client.post(f"{URL}/dbx_nope/keep_alive", headers=ALICE), 404)


def test_timers_unit_expire_only_what_is_due():
    expired = []
    now = [0.0]
    timers = KeepAliveTimers(
        lambda account, devbox_id: expired.append((account, devbox_id)), clock=lambda: now[0], automatic=False
    )
    timers.start("a", "dbx_1", 10)
    timers.start("a", "dbx_2", 20)
    now[0] = 9.9
    assert timers.expire_due() == []
    timers.touch("dbx_1")  # now due at 19.9
    now[0] = 19.95
    assert timers.expire_due() == ["dbx_1"] and expired == [("a", "dbx_1")]
    timers.stop("dbx_2")
    now[0] = 100
    assert timers.expire_due() == [] and timers.deadline("dbx_2") is None
    timers.touch("dbx_unknown")  # no timer: nothing happens
    assert timers.deadline("dbx_unknown") is None


# --- idle policy (after_idle, lifecycle) -------------------------------------------------


def hand_clock(devbox_client, start=1000.0):
    """The service's timers on a hand-driven clock: ``now[0]`` is the time, ``expire_due`` the tick."""
    timers = devbox_client.app.state.services.devboxes.keep_alive_timers
    now = [start]
    timers.clock, timers.automatic = (lambda: now[0]), False
    return timers, now


def test_after_idle_suspend_replaces_the_keep_alive_time_and_resume_rearms_it(devbox_client, runtime):
    timers, now = hand_clock(devbox_client)
    launch = {"keep_alive_time_seconds": 5, "after_idle": {"idle_time_seconds": 30, "on_idle": "suspend"}}
    view = create_running(devbox_client, launch_parameters=launch)
    devbox = view["id"]
    assert view["launch_parameters"] == launch  # echoed as given
    assert timers.deadline(devbox) == 1030.0  # the keep-alive time is ignored
    now[0] += 29
    run(devbox_client, devbox, "true")  # activity, as for the keep-alive timer (its start and its end)
    now[0] += 29
    assert timers.expire_due() == []
    now[0] += 2
    assert timers.expire_due() == [devbox]
    view = devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()
    assert view["status"] == "suspended" and statuses_of(view)[-2:] == ["suspending", "suspended"]
    assert view["shutdown_reason"] is None and devbox in runtime.suspended
    assert timers.deadline(devbox) is None
    resume(devbox_client, devbox)
    assert timers.deadline(devbox) == now[0] + 30


def test_lifecycle_after_idle_shutdown_ends_the_devbox_as_idle(devbox_client):
    timers, now = hand_clock(devbox_client)
    devbox = create_running(devbox_client, launch_parameters={
        "lifecycle": {"after_idle": {"idle_time_seconds": 60, "on_idle": "shutdown"}}})["id"]
    now[0] += 61
    assert timers.expire_due() == [devbox]
    view = devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()
    assert view["status"] == "shutdown" and view["shutdown_reason"] == "idle"


def test_idle_suspend_with_real_time(devbox_client):
    devbox = create_running(devbox_client, launch_parameters={
        "after_idle": {"idle_time_seconds": 1, "on_idle": "suspend"},
        "lifecycle": {"after_idle": {"idle_time_seconds": 1, "on_idle": "suspend"}}})["id"]  # both, equal: fine
    response = wait_status(devbox_client, devbox, ["suspended"], timeout=10)
    assert response.status_code == 200, response.text
    view = response.json()
    running_at = next(t["transition_time_ms"] for t in view["state_transitions"] if t["status"] == "running")
    suspended_at = view["state_transitions"][-1]["transition_time_ms"]
    assert 800 <= suspended_at - running_at < 5000


@pytest.mark.parametrize(
    "launch, contains",
    [
        ({"after_idle": {"idle_time_seconds": 60, "on_idle": "sleep"}}, "on_idle"),
        ({"after_idle": {"idle_time_seconds": 0, "on_idle": "suspend"}}, "idle_time_seconds"),
        ({"after_idle": {"on_idle": "suspend"}}, "idle_time_seconds"),
        ({"lifecycle": {"after_idle": {"idle_time_seconds": "60", "on_idle": "suspend"}}}, "idle_time_seconds"),
        ({"after_idle": {"idle_time_seconds": 60, "on_idle": "suspend"},
          "lifecycle": {"after_idle": {"idle_time_seconds": 61, "on_idle": "suspend"}}}, "same value"),
        ({"lifecycle": {"resume_triggers": {"http": "yes"}}}, "http"),
        ({"lifecycle": {"lifecycle_hooks": {"suspend_deadline_ms": 60_001}}}, "suspend_deadline_ms"),
        ({"lifecycle": {"lifecycle_hooks": {"suspend_commands": "echo"}}}, "suspend_commands"),
        ({"lifecycle": {"lifecycle_hooks": {"suspend_commands": ["echo \u0000"]}}}, "suspend_commands"),
    ],
)
def test_bad_idle_policies_are_refused(devbox_client, launch, contains):
    assert_error(devbox_client.post(URL, json={"launch_parameters": launch}, headers=ALICE), 400, contains=contains)


def suspended_after_hooks(devbox_client, devbox):
    """With suspend commands the answer is ``suspending``; the commands and the freeze follow."""
    assert suspend(devbox_client, devbox).json()["status"] == "suspending"
    response = wait_status(devbox_client, devbox, ["suspended"], timeout=10)
    assert response.json()["status"] == "suspended", response.text


def test_suspend_commands_run_before_each_suspend_within_their_deadline(devbox_client):
    hooks = {"suspend_commands": ["echo one >> hooks.txt", "exit 3", "echo two >> hooks.txt"]}
    devbox = create_running(devbox_client, launch_parameters={"lifecycle": {"lifecycle_hooks": hooks}})["id"]
    suspended_after_hooks(devbox_client, devbox)  # a failing command does not stop it
    resume(devbox_client, devbox)
    assert run(devbox_client, devbox, "cat hooks.txt")["stdout"] == "one\ntwo\n"
    logs = devbox_client.get(f"{URL}/{devbox}/logs", headers=ALICE).json()["logs"]
    assert any(entry["source"] == "setup_commands" and entry["cmd"] == "exit 3" and entry["exit_code"] == 3
               for entry in logs), logs
    assert {entry["source"] for entry in logs} <= set(get_args(LogSource)), logs  # the SDK's closed set
    # An overrun: the deadline covers all the commands; the one running is killed, the rest skipped.
    slow = {"suspend_commands": ["sleep 30; echo late >> hooks.txt", "echo skipped >> hooks.txt"],
            "suspend_deadline_ms": 500}
    devbox = create_running(devbox_client, launch_parameters={"lifecycle": {"lifecycle_hooks": slow}})["id"]
    began = time.monotonic()
    suspended_after_hooks(devbox_client, devbox)
    assert time.monotonic() - began < 5
    resume(devbox_client, devbox)
    assert run(devbox_client, devbox, "cat hooks.txt 2>/dev/null; echo end")["stdout"] == "end\n"
    messages = [entry["message"] or "" for entry in devbox_client.get(f"{URL}/{devbox}/logs", headers=ALICE).json()["logs"]
                if entry["source"] == "setup_commands"]
    assert any("ran longer than 0.5 s: killed" in m for m in messages), messages
    assert any("not run" in m for m in messages), messages


def test_idle_suspend_hooks_run_off_the_timer_thread_and_a_shutdown_meanwhile_wins(devbox_client):
    timers, now = hand_clock(devbox_client)
    launch = {"after_idle": {"idle_time_seconds": 10, "on_idle": "suspend"},
              "lifecycle": {"lifecycle_hooks": {"suspend_commands": ["sleep 30"], "suspend_deadline_ms": 60_000}}}
    devbox = create_running(devbox_client, launch_parameters=launch)["id"]
    now[0] += 11
    began = time.monotonic()
    assert timers.expire_due() == [devbox]
    assert time.monotonic() - began < 2  # the hook runs on its own thread, not the timers'
    assert wait_status(devbox_client, devbox, ["suspending"], timeout=5).json()["status"] == "suspending"
    # Neither a second suspend nor a resume while it is suspending; a shutdown is answered at once.
    assert_error(suspend(devbox_client, devbox), 400, "invalid_state", "suspending")
    assert_error(resume(devbox_client, devbox), 400, "invalid_state", "suspending")
    began = time.monotonic()
    view = devbox_client.post(f"{URL}/{devbox}/shutdown", headers=ALICE).json()
    assert view["status"] == "shutdown" and time.monotonic() - began < 5
    # The hook ends with the devbox; the interrupted suspend leaves it shut down.
    until(lambda: not any(t.name == f"suspend-{devbox}" for t in threading.enumerate()), timeout=10)
    assert devbox_client.get(f"{URL}/{devbox}", headers=ALICE).json()["status"] == "shutdown"
