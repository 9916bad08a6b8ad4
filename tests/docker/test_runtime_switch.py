"""A crashed run's devboxes are removed at the next start even when that start chooses the
other runtime (``auto`` can: dockerd up or not): no untrusted code outlives its simulator."""

from __future__ import annotations

import signal

import pytest
from runloop_api_client import RunloopSDK

from netns.sandbox import find_orphans
from simulator.dataplane import NS_PREFIX, instance_id
from simulator.runtime.docker_runtime import INSTANCE_LABEL, docker_client
from tests.runtime_servers import check_left_nothing, runtime_server
from tests.server import ServerProcess

pytestmark = pytest.mark.privileged

WORLD = 'resolver = "198.51.100.53"\n[hosts."github.com"]\naddress = "192.0.2.10"\n'


def _devbox_then_kill_9(server) -> str:
    sdk = RunloopSDK(bearer_token="switch", base_url=server.url, max_retries=0)
    view = sdk.api.post("/v1/devboxes/create_and_await_running", body={}, cast_to=object)
    assert view["status"] == "running", view
    server.stop(signal.SIGKILL)
    return view["id"]


def _containers(instance: str) -> list:
    client = docker_client()
    try:
        return client.api.containers(all=True, quiet=True, filters={"label": f"{INSTANCE_LABEL}={instance}"})
    finally:
        client.close()


@pytest.mark.parametrize("first, then", [("netns", "docker"), ("docker", "netns")])
def test_the_other_runtimes_leftovers_go_at_the_next_start(tmp_path, first, then):
    with runtime_server(tmp_path, first, WORLD, subnet_base=150) as (server, args):
        data = server.data_dir
        instance = instance_id(data)
        _devbox_then_kill_9(server)
        holders = find_orphans(f"{NS_PREFIX}{instance}-")
        if first == "netns":
            assert holders != []
            assert list((data / "devboxes").iterdir()) != []  # its home and /tmp
        else:
            assert len(_containers(instance)) == 1
        switched = [a if a != first else then for a in args]
        restarted = ServerProcess(data, *switched).start()
        try:
            assert find_orphans(f"{NS_PREFIX}{instance}-") == []
            assert _containers(instance) == []
            assert list((data / "devboxes").glob("*")) == []
        finally:
            restarted.stop()
            _remove_everything_of(instance)  # also when the assertions above failed
    check_left_nothing(then, data)


def _remove_everything_of(instance: str) -> None:
    from netns.sandbox import kill_orphans
    from simulator.runtime.docker_runtime import remove_instance_containers

    kill_orphans(f"{NS_PREFIX}{instance}-")
    client = docker_client()
    try:
        remove_instance_containers(client.api, instance)
    finally:
        client.close()
