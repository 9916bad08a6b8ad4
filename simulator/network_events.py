"""The egress decision log: what each devbox tried to reach and what its policy decided.

It records every DNS decision the resolver makes (``dns.QueryEvent``, delivered through
``DataPlane.query_listeners``): the name, type, verdict and why (the matched pattern, deny-all,
no matching pattern, upstream errors), and the addresses and TTL handed out; and every new
connection nftables dropped (NFLOG, through ``DataPlane.block_listeners``, rate-limited per
devbox in the kernel): destination, protocol, port, and the name that address last resolved to
for any devbox of the same account (never another account's). Memory is bounded twice: a ring per devbox, and a global cap that evicts from
the devbox holding the most.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from dns import QueryEvent
from netns.nflog import LoggedPacket
from simulator.errors import InvalidRequest
from simulator.policy_model import NetworkPolicy

VERDICTS = ("allowed", "denied", "error")
MAX_TOTALS = 100_000  # devboxes whose decision totals are kept until their summary
# Drops of the same connection attempt (same source port too) this close together are one
# event: TCP gives up on a SYN after about two minutes of retries.
ATTEMPT_SECONDS = 130.0
MAX_ATTEMPTS = 100_000
DEFAULT_PER_DEVBOX = 1000
DEFAULT_TOTAL = 100_000
MAX_NAMES = 100_000  # address -> last name it resolved to
MAX_LIMIT = 1000


class NetworkEvent(NamedTuple):
    """One logged decision. A NamedTuple, not a frozen dataclass: one is made for every DNS
    query a devbox sends, before the answer leaves, and a tuple is built in one step where a
    frozen dataclass sets its 13 fields one ``object.__setattr__`` at a time (~1 us vs ~5).
    Being a tuple, it also compares equal to plain tuples and unpacks; read it by field name
    and serialise it with ``to_json``."""

    seq: int  # increasing across the log: the paging cursor
    time_ms: int
    kind: str  # "dns" or "blocked" (a new connection nftables dropped)
    verdict: str
    reason: str
    name: str | None  # blocked: the name the address last resolved to, None if none
    qtype: str | None  # dns only
    matched_pattern: str | None
    addresses: tuple[str, ...]
    ttl: int | None
    error: str | None
    protocol: str | None = None  # blocked: "tcp", "udp", "icmp", ...
    port: int | None = None  # blocked: destination port
    # dns: the answer's code; NXDOMAIN from the upstream for an allowed name shows here
    rcode: str | None = None
    # The policy in force when it was decided, and its version (its update_time_ms): a log that
    # spans a live update shows which version allowed or denied what. None: no policy.
    network_policy_id: str | None = None
    network_policy_update_time_ms: int | None = None

    def to_json(self) -> dict:
        data = self._asdict()
        data["addresses"] = list(self.addresses)
        return data


class NetworkEventLog:
    def __init__(self, per_devbox: int = DEFAULT_PER_DEVBOX, total: int = DEFAULT_TOTAL,
                 account_of: Callable[[str], str | None] | None = None):
        """``account_of(devbox_id)``: the devbox's account (None: unknown). Names are kept per
        account: what one account's devboxes resolved never names another's events."""
        self.per_devbox = per_devbox
        self.total = total
        self._account_of = account_of or (lambda _devbox_id: "")
        self._events: dict[str, deque[NetworkEvent]] = {}  # no empty ring: a devbox without events has none
        # ring length -> the devboxes whose ring has it (oldest there first), so that the
        # global cap finds the largest ring at once, however many devboxes there were
        self._by_length: dict[int, dict[str, None]] = {}
        self._longest = 0  # no ring is longer (it may be shorter: the search walks down)
        self._count = 0
        # devbox -> the seq of its last event. Per devbox: one counter for all would tell an
        # account, by the gaps between its own events, how busy the other accounts are.
        self._seqs: dict[str, int] = {}
        # (account, address) -> the name it last resolved to for a devbox of that account
        self._names: dict[tuple[str, str], str] = {}
        # devbox -> [allowed, denied, error, blocked]: every decision, also those the ring
        # no longer holds (for the summary when the devbox ends)
        self._totals: dict[str, list[int]] = {}
        # (devbox, protocol, source port, destination, port) -> when a drop of it was last seen
        self._attempts: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def on_query(self, devbox_id: str | None, event: QueryEvent, policy: NetworkPolicy | None = None) -> None:
        """``DataPlane.query_listeners`` callback (resolver threads): must stay cheap.
        ``policy``: the devbox's policy as enforced when it was decided."""
        if devbox_id is None:
            return  # not a devbox (e.g. a stale address): nothing to attribute it to
        account = self._account_of(devbox_id) if event.addresses and event.verdict == "allowed" else None
        with self._lock:
            if account is not None:
                for address in event.addresses:
                    key = (account, address)
                    self._names.pop(key, None)
                    self._names[key] = event.qname  # re-inserted: newest last, oldest evicted
                    if len(self._names) > MAX_NAMES:
                        del self._names[next(iter(self._names))]
            self._append(devbox_id, NetworkEvent(
                self._next_seq(devbox_id), int(event.time * 1000), "dns", event.verdict, event.reason, event.qname,
                event.qtype, event.matched_pattern, tuple(event.addresses), event.ttl, event.error,
                None, None, event.rcode,
                *((policy.id, policy.update_time_ms) if policy is not None else (None, None)),
            ))

    def on_blocked(self, devbox_id: str, packet: LoggedPacket, reason: str = "policy",
                   policy: NetworkPolicy | None = None) -> None:
        """``DataPlane.block_listeners`` callback (NFLOG thread). ``reason``: "policy", or
        "private_network" when the policy alone would allow it (``--private-networks by-cidr``
        opens private networks only through a CIDR)."""
        account = self._account_of(devbox_id)
        now = time.monotonic()
        with self._lock:
            if packet.sport is not None:
                # One attempt, one event: TCP sends its SYN again (1, 3, 7... s later) and a UDP
                # socket its datagrams, each "new" to the firewall again, from the same port.
                attempt = (devbox_id, packet.proto, packet.sport, packet.dst, packet.dport)
                seen = self._attempts.pop(attempt, None)
                self._attempts[attempt] = now  # re-inserted: newest last, oldest evicted
                if len(self._attempts) > MAX_ATTEMPTS:
                    del self._attempts[next(iter(self._attempts))]
                if seen is not None and now - seen < ATTEMPT_SECONDS:
                    return
            self._append(devbox_id, NetworkEvent(
                seq=self._next_seq(devbox_id),
                time_ms=int(time.time() * 1000),
                kind="blocked",
                verdict="denied",
                reason=reason,
                name=self._names.get((account, packet.dst)) if account is not None else None,
                qtype=None,  # no DNS question: null, as in network_connections
                matched_pattern=None,
                addresses=(packet.dst,),
                ttl=None,
                error=None,
                protocol=packet.proto,
                port=packet.dport,
                network_policy_id=policy.id if policy is not None else None,
                network_policy_update_time_ms=policy.update_time_ms if policy is not None else None,
            ))

    def _next_seq(self, devbox_id: str) -> int:
        seq = self._seqs.pop(devbox_id, 0) + 1
        if seq == 1 and len(self._seqs) >= MAX_TOTALS:  # the devbox that logged least recently
            del self._seqs[next(iter(self._seqs))]
        self._seqs[devbox_id] = seq  # re-inserted: the most recent last
        return seq

    def _append(self, devbox_id: str, event: NetworkEvent) -> None:
        totals = self._totals.get(devbox_id)
        if totals is None:
            totals = self._totals[devbox_id] = [0, 0, 0, 0]
            if len(self._totals) > MAX_TOTALS:  # devboxes that ended long ago (summary popped the rest)
                del self._totals[next(iter(self._totals))]
        totals[3 if event.kind == "blocked" else VERDICTS.index(event.verdict)] += 1
        ring = self._events.get(devbox_id)
        if ring is None:
            ring = self._events[devbox_id] = deque()
        before = len(ring)
        ring.append(event)
        self._count += 1
        if len(ring) > self.per_devbox:
            ring.popleft()
            self._count -= 1
        self._moved(devbox_id, before, len(ring))
        if self._count > self.total:
            # A noisy devbox cannot push the others out: evict from the largest ring.
            while not self._by_length.get(self._longest):
                self._longest -= 1
            largest = next(iter(self._by_length[self._longest]))
            self._events[largest].popleft()
            self._count -= 1
            self._moved(largest, self._longest, self._longest - 1)

    def _moved(self, devbox_id: str, before: int, after: int) -> None:
        """Its ring went from ``before`` to ``after`` events; an emptied ring is dropped (the
        devboxes of a long run must not each leave one behind)."""
        if before == after:
            return
        if before:
            bucket = self._by_length[before]
            del bucket[devbox_id]
            if not bucket:
                del self._by_length[before]
        if after:
            self._by_length.setdefault(after, {})[devbox_id] = None
            self._longest = max(self._longest, after)
        else:
            del self._events[devbox_id]

    def list_network_events(
        self,
        devbox_id: str,
        *,
        verdict: str | None = None,
        since_ms: int | None = None,
        starting_after: int | None = None,
        limit: int = 100,
    ) -> tuple[list[NetworkEvent], bool]:
        """Oldest first; ``starting_after`` is the last ``seq`` of the previous page."""
        if verdict is not None and verdict not in VERDICTS:
            raise InvalidRequest(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        with self._lock:
            events = list(self._events.get(devbox_id, ()))
        matching = [
            e for e in events
            if (verdict is None or e.verdict == verdict)
            and (since_ms is None or e.time_ms >= since_ms)
            and (starting_after is None or e.seq > starting_after)
        ]
        return matching[:limit], len(matching) > limit

    def name_for(self, account: str, address: str) -> str | None:
        """The DNS name ``address`` last resolved to for a devbox of ``account``."""
        with self._lock:
            return self._names.get((account, address))

    def summary(self, devbox_id: str) -> str:
        """Every decision for the devbox (not only those the log still holds), once: when the
        devbox ends (its totals are then dropped)."""
        with self._lock:
            allowed, denied, error, blocked = self._totals.pop(devbox_id, (0, 0, 0, 0))
        return f"{allowed} allowed, {denied} denied, {error} error DNS decisions, {blocked} blocked connections"

    def size(self) -> int:
        with self._lock:
            return self._count
