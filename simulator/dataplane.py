"""The data plane: one router namespace per simulator, shared by every devbox runtime.

::

    devbox netns ──veth──▶ router netns: bridge br0 (gateway .1) ──uplink0──▶ world netns
       eth0 10.88.x.y        │ nftables (netns.ruleset, applied by netns.nft)   (or the host)
                             │ resolver on gateway:53 (dns.Resolver + DnsServer)
                             │     answers -> on_answer -> learned set, BEFORE the reply
                             ▼
                          policy updates -> one nft transaction rewriting the policy's chain
                                            (+ learned/conntrack cuts when it revokes anything)

Runtimes call ``connect`` (a namespace by name, or a container's by pid) and ``disconnect``;
the policy service calls ``policy_updated`` inside its update transaction, so a failure rolls
the stored update back. The resolver only reports answers; this module opens them in nftables.

nftables layout (``netns.ruleset`` v2): every devbox has a small chain of its own (subnet guard,
learned addresses, jump to its policy) and every policy in use has ONE chain + CIDR sets shared
by its devboxes, created with its first devbox and deleted with its last. A policy update
rewrites that one chain: its cost does not depend on how many devboxes use the policy. Only an
update that revokes something (``policy_rules.revokes_nothing`` is False) also touches the
devboxes: learned addresses of names no longer allowed are removed, and established flows the
new policy does not allow are cut, found in a live mirror of the router's conntrack table
(``conntrack.Tracker``: a kernel dump walks the global conntrack hash table, ~6 ms).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from dns import AnswerCache, ClientView, DnsServer, HostnameMatcher, QueryEvent, Resolver, Upstream, bind_udp_tcp
from dns.cache import MAX_CACHE_SECONDS, cache_seconds
from netns import conntrack, links, namespaces, ruleset
from netns.deadman import Deadman
from netns.heartbeat import Heartbeat
from netns.nflog import LoggedPacket, NflogReader
from netns.nft import Nft, NftError
from netns.nft_element_json import set_ops
from netns.nft_elements import NftElementsError, SetElements
from simulator.addresses import Address, AddressPool
from simulator.data_dir_lock import lock_instance, release_instance
from simulator.policy_model import NetworkPolicy
from simulator.policy_rules import accepts_peers, egress_for, flow_allowed, revokes_nothing
from simulator.world import World, WorldConfig

log = logging.getLogger(__name__)

# Learned addresses stay open for max(TTL, floor) + grace: a short TTL must not close a
# connection an agent opened right after resolving, and the grace covers clock skew between
# the answer and the connect.
LEARN_FLOOR_SECONDS = 60
LEARN_GRACE_SECONDS = 30
# ...and at most a day (the cache's ceiling): an upstream's TTL of years must not open an
# address for as long.
LEARN_CEILING_SECONDS = MAX_CACHE_SECONDS
# An answer re-arms an address the kernel already holds only if that moves its expiry later
# by more than this: answers (cache hits above all) come far more often than netlink writes
# are worth, and the slack is a third of the grace, so every answer's TTL stays covered.
REARM_SLACK_SECONDS = 10
# Allowed-connection counts of devboxes that have gone, kept for reading afterwards: this many
# destinations in all (each devbox's set holds at most ruleset.CONNS_PER_DEVBOX).
DEPARTED_COUNTS_KEPT = 200_000
DEPARTED_DEVBOXES_KEPT = 20_000
# What the data plane remembers of a devbox's answers (address -> names) stays bounded,
# whatever it resolves (a wildcard DNS answers every name): once a devbox has LEARNED_PRUNE_AT
# names (then twice what was left), the expired ones of addresses it has no connection to are
# forgotten (nothing else may be: an update cuts a connection by its names). More than
# MAX_LEARNED_NAMES names answered within their windows: further new names get SERVFAIL.
LEARNED_PRUNE_AT = 4096
MAX_LEARNED_NAMES = 16384


def learn_timeout(ttl: int) -> int:
    """Seconds an answered address stays in the devbox's learned set."""
    return max(LEARN_FLOOR_SECONDS, min(cache_seconds(ttl), LEARN_CEILING_SECONDS)) + LEARN_GRACE_SECONDS
LOCAL_SUFFIX = "devbox.internal"
# The resolver's threads are shared by every devbox; one devbox may have at most
# RESOLVER_UPSTREAM_PER_DEVBOX lookups waiting on the upstream (more get SERVFAIL, reason
# client_busy), so a devbox asking for names the upstream never answers ties up at most a
# quarter of them and the others' queries, cache hits above all, are still answered.
RESOLVER_THREADS = 64
RESOLVER_UPSTREAM_PER_DEVBOX = 16
RESOLVER_UPSTREAM_PER_ACCOUNT = RESOLVER_THREADS // 2
# Likewise TCP (where truncated answers are fetched): 64 connections in all, 8 per devbox, and
# queries over TCP paced to the rate the firewall holds UDP to (ruleset.DNS_RATE_*): pipelined
# queries ride in few packets, which a per-packet limit does not see.
RESOLVER_TCP_CONNECTIONS = 64
RESOLVER_TCP_PER_DEVBOX = 8
# Answers cached per account: each account its own LRU of at most 1,024, never evicted by
# another's; the whole cache at most 32,768 (~1 KB each), so 32 accounts can fill theirs
# before a new one finds no room (dns/cache.py). An account's go with its last devbox.
RESOLVER_CACHE_ENTRIES = 32768
RESOLVER_CACHE_PER_ACCOUNT = 1024
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
    # ip -> {queried name -> expiry (monotonic)}: what the resolver opened, and why.
    learned: dict[str, dict[str, float]] = field(default_factory=dict)
    view: ClientView | None = None
    # ip -> when its nft element expires, as last armed by the resolver path. Trusted only
    # while the ip is in ``learned`` (swaps rewrite both); a stale value just means a re-add.
    armed: dict[str, float] = field(default_factory=dict)
    # How many names ``learned`` holds (kept as answers come; recounted after bulk changes),
    # and at how many the next answer first forgets unused expired ones.
    names: int = 0
    prune_at: int = 0
    next_prune: float = 0.0  # (monotonic) not before


@dataclass
class _PolicyState:
    """A policy enforced in the router: its chain exists while ``users`` is not empty."""

    key: str
    policy: NetworkPolicy
    users: set[str] = field(default_factory=set)  # devbox ids
    views: dict[str, ClientView] = field(default_factory=dict)  # account -> shared view


@dataclass(frozen=True)
class DataPlaneConfig:
    instance: str
    subnet: str = "10.88.0.0/16"
    uplink: str = "offline"  # "offline" (world namespace) or "host"
    world: WorldConfig | None = None
    upstream_dns: tuple[tuple[str, int], ...] = ()  # host mode; default: the host's resolv.conf
    # NFLOG group for dropped new connections (rate-limited per devbox), read in-process for
    # the decision log; groups are per network namespace. None: no logging.
    log_group: int | None = 1
    # Private networks: "open" (like any destination) or "by-cidr" (only an allowed CIDR opens
    # them, not allow_all, no policy or a DNS answer: see netns.ruleset).
    private_networks: str = "open"
    # New connections beyond this many held at once by one devbox are dropped (see
    # netns.ruleset.Router.max_connections_per_devbox).
    max_connections_per_devbox: int = ruleset.Router.max_connections_per_devbox
    # ... and by all devboxes of one account together (Router.max_connections_per_account).
    max_connections_per_account: int = ruleset.Router.max_connections_per_account
    # Forwarding lasts this long after the simulator's last heartbeat (netns.heartbeat).
    alive_seconds: int = ruleset.Router.alive_seconds


class DataPlane:
    def __init__(self, config: DataPlaneConfig):
        if config.private_networks not in ("open", "by-cidr"):
            raise ValueError(f"private_networks must be open or by-cidr, not {config.private_networks!r}")
        self.config = config
        self.router_ns = f"{NS_PREFIX}{config.instance}-r"
        self.world_ns = f"{NS_PREFIX}{config.instance}-w"
        self.devbox_ns_prefix = f"{NS_PREFIX}{config.instance}-d"
        self.pool = AddressPool(config.subnet)
        self.gateway = self.pool.gateway
        self._router = links.Router(self.router_ns, gateway=self.gateway, prefix=self.pool.network.prefixlen)
        self._rules_router: ruleset.Router | None = None
        self._nft: Nft | None = None
        # The resolver's hot path (learned addresses) bypasses libnftables: see netns.nft_elements.
        self._elements: SetElements | None = None
        self._world: World | None = None
        self._dns: DnsServer | None = None
        self.resolver: Resolver | None = None
        self._lock = threading.RLock()
        self._by_id: dict[str, Attached] = {}
        self._by_ip: dict[str, Attached] = {}
        self._policies: dict[str, _PolicyState] = {}  # policy key -> state
        self._conntrack: conntrack.Tracker | None = None
        # callables(devbox_id | None, QueryEvent, policy in force | None), e.g. an event log
        self.query_listeners: list = []
        # callables(devbox_id, nflog.LoggedPacket, reason, policy in force | None): dropped attempts
        self.block_listeners: list = []
        self._nflog: NflogReader | None = None
        self._deadman: Deadman | None = None  # turns the router's forwarding off if we die
        self._heartbeat: Heartbeat | None = None  # without it, the router forwards nothing
        self._instance_lock: int | None = None  # lock_instance's descriptor while started
        self._latest: dict[str, NetworkPolicy] = {}  # policy id -> newest version seen
        # devbox id -> its allowed-connection counts when it went (oldest first, bounded)
        self._departed_counts: dict[str, list[dict]] = {}
        self._departed_total = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        # Before anything of the instance is touched; released by stop(). Refused (InstanceInUse)
        # if another live data plane has this id.
        self._instance_lock = lock_instance(self.config.instance)
        try:
            self.remove_orphans()
        except BaseException:
            self._release_instance()
            raise
        try:
            self._router.setup()
            if self._deadman is None:  # from now on, if we die, the router stops forwarding
                self._deadman = Deadman(self.router_ns).start()
            if self.config.uplink == "offline":
                self._world = World(self.world_ns, self.config.world or WorldConfig())
                self._world.start()
                uplink = self._router.uplink_offline(self.world_ns)
                upstream = [(self._world.config.resolver, 53)]
                protected: tuple[str, ...] = ()
            elif self.config.uplink == "host":
                uplink = self._router.uplink_host(f"{links.HOST_UPLINK_PREFIX}{self.config.instance}",
                                                  links.host_link_net(self.config.instance))
                upstream = list(self.config.upstream_dns) or host_nameservers()
                # The host's own addresses are dropped by its uplink table anyway; here they
                # are dropped (and logged, not counted) before they leave the router.
                protected = (uplink.peer_address, "169.254.0.0/16", *links.host_addresses())
            else:
                raise ValueError(f"unknown uplink {self.config.uplink!r} (offline or host)")
            self._rules_router = ruleset.Router(
                bridge=self._router.bridge,
                gateway=self.gateway,
                subnet=str(self.pool.network),
                uplink=uplink.router_ifname,
                protected=protected,
                private=ruleset.PRIVATE_NETWORKS if self.config.private_networks == "by-cidr" else (),
                log_group=self.config.log_group,
                # The world routes the subnet back (uplink_offline): its services see devboxes.
                masquerade_devboxes=self.config.uplink != "offline",
                max_connections_per_devbox=self.config.max_connections_per_devbox,
                max_connections_per_account=self.config.max_connections_per_account,
                alive_seconds=self.config.alive_seconds,
            )
            self._nft = Nft(self.router_ns)
            self._nft.apply(ruleset.bootstrap(self._rules_router))
            self._heartbeat = Heartbeat(self.router_ns, ruleset.TABLE, ruleset.ALIVE_SET,
                                        timeout=self.config.alive_seconds).start()
            self._elements = SetElements(self.router_ns)
            self._conntrack = conntrack.Tracker(self.router_ns)
            self._start_resolver(upstream)
            if self.config.log_group is not None:
                try:
                    self._nflog = NflogReader(self.router_ns, self.config.log_group, self._on_logged).start()
                except OSError as exc:  # no nfnetlink_log: enforcement is unaffected
                    log.warning("blocked connection attempts will not be logged: %s", exc)
        except BaseException:
            self.stop()
            raise
        log.info("data plane up: router %s, gateway %s, uplink %s, private networks %s", self.router_ns, self.gateway,
                 self.config.uplink, self.config.private_networks)

    def _start_resolver(self, upstream: list[tuple[str, int]]) -> None:
        router_ns = self.router_ns

        def socket_in_router(family, type_):
            return namespaces.socket_in(router_ns, family, type_)

        self.resolver = Resolver(
            self._client_view,
            Upstream(upstream, timeout=2.0, socket_factory=socket_in_router),
            on_answer=self._on_answer,
            on_query=self._on_query,
            # Accounts open a scope with their first devbox and drop it with their last.
            cache=AnswerCache(RESOLVER_CACHE_ENTRIES, per_scope=RESOLVER_CACHE_PER_ACCOUNT, explicit_scopes=True),
            max_upstream_per_client=RESOLVER_UPSTREAM_PER_DEVBOX,
            # An account's devboxes together: half the threads, so one account cannot hold them all.
            client_group=self._account_of, max_upstream_per_group=RESOLVER_UPSTREAM_PER_ACCOUNT,
        )
        with namespaces.entered(router_ns):
            udp, tcp = bind_udp_tcp(self.gateway, 53)
        self._dns = DnsServer(
            self.resolver.resolve, udp_sockets=[udp], tcp_sockets=[tcp], workers=RESOLVER_THREADS,
            max_tcp_connections=RESOLVER_TCP_CONNECTIONS, max_tcp_per_client=RESOLVER_TCP_PER_DEVBOX,
            tcp_query_rate=(ruleset.DNS_RATE_PER_SECOND, ruleset.DNS_RATE_BURST),
            tcp_group=self._account_of, name="resolver",  # one account cannot hold every TCP slot
        )
        self._dns.start()

    def stop(self) -> None:
        """Tear everything down: devboxes lose their network (fail closed). Nothing to do for a
        plane that never started, or whose start was refused: the instance's namespaces are
        then another simulator's."""
        if self._instance_lock is None:
            return
        try:
            self._stop()
        finally:
            self._release_instance()

    def _stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._nflog is not None:
            self._nflog.stop()
            self._nflog = None
        if self._dns is not None:
            self._dns.stop()
            self._dns = None
        if self._nft is not None:
            self._nft.close()
            self._nft = None
        if self._elements is not None:
            self._elements.close()
            self._elements = None
        if self._conntrack is not None:
            self._conntrack.close()
            self._conntrack = None
        self._router.teardown()
        if self._deadman is not None:
            self._deadman.stop()  # the router is gone: nothing left for it to close
            self._deadman = None
        if self._world is not None:
            self._world.stop()
            self._world = None
        with self._lock:
            self._by_id.clear()
            self._by_ip.clear()
            self._policies.clear()
        # Still holding the instance: what is left of it is nobody's (e.g. the empty file of a
        # devbox namespace whose create an interrupt cut short), removed now, not at next start.
        try:
            self.remove_orphans()
        except Exception:
            log.warning("could not remove what is left of instance %s; its next start does", self.config.instance,
                        exc_info=True)

    def _release_instance(self) -> None:
        if self._instance_lock is not None:
            release_instance(self._instance_lock, self.config.instance)
            self._instance_lock = None

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
        for name in namespaces.list_names(f"{NS_PREFIX}{self.config.instance}-", placeholders=True):
            if not namespaces.exists(name):
                namespaces.delete(name)  # a create killed before its mount left the file
            elif name == self.router_ns:
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
    ) -> Attached:
        """Plug a devbox namespace into the bridge and enforce its policy, all or nothing."""
        attached = Attached(devbox_id, account, _account_key(account), address, policy)
        self._router.attach(netns, pid, port_ifname=address.port, ip=address.ip, mac=address.mac)
        try:
            with self._lock:
                doc: list = []
                state = None
                if policy is not None:
                    # The newest version, read under the same lock as the rules are written: an
                    # update that came while the port was attached (the lock not held) found no
                    # devbox using the policy, so it only left its version in _latest.
                    newer = self._latest.get(policy.id)
                    if newer is not None and newer.update_time_ms > policy.update_time_ms:
                        policy = newer
                    key = _policy_key(policy.id)
                    state = self._policies.get(key)
                    if state is None:
                        state = _PolicyState(key, policy)
                        doc += ruleset.add_policy(self._rules_router, key, egress_for(policy))["nftables"]
                    elif policy.update_time_ms > state.policy.update_time_ms:
                        self.policy_updated(state.policy, policy)  # a newer version than enforced
                        state = self._policies[key]
                    attached.policy = state.policy  # every user of a policy runs the same version
                attached.view = self._view(state, account)
                # The account set already holds the other members (created with the account's
                # first devbox, dropped with its last): only this devbox's IP is new. Re-sending
                # every member made each connect O(devboxes).
                first = not any(a.account == account for a in self._by_id.values())
                doc += ruleset.add_devbox(self._rules_router, self._rules_devbox(attached),
                                          first_of_account=first)["nftables"]
                self._nft.apply({"nftables": doc})
                if first and self.resolver is not None:
                    self.resolver.cache.open_scope(account)
                if state is not None:
                    self._policies[state.key] = state
                    state.users.add(devbox_id)
                self._by_id[devbox_id] = attached
                self._by_ip[address.ip] = attached
        except BaseException:
            self._router.detach(address.port)
            raise
        return attached

    def disconnect(self, devbox_id: str) -> None:
        attached = self._by_id.get(devbox_id)
        if attached is None:
            return
        # The counts as the devbox leaves, read before the lock (a full set takes ~0.15 s to
        # list, and the lock is what every DNS answer waits for) and kept before the devbox
        # stops being found, so a reader always finds one or the other.
        try:
            counts = self._counts_of(attached.address.key)
        except Exception:  # the counts are a view; the devbox must go regardless
            log.exception("reading the connection counts of %s", devbox_id)
            counts = []
        with self._lock:
            if self._by_id.get(devbox_id) is not attached:
                return  # another disconnect of it won
            self._keep_departed_counts(devbox_id, counts)
            del self._by_id[devbox_id]
            self._by_ip.pop(attached.address.ip, None)
            last = not any(a.account == attached.account for a in self._by_id.values())
            doc = ruleset.remove_devbox(self._rules_router, self._rules_devbox(attached), drop_account_set=last)["nftables"]
            state = self._policies.get(_policy_key(attached.policy.id)) if attached.policy else None
            if state is not None:
                state.users.discard(devbox_id)
                if not state.users:  # its last devbox: the policy chain goes too
                    del self._policies[state.key]
                    doc += ruleset.remove_policy(state.key)["nftables"]
            try:
                self._nft.apply({"nftables": doc})
            except Exception:
                # Its objects may still be there, and adding them again for the next devbox
                # given this address would fail: the address is not given out again.
                log.exception("removing nft state of %s; its address %s is retired", devbox_id, attached.address.ip)
                self.pool.retire(attached.address.slot)
            if last and self.resolver is not None:  # under the lock: a reconnect opens it again after
                self.resolver.cache.drop_scope(attached.account)
        self._router.detach(attached.address.port)
        self._cut_flows_of(attached.address.ip)

    def attached(self, devbox_id: str) -> Attached | None:
        return self._by_id.get(devbox_id)

    def tunnel_socket(self, devbox_id: str) -> tuple[socket.socket, str]:
        """A TCP socket in the router namespace, and the devbox's address: what the tunnel
        proxy connects from (the router reaches every devbox on the bridge; a devbox's own
        rules are egress rules, and the reply is an established flow)."""
        attached = self._by_id.get(devbox_id)
        if attached is None:
            raise LookupError(f"devbox {devbox_id} is not on the bridge")
        return namespaces.socket_in(self.router_ns, socket.AF_INET, socket.SOCK_STREAM), attached.address.ip

    def _rules_devbox(self, attached: Attached) -> ruleset.Devbox:
        a = attached.address
        return ruleset.Devbox(
            key=a.key, account=attached.account_key, ip=a.ip, mac=a.mac, port=a.port,
            policy=_policy_key(attached.policy.id) if attached.policy is not None else None,
            peer=accepts_peers(attached.policy),
        )

    def _view(self, state: _PolicyState | None, account: str) -> ClientView:
        """The resolver's view for a devbox of ``account`` under a policy (None: no policy);
        one view (and one hostname matcher) per policy and account, shared by its devboxes."""
        if state is None:
            return _client_view_for(None, account, self._local_answer)
        view = state.views.get(account)
        if view is None:
            view = state.views[account] = _client_view_for(state.policy, account, self._local_answer)
        return view

    # --- policies ---------------------------------------------------------------------------

    def policy_deleted(self, policy_id: str) -> None:
        """A deleted policy (none of whose devboxes is left, provisioning ones included)
        needs no newest version kept: ``_latest`` held every updated policy until the end."""
        with self._lock:
            self._latest.pop(policy_id, None)

    def policy_updated(self, before: NetworkPolicy, after: NetworkPolicy) -> None:
        """Enforce an updated policy on every devbox using it before the API answers: one nft
        transaction rewriting the policy's chain and sets (plus, if the update revokes
        anything, the removal of learned addresses whose names are no longer allowed), then
        the flows it revoked are cut."""
        with self._lock:
            state = self._policies.get(_policy_key(after.id))
            if state is None:
                # Remember the newest version even if no devbox uses it yet: a devbox whose
                # provisioning read the old one just before this update must not enforce it.
                self._latest[after.id] = after
                return
            enforced = state.policy  # what the router enforces (``before`` as we know it)
            doc = ruleset.update_policy(state.key, egress_for(after))["nftables"]
            users = [self._by_id[i] for i in sorted(state.users)]
            peer_before, peer_after = accepts_peers(enforced), accepts_peers(after)
            if peer_before != peer_after:  # devbox-to-devbox turned on or off: the account sets follow
                for attached in users:
                    doc += ruleset.set_peer(self._rules_devbox(attached), peer_after)["nftables"]
            peers_cut = peer_before and not peer_after
            narrowed = not revokes_nothing(enforced.egress, after.egress)
            new_state = _PolicyState(state.key, after, state.users)
            kept_by_id: dict[str, dict[str, dict[str, float]]] = {}
            armed_by_id: dict[str, tuple[dict[str, float], list[str]]] = {}  # (re-armed, removed)
            if narrowed:
                now = time.monotonic()
                was_open = enforced.egress.allow_all  # names learned then are not in nft yet
                for attached in users:
                    view = self._view(new_state, attached.account)
                    # Names the update still allows stay, expired ones too: a connection opened
                    # while its answer was fresh outlives the answer, and only a name's revocation
                    # may cut it (_cut_revoked_flows prunes expired names nobody uses).
                    kept: dict[str, dict[str, float]] = {}
                    for ip, names in attached.learned.items():
                        still = {n: exp for n, exp in names.items() if _allows_name(view, n)}
                        if still:
                            kept[ip] = still
                    kept_by_id[attached.devbox_id] = kept
                    key = attached.address.key
                    dropped = [ip for ip in attached.learned if ip not in kept]
                    if was_open and not after.egress.allow_all:
                        rearm = kept
                    else:
                        # An address kept for another name closes when that name's answer would
                        # have closed it, not the revoked name's (whose TTL may be a day).
                        rearm = {ip: n for ip, n in kept.items()
                                 if max(n.values()) < max(attached.learned[ip].values())}
                    entries = []
                    for ip, names in rearm.items():
                        left = int(max(names.values()) - now)
                        if left >= 1:
                            entries.append((ip, left))
                        elif not was_open:
                            dropped.append(ip)  # its remaining names have expired: closed now
                    if dropped:
                        doc += ruleset.learned_remove(key, dropped)["nftables"]
                    if entries:
                        doc += ruleset.learned_add(key, entries)["nftables"]
                    armed_by_id[attached.devbox_id] = ({ip: now + left for ip, left in entries}, dropped)
            # Elements only (see netns.ruleset.update_policy): one transaction by raw netlink,
            # without libnftables' re-read of every devbox's chains and sets.
            try:
                self._elements.apply(set_ops(doc, ruleset.element_key))
            except NftElementsError:
                raise  # refused as a whole: nothing changed
            except BaseException:
                # No answer (a timeout, a lost reply): the kernel may hold the update. Put back
                # what this data plane enforces, by the other path, and cut what the update
                # let devboxes open meanwhile; the caller rolls the store back.
                try:
                    self._reassert_policy(state, users)
                    self._cut_revoked_flows(users, peers_cut=not accepts_peers(state.policy))
                except BaseException:
                    log.exception("policy %s: could not put its enforced version back; its devboxes are "
                                  "closed until its next update", after.id)
                    self._close_policy(state, users)
                raise
            self._latest[after.id] = after  # applied: a failed apply rolls the update back
            self._policies[state.key] = new_state
            for attached in users:
                attached.policy = after
                attached.view = self._view(new_state, attached.account)
                if narrowed:
                    attached.learned = kept_by_id[attached.devbox_id]
                    _count_names(attached)
                    rearmed, removed = armed_by_id[attached.devbox_id]
                    for ip in removed:
                        attached.armed.pop(ip, None)
                    attached.armed.update(rearmed)
            if narrowed:
                self._cut_revoked_flows(users, peers_cut)

    def _reassert_policy(self, state: _PolicyState, users: list[Attached]) -> None:
        """Make the kernel enforce ``state.policy`` for its ``users`` again, whatever part of
        an update it holds: the policy's sets, each user's account-set membership, and the
        learned addresses the update may have removed (``armed`` says the resolver need not
        add them again). Through libnftables, one transaction."""
        now = time.monotonic()
        doc = ruleset.update_policy(state.key, egress_for(state.policy))["nftables"]
        for attached in users:
            doc += ruleset.ensure_peer(self._rules_devbox(attached))["nftables"]
            entries = [(ip, int(until - now)) for ip, until in attached.armed.items() if until - now >= 1]
            doc += ruleset.learned_add(attached.address.key, entries)["nftables"]
        self._nft.apply({"nftables": doc})

    def _close_policy(self, state: _PolicyState, users: list[Attached]) -> None:
        """Fail closed when the kernel's state of a policy is unknown and cannot be put back:
        its sets emptied (nothing allowed), its users out of their account sets and their
        learned addresses gone, by raw netlink. Best effort: a failure is logged."""
        doc = ruleset.update_policy(state.key, ruleset.Egress())["nftables"]
        for attached in users:
            doc += ruleset.ensure_peer(replace(self._rules_devbox(attached), peer=False))["nftables"]
            doc += ruleset.learned_flush(attached.address.key)["nftables"]
        try:
            self._elements.apply(set_ops(doc, ruleset.element_key))
        except BaseException:
            log.exception("policy %s: could not close its devboxes either", state.policy.id)

    def _cut_revoked_flows(self, affected: list[Attached], peers_cut: bool = False) -> None:
        """Delete the conntrack entries of ``affected`` devboxes that their (new) policy no
        longer allows. Flows inside the devbox subnet stay unless ``peers_cut`` (their policy
        stopped allowing devbox-to-devbox): then every flow between them and another devbox
        goes, whichever side opened it (the rules are symmetric, see netns.ruleset)."""
        by_ip = {a.address.ip: a for a in affected}
        subnet = self.pool.network
        gateway = self.gateway
        revoked = []
        in_use: set[tuple[str, str]] = set()  # (devbox ip, destination) of flows that stay
        egress: dict[str, ruleset.Egress | None] = {}
        if peers_cut:  # flows other devboxes opened towards the affected ones
            revoked += [
                f for f in self._flows_from(None)
                if f.dst in by_ip and f.src not in by_ip and f.src != gateway and ipaddress.ip_address(f.src) in subnet
            ]  # (the gateway's are the tunnel proxy's: no devbox-to-devbox rule governs them)
        for flow in self._flows_from(by_ip):
            if ipaddress.ip_address(flow.dst) in subnet:
                if peers_cut and flow.dst != gateway:
                    revoked.append(flow)
                continue  # devbox-to-devbox (the account sets decide) and resolver flows
            attached = by_ip[flow.src]
            policy_id = attached.policy.id if attached.policy else ""
            if policy_id not in egress:
                egress[policy_id] = egress_for(attached.policy)
            if not flow_allowed(egress[policy_id], set(attached.learned), flow.dst, flow.proto, flow.dport,
                                self._rules_router.private):
                revoked.append(flow)
            else:
                in_use.add((flow.src, flow.dst))
        if revoked:
            self._delete_flows(revoked)
        # Expired names are kept only for the connections still open to their addresses.
        now = time.monotonic()
        for ip, attached in by_ip.items():
            _forget_expired(attached, {dst for src, dst in in_use if src == ip}, now)

    def _flows_from(self, sources) -> list[conntrack.Flow]:
        """Flows opened by ``sources`` (IPs), or every flow when None."""
        if self._conntrack is None:
            every = conntrack.flows(self.router_ns)
            return every if sources is None else [f for f in every if f.src in set(sources)]
        self._conntrack.sync()
        return self._conntrack.flows(sources)

    def _delete_flows(self, flows: list[conntrack.Flow]) -> None:
        if self._conntrack is not None:
            self._conntrack.delete(flows)
        else:
            conntrack.delete_flows(self.router_ns, flows)

    def _cut_flows_of(self, ip: str) -> None:
        """A departed devbox's flows, both ways: the next devbox given its address slot (same IP,
        MAC and port name) must not inherit a flow another devbox had opened towards it."""
        with self._lock:
            if self._conntrack is None:
                conntrack.delete(self.router_ns, ip)
                conntrack.delete_flows(self.router_ns, conntrack.flows(self.router_ns, dst=ip, backend="netlink"))
            else:  # the mirror: no walk of the kernel's table (~6 ms) per devbox that goes
                self._delete_flows([f for f in self._flows_from(None) if ip in (f.src, f.dst)])

    # --- resolver callbacks (DNS threads) --------------------------------------------------

    def _account_of(self, client_ip: str) -> str | None:
        attached = self._by_ip.get(client_ip)
        return attached.account if attached else None

    def _client_view(self, client_ip: str) -> ClientView | None:
        attached = self._by_ip.get(client_ip)
        return attached.view if attached else None

    def _on_answer(self, client_ip: str, qname: str, answers: list[tuple[str, int]]) -> None:
        attached = self._by_ip.get(client_ip)
        if attached is None:
            raise LookupError(f"no devbox at {client_ip}")
        subnet = self.pool.network
        with self._lock:  # not while a policy update swaps the rules and learned sets
            if qname.endswith("." + LOCAL_SUFFIX):
                return  # the simulator's own answers: devbox addresses follow the account sets
            if not _allows_name(attached.view, qname):
                # The policy changed between the resolver's decision and now.
                raise PermissionError(f"{qname} is no longer allowed for {client_ip}")
            now = time.monotonic()
            if attached.names >= max(attached.prune_at, LEARNED_PRUNE_AT) and now >= attached.next_prune:
                self._forget_unused(attached, now)
            # IPv4 only (devboxes are IPv4-only), and never the devbox subnet.
            usable = [(a, ttl) for a, ttl in answers if ":" not in a and ipaddress.ip_address(a) not in subnet]
            new = sum(qname not in attached.learned.get(a, ()) for a, _ttl in usable)
            if new and attached.names + new > MAX_LEARNED_NAMES:
                # Before anything is noted; raising makes the resolver answer SERVFAIL (fail closed).
                raise RuntimeError(f"{client_ip} holds {attached.names} answered names, the most")
            entries = []
            for address, ttl in usable:
                timeout = learn_timeout(ttl)
                known = address in attached.learned
                names = attached.learned.setdefault(address, {})
                if qname not in names:
                    attached.names += 1
                names[qname] = now + timeout
                if known and attached.armed.get(address, 0.0) >= now + timeout - REARM_SLACK_SECONDS:
                    continue  # armed just before (e.g. a cache hit): it already lasts long enough
                entries.append((address, timeout))
            restricted = attached.policy is not None and not attached.policy.egress.allow_all
            if entries and restricted:
                # Raising here makes the resolver answer SERVFAIL: never an address nft lacks.
                self._elements.add("inet", ruleset.TABLE, ruleset.learned_set(attached.address.key), entries)
                for address, timeout in entries:
                    attached.armed[address] = now + timeout

    def _forget_unused(self, attached: Attached, now: float) -> None:
        """Forget the expired names of addresses the devbox has no connection to (their nft
        elements are gone already). Under the lock."""
        _forget_expired(attached, {flow.dst for flow in self._flows_from([attached.address.ip])}, now)
        # Next pass at twice what is left, at the cap at most (at the cap, a pass is what
        # makes room), and not within a second (a pass walks the devbox's connections).
        attached.prune_at = min(2 * attached.names, MAX_LEARNED_NAMES)
        attached.next_prune = now + 1.0

    def allowed_connections(self, devbox_id: str) -> list[dict]:
        """New TCP/UDP connections the devbox made that the firewall allowed, counted per
        destination (from its nft ``conns_<key>`` set; entries expire an hour after their last
        use). A devbox that has gone: the counts it had when it went."""
        attached = self._by_id.get(devbox_id)
        if attached is not None and self._nft is not None:
            try:
                return self._counts_of(attached.address.key)
            except NftError:  # it left meanwhile (its set is gone): what it left with
                pass
        return list(self._departed_counts.get(devbox_id, ()))

    def _counts_of(self, key: str) -> list[dict]:
        counts = []
        for element in self._nft.list_set("inet", ruleset.TABLE, ruleset.conns_set(key)):
            elem = element.get("elem", element) if isinstance(element, dict) else {}
            dst, proto, port = elem.get("val", {}).get("concat", [None] * 3)
            counts.append({"destination": dst, "protocol": proto, "port": port,
                           "connections": elem.get("counter", {}).get("packets", 0)})
        return sorted(counts, key=lambda c: (-c["connections"], c["destination"], c["port"]))

    def _keep_departed_counts(self, devbox_id: str, counts: list[dict]) -> None:
        """Keep a departed devbox's counts (CI reads them after ``with devbox:``), the newest
        devboxes' first, DEPARTED_COUNTS_KEPT destinations in all."""
        if not counts:
            return  # nothing to keep: an unknown devbox reads as none too
        departed = self._departed_counts
        departed[devbox_id] = counts
        self._departed_total += len(counts)
        while len(departed) > 1 and (self._departed_total > DEPARTED_COUNTS_KEPT or len(departed) > DEPARTED_DEVBOXES_KEPT):
            self._departed_total -= len(departed.pop(next(iter(departed))))

    def _on_logged(self, packet: LoggedPacket) -> None:
        """A dropped new connection, from the chain ``dbx_<key>`` that logged it (NFLOG thread)."""
        attached = self._by_ip.get(packet.src)  # the bridge pins each port to its address
        if attached is None:
            return
        if packet.prefix in ruleset.DROP_REASONS:  # a shared rule's drop (resolver bypass, ...)
            for listener in self.block_listeners:
                listener(attached.devbox_id, packet, packet.prefix, attached.policy)
            return
        if packet.prefix != ruleset.devbox_chain(attached.address.key):
            return  # logged for a devbox that has gone since; its address is another's now
        reason = "policy"
        dst = ipaddress.ip_address(packet.dst)
        private = self._rules_router.private if self._rules_router is not None else ()
        if dst not in self.pool.network and any(dst in ipaddress.ip_network(net) for net in private):
            # Dropped only because private networks are closed: the policy alone allows it.
            now = time.monotonic()
            learned = {ip for ip, names in attached.learned.items() if max(names.values(), default=0) > now}
            if flow_allowed(egress_for(attached.policy), learned, packet.dst, packet.proto, packet.dport, private=()):
                reason = "private_network"
        for listener in self.block_listeners:
            listener(attached.devbox_id, packet, reason, attached.policy)

    def _on_query(self, event: QueryEvent) -> None:
        attached = self._by_ip.get(event.client_ip)
        for listener in self.query_listeners:
            if attached is None:
                listener(None, event, None)
            else:
                listener(attached.devbox_id, event, attached.policy)

    def _local_answer(self, account: str, qname: str, qtype: str) -> list[str] | None:
        """``<devbox-id>.devbox.internal`` (id lower-cased, ``_`` as ``-``): another devbox
        of the same account. (Not by devbox name: names repeat and need not be DNS labels.)"""
        if not qname.endswith("." + LOCAL_SUFFIX):
            return None
        label = qname[: -len(LOCAL_SUFFIX) - 1]
        for other in list(self._by_id.values()):
            if other.account == account and label == other.devbox_id.lower().replace("_", "-"):
                return [other.address.ip] if qtype in ("A", "ANY") else []
        return None  # unknown: NXDOMAIN (ClientView.local_zone), after the policy's say


def _account_key(account: str) -> str:
    return "a" + hashlib.sha1(account.encode()).hexdigest()[:12]


def _policy_key(policy_id: str) -> str:
    return "p" + hashlib.sha1(policy_id.encode()).hexdigest()[:12]


def _client_view_for(policy: NetworkPolicy | None, account: str, local) -> ClientView:
    def local_answer(qname: str, qtype: str):
        return local(account, qname, qtype)

    # Other devboxes' names only for a devbox that may talk to them: under deny-all (or with
    # devbox-to-devbox off) they are names like any other, NXDOMAIN unless a pattern allows
    # them, and the siblings' addresses do not leak.
    local_answer = local_answer if accepts_peers(policy) else None
    if policy is None or policy.egress.allow_all:
        return ClientView(matcher=None, allow_all=True, local_answer=local_answer, local_zone=LOCAL_SUFFIX,
                          cache_scope=account)
    patterns = policy.egress.allowed_hostnames
    # "deny_all" only for a policy that allows nothing: one with CIDRs denies names it has no
    # pattern for, like any other.
    unmatched = "deny_all" if not patterns and not policy.egress.allowed_cidrs else "no_matching_pattern"
    return ClientView(matcher=HostnameMatcher(patterns) if patterns else None, allow_all=False,
                      local_answer=local_answer, local_zone=LOCAL_SUFFIX, unmatched_reason=unmatched,
                      cache_scope=account)


def _forget_expired(attached: Attached, in_use: set[str], now: float) -> None:
    """Forget the expired names of the addresses not ``in_use`` (by a connection of the
    devbox): nothing but a name's revocation may cut a connection, which goes by its names."""
    for address, names in list(attached.learned.items()):
        if address in in_use:
            continue
        live = {n: exp for n, exp in names.items() if exp > now}
        if live:
            attached.learned[address] = live
        else:
            del attached.learned[address]
            attached.armed.pop(address, None)
    _count_names(attached)


def _count_names(attached: Attached) -> None:
    attached.names = sum(len(names) for names in attached.learned.values())


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
