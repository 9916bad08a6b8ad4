"""Untrusted commands cannot exhaust the simulator: launch commands, build steps and executions
keep bounded output, a background child holding the output pipes delays nothing beyond the
grace period and keeps no descriptor, nothing ever signals pid 0, and ``file_mounts`` are
written before the launch commands (test double runtime; netns in
tests/dataplane/test_sdk_lifecycle.py)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time

import pytest

from simulator import command_output, devboxes
from simulator.command_output import (
    OUTPUT_GRACE_SECONDS,
    run_to_completion,
    signal_group,
)
from simulator.devbox_model import Execution
from simulator.live_execution import LiveExecution
from simulator.runtime import docker_exec
from tests.api.conftest import ALICE
from tests.api.disk_helpers import blueprint, ok
from tests.api.test_devboxes import URL, create, create_running, settle, until
from tests.api.test_executions import start, wait

SLOW = 30  # seconds a background child lives: far beyond every bound asserted here


def logs(client, devbox_id):
    return ok(client.get(f"{URL}/{devbox_id}/logs", headers=ALICE))["logs"]


def shutdown(client, devbox_id):
    client.post(f"{URL}/{devbox_id}/shutdown", headers=ALICE)


# --- 1. bounded output ---------------------------------------------------------------------


def test_launch_output_far_beyond_the_cap_keeps_only_the_cap(devbox_client, monkeypatch):
    cap = 100_000
    monkeypatch.setattr(devboxes, "LAUNCH_OUTPUT_MAX_BYTES", cap, raising=False)
    # 3000 lines of 999 characters (3 MB) on stdout, then a marker on stderr.
    command = "head -c 2997000 /dev/zero | tr '\\0' x | fold -w 999; echo done >&2"
    view = create_running(devbox_client, launch_parameters={"launch_commands": [command]})
    try:
        entries = [e for e in logs(devbox_client, view["id"]) if e["source"] == "setup_commands"]
        stdout = [e["message"] for e in entries if e["level"] == "info" and e["message"].startswith("x")]
        assert 0 < sum(len(line) + 1 for line in stdout) <= cap, len(stdout)
        assert len(stdout) < 3000
        assert any(e["level"] == "warn" and f"stdout beyond {cap} bytes not logged" in e["message"] for e in entries)
        assert [e["message"] for e in entries if e["level"] == "error"] == ["done"]
        assert entries[-1]["message"] == "exited with 0"
    finally:
        shutdown(devbox_client, view["id"])


def test_launch_command_printing_hundreds_of_megabytes_keeps_memory_bounded(devbox_client):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, high-water mark
    view = create_running(devbox_client, launch_parameters={"launch_commands": ["head -c 300000000 /dev/zero"]})
    try:
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        # 16 MiB per stream are decoded at most; communicate() kept all 300 MB.
        assert grown_mib < 150, grown_mib
    finally:
        shutdown(devbox_client, view["id"])


def test_build_step_output_beyond_the_cap_is_dropped_and_the_build_completes(devbox_client, monkeypatch):
    from simulator import blueprint_build

    monkeypatch.setattr(blueprint_build, "MAX_STEP_OUTPUT_BYTES", 10_000, raising=False)
    view = blueprint(devbox_client, name="loud", system_setup_commands=["head -c 5000000 /dev/zero | tr '\\0' y | fold -w 99"])
    assert view["status"] == "build_complete", view
    messages = [e["message"] for e in ok(devbox_client.get(f"/v1/blueprints/{view['id']}/logs", headers=ALICE))["logs"]]
    assert sum(1 for m in messages if m.startswith("y")) <= 10_000 // 100
    assert any("stdout beyond 10000 bytes not kept" in m for m in messages)


# --- 2. a background child holding the pipes ----------------------------------------------


def test_background_child_does_not_delay_running(devbox_client):
    began = time.monotonic()
    view = create_running(devbox_client, launch_parameters={"launch_commands": [f"sleep {SLOW} & echo started"]})
    try:
        assert time.monotonic() - began < OUTPUT_GRACE_SECONDS + 5
        messages = [e["message"] for e in logs(devbox_client, view["id"]) if e["source"] == "setup_commands"]
        assert "started" in messages and "exited with 0" in messages
    finally:
        shutdown(devbox_client, view["id"])


def test_background_child_does_not_hang_a_build_step(devbox_client):
    began = time.monotonic()
    view = blueprint(devbox_client, name="svc", system_setup_commands=[f"sleep {SLOW} & echo bg", "echo after"])
    assert view["status"] == "build_complete", view
    assert time.monotonic() - began < 2 * OUTPUT_GRACE_SECONDS + 8
    messages = [e["message"] for e in ok(devbox_client.get(f"/v1/blueprints/{view['id']}/logs", headers=ALICE))["logs"]]
    assert "bg" in messages and "after" in messages


def test_run_to_completion_with_a_setsid_child_and_a_timeout(tmp_path):
    """The helper itself: a child in another session (out of reach of the group kill) holds
    the pipes past the step timeout; every wait is still bounded."""
    pidfile = tmp_path / "child"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep {SLOW}' & echo hi; sleep {SLOW}"
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    seen = []
    try:
        began = time.monotonic()
        result = run_to_completion(proc, timeout=1.0, on_text=lambda stream, text: seen.append((stream, text)), grace=0.5)
        assert time.monotonic() - began < 1.0 + 0.5 + 5
        assert result.timed_out and result.returncode == -signal.SIGKILL and not result.all_output_read
        assert seen == [("stdout", "hi\n")]
        assert proc.stdout.closed and proc.stderr.closed
    finally:
        signal_group(proc, signal.SIGKILL)
        until(pidfile.exists)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        proc.wait(5)


# --- 3. no descriptor (or thread) kept per background child --------------------------------


def test_executions_leaving_background_children_keep_no_descriptors(devbox_client):
    view = create_running(devbox_client)
    count = 30
    try:
        run_one = [start(devbox_client, view["id"], "true")["execution_id"]]  # warm up (threads, db)
        assert wait(devbox_client, view["id"], run_one[0]).status_code == 200
        fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
        started = [start(devbox_client, view["id"], f"sleep {SLOW} & echo {i}")["execution_id"] for i in range(count)]
        for i, execution_id in enumerate(started):
            done = ok(wait(devbox_client, view["id"], execution_id))
            assert (done["status"], done["exit_status"], done["stdout"]) == ("completed", 0, f"{i}\n")
        assert len(os.listdir("/proc/self/fd")) < fds + 10  # was 2 per execution: + 60
        # The follow threads end a moment after recording the result (was 2 readers each).
        until(lambda: threading.active_count() < threads + 5, timeout=10)
    finally:
        shutdown(devbox_client, view["id"])


# --- 4. never a signal to pid 0 ------------------------------------------------------------


class _Unstarted:
    pid = 0
    returncode = None
    stdin = stdout = stderr = None


def test_killing_a_command_without_a_pid_signals_nobody(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: calls.append((pid, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: calls.append((pid, sig)))
    execution = Execution(id="exn_x", account="a", devbox_id="dbx_x", command="x", status="running", create_time_ms=0)
    live = LiveExecution(execution, _Unstarted(), 1024, False)
    live.kill()
    live.kill(signal.SIGINT)
    assert not signal_group(_Unstarted(), signal.SIGKILL)
    assert calls == []


class _FakeSocket:
    def read(self, n):
        return b""

    read1 = read

    def sendall(self, data):
        pass

    def settimeout(self, seconds):
        pass

    def shutdown(self, how):
        pass

    def close(self):
        pass


class _FailedExecApi:
    """docker's view of an exec that failed to start: no pid, already exited (126). Inspects
    from any other thread than the constructing one hang (until released), as a slow daemon
    would: the exit code must be known without them."""

    def __init__(self):
        self.owner = threading.get_ident()
        self.release = threading.Event()

    def exec_start(self, exec_id, socket):
        return _FakeSocket()

    def exec_inspect(self, exec_id):
        if threading.get_ident() != self.owner:
            self.release.wait(10)
        return {"Pid": 0, "Running": False, "ExitCode": 126}


def test_a_docker_exec_that_never_started_has_its_exit_code_at_once_and_is_never_signalled(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: calls.append(("killpg", pid, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: calls.append(("kill", pid, sig)))
    api = _FailedExecApi()
    proc = docker_exec.DockerProcess(api, "e" * 64, ["/bin/sh", "-c", "x"])
    try:
        assert proc.pid == 0 and proc.returncode == 126 and proc.poll() == 126
        proc.kill()
        proc.send_signal(signal.SIGINT)
        execution = Execution(id="exn_x", account="a", devbox_id="dbx_x", command="x", status="running", create_time_ms=0)
        LiveExecution(execution, proc, 1024, False).kill()
        assert calls == []
        assert proc.wait(1) == 126
    finally:
        api.release.set()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()


# --- 5. file_mounts ------------------------------------------------------------------------


def test_file_mounts_are_written_before_the_launch_commands(devbox_client):
    mounts = {"notes/a.txt": "mounted ✓", "~/b.txt": "bee", "/home/user/c.txt": "sea", "/tmp/d.txt": "dee"}
    view = create_running(devbox_client, file_mounts=mounts, launch_parameters={"launch_commands": ["cat notes/a.txt > seen"]})
    try:
        for path, content in [*mounts.items(), ("seen", "mounted ✓")]:
            response = devbox_client.post(f"{URL}/{view['id']}/read_file_contents", json={"file_path": path}, headers=ALICE)
            assert response.status_code == 200 and response.text == content, (path, response.text)
        files = [e["message"] for e in logs(devbox_client, view["id"]) if e["source"] == "files"]
        assert len(files) == 4 and "wrote notes/a.txt (11 bytes)" in files
    finally:
        shutdown(devbox_client, view["id"])


@pytest.mark.parametrize("path", ["/etc/passwd", "../../outside", "~/../../x"])
def test_a_bad_file_mount_path_fails_the_devbox_naming_it(devbox_client, runtime, path):
    view = create(devbox_client, file_mounts={"fine.txt": "x", path: "y"}, launch_parameters={"launch_commands": ["touch ran"]})
    done = settle(devbox_client, view["id"])
    assert done["status"] == "failure" and done["failure_reason"] == "execution_failed"
    reason = done["state_transitions"][-1]["failure_reason"]
    assert reason.startswith(f"file mount {path!r}: "), reason
    assert "/home/user" in reason or "leaves" in reason or "only" in reason, reason
    assert view["id"] not in runtime.alive_ids()
    assert "setup_commands" not in {e["source"] for e in logs(devbox_client, view["id"])}


@pytest.mark.parametrize("mounts", [{"a": 1}, ["a"], {"": "x"}, {"a\u0000b": "x"}, "x"])
def test_malformed_file_mounts_are_400(devbox_client, mounts):
    response = devbox_client.post(URL, json={"file_mounts": mounts}, headers=ALICE)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] in ("invalid_request", "invalid_path")


def test_helper_module_is_the_one_place():
    # The executions, launch commands and builds share one grace constant.
    from simulator import blueprint_build, executions

    assert executions.OUTPUT_GRACE_SECONDS is command_output.OUTPUT_GRACE_SECONDS
    assert blueprint_build.command_output is command_output and devboxes.command_output is command_output
