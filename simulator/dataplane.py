"""The data plane: one router namespace per simulator, shared by every devbox runtime.

::

    devbox netns ──veth──▶ router netns: bridge br0 (gateway .1) ──uplink0──▶ world netns
       eth0 10.88.x.y        │ nftables (netns.ruleset, applied by netns.nft)   (or the host)
                             │ resolver on gateway:53 (dns.Resolver + DnsServer)
                             │     answers -> on_answer -> learned set, BEFORE the reply
                             ▼
                          policy updates -> one nft transaction per devbox + conntrack cut

Runtimes call ``connect`` (a namespace by name, or a container's by pid) and ``disconnect``;
the policy service calls ``policy_updated`` inside its update transaction, so a failure rolls
the stored update back. The resolver only reports answers; this module opens them in nftables.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dns import AnswerCache, ClientView, DnsServer, HostnameMatcher, QueryEvent, Resolver, Upstream, bind_udp_tcp
from netns import conntrack, links, namespaces, ruleset
from netns.nft import Nft
from simulator.addresses import Address, AddressPool
from simulator.policy_model import NetworkPolicy
from simulator.policy_rules import egress_for, flow_allowed
from simulator.world import World, WorldConfig

log = logging.getLogger(__name__)

# Learned addresses stay open for max(TTL, floor) + grace: a short TTL must not close a
# connection an agent opened right after resolving, and the grace covers clock skew between
# the answer and the connect.
LEARN_FLOOR_SECONDS = 60
LEARN_GRACE_SECONDS = 30
LOCAL_SUFFIX = "devbox.internal"
NS_PREFIX = "dbxs-"


def instance_id(data_dir: Path) -> str:
    """Short, stable id for a simulator instance (its data dir): names its kernel objects."""
    return hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:6]


@dataclass
class Attached:
    devbox_id: str
    account: str
    account_key: str
    address: Address
    policy: NetworkPolicy | None
    name: str | None = None
    # ip -> {queried name -> expiry (monotonic)}: what the resolver opened, and why.
    learned: dict[str, dict[str, float]] = field(default_factory=dict)
    view: ClientView | None = None


@dataclass(frozen=True)
class DataPlaneConfig:
    instance: str
    subnet: str = "10.88.0.0/16"
    uplink: str = "offline"  # "offline" (world namespace) or "host"
    world: WorldConfig | None = None
    upstream_dns: tuple[tuple[str, int], ...] = ()  # host mode; default: the host's resolv.conf
    log_group: int | None = None


class DataPlane:
    def __init__(self, config: DataPlaneConfig):
        self.config = config
        self.router_ns = f"{NS_PREFIX}{config.instance}-r"
        self.world_ns = f"{NS_PREFIX}{config.instance}-w"
        self.devbox_ns_prefix = f"{NS_PREFIX}{config.instance}-d"
        self.pool = AddressPool(config.subnet)
        self.gateway = self.pool.gateway
        self._router = links.Router(self.router_ns, gateway=self.gateway, prefix=self.pool.network.prefixlen)
        self._rules_router: ruleset.Router | None = None
        self._nft: Nft | None = None
        self._world: World | None = None
        self._dns: DnsServer | None = None
        self.resolver: Resolver | None = None
        self._lock = threading.RLock()
        self._by_id: dict[str, Attached] = {}
        self._by_ip: dict[str, Attached] = {}
        self.query_listeners: list = []  # callables(devbox_id | None, QueryEvent), e.g. an event log

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.remove_orphans()
        try:
            self._router.setup()
            if self.config.uplink == "offline":
                self._world = World(self.world_ns, self.config.world or WorldConfig())
                self._world.start()
                uplink = self._router.uplink_offline(self.world_ns)
                upstream = [(self._world.config.resolver, 53)]
                protected: tuple[str, ...] = ()
            elif self.config.uplink == "host":
                uplink = self._router.uplink_host(f"dbxs{self.config.instance}")
                upstream = list(self.config.upstream_dns) or host_nameservers()
                protected = (uplink.peer_address, "169.254.0.0/16")
            else:
                raise ValueError(f"unknown uplink {self.config.uplink!r} (offline or host)")
            self._rules_router = ruleset.Router(
                bridge=self._router.bridge,
                gateway=self.gateway,
                subnet=str(self.pool.network),
                uplink=uplink.router_ifname,
                protected=protected,
                log_group=self.config.log_group,
            )
            self._nft = Nft(self.router_ns)
            self._nft.apply(ruleset.bootstrap(self._rules_router))
            self._start_resolver(upstream)
        except BaseException:
            self.stop()
            raise
        log.info("data plane up: router %s, gateway %s, uplink %s", self.router_ns, self.gateway, self.config.uplink)

    def _start_resolver(self, upstream: list[tuple[str, int]]) -> None:
        router_ns = self.router_ns

        def socket_in_router(family, type_):
            return namespaces.socket_in(router_ns, family, type_)

        self.resolver = Resolver(
            self._client_view,
            Upstream(upstream, timeout=2.0, socket_factory=socket_in_router),
            on_answer=self._on_answer,
            on_query=self._on_query,
            cache=AnswerCache(),
        )
        with namespaces.entered(router_ns):
            udp, tcp = bind_udp_tcp(self.gateway, 53)
        self._dns = DnsServer(self.resolver.resolve, udp_sockets=[udp], tcp_sockets=[tcp], name="resolver")
        self._dns.start()

    def stop(self) -> None:
        """Tear everything down: devboxes lose their network (fail closed)."""
        if self._dns is not None:
            self._dns.stop()
            self._dns = None
        if self._nft is not None:
            self._nft.close()
            self._nft = None
        self._router.teardown()
        if self._world is not None:
            self._world.stop()
            self._world = None
        with self._lock:
            self._by_id.clear()
            self._by_ip.clear()

    @property
    def uplink_address(self) -> str | None:
        """The router's own address on the uplink (never reachable from devboxes)."""
        uplink = self._router.uplink
        return uplink.router_address if uplink else None

    def stop_resolver(self) -> None:
        """Stop answering DNS (used to prove devboxes stay closed without the resolver)."""
        if self._dns is not None:
            self._dns.stop()
            self._dns = None

    def remove_orphans(self) -> list[str]:
        """Delete kernel objects a previous run of this instance left (e.g. after kill -9)."""
        removed = []
        for name in namespaces.list_names(f"{NS_PREFIX}{self.config.instance}-"):
            if name == self.router_ns:
                self._router.teardown()  # also removes a host uplink it owned
            elif name == self.world_ns:
                links.World(name).teardown()
            else:
                namespaces.delete(name)
            removed.append(name)
        if removed:
            log.warning("removed %d orphaned namespaces: %s", len(removed), ", ".join(removed))
        return removed

    # --- devboxes ---------------------------------------------------------------------------

    def devbox_netns(self, address: Address) -> str:
        return f"{self.devbox_ns_prefix}{address.slot:x}"

    def allocate(self) -> Address:
        return self.pool.allocate()

    def release(self, address: Address) -> None:
        self.pool.release(address.slot)

    def connect(
        self,
        devbox_id: str,
        account: str,
        policy: NetworkPolicy | None,
        address: Address,
        *,
        netns: str | None = None,
        pid: int | None = None,
        name: str | None = None,
    ) -> Attached:
        """Plug a devbox namespace into the bridge and enforce its policy, all or nothing."""
        attached = Attached(devbox_id, account, _account_key(account), address, policy, name)
        attached.view = _client_view(attached, self._local_answer)
        self._router.attach(netns, pid, port_ifname=address.port, ip=address.ip, mac=address.mac)
        try:
            with self._lock:
                members = [a.address.ip for a in self._by_id.values() if a.account == account]
                self._nft.apply(ruleset.add_devbox(self._rules_router, self._rules_devbox(attached), members))
                self._by_id[devbox_id] = attached
                self._by_ip[address.ip] = attached
        except BaseException:
            self._router.detach(address.port)
            raise
        return attached

    def disconnect(self, devbox_id: str) -> None:
        with self._lock:
            attached = self._by_id.pop(devbox_id, None)
            if attached is None:
                return
            self._by_ip.pop(attached.address.ip, None)
            last = not any(a.account == attached.account for a in self._by_id.values())
            try:
                self._nft.apply(
                    ruleset.remove_devbox(self._rules_router, self._rules_devbox(attached), drop_account_set=last)
                )
            except Exception:
                log.exception("removing nft state of %s", devbox_id)
        self._router.detach(attached.address.port)
        conntrack.delete(self.router_ns, attached.address.ip)

    def attached(self, devbox_id: str) -> Attached | None:
        return self._by_id.get(devbox_id)

    def _rules_devbox(self, attached: Attached) -> ruleset.Devbox:
        a = attached.address
        return ruleset.Devbox(
            key=a.key, account=attached.account_key, ip=a.ip, mac=a.mac, port=a.port,
            egress=egress_for(attached.policy),
        )

    # --- policies ---------------------------------------------------------------------------

    def policy_updated(self, before: NetworkPolicy, after: NetworkPolicy) -> None:
        """Enforce an updated policy on every devbox using it before the API answers:
        one nft transaction for all of them, then cut the flows the update revoked."""
        with self._lock:
            affected = [a for a in self._by_id.values() if a.policy and a.policy.id == after.id]
            if not affected:
                return
            doc: dict = {"nftables": []}
            for attached in affected:
                doc["nftables"] += self._swap_commands(attached, after)
            self._nft.apply(doc)
            self._cut_revoked_flows(affected)

    def _swap_commands(self, attached: Attached, policy: NetworkPolicy | None) -> list:
        """nft commands moving one devbox to ``policy``; learned addresses whose names the
        policy no longer allows are dropped (and so are not re-added after the flush)."""
        view = _client_view_for(policy, attached, self._local_answer)
        now = time.monotonic()
        kept: dict[str, dict[str, float]] = {}
        for ip, names in attached.learned.items():
            still = {n: exp for n, exp in names.items() if exp > now and _allows_name(view, n)}
            if still:
                kept[ip] = still
        attached.policy, attached.view, attached.learned = policy, view, kept
        devbox = self._rules_devbox(attached)
        entries = [(ip, max(1, int(max(names.values()) - now))) for ip, names in kept.items()]
        return (
            ruleset.update_egress(self._rules_router, devbox)["nftables"]
            + ruleset.learned_add(devbox.key, entries)["nftables"]
        )

    def _cut_revoked_flows(self, affected: list[Attached]) -> None:
        by_ip = {a.address.ip: a for a in affected}
        subnet = self.pool.network
        for flow in conntrack.flows(self.router_ns):
            attached = by_ip.get(flow.src)
            if attached is None or ipaddress.ip_address(flow.dst) in subnet:
                continue  # not ours, or devbox-to-devbox/resolver flows (they follow the account sets)
            egress = egress_for(attached.policy)
            if not flow_allowed(egress, set(attached.learned), flow.dst, flow.proto, flow.dport):
                conntrack.delete(self.router_ns, flow.src, flow.dst, dport=flow.dport, proto=flow.proto)

    # --- resolver callbacks (DNS threads) --------------------------------------------------

    def _client_view(self, client_ip: str) -> ClientView | None:
        attached = self._by_ip.get(client_ip)
        return attached.view if attached else None

    def _on_answer(self, client_ip: str, qname: str, answers: list[tuple[str, int]]) -> None:
        attached = self._by_ip.get(client_ip)
        if attached is None:
            raise LookupError(f"no devbox at {client_ip}")
        now = time.monotonic()
        entries = []
        for address, ttl in answers:
            if ":" in address:
                continue  # devboxes are IPv4-only
            timeout = max(ttl, LEARN_FLOOR_SECONDS) + LEARN_GRACE_SECONDS
            attached.learned.setdefault(address, {})[qname] = now + timeout
            entries.append((address, timeout))
        restricted = attached.policy is not None and not attached.policy.egress.allow_all
        if entries and restricted:
            # Raising here makes the resolver answer SERVFAIL: never an address nft lacks.
            self._nft.apply(ruleset.learned_add(attached.address.key, entries))

    def _on_query(self, event: QueryEvent) -> None:
        attached = self._by_ip.get(event.client_ip)
        for listener in self.query_listeners:
            listener(attached.devbox_id if attached else None, event)

    def _local_answer(self, account: str, qname: str, qtype: str) -> list[str] | None:
        """``<devbox-id>.devbox.internal`` (id lower-cased, ``_`` as ``-``) or
        ``<name>.devbox.internal``: another devbox of the same account."""
        if not qname.endswith("." + LOCAL_SUFFIX):
            return None
        label = qname[: -len(LOCAL_SUFFIX) - 1]
        for other in list(self._by_id.values()):
            if other.account != account:
                continue
            if label in (other.devbox_id.lower().replace("_", "-"), (other.name or "").lower()):
                return [other.address.ip] if qtype in ("A", "ANY") else []
        return None  # unknown: the policy decides, like any other name (usually NXDOMAIN)


def _account_key(account: str) -> str:
    return "a" + hashlib.sha1(account.encode()).hexdigest()[:12]


def _client_view(attached: Attached, local) -> ClientView:
    return _client_view_for(attached.policy, attached, local)


def _client_view_for(policy: NetworkPolicy | None, attached: Attached, local) -> ClientView:
    account = attached.account

    def local_answer(qname: str, qtype: str):
        return local(account, qname, qtype)

    if policy is None or policy.egress.allow_all:
        return ClientView(matcher=None, allow_all=True, local_answer=local_answer)
    patterns = policy.egress.allowed_hostnames
    return ClientView(matcher=HostnameMatcher(patterns) if patterns else None, allow_all=False, local_answer=local_answer)


def _allows_name(view: ClientView, name: str) -> bool:
    return view.allow_all or (view.matcher is not None and view.matcher.match(name) is not None)


def host_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The host's upstream DNS servers, skipping loopback ones (unreachable from the router)."""
    candidates = [path, "/run/systemd/resolve/resolv.conf"]
    for candidate in candidates:
        try:
            lines = Path(candidate).read_text().splitlines()
        except OSError:
            continue
        servers = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    address = ipaddress.ip_address(parts[1])
                except ValueError:
                    continue
                if address.version == 4 and not address.is_loopback:
                    servers.append((str(address), 53))
        if servers:
            return servers
    raise RuntimeError("no usable upstream DNS server in /etc/resolv.conf; pass --upstream-dns")
