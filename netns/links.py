"""Link plumbing of the simulated data plane (pyroute2, in-process).

Topology::

    devbox ns (named, or a process's ns by pid)      router ns (owned by the simulator)
      eth0 10.88.0.5/16, MAC set, default via gw  <-veth->  <port_ifname> -- br0 10.88.0.1/16
                                                                             |
                                                             uplink0 (veth) --+-- host  (uplink_host)
                                                                               `- world (uplink_offline)

All netlink work runs in the netlink worker thread of ``netns.namespaces`` (see there why), with
one cached ``IPRoute`` per namespace. ``attach()`` is a handful of netlink round trips: one
``RTM_NEWLINK`` creates the veth with its peer already named ``eth0``, carrying the MAC and
placed directly in the devbox namespace (``IFLA_NET_NS_FD`` in the peer info), so there is no
temporary name and no rename.

Interface names: callers pass unique router-side port names and never reuse a name right after
deleting it (tearing down a veth is asynchronous in the kernel's eyes of other namespaces).

Host mode and Docker
    ``uplink_host()`` connects the router to the host with a veth, NATs the router's traffic
    out of the host (one nftables table per uplink, ``devbox_sim_uplink_<host_ifname>``) and drops
    everything arriving from the uplink that is addressed to the host itself (input hook), so
    devboxes cannot reach host services. When Docker is installed, iptables' ``FORWARD`` chain
    has policy DROP and an accept in our nftables table cannot override a drop in another table;
    Docker jumps to the ``DOCKER-USER`` chain first for exactly this purpose, so if (and only if)
    that chain exists we insert two ACCEPT rules for the uplink interface there via the iptables
    CLI, and remove them on teardown. No iptables binary, or no DOCKER-USER chain: nothing to do.
    Any other firewall that drops forwarded traffic (firewalld, a hand-made FORWARD DROP) is
    reported in ``Uplink.warnings`` but not changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netns import namespaces, sysctl

log = logging.getLogger(__name__)

UPLINK_IFNAME = "uplink0"
HOST_UPLINK_PREFIX = "dbxs"  # the simulator's host-side uplink interfaces: dbxs<instance>
DEVBOX_IFNAME = "eth0"
HOST_TABLE_PREFIX = "devbox_sim_uplink_"
DEFAULT_LINK_NET = "100.127.255.0/30"
# Host uplinks: one /30 per instance in here (two simulators on one host must not share one).
HOST_LINK_NETS = "100.127.0.0/17"

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_ENOENT = 2
_ENODEV = 19
_EEXIST = 17


class LinkError(RuntimeError):
    pass


class BrNetfilterMissing(LinkError):
    pass


@dataclass(frozen=True)
class Port:
    ifname: str
    index: int
    mac: str
    up: bool


@dataclass(frozen=True)
class Attachment:
    port_ifname: str
    ip: str
    mac: str
    prefix: int
    gateway: str
    elapsed_ms: float


@dataclass(frozen=True)
class Uplink:
    mode: str  # "offline" | "host"
    router_ifname: str
    router_address: str
    peer_ifname: str  # world-side or host-side interface
    peer_address: str
    prefixlen: int
    peer_ns: str | None  # world namespace name; None = host
    nft_table: str | None = None
    iptables_rules: tuple[tuple[str, ...], ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- helpers


def check_ifname(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"invalid interface name {name!r} (1-15 chars of [A-Za-z0-9_.-])")
    return name


def _check_mac(mac: str) -> str:
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise ValueError(f"invalid MAC address {mac!r}")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"multicast MAC address {mac!r} cannot be an interface address")
    return mac.lower()


def _nl_errno(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else None


def _link_index(ipr, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _link_up(ipr, ifname: str) -> int:
    idx = _link_index(ipr, ifname)
    if idx is None:
        raise LinkError(f"interface {ifname} not found")
    ipr.link("set", index=idx, state="up")
    return idx


def _has_addr(ipr, index: int, address: str, prefixlen: int) -> bool:
    for a in ipr.get_addr(index=index, family=2):
        if a.get_attr("IFA_ADDRESS") == address and a["prefixlen"] == prefixlen:
            return True
    return False


def _ensure_addr(ipr, index: int, address: str, prefixlen: int) -> None:
    if not _has_addr(ipr, index, address, prefixlen):
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)


def _link_pair(link_net: str) -> tuple[str, str, int]:
    """(peer address, router address, prefixlen) of a point-to-point link net."""
    net = ipaddress.ip_network(link_net, strict=True)
    if net.version != 4 or net.prefixlen > 30:
        raise ValueError(f"link net must be an IPv4 network of /30 or larger: {link_net}")
    hosts = net.hosts()
    peer = str(next(hosts))
    router = str(next(hosts))
    return peer, router, net.prefixlen


def gateway_mac(gateway: str) -> str:
    """Stable locally administered MAC for the bridge, derived from the gateway address.

    A bridge without an explicit address takes the lowest MAC of its ports, so the gateway MAC
    would change as devboxes come and go and devbox ARP caches would go stale.
    """
    b = ipaddress.IPv4Address(gateway).packed
    return "02:00:" + ":".join(f"{x:02x}" for x in b)


def host_link_net(instance: str) -> str:
    """The host uplink's /30 for a simulator instance: spread over HOST_LINK_NETS by a hash of
    the instance id, so simulators side by side get different ones."""
    pool = ipaddress.ip_network(HOST_LINK_NETS)
    index = int(hashlib.sha256(instance.encode()).hexdigest()[:8], 16) % (pool.num_addresses // 4)
    return str(ipaddress.ip_network((int(pool.network_address) + 4 * index, 30)))


def _host_conntrack_cap() -> int:
    """New connections the uplink may hold in the host's connection tracking: half its size,
    so devboxes together can never take the host's own (ssh, Docker) away."""
    try:
        size = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    except (OSError, ValueError):
        size = 262144
    return max(1024, size // 2)


def host_addresses() -> list[str]:
    """The IPv4 addresses of the (calling thread's) host namespace, loopback aside."""
    def read() -> list[str]:
        return [a.get_attr("IFA_ADDRESS") for a in namespaces.ipr(None).get_addr(family=socket.AF_INET)]

    return sorted({a for a in namespaces.netlink_call(read) if a and not ipaddress.ip_address(a).is_loopback})


def host_table_name(host_ifname: str) -> str:
    check_ifname(host_ifname)
    enc = "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in host_ifname)
    return HOST_TABLE_PREFIX + enc


def _run(cmd: list[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:  # noqa: A002
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise LinkError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def _nft_bin() -> str:
    nft = shutil.which("nft")
    if nft is None:
        raise LinkError("the `nft` CLI (nftables) is required for the host uplink")
    return nft


# ----------------------------------------------------------------------------- raw rtnetlink
#
# The hot path (attach/detach, once per devbox) speaks rtnetlink directly over a raw
# NETLINK_ROUTE socket created inside the namespace. Measured with pyroute2 0.9.7 on this kernel:
# every pyroute2 request costs ~0.8 ms (asyncio round + message marshalling, ~1 ms per message
# even just to encode), so an attach made of 7 pyroute2 requests took ~7 ms; with these
# hand-packed messages it takes ~2 ms, most of it the kernel creating the veth. The messages
# below are the stable rtnetlink ABI (linux/rtnetlink.h, linux/if_link.h, linux/veth.h).

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR replies
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_PROTINFO, IFLA_BRPORT_ISOLATED = 12, 33
NLA_F_NESTED = 0x8000
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


class NetlinkError(LinkError):
    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        text = os.strerror(code) + (f": {message}" if message else "")
        super().__init__(code, text)

    def __str__(self) -> str:
        return f"[Errno {self.args[0]}] {self.args[1]}"


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nla_str(kind: int, value: str) -> bytes:
    return _nla(kind, value.encode() + b"\0")


def _nla_u32(kind: int, value: int) -> bytes:
    return _nla(kind, struct.pack("=I", value))


def _msg_link_set_up(index: int) -> tuple[int, int, bytes]:
    return RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP)


def _msg_bridge_port_isolated(index: int) -> tuple[int, int, bytes]:
    """``bridge link set dev INDEX isolated on``: the bridge forwards nothing between two
    isolated ports, only between a port and the bridge itself (the router)."""
    body = _IFINFOMSG.pack(socket.AF_BRIDGE, 0, index, 0, 0)
    body += _nla(IFLA_PROTINFO | NLA_F_NESTED, _nla(IFLA_BRPORT_ISOLATED, b"\x01"))
    return RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, body


def _msg_addr_add(index: int, ip: str, prefix: int) -> tuple[int, int, bytes]:
    a = socket.inet_aton(ip)
    body = _IFADDRMSG.pack(socket.AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, index)
    body += _nla(IFA_LOCAL, a) + _nla(IFA_ADDRESS, a)
    return RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body


def _msg_default_route(gateway: str, oif: int) -> tuple[int, int, bytes]:
    body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += _nla(RTA_GATEWAY, socket.inet_aton(gateway)) + _nla_u32(RTA_OIF, oif)
    return RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body


class _Rtnl:
    """A raw NETLINK_ROUTE socket living in one namespace; usable from any thread (one at a time)."""

    def __init__(self, target: namespaces.Target) -> None:
        self.sock = namespaces.socket_in(target, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0

    def __enter__(self) -> "_Rtnl":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def batch(self, msgs: list[tuple[int, int, bytes]]) -> list[list[tuple[int, bytes]]]:
        """Send all messages in one datagram; return each one's replies; raise the first error.

        Every message carries NLM_F_ACK, so each gets exactly one NLMSG_ERROR (0 = ack) after
        its replies. The kernel processes all messages even if one fails.
        """
        buf = bytearray()
        seqs = []
        for mtype, flags, body in msgs:
            self.seq += 1
            seqs.append(self.seq)
            buf += _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, flags | NLM_F_ACK, self.seq, 0) + body
        self.sock.send(bytes(buf))
        replies: dict[int, list[tuple[int, bytes]]] = {s: [] for s in seqs}
        errors: dict[int, NetlinkError] = {}
        pending = set(seqs)
        while pending:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, mtype, mflags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    break
                payload = data[off + _NLMSGHDR.size : off + length]
                off += (length + 3) & ~3
                if seq not in replies:
                    continue
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload, 0)
                    if code != 0:
                        errors[seq] = NetlinkError(-code, self._ext_ack_msg(payload, mflags))
                    pending.discard(seq)
                elif mtype != NLMSG_DONE:
                    replies[seq].append((mtype, payload))
        for s in seqs:
            if s in errors:
                raise errors[s]
        return [replies[s] for s in seqs]

    @staticmethod
    def _ext_ack_msg(payload: bytes, flags: int) -> str:
        if not flags & NLM_F_ACK_TLVS:
            return ""
        # int error + the original request header (capped: without payload)
        off = 4 + _NLMSGHDR.size
        (orig_len,) = struct.unpack_from("=I", payload, 4)
        if not flags & 0x100:  # NLM_F_CAPPED: the whole original message is echoed
            off = 4 + ((orig_len + 3) & ~3)
        while off + 4 <= len(payload):
            alen, atype = struct.unpack_from("=HH", payload, off)
            if alen < 4:
                break
            if atype == NLMSGERR_ATTR_MSG:
                return payload[off + 4 : off + alen].rstrip(b"\0").decode(errors="replace")
            off += (alen + 3) & ~3
        return ""

    def link_index(self, ifname: str) -> int | None:
        body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _nla_str(IFLA_IFNAME, ifname)
        try:
            (replies,) = self.batch([(RTM_GETLINK, NLM_F_REQUEST, body)])
        except NetlinkError as e:
            if e.code in (_ENODEV, _ENOENT):
                return None
            raise
        for mtype, payload in replies:
            if mtype == RTM_NEWLINK:
                return _IFINFOMSG.unpack_from(payload, 0)[2]
        return None

    def add_veth(self, ifname: str, *, master: int, peer_ifname: str, peer_mac: str, peer_ns_fd: int) -> None:
        """``ip link add IFNAME master M up type veth peer name P address MAC netns FD``."""
        peer = (
            _IFINFOMSG.pack(0, 0, 0, 0, 0)
            + _nla_str(IFLA_IFNAME, peer_ifname)
            + _nla(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", "")))
            + _nla_u32(IFLA_NET_NS_FD, peer_ns_fd)
        )
        linkinfo = _nla_str(IFLA_INFO_KIND, "veth") + _nla(IFLA_INFO_DATA, _nla(VETH_INFO_PEER, peer))
        body = (
            _IFINFOMSG.pack(0, 0, 0, IFF_UP, IFF_UP)
            + _nla_str(IFLA_IFNAME, ifname)
            + _nla_u32(IFLA_MASTER, master)
            + _nla(IFLA_LINKINFO, linkinfo)
        )
        self.batch([(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, body)])

    def del_link(self, ifname: str) -> bool:
        body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _nla_str(IFLA_IFNAME, ifname)
        try:
            self.batch([(RTM_DELLINK, NLM_F_REQUEST, body)])
        except NetlinkError as e:
            if e.code in (_ENODEV, _ENOENT):
                return False
            raise
        return True


# ----------------------------------------------------------------------------- router


class Router:
    """The simulator-owned router namespace: bridge with the gateway, devbox ports, one uplink."""

    def __init__(
        self,
        ns_name: str,
        bridge: str = "br0",
        gateway: str = "10.88.0.1",
        prefix: int = 16,
        *,
        bridge_mac: str | None = None,
    ) -> None:
        namespaces.path(ns_name)  # validates
        self.ns = ns_name
        self.bridge = check_ifname(bridge)
        self.gateway = str(ipaddress.IPv4Address(gateway))
        self.prefix = int(prefix)
        self.subnet = ipaddress.ip_network(f"{self.gateway}/{self.prefix}", strict=False)
        self.bridge_mac = _check_mac(bridge_mac) if bridge_mac else gateway_mac(self.gateway)
        self.uplink: Uplink | None = None

    def __repr__(self) -> str:
        return f"Router({self.ns!r}, bridge={self.bridge!r}, gateway={self.gateway}/{self.prefix})"

    # -- lifecycle

    def setup(self) -> None:
        """Create (or adopt) the router namespace and configure it. Idempotent."""
        if not namespaces.exists(self.ns):
            namespaces.create(self.ns)
        namespaces.netlink_call(self._setup)

    def _setup(self) -> None:
        # IPv6 off first, so the bridge and every port created later inherit disable_ipv6=1.
        sysctl.write_many(
            self.ns,
            {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1},
            missing_ok=True,
        )
        r = namespaces.ipr(self.ns)
        _link_up(r, "lo")
        br = _link_index(r, self.bridge)
        if br is None:
            r.link("add", ifname=self.bridge, kind="bridge", address=self.bridge_mac, br_forward_delay=0)
            br = _link_index(r, self.bridge)
            if br is None:
                raise LinkError(f"bridge {self.bridge} was not created in {self.ns}")
        _ensure_addr(r, br, self.gateway, self.prefix)
        # Frames to the IEEE link-local group (01:80:c2:00:00:0X) have their source MAC learned
        # BEFORE the bridge's prerouting hook, so the anti-spoofing chain never sees them: root
        # in a devbox could move any devbox's MAC to its own port and take its incoming frames
        # (measured). pyroute2 has no attribute for the bridge's boolopts: iproute2, once.
        _run(["ip", "-n", self.ns, "link", "set", "dev", self.bridge, "type", "bridge", "no_linklocal_learn", "1"])
        r.link("set", index=br, state="up")
        with namespaces.entered(self.ns):
            has_brnf = os.path.isdir("/proc/sys/net/bridge")
        if not has_brnf:
            raise BrNetfilterMissing(
                "/proc/sys/net/bridge is missing in the router namespace: the br_netfilter kernel "
                "module must be loaded (run `modprobe br_netfilter` as root on the host) so that "
                "traffic between devboxes on the bridge goes through the nftables rules"
            )
        sysctl.write_many(
            self.ns,
            {
                "net.ipv4.ip_forward": 1,
                "net.bridge.bridge-nf-call-iptables": 1,
                # strict reverse-path filter: a devbox cannot send with a source address that
                # does not route back through the bridge (spoofing the uplink side)
                "net.ipv4.conf.all.rp_filter": 1,
                "net.ipv4.conf.default.rp_filter": 1,
                "net.ipv4.conf.all.send_redirects": 0,
                "net.ipv4.conf.default.send_redirects": 0,
                # The bridge existed before "default" changed: its own values. The router
                # answers every ARP on the bridge with its MAC (the ports are isolated, see
                # _attach), and never redirects a devbox to route around it.
                f"net/ipv4/conf/{self.bridge}/send_redirects": 0,
                f"net/ipv4/conf/{self.bridge}/proxy_arp_pvlan": 1,
                # A proxied ARP reply to a broadcast request waits a random 0..proxy_delay
                # (0.8 s by default): a first connect between two devboxes waited for two of
                # them (its ARP and its peer's), up to 1.6 s, and timed out in a test.
                f"net/ipv4/neigh/{self.bridge}/proxy_delay": 0,
            },
            verify=True,
        )
        sysctl.write_many(self.ns, {f"net/ipv6/conf/{self.bridge}/disable_ipv6": 1}, missing_ok=True)

    def teardown(self) -> None:
        """Remove the host-side uplink (link, nft table, iptables rules) and the namespace.

        Idempotent; also finds host uplinks of a previous run (veths on the host whose peer lives
        in the router namespace) so a restarted simulator can clean up.
        """
        host_ifnames: set[str] = set()
        if self.uplink is not None and self.uplink.mode == "host":
            host_ifnames.add(self.uplink.peer_ifname)
        if namespaces.exists(self.ns):
            with contextlib.suppress(Exception):
                host_ifnames.update(namespaces.netlink_call(self._host_peers))
        errors = []
        for name in sorted(host_ifnames):
            try:
                remove_host_uplink(name)
            except Exception as e:  # keep going: the namespace must still go
                errors.append(f"{name}: {e}")
        namespaces.delete(self.ns)
        self.uplink = None
        if errors:
            raise LinkError("host uplink cleanup failed: " + "; ".join(errors))

    def _host_peers(self) -> list[str]:
        """Host interfaces that are veth peers of interfaces in the router namespace."""
        h = namespaces.ipr(None)
        fd = namespaces.open_fd(self.ns)
        try:
            info = h.get_netnsid(fd=fd)
        finally:
            os.close(fd)
        nsid = info.get("nsid") if info else None
        if nsid is None or nsid < 0 or nsid == 0xFFFFFFFF:
            return []
        return [
            link.get_attr("IFLA_IFNAME")
            for link in h.get_links()
            if link.get_attr("IFLA_LINK_NETNSID") == nsid
        ]

    # -- devbox ports

    def attach(
        self,
        devbox_netns: str | None = None,
        pid: int | None = None,
        *,
        port_ifname: str,
        ip: str,
        mac: str,
        prefix: int | None = None,
        gateway: str | None = None,
    ) -> Attachment:
        """Connect a devbox namespace (by name, or a process's namespace by pid) to the bridge.

        Creates veth ``port_ifname`` (router side, bridge port, up, IPv6 off) whose peer appears
        in the devbox namespace as ``eth0`` with ``mac`` and ``ip/prefix``, up, with lo up, a
        default route via ``gateway`` and IPv6 disabled (all/default). On failure the veth is
        removed again.
        """
        if (devbox_netns is None) == (pid is None):
            raise ValueError("pass exactly one of devbox_netns or pid")
        target: namespaces.Target = devbox_netns if devbox_netns is not None else int(pid)  # type: ignore[arg-type]
        check_ifname(port_ifname)
        mac = _check_mac(mac)
        ip = str(ipaddress.IPv4Address(ip))
        prefix = self.prefix if prefix is None else int(prefix)
        gateway = self.gateway if gateway is None else str(ipaddress.IPv4Address(gateway))
        t0 = time.perf_counter()
        self._attach(target, port_ifname, ip, mac, prefix, gateway)
        return Attachment(port_ifname, ip, mac, prefix, gateway, (time.perf_counter() - t0) * 1000)

    def _attach(self, target, port: str, ip: str, mac: str, prefix: int, gateway: str) -> None:
        # IPv6 off in the devbox namespace before eth0 arrives there (it inherits "default").
        # The router port inherits disable_ipv6=1 from the router's "default" (see _setup).
        sysctl.write_many(
            target,
            {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1},
            missing_ok=True,
        )
        with _Rtnl(self.ns) as r:
            br = r.link_index(self.bridge)
            if br is None:
                raise LinkError(f"bridge {self.bridge} missing in {self.ns}: call setup() first")
            fd = namespaces.open_fd(target)
            try:
                r.add_veth(port, master=br, peer_ifname=DEVBOX_IFNAME, peer_mac=mac, peer_ns_fd=fd)
            except NetlinkError as e:
                raise LinkError(f"cannot create veth {port} in {self.ns} -> {target!r}/eth0: {e}") from e
            finally:
                os.close(fd)
            try:
                # Isolated before the devbox's side is up: no frame of one devbox reaches another
                # at layer 2. Their ARP went to every port (another account's devbox learned
                # from its neighbour table which devbox had asked for it, a channel out of a
                # deny-all policy); the router answers all ARP instead (proxy_arp_pvlan, see
                # setup) and routes devbox-to-devbox traffic, judged by the forward chain.
                r.batch([_msg_bridge_port_isolated(r.link_index(port))])
                with _Rtnl(target) as d:
                    eth = d.link_index(DEVBOX_IFNAME)
                    if eth is None:
                        raise LinkError("eth0 did not appear in the devbox namespace")
                    d.batch(
                        [
                            _msg_link_set_up(eth),
                            _msg_link_set_up(1),  # lo is ifindex 1 in every network namespace
                            _msg_addr_add(eth, ip, prefix),
                            _msg_default_route(gateway, eth),
                        ]
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    r.del_link(port)
                raise

    def detach(self, port_ifname: str) -> bool:
        """Delete a devbox port (both veth ends go). False if it did not exist."""
        check_ifname(port_ifname)
        with _Rtnl(self.ns) as r:
            return r.del_link(port_ifname)

    def list_ports(self) -> list[Port]:
        """Bridge ports in the router namespace (for reconciling orphans)."""

        def _ports() -> list[Port]:
            r = namespaces.ipr(self.ns)
            br = _link_index(r, self.bridge)
            if br is None:
                return []
            out = []
            for link in r.get_links():
                if link.get_attr("IFLA_MASTER") != br:
                    continue
                out.append(
                    Port(
                        ifname=link.get_attr("IFLA_IFNAME"),
                        index=link["index"],
                        mac=link.get_attr("IFLA_ADDRESS"),
                        up=bool(link["flags"] & 1),
                    )
                )
            return sorted(out, key=lambda p: p.ifname)

        return namespaces.netlink_call(_ports)

    # -- uplinks

    def _drop_old_uplink(self, r) -> None:
        idx = _link_index(r, UPLINK_IFNAME)
        if idx is not None:
            r.link("del", index=idx)

    def uplink_offline(
        self,
        world_ns: "str | World",
        link_net: str = DEFAULT_LINK_NET,
        *,
        world_ifname: str = "router0",
        route_back: bool = True,
    ) -> Uplink:
        """veth router(uplink0) <-> world(world_ifname); router default route via the world end.

        The world end gets the first host address of ``link_net``, the router end the second.
        With ``route_back`` the world namespace also gets a route for the devbox subnet via the
        router, so it works whether or not the router masquerades.
        """
        world = world_ns.ns if isinstance(world_ns, World) else world_ns
        check_ifname(world_ifname)
        peer_addr, router_addr, plen = _link_pair(link_net)

        if self.uplink is not None and self.uplink.mode == "host":
            remove_host_uplink(self.uplink.peer_ifname)
            self.uplink = None

        def _up() -> Uplink:
            r = namespaces.ipr(self.ns)
            w = namespaces.ipr(world)
            self._drop_old_uplink(r)
            old = _link_index(w, world_ifname)
            if old is not None:
                w.link("del", index=old)
            fd = namespaces.open_fd(world)
            try:
                r.link("add", ifname=UPLINK_IFNAME, kind="veth", peer={"ifname": world_ifname, "net_ns_fd": fd})
            finally:
                os.close(fd)
            sysctl.write_many(world, {f"net/ipv6/conf/{world_ifname}/disable_ipv6": 1}, missing_ok=True)
            ridx = _link_up(r, UPLINK_IFNAME)
            r.addr("add", index=ridx, address=router_addr, prefixlen=plen)
            widx = _link_up(w, world_ifname)
            w.addr("add", index=widx, address=peer_addr, prefixlen=plen)
            r.route("replace", dst="0.0.0.0/0", gateway=peer_addr, oif=ridx)
            if route_back:
                w.route("replace", dst=str(self.subnet), gateway=router_addr, oif=widx)
            return Uplink("offline", UPLINK_IFNAME, router_addr, world_ifname, peer_addr, plen, world)

        self.uplink = namespaces.netlink_call(_up)
        return self.uplink

    def uplink_host(
        self,
        host_ifname: str,
        link_net: str = DEFAULT_LINK_NET,
        *,
        routed_subnets: tuple[str, ...] | list[str] = (),
    ) -> Uplink:
        """veth host(host_ifname) <-> router(uplink0): devboxes reach the real network via the host.

        Host side: address = first host of ``link_net``; net.ipv4.ip_forward=1 (left on at
        teardown: other software such as Docker relies on it too); nftables table
        ``devbox_sim_uplink_<host_ifname>`` masquerading traffic from ``link_net`` (and
        ``routed_subnets``) leaving through any other interface, dropping every packet that
        arrives from the uplink for the host itself or that the host rewrote (DNAT), capping the
        uplink's connections at half the host's tracking, and (forwarding was off) not routing
        between the host's other interfaces; DOCKER-USER rules if that chain exists.

        The router is expected to masquerade devbox traffic onto its uplink address (the host then
        only needs the connected link net). If it does not, pass the devbox subnet in
        ``routed_subnets``: the host gets routes for it via the router and masquerades it too.
        ``host_ifname`` must be unique on the host (several simulators may run side by side).
        """
        check_ifname(host_ifname)
        peer_addr, router_addr, plen = _link_pair(link_net)
        subnets = [str(ipaddress.ip_network(s, strict=True)) for s in routed_subnets]
        table = host_table_name(host_ifname)
        nft = _nft_bin()

        def _up() -> None:
            h = namespaces.ipr(None)
            r = namespaces.ipr(self.ns)
            self._drop_old_uplink(r)
            fd = namespaces.open_fd(None)
            try:
                # created in the router ns (inherits disable_ipv6 there); peer placed on the host
                r.link("add", ifname=UPLINK_IFNAME, kind="veth", peer={"ifname": host_ifname, "net_ns_fd": fd})
            finally:
                os.close(fd)
            sysctl.write_many(None, {f"net/ipv6/conf/{host_ifname}/disable_ipv6": 1}, missing_ok=True)
            ridx = _link_up(r, UPLINK_IFNAME)
            r.addr("add", index=ridx, address=router_addr, prefixlen=plen)
            hidx = _link_up(h, host_ifname)
            h.addr("add", index=hidx, address=peer_addr, prefixlen=plen)
            r.route("replace", dst="0.0.0.0/0", gateway=peer_addr, oif=ridx)
            for s in subnets:
                h.route("replace", dst=s, gateway=router_addr, oif=hidx)

        if namespaces.netlink_call(lambda: _link_index(namespaces.ipr(None), host_ifname)) is not None:
            raise LinkError(f"host interface {host_ifname} already exists")
        link = ipaddress.ip_network(link_net)
        clash = [a for a in host_addresses() if ipaddress.ip_address(a) in link]
        if clash:
            raise LinkError(f"the host already has {clash[0]} in the uplink's link net {link_net} "
                            "(another simulator's uplink, or a network of the host's own)")
        if self.uplink is not None and self.uplink.mode == "host":
            remove_host_uplink(self.uplink.peer_ifname)  # replacing our previous host uplink
        try:
            namespaces.netlink_call(_up)
            only_uplinks = ""
            if sysctl.read(None, "net.ipv4.ip_forward") == "0":
                # The host did not route: turning forwarding on must not make it route between
                # the interfaces it has (a LAN and a VPN, a LAN and its containers) - only
                # devbox traffic. Interfaces made later (Docker's, say, which turns forwarding
                # on itself) are not held back. Forwarding stays on after us (whoever came
                # later may rely on it): the log says so.
                own = namespaces.netlink_call(lambda: [
                    link.get_attr("IFLA_IFNAME") for link in namespaces.ipr(None).get_links()])
                others = sorted(n for n in own if n and n != "lo" and n != host_ifname
                                and not n.startswith(HOST_UPLINK_PREFIX))
                if others:
                    names = ", ".join(f'"{n}"' for n in others)
                    only_uplinks = (f"    iifname {{ {names} }} oifname {{ {names} }} counter drop"
                                    f' comment "the host routed nothing before: not between its own interfaces"\n')
                log.warning("net.ipv4.ip_forward was 0 on this host; the host uplink turns it on (and leaves it on)")
            sysctl.write(None, "net.ipv4.ip_forward", 1, verify=True)
            sources = ", ".join([link_net, *subnets])
            ruleset = (
                f"table ip {table} {{}}\n"
                f"delete table ip {table}\n"
                f"table ip {table} {{\n"
                # Before DNAT (dstnat is -100): a port the host publishes (Docker's -p, a
                # NodePort, a libvirt forward) on one of its own addresses would otherwise
                # rewrite a devbox's packet to a private address behind the host and
                # forward it, past the input drop below and past the router's policy.
                f"  chain prerouting {{\n"
                f"    type filter hook prerouting priority -150; policy accept;\n"
                f'    iifname "{host_ifname}" fib daddr type local counter drop comment "devboxes must not reach the host"\n'
                # The host's connection tracking is the host's: devboxes get half of it at most.
                f'    iifname "{host_ifname}" ct state new ct count over {_host_conntrack_cap()} counter drop\n'
                f"  }}\n"
                f"  chain forward {{\n"
                f"    type filter hook forward priority 0; policy accept;\n"
                # A host DNAT whose match is not a local address (a virtual IP, a forward)
                # would lead a devbox to an address behind the host that the router never
                # judged (a LAN closed by --private-networks by-cidr): nothing the host
                # rewrote for a devbox goes anywhere.
                f'    iifname "{host_ifname}" ct status dnat counter drop comment "devboxes must not reach what the host forwards"\n'
                f"{only_uplinks}"
                f"  }}\n"
                f"  chain input {{\n"
                f"    type filter hook input priority -10; policy accept;\n"
                f'    iifname "{host_ifname}" counter drop comment "devboxes must not reach the host"\n'
                f"  }}\n"
                f"  chain postrouting {{\n"
                f"    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    ip saddr {{ {sources} }} oifname != "{host_ifname}" counter masquerade\n'
                f"  }}\n"
                f"}}\n"
            )
            _run([nft, "-f", "-"], input=ruleset)
            rules, warnings = _docker_user_accept(host_ifname)
        except BaseException:
            with contextlib.suppress(Exception):
                remove_host_uplink(host_ifname)
            raise
        self.uplink = Uplink(
            "host", UPLINK_IFNAME, router_addr, host_ifname, peer_addr, plen, None,
            nft_table=table, iptables_rules=rules, warnings=tuple(warnings),
        )
        for w in warnings:
            log.warning("%s", w)
        return self.uplink


# ----------------------------------------------------------------------------- host uplink cleanup


def _docker_user_rules(host_ifname: str) -> list[tuple[str, ...]]:
    """Devbox traffic passes Docker's FORWARD drop, except into Docker's own bridges, where
    Docker's rules decide as for any other source (unpublished ports stay closed)."""
    return [
        ("-i", host_ifname, "-o", "docker0", "-j", "RETURN"),
        ("-i", host_ifname, "-o", "br-+", "-j", "RETURN"),
        ("-i", host_ifname, "-j", "ACCEPT"),
        ("-o", host_ifname, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
    ]


def _docker_user_position(ipt: str) -> int | None:
    """Where our rules go in DOCKER-USER: before its closing ``-j RETURN`` if it has one (rules
    the admin put there first still apply to devboxes), else at the end (None)."""
    listing = _run([ipt, "-w", "-t", "filter", "-S", "DOCKER-USER"], check=False).stdout.splitlines()
    rules = [line for line in listing if line.startswith("-A DOCKER-USER")]
    if rules and rules[-1].strip() == "-A DOCKER-USER -j RETURN":
        return len(rules)  # 1-based: inserting there puts ours just before the RETURN
    return None


def _iptables() -> str | None:
    return shutil.which("iptables")


def _docker_user_accept(host_ifname: str) -> tuple[tuple[tuple[str, ...], ...], list[str]]:
    """Add the uplink's rules to DOCKER-USER if that chain exists (after the admin's own)."""
    ipt = _iptables()
    if ipt is None:
        return (), []
    if _run([ipt, "-w", "-t", "filter", "-n", "-L", "DOCKER-USER"], check=False).returncode != 0:
        warnings = []
        pol = _run([ipt, "-w", "-t", "filter", "-S", "FORWARD"], check=False)
        if pol.returncode == 0 and "-P FORWARD DROP" in pol.stdout:
            warnings.append(
                "iptables FORWARD policy is DROP and there is no DOCKER-USER chain: devbox traffic "
                f"through {host_ifname} will be dropped unless a rule accepts it"
            )
        return (), warnings
    inserted = []
    for rule in _docker_user_rules(host_ifname):
        if _run([ipt, "-w", "-t", "filter", "-C", "DOCKER-USER", *rule], check=False).returncode != 0:
            position = _docker_user_position(ipt)
            if position is None:
                _run([ipt, "-w", "-t", "filter", "-A", "DOCKER-USER", *rule])
            else:
                _run([ipt, "-w", "-t", "filter", "-I", "DOCKER-USER", str(position), *rule])
        inserted.append(rule)
    return tuple(inserted), []


def _docker_user_remove(host_ifname: str) -> None:
    ipt = _iptables()
    if ipt is None:
        return
    if _run([ipt, "-w", "-t", "filter", "-n", "-L", "DOCKER-USER"], check=False).returncode != 0:
        return
    for rule in _docker_user_rules(host_ifname):
        for _ in range(16):  # remove duplicates too, but never loop forever
            if _run([ipt, "-w", "-t", "filter", "-D", "DOCKER-USER", *rule], check=False).returncode != 0:
                break


def host_table_exists(host_ifname: str) -> bool:
    nft = _nft_bin()
    return _run([nft, "list", "table", "ip", host_table_name(host_ifname)], check=False).returncode == 0


def remove_host_uplink(host_ifname: str) -> None:
    """Remove everything ``uplink_host(host_ifname)`` made on the host. Idempotent."""
    check_ifname(host_ifname)
    table = host_table_name(host_ifname)

    def _del_link() -> None:
        h = namespaces.ipr(None)
        idx = _link_index(h, host_ifname)
        if idx is None:
            return
        link = h.get_links(idx)[0]
        linkinfo = link.get_attr("IFLA_LINKINFO")
        kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
        if kind != "veth":  # never delete an unrelated host interface
            raise LinkError(f"host interface {host_ifname} is a {kind!r}, not our uplink veth")
        try:
            h.link("del", index=idx)
        except Exception as e:
            if _nl_errno(e) not in (_ENODEV, _ENOENT):
                raise

    namespaces.netlink_call(_del_link)
    nft = shutil.which("nft")
    if nft is not None:
        p = _run([nft, "list", "table", "ip", table], check=False)
        if p.returncode == 0:
            _run([nft, "delete", "table", "ip", table])
    _docker_user_remove(host_ifname)


def list_host_uplink_tables() -> list[str]:
    """Names of all devbox_sim_uplink_* tables on the host (for reconciling)."""
    nft = shutil.which("nft")
    if nft is None:
        return []
    p = _run([nft, "list", "tables", "ip"], check=False)
    names = []
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith(HOST_TABLE_PREFIX):
            names.append(parts[2])
    return names


# ----------------------------------------------------------------------------- world


class World:
    """The offline world: a namespace holding 'internet' hosts on a dummy interface."""

    HOSTS_IFNAME = "hosts0"

    def __init__(self, ns_name: str) -> None:
        namespaces.path(ns_name)
        self.ns = ns_name
        self.hosts_ifname = self.HOSTS_IFNAME

    def setup(self) -> None:
        if not namespaces.exists(self.ns):
            namespaces.create(self.ns)

        def _setup() -> None:
            sysctl.write_many(
                self.ns,
                {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1},
                missing_ok=True,
            )
            w = namespaces.ipr(self.ns)
            _link_up(w, "lo")
            if _link_index(w, self.HOSTS_IFNAME) is None:
                try:
                    w.link("add", ifname=self.HOSTS_IFNAME, kind="dummy")
                except Exception as e:  # no dummy module: host addresses go on lo instead
                    log.info("dummy interface unavailable (%s); world addresses go on lo", e)
                    self.hosts_ifname = "lo"
                    return
            _link_up(w, self.HOSTS_IFNAME)
            self.hosts_ifname = self.HOSTS_IFNAME

        namespaces.netlink_call(_setup)

    def teardown(self) -> None:
        namespaces.delete(self.ns)

    @staticmethod
    def _host_addr(addr: str) -> str:
        s = str(addr)
        if "/" in s:
            a, plen = s.split("/", 1)
            if plen != "32":
                raise ValueError(f"world host addresses are /32: {addr}")
            s = a
        return str(ipaddress.IPv4Address(s))

    def add_address(self, addr: str) -> None:
        """Add a /32 host address (e.g. 192.0.2.10). Idempotent."""
        a = self._host_addr(addr)

        def _add() -> None:
            w = namespaces.ipr(self.ns)
            idx = _link_index(w, self.hosts_ifname)
            if idx is None:
                raise LinkError(f"{self.hosts_ifname} missing in {self.ns}: call setup() first")
            _ensure_addr(w, idx, a, 32)

        namespaces.netlink_call(_add)

    def remove_address(self, addr: str) -> bool:
        a = self._host_addr(addr)

        def _rm() -> bool:
            w = namespaces.ipr(self.ns)
            idx = _link_index(w, self.hosts_ifname)
            if idx is None or not _has_addr(w, idx, a, 32):
                return False
            w.addr("del", index=idx, address=a, prefixlen=32)
            return True

        return namespaces.netlink_call(_rm)

    def addresses(self) -> list[str]:
        def _list() -> list[str]:
            w = namespaces.ipr(self.ns)
            idx = _link_index(w, self.hosts_ifname)
            if idx is None:
                return []
            return sorted(
                a.get_attr("IFA_ADDRESS")
                for a in w.get_addr(index=idx, family=2)
                if a["prefixlen"] == 32 and not a.get_attr("IFA_ADDRESS").startswith("127.")
            )

        return namespaces.netlink_call(_list)

    def add_route(self, dst: str, via: str) -> None:
        dst = str(ipaddress.ip_network(dst, strict=True))
        via = str(ipaddress.IPv4Address(via))
        namespaces.netlink_call(lambda: namespaces.ipr(self.ns).route("replace", dst=dst, gateway=via))
