"""The decision-log tests of tests/dataplane/test_sdk_netns.py (network events, allowed
connections, the server log's summary, ``devbox-sim events --follow``) run again on the Docker
runtime: the resolver and NFLOG attribute a container's DNS decisions and dropped
connections exactly as a netns devbox's."""

from __future__ import annotations

import secrets

import pytest

from tests.dataplane import test_sdk_netns as netns_suite
from tests.docker.conftest import check_server_left_nothing
from tests.server import ServerProcess

pytestmark = pytest.mark.privileged
test_network_events_show_what_a_devbox_tried = netns_suite.test_network_events_show_what_a_devbox_tried
test_events_cli_table_and_follow = netns_suite.test_events_cli_table_and_follow


@pytest.fixture
def netns_server(tmp_path, docker_client):
    """The fixture those tests ask for by name; here a server on ``--runtime docker`` with the
    test image (curl)."""
    from tests.docker.images import python_image

    world = tmp_path / "world.toml"
    world.write_text(netns_suite.WORLD)
    data = tmp_path / "data"
    args = ("--runtime", "docker", "--image", python_image(docker_client), "--world", str(world),
            "--subnet", f"10.{secrets.randbelow(50) + 200}.0.0/16")
    server = ServerProcess(data, *args).start()
    try:
        yield server, args
    finally:
        server.stop()
        check_server_left_nothing(docker_client, data)
