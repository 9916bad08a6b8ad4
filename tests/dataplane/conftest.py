"""A real data plane for tests: router, offline world and devboxes, all uniquely named and
always removed. Packets go only to namespaces these fixtures create (documentation ranges in
the world, 10.x on the bridge).

``plane`` is parametrised over both runtimes, so every real-traffic test runs on netns
devboxes and on Docker containers (a test image with python3 for probe.py, built offline).
Without a Docker daemon the docker half skips, except in CI, where it fails."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from simulator.policy_model import AllowedCidr, Egress, NetworkPolicy, PortRule

PROBE = (Path(__file__).parent / "probe.py").read_text()
WORLD = {
    "resolver": "198.51.100.53",
    "ttl": 30,
    "hosts": {
        "github.com": {"address": "192.0.2.10", "aliases": ["www.github.com", "_svc._tcp.github.com"], "http": [80], "tcp_echo": [443]},
        "registry.npmjs.org": {"address": "192.0.2.20", "http": [80], "tcp_echo": [443]},
        "blocked.example": {"address": "203.0.113.30", "http": [80], "tcp_echo": [443], "udp_echo": [7]},
        "target.elsewhere.net": {"address": "198.51.100.40", "aliases": ["alias.allowed.org"], "tcp_echo": [443]},
    },
}
GITHUB, NPM, BLOCKED, CNAME_TARGET, WORLD_DNS = "192.0.2.10", "192.0.2.20", "203.0.113.30", "198.51.100.40", "198.51.100.53"
_ids = itertools.count()


def make_policy(account: str = "acct-a", **egress) -> NetworkPolicy:
    cidrs = tuple(
        AllowedCidr(c["cidr"], None if c.get("ports") is None else tuple(PortRule(**p) for p in c["ports"]))
        for c in egress.pop("allowed_cidrs", ())
    )
    hostnames = tuple(egress.pop("allowed_hostnames", ()))
    return NetworkPolicy(
        id=f"npol_test{next(_ids)}", account=account, name="t", description=None,
        egress=Egress(allowed_hostnames=hostnames, allowed_cidrs=cidrs, **egress),
        create_time_ms=0, update_time_ms=0,
    )


class Devboxes:
    """Creates devboxes through the real runtime (netns or docker) and removes them at the end."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.made: list[str] = []

    def netns(self, devbox_id: str):
        """The devbox's network namespace as a ``netns.namespaces`` target: a name (netns) or
        the container's init pid (docker)."""
        if self.runtime.name == "docker":
            return self.runtime.container_pid(devbox_id)
        return self.runtime.dataplane.devbox_netns(self.runtime.dataplane.attached(devbox_id).address)

    def nsenter(self, devbox_id: str) -> list[str]:
        """A command prefix that runs a host tool (ip, sysctl) in the devbox's network namespace."""
        target = self.netns(devbox_id)
        path = f"/proc/{target}/ns/net" if isinstance(target, int) else f"/run/netns/{target}"
        return ["nsenter", f"--net={path}"]

    def create(self, policy: NetworkPolicy | None, account: str = "acct-a") -> str:
        from simulator.runtime.base import DevboxSpec

        devbox_id = f"dbx_t{os.getpid():x}{next(_ids)}"
        self.runtime.provision(DevboxSpec(id=devbox_id, account=account, policy=policy))
        self.made.append(devbox_id)
        self.runtime.write_file(devbox_id, "probe.py", PROBE.encode())
        return devbox_id

    def start(self, devbox_id: str, *argv: str) -> subprocess.Popen:
        return self.runtime.exec(devbox_id, "/usr/bin/python3 probe.py " + " ".join(argv))

    def run(self, devbox_id: str, *argv: str, timeout: float = 20) -> str:
        proc = self.start(devbox_id, *argv)
        out, err = proc.communicate(timeout=timeout)
        lines = out.decode().strip().splitlines()
        assert lines, f"probe printed nothing; stderr: {err.decode()}"
        return lines[-1]

    def sh(self, devbox_id: str, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        proc = self.runtime.exec(devbox_id, command)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(command, proc.returncode, out.decode(), err.decode())

    def cleanup(self) -> None:
        for devbox_id in self.made:
            self.runtime.shutdown(devbox_id)


@contextlib.contextmanager
def held_connections(devboxes: Devboxes, devbox_id: str, host: str, port: int, count: int):
    """``count`` TCP connections the devbox holds open (probe.py ``hold``, each answered once),
    yielded as their processes; killed at the end. Closing a process's stdin ends it cleanly."""
    procs: list = []
    try:
        for _ in range(count):
            procs.append(devboxes.start(devbox_id, "hold", host, str(port)))
            assert procs[-1].stdout.readline().decode().strip() == "OK first"
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


def _docker_image() -> str:
    """The python test image (built once per machine); skip without a daemon, fail in CI."""
    from simulator.runtime.docker_runtime import docker_client, docker_problem

    problem = docker_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the docker runtime's tests: {problem}")
        pytest.skip(problem)
    from tests.docker.images import python_image

    client = docker_client()
    try:
        return python_image(client)
    finally:
        client.close()


@pytest.fixture(scope="module", params=["netns", "docker"])
def plane(request, tmp_path_factory):
    """One data plane per test module and runtime (starting one costs ~100 ms; devboxes are
    per test)."""
    from tests.conftest import _privilege_problems

    problems = _privilege_problems()
    if problems:
        # A module-scoped fixture runs before the per-test privileged marker check: fail here in CI.
        if os.environ.get("CI"):
            pytest.fail("CI must run the data-plane tests: " + "; ".join(problems))
        pytest.skip("; ".join(problems))
    image = _docker_image() if request.param == "docker" else None
    from simulator.dataplane import DataPlane, DataPlaneConfig
    from simulator.world import WorldConfig

    data_dir = tmp_path_factory.mktemp("dataplane")
    # A module may set DataPlaneConfig fields (PLANE_OPTIONS), e.g. its own world.
    options = {"world": WorldConfig.from_dict(WORLD), **getattr(request.module, "PLANE_OPTIONS", {})}
    dataplane = DataPlane(DataPlaneConfig(instance=secrets.token_hex(3), subnet="10.89.0.0/16", **options))
    dataplane.start()
    runtime = None
    try:
        if request.param == "docker":
            from simulator.runtime.docker_runtime import DockerRuntime

            runtime = DockerRuntime(dataplane, image=image)
        else:
            from simulator.runtime.netns_runtime import NetnsRuntime

            runtime = NetnsRuntime(dataplane, data_dir)
        yield dataplane, runtime
    finally:
        if runtime is not None:
            runtime.close()  # also stops the data plane
        else:
            dataplane.stop()


@pytest.fixture
def devboxes(plane):
    made = Devboxes(plane[1])
    try:
        yield made
    finally:
        made.cleanup()
