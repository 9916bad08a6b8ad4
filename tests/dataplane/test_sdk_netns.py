"""The official SDK against a real server process on the netns runtime and an offline world:
policies decide what commands inside devboxes can reach; a kill -9 leaves nothing behind."""

from __future__ import annotations

import glob
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from runloop_api_client import RunloopSDK

from netns import cgroup_limits, namespaces, sysctl
from netns.sandbox import find_orphans
from simulator.dataplane import NS_PREFIX, instance_id
from tests.runtime_servers import runtime_server
from tests.server import ServerProcess

pytestmark = pytest.mark.privileged

WORLD = """
resolver = "198.51.100.53"
[hosts."github.com"]
address = "192.0.2.10"
http = [80]
[hosts."evil.example"]
address = "203.0.113.66"
http = [80]
"""


@pytest.fixture
def netns_server(tmp_path):
    """(server, its arguments) on --runtime netns; it must leave no namespace behind."""
    with runtime_server(tmp_path, "netns", WORLD, subnet_base=150) as served:
        yield served


def _cpu_quota_us(devbox_id: str) -> int:
    """The CPU quota (per 100 ms) of the devbox's sandbox cgroup, read from the host."""
    found = cgroup_limits._hierarchy("cpu")
    assert found is not None, "a cgroup cpu controller (CI has one)"
    kind, mount = found
    (path,) = glob.glob(os.path.join(mount, cgroup_limits.PARENT, f"*{devbox_id}"))
    name = "cpu.max" if kind == "cgroup2" else "cpu.cfs_quota_us"
    with open(os.path.join(path, name)) as f:
        return int(f.read().split()[0])


def curl(devbox, url: str):
    return devbox.cmd.exec(f"curl -sS --max-time 2 {url}")


def test_sdk_devbox_policy_allows_and_blocks_world_hosts(netns_server):
    server, _ = netns_server
    sdk = RunloopSDK(bearer_token="netns-sdk", base_url=server.url, max_retries=0)
    policy = sdk.network_policy.create(name="github-only", allowed_hostnames=["github.com"])
    devbox = sdk.devbox.create(launch_parameters={"network_policy_id": policy.id, "resource_size_request": "X_SMALL"})
    with devbox:
        assert devbox.get_info().launch_parameters.network_policy_id == policy.id
        assert _cpu_quota_us(devbox.id) == 50_000  # X_SMALL: half a CPU
        allowed = curl(devbox, "http://github.com/ok")
        assert allowed.exit_code == 0 and allowed.stdout() == "github.com /ok\n"
        blocked = curl(devbox, "http://evil.example/")
        assert blocked.exit_code == 6  # could not resolve: the resolver said NXDOMAIN
        direct = curl(devbox, "http://203.0.113.66/")
        assert direct.exit_code == 28  # timed out: nftables dropped it
        whoami = devbox.cmd.exec("id -u; cat /etc/resolv.conf")
        assert whoami.stdout().split("\n")[0] != "0"
        # A live update through the SDK reaches the running devbox before the call returns.
        policy.update(allowed_hostnames=["github.com", "evil.example"])
        assert curl(devbox, "http://evil.example/x").stdout() == "evil.example /x\n"
        policy.update(allowed_hostnames=[])
        assert curl(devbox, "http://github.com/").exit_code != 0
    assert devbox.get_info().status == "shutdown"


def unique_sleep() -> str:
    """A sleep command line no other test runs, for pgrep -f to find (or not)."""
    return f"sleep 1000.{secrets.randbelow(10**6):06d}"


def world_answers(devbox_ns: str, port: int = 80) -> bool:
    """Whether a TCP connect from the devbox's namespace to a world host (github.com) works."""
    sock = namespaces.socket_in(devbox_ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    try:
        sock.connect(("192.0.2.10", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def test_kill_9_then_restart_reconciles_and_leaves_no_orphans(netns_server):
    server, args = netns_server
    sdk = RunloopSDK(bearer_token="netns-restart", base_url=server.url, max_retries=0)
    view = sdk.api.devboxes.create()
    view = sdk.api.post(f"/v1/devboxes/{view.id}/wait_for_status", body={"statuses": ["running", "failure"]}, cast_to=object)
    assert view["status"] == "running", view["state_transitions"]
    devbox = sdk.devbox.from_id(view["id"])
    sleeper = unique_sleep()  # other tests may sleep 1000 meanwhile (pytest-xdist)
    devbox.cmd.exec(f"{sleeper} > /dev/null 2>&1 &")
    assert subprocess.run(["pgrep", "-f", sleeper], capture_output=True).stdout != b""
    prefix = f"{NS_PREFIX}{instance_id(server.data_dir)}-"
    assert len(namespaces.list_names(prefix)) == 3  # router, world, the devbox
    [devbox_ns] = [n for n in namespaces.list_names(prefix) if n not in (prefix + "r", prefix + "w")]
    assert world_answers(devbox_ns)  # no policy: the world is open to it
    server.stop(signal.SIGKILL)
    # The kernel state outlives the process, closed: nobody answers DNS any more, and the
    # watchdog the simulator left turns the router's forwarding off - even what a policy
    # allowed is closed now.
    deadline = time.monotonic() + 10
    while world_answers(devbox_ns):
        assert time.monotonic() < deadline, "the devbox still reaches the world after the simulator died"
    assert sysctl.read(prefix + "r", "net.ipv4.ip_forward") == "0"
    assert len(namespaces.list_names(prefix)) == 3
    assert [p.name for p in (server.data_dir / "devboxes").iterdir()] == [devbox.id]  # its home and /tmp
    assert find_orphans(prefix) != []
    restarted = ServerProcess(server.data_dir, *args).start()
    try:
        # ... and the next start removes it, rebuilding only router and world.
        assert sorted(namespaces.list_names(prefix)) == [prefix + "r", prefix + "w"]
        assert find_orphans(prefix) == []
        assert subprocess.run(["pgrep", "-f", sleeper], capture_output=True).stdout == b""
        assert list((server.data_dir / "devboxes").iterdir()) == []
        sdk = RunloopSDK(bearer_token="netns-restart", base_url=restarted.url, max_retries=0)
        # (sdk.devbox.from_id would await "running"; read the view directly.)
        info = sdk.api.devboxes.retrieve(devbox.id)
        assert info.status == "failure"
        assert "restart" in (info.state_transitions[-1].failure_reason or "")
    finally:
        restarted.stop()


def _deadman_of(pid: int) -> int:
    for task in (f"/proc/{pid}/task/{t}/children" for t in os.listdir(f"/proc/{pid}/task")):
        with open(task) as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                    if b"netns.deadman" in cmdline.read():
                        return int(child)
    raise AssertionError("the server has no deadman watchdog")


def test_a_kill_of_the_simulator_and_its_watchdog_together_still_closes_the_router(netns_server):
    """A service manager's SIGKILL of the whole unit (systemctl kill, the end of a stop that
    took too long, an OOM kill) takes the watchdog too: the router then stops forwarding when
    the simulator's heartbeat runs out (netns.heartbeat), with no process's help."""
    server, args = netns_server
    sdk = RunloopSDK(bearer_token="netns-group-kill", base_url=server.url, max_retries=0)
    sdk.devbox.create()  # no policy: the world is open to it
    prefix = f"{NS_PREFIX}{instance_id(server.data_dir)}-"
    [devbox_ns] = [n for n in namespaces.list_names(prefix) if n not in (prefix + "r", prefix + "w")]
    assert world_answers(devbox_ns)
    # A listener of the test's own on github.com's address: the world's services die with the
    # simulator (they are its threads), so theirs would stop answering whatever the router does.
    listener = namespaces.socket_in(prefix + "w", socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("192.0.2.10", 0))
        listener.listen(64)
        port = listener.getsockname()[1]

        def accept_all():  # a full backlog would look like a closed router
            while True:
                try:
                    listener.accept()[0].close()
                except OSError:
                    return

        threading.Thread(target=accept_all, daemon=True).start()
        assert world_answers(devbox_ns, port)
        deadman = _deadman_of(server.proc.pid)
        subprocess.run(["kill", "-KILL", str(server.proc.pid), str(deadman)], check=True)
        server.stop(signal.SIGKILL)  # reaped
        deadline = time.monotonic() + 20  # the heartbeat's 10 s, and slack
        while world_answers(devbox_ns, port):
            assert time.monotonic() < deadline, "the devbox still reaches the world after the simulator died"
        assert sysctl.read(prefix + "r", "net.ipv4.ip_forward") == "1"  # no watchdog closed it: the heartbeat did
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # ends accept_all
        listener.close()
    restarted = ServerProcess(server.data_dir, *args).start()  # cleans up, as after any crash
    try:
        assert sorted(namespaces.list_names(prefix)) == [prefix + "r", prefix + "w"]
    finally:
        restarted.stop()


def test_a_second_server_on_a_data_dir_in_use_is_refused_and_harms_nothing(netns_server):
    """Both would be one instance (same kernel object names): the second would remove the
    first's namespaces and devboxes as a crash's leftovers. It must refuse before that."""
    server, args = netns_server
    sdk = RunloopSDK(bearer_token="netns-twice", base_url=server.url, max_retries=0)
    policy = sdk.network_policy.create(name="github-only", allowed_hostnames=["github.com"])
    devbox = sdk.devbox.create(launch_parameters={"network_policy_id": policy.id})
    with devbox:
        assert curl(devbox, "http://github.com/a").stdout() == "github.com /a\n"
        prefix = f"{NS_PREFIX}{instance_id(server.data_dir)}-"
        before = sorted(namespaces.list_names(prefix))
        second = subprocess.run(
            [sys.executable, "-m", "simulator", "serve", "--port", "0", "--data-dir", str(server.data_dir), *args],
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f"in use by another devbox-sim (pid {server.proc.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        assert sorted(namespaces.list_names(prefix)) == before
        assert devbox.get_info().status == "running"
        assert curl(devbox, "http://github.com/b").stdout() == "github.com /b\n"


def test_a_stop_ends_running_and_suspended_devboxes_and_leaves_nothing(netns_server):
    server, args = netns_server
    sdk = RunloopSDK(bearer_token="netns-stop", base_url=server.url, max_retries=0)
    running = sdk.devbox.create()
    sleeper = unique_sleep()
    running.cmd.exec(f"{sleeper} > /dev/null 2>&1 &")
    assert subprocess.run(["pgrep", "-f", sleeper], capture_output=True).stdout != b""
    frozen = sdk.devbox.create()
    frozen.suspend()
    assert sdk.api.devboxes.retrieve(frozen.id).status == "suspended"
    prefix = f"{NS_PREFIX}{instance_id(server.data_dir)}-"
    assert server.stop() == -signal.SIGTERM  # graceful (uvicorn re-raises the signal it handled)
    # Unlike kill -9 (above), nothing is left for the next start to clean up.
    assert namespaces.list_names(prefix) == [] and find_orphans(prefix) == []
    assert subprocess.run(["pgrep", "-f", sleeper], capture_output=True).stdout == b""
    restarted = ServerProcess(server.data_dir, *args).start()
    try:
        assert not any("from a previous run are gone" in line for line in restarted.log)
        sdk = RunloopSDK(bearer_token="netns-stop", base_url=restarted.url, max_retries=0)
        for devbox in (running, frozen):
            info = sdk.api.devboxes.retrieve(devbox.id)
            assert info.status == "failure"
            assert info.state_transitions[-1].failure_reason == "the simulator stopped"
    finally:
        restarted.stop()


def test_interrupt_lets_the_command_handle_sigint(netns_server):
    """send_std_in INTERRUPT is SIGINT to the command: its trap runs and its exit status is
    the execution's (the nsenter that entered the sandbox does not die of it first)."""
    import httpx

    server, _ = netns_server
    headers = {"Authorization": "Bearer netns-interrupt"}
    sdk = RunloopSDK(bearer_token="netns-interrupt", base_url=server.url, max_retries=0)
    devbox = sdk.devbox.create()
    with devbox:
        base = f"{server.url}/v1/devboxes/{devbox.id}"
        started = httpx.post(f"{base}/execute_async", headers=headers, json={
            "command": "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.1; done",
            "attach_stdin": True,
        }).json()
        execution = f"{base}/executions/{started['execution_id']}"
        deadline = time.monotonic() + 10
        logs = f"{base}/logs?execution_id={started['execution_id']}"
        while not any(e["message"] == "ready" for e in httpx.get(logs, headers=headers).json()["logs"]):
            assert time.monotonic() < deadline, "the command never said ready"
            time.sleep(0.02)  # bounded poll: the trap is set once it printed (a running command's lines are logged)
        sent = httpx.post(f"{execution}/send_std_in", headers=headers, json={"signal": "INTERRUPT"})
        assert sent.json()["success"] is True
        done = httpx.post(f"{execution}/wait_for_status", headers=headers,
                          json={"statuses": ["completed"], "timeout_seconds": 10}).json()
        assert (done["exit_status"], done["stdout"]) == (5, "ready\ngot-int\n")


def test_network_events_show_what_a_devbox_tried(netns_server):
    server, _ = netns_server
    sdk = RunloopSDK(bearer_token="netns-events", base_url=server.url, max_retries=0)
    policy = sdk.network_policy.create(name="events", allowed_hostnames=["github.com"])
    devbox = sdk.devbox.create(launch_parameters={"network_policy_id": policy.id})
    with devbox:
        assert curl(devbox, "http://github.com/").exit_code == 0
        assert curl(devbox, "http://evil.example/").exit_code == 6
        events = sdk.api.get(f"/v1/devboxes/{devbox.id}/network_events", cast_to=object)
        by_name = {}
        for event in events["network_events"]:
            by_name.setdefault((event["name"], event["qtype"]), event)
        allowed = by_name[("github.com", "A")]
        assert allowed["verdict"] == "allowed" and allowed["matched_pattern"] == "github.com"
        assert allowed["addresses"] == ["192.0.2.10"] and allowed["ttl"] > 0
        denied = by_name[("evil.example", "A")]
        assert denied["verdict"] == "denied" and denied["reason"] == "no_matching_pattern"
        only_denied = sdk.api.get(f"/v1/devboxes/{devbox.id}/network_events", options={"params": {"verdict": "denied"}}, cast_to=object)
        assert {e["name"] for e in only_denied["network_events"]} == {"evil.example"}
        connections = sdk.api.get(f"/v1/devboxes/{devbox.id}/network_connections", cast_to=object)
        assert connections["connections"] == [
            {"destination": "192.0.2.10", "protocol": "tcp", "port": 80, "name": "github.com", "connections": 1}]
        other = RunloopSDK(bearer_token="someone-else", base_url=server.url, max_retries=0)
        with pytest.raises(Exception) as excinfo:
            other.api.get(f"/v1/devboxes/{devbox.id}/network_events", cast_to=object)
        assert getattr(excinfo.value, "status_code", None) == 404
    # Shutting down writes a one-line summary to the server log (pumped by a thread: poll).
    deadline = time.monotonic() + 10
    while not any(f"devbox {devbox.id} shutdown:" in line for line in server.log):
        assert time.monotonic() < deadline, server.log[-10:]
        time.sleep(0.05)  # polling the collected log with a deadline
    summary = next(line for line in server.log if f"devbox {devbox.id} shutdown:" in line)
    assert re.search(r"[1-9]\d* allowed, [1-9]\d* denied, 0 error DNS decisions, \d+ blocked connections", summary), summary


def _events_cli(server, devbox_id, token, *extra):
    argv = [sys.executable, "-m", "simulator", "events", devbox_id, "--base-url", server.url, "--api-key", token, *extra]
    return argv


def test_events_cli_table_and_follow(netns_server):
    server, _ = netns_server
    token = "netns-events-cli"
    sdk = RunloopSDK(bearer_token=token, base_url=server.url, max_retries=0)
    policy = sdk.network_policy.create(name="cli", allowed_hostnames=["github.com"])
    devbox = sdk.devbox.create(launch_parameters={"network_policy_id": policy.id})
    follow = None
    try:
        assert curl(devbox, "http://github.com/").exit_code == 0
        assert curl(devbox, "http://evil.example/").exit_code == 6
        table = subprocess.run(_events_cli(server, devbox.id, token), capture_output=True, text=True, timeout=30)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith("TIME")
        assert any("allowed" in l and "github.com" in l and "192.0.2.10" in l for l in lines)
        assert any("denied" in l and "evil.example" in l and "no_matching_pattern" in l for l in lines)
        assert "\033[" not in table.stdout  # no colour codes when not a terminal
        unknown = subprocess.run(_events_cli(server, "dbx_nope", token), capture_output=True, text=True, timeout=30)
        assert (unknown.returncode, unknown.stdout) == (1, "")  # no table header before the error
        assert unknown.stderr == "devbox-sim events: 404 devbox 'dbx_nope' not found\n"

        follow = subprocess.Popen(_events_cli(server, devbox.id, token, "--follow", "--verdict", "denied"),
                                  stdout=subprocess.PIPE, text=True)
        assert curl(devbox, "http://nothere.example/").exit_code == 6
        output = _Lines(follow)
        seen = output.until("nothere.example", seconds=20)
        assert any("nothere.example" in l for l in seen) and not any("github.com" in l for l in seen)
        # A reader that leaves (`| head -1`): the next row ends it quietly, as SIGPIPE would.
        head = subprocess.Popen(_events_cli(server, devbox.id, token, "--follow"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert head.stdout.readline().startswith("TIME")
            head.stdout.close()
            assert curl(devbox, "http://gone.example/").exit_code == 6
            assert head.wait(timeout=20) == 141
            assert head.stderr.read() == ""  # before: a BrokenPipeError traceback
        finally:
            if head.poll() is None:
                head.kill()
                head.wait()
        devbox.shutdown()
        assert follow.wait(timeout=20) == 0  # it stops by itself when the devbox ends
        assert f"-- devbox {devbox.id} is shutdown" in output.all()
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
            follow.wait()
        if sdk.api.devboxes.retrieve(devbox.id).status != "shutdown":
            devbox.shutdown()


class _Lines:
    """Every line a process prints, collected by a thread; waits are bounded by deadlines."""

    def __init__(self, proc):
        import threading

        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        self._thread.start()

    def until(self, needle: str, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while not any(needle in line for line in list(self.lines)):
            assert time.monotonic() < deadline, f"{needle!r} never appeared; got {self.lines}"
            time.sleep(0.05)  # polling collected output with a deadline
        return list(self.lines)

    def all(self, seconds: float = 10) -> str:
        self._thread.join(seconds)
        return "".join(self.lines)


def test_api_keys_file_is_invisible_inside_devboxes(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("secret-token team-a\n")
    keys.chmod(0o644)  # even world-readable
    world = tmp_path / "world.toml"
    world.write_text(WORLD)
    args = ("--runtime", "netns", "--world", str(world), "--api-keys", str(keys), "--subnet", "10.149.0.0/16")
    with ServerProcess(tmp_path / "data", *args) as server:
        sdk = RunloopSDK(bearer_token="secret-token", base_url=server.url, max_retries=0)
        with sdk.devbox.create() as devbox:
            result = devbox.cmd.exec(f"cat {keys}; echo exit=$?")
            assert "secret-token" not in result.stdout()
            assert "exit=0" in result.stdout() or "exit=1" in result.stdout()
