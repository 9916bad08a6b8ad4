"""Real server processes for the SDK suites: on a real runtime (``netns`` or ``docker``) with an
offline world, or on the subprocess test double; each checked, once stopped, to have left
nothing behind (no namespace of its instance; on docker no container, and its images removed).

Without root (or, for docker, a daemon) they skip on a laptop and fail in CI, also when a
module-scoped fixture asks (those run before the per-test ``privileged`` marker check).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.server import ServerProcess

REPO = Path(__file__).resolve().parents[1]
TEST_RUNTIME = "tests.api.local_runtime:make_runtime"


def local_runtime_env() -> dict[str, str]:
    """The environment of a server whose devboxes run on the test double (a test hook)."""
    return {
        "DEVBOX_SIM_TEST_RUNTIME": TEST_RUNTIME,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def require_runtime(runtime: str) -> None:
    if runtime == "docker":
        from tests.docker.conftest import require_docker

        require_docker()
        return
    from tests.conftest import _privilege_problems

    problems = _privilege_problems()
    if problems:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the {runtime} runtime's tests: " + "; ".join(problems))
        pytest.skip("; ".join(problems))


@contextmanager
def runtime_server(
    tmp: Path, runtime: str, world: str, *, subnet_base: int, image: str | None = None
) -> Iterator[tuple[ServerProcess, tuple[str, ...]]]:
    """``devbox-sim serve --runtime RUNTIME`` on ``tmp/data`` with the offline ``world`` (TOML
    text) and a /16 from 10.<subnet_base>-<subnet_base + 49>; yields (server, the arguments a
    restart on the same data dir needs)."""
    require_runtime(runtime)
    world_file = tmp / "world.toml"
    world_file.write_text(world)
    data = tmp / "data"
    subnet = f"10.{secrets.randbelow(50) + subnet_base}.0.0/16"
    args = ("--runtime", runtime, *(("--image", image) if image else ()), "--world", str(world_file), "--subnet", subnet)
    server = ServerProcess(data, *args).start()
    server.runtime_name = runtime
    try:
        yield server, args
    finally:
        server.stop()
        check_left_nothing(runtime, data)


def check_left_nothing(runtime: str, data: Path) -> None:
    if runtime == "docker":
        from simulator.runtime.docker_runtime import docker_client
        from tests.docker.conftest import check_server_left_nothing

        client = docker_client()
        try:
            check_server_left_nothing(client, data)
        finally:
            client.close()
        return
    from netns import namespaces
    from simulator.dataplane import NS_PREFIX, instance_id

    prefix = f"{NS_PREFIX}{instance_id(data)}-"
    leftovers = namespaces.list_names(prefix, placeholders=True)
    if leftovers:  # (a failed test may have killed the server) removed as its next start would
        from netns.sandbox import kill_orphans
        from simulator.dataplane import DataPlane, DataPlaneConfig

        kill_orphans(prefix)
        DataPlane(DataPlaneConfig(instance=instance_id(data))).remove_orphans()
    assert leftovers == [], f"a stopped server left namespaces: {leftovers}"


def docker_test_image() -> str:
    """The docker test image (python3, curl, GNU date), built once per machine; skips or fails
    (CI) without a daemon."""
    require_runtime("docker")
    from simulator.runtime.docker_runtime import docker_client
    from tests.docker.images import python_image

    client = docker_client()
    try:
        return python_image(client)
    finally:
        client.close()
