"""Choose and start the devbox runtime (and the data plane it runs on) from the settings.

``--runtime docker|netns|auto|none``: both real runtimes run on the same data plane (router
namespace, nftables, resolver), which needs root and br_netfilter; netns sandboxes also need
util-linux, docker devboxes a daemon that answers. ``auto`` takes docker when a daemon
answers, else netns, else none (API only, devbox endpoints answer 503).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

from simulator.config import Settings

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "docker", "netns", "none")


class RuntimeUnavailable(RuntimeError):
    pass


def dataplane_problems() -> list[str]:
    """What the data plane (shared by both runtimes) lacks here."""
    problems = []
    if sys.platform != "linux":
        problems.append("not Linux")
    elif os.geteuid() != 0:
        problems.append("not running as root")
    if not os.path.isdir("/proc/sys/net/bridge"):
        problems.append("br_netfilter is not loaded (modprobe br_netfilter)")
    return problems


def netns_problems() -> list[str]:
    problems = dataplane_problems()
    for tool in ("nsenter", "setpriv", "unshare"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} (util-linux) missing")
    if not problems:  # the docker runtime checks the helper more strictly (docker_problem)
        from netns.sandbox import SECCOMP_EXEC

        if not os.access(SECCOMP_EXEC, os.X_OK):
            problems.append(f"the seccomp helper {SECCOMP_EXEC} (scripts/bootstrap.sh builds it)")
    return problems


def docker_problems() -> list[str]:
    problems = dataplane_problems()
    if not problems:  # asking the daemon is pointless (and slow) when the data plane cannot run
        from simulator.runtime.docker_runtime import docker_problem

        problem = docker_problem()
        if problem:
            problems.append(problem)
    return problems


def choose_runtime(choice: str) -> str | None:
    """The runtime to start for ``choice``; None for API only. Raises RuntimeUnavailable when
    an explicitly chosen runtime cannot run here."""
    if choice not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {choice!r}; choose one of {', '.join(RUNTIMES)}")
    if choice == "none":
        return None
    if choice in ("docker", "netns"):
        problems = docker_problems() if choice == "docker" else netns_problems()
        if problems:
            raise RuntimeUnavailable(f"the {choice} runtime cannot run here: " + "; ".join(problems))
        return choice
    docker = docker_problems()
    if not docker:
        return "docker"
    netns = netns_problems()
    if not netns:
        log.info("runtime auto: netns (no docker: %s)", "; ".join(docker))
        return "netns"
    log.warning("no devbox runtime (%s): devbox endpoints answer 503", "; ".join(netns))
    return None


def make_runtime(settings: Settings):
    """The runtime for these settings, started; None for an API-only simulator."""
    chosen = choose_runtime(settings.runtime)
    if chosen is None:
        return None

    from simulator.dataplane import DataPlane, DataPlaneConfig, instance_id
    from simulator.world import WorldConfig

    world = WorldConfig.load(settings.world) if settings.world else None
    dataplane = DataPlane(
        DataPlaneConfig(
            instance=instance_id(settings.data_dir),
            subnet=settings.subnet,
            uplink=settings.effective_uplink,
            world=world,
            upstream_dns=settings.upstream_dns,
            private_networks=settings.private_networks,
        )
    )
    dataplane.start()
    try:
        _remove_leftovers_of_the_other_runtime(chosen, dataplane, settings.data_dir)
        if chosen == "docker":
            from simulator.runtime.docker_runtime import DockerRuntime

            runtime = DockerRuntime(dataplane, image=settings.image)
        else:
            from simulator.runtime.netns_runtime import NetnsRuntime

            secrets = (settings.api_keys,) if settings.api_keys else ()
            runtime = NetnsRuntime(dataplane, settings.data_dir, secret_paths=secrets)
        log.info("devbox runtime: %s", chosen)
        return runtime
    except BaseException:
        dataplane.stop()
        raise


def _remove_leftovers_of_the_other_runtime(chosen: str, dataplane, data_dir) -> None:
    """``auto`` may choose another runtime than a crashed earlier run of this data dir did
    (dockerd not up yet, say): that run's devboxes, still running untrusted code, must not
    outlive it. Each runtime removes its own leftovers when it starts; this removes the other's."""
    if chosen == "docker":
        from netns.sandbox import kill_orphans

        killed = kill_orphans(f"{dataplane.devbox_ns_prefix}-")
        if killed:
            log.warning("killed %d netns devbox process trees left by an earlier run", len(killed))
        from simulator.runtime.netns_runtime import remove_devbox_dirs

        remove_devbox_dirs(data_dir)
    elif not docker_problems():
        from simulator.runtime.docker_runtime import docker_client, remove_instance_containers

        client = docker_client(timeout=10.0)
        try:
            removed = remove_instance_containers(client.api, dataplane.config.instance)
        finally:
            client.close()
        if removed:
            log.warning("removed %d docker devbox containers left by an earlier run", removed)
