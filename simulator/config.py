"""Settings: command-line flags, with environment variables (DEVBOX_SIM_*) as defaults."""

from __future__ import annotations

import ipaddress
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
        if env.get("DEVBOX_SIM_SUBNET", "").strip():
            settings.subnet = _named(parse_subnet, env, "DEVBOX_SIM_SUBNET")
        if env.get("DEVBOX_SIM_UPSTREAM_DNS", "").strip():
            settings.upstream_dns = _named(parse_servers, env, "DEVBOX_SIM_UPSTREAM_DNS")
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


def _named(parse, env, name: str):
    try:
        return parse(env[name].strip())
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def parse_servers(text: str) -> tuple[tuple[str, int], ...]:
    """``"192.0.2.53,198.51.100.1:5353,[2001:db8::53]:53,2001:db8::1"`` -> ((ip, port), ...).

    A server is an IPv4 address (a name would need a resolver to find the resolver; the
    router namespace the resolver asks from speaks IPv4 only, and its loopback is its own),
    with an optional port. An IPv6 address is refused by name, with a port or without
    (``[IP]:PORT``)."""
    servers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"{item!r} is not IP[:PORT] (an IPv6 address with a port is [IP]:PORT)")
            port_text = rest[1:] if rest else ""
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:  # an IPv4 address, or an IPv6 one without a port
            host, port_text = item, ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (upstream DNS servers are IP[:PORT],...)") from None
        if address.version != 4:
            raise ValueError(f"{host}: the resolver asks from a namespace that speaks IPv4 only; give an IPv4 server")
        if address.is_loopback or address.is_unspecified or address.is_multicast:
            raise ValueError(f"{host}: not reachable from the router namespace (its loopback is its own); "
                             "give the address of a server on the network")
        port = 53
        if port_text or item.endswith(":"):
            if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"{item!r}: the port must be a number from 1 to 65535")
            port = int(port_text)
        servers.append((str(address), port))
    if not servers:
        raise ValueError("no server given (IP[:PORT],...)")
    return tuple(servers)


# Where devboxes must not be numbered: addresses with a meaning of their own on every host,
# and the documentation ranges the offline world puts its hosts on.
_RESERVED_FOR_SUBNET = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
    # The uplinks' link nets (netns.links.HOST_LINK_NETS and DEFAULT_LINK_NET, the offline
    # world's; not imported here: that module loads pyroute2).
    "100.127.0.0/17", "100.127.255.0/30",
))


def parse_subnet(text: str) -> str:
    """The devbox subnet: an IPv4 network from /8 to /24, written as its network address
    (``10.88.0.0/16``), clear of loopback, link-local, multicast and the world's ranges."""
    try:
        network = ipaddress.IPv4Network(text.strip())
    except ipaddress.NetmaskValueError:
        raise ValueError(f"{text!r} has a bad prefix length (e.g. 10.88.0.0/16)") from None
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.IPv4Network(text.strip(), strict=False)
            raise ValueError(f"{text!r} has host bits set; did you mean {fixed}?") from None
        raise ValueError(f"{text!r} is not an IPv4 network (e.g. 10.88.0.0/16)") from None
    if "/" not in text:
        raise ValueError(f"{text!r} needs a prefix length (e.g. 10.88.0.0/16)")
    if not 8 <= network.prefixlen <= 24:
        raise ValueError(f"{network} is a /{network.prefixlen}; use a /8 to a /24")
    for reserved in _RESERVED_FOR_SUBNET:
        if network.overlaps(reserved):
            raise ValueError(f"{network} overlaps {reserved}, which devboxes cannot be numbered in")
    return str(network)
