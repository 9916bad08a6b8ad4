"""The policy half of the DNS proxy: decide, forward, report - no sockets here.

Order of decisions for one query (first that applies wins):

  0. not a query we take                -> FORMERR, NOTIMP or BADVERS (error, bad_request):
     another opcode, not one question, a meta type (AXFR, IXFR, OPT, TSIG, ...), a class
     but IN, more than one OPT record or an EDNS version but 0 (RFC 6891)
  1. unknown client                     -> REFUSED      (denied, unknown_client)
  2. name the simulator serves itself   -> local answer (allowed, local), TTL 5, not forwarded
  3. name not allowed by the policy     -> NXDOMAIN     (denied, deny_all | no_matching_pattern)
     NXDOMAIN rather than REFUSED: musl's stub resolver gives up on REFUSED instead of
     trying the next search domain, and "does not exist" is what the devbox should believe.
     A name with a byte no host name has (a dot or backslash inside a label, a space, a
     control or non-ASCII byte) gets NXDOMAIN too (denied, unsupported_name): its text form,
     which the policy matches, would not say which labels it has.
  4. other names in the simulator's own zone -> NXDOMAIN (denied, unknown_local_name)
  5. AAAA for an IPv4-only client       -> empty NOERROR (allowed), so apps fall back to A
  6. cache, else upstream (following CNAME chains; targets inherit the queried name's
     permission - the policy is about what the devbox asked for). A client with
     ``max_upstream_per_client`` lookups already waiting on the upstream gets SERVFAIL
     (error, client_busy) at once: the server's threads are shared by every devbox, and
     one devbox asking for names an upstream never answers must not hold them all (as
     dnsmasq's dns-forward-max or unbound's per-thread query limit bound theirs). With
     ``client_group`` (the simulator: a devbox's account), ``max_upstream_per_group`` bounds
     the lookups of all a group's clients together, so several devboxes cannot either.

Every A/AAAA the client is about to receive is passed to ``on_answer`` BEFORE ``resolve``
returns, i.e. before the server sends the reply, so the firewall can open the address before
the client can possibly connect to it. If ``on_answer`` fails we answer SERVFAIL: never hand
out an address the firewall may not know about (fail closed).

Two ways in, one policy:

* ``resolve(client_ip, DNSRecord) -> DNSRecord`` - the general path, on dnslib objects.
* ``resolve_wire(client_ip, bytes) -> bytes | None`` - the hot path DnsServer uses when it
  serves ``resolver.resolve``: plain queries (see ``wire``) are answered from wire bytes
  without dnslib - cached answer sections are spliced behind the client's question with
  their TTLs patched, upstream answer sections are relayed as received when every record in
  them is on the CNAME chain. It returns None, before calling any callback, for a query it
  does not handle; the server then uses ``resolve``. Decisions, callbacks and their order,
  events and replies are the same on both paths (tests/dns/test_dns_wire.py compares them).

``close()`` releases pooled upstream sockets (DnsServer.stop calls it); still usable after.
"""


from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, DNSQuestion, DNSRecord, OPCODE

from . import wire
from .cache import AnswerCache
from .client import ClientView
from .event import QueryEvent, fast_query_event
from .message import (
    addresses_with_ttl,
    address_family_matches,
    address_rr,
    empty_reply,
    qtype_name,
    question,
    rcode_name,
    truncated,
    with_edns,
    ADDRESS_TYPES,
)
from .patterns import normalise_name
from .upstream import UpstreamError

__all__ = ["ClientView", "QueryEvent", "Resolver", "MAX_CNAME_DEPTH", "LOCAL_TTL"]

log = logging.getLogger(__name__)

# dnslib's QTYPE.X / RCODE.X are Python-level lookups (bimap.__getattr__); the per-query path
# uses these plain ints instead.
_AAAA = QTYPE.AAAA
_NOERROR = RCODE.NOERROR
_ANSWERED = frozenset((RCODE.NOERROR, RCODE.NXDOMAIN))
_OPT = QTYPE.OPT
_BADVERS = 16  # extended RCODE (RFC 6891): 0 in the header, 1 in the OPT record's top byte
# Printable ASCII but "." and "\\": a label of these bytes reads back from dnslib's text form
# as it was sent (dnslib neither escapes a dot inside a label nor a backslash).
_NAME_BYTES = frozenset(range(33, 127)) - {ord("."), ord("\\")}

MAX_CNAME_DEPTH = 8
# Short: local names are devboxes that come and go.
LOCAL_TTL = 5

OnAnswer = Callable[[str, str, "list[tuple[str, int]]"], None]
OnQuery = Callable[[QueryEvent], None]


class UpstreamLike(Protocol):
    def query(self, request: DNSRecord) -> DNSRecord: ...

    # Optional (Upstream has it): query_wire(name_wire, qtype) -> (raw reply, question section)


# Types that are no question for a resolver: zone transfers and mailbox queries (not
# implemented), and types that only exist in a message's other sections (a format error).
_NOT_IMPLEMENTED_TYPES = frozenset((QTYPE.AXFR, QTYPE.IXFR, 253, 254))  # MAILB, MAILA
_META_TYPES = frozenset((0, QTYPE.OPT, QTYPE.TKEY, QTYPE.TSIG))


def _refused_format(request: DNSRecord, q: DNSQuestion | None) -> int | None:
    """The rcode for a request this resolver does not take, else None."""
    header = request.header
    if q is None:
        return RCODE.FORMERR
    if header.opcode != OPCODE.QUERY or header.qr:
        return RCODE.NOTIMP
    opts = [rr for rr in request.ar if rr.rtype == _OPT]
    if opts:
        if len(opts) > 1 or opts[0].rname.label:  # one OPT, owned by the root (RFC 6891 6.1.1)
            return RCODE.FORMERR
        if (opts[0].ttl >> 16) & 0xFF:  # an EDNS version we do not speak
            return _BADVERS
    if q.qtype in _META_TYPES:
        return RCODE.FORMERR
    if q.qtype in _NOT_IMPLEMENTED_TYPES or q.qclass != CLASS.IN:
        return RCODE.NOTIMP
    return None


class _Failure(Exception):
    """Internal: abort resolution with SERVFAIL and this reason."""

    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason = reason
        self.error = error


class Resolver:
    """Per-client policy resolver; ``resolve`` is a DnsServer handler and never raises.

    cache: defaults to a fresh ``AnswerCache(clock=clock)``; pass ``AnswerCache(0)`` to
    disable caching. ``wall_clock`` only stamps QueryEvent.time.
    """

    def __init__(
        self,
        clients: Callable[[str], ClientView | None],
        upstream: UpstreamLike,
        *,
        on_answer: OnAnswer | None = None,
        on_query: OnQuery | None = None,
        cache: AnswerCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_upstream_per_client: int | None = None,
        client_group: Callable[[str], str | None] | None = None,
        max_upstream_per_group: int | None = None,
    ):
        if max_upstream_per_client is not None and max_upstream_per_client < 1:
            raise ValueError("max_upstream_per_client must be >= 1")
        if max_upstream_per_group is not None and (max_upstream_per_group < 1 or client_group is None):
            raise ValueError("max_upstream_per_group must be >= 1 and needs client_group")
        self._clients = clients
        self._waiting = (
            _Waiting(max_upstream_per_client, client_group, max_upstream_per_group) if max_upstream_per_client else None
        )
        self._upstream = upstream
        self._query_wire = getattr(upstream, "query_wire", None)  # the hot path's way up, if any
        self._on_answer = on_answer
        self._on_query = on_query
        self.cache = cache if cache is not None else AnswerCache(clock=clock)
        self._wall_clock = wall_clock

    # -- entry point -------------------------------------------------------------------

    def resolve(self, client_ip: str, request: DNSRecord) -> DNSRecord:
        arrived = self._wall_clock()
        q = question(request)
        qname = normalise_name(str(q.qname)) if q is not None else ""
        qtype = qtype_name(q.qtype) if q is not None else ""
        base = dict(client_ip=client_ip, qname=qname, qtype=qtype, time=arrived)
        try:
            reply, event = self._decide(client_ip, request, q, qname, base)
        except Exception as exc:  # a bug must cost one SERVFAIL, not the server thread
            log.exception("resolver failed for %s %s from %s", qname, qtype, client_ip)
            reply = empty_reply(request, RCODE.SERVFAIL)
            event = QueryEvent(
                **base, verdict="error", reason="internal_error", error=repr(exc), rcode="SERVFAIL"
            )
        self._emit(event)
        return reply

    # -- policy ------------------------------------------------------------------------

    def _decide(self, client_ip, request, q, qname, base) -> tuple[DNSRecord, QueryEvent]:
        rcode = _refused_format(request, q)
        if rcode is not None:
            if rcode == _BADVERS:
                reply = empty_reply(request)
                reply.add_ar(EDNS0(udp_len=wire.MAX_UDP_LIMIT, ext_rcode=_BADVERS >> 4))
                name = "BADVERS"
            else:
                reply, name = empty_reply(request, rcode), rcode_name(rcode)
            return reply, QueryEvent(**base, verdict="error", reason="bad_request", rcode=name)
        if not all(_NAME_BYTES.issuperset(label) for label in q.qname.label):
            return empty_reply(request, RCODE.NXDOMAIN), QueryEvent(
                **base, verdict="denied", reason="unsupported_name", rcode="NXDOMAIN"
            )

        view = self._clients(client_ip)
        if view is None:
            return empty_reply(request, RCODE.REFUSED), QueryEvent(
                **base, verdict="denied", reason="unknown_client", rcode="REFUSED"
            )

        if view.local_answer is not None:
            local = view.local_answer(qname, base["qtype"])
            if local is not None:
                return self._local(client_ip, request, q, view, local, base)

        if view.allow_all:
            reason, pattern = "allow_all", None
        elif view.matcher is None or len(view.matcher) == 0:
            return self._deny(request, view.unmatched_reason, base)
        else:
            pattern = view.matcher.match(qname)
            if pattern is None:
                return self._deny(request, "no_matching_pattern", base)
            reason = "pattern"
        if view.in_local_zone(qname):
            return empty_reply(request, RCODE.NXDOMAIN), QueryEvent(
                **base, verdict="denied", reason="unknown_local_name", rcode="NXDOMAIN"
            )
        allowed = dict(base, verdict="allowed", reason=reason, matched_pattern=pattern)

        if q.qtype == _AAAA and not view.ipv6:
            return empty_reply(request), QueryEvent(**allowed)

        try:
            rcode, records = self._lookup(client_ip, qname, q.qtype, view.cache_scope)
        except _Failure as failure:
            return self._servfail(request, allowed, failure.reason, failure.error)
        if q.qtype == QTYPE.ANY and not view.ipv6:
            # As for AAAA: an IPv4-only client is given no IPv6 address (the cached records
            # stay whole: the scope's other clients may speak IPv6).
            records = [rr for rr in records if rr.rtype != _AAAA]
        return self._answer(client_ip, request, rcode, records, allowed, aa=False)

    def _deny(self, request, reason, base):
        return empty_reply(request, RCODE.NXDOMAIN), QueryEvent(
            **base, verdict="denied", reason=reason, rcode="NXDOMAIN"
        )

    def _local(self, client_ip, request, q, view: ClientView, addresses, base):
        records = []
        name = str(q.qname)
        if not view.ipv6:  # asked for AAAA (nothing) or ANY (the IPv4 addresses)
            addresses = [address for address in addresses if ":" not in address]
        for address in addresses:
            # The simulator's hook answers by name; keep only what fits the question.
            if q.qtype == QTYPE.ANY or address_family_matches(address, q.qtype):
                rr = address_rr(name, address, LOCAL_TTL)
                if rr is not None:
                    records.append(rr)
        allowed = dict(base, verdict="allowed", reason="local")
        return self._answer(client_ip, request, RCODE.NOERROR, records, allowed, aa=True)

    def _servfail(self, request, fields, reason, error):
        fields = dict(fields, verdict="error", reason=reason, error=error, rcode="SERVFAIL")
        return empty_reply(request, RCODE.SERVFAIL), QueryEvent(**fields)

    # -- answering ---------------------------------------------------------------------

    def _answer(self, client_ip, request, rcode, records, fields, *, aa):
        found = addresses_with_ttl(records)
        if found and self._on_answer is not None:
            try:
                self._on_answer(client_ip, fields["qname"], found)
            except Exception as exc:
                log.warning("on_answer failed for %s from %s: %r", fields["qname"], client_ip, exc)
                return self._servfail(request, fields, "on_answer_failed", repr(exc))
        reply = empty_reply(request, rcode, aa=aa)
        for rr in records:
            reply.add_answer(rr)
        event = QueryEvent(
            **fields,
            addresses=[address for address, _ttl in found],
            ttl=min((int(rr.ttl) for rr in records), default=None),
            rcode=rcode_name(rcode),
        )
        return reply, event

    def _lookup(self, client_ip: str, qname: str, qtype: int, scope: str | None) -> tuple[int, list[RR]]:
        """(rcode, answer records) for an allowed name, from the cache (``scope``'s part of
        it) or upstream."""
        cached = self.cache.get(qname, qtype, scope)
        if cached is not None:
            return RCODE.NOERROR, cached
        with self._upstream_slot(client_ip):
            rcode, records = self._chase(qname, qtype)
        for rr in records:  # parsed from the upstream's reply just now: ours to change
            rr.ttl = wire.capped_ttl(int(rr.ttl))
        if rcode == RCODE.NOERROR:
            self.cache.put(qname, qtype, records, scope)
        return rcode, records

    def _chase(self, qname: str, qtype: int, first: DNSRecord | None = None) -> tuple[int, list[RR]]:
        """Ask upstream, following CNAMEs across replies until the chain ends.

        Only records on the chain from ``qname`` are kept: an upstream that volunteers
        unrelated addresses must not get them into the client's answer (or the firewall).
        """
        chain: list[RR] = []
        name = qname
        seen = {qname}
        # Each round is one upstream query; each hop adds a name to `seen`, so the
        # depth check below bounds the rounds to MAX_CNAME_DEPTH + 1.
        for _round in range(MAX_CNAME_DEPTH + 1):
            reply, first = (first, None) if first is not None else (self._ask(name, qtype), None)
            if reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
                raise _Failure("upstream_error", f"upstream answered {rcode_name(reply.header.rcode)}")
            name, done = self._follow(reply.rr, name, qtype, chain, seen)
            if done or reply.header.rcode == RCODE.NXDOMAIN:
                # NXDOMAIN after a CNAME: the rcode describes the chain's end (RFC 6604).
                return reply.header.rcode, chain
        raise _Failure("cname_depth", f"CNAME chain longer than {MAX_CNAME_DEPTH}")

    def _follow(self, records, name, qtype, chain, seen) -> tuple[str, bool]:
        """Walk ``records`` from ``name``; returns (where the chain stands, finished?)."""
        start = name
        for _hop in range(MAX_CNAME_DEPTH + 1):
            if qtype in (QTYPE.CNAME, QTYPE.ANY):
                # The client asked for the records of this very name; nothing to chase.
                chain.extend(
                    rr
                    for rr in records
                    if _owner(rr) == name and (qtype == QTYPE.ANY or rr.rtype == qtype)
                )
                return name, True
            wanted = [rr for rr in records if rr.rtype == qtype and _owner(rr) == name]
            if wanted:
                chain.extend(wanted)
                return name, True
            cname = next(
                (rr for rr in records if rr.rtype == QTYPE.CNAME and _owner(rr) == name), None
            )
            if cname is None:
                # Nothing about `name` here. If this reply moved us along a CNAME, the
                # upstream only knew the alias: ask for the target separately. If it did
                # not, the name simply has no records of this type (NODATA).
                return name, name == start
            chain.append(cname)
            target = normalise_name(str(cname.rdata.label))
            if target in seen:
                raise _Failure("cname_loop", f"CNAME loop at {target}")
            seen.add(target)
            if len(seen) - 1 > MAX_CNAME_DEPTH:
                raise _Failure("cname_depth", f"CNAME chain longer than {MAX_CNAME_DEPTH}")
            name = target
        raise _Failure("cname_depth", f"CNAME chain longer than {MAX_CNAME_DEPTH}")

    def _ask(self, name: str, qtype: int) -> DNSRecord:
        try:
            return self._upstream.query(DNSRecord(q=DNSQuestion(name, qtype)))
        except UpstreamError as exc:
            raise _Failure("upstream_error", str(exc)) from exc

    # -- hot path (wire format) -------------------------------------------------------------

    def resolve_wire(self, client_ip: str, data: bytes, tcp: bool = False) -> bytes | None:
        """The reply to query ``data`` in wire form, or None - with no callback called - to
        say "use ``resolve``". Over UDP a reply larger than the client accepts (512 bytes,
        or its EDNS0 size) is truncated with TC set, as DnsServer does on the general path.

        This runs for every query a devbox sends, so it is written for the interpreter:
        the decision comes back as a plain tuple (see ``_decide_wire``), and the QueryEvent
        is only built when someone listens."""
        q = wire.parse_query(data)
        if q is None or q.qtype == 255:  # ANY: resolve() drops AAAA for IPv4-only clients
            return None
        max_size = 65535 if tcp else q.udp_limit
        on_query = self._on_query
        arrived = self._wall_clock() if on_query is not None else 0.0
        try:
            out, outcome = self._decide_wire(client_ip, data, q, max_size)
        except Exception as exc:  # as in resolve: one SERVFAIL, never a dead thread
            log.exception("resolver failed for %s %s from %s", q.name, qtype_name(q.qtype), client_ip)
            out = wire.empty_reply(data, q, RCODE.SERVFAIL, max_size=max_size)
            outcome = ("error", "internal_error", None, (), None, RCODE.SERVFAIL, repr(exc))
        if on_query is not None:
            self._emit(_wire_event(client_ip, q, arrived, outcome))
        return out

    def _decide_wire(self, client_ip, data, q: wire.Query, max_size):
        """(reply bytes, outcome). Same order as _decide; the request is already known to be a
        plain QUERY. The outcome is (verdict, reason, matched pattern, [(address, ttl)],
        ttl, rcode, error) - or, for a local answer, the QueryEvent itself."""
        view = self._clients(client_ip)
        if view is None:
            return wire.empty_reply(data, q, RCODE.REFUSED, max_size=max_size), (
                "denied", "unknown_client", None, (), None, RCODE.REFUSED, None)

        if view.local_answer is not None:
            qtype = qtype_name(q.qtype)
            local = view.local_answer(q.name, qtype)
            if local is not None:
                # Rare and built from text: the dnslib way, then packed.
                request = DNSRecord.parse(data)
                base = dict(client_ip=client_ip, qname=q.name, qtype=qtype, time=0.0)
                reply, event = self._local(client_ip, request, request.q, view, local, base)
                return _fit(with_edns(request, reply), max_size), event

        if view.allow_all:
            reason, pattern = "allow_all", None
        elif view.matcher is None or len(view.matcher) == 0:
            return wire.empty_reply(data, q, RCODE.NXDOMAIN, max_size=max_size), (
                "denied", view.unmatched_reason, None, (), None, RCODE.NXDOMAIN, None)
        else:
            pattern = view.matcher.match(q.name)
            if pattern is None:
                return wire.empty_reply(data, q, RCODE.NXDOMAIN, max_size=max_size), (
                    "denied", "no_matching_pattern", None, (), None, RCODE.NXDOMAIN, None)
            reason = "pattern"

        if view.in_local_zone(q.name):
            return wire.empty_reply(data, q, RCODE.NXDOMAIN, max_size=max_size), (
                "denied", "unknown_local_name", None, (), None, RCODE.NXDOMAIN, None)

        if q.qtype == _AAAA and not view.ipv6:
            return wire.empty_reply(data, q, RCODE.NOERROR, max_size=max_size), (
                "allowed", reason, pattern, (), None, RCODE.NOERROR, None)

        try:
            rcode, section, found, ttl = self._lookup_wire(client_ip, q, view.cache_scope)
        except _Failure as failure:
            return wire.empty_reply(data, q, RCODE.SERVFAIL, max_size=max_size), (
                "error", failure.reason, pattern, (), None, RCODE.SERVFAIL, failure.error)

        if found and self._on_answer is not None:
            try:
                self._on_answer(client_ip, q.name, found)
            except Exception as exc:
                log.warning("on_answer failed for %s from %s: %r", q.name, client_ip, exc)
                return wire.empty_reply(data, q, RCODE.SERVFAIL, max_size=max_size), (
                    "error", "on_answer_failed", pattern, (), None, RCODE.SERVFAIL, repr(exc))
        if section is None:
            out = wire.reply(data, q, rcode, max_size=max_size)
        else:
            out = wire.reply(data, q, rcode, section.data, section.count, max_size=max_size)
        return out, ("allowed", reason, pattern, found, ttl, rcode, None)

    def _lookup_wire(self, client_ip: str, q: wire.Query, scope: str | None):
        """(rcode, section or None, [(address, ttl)], smallest TTL) for an allowed name."""
        hit = self.cache.lookup(q.name, q.qtype, scope)
        if hit is not None and hit[0].name_len == len(q.name_wire):
            section, elapsed = hit
            data, found, ttl = section.aged(elapsed)
            return _NOERROR, _Spliced(data, section.count), found, ttl
        # The per-client cap without a context manager: this runs for every uncached query.
        waiting = self._waiting
        if waiting is not None:
            group_key = waiting.take(client_ip)
        try:
            rcode, section = self._chase_wire(q)
        finally:
            if waiting is not None:
                waiting.give_back(client_ip, group_key)
        if section is None:
            return rcode, None, (), None
        if rcode == _NOERROR:
            self.cache.put_section(q.name, q.qtype, section, scope)
        return rcode, section, section.found(), section.min_ttl

    def _chase_wire(self, q: wire.Query) -> tuple[int, wire.Section | None]:
        """_chase for the common case - the whole chain in the first reply, nothing dropped -
        without dnslib; any other reply continues in _chase from where it stands."""
        query_wire = self._query_wire
        first = None
        if query_wire is not None:
            try:
                raw, qsection = query_wire(q.name_wire, q.qtype)
            except UpstreamError as exc:
                raise _Failure("upstream_error", str(exc)) from exc
            got = wire.read_address_answers(raw, qsection, q.qtype)
            if got is not None:
                rcode, section = got
                if rcode not in _ANSWERED:
                    raise _Failure("upstream_error", f"upstream answered {rcode_name(rcode)}")
                return rcode, section
            got = wire.read_answers(raw, qsection)
            if got is not None:
                rcode, records, data, offsets = got
                if rcode not in _ANSWERED:
                    raise _Failure("upstream_error", f"upstream answered {rcode_name(rcode)}")
                if _whole_chain(records, q.name, q.qtype):
                    addresses = [(rr.value, i) for i, rr in enumerate(records) if rr.rtype in ADDRESS_TYPES]
                    ttls = [rr.ttl for rr in records]
                    return rcode, (wire.Section(data, offsets, ttls, addresses, len(q.name_wire)) if records else None)
            try:
                first = DNSRecord.parse(raw)
            except Exception as exc:
                raise _Failure("upstream_error", f"unreadable reply: {exc!r}") from exc
        rcode, records = self._chase(q.name, q.qtype, first)
        if not records:
            return rcode, None
        section = wire.section_from_records(q.name, q.qtype, records)
        if section is None or section.name_len != len(q.name_wire):
            raise _Failure("internal_error", "answer could not be packed")
        return rcode, section

    def _upstream_slot(self, client_ip: str):
        """A context for one lookup that waits on the upstream; _Failure when the client
        has ``max_upstream_per_client`` of them already."""
        if self._waiting is None:
            return contextlib.nullcontext()
        return self._waiting.slot(client_ip)

    def close(self) -> None:
        close = getattr(self._upstream, "close", None)
        if close is not None:
            close()

    # -- reporting ---------------------------------------------------------------------

    def _emit(self, event: QueryEvent) -> None:
        if self._on_query is None:
            return
        try:
            self._on_query(event)
        except Exception:
            # The decision log is observability; losing one entry must not lose the answer.
            log.exception("on_query callback failed")


def _owner(rr: RR) -> str:
    return normalise_name(str(rr.rname))


class _Waiting:
    """Upstream lookups in flight per client, at most ``cap`` each; and, with ``group`` (a
    client's group, e.g. its account: several devboxes), at most ``group_cap`` per group."""

    def __init__(self, cap: int, group: Callable[[str], str | None] | None = None, group_cap: int | None = None):
        self._cap = cap
        self._group = group if group_cap else None
        self._group_cap = group_cap or 0
        self._counts: dict[str, int] = {}  # client -> lookups out; group key "\0" + group
        self._lock = threading.Lock()

    def take(self, client_ip: str) -> str | None:
        """Count one more lookup for ``client_ip``; _Failure when it (or its group) has its
        cap already. Returns the group key counted, for ``give_back`` (the client's group
        may be gone by then: a devbox removed meanwhile)."""
        group = self._group(client_ip) if self._group is not None else None
        key = None if group is None else "\0" + group
        with self._lock:
            count = self._counts.get(client_ip, 0)
            if count >= self._cap:
                raise _Failure("client_busy", f"{count} lookups of this client already wait on the upstream")
            if key is not None:
                in_group = self._counts.get(key, 0)
                if in_group >= self._group_cap:
                    raise _Failure("client_busy", f"{in_group} lookups of this client's group already wait on the upstream")
                self._counts[key] = in_group + 1
            self._counts[client_ip] = count + 1
        return key

    def give_back(self, client_ip: str, group_key: str | None = None) -> None:
        with self._lock:
            for key in (client_ip,) if group_key is None else (client_ip, group_key):
                left = self._counts.get(key, 0) - 1
                if left > 0:
                    self._counts[key] = left
                else:
                    self._counts.pop(key, None)  # the map holds only keys with lookups out

    @contextlib.contextmanager
    def slot(self, client_ip: str):
        group_key = self.take(client_ip)
        try:
            yield
        finally:
            self.give_back(client_ip, group_key)


class _Spliced:
    """A cached section's bytes as aged for this reply (count as in the section)."""

    __slots__ = ("data", "count")

    def __init__(self, data: bytes, count: int):
        self.data = data
        self.count = count


def _whole_chain(records, qname: str, qtype: int) -> bool:
    """Whether _chase would keep exactly ``records`` (wire.Record), in order, and stop.

    Mirrors _follow for A/AAAA questions: CNAMEs from ``qname`` in chain order, then the
    records of the wanted type for the chain's end. Anything else is left to _chase.
    """
    if qtype not in ADDRESS_TYPES:
        return False
    name = qname
    seen = {qname}
    i = 0
    n = len(records)
    while i < n:
        rr = records[i]
        if rr.rtype == qtype and rr.owner == name:
            # The rest must be exactly the wanted records of `name` (_follow takes them all).
            return all(r.rtype == qtype and r.owner == name for r in records[i:])
        if rr.rtype != QTYPE.CNAME or rr.owner != name:
            return False
        # _follow takes the first CNAME of `name`; a second one would be dropped.
        name = rr.value
        if name in seen or len(seen) > MAX_CNAME_DEPTH:
            return False
        seen.add(name)
        i += 1
    # No records at all (NODATA / NXDOMAIN) ends the chase; CNAMEs only need another round.
    return n == 0


def _wire_event(client_ip: str, q: wire.Query, arrived: float, outcome) -> QueryEvent:
    """The QueryEvent for ``_decide_wire``'s outcome."""
    if isinstance(outcome, QueryEvent):
        return dataclasses.replace(outcome, time=arrived)
    verdict, reason, pattern, found, ttl, rcode, error = outcome
    return fast_query_event(
        client_ip, q.name, qtype_name(q.qtype), verdict, reason, pattern, [address for address, _ttl in found],
        ttl, error, arrived, rcode_name(rcode),
    )


def _fit(reply: DNSRecord, max_size: int) -> bytes:
    out = reply.pack()
    if len(out) > max_size:
        out = truncated(reply).pack()
    return out
