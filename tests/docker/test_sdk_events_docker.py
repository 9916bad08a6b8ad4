"""The decision-log tests of tests/dataplane/test_sdk_netns.py (network events, allowed
connections, the server log's summary, ``devbox-sim events --follow``) run again on the Docker
runtime: the resolver and NFLOG attribute a container's DNS decisions and dropped
connections exactly as a netns devbox's."""

from __future__ import annotations

import pytest

from tests.dataplane import test_sdk_netns as netns_suite
from tests.runtime_servers import docker_test_image, runtime_server

pytestmark = pytest.mark.privileged
test_network_events_show_what_a_devbox_tried = netns_suite.test_network_events_show_what_a_devbox_tried
test_events_cli_table_and_follow = netns_suite.test_events_cli_table_and_follow


@pytest.fixture
def netns_server(tmp_path):
    """The fixture those tests ask for by name; here a server on ``--runtime docker`` with the
    test image (curl)."""
    with runtime_server(tmp_path, "docker", netns_suite.WORLD, subnet_base=200, image=docker_test_image()) as served:
        yield served
