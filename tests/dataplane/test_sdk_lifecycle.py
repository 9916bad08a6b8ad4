"""The official SDK (3.0.0, sync and async) on a real server process: output callbacks (SSE),
long output, stdin, suspend/resume, ``with devbox:``, files with every path form, logs and
keep-alive expiry.

Each test runs on the netns runtime (privileged: real sandboxes, an offline world, nothing
leaves the machine) and on the subprocess test double (no root, fast), so a wire-format
problem shows up even on a laptop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import pytest
from runloop_api_client import (
    APIStatusError,
    AsyncRunloopSDK,
    BadRequestError,
    NotFoundError,
    RunloopSDK,
)

from tests.runtime_servers import local_runtime_env, runtime_server
from tests.server import ServerProcess

WORLD = """
resolver = "198.51.100.53"
[hosts."github.com"]
address = "192.0.2.10"
http = [80]
"""
EXPECTED_2000 = "".join(f"{i}\n" for i in range(1, 2001))
_tokens = itertools.count()


@pytest.fixture(
    scope="module",
    params=[pytest.param("netns", marks=pytest.mark.privileged), "local"],
)
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"lifecycle-{request.param}")
    if request.param == "netns":
        with runtime_server(tmp, "netns", WORLD, subnet_base=100) as (proc, _):
            yield proc
    else:
        with ServerProcess(tmp / "data", env=local_runtime_env()) as proc:
            proc.runtime_name = request.param
            yield proc


def token() -> str:
    return f"lifecycle-{os.getpid()}-{next(_tokens)}"  # its own account: nothing shared


@pytest.fixture
def sdk(server):
    return RunloopSDK(bearer_token=token(), base_url=server.url, max_retries=0)


@pytest.fixture
def devbox(sdk):
    box = sdk.devbox.create()
    try:
        yield box
    finally:
        if sdk.api.devboxes.retrieve(box.id).status not in ("shutdown", "failure"):
            box.shutdown()


# --- commands ----------------------------------------------------------------------------


def test_exec_with_stdout_stderr_and_output_callbacks(devbox):
    out, err, both = [], [], []
    result = devbox.cmd.exec(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done; printf 'ünïcode'",
        stdout=out.append,
        stderr=err.append,
        output=both.append,
    )
    assert result.exit_code == 0
    assert "".join(out) == result.stdout() == "out1\nout2\nout3\nünïcode"
    assert "".join(err) == result.stderr() == "err1\nerr2\nerr3\n"
    # output= gets both streams in arrival order: the same characters, interleaved somehow.
    assert sorted("".join(both)) == sorted(result.stdout() + result.stderr())


def test_two_thousand_lines_come_back_complete(devbox):
    streamed = []
    result = devbox.cmd.exec("seq 1 2000", stdout=streamed.append)
    assert result.stdout() == EXPECTED_2000 == "".join(streamed)
    assert result.stdout(num_lines=3) == "1998\n1999\n2000"  # the SDK joins the tail lines
    plain = devbox.cmd.exec("seq 1 2000 >&2")
    assert plain.stderr() == EXPECTED_2000 and plain.stdout() == ""


def test_commands_leaving_background_children_keep_no_descriptors(server, devbox):
    def descriptors() -> int:
        """The server's descriptors but sockets (the SDK's HTTP connections come and go)."""
        fds = f"/proc/{server.proc.pid}/fd"
        links = []
        for fd in os.listdir(fds):
            try:
                links.append(os.readlink(f"{fds}/{fd}"))
            except FileNotFoundError:
                pass  # closed meanwhile
        return sum(1 for link in links if not link.startswith("socket:"))

    assert devbox.cmd.exec("true").exit_code == 0  # warm up
    before = descriptors()
    # Few: docker records the exits of one container's execs one after the other, taking ~4 s
    # each when a child holds the exec's output (tests/api runs 30 on the test double).
    count = 2
    started = [devbox.cmd.exec_async(f"sleep 120 & echo {i}") for i in range(count)]
    for i, execution in enumerate(started):
        result = execution.result()
        assert (result.exit_code, result.stdout()) == (0, f"{i}\n")
    # The pipes are closed (the grace after the exit passed) before the result is recorded:
    # the children still hold their ends, the simulator holds none (was 2 per command).
    assert descriptors() < before + count


def test_an_entrypoint_is_the_devboxs_main_process(sdk):
    """It runs once the devbox runs, as the devbox's user with its environment, and its end
    shuts the devbox down (shutdown_reason entrypoint_exit)."""
    devbox = sdk.devbox.create(entrypoint="mkfifo ~/go; id -u > ~/uid.new; mv ~/uid.new ~/uid; echo $WHO; read line < ~/go",
                               environment_variables={"WHO": "main"})
    # It starts once the devbox runs, so maybe after create returned: its file is waited for.
    uid = devbox.cmd.exec("for i in $(seq 200); do [ -e ~/uid ] && break; sleep 0.05; done; cat ~/uid")
    assert uid.stdout() == devbox.cmd.exec("id -u").stdout()
    assert devbox.get_info().status == "running"
    devbox.cmd.exec("echo go > ~/go")
    sdk.api.post(f"/v1/devboxes/{devbox.id}/wait_for_status", body={"statuses": ["shutdown"], "timeout_seconds": 20},
                 cast_to=object)
    info = devbox.get_info()
    assert (info.status, info.shutdown_reason) == ("shutdown", "entrypoint_exit")
    logged = [entry.message for entry in devbox.logs().logs if entry.source == "entrypoint"]
    assert "main" in logged and logged[-1] == "the entrypoint ended: shutting the devbox down"


def test_send_std_in_and_close_std_in(devbox):
    execution = devbox.cmd.exec_async("cat; echo done", attach_stdin=True)
    execution.send_std_in("hello\n")
    execution.send_std_in("wörld\n")
    execution.close_std_in()
    result = execution.result()
    assert result.exit_code == 0 and result.stdout() == "hello\nwörld\ndone\n"
    with pytest.raises(BadRequestError):
        execution.send_std_in("too late\n")


def test_logs_name_each_command(devbox):
    result = devbox.cmd.exec("echo logged; exit 4")
    logs = devbox.logs(execution_id=result.execution_id).logs
    assert [log.message for log in logs] == ["started", "logged", "exited with 4"]
    assert {log.cmd_id for log in logs} == {result.execution_id} and logs[-1].exit_code == 4
    assert logs[0].source == "exec" and logs[0].cmd == "echo logged; exit 4"


# --- suspend / resume --------------------------------------------------------------------


def stamps(text: str) -> list[int]:
    return [int(line) for line in text.split()]


def last_stamp(devbox, execution_id: str) -> int:
    """The newest time the command printed so far (its log lines; the view has output only
    once the command completed)."""
    lines = [log.message for log in devbox.logs(execution_id=execution_id).logs if (log.message or "").isdigit()]
    return int(lines[-1]) if lines else 0


def poll(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)  # bounded poll


def test_suspended_devbox_makes_no_progress_until_resumed(devbox):
    # The command prints the time every 20 ms; while suspended it may print nothing.
    execution = devbox.cmd.exec_async("while :; do date +%s%N; sleep 0.02; done")
    poll(lambda: last_stamp(devbox, execution.execution_id) > 0, "the command never printed")
    suspended = devbox.suspend()
    assert suspended.status == "suspended"
    frozen_at = time.time_ns()
    time.sleep(1.0)  # the observation window in which nothing may happen
    thawed_at = time.time_ns()
    resumed = devbox.resume()
    assert resumed.status == "running"
    assert [t.status for t in resumed.state_transitions][-3:] == ["suspending", "suspended", "running"]
    poll(lambda: last_stamp(devbox, execution.execution_id) > thawed_at, "the command did not continue")
    execution.kill()
    printed = stamps(execution.result().stdout())
    assert not [t for t in printed if frozen_at < t < thawed_at], "the command ran while suspended"
    assert any(t < frozen_at for t in printed) and any(t > thawed_at for t in printed)


def test_suspend_and_resume_only_from_the_right_status(devbox, sdk):
    with pytest.raises(BadRequestError):
        devbox.resume()
    devbox.suspend()
    with pytest.raises(BadRequestError):
        devbox.suspend()
    with pytest.raises(BadRequestError):
        devbox.cmd.exec("true")
    view = devbox.resume_async()
    assert view.status == "running"
    assert devbox.cmd.exec("echo back").stdout() == "back\n"


def test_shutdown_of_a_suspended_devbox_ends_its_commands(sdk):
    devbox = sdk.devbox.create()
    try:
        execution = devbox.cmd.exec_async("echo 1; exec sleep 300")
        # Suspend only once the command runs: a shutdown that catches the exec chain still
        # entering the namespaces ends it with nsenter's error (exit 1), not SIGKILL's 137.
        poll(lambda: last_stamp(devbox, execution.execution_id) == 1, "the command did not start")
        devbox.suspend()
        started = time.monotonic()
        info = devbox.shutdown()
        assert info.status == "shutdown" and time.monotonic() - started < 10
        result = execution.result()
        assert result.exit_code == 137
    finally:
        if devbox.get_info().status != "shutdown":
            devbox.shutdown()


def test_network_rules_stay_through_suspend_and_resume(server, sdk):
    policy = sdk.network_policy.create(name=f"suspend-{token()}", allowed_hostnames=["github.com"])
    with sdk.devbox.create(launch_parameters={"network_policy_id": policy.id}) as devbox:
        if server.runtime_name == "netns":
            assert devbox.cmd.exec("curl -sS --max-time 2 http://github.com/a").stdout() == "github.com /a\n"
        devbox.suspend()
        assert devbox.get_info().launch_parameters.network_policy_id == policy.id
        devbox.resume()
        if server.runtime_name == "netns":  # the test double has no network to check
            assert devbox.cmd.exec("curl -sS --max-time 2 http://github.com/b").stdout() == "github.com /b\n"
            assert devbox.cmd.exec("curl -sS --max-time 2 http://203.0.113.66/").exit_code == 28  # still dropped
        assert devbox.cmd.exec("echo alive").stdout() == "alive\n"


# --- with devbox, keep-alive ------------------------------------------------------------


def test_with_devbox_shuts_down_on_exit(sdk):
    with sdk.devbox.create() as devbox:
        assert devbox.get_info().status == "running"
    info = devbox.get_info()
    assert info.status == "shutdown" and info.shutdown_reason == "api_shutdown"


def test_keep_alive_time_expiry(sdk):
    devbox = sdk.devbox.create(launch_parameters={"keep_alive_time_seconds": 2})
    try:
        assert devbox.keep_alive() == {}
        view = sdk.api.post(
            f"/v1/devboxes/{devbox.id}/wait_for_status", body={"statuses": ["shutdown"], "timeout_seconds": 15}, cast_to=object
        )
        assert view["status"] == "shutdown" and view["shutdown_reason"] == "keep_alive_timeout"
    finally:
        if devbox.get_info().status != "shutdown":
            devbox.shutdown()


# --- files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written, read_as",
    [("notes/a.txt", "~/notes/a.txt"), ("~/b.txt", "/home/user/b.txt"), ("/home/user/c.txt", "c.txt"), ("/tmp/d.txt", "/tmp/d.txt")],
)
def test_file_round_trips_with_every_path_form(server, devbox, written, read_as, tmp_path):
    devbox.file.write(file_path=written, contents=f"text for {written} ✓")
    assert devbox.file.read(file_path=read_as) == f"text for {written} ✓"
    if server.runtime_name != "local" or not read_as.startswith("/"):
        # (the test double's commands see the host's absolute paths; a sandbox sees its own)
        assert devbox.cmd.exec(f"cat {read_as}").stdout() == f"text for {written} ✓"
    blob = bytes(range(256)) * 16
    local = tmp_path / "blob.bin"
    local.write_bytes(blob)
    assert devbox.file.upload(path=written + ".bin", file=local) == {}
    assert devbox.file.download(path=read_as + ".bin") == blob
    assert devbox.file.upload(path=written + ".raw", file=blob) == {}
    assert devbox.file.download(path=read_as + ".raw") == blob


def test_file_errors_reach_the_sdk_as_4xx(devbox):
    with pytest.raises(NotFoundError):
        devbox.file.read(file_path="missing.txt")
    with pytest.raises(BadRequestError):
        devbox.file.read(file_path="/etc/passwd")
    with pytest.raises(BadRequestError):
        devbox.file.download(path="~")


def test_file_mounts_are_written_before_the_launch_commands(sdk):
    devbox = sdk.devbox.create(
        file_mounts={"notes/m.txt": "mounted ✓", "/tmp/t.txt": "tee"},
        launch_parameters={"launch_commands": ["cat ~/notes/m.txt > ~/seen"]},
    )
    try:
        assert devbox.file.read(file_path="seen") == "mounted ✓"
        assert devbox.file.read(file_path="/tmp/t.txt") == "tee"
        assert devbox.cmd.exec("stat -c %u ~/notes/m.txt").stdout() == devbox.cmd.exec("id -u").stdout()  # the devbox user
    finally:
        devbox.shutdown()


def test_a_bad_file_mount_path_fails_the_devbox_naming_it(sdk):
    # A parent that is a file is bad on every runtime (docker may write anywhere in its container).
    view = sdk.api.devboxes.create(file_mounts={"f": "x", "f/g": "y"}, launch_parameters={"launch_commands": ["touch ran"]})
    try:
        done = sdk.api.post(
            f"/v1/devboxes/{view.id}/wait_for_status", body={"statuses": ["failure", "running"], "timeout_seconds": 20}, cast_to=object
        )
        assert done["status"] == "failure" and done["failure_reason"] == "execution_failed", done
        assert "file mount 'f/g'" in done["state_transitions"][-1]["failure_reason"], done
    finally:
        if sdk.api.devboxes.retrieve(view.id).status not in ("shutdown", "failure"):
            sdk.api.devboxes.shutdown(view.id)


def test_a_background_child_of_a_launch_command_does_not_delay_running(sdk):
    began = time.monotonic()
    devbox = sdk.devbox.create(launch_parameters={"launch_commands": ["sleep 60 & echo started"]})
    try:
        assert time.monotonic() - began < 10  # the pipes' grace (1 s), not the child's 60 s
        assert devbox.get_info().status == "running"
        assert "started" in [entry.message for entry in devbox.logs().logs]
    finally:
        devbox.shutdown()


def test_hostile_paths_get_a_4xx_never_a_500(server, devbox):
    devbox.cmd.exec("ln -s /etc/passwd ~/passwd-link; mkdir -p ~/d; ln -s ~/d ~/dir-link; ln -s ../.. ~/up-link")
    hostile = ["../../etc/passwd", "/proc/self/environ", "~/../../root/x", "/home/user/../../etc/shadow",
               "passwd-link", "up-link/etc/passwd", "dir-link", "~/d/", "/", " ", "\n"]
    for path in hostile:
        for call, kwargs in ((devbox.file.read, {}), (devbox.file.write, {"contents": "x"})):
            try:
                call(file_path=path, **kwargs)
            except APIStatusError as error:
                assert 400 <= error.status_code < 500, (path, error)
            else:
                # Only a container has a whole file system of its own to read or write.
                assert server.runtime_name == "docker", path
    if server.runtime_name != "docker":  # (Docker's write_file does not follow directory links yet)
        # A link that stays inside the devbox's areas is followed, as a command would.
        devbox.file.write(file_path="dir-link/inside.txt", contents="through a link inside home")
        assert devbox.file.read(file_path="d/inside.txt") == "through a link inside home"


def test_huge_files_are_refused_and_errors_show_no_host_paths(server, devbox):
    """A devbox makes a sparse 1 GB file for free: reading it must not take the simulator's
    memory (400 file_too_large). Error messages name devbox paths, never the host's."""
    assert devbox.cmd.exec("truncate -s 1G ~/big && mkfifo ~/fifo").exit_code == 0
    for call, kwargs in ((devbox.file.read, {"file_path": "big"}), (devbox.file.download, {"path": "~/big"})):
        with pytest.raises(BadRequestError) as error:
            call(**kwargs)
        assert error.value.body["error_code"] == "file_too_large"
    if server.runtime_name == "netns":  # a container's paths are the devbox's own anyway
        with pytest.raises(BadRequestError) as error:
            devbox.file.read(file_path="fifo")
        message = error.value.body["message"]
        assert "/home/user/fifo" in message and str(server.data_dir) not in message


# --- the async SDK ------------------------------------------------------------------------


def test_async_sdk_flows(server, tmp_path):
    async def main():
        sdk = AsyncRunloopSDK(bearer_token=token(), base_url=server.url, max_retries=0)
        async with await sdk.devbox.create() as devbox:
            out, err = [], []
            result = await devbox.cmd.exec("seq 1 2000; echo e >&2", stdout=out.append, stderr=err.append)
            assert await result.stdout() == EXPECTED_2000 == "".join(out) and "".join(err) == "e\n"
            execution = await devbox.cmd.exec_async("cat", attach_stdin=True)
            await execution.send_std_in("piped\n")
            await execution.close_std_in()
            assert await (await execution.result()).stdout() == "piped\n"
            await devbox.file.write(file_path="~/async.txt", contents="async ✓")
            assert await devbox.file.read(file_path="/home/user/async.txt") == "async ✓"
            await devbox.file.upload(path="/tmp/async.bin", file=b"\x00\xff")
            assert await devbox.file.download(path="/tmp/async.bin") == b"\x00\xff"
            assert (await devbox.suspend()).status == "suspended"
            assert (await devbox.resume()).status == "running"
            logs = (await devbox.logs()).logs
            assert any(log.source == "files" for log in logs) and any(log.message == "piped" for log in logs)
        info = await devbox.get_info()
        assert info.status == "shutdown"

    asyncio.run(main())
