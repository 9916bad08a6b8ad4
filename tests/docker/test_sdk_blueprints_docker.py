"""The SDK blueprint and snapshot suite (tests/dataplane/test_sdk_blueprints.py: build-time
policies enforced during builds, runtime policies inherited and overridden, snapshots carrying
files into devboxes under other policies, the async SDK) run again on the Docker runtime:
builds and snapshots are ``docker commit``s there. Its tests are taken over as they are, with a
``server`` on ``--runtime docker`` and the test image (curl)."""

from __future__ import annotations

import pytest

from tests.dataplane import test_sdk_blueprints as blueprints
from tests.dataplane.test_sdk_blueprints import sdk  # noqa: F401 (fixture, resolved against our server)
from tests.docker.conftest import adopt_tests
from tests.runtime_servers import docker_test_image, runtime_server

pytestmark = pytest.mark.privileged
globals().update(adopt_tests(blueprints))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blueprints-docker")
    with runtime_server(tmp, "docker", blueprints.WORLD, subnet_base=150, image=docker_test_image()) as (proc, _):
        yield proc
