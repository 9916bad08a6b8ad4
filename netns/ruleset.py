"""Pure compiler: desired network state -> libnftables JSON documents.

Nothing here touches the kernel; every function returns a ``{"nftables": [...]}`` dict that
``netns.nft.Nft.apply`` runs as ONE atomic transaction in the router namespace (documents of
several functions may be concatenated into one transaction). The output is deterministic
(golden-tested in ``tests/netns/golden``).

Layout v2 (two tables, ``OUR_TABLES``, which a reconcile replaces or removes by exact name).
What depends on a devbox lives in per-devbox objects; what depends on a policy lives in
per-POLICY objects shared by every devbox using it, so a policy update refills its four sets
however many devboxes use the policy (elements only: the policy chain is the same for every
policy)::

    table inet devbox_sim                      (TABLE)
      set   protected        ipv4_addr, interval      Router.protected (never reachable)
      set   private          ipv4_addr, interval      Router.private (only a CIDR rule opens them)
      map   dbx_vmap         ipv4_addr : verdict      devbox ip -> jump dbx_<key>
      set   acct_<account>   ipv4_addr                devbox IPs of one account that accept
                                                      devbox-to-devbox traffic ("peers")
      set   learned_<key>    ipv4_addr, timeout       addresses the resolver answered (per devbox)
      set   pcidr_<pkey>     ipv4_addr . inet_proto, interval                  all-port CIDRs
      set   pcidrport_<pkey> ipv4_addr . inet_proto . inet_service, interval   CIDR + ports
      set   ppeer_<pkey>     nf_proto                 "ipv4" if the policy allows devbox-to-devbox
      set   pall_<pkey>      nf_proto                 "ipv4" if the policy is allow_all
      set   dns_rate         ipv4_addr, dynamic       a packet rate limit per devbox to the resolver
      set   alive            nf_proto, timeout        "ipv4" while the simulator's heartbeat lasts:
                                                      the forward chain drops all without it
      map   conns_vmap       ipv4_addr : verdict      devbox ip -> jump count_<key> (postrouting)
      set   conns_<key>      ipv4_addr . inet_proto . inet_service, timeout, counter: the
                             devbox's allowed new connections per destination (its own, bounded)
      chain count_<key>      update @conns_<key> { ip daddr . meta l4proto . th dport }
      chain forward          hook forward  prio 0   policy drop
      chain input            hook input    prio 0   policy drop  (devboxes: the resolver only)
      chain output           hook output   prio 0   policy accept
      chain postrouting      nat postrouting prio 100 (masquerade out of the uplink)
      chain unrestricted     shared "no policy" chain: accept (but @private)
      chain pol_<pkey>       one per policy in use: its egress rules, which look its sets up
                             (returns = not allowed)
      chain acctconns_<account>  one per account: ct count over N drop (all its devboxes'
                             new connections, Router.max_connections_per_account)
      chain dbx_<key>        one per devbox:
                               ct count over N drop      (Router.max_connections_per_devbox)
                               jump acctconns_<account>
                               ip daddr != <subnet> ip daddr != @private ip daddr @learned_<key> accept
                               ip daddr != <subnet> jump pol_<pkey> | unrestricted
                               ip daddr @acct_<account> jump pol_<pkey> | unrestricted
                               [log group N prefix "dbx_<key> "]   (Router.log_group)
                               drop

    table bridge devbox_sim_br                 (BRIDGE_TABLE)
      set   dbx_ports        ifname                   bridge ports of devboxes
      set   dbx_port_mac     ifname . ether_addr      port -> the only allowed source MAC
      set   dbx_port_ip      ifname . ipv4_addr       port -> the devbox's only IPv4 address
      chain prerouting       hook prerouting prio -300 policy accept  (anti-spoofing)
      chain forward          hook forward    prio -200 policy accept  (what a port may receive)

The subnet guard in ``dbx_<key>``: only two kinds of destination ever reach the policy, those
OUTSIDE the devbox subnet and the peers of the devbox's own account; any other address in the
subnet (another account's devbox, a devbox that does not accept peers) falls through to the
log and the drop. Learned addresses only open destinations outside the subnet (a DNS answer
may point into it). ``pol_<pkey>`` starts with the same-account decision (``ip daddr <subnet>``
accept if ``ppeer_<pkey>`` holds "ipv4" (allow_all or allow_devbox_to_devbox), else return:
the CIDR rules after it must not open devboxes), then the CIDR set lookups, then, if
``pall_<pkey>`` holds "ipv4", ``ip daddr @private return`` and ``accept``. The flags are
``meta nfproto`` lookups (every packet here is IPv4), as for the ``alive`` set. When nothing
accepts, it returns and ``dbx_<key>`` logs (with the devbox's own
prefix, one rate limit per devbox) and drops: every dropped new connection is logged, towards
devboxes too.

Private networks (``Router.private``: RFC 1918, shared address space, benchmarking) are the
host's LAN, its VPNs and Docker's bridges, not the internet a cloud devbox sees. When the set
holds them (the simulator's ``--private-networks by-cidr``), only an allowed CIDR opens them:
not allow_all, not "no policy", not a DNS answer (an allowed name whose answer points into a
LAN, as in DNS rebinding). Empty (``open``), they are like any destination. The devbox subnet
is decided before.

Devbox-to-devbox is symmetric: a connection needs BOTH ends to allow it. The sender's policy
chain decides whether it may send into the subnet; the account set holds only the devboxes
whose policy accepts peers (``Devbox.peer``), so the guard drops traffic to the others. Without
the second half, turning allow_devbox_to_devbox off could not cut a flow for good: the peer,
still allowed, would re-create it from its side and the replies would pass as established.

A policy chain exists while at least one devbox uses it: the caller concatenates
``add_policy`` with the first ``add_devbox`` and ``remove_policy`` with the last
``remove_devbox`` (the kernel refuses to delete a chain that is still jumped to). A policy
update is ``update_policy``: flush + refill of the policy's four sets, nothing else, so the
data plane sends it by raw netlink (``netns.nft_element_json``), not libnftables.
``move_devbox`` points one devbox at another policy (rewrites its ``dbx_<key>``).

Learned-element timeout refresh (measured on kernel 6.18 + libnftables 1.0.6):
re-adding an existing element with the SAME ``timeout`` does NOT refresh its expiry; a
different ``timeout`` updates timeout and expiry; an explicit ``expires`` updates the expiry
even when the timeout is unchanged. So ``learned_add`` always sends ``timeout == expires``:
one ``add element`` that inserts new addresses and re-arms existing ones, with no need to
know which are present (a delete+add would fail with ENOENT when the element had expired
between the resolver's answer and the transaction).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TABLE = "devbox_sim"
BRIDGE_TABLE = "devbox_sim_br"
TABLE_PREFIX = "devbox_sim"  # every table compiled here starts with this
# The exact tables this module owns. Note netns/links.py puts host-namespace tables named
# devbox_sim_uplink_<ifname> under the same prefix, so removal goes by exact name.
OUR_TABLES = (("inet", TABLE), ("bridge", BRIDGE_TABLE))

VMAP = "dbx_vmap"
UNRESTRICTED_CHAIN = "unrestricted"  # shared by devboxes without a policy
PROTECTED_SET = "protected"
PRIVATE_SET = "private"
# Networks that are not the internet: RFC 1918, shared address space (RFC 6598: carrier NAT,
# Tailscale), benchmarking (RFC 2544: the fake-IP range of proxies). Reachable only through
# an allowed CIDR that covers them.
PRIVATE_NETWORKS = ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "198.18.0.0/15")
# Allowed new TCP/UDP connections, counted per devbox and (destination, protocol, port) for the
# decision log, in a set of the devbox's own (``conns_<key>``, gone with the devbox: the next
# devbox given its address inherits nothing, and a noisy devbox fills only its own); entries
# expire an hour after their last connection. The NAT chain finds the devbox's counting chain
# through CONNS_VMAP (source address -> jump count_<key>).
CONNS_VMAP = "conns_vmap"
CONNS_TIMEOUT_S = 3600
CONNS_PER_DEVBOX = 4096
# Per-source packet rate limit towards the resolver (below): the set is bounded too.
DNS_RATE_SIZE = 65536
PORTS_SET = "dbx_ports"
PORT_MAC_SET = "dbx_port_mac"
PORT_IP_SET = "dbx_port_ip"

# DNS (53) and DNS-over-TLS (853) to anything but our resolver are always dropped, over every
# transport with ports: UDP-Lite, SCTP and DCCP need no privilege either, and a resolver could
# listen on them.
BLOCKED_DNS_PORTS = (53, 853)
PORTED_PROTOCOLS = ["tcp", "udp", "udplite", "sctp", "dccp"]
# Packets a devbox may send to the resolver, per second, after a burst: above it the kernel
# drops them before they reach the resolver's socket, which every devbox shares (measured: one
# devbox sending 106,000 queries/s made another lose 9% of its queries and tripled the
# API's latency). Far above what resolving needs (a package install: tens of names/s).
DNS_RATE_SET = "dns_rate"
# Fail closed with no process's help: the forward chain drops everything unless this set
# holds "ipv4", an element the simulator re-adds every second (netns.heartbeat) with a timeout
# of Router.alive_seconds. However the simulator dies (its watchdog with it: a service
# manager's SIGKILL of the whole unit), the element runs out and nothing is forwarded.
ALIVE_SET = "alive"
DNS_RATE_PER_SECOND = 1000
DNS_RATE_BURST = 2000
DNS_FLOOD_COMMENT = "resolver flood"
# Destinations never forwarded: "this network", loopback, multicast/reserved/broadcast.
NEVER_FORWARD = ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/3")
LOG_RATE_PER_SECOND = 5
LOG_BURST = 10
# Drops outside a devbox's chain (shared rules) are logged too, through one chain per reason
# (``logdrop_<reason>``: log at most LOG_RATE_PER_SECOND per source address, then drop) with
# the prefix "<reason> "; the data plane finds the devbox by the (anti-spoofed) source.
LOG_RATE_SET = "log_rate"
DROP_REASONS = ("resolver_bypass", "reserved_address", "router", "connection_limit")
# learned_remove first re-arms the element with this timeout so that the delete cannot fail
# on an element that has just expired (libnftables 1.0.6 has no `destroy`).
_REMOVE_TIMEOUT = 1

# Key types of the sets whose elements change while devboxes run, by the part of the name before
# its first "_" (keys never contain one): what netns.nft_element_json needs to send their
# changes by raw netlink. A flag set's only possible element is FLAG_ON.
CIDR_KEY = ("ipv4_addr", "inet_proto")
CIDRPORT_KEY = ("ipv4_addr", "inet_proto", "inet_service")
FLAG_ON = "ipv4"
_ELEMENT_KEYS = {
    "learned": (("ipv4_addr",), False),
    "acct": (("ipv4_addr",), False),
    "pcidr": (CIDR_KEY, True),
    "pcidrport": (CIDRPORT_KEY, True),
    "ppeer": (("nf_proto",), False),
    "pall": (("nf_proto",), False),
}

_KEY_RE = re.compile(r"^[a-z0-9]{1,24}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")

Protocol = Literal["tcp", "udp"]


# --------------------------------------------------------------------------- desired state


@dataclass(frozen=True)
class PortRange:
    """Destination port ``port`` (or ``port..end_port``) for ``protocol``; None = tcp and udp."""

    port: int
    end_port: int | None = None
    protocol: Protocol | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.end_port is not None and not self.port <= self.end_port <= 65535:
            raise ValueError(f"bad port range: {self.port}-{self.end_port}")
        if self.protocol not in ("tcp", "udp", None):
            raise ValueError(f"protocol must be tcp, udp or None: {self.protocol!r}")

    @property
    def last(self) -> int:
        return self.port if self.end_port is None else self.end_port

    @property
    def protocols(self) -> tuple[Protocol, ...]:
        return ("tcp", "udp") if self.protocol is None else (self.protocol,)


@dataclass(frozen=True)
class CidrRule:
    """Destination CIDR; empty ``ports`` = every port of every protocol (ICMP too).

    Host bits are cleared ("10.1.2.3/8" means 10.0.0.0/8). IPv6 CIDRs are accepted but
    compile to nothing: devboxes are IPv4-only and IPv6 is dropped (fail closed).
    """

    cidr: str
    ports: tuple[PortRange, ...] = ()
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network", ipaddress.ip_network(self.cidr, strict=False))  # ValueError
        object.__setattr__(self, "ports", tuple(self.ports))


@dataclass(frozen=True)
class Egress:
    """A devbox's egress policy. Hostname-learned addresses are always allowed (via the
    devbox's learned set, which is empty when the policy allows no names)."""

    allow_all: bool = False
    allow_devbox_to_devbox: bool = False
    cidrs: tuple[CidrRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cidrs", tuple(self.cidrs))


@dataclass(frozen=True)
class Devbox:
    """One devbox as the router sees it. ``policy`` is the key of the policy whose chain
    (``pol_<policy>``) decides its egress; None means no policy: unrestricted egress (like
    allow_all, devbox-to-devbox within the account included)."""

    key: str  # [a-z0-9], used in chain/set names
    account: str  # [a-z0-9], used in set names
    ip: str
    mac: str
    port: str  # bridge-port ifname (router side of the veth)
    policy: str | None = None  # policy key [a-z0-9]; None = no policy
    peer: bool = True  # its policy allows devbox-to-devbox: a member of its account set

    def __post_init__(self) -> None:
        _check_key("devbox key", self.key)
        _check_key("account", self.account)
        if self.policy is not None:
            _check_key("policy key", self.policy)
        object.__setattr__(self, "ip", str(ipaddress.IPv4Address(self.ip)))
        mac = self.mac.lower()
        if not _MAC_RE.match(mac):
            raise ValueError(f"bad MAC address: {self.mac!r}")
        object.__setattr__(self, "mac", mac)
        _check_ifname(self.port)

    @property
    def chain(self) -> str:
        return devbox_chain(self.key)

    @property
    def target(self) -> str:
        """The chain its ``dbx_<key>`` jumps to."""
        return UNRESTRICTED_CHAIN if self.policy is None else policy_chain(self.policy)


@dataclass(frozen=True)
class Router:
    bridge: str
    gateway: str  # "10.88.0.1" (a "/16" suffix is accepted and dropped)
    subnet: str  # "10.88.0.0/16"
    uplink: str
    protected: tuple[str, ...] = ()  # addresses/CIDRs devboxes may never reach
    private: tuple[str, ...] = PRIVATE_NETWORKS  # reachable only through an allowed CIDR
    dns_port: int = 53
    log_group: int | None = None  # NFLOG group for dropped new connections; None = no log
    # Whether devbox traffic leaving through the uplink is masqueraded (host uplink: the host's
    # network knows no route to the subnet). The offline world routes the subnet back, so its
    # services see each devbox's own address (their per-client caps are per devbox).
    masquerade_devboxes: bool = True
    # Connections one devbox may hold at once through the router (its conntrack entries, new
    # ones beyond are dropped): the router's connection tracking is shared by every devbox,
    # and a devbox filling it would leave the others no new connection at all.
    max_connections_per_devbox: int = 16384
    # And all devboxes of one account together (one ``ct count`` rule in the account's own
    # chain): an account that starts many devboxes still leaves the other accounts a share.
    max_connections_per_account: int = 65536
    # How long forwarding outlives the simulator's last heartbeat (ALIVE_SET); bootstrap's
    # element lasts as long, so that the first heartbeat has that long to come.
    alive_seconds: int = 10

    def __post_init__(self) -> None:
        _check_ifname(self.bridge)
        _check_ifname(self.uplink)
        gw = str(ipaddress.IPv4Interface(self.gateway).ip)
        object.__setattr__(self, "gateway", gw)
        net = ipaddress.IPv4Network(self.subnet, strict=False)
        object.__setattr__(self, "subnet", str(net))
        object.__setattr__(self, "protected", tuple(self.protected))
        object.__setattr__(self, "private", tuple(self.private))
        for p in (*self.protected, *self.private):
            ipaddress.ip_network(p, strict=False)
        if not 1 <= self.dns_port <= 65535:
            raise ValueError(f"bad dns_port: {self.dns_port}")
        if self.log_group is not None and not 0 <= self.log_group <= 65535:
            raise ValueError(f"bad log_group: {self.log_group}")
        if self.max_connections_per_devbox < 1:
            raise ValueError(f"bad max_connections_per_devbox: {self.max_connections_per_devbox}")
        if self.max_connections_per_account < 1:
            raise ValueError(f"bad max_connections_per_account: {self.max_connections_per_account}")
        if self.alive_seconds < 2:
            raise ValueError(f"bad alive_seconds: {self.alive_seconds}")


def _check_key(what: str, value: str) -> None:
    if not _KEY_RE.match(value):
        raise ValueError(f"{what} must match {_KEY_RE.pattern}: {value!r}")


def _check_ifname(name: str) -> None:
    if not _IFNAME_RE.match(name):
        raise ValueError(f"bad interface name: {name!r}")


# --------------------------------------------------------------------------- names


def devbox_chain(key: str) -> str:
    return f"dbx_{key}"


def learned_set(key: str) -> str:
    return f"learned_{key}"


def policy_chain(pkey: str) -> str:
    return f"pol_{pkey}"


def cidr_set(pkey: str) -> str:
    return f"pcidr_{pkey}"


def cidrport_set(pkey: str) -> str:
    return f"pcidrport_{pkey}"


def peer_flag_set(pkey: str) -> str:
    return f"ppeer_{pkey}"


def all_flag_set(pkey: str) -> str:
    return f"pall_{pkey}"


def account_set(account: str) -> str:
    return f"acct_{account}"


def account_chain(account: str) -> str:
    return f"acctconns_{account}"


def conns_set(key: str) -> str:
    return f"conns_{key}"


def count_chain(key: str) -> str:
    return f"count_{key}"


# --------------------------------------------------------------------------- JSON helpers

Cmd = dict[str, Any]
Expr = Any


def _doc(cmds: Iterable[Cmd]) -> dict[str, list[Cmd]]:
    return {"nftables": list(cmds)}


def _t(**kw: Any) -> dict[str, Any]:
    return {"family": "inet", "table": TABLE, **kw}


def _b(**kw: Any) -> dict[str, Any]:
    return {"family": "bridge", "table": BRIDGE_TABLE, **kw}


def _match(left: Expr, right: Expr, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _payload(protocol: str, fld: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": fld}}


def _ct_state(*states: str) -> Expr:
    return _match({"ct": {"key": "state"}}, list(states) if len(states) > 1 else states[0], "in")


def _prefix(net: ipaddress.IPv4Network) -> Expr:
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _ip_span(lo: int, hi: int) -> Expr:
    """An IPv4 interval as a single address, a prefix if it is exactly one, else a range."""
    a = ipaddress.IPv4Address(lo)
    if lo == hi:
        return str(a)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        return {"prefix": {"addr": str(a), "len": 33 - size.bit_length()}}
    return {"range": [str(a), str(ipaddress.IPv4Address(hi))]}


def _port_span(lo: int, hi: int) -> Expr:
    return lo if lo == hi else {"range": [lo, hi]}


def _rule(chain: str, expr: list[Expr], comment: str | None = None, *, bridge: bool = False) -> Cmd:
    body = (_b if bridge else _t)(chain=chain, expr=expr)
    if comment:
        body["comment"] = comment
    return {"add": {"rule": body}}


ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}
IP_SADDR = _payload("ip", "saddr")
IP_DADDR = _payload("ip", "daddr")
IIFNAME = _meta("iifname")
OIFNAME = _meta("oifname")


def _elements(setname: str, elems: list[Expr], *, bridge: bool = False, op: str = "add") -> Cmd:
    return {op: {"element": (_b if bridge else _t)(name=setname, elem=elems)}}


# --------------------------------------------------------------------------- CIDR math


def _v4_networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network]:
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return list(ipaddress.collapse_addresses(n for n in nets if n.version == 4))


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Union of closed integer intervals; adjacent intervals are joined."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _port_elements(cidrs: Sequence[CidrRule]) -> list[Expr]:
    """Elements of the ``ipv4_addr . inet_proto . inet_service`` interval set.

    The kernel (pipapo) rejects overlapping elements, and policies may overlap freely
    (10.0.0.0/8 tcp 80-90 and 10.1.0.0/16 tcp 85-100), so the union of rectangles
    (address interval x port interval) is recomputed per protocol as disjoint pieces: cut
    the address line at every rule boundary, take the union of the ports of the rules
    covering each piece, then join neighbouring pieces with identical port sets.
    """
    out: list[Expr] = []
    for proto in ("tcp", "udp"):
        rects: list[tuple[int, int, int, int]] = []
        for rule in cidrs:
            net = rule.network
            if net.version != 4 or not rule.ports:
                continue
            lo, hi = int(net.network_address), int(net.broadcast_address)
            for pr in rule.ports:
                if proto in pr.protocols:
                    rects.append((lo, hi, pr.port, pr.last))
        if not rects:
            continue
        cuts = sorted({r[0] for r in rects} | {r[1] + 1 for r in rects})
        pieces: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
        for a, b in zip(cuts, cuts[1:]):
            ports = _merge_ranges((p0, p1) for lo, hi, p0, p1 in rects if lo <= a and b - 1 <= hi)
            if not ports:
                continue
            if pieces and pieces[-1][1] + 1 == a and pieces[-1][2] == ports:
                pieces[-1] = (pieces[-1][0], b - 1, ports)
            else:
                pieces.append((a, b - 1, ports))
        for lo, hi, ports in pieces:
            for p0, p1 in ports:
                out.append({"concat": [_ip_span(lo, hi), proto, _port_span(p0, p1)]})
    return out


def _all_port_elements(cidrs: Sequence[CidrRule]) -> list[Expr]:
    return [{"concat": [_prefix(n), {"range": [0, 255]}]} for n in _v4_networks(r.cidr for r in cidrs if not r.ports)]


# --------------------------------------------------------------------------- pieces


def _tables_fresh() -> list[Cmd]:
    """Create our tables empty, whether or not they existed ("add; delete; add")."""
    cmds: list[Cmd] = []
    for family, name in OUR_TABLES:
        t = {"table": {"family": family, "name": name}}
        cmds += [{"add": t}, {"delete": t}, {"add": t}]
    return cmds


def logdrop_chain(reason: str) -> str:
    return f"logdrop_{reason}"


def _logged_drop(router: Router, reason: str) -> Cmd:
    """The verdict of a shared rule that drops a devbox's packet for ``reason``: a jump to the
    chain that logs it (when the router logs) and drops it; else a plain drop."""
    return {"jump": {"target": logdrop_chain(reason)}} if router.log_group is not None else DROP


def _logdrop_chains(router: Router) -> list[Cmd]:
    if router.log_group is None:
        return []
    cmds: list[Cmd] = [{"add": {"set": _t(name=LOG_RATE_SET, type="ipv4_addr", flags=["timeout"], timeout=10,
                                          size=DNS_RATE_SIZE)}}]
    for reason in DROP_REASONS:
        chain = logdrop_chain(reason)
        cmds += [
            {"add": {"chain": _t(name=chain)}},
            # Over the rate, the limit ends this rule (no log) and the next one drops.
            _rule(chain, [{"set": {"op": "update", "elem": IP_SADDR, "set": "@" + LOG_RATE_SET, "stmt": [
                {"limit": {"rate": LOG_RATE_PER_SECOND, "per": "second", "burst": LOG_BURST}}]}},
                {"log": {"prefix": f"{reason} ", "group": router.log_group}}]),
            _rule(chain, [DROP]),
        ]
    return cmds


def _base(router: Router) -> list[Cmd]:
    cmds: list[Cmd] = [
        {"add": {"set": _t(name=PROTECTED_SET, type="ipv4_addr", flags=["interval"])}},
        {"add": {"set": _t(name=PRIVATE_SET, type="ipv4_addr", flags=["interval"])}},
        {"add": {"map": _t(name=VMAP, type="ipv4_addr", map="verdict")}},
        {"add": {"chain": _t(name="forward", type="filter", hook="forward", prio=0, policy="drop")}},
        {"add": {"chain": _t(name="input", type="filter", hook="input", prio=0, policy="drop")}},
        {"add": {"chain": _t(name="output", type="filter", hook="output", prio=0, policy="accept")}},
        {"add": {"chain": _t(name="postrouting", type="nat", hook="postrouting", prio=100, policy="accept")}},
        {"add": {"map": _t(name=CONNS_VMAP, type="ipv4_addr", map="verdict")}},
        {"add": {"set": _t(name=DNS_RATE_SET, type="ipv4_addr", flags=["timeout"], timeout=10,
                           size=DNS_RATE_SIZE)}},
        {"add": {"set": _t(name=ALIVE_SET, type="nf_proto", flags=["timeout"])}},
        _elements(ALIVE_SET, [{"elem": {"val": "ipv4", "timeout": router.alive_seconds,
                                        "expires": router.alive_seconds}}]),
        *_logdrop_chains(router),
        {"add": {"chain": _t(name=UNRESTRICTED_CHAIN)}},
        _rule(UNRESTRICTED_CHAIN, [_match(IP_DADDR, _subnet(router)), ACCEPT], "same account"),
        _rule(UNRESTRICTED_CHAIN, [_match(IP_DADDR, "@" + PRIVATE_SET), {"return": None}], "private networks"),
        _rule(UNRESTRICTED_CHAIN, [ACCEPT], "no policy"),
    ]
    for setname, networks in ((PROTECTED_SET, router.protected), (PRIVATE_SET, router.private)):
        nets = _v4_networks(networks)
        if nets:
            cmds.append(_elements(setname, [_prefix(n) for n in nets]))

    # "related" is conntrack's verdict on an ICMP error from the header it quotes alone,
    # whoever sends it: from the bridge it is judged like a new packet of its sender (root in
    # a devbox could otherwise carry data to any host another devbox talks to, or break
    # another devbox's flows, inside forged errors - measured). From the uplink it is the
    # world's ICMP about a devbox's flow (PMTU, unreachable) and passes.
    from_elsewhere = _match(IIFNAME, router.bridge, "!=")
    fwd = "forward"
    cmds += [
        # First, before established flows: a dead simulator's devboxes keep none of them.
        _rule(fwd, [_match(_meta("nfproto"), "@" + ALIVE_SET, "!="), DROP], "the simulator is alive"),
        _rule(fwd, [_ct_state("established"), ACCEPT]),
        _rule(fwd, [_ct_state("related"), from_elsewhere, ACCEPT]),
        _rule(fwd, [_ct_state("invalid"), DROP]),
        _rule(fwd, [_match(IIFNAME, router.uplink), DROP], "new from uplink"),
        _rule(fwd, [_match(_meta("nfproto"), "ipv6"), DROP], "devboxes are IPv4-only"),
        _rule(
            fwd,
            [
                _match(_meta("l4proto"), {"set": PORTED_PROTOCOLS}),
                _match(_payload("th", "dport"), {"set": list(BLOCKED_DNS_PORTS)}),
                _logged_drop(router, "resolver_bypass"),
            ],
            "only our resolver",
        ),
        _rule(fwd, [_match(IP_DADDR, {"set": [_prefix(ipaddress.IPv4Network(n)) for n in NEVER_FORWARD]}),
                    _logged_drop(router, "reserved_address")]),
        _rule(fwd, [_match(IP_DADDR, "@" + PROTECTED_SET), _logged_drop(router, "reserved_address")], "protected"),
        _rule(fwd, [{"vmap": {"key": IP_SADDR, "data": "@" + VMAP}}]),
        _rule(fwd, [DROP], "unknown source"),
    ]

    inp = "input"
    to_resolver = [
        _match(IIFNAME, router.bridge),
        _match(IP_DADDR, router.gateway),
        _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
        _match(_payload("th", "dport"), router.dns_port),
    ]
    cmds += [
        _rule(inp, [_match(IIFNAME, "lo"), ACCEPT]),
        # Before the conntrack accept: a flood from one socket is an established flow.
        _rule(
            inp,
            [
                *to_resolver,
                {"set": {"op": "update", "elem": IP_SADDR, "set": "@" + DNS_RATE_SET, "stmt": [
                    {"limit": {"rate": DNS_RATE_PER_SECOND, "per": "second", "burst": DNS_RATE_BURST, "inv": True}}]}},
                {"counter": None},  # packets over the limit only: the limit ends the rule otherwise
                DROP,
            ],
            DNS_FLOOD_COMMENT,
        ),
        _rule(inp, [_ct_state("established"), ACCEPT]),
        # Not from the bridge: a devbox's forged ICMP errors quoting the resolver's upstream
        # sockets failed every devbox's lookups (measured); they meet the last rule's drop.
        _rule(inp, [_ct_state("related"), from_elsewhere, ACCEPT]),
        _rule(inp, [_ct_state("invalid"), DROP]),
        _rule(inp, [*to_resolver, ACCEPT], "resolver"),
        _rule(inp, [_match(IIFNAME, router.bridge), _ct_state("new"), _logged_drop(router, "router")],
              "devboxes reach nothing else here (new: logged)"),
        _rule(inp, [_match(IIFNAME, router.bridge), DROP], "devboxes reach nothing else here"),
    ]

    # Count allowed new connections: a NAT chain sees only a connection's first packet, and only
    # packets the forward chain accepted, so the per-element counter counts connections.
    cmds.append(
        _rule(
            "postrouting",
            [_match(_meta("l4proto"), {"set": ["tcp", "udp"]}), {"vmap": {"key": IP_SADDR, "data": "@" + CONNS_VMAP}}],
            "count allowed connections (count_<key>)",
        )
    )
    # Masquerade IPv4 leaving through the uplink: the router's own resolver upstream queries,
    # and devbox traffic (from the subnet) unless the uplink routes the subnet back.
    keep_devbox_sources = [] if router.masquerade_devboxes else [_match(IP_SADDR, _subnet(router), op="!=")]
    cmds.append(
        _rule("postrouting", [_match(OIFNAME, router.uplink), _match(_meta("nfproto"), "ipv4"), *keep_devbox_sources,
                              {"masquerade": None}])
    )

    # Bridge: anti-spoofing on ingress, and a devbox port only receives IPv4 addressed to
    # its devbox (no cross-port L2 tricks: broadcast/multicast IP, foreign dst IP, VLAN).
    cmds += [
        {"add": {"set": _b(name=PORTS_SET, type="ifname")}},
        {"add": {"set": _b(name=PORT_MAC_SET, type=["ifname", "ether_addr"])}},
        {"add": {"set": _b(name=PORT_IP_SET, type=["ifname", "ipv4_addr"])}},
        {"add": {"chain": _b(name="prerouting", type="filter", hook="prerouting", prio=-300, policy="accept")}},
        {"add": {"chain": _b(name="forward", type="filter", hook="forward", prio=-200, policy="accept")}},
    ]
    ether_type = _payload("ether", "type")
    pre = "prerouting"
    for expr, comment in (
        # Every port of the bridge is a devbox's. One not (or no longer, or not yet) in the set
        # is one being attached or detached: its frames are dropped, or root in a container
        # being shut down could send as another devbox in the window (measured).
        ([_match(IIFNAME, "@" + PORTS_SET, "!="), DROP], "not a devbox port (yet or any more)"),
        ([_match({"concat": [IIFNAME, _payload("ether", "saddr")]}, "@" + PORT_MAC_SET, "!="), DROP], "spoofed MAC"),
        ([_match(ether_type, {"set": ["ip", "arp"]}, "!="), DROP], "IPv4 and ARP only"),
        ([_match(ether_type, "ip"), _match({"concat": [IIFNAME, IP_SADDR]}, "@" + PORT_IP_SET, "!="), DROP], "spoofed IP"),
        ([_match(ether_type, "arp"), _match(_payload("arp", "htype"), 1, "!="), DROP], None),
        ([_match(ether_type, "arp"), _match(_payload("arp", "ptype"), "ip", "!="), DROP], None),
        ([_match(ether_type, "arp"), _match(_payload("arp", "hlen"), 6, "!="), DROP], None),
        ([_match(ether_type, "arp"), _match(_payload("arp", "plen"), 4, "!="), DROP], None),
        (
            [_match(ether_type, "arp"), _match({"concat": [IIFNAME, _payload("arp", "saddr ether")]}, "@" + PORT_MAC_SET, "!="), DROP],
            "spoofed ARP MAC",
        ),
        (
            [_match(ether_type, "arp"), _match({"concat": [IIFNAME, _payload("arp", "saddr ip")]}, "@" + PORT_IP_SET, "!="), DROP],
            "spoofed ARP IP",
        ),
    ):
        cmds.append(_rule(pre, expr, comment, bridge=True))
    bfwd = "forward"
    for expr, comment in (
        ([_match(OIFNAME, "@" + PORTS_SET, "!="), DROP], "not to a devbox port (yet or any more)"),
        ([_match(ether_type, {"set": ["ip", "arp"]}, "!="), DROP], "IPv4 and ARP only"),
        ([_match(ether_type, "ip"), _match({"concat": [OIFNAME, IP_DADDR]}, "@" + PORT_IP_SET, "!="), DROP], "not for this devbox"),
    ):
        cmds.append(_rule(bfwd, expr, comment, bridge=True))
    return cmds


def _account(router: Router, account: str, members: Iterable[str], *, first: bool) -> list[Cmd]:
    """The account's peer set (gets ``members``) and its connection-count chain. The chain's
    one rule counts, in its own list, every new connection of every devbox of the account:
    it is written only with the account's ``first`` devbox (or a full rebuild), since a
    rewritten rule starts counting from zero; otherwise the adds are no-ops on what exists."""
    name = account_set(account)
    ips = sorted({str(ipaddress.IPv4Address(m)) for m in members}, key=lambda s: ipaddress.IPv4Address(s))
    cmds: list[Cmd] = [
        {"add": {"set": _t(name=name, type="ipv4_addr")}},
        {"add": {"chain": _t(name=account_chain(account))}},
    ]
    if first:
        cmds += [
            {"flush": {"chain": _t(name=account_chain(account))}},
            _rule(account_chain(account), [{"ct count": {"val": router.max_connections_per_account, "inv": True}},
                                           _logged_drop(router, "connection_limit")],
                  "connections over the account's share"),
        ]
    if ips:
        cmds.append(_elements(name, list(ips)))
    return cmds


def _subnet(router: Router) -> Expr:
    return _prefix(ipaddress.IPv4Network(router.subnet))


def _devbox_objects(devbox: Devbox) -> list[Cmd]:
    """The devbox's learned set, its chain (rules: _devbox_rules), and its connection counter:
    a set and the chain the NAT hook jumps to, which fills it."""
    counter = count_chain(devbox.key)
    return [
        {"add": {"set": _t(name=learned_set(devbox.key), type="ipv4_addr", flags=["timeout"])}},
        {"add": {"chain": _t(name=devbox.chain)}},
        {"add": {"set": _t(name=conns_set(devbox.key), type=["ipv4_addr", "inet_proto", "inet_service"],
                           flags=["timeout"], timeout=CONNS_TIMEOUT_S, size=CONNS_PER_DEVBOX,
                           stmt=[{"counter": None}])}},
        {"add": {"chain": _t(name=counter)}},
        {"flush": {"chain": _t(name=counter)}},
        _rule(counter, [{"set": {"op": "update", "set": "@" + conns_set(devbox.key), "elem": {"concat": [
            IP_DADDR, _meta("l4proto"), _payload("th", "dport")]}}}]),
    ]


def _devbox_rules(router: Router, devbox: Devbox) -> list[Cmd]:
    """The rules of dbx_<key> (chain already empty): learned, then the policy for what is
    outside the subnet or a peer of the same account; the rest is logged and dropped."""
    chain, subnet = devbox.chain, _subnet(router)
    policy = {"jump": {"target": devbox.target}}
    cmds = [
        # Only new connections come here (established ones are accepted before): each one is
        # counted in this rule's own list (this devbox's) until conntrack forgets it.
        _rule(chain, [{"ct count": {"val": router.max_connections_per_devbox, "inv": True}},
                      _logged_drop(router, "connection_limit")],
              "connections over the devbox's share"),
        _rule(chain, [{"jump": {"target": account_chain(devbox.account)}}]),  # the account's share
        _rule(chain, [_match(IP_DADDR, subnet, "!="), _match(IP_DADDR, "@" + PRIVATE_SET, "!="),
                      _match(IP_DADDR, "@" + learned_set(devbox.key)), ACCEPT], "hostnames"),
        _rule(chain, [_match(IP_DADDR, subnet, "!="), policy], "outside"),
        _rule(chain, [_match(IP_DADDR, "@" + account_set(devbox.account)), policy], "same account's peers"),
    ]
    if router.log_group is not None:
        cmds.append(
            _rule(
                chain,
                [
                    _ct_state("new"),
                    {"limit": {"rate": LOG_RATE_PER_SECOND, "per": "second", "burst": LOG_BURST}},
                    {"log": {"prefix": f"{chain} ", "group": router.log_group}},
                ],
            )
        )
    cmds.append(_rule(chain, [DROP]))
    return cmds


def element_key(set_name: str) -> tuple[tuple[str, ...], bool] | None:
    """(key types, interval?) of a set whose elements change at run time; None for others."""
    return _ELEMENT_KEYS.get(set_name.split("_", 1)[0])


def _policy_sets(pkey: str) -> tuple[str, ...]:
    return (cidr_set(pkey), cidrport_set(pkey), peer_flag_set(pkey), all_flag_set(pkey))


def _policy_objects(pkey: str) -> list[Cmd]:
    return [
        {"add": {"set": _t(name=cidr_set(pkey), type=list(CIDR_KEY), flags=["interval"])}},
        {"add": {"set": _t(name=cidrport_set(pkey), type=list(CIDRPORT_KEY), flags=["interval"])}},
        {"add": {"set": _t(name=peer_flag_set(pkey), type="nf_proto")}},
        {"add": {"set": _t(name=all_flag_set(pkey), type="nf_proto")}},
        {"add": {"chain": _t(name=policy_chain(pkey))}},
    ]


def _flush_policy_sets(pkey: str) -> list[Cmd]:
    return [{"flush": {"set": _t(name=name)}} for name in _policy_sets(pkey)]


def _policy_chain(router: Router, pkey: str) -> list[Cmd]:
    """The rules of pol_<pkey> (chain already empty). They are the same for every policy:
    what a policy allows is in its sets, so an update changes elements only. The chain only
    ever accepts or returns: at once for same-account subnet traffic it does not allow,
    before allow_all's accept for private networks no CIDR opened. Whatever returns goes back
    to the devbox chain, which logs and drops."""
    chain, subnet = policy_chain(pkey), _subnet(router)
    peers = _match(_meta("nfproto"), "@" + peer_flag_set(pkey))
    allow_all = _match(_meta("nfproto"), "@" + all_flag_set(pkey))
    return [
        _rule(chain, [_match(IP_DADDR, subnet), peers, ACCEPT], "same account"),
        _rule(chain, [_match(IP_DADDR, subnet), {"return": None}], "other devboxes"),
        _rule(chain, [_match({"concat": [IP_DADDR, _meta("l4proto")]}, "@" + cidr_set(pkey)), ACCEPT], "cidrs"),
        _rule(chain, [_match({"concat": [IP_DADDR, _meta("l4proto"), _payload("th", "dport")]},
                             "@" + cidrport_set(pkey)), ACCEPT], "cidr ports"),
        # After the CIDRs: under allow_all they are what opens a private network.
        _rule(chain, [allow_all, _match(IP_DADDR, "@" + PRIVATE_SET), {"return": None}], "private networks"),
        _rule(chain, [allow_all, ACCEPT], "allow_all"),
    ]


def _policy_elements(pkey: str, egress: Egress) -> list[Cmd]:
    """What policy ``pkey`` allows, as elements of its sets (sets already empty)."""
    cmds: list[Cmd] = []
    if egress.allow_all or egress.allow_devbox_to_devbox:
        cmds.append(_elements(peer_flag_set(pkey), [FLAG_ON]))
    if egress.allow_all:
        cmds.append(_elements(all_flag_set(pkey), [FLAG_ON]))
    all_ports = _all_port_elements(egress.cidrs)
    with_ports = _port_elements(egress.cidrs)
    if all_ports:
        cmds.append(_elements(cidr_set(pkey), all_ports))
    if with_ports:
        cmds.append(_elements(cidrport_set(pkey), with_ports))
    return cmds


def _attach(devbox: Devbox) -> list[Cmd]:
    return [
        _elements(VMAP, [[devbox.ip, {"jump": {"target": devbox.chain}}]]),
        _elements(CONNS_VMAP, [[devbox.ip, {"jump": {"target": count_chain(devbox.key)}}]]),
        _elements(PORTS_SET, [devbox.port], bridge=True),
        _elements(PORT_MAC_SET, [{"concat": [devbox.port, devbox.mac]}], bridge=True),
        _elements(PORT_IP_SET, [{"concat": [devbox.port, devbox.ip]}], bridge=True),
    ]


def _learned_elems(entries: Iterable[tuple[str, int]]) -> list[Expr]:
    latest: dict[str, int] = {}
    for ip, timeout in entries:
        t = int(timeout)
        if t < 1:
            raise ValueError(f"timeout must be >= 1 second: {timeout!r}")
        latest[str(ipaddress.IPv4Address(ip))] = t
    return [{"elem": {"val": ip, "timeout": t, "expires": t}} for ip, t in latest.items()]


# --------------------------------------------------------------------------- public API


def bootstrap(router: Router) -> dict:
    """Our tables, recreated empty (old ones removed in the same transaction), with base
    chains, maps and sets. Idempotent."""
    return _doc(_tables_fresh() + _base(router))


def add_policy(router: Router, pkey: str, egress: Egress) -> dict:
    """Create policy ``pkey``'s chain and CIDR sets (or, if present, flush and refill them).
    Concatenate it before the ``add_devbox`` of the policy's first devbox."""
    _check_key("policy key", pkey)
    return _doc(_policy_objects(pkey) + [{"flush": {"chain": _t(name=policy_chain(pkey))}}]
                + _policy_chain(router, pkey) + _flush_policy_sets(pkey) + _policy_elements(pkey, egress))


def update_policy(pkey: str, egress: Egress) -> dict:
    """Swap what policy ``pkey`` allows in one transaction: flush its sets and refill them
    (its chain stays: it is the same for every policy). Every devbox using the policy sees
    the change at once; the cost does not depend on how many devboxes use it. The document
    changes set elements only (``element_key`` knows every set it touches), so it can go
    by raw netlink. Learned sets are the caller's business (it removes the addresses of
    names the update revoked)."""
    _check_key("policy key", pkey)
    return _doc(_flush_policy_sets(pkey) + _policy_elements(pkey, egress))


def remove_policy(pkey: str) -> dict:
    """Delete policy ``pkey``'s chain and sets. Fails (atomically) if a devbox chain still
    jumps to it: concatenate it after the ``remove_devbox``/``move_devbox`` of its last user."""
    _check_key("policy key", pkey)
    return _doc(
        [
            {"flush": {"chain": _t(name=policy_chain(pkey))}},
            {"delete": {"chain": _t(name=policy_chain(pkey))}},
            *({"delete": {"set": _t(name=name)}} for name in _policy_sets(pkey)),
        ]
    )


def add_devbox(router: Router, devbox: Devbox, account_members: Iterable[str] = (), *,
               first_of_account: bool = False) -> dict:
    """Add a devbox: its account set (created if needed) gets ``account_members`` (IPs of the
    account's peer devboxes) plus the devbox's own IP if it is a peer; its account's
    connection-count chain is created, and its rule written when ``first_of_account`` (pass it
    when the account has no other devbox here: rewriting the rule would reset the count);
    its chain, learned set and connection counter are created; then the source-IP vmaps and
    bridge anti-spoofing sets get its elements. The devbox must not be present: adding it
    again fails as a whole and changes nothing (its counter set is "dynamic" to the kernel as
    soon as the counting rule refers to it, a flag this libnftables cannot repeat in JSON, so
    the kernel refuses the second add; the data plane never reuses the address of a devbox
    whose removal failed). Its policy chain must exist (``add_policy`` earlier in
    the same or a previous transaction), unless ``devbox.policy`` is None."""
    return _doc(
        _account(router, devbox.account, [*account_members, *([devbox.ip] if devbox.peer else [])],
                 first=first_of_account)
        + _devbox_objects(devbox)
        + [{"flush": {"chain": _t(name=devbox.chain)}}]
        + _devbox_rules(router, devbox)
        + _attach(devbox)
    )


def move_devbox(router: Router, devbox: Devbox, *, flush_learned: bool = True) -> dict:
    """Point a devbox at ``devbox.policy`` (rewrite its chain's jump; the target chain must
    exist). Its learned set is flushed too (fail closed: the new policy may allow fewer
    names) unless ``flush_learned`` is False."""
    cmds: list[Cmd] = [{"flush": {"chain": _t(name=devbox.chain)}}]
    if flush_learned:
        cmds += learned_flush(devbox.key)["nftables"]
    return _doc(cmds + _devbox_rules(router, devbox))


def remove_devbox(router: Router, devbox: Devbox, *, drop_account_set: bool = False) -> dict:
    """Detach and delete a devbox's elements, chain and learned set. ``drop_account_set``
    also deletes its account set and chain (pass it when this was the account's last devbox). Fails
    (atomically) if the devbox is not present. Its policy chain is left alone."""
    cmds: list[Cmd] = [
        _elements(VMAP, [devbox.ip], op="delete"),
        _elements(CONNS_VMAP, [devbox.ip], op="delete"),
        _elements(PORTS_SET, [devbox.port], bridge=True, op="delete"),
        _elements(PORT_MAC_SET, [{"concat": [devbox.port, devbox.mac]}], bridge=True, op="delete"),
        _elements(PORT_IP_SET, [{"concat": [devbox.port, devbox.ip]}], bridge=True, op="delete"),
        {"flush": {"chain": _t(name=devbox.chain)}},
        {"delete": {"chain": _t(name=devbox.chain)}},
        {"delete": {"set": _t(name=learned_set(devbox.key))}},
        {"flush": {"chain": _t(name=count_chain(devbox.key))}},
        {"delete": {"chain": _t(name=count_chain(devbox.key))}},
        {"delete": {"set": _t(name=conns_set(devbox.key))}},
    ]
    if drop_account_set:
        cmds.append({"delete": {"set": _t(name=account_set(devbox.account))}})
        cmds += [{"flush": {"chain": _t(name=account_chain(devbox.account))}},
                 {"delete": {"chain": _t(name=account_chain(devbox.account))}}]
    elif devbox.peer:
        cmds.append(_elements(account_set(devbox.account), [devbox.ip], op="delete"))
    return _doc(cmds)


def set_peer(devbox: Devbox, peer: bool) -> dict:
    """Add the devbox to its account set (``peer``) or remove it: its policy started or
    stopped allowing devbox-to-devbox. Pass the devbox as it was (``devbox.peer`` != ``peer``)."""
    if devbox.peer == peer:
        return _doc([])
    return _doc([_elements(account_set(devbox.account), [devbox.ip], op="add" if peer else "delete")])


def ensure_peer(devbox: Devbox) -> dict:
    """Make the devbox's account set hold its IP exactly when ``devbox.peer``, whatever it
    holds now: add, then (not a peer) delete, since a delete alone fails on an absent element."""
    name = account_set(devbox.account)
    cmds = [_elements(name, [devbox.ip])]
    if not devbox.peer:
        cmds.append(_elements(name, [devbox.ip], op="delete"))
    return _doc(cmds)


def learned_add(devbox_key: str, entries: Iterable[tuple[str, int]]) -> dict:
    """Insert or re-arm learned addresses ``[(ip, timeout_seconds)]`` (see module doc: the
    explicit ``expires`` is what refreshes an existing element). Duplicate IPs: last wins."""
    _check_key("devbox key", devbox_key)
    elems = _learned_elems(entries)
    return _doc([_elements(learned_set(devbox_key), elems)] if elems else [])


def learned_flush(devbox_key: str) -> dict:
    """Forget every address the devbox learned."""
    _check_key("devbox key", devbox_key)
    return _doc([{"flush": {"set": _t(name=learned_set(devbox_key))}}])


def learned_remove(devbox_key: str, ips: Iterable[str]) -> dict:
    """Remove learned addresses; succeeds whether or not they are (still) present: each is
    first (re-)added with a 1 s timeout, then deleted, in the same transaction."""
    _check_key("devbox key", devbox_key)
    elems = _learned_elems((ip, _REMOVE_TIMEOUT) for ip in ips)
    if not elems:
        return _doc([])
    name = learned_set(devbox_key)
    return _doc([_elements(name, elems), _elements(name, [e["elem"]["val"] for e in elems], op="delete")])


def full(
    router: Router,
    devboxes: Iterable[Devbox],
    policies: Mapping[str, Egress] | None = None,
    learned: Mapping[str, Iterable[tuple[str, int]]] | None = None,
) -> dict:
    """The complete desired state in one transaction (for reconcile): our tables are replaced.
    ``policies`` maps policy keys to their egress: every devbox's policy must be there (a
    policy nobody uses is not created). ``learned`` optionally restores learned addresses per
    devbox key (otherwise they are lost, as the sets are recreated)."""
    boxes = sorted(devboxes, key=lambda d: d.key)
    keys = [d.key for d in boxes]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate devbox keys")
    ips = [d.ip for d in boxes]
    if len(set(ips)) != len(ips):
        raise ValueError("duplicate devbox IPs")
    policies = dict(policies or {})
    used = sorted({d.policy for d in boxes if d.policy is not None})
    missing = [p for p in used if p not in policies]
    if missing:
        raise ValueError(f"devboxes use unknown policies: {missing}")
    members: dict[str, list[str]] = {}
    for d in boxes:
        members.setdefault(d.account, [])
        if d.peer:
            members[d.account].append(d.ip)
    cmds = _tables_fresh() + _base(router)
    for account in sorted(members):
        cmds += _account(router, account, members[account], first=True)
    for pkey in used:
        _check_key("policy key", pkey)
        cmds += _policy_objects(pkey) + _policy_chain(router, pkey) + _policy_elements(pkey, policies[pkey])
    for d in boxes:
        cmds += _devbox_objects(d) + _devbox_rules(router, d)
        entries = _learned_elems((learned or {}).get(d.key, ()))
        if entries:
            cmds.append(_elements(learned_set(d.key), entries))
        cmds += _attach(d)
    return _doc(cmds)


__all__ = [
    "BRIDGE_TABLE",
    "OUR_TABLES",
    "TABLE",
    "TABLE_PREFIX",
    "UNRESTRICTED_CHAIN",
    "CidrRule",
    "Devbox",
    "Egress",
    "PortRange",
    "Router",
    "account_chain",
    "account_set",
    "add_devbox",
    "add_policy",
    "all_flag_set",
    "bootstrap",
    "cidr_set",
    "cidrport_set",
    "conns_set",
    "count_chain",
    "devbox_chain",
    "element_key",
    "ensure_peer",
    "full",
    "learned_add",
    "learned_remove",
    "learned_set",
    "logdrop_chain",
    "move_devbox",
    "peer_flag_set",
    "policy_chain",
    "remove_devbox",
    "remove_policy",
    "set_peer",
    "update_policy",
]
