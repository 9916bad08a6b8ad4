"""The official SDK against a real server process on the Docker runtime (``--runtime docker``,
default busybox image built offline) and an offline world: policies decide what commands
inside containers reach; files, suspend/resume and disk snapshots work; a kill -9 leaves
containers that the next start removes; a stopped server leaves nothing."""

from __future__ import annotations

import signal

import pytest
from runloop_api_client import RunloopSDK

from netns import namespaces
from simulator.dataplane import NS_PREFIX, instance_id
from simulator.runtime.docker_runtime import INSTANCE_LABEL
from tests.dataplane.test_sdk_netns import WORLD
from tests.docker.conftest import check_server_left_nothing, require_docker
from tests.runtime_servers import runtime_server
from tests.server import ServerProcess

pytestmark = pytest.mark.privileged


def _containers(client, data_dir) -> list[dict]:
    return client.api.containers(all=True, filters={"label": f"{INSTANCE_LABEL}={instance_id(data_dir)}"})


@pytest.fixture
def docker_server(tmp_path, docker_client):
    """(server, its arguments) on --runtime docker and the default image; it must leave no
    namespace, container or image behind."""
    with runtime_server(tmp_path, "docker", WORLD, subnet_base=100) as served:
        yield served


def wget(devbox, url: str):
    # busybox wget's own -T segfaults in Debian 12's busybox-static 1.35: bound it with timeout.
    return devbox.cmd.exec(f"timeout 3 wget -qO- {url}")


def test_sdk_devbox_policy_allows_and_blocks_world_hosts(docker_server):
    server, _ = docker_server
    sdk = RunloopSDK(bearer_token="docker-sdk", base_url=server.url, max_retries=0)
    policy = sdk.network_policy.create(name="github-only", allowed_hostnames=["github.com"])
    devbox = sdk.devbox.create(launch_parameters={"network_policy_id": policy.id}, environment_variables={"GREETING": "hi"})
    with devbox:
        allowed = wget(devbox, "http://github.com/ok")
        assert allowed.exit_code == 0 and allowed.stdout() == "github.com /ok\n"
        blocked = wget(devbox, "http://evil.example/")
        assert blocked.exit_code != 0 and "bad address" in blocked.stderr()  # NXDOMAIN from our resolver
        direct = wget(devbox, "http://203.0.113.66/")
        assert direct.exit_code != 0 and direct.stdout() == ""  # dropped by nftables: timed out
        # The default image also carries the host's curl (the examples and agents use it).
        assert devbox.cmd.exec("curl -sS --max-time 2 http://github.com/c").stdout() == "github.com /c\n"
        assert devbox.cmd.exec("curl -sS --max-time 2 http://evil.example/").exit_code == 6  # not resolved
        assert devbox.cmd.exec("curl -sS --max-time 2 http://203.0.113.66/").exit_code == 28  # dropped
        shell = devbox.cmd.exec("echo $GREETING; pwd; echo oops >&2; exit 3")
        assert (shell.exit_code, shell.stdout(), shell.stderr()) == (3, "hi\n/home/user\n", "oops\n")
        # A live update through the SDK reaches the running container before the call returns.
        policy.update(allowed_hostnames=["github.com", "evil.example"])
        assert wget(devbox, "http://evil.example/x").stdout() == "evil.example /x\n"
        policy.update(allowed_hostnames=[])
        assert wget(devbox, "http://github.com/").exit_code != 0
    assert devbox.get_info().status == "shutdown"


def test_sdk_files_suspend_resume_and_snapshot(docker_server):
    server, _ = docker_server
    sdk = RunloopSDK(bearer_token="docker-files", base_url=server.url, max_retries=0)
    with sdk.devbox.create() as devbox:
        devbox.file.write(file_path="notes/a.txt", contents="written through the API\n")
        assert devbox.cmd.exec("cat ~/notes/a.txt").stdout() == "written through the API\n"
        devbox.cmd.exec("echo from-a-command > /tmp/made")
        assert devbox.file.read(file_path="/tmp/made") == "from-a-command\n"
        devbox.suspend()
        assert devbox.get_info().status == "suspended"
        devbox.resume()
        assert devbox.cmd.exec("cat /tmp/made").stdout() == "from-a-command\n"
        snapshot = devbox.snapshot_disk()
    restored = snapshot.create_devbox()
    with restored:
        assert restored.file.read(file_path="~/notes/a.txt") == "written through the API\n"
        assert restored.cmd.exec("cat /tmp/made").stdout() == "from-a-command\n"
    snapshot.delete()


def test_a_snapshot_deleted_while_a_devbox_runs_from_it_leaves_no_image(docker_server, docker_client):
    server, _ = docker_server
    sdk = RunloopSDK(bearer_token="docker-dangling", base_url=server.url, max_retries=0)
    with sdk.devbox.create() as devbox:
        snapshot = devbox.snapshot_disk()
    label = {"label": f"{INSTANCE_LABEL}={instance_id(server.data_dir)}"}
    first, second = snapshot.create_devbox(), snapshot.create_devbox()
    snapshot.delete()  # untagged; the containers still hold the image
    assert len(docker_client.api.images(filters={"dangling": True, **label})) == 1
    first.shutdown()  # the other devbox still runs from it: it stays
    assert second.cmd.exec("true").exit_code == 0
    assert len(docker_client.api.images(filters={"dangling": True, **label})) == 1
    second.shutdown()
    assert docker_client.api.images(filters=label) == []


def test_kill_9_then_restart_removes_orphan_containers(docker_server, docker_client):
    server, args = docker_server
    sdk = RunloopSDK(bearer_token="docker-restart", base_url=server.url, max_retries=0)
    devbox = sdk.devbox.create()
    devbox.cmd.exec("sleep 1000 > /dev/null 2>&1 &")
    assert len(_containers(docker_client, server.data_dir)) == 1
    server.stop(signal.SIGKILL)
    assert len(_containers(docker_client, server.data_dir)) == 1  # outlives the process (closed: no resolver)
    restarted = ServerProcess(server.data_dir, *args).start()
    try:
        assert _containers(docker_client, server.data_dir) == []
        prefix = f"{NS_PREFIX}{instance_id(server.data_dir)}-"
        assert sorted(namespaces.list_names(prefix)) == [prefix + "r", prefix + "w"]
        sdk = RunloopSDK(bearer_token="docker-restart", base_url=restarted.url, max_retries=0)
        info = sdk.api.devboxes.retrieve(devbox.id)
        assert info.status == "failure"
    finally:
        restarted.stop()


def test_image_option_selects_another_image_and_a_missing_one_is_refused(tmp_path, docker_client):
    from tests.docker.images import python_image

    image = python_image(docker_client)
    world = tmp_path / "world.toml"
    world.write_text(WORLD)
    args = ("--runtime", "docker", "--world", str(world), "--subnet", "10.151.0.0/16")
    with ServerProcess(tmp_path / "data", *args, "--image", image) as server:
        sdk = RunloopSDK(bearer_token="docker-image", base_url=server.url, max_retries=0)
        with sdk.devbox.create() as devbox:
            result = devbox.cmd.exec("/usr/bin/python3 -c 'import sys; print(sys.version_info[0])'")
            assert result.stdout() == "3\n"
    check_server_left_nothing(docker_client, tmp_path / "data")
    missing = ServerProcess(tmp_path / "data2", *args, "--image", "devbox-sim/never-built:nope")
    with pytest.raises(RuntimeError):
        missing.start(timeout=60)
    assert missing.proc.returncode == 2  # a setup error, said in one line
    assert [line for line in missing.log if "never pulled" in line] == [
        "devbox-sim: error: image 'devbox-sim/never-built:nope' is not in the Docker daemon"
        " (it is never pulled: docker load/build it first)"
    ]
    assert namespaces.list_names(f"{NS_PREFIX}{instance_id(tmp_path / 'data2')}-") == []  # nothing left
    assert docker_client.api.images(name="devbox-sim/never-built") == []


def test_auto_takes_docker_when_a_daemon_answers():
    require_docker()
    from simulator.runtime.factory import choose_runtime

    assert choose_runtime("auto") == "docker"
    assert choose_runtime("netns") == "netns"


def test_a_container_that_dies_on_its_own_fails_its_devbox(docker_server, docker_client):
    """Root in the container can kill its keep-alive process: the container exits, and the
    API must say so (failure, released) instead of showing it running."""
    import time

    server, _ = docker_server
    sdk = RunloopSDK(bearer_token="docker-dies", base_url=server.url, max_retries=0)
    devbox = sdk.devbox.create()
    # The keep-alive shell is the only child of pid 1, seccomp-exec --init (execs are not its children).
    devbox.cmd.exec_async("kill -9 $(cat /proc/1/task/1/children)")
    deadline = time.monotonic() + 20
    while (info := sdk.api.devboxes.retrieve(devbox.id)).status != "failure":
        assert time.monotonic() < deadline, f"still {info.status}"
        time.sleep(0.05)  # bounded poll: the daemon's die event arrives asynchronously
    assert "container exited" in (info.state_transitions[-1].failure_reason or "")
    deadline = time.monotonic() + 10
    while _containers(docker_client, server.data_dir):
        assert time.monotonic() < deadline, "the dead devbox's container was not removed"
        time.sleep(0.05)  # bounded poll: released on the events thread
