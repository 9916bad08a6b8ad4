"""Fixtures for the Docker runtime's own tests: a daemon (skip without one off CI, fail in CI),
and a data plane with an offline world and a DockerRuntime on the default (busybox) image.
Every container, namespace and nft table made here is removed, also on failure."""

from __future__ import annotations

import os
import secrets

import pytest

from tests.dataplane.conftest import WORLD, Devboxes


def adopt_tests(module, skip=()) -> dict:
    """The tests of another module that run against its ``server`` fixture (directly or via
    ``sdk``/``devbox``), to be run again in the calling module against a Docker-runtime
    ``server``. Tests that start their own server, and those in ``skip``, stay behind."""
    import inspect

    adopted = {}
    for name, test in vars(module).items():
        if not name.startswith("test_") or not callable(test) or name in skip:
            continue
        if {"server", "sdk", "devbox"} & set(inspect.signature(test).parameters):
            adopted[name] = test
    return adopted


def check_server_left_nothing(client, data_dir) -> None:
    """After a docker-runtime server stopped: no namespace and no container of its instance
    remain. Then its snapshot/blueprint images go too (``docker commit`` keeps the container's
    labels, so they carry the instance): tests leave no images behind."""
    from netns import namespaces
    from simulator.dataplane import NS_PREFIX, instance_id
    from simulator.runtime.docker_runtime import INSTANCE_LABEL

    instance = instance_id(data_dir)
    try:
        assert namespaces.list_names(f"{NS_PREFIX}{instance}-", placeholders=True) == [], "a stopped server left namespaces"
        assert client.api.containers(all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}) == [], \
            "a stopped server left containers"
    finally:
        remove_instance_images(client, instance)


def remove_instance_images(client, instance: str) -> None:
    import docker.errors

    from simulator.runtime.docker_runtime import INSTANCE_LABEL

    for image in client.api.images(all=True, quiet=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}):
        try:
            client.api.remove_image(image, force=True)
        except docker.errors.NotFound:
            pass  # went with its child


def require_docker() -> None:
    from tests.conftest import _privilege_problems

    problems = _privilege_problems()
    if not problems:
        from simulator.runtime.docker_runtime import docker_problem

        problem = docker_problem()
        problems = [problem] if problem else []
    if problems:
        if os.environ.get("CI"):
            pytest.fail("CI must run the docker runtime's tests: " + "; ".join(problems))
        pytest.skip("; ".join(problems))


@pytest.fixture(scope="module")
def docker_client():
    require_docker()
    from simulator.runtime.docker_runtime import docker_client as make_client

    client = make_client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def docker_plane(docker_client):
    """(data plane, DockerRuntime on the default image) for one test module."""
    from simulator.dataplane import DataPlane, DataPlaneConfig
    from simulator.runtime.docker_runtime import DockerRuntime
    from simulator.world import WorldConfig

    dataplane = DataPlane(
        DataPlaneConfig(instance=secrets.token_hex(3), world=WorldConfig.from_dict(WORLD), subnet="10.90.0.0/16")
    )
    dataplane.start()
    runtime = None
    try:
        runtime = DockerRuntime(dataplane)
        yield dataplane, runtime
    finally:
        if runtime is not None:
            runtime.close()
        else:
            dataplane.stop()
        remove_instance_images(docker_client, dataplane.config.instance)


class ShellDevboxes(Devboxes):
    """Devboxes on the busybox image: no python, so no probe.py is copied in."""

    def create(self, policy=None, account: str = "acct-a", **spec) -> str:
        from simulator.runtime.base import DevboxSpec

        devbox_id = f"dbx_d{os.getpid():x}{secrets.token_hex(3)}"
        self.runtime.provision(DevboxSpec(id=devbox_id, account=account, policy=policy, **spec))
        self.made.append(devbox_id)
        return devbox_id


@pytest.fixture
def boxes(docker_plane):
    made = ShellDevboxes(docker_plane[1])
    try:
        yield made
    finally:
        made.cleanup()
