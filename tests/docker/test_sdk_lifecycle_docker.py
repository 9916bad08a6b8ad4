"""The SDK lifecycle suite (tests/dataplane/test_sdk_lifecycle.py: output callbacks, long
output, stdin, suspend/resume, files with every path form, logs, keep-alive, async SDK) run
again on the Docker runtime, so none of that is tested on netns only. Its tests are taken
over as they are (new ones too) with a ``server`` on ``--runtime docker`` and the test image
(python3, curl, GNU date); only the one whose expectation differs by design is replaced.
"""

from __future__ import annotations

import pytest
from runloop_api_client import BadRequestError, NotFoundError

from tests.dataplane import test_sdk_lifecycle as lifecycle
from tests.dataplane.test_sdk_lifecycle import devbox, sdk  # noqa: F401 (fixtures, resolved against our server)
from tests.docker.conftest import adopt_tests
from tests.runtime_servers import docker_test_image, runtime_server

pytestmark = pytest.mark.privileged
# netns devboxes see only their home and /tmp; a container's whole file system is its own.
REPLACED = {"test_file_errors_reach_the_sdk_as_4xx"}
globals().update(adopt_tests(lifecycle, skip=REPLACED))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle-docker")
    with runtime_server(tmp, "docker", lifecycle.WORLD, subnet_base=100, image=docker_test_image()) as (proc, _):
        yield proc


def test_file_errors_reach_the_sdk_as_4xx_on_docker(devbox):  # noqa: F811
    with pytest.raises(NotFoundError):
        devbox.file.read(file_path="missing.txt")
    # The container's own /etc/passwd (the test image's), never the host's.
    assert devbox.file.read(file_path="/etc/passwd").startswith("root:x:0:0:root:/root:/bin/sh\nuser:x:1000")
    with pytest.raises(BadRequestError):
        devbox.file.read(file_path="/tmp")  # a directory
    with pytest.raises(BadRequestError):
        devbox.file.download(path="~")
    with pytest.raises(BadRequestError):
        devbox.file.write(file_path="/tmp", contents="over a directory")
    devbox.file.write(file_path="plain.txt", contents="x")
    with pytest.raises(BadRequestError):
        devbox.file.write(file_path="plain.txt/below", contents="a parent is a file")


def test_network_through_suspend_and_resume_on_docker(server, sdk):  # noqa: F811
    policy = sdk.network_policy.create(name=f"suspend-{lifecycle.token()}", allowed_hostnames=["github.com"])
    with sdk.devbox.create(launch_parameters={"network_policy_id": policy.id}) as box:
        assert box.cmd.exec("curl -sS --max-time 2 http://github.com/a").stdout() == "github.com /a\n"
        box.suspend()
        box.resume()
        assert box.cmd.exec("curl -sS --max-time 2 http://github.com/b").stdout() == "github.com /b\n"
        assert box.cmd.exec("curl -sS --max-time 2 http://203.0.113.66/").exit_code == 28  # still dropped
