"""The tunnel suite (tests/dataplane/test_sdk_tunnels.py) again on the Docker runtime: the
proxy reaches a container's port from the router namespace as it reaches a netns devbox's."""

from __future__ import annotations

import pytest

from tests.dataplane import test_sdk_lifecycle as lifecycle
from tests.dataplane import test_sdk_tunnels as tunnels
from tests.dataplane.test_sdk_lifecycle import devbox, sdk  # noqa: F401 (fixtures, resolved against our server)
from tests.docker.conftest import adopt_tests
from tests.runtime_servers import docker_test_image, runtime_server

pytestmark = pytest.mark.privileged
globals().update(adopt_tests(tunnels))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tunnels-docker")
    with runtime_server(tmp, "docker", lifecycle.WORLD, subnet_base=100, image=docker_test_image()) as (proc, _):
        yield proc
