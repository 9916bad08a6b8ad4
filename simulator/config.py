"""Settings: command-line flags, with environment variables (DEVBOX_SIM_*) as defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8484
PRIVATE_NETWORK_MODES = ("open", "by-cidr")
LOG_LEVELS = ("debug", "info", "warning", "error")
RUNTIMES = ("auto", "docker", "netns", "none")
UPLINKS = ("host", "offline")


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("data")
    api_keys: Path | None = None
    max_policies_per_account: int = 100
    # Policy names may repeat in an account (the contract; SDK 3.0 calls them labels); True
    # refuses a duplicate on create or rename with 400 duplicate_name, as SDK 1.x's API did.
    unique_policy_names: bool = False
    log_level: str = "info"
    # Devbox runtime. The library default is "none" (API only); `devbox-sim serve` defaults
    # to "auto": docker when a daemon answers, else netns when running as root on Linux, else none.
    runtime: str = "none"
    image: str | None = None  # docker runtime: the devboxes' image; None = the built-in busybox one
    uplink: str | None = None  # "host" or "offline"; default: offline with --world, else host
    world: Path | None = None
    subnet: str = "10.88.0.0/16"
    upstream_dns: tuple[tuple[str, int], ...] = ()
    # Private networks (the host's LAN, VPNs, Docker's bridges): "open" (reachable like the
    # internet, as #3's "allow_all: all egress" says) or "by-cidr" (only an allowed CIDR).
    private_networks: str = "open"

    @property
    def effective_uplink(self) -> str:
        if self.uplink:
            return self.uplink
        return "offline" if self.world else "host"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Defaults from DEVBOX_SIM_* variables, checked as the flags are (argparse does not
        check a default against its choices): a bad one is a ValueError naming it."""
        env = os.environ if env is None else env
        settings = cls()
        settings.host = env.get("DEVBOX_SIM_HOST", settings.host)
        settings.port = _int(env, "DEVBOX_SIM_PORT", settings.port, 0, 65535)
        settings.data_dir = Path(env.get("DEVBOX_SIM_DATA_DIR", settings.data_dir))
        if env.get("DEVBOX_SIM_API_KEYS"):
            settings.api_keys = Path(env["DEVBOX_SIM_API_KEYS"])
        settings.max_policies_per_account = _int(env, "DEVBOX_SIM_MAX_POLICIES", settings.max_policies_per_account, 0, None)
        settings.unique_policy_names = _flag(env, "DEVBOX_SIM_UNIQUE_POLICY_NAMES", settings.unique_policy_names)
        settings.log_level = _choice(env, "DEVBOX_SIM_LOG_LEVEL", settings.log_level, LOG_LEVELS).lower()
        settings.runtime = _choice(env, "DEVBOX_SIM_RUNTIME", "auto", RUNTIMES)
        settings.image = env.get("DEVBOX_SIM_IMAGE") or None
        settings.uplink = _choice(env, "DEVBOX_SIM_UPLINK", None, UPLINKS)
        if env.get("DEVBOX_SIM_WORLD"):
            settings.world = Path(env["DEVBOX_SIM_WORLD"])
        settings.subnet = env.get("DEVBOX_SIM_SUBNET", settings.subnet)
        if env.get("DEVBOX_SIM_UPSTREAM_DNS"):
            settings.upstream_dns = parse_servers(env["DEVBOX_SIM_UPSTREAM_DNS"])
        settings.private_networks = _choice(env, "DEVBOX_SIM_PRIVATE_NETWORKS", settings.private_networks, PRIVATE_NETWORK_MODES)
        return settings

    @property
    def database_path(self) -> Path:
        return self.data_dir / "devbox-sim.sqlite3"


def _choice(env, name: str, default, choices) -> str:
    value = env.get(name, "").strip()
    if not value:
        return default
    if value.lower() not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value.lower()


def _int(env, name: str, default: int, low: int, high: int | None) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be from {low}" + (f" to {high}" if high is not None else " up") + f", not {number}")
    return number


def _flag(env, name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def parse_servers(text: str) -> tuple[tuple[str, int], ...]:
    """``"192.0.2.53,198.51.100.1:5353"`` -> ((ip, port), ...)."""
    servers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = item.partition(":")
        servers.append((host, int(port or 53)))
    return tuple(servers)
