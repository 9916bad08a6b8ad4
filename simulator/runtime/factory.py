"""Choose and start the devbox runtime (and the data plane it runs on) from the settings."""

from __future__ import annotations

import logging
import os
import shutil
import sys

from simulator.config import Settings

log = logging.getLogger(__name__)


class RuntimeUnavailable(RuntimeError):
    pass


def netns_problems() -> list[str]:
    problems = []
    if sys.platform != "linux":
        problems.append("not Linux")
    elif os.geteuid() != 0:
        problems.append("not running as root")
    for tool in ("nsenter", "setpriv", "unshare"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} (util-linux) missing")
    if not os.path.isdir("/proc/sys/net/bridge"):
        problems.append("br_netfilter is not loaded (modprobe br_netfilter)")
    return problems


def make_runtime(settings: Settings):
    """The runtime for these settings, started; None for an API-only simulator."""
    choice = settings.runtime
    if choice == "none":
        return None
    problems = netns_problems()
    if problems:
        if choice == "auto":
            log.warning("no devbox runtime (%s): devbox endpoints answer 503", "; ".join(problems))
            return None
        raise RuntimeUnavailable("the netns runtime needs: " + "; ".join(problems))

    from simulator.dataplane import DataPlane, DataPlaneConfig, instance_id
    from simulator.runtime.netns_runtime import NetnsRuntime
    from simulator.world import WorldConfig

    world = WorldConfig.load(settings.world) if settings.world else None
    dataplane = DataPlane(
        DataPlaneConfig(
            instance=instance_id(settings.data_dir),
            subnet=settings.subnet,
            uplink=settings.effective_uplink,
            world=world,
            upstream_dns=settings.upstream_dns,
        )
    )
    dataplane.start()
    try:
        secrets = (settings.api_keys,) if settings.api_keys else ()
        return NetnsRuntime(dataplane, settings.data_dir, secret_paths=secrets)
    except BaseException:
        dataplane.stop()
        raise
