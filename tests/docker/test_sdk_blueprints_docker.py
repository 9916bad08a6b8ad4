"""The SDK blueprint and snapshot suite (tests/dataplane/test_sdk_blueprints.py: build-time
policies enforced during builds, runtime policies inherited and overridden, snapshots carrying
files into devboxes under other policies, the async SDK) run again on the Docker runtime:
builds and snapshots are ``docker commit``s there. Its tests are taken over as they are, with a
``server`` on ``--runtime docker`` and the test image (curl)."""

from __future__ import annotations

import secrets

import pytest

from tests.dataplane import test_sdk_blueprints as blueprints
from tests.dataplane.test_sdk_blueprints import sdk  # noqa: F401 (fixture, resolved against our server)
from tests.docker.conftest import adopt_tests, check_server_left_nothing, require_docker
from tests.server import ServerProcess

pytestmark = pytest.mark.privileged
globals().update(adopt_tests(blueprints))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_docker()
    from simulator.runtime.docker_runtime import docker_client
    from tests.docker.images import python_image

    client = docker_client()
    tmp = tmp_path_factory.mktemp("blueprints-docker")
    data = tmp / "data"
    world = tmp / "world.toml"
    world.write_text(blueprints.WORLD)
    subnet = f"10.{secrets.randbelow(50) + 150}.0.0/16"
    proc = ServerProcess(data, "--runtime", "docker", "--image", python_image(client), "--world", str(world),
                         "--subnet", subnet).start()
    try:
        yield proc
    finally:
        proc.stop()
        try:
            check_server_left_nothing(client, data)
        finally:
            client.close()
