"""Resolver policy: end to end over loopback sockets, plus edge cases with an in-process upstream."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSHeader, DNSRecord

from dns import AnswerCache, ClientView, HostnameMatcher, Resolver, Upstream, Zone
from dns.server import bind_udp
from dns.upstream import UpstreamError

CLIENT = "127.0.0.1"


def view(*patterns, allow_all=False, ipv6=False, local_answer=None) -> ClientView:
    matcher = HostnameMatcher(patterns) if patterns else None
    return ClientView(matcher=matcher, allow_all=allow_all, ipv6=ipv6, local_answer=local_answer)


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


class FakeClock:
    def __init__(self, now: float = 500.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingHandler:
    """Wraps a DnsServer handler and counts the queries that reach it (thread-safe)."""

    def __init__(self, inner):
        self.inner = inner
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, client_ip, request):
        with self._lock:
            self.count += 1
        return self.inner(client_ip, request)


class InProcessUpstream:
    """Upstream stand-in calling a handler directly; records questions asked."""

    def __init__(self, handler):
        self.handler = handler
        self.asked: list[tuple[str, str]] = []

    def query(self, request):
        q = request.q
        self.asked.append((str(q.qname), QTYPE[q.qtype]))
        return self.handler("upstream-client", request)


# -- end to end: client -> DnsServer(Resolver) -> Upstream -> DnsServer(Zone) -----------


@pytest.fixture
def proxy(serve, world, recorder):
    """A resolver served on loopback, in front of the world zone; returns a namespace."""

    class Proxy:
        pass

    p = Proxy()
    p.answers, p.events = recorder(), recorder()
    p.views = {CLIENT: view("api.example.com", "*.example.com", "github.com")}
    p.resolver = Resolver(p.views.get, world[1], on_answer=p.answers, on_query=p.events)
    p.server = serve(p.resolver.resolve)
    p.address = p.server.udp_addresses[0]
    return p


def test_allowed_exact_and_wildcard(proxy, ask):
    reply = ask(proxy.address, "api.example.com")
    assert reply.header.rcode == RCODE.NOERROR
    assert addresses(reply) == ["203.0.113.34"]
    reply = ask(proxy.address, "A.B.Example.com.")
    assert addresses(reply) == ["203.0.113.102"]

    assert proxy.answers.calls == [
        (CLIENT, "api.example.com", [("203.0.113.34", 60)]),
        (CLIENT, "a.b.example.com", [("203.0.113.102", 60)]),
    ]
    first, second = proxy.events.calls
    assert (first.verdict, first.reason, first.matched_pattern) == ("allowed", "pattern", "api.example.com")
    assert (second.verdict, second.matched_pattern) == ("allowed", "*.example.com")
    assert second.addresses == ["203.0.113.102"] and second.ttl == 60 and second.qtype == "A"
    assert abs(second.time - time.time()) < 60


def test_denied_is_nxdomain_with_verdict(proxy, ask):
    reply = ask(proxy.address, "example.com")  # apex not covered by *.example.com
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.rr == []
    reply = ask(proxy.address, "evil.net", tcp=True)
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert proxy.answers.calls == []
    verdicts = [(e.qname, e.verdict, e.reason, e.rcode) for e in proxy.events.calls]
    assert verdicts == [
        ("example.com", "denied", "no_matching_pattern", "NXDOMAIN"),
        ("evil.net", "denied", "no_matching_pattern", "NXDOMAIN"),
    ]


def test_unknown_client_refused(proxy, ask):
    proxy.views.clear()
    reply = ask(proxy.address, "api.example.com")
    assert reply.header.rcode == RCODE.REFUSED
    [event] = proxy.events.calls
    assert (event.verdict, event.reason) == ("denied", "unknown_client")


def test_on_answer_runs_before_client_receives(serve, world):
    """on_answer blocks; while it does, the client's socket must hold no reply."""
    entered, release = threading.Event(), threading.Event()

    def on_answer(client_ip, qname, found):
        entered.set()
        release.wait(5.0)

    resolver = Resolver(lambda ip: view("github.com"), world[1], on_answer=on_answer)
    server = serve(resolver.resolve)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.1", 0))  # blocking mode: MSG_DONTWAIT below must not poll
        request = DNSRecord.question("github.com")
        client.sendto(request.pack(), server.udp_addresses[0])
        assert entered.wait(2.0), "on_answer was never called"
        # Loopback delivery is synchronous with sendto(): had the reply been sent before
        # on_answer, it would be sitting in this socket now.
        with pytest.raises(BlockingIOError):
            client.recv(4096, socket.MSG_DONTWAIT)
        release.set()
        client.settimeout(2.0)
        reply = DNSRecord.parse(client.recv(4096))
        assert reply.header.id == request.header.id
        assert addresses(reply) == ["192.0.2.140"]
    finally:
        release.set()  # never leave a worker blocked, even when an assert failed
        client.close()


def test_cache_hit_skips_upstream_and_refreshes_on_answer(serve, world_zone, recorder, ask):
    zone_handler = CountingHandler(world_zone.resolve)
    zone_server = serve(zone_handler)
    clock = FakeClock()
    answers = recorder()
    resolver = Resolver(
        lambda ip: view("*.example.com"),
        Upstream(zone_server.udp_addresses, timeout=1.0),
        on_answer=answers,
        clock=clock,
    )
    server = serve(resolver.resolve)

    first = ask(server.udp_addresses[0], "api.example.com")
    clock.now += 15
    second = ask(server.udp_addresses[0], "api.example.com")

    assert zone_handler.count == 1  # the second answer came from the cache
    assert addresses(first) == addresses(second) == ["203.0.113.34"]
    assert [rr.ttl for rr in second.rr] == [45]
    assert answers.calls == [
        (CLIENT, "api.example.com", [("203.0.113.34", 60)]),
        (CLIENT, "api.example.com", [("203.0.113.34", 45)]),  # refreshed with remaining TTL
    ]
    clock.now += 45  # expired: back to the upstream
    ask(server.udp_addresses[0], "api.example.com")
    assert zone_handler.count == 2


def test_cached_answers_are_kept_per_scope(serve, world_zone, ask):
    """One account must not see, in a run-down TTL, that another looked a name up: each cache
    scope (the simulator: an account) has its own answers, on both paths."""
    zone_handler = CountingHandler(world_zone.resolve)
    zone_server = serve(zone_handler)
    clock = FakeClock()
    scope = {"now": "alice"}

    def views(ip):
        return ClientView(matcher=HostnameMatcher(["*.example.com"]), allow_all=False, cache_scope=scope["now"])

    resolver = Resolver(views, Upstream(zone_server.udp_addresses, timeout=1.0), clock=clock)
    server = serve(resolver.resolve)
    ask(server.udp_addresses[0], "api.example.com")
    clock.now += 15
    scope["now"] = "bob"
    theirs = ask(server.udp_addresses[0], "api.example.com")
    assert zone_handler.count == 2 and [rr.ttl for rr in theirs.rr] == [60]  # not alice's 45
    scope["now"] = "alice"
    mine = ask(server.udp_addresses[0], "api.example.com")
    assert zone_handler.count == 2 and [rr.ttl for rr in mine.rr] == [45]  # alice's own entry
    scope["now"] = "carol"  # the dnslib path
    reply = resolver.resolve(CLIENT, DNSRecord.question("api.example.com"))
    assert zone_handler.count == 3 and [rr.ttl for rr in reply.rr] == [60]
    scope["now"] = "bob"
    reply = resolver.resolve(CLIENT, DNSRecord.question("api.example.com"))
    assert zone_handler.count == 3 and [rr.ttl for rr in reply.rr] == [60]  # bob's, stored just now


def test_cname_chain_returned_in_full(proxy, ask):
    reply = ask(proxy.address, "www.example.com")
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME", "CNAME", "A", "A"]
    assert addresses(reply) == ["192.0.2.151", "192.0.2.165"]
    # cdn.provider.net is not in the policy: the target is allowed via the queried name.
    assert proxy.answers.calls == [(CLIENT, "www.example.com", [("192.0.2.151", 60), ("192.0.2.165", 60)])]


def test_cname_only_upstream_is_chased(serve, recorder, ask):
    zone = Zone(
        {"cdn.provider.net": ["192.0.2.151"]},
        cnames={"www.example.com": "edge.example.com", "edge.example.com": "cdn.provider.net"},
        follow_cnames=False,  # like an authoritative server: only the CNAME comes back
    )
    zone_handler = CountingHandler(zone.resolve)
    zone_server = serve(zone_handler)
    answers = recorder()
    resolver = Resolver(
        lambda ip: view("www.example.com"), Upstream(zone_server.udp_addresses, timeout=1.0), on_answer=answers
    )
    server = serve(resolver.resolve)
    reply = ask(server.udp_addresses[0], "www.example.com")
    assert reply.header.rcode == RCODE.NOERROR
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME", "CNAME", "A"]
    assert addresses(reply) == ["192.0.2.151"]
    assert zone_handler.count == 3
    assert answers.calls == [(CLIENT, "www.example.com", [("192.0.2.151", 300)])]


def test_aaaa_for_ipv4_only_client_is_empty_noerror(serve, world_zone, recorder, ask):
    zone_handler = CountingHandler(world_zone.resolve)
    zone_server = serve(zone_handler)
    upstream = Upstream(zone_server.udp_addresses, timeout=1.0)
    events = recorder()
    v4 = serve(Resolver(lambda ip: view("api.example.com"), upstream, on_query=events).resolve)
    v6 = serve(Resolver(lambda ip: view("api.example.com", ipv6=True), upstream).resolve)

    reply = ask(v4.udp_addresses[0], "api.example.com", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
    assert zone_handler.count == 0  # not even asked upstream
    assert events.calls[0].verdict == "allowed" and events.calls[0].qtype == "AAAA"

    reply = ask(v6.udp_addresses[0], "api.example.com", "AAAA")
    assert addresses(reply) == ["2001:db8::34"]


def test_any_for_an_ipv4_only_client_has_no_ipv6_address(recorder):
    """As AAAA is empty for it, ANY gives it (and the firewall) the IPv4 addresses only; a
    client speaking IPv6 of the same cache scope still gets both."""
    upstream = InProcessUpstream(Zone({"www.example.com": ["192.0.2.5", "2001:db8::5"]}).resolve)
    answers = recorder()
    clients = {"10.0.0.2": view("*.example.com"), "10.0.0.3": view("*.example.com", ipv6=True)}
    resolver = Resolver(clients.get, upstream, on_answer=answers)
    reply = resolver.resolve("10.0.0.2", DNSRecord.question("www.example.com", "ANY"))
    assert reply.header.rcode == RCODE.NOERROR and addresses(reply) == ["192.0.2.5"]
    assert answers.calls == [("10.0.0.2", "www.example.com", [("192.0.2.5", 300)])]
    both = resolver.resolve("10.0.0.3", DNSRecord.question("www.example.com", "ANY"))
    assert sorted(addresses(both)) == ["192.0.2.5", "2001:db8::5"]


def test_any_through_the_server_has_no_ipv6_address_for_an_ipv4_only_client(serve, recorder, ask):
    """The server tries the wire path first, which took ANY and kept its AAAA records."""
    upstream = InProcessUpstream(Zone({"www.example.com": ["192.0.2.5", "2001:db8::5"]}).resolve)
    answers = recorder()
    server = serve(Resolver(lambda ip: view("*.example.com"), upstream, on_answer=answers).resolve)
    reply = ask(server.udp_addresses[0], "www.example.com", "ANY")
    assert reply.header.rcode == RCODE.NOERROR and addresses(reply) == ["192.0.2.5"]
    assert answers.calls == [(CLIENT, "www.example.com", [("192.0.2.5", 300)])]


def test_a_local_answer_to_any_for_an_ipv4_only_client_has_no_ipv6_address():
    def local(qname, qtype):
        return ["10.88.0.7", "fd00::7"] if qname == "peer.devbox.internal" else None

    resolver = Resolver(lambda ip: view(allow_all=True, local_answer=local), InProcessUpstream(Zone({}).resolve))
    reply = resolver.resolve(CLIENT, DNSRecord.question("peer.devbox.internal", "ANY"))
    assert addresses(reply) == ["10.88.0.7"]
    assert addresses(resolver.resolve(CLIENT, DNSRecord.question("peer.devbox.internal", "AAAA"))) == []


def test_dead_upstream_is_servfail_quickly(serve, recorder, ask):
    silent = bind_udp("127.0.0.1")  # bound, never answers
    try:
        events = recorder()
        resolver = Resolver(
            lambda ip: view(allow_all=True), Upstream([silent.getsockname()], timeout=0.2), on_query=events
        )
        server = serve(resolver.resolve)
        start = time.monotonic()
        reply = ask(server.udp_addresses[0], "anything.test", timeout=3.0)
        assert time.monotonic() - start < 1.5
        assert reply.header.rcode == RCODE.SERVFAIL
        [event] = events.calls
        assert (event.verdict, event.reason, event.matched_pattern) == ("error", "upstream_error", None)
        assert "timeout" in event.error
    finally:
        silent.close()


def test_one_client_cannot_hold_every_thread_on_a_silent_upstream(serve, recorder):
    """A client with max_upstream_per_client lookups waiting on an upstream that never
    answers gets SERVFAIL (client_busy) for the next one at once, and another client is
    still answered while those lookups wait."""
    silent = bind_udp("127.0.0.1")  # bound, never answers: the test reads what reaches it
    silent.settimeout(5.0)
    greedy, other = "127.0.0.21", "127.0.0.22"
    events = recorder()
    views = {greedy: view(allow_all=True), other: view("github.com")}
    resolver = Resolver(views.get, Upstream([silent.getsockname()], timeout=3.0), on_query=events,
                        max_upstream_per_client=2)
    server = serve(resolver.resolve, workers=4)
    address = server.udp_addresses[0]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for sock, ip in zip(clients, (greedy, greedy, greedy, other)):
            sock.bind((ip, 0))
            sock.settimeout(5.0)
        for sock, name in zip(clients[:2], ("slow1.test", "slow2.test")):
            sock.sendto(DNSRecord.question(name).pack(), address)
        for _ in range(2):
            silent.recvfrom(4096)  # both lookups now wait on the upstream
        start = time.monotonic()
        clients[2].sendto(DNSRecord.question("slow3.test").pack(), address)
        busy = DNSRecord.parse(clients[2].recv(4096))
        clients[3].sendto(DNSRecord.question("denied.test").pack(), address)
        denied = DNSRecord.parse(clients[3].recv(4096))
        assert time.monotonic() - start < 2.0  # long before the waiting lookups time out
        assert busy.header.rcode == RCODE.SERVFAIL and denied.header.rcode == RCODE.NXDOMAIN
        assert [(e.qname, e.reason) for e in events.calls] == [("slow3.test", "client_busy"), ("denied.test", "no_matching_pattern")]
        for sock in clients[:2]:  # the waiting ones end with the upstream's timeout
            assert DNSRecord.parse(sock.recv(4096)).header.rcode == RCODE.SERVFAIL
        assert resolver._waiting._counts == {}  # every slot given back
    finally:
        for sock in clients:
            sock.close()
        silent.close()


def test_one_group_of_clients_cannot_hold_every_thread_either(serve, recorder):
    """Several devboxes of one account (a group) each under their own cap: together they
    may have at most max_upstream_per_group lookups waiting; another group is still served."""
    silent = bind_udp("127.0.0.1")  # bound, never answers
    silent.settimeout(5.0)
    first, second, outsider = "127.0.0.31", "127.0.0.32", "127.0.0.33"
    groups = {first: "acct-greedy", second: "acct-greedy", outsider: "acct-other"}
    events = recorder()
    views = {ip: view(allow_all=True) for ip in groups}
    resolver = Resolver(views.get, Upstream([silent.getsockname()], timeout=3.0), on_query=events,
                        max_upstream_per_client=2, client_group=groups.get, max_upstream_per_group=3)
    server = serve(resolver.resolve, workers=6)
    address = server.udp_addresses[0]
    senders = [(first, "a1.test"), (first, "a2.test"), (second, "b1.test"), (second, "b2.test"), (outsider, "c1.test")]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in senders]
    try:
        for sock, (ip, _name) in zip(clients, senders):
            sock.bind((ip, 0))
            sock.settimeout(5.0)
        for sock, (_ip, name) in zip(clients[:3], senders[:3]):
            sock.sendto(DNSRecord.question(name).pack(), address)
        for _ in range(3):
            silent.recvfrom(4096)  # three of the group's lookups wait on the upstream
        clients[3].sendto(DNSRecord.question("b2.test").pack(), address)  # second's own 2nd, the group's 4th
        assert DNSRecord.parse(clients[3].recv(4096)).header.rcode == RCODE.SERVFAIL
        clients[4].sendto(DNSRecord.question("c1.test").pack(), address)  # another group: forwarded
        assert str(DNSRecord.parse(silent.recvfrom(4096)[0]).q.qname) == "c1.test."
        assert [(e.qname, e.reason) for e in events.calls] == [("b2.test", "client_busy")]
        for sock in (*clients[:3], clients[4]):  # the waiting ones end with the upstream's timeout
            assert DNSRecord.parse(sock.recv(4096)).header.rcode == RCODE.SERVFAIL
        assert resolver._waiting._counts == {}  # every slot given back, the group's too
    finally:
        for sock in clients:
            sock.close()
        silent.close()


def test_on_answer_raising_is_servfail(serve, world, recorder, ask):
    def on_answer(client_ip, qname, found):
        raise RuntimeError("nft add element failed")

    events = recorder()
    resolver = Resolver(lambda ip: view("github.com"), world[1], on_answer=on_answer, on_query=events)
    server = serve(resolver.resolve)
    reply = ask(server.udp_addresses[0], "github.com")
    assert reply.header.rcode == RCODE.SERVFAIL and reply.rr == []
    [event] = events.calls
    assert (event.verdict, event.reason) == ("error", "on_answer_failed")
    assert "nft add element failed" in event.error


def test_large_answer_truncated_over_udp_then_complete_over_tcp(serve, world, recorder, ask, tcp_exchange):
    answers = recorder()
    resolver = Resolver(lambda ip: view("*.example.com"), world[1], on_answer=answers)
    server = serve(resolver.resolve)
    address = server.udp_addresses[0]

    udp = ask(address, "big.example.com")
    assert udp.header.tc and udp.rr == []
    assert str(udp.q.qname) == "big.example.com."  # question kept so stubs can match it

    with socket.create_connection(address, timeout=2.0) as conn:
        tcp = tcp_exchange(conn, DNSRecord.question("big.example.com"))
    assert not tcp.header.tc
    assert len(addresses(tcp)) == 60
    # Both the truncated UDP answer and the TCP answer reported all 60 addresses first.
    assert [len(found) for _ip, _name, found in answers.calls] == [60, 60]


def test_edns_payload_size_avoids_truncation(serve, world, ask):
    server = serve(Resolver(lambda ip: view("*.example.com"), world[1]).resolve)
    request = DNSRecord.question("big.example.com")
    request.add_ar(EDNS0(udp_len=4096))  # EDNS0: "I accept 4096-byte UDP replies"
    reply = DNSRecord.parse(request.send(*server.udp_addresses[0], timeout=2.0))
    assert not reply.header.tc and len(reply.rr) == 60
    assert [rr.rtype for rr in reply.ar] == [QTYPE.OPT]  # EDNS0 echoed, so >512 is legitimate


# -- in-process edge cases --------------------------------------------------------------


def resolve(resolver: Resolver, name: str, qtype: str = "A") -> DNSRecord:
    return resolver.resolve(CLIENT, DNSRecord.question(name, qtype))


def test_deny_all_reason_for_no_patterns(recorder):
    for client in (view(), ClientView(matcher=HostnameMatcher([]), allow_all=False)):
        events = recorder()
        upstream = InProcessUpstream(Zone({"x.test": ["10.0.0.1"]}).resolve)
        reply = resolve(Resolver(lambda ip, c=client: c, upstream, on_query=events), "x.test")
        assert reply.header.rcode == RCODE.NXDOMAIN
        assert events.calls[0].reason == "deny_all"
        assert upstream.asked == []


def test_allow_all(recorder):
    events = recorder()
    upstream = InProcessUpstream(Zone({"x.test": ["10.0.0.1"]}).resolve)
    reply = resolve(Resolver(lambda ip: view(allow_all=True), upstream, on_query=events), "x.test")
    assert addresses(reply) == ["10.0.0.1"]
    assert (events.calls[0].reason, events.calls[0].matched_pattern) == ("allow_all", None)


def test_local_answer_is_authoritative_and_not_forwarded(recorder):
    def local(qname, qtype):
        if qname == "devbox-2.devbox.local":
            return ["10.200.0.7", "fd00::7"]
        return None

    events, answers = recorder(), recorder()
    upstream = InProcessUpstream(Zone({}).resolve)
    resolver = Resolver(lambda ip: view(local_answer=local), upstream, on_answer=answers, on_query=events)

    reply = resolve(resolver, "Devbox-2.devbox.local.")
    assert reply.header.aa and reply.header.rcode == RCODE.NOERROR
    assert addresses(reply) == ["10.200.0.7"]  # A question: only the IPv4 address
    assert [rr.ttl for rr in reply.rr] == [5]
    assert resolve(resolver, "devbox-2.devbox.local", "AAAA").rr == []  # client is IPv4-only
    assert upstream.asked == []
    assert events.calls[0].reason == "local" and events.calls[0].verdict == "allowed"
    assert answers.calls == [(CLIENT, "devbox-2.devbox.local", [("10.200.0.7", 5)])]
    # Not a local name, and the client has no patterns: normal policy applies.
    assert resolve(resolver, "other.test").header.rcode == RCODE.NXDOMAIN


def test_upstream_nxdomain_relayed():
    upstream = InProcessUpstream(Zone({}).resolve)
    reply = resolve(Resolver(lambda ip: view(allow_all=True), upstream), "missing.test")
    assert reply.header.rcode == RCODE.NXDOMAIN


def test_upstream_servfail_relayed_as_error(recorder):
    def broken(client_ip, request):
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return reply

    events = recorder()
    reply = resolve(Resolver(lambda ip: view(allow_all=True), InProcessUpstream(broken), on_query=events), "x.test")
    assert reply.header.rcode == RCODE.SERVFAIL
    assert events.calls[0].reason == "upstream_error"


def test_unrelated_upstream_records_are_dropped(recorder):
    """An upstream volunteering addresses for other names must not reach client or firewall."""

    def poisoning(client_ip, request):
        reply = request.reply()
        reply.add_answer(RR("evil.test", QTYPE.A, rdata=A("203.0.113.166"), ttl=60))
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("10.0.0.1"), ttl=60))
        return reply

    answers = recorder()
    resolver = Resolver(lambda ip: view("good.test"), InProcessUpstream(poisoning), on_answer=answers)
    reply = resolve(resolver, "good.test")
    assert addresses(reply) == ["10.0.0.1"]
    assert answers.calls == [(CLIENT, "good.test", [("10.0.0.1", 60)])]


def chain_zone(length: int, *, loop: bool = False) -> Zone:
    names = [f"n{i}.test" for i in range(length + 1)]
    cnames = dict(zip(names, names[1:]))
    records = {names[-1]: ["10.0.0.1"]}
    if loop:
        cnames[names[-1]] = names[0]
        records = {}
    return Zone(records, cnames=cnames, follow_cnames=False)


def test_cname_depth_limit(recorder):
    ok = Resolver(lambda ip: view(allow_all=True), InProcessUpstream(chain_zone(8).resolve))
    assert addresses(resolve(ok, "n0.test")) == ["10.0.0.1"]

    events = recorder()
    deep = Resolver(lambda ip: view(allow_all=True), InProcessUpstream(chain_zone(9).resolve), on_query=events)
    assert resolve(deep, "n0.test").header.rcode == RCODE.SERVFAIL
    assert events.calls[0].reason == "cname_depth"


def test_cname_loop_is_servfail(recorder):
    events = recorder()
    resolver = Resolver(
        lambda ip: view(allow_all=True), InProcessUpstream(chain_zone(3, loop=True).resolve), on_query=events
    )
    assert resolve(resolver, "n0.test").header.rcode == RCODE.SERVFAIL
    assert events.calls[0].reason == "cname_loop"


def test_never_raises():
    def clients(ip):
        raise KeyError("bug in the simulator")

    class Exploding:
        def query(self, request):
            raise ZeroDivisionError

    assert resolve(Resolver(clients, Exploding()), "x.test").header.rcode == RCODE.SERVFAIL
    assert resolve(Resolver(lambda ip: view(allow_all=True), Exploding()), "x.test").header.rcode == RCODE.SERVFAIL

    class Failing:
        def query(self, request):
            raise UpstreamError("down")

    assert resolve(Resolver(lambda ip: view(allow_all=True), Failing()), "x.test").header.rcode == RCODE.SERVFAIL
    no_question = DNSRecord(DNSHeader(id=7))
    reply = Resolver(lambda ip: view(allow_all=True), Failing()).resolve(CLIENT, no_question)
    assert reply.header.rcode == RCODE.FORMERR and reply.header.id == 7


def test_on_query_exception_is_swallowed():
    def on_query(event):
        raise RuntimeError("log sink down")

    upstream = InProcessUpstream(Zone({"x.test": ["10.0.0.1"]}).resolve)
    resolver = Resolver(lambda ip: view("x.test"), upstream, on_query=on_query)
    assert addresses(resolve(resolver, "x.test")) == ["10.0.0.1"]


def test_cache_disabled_with_size_zero():
    upstream = InProcessUpstream(Zone({"x.test": ["10.0.0.1"]}).resolve)
    resolver = Resolver(lambda ip: view("x.test"), upstream, cache=AnswerCache(0))
    resolve(resolver, "x.test")
    resolve(resolver, "x.test")
    assert len(upstream.asked) == 2


def test_reply_echoes_id_and_question():
    upstream = InProcessUpstream(Zone({"x.test": ["10.0.0.1"]}).resolve)
    resolver = Resolver(lambda ip: view("x.test"), upstream)
    request = DNSRecord.question("X.test")
    reply = resolver.resolve(CLIENT, request)
    assert reply.header.id == request.header.id and reply.header.qr
    assert str(reply.q.qname) == "X.test."
    assert not reply.header.aa  # forwarded answers are not authoritative


@pytest.mark.parametrize("upstream_ttl, told", [(7 * 86400, 86400), (2**31 - 1, 86400), (2**32 - 1, 0), (300, 300)])
def test_a_ttl_is_told_as_used_at_most_a_day_and_top_bit_as_zero(serve, recorder, ask, upstream_ttl, told):
    """What a devbox is told is what the cache and the firewall go by (a devbox caching a week
    would keep using an address its learned set closed after a day); RFC 2181: a TTL with the
    top bit set reads as zero. On the wire path and on dnslib's."""
    zone = Zone({"github.com": ["192.0.2.140"]}, ttl=upstream_ttl)
    upstream = Upstream(serve(zone.resolve).udp_addresses, timeout=1.0)
    answers = recorder()
    resolver = Resolver(lambda ip: view("github.com"), upstream, on_answer=answers, cache=AnswerCache(0))
    wire_reply = ask(serve(resolver.resolve).udp_addresses[0], "github.com")
    dnslib_reply = resolver.resolve(CLIENT, DNSRecord.question("github.com"))
    for reply in (wire_reply, dnslib_reply):
        assert addresses(reply) == ["192.0.2.140"] and [rr.ttl for rr in reply.rr] == [told]
    assert [call[2] for call in answers.calls] == [[("192.0.2.140", told)]] * 2


# -- requests the resolver does not take (sent as raw bytes, as a devbox could) -----------


def exchange_raw(address, data: bytes) -> DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(data, address)
        return DNSRecord.parse(sock.recv(65535))


def raw_query(name_wire: bytes, qtype: int = 1, qclass: int = 1, *, ar: bytes = b"", arcount: int = 0) -> bytes:
    header = bytes.fromhex("abcd0100") + (1).to_bytes(2, "big") + bytes(4) + arcount.to_bytes(2, "big")
    return header + name_wire + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big") + ar


GITHUB = b"\x06github\x03com\x00"
OPT_V0 = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"


@pytest.fixture
def strict(serve, recorder):
    """A resolver allowing everything (and *.github.com) in front of a counting upstream."""

    class Strict:
        pass

    s = Strict()
    zone = Zone({"github.com": ["192.0.2.140"], "api.github.com": ["192.0.2.141"]})
    s.upstream = InProcessUpstream(zone.resolve)
    s.events, s.answers = recorder(), recorder()
    s.resolver = Resolver(lambda ip: view(allow_all=True), s.upstream, on_query=s.events, on_answer=s.answers)
    s.address = serve(s.resolver.resolve).udp_addresses[0]
    return s


@pytest.mark.parametrize(
    "what, data, rcode",
    [
        ("class CH", raw_query(GITHUB, qclass=3), RCODE.NOTIMP),
        ("class ANY", raw_query(GITHUB, qclass=255), RCODE.NOTIMP),
        ("AXFR", raw_query(GITHUB, qtype=252), RCODE.NOTIMP),
        ("IXFR", raw_query(GITHUB, qtype=251), RCODE.NOTIMP),
        ("type OPT", raw_query(GITHUB, qtype=41), RCODE.FORMERR),
        ("type TSIG", raw_query(GITHUB, qtype=250), RCODE.FORMERR),
        ("type 0", raw_query(GITHUB, qtype=0), RCODE.FORMERR),
        ("two OPT records", raw_query(GITHUB, ar=OPT_V0 * 2, arcount=2), RCODE.FORMERR),
        ("an OPT not owned by the root", raw_query(GITHUB, ar=b"\x03foo\x00" + OPT_V0[1:], arcount=1), RCODE.FORMERR),
    ],
)
def test_queries_a_resolver_does_not_take_are_refused_and_never_forwarded(strict, what, data, rcode):
    reply = exchange_raw(strict.address, data)
    assert (reply.header.rcode, reply.header.id, reply.rr) == (rcode, 0xABCD, []), what
    assert strict.upstream.asked == [] and strict.answers.calls == []
    [event] = strict.events.calls
    assert (event.verdict, event.reason) == ("error", "bad_request")


def test_an_edns_version_but_0_gets_badvers(strict):
    """RFC 6891 6.1.3: BADVERS (16: 0 in the header, 1 in the OPT's extended RCODE byte),
    with an OPT of the version we speak."""
    version_1 = OPT_V0[:5] + b"\x00\x01" + OPT_V0[7:]
    reply = exchange_raw(strict.address, raw_query(GITHUB, ar=version_1, arcount=1))
    [opt] = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert reply.header.rcode == 0 and (opt.ttl >> 24, (opt.ttl >> 16) & 0xFF) == (1, 0) and reply.rr == []
    assert strict.upstream.asked == [] and strict.events.calls[0].rcode == "BADVERS"
    # Version 0 is answered as usual.
    assert addresses(exchange_raw(strict.address, raw_query(GITHUB, ar=OPT_V0, arcount=1))) == ["192.0.2.140"]


@pytest.mark.parametrize(
    "label",
    [
        b"\\046api",  # dnslib's text form reads back as ".api"
        b"\\097pi",  # ... as "api": another name than was asked
        b"api.x",  # a dot inside a label: the text form would read as two labels
        b"b\xc3\xbccher",  # raw UTF-8 (the IDNA form is xn--bcher-kva)
        b"a b",
        b"a\x00b",
    ],
)
def test_a_name_no_host_has_is_nxdomain_and_never_forwarded(strict, caplog, label):
    """Its text form, which the policy matches and the upstream question was built from, is
    not the name that was asked: such a name is not one a policy could have meant."""
    name_wire = bytes([len(label)]) + label + GITHUB
    reply = exchange_raw(strict.address, raw_query(name_wire))
    assert (reply.header.rcode, reply.rr) == (RCODE.NXDOMAIN, [])
    assert strict.upstream.asked == [] and strict.answers.calls == []
    [event] = strict.events.calls
    assert (event.verdict, event.reason) == ("denied", "unsupported_name")
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]  # no traceback per query


def test_names_of_the_local_zone_are_never_forwarded(serve, recorder, ask):
    """Names in the simulator's own zone that it does not answer are NXDOMAIN even where the
    policy allows every name: no upstream knows them, and a host uplink's would learn them."""
    def local(qname, qtype):
        return ["198.51.100.7"] if qname == "dbx-1.devbox.internal" else None

    upstream = InProcessUpstream(Zone({"dbx-2.devbox.internal": ["192.0.2.1"]}).resolve)
    events = recorder()
    clients = {
        "allow_all": ClientView(matcher=None, allow_all=True, local_answer=local, local_zone="devbox.internal"),
        "pattern": ClientView(matcher=HostnameMatcher(["*.internal"]), allow_all=False, local_zone="devbox.internal"),
    }
    for name, client in clients.items():
        resolver = Resolver(lambda ip, c=client: c, upstream, on_query=events)
        address = serve(resolver.resolve).udp_addresses[0]
        for reply in (ask(address, "dbx-2.devbox.internal"), resolve(resolver, "dbx-2.devbox.internal"),
                      ask(address, "devbox.internal")):
            assert (reply.header.rcode, reply.rr) == (RCODE.NXDOMAIN, []), name
    assert upstream.asked == []
    assert {(e.verdict, e.reason) for e in events.calls} == {("denied", "unknown_local_name")}
    # What it does answer, it answers, also to ANY.
    resolver = Resolver(lambda ip: clients["allow_all"], upstream)
    assert addresses(resolve(resolver, "dbx-1.devbox.internal", "ANY")) == ["198.51.100.7"]
