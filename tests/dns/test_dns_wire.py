"""The resolver's hot path (wire format): same answers, callbacks and events as the dnslib path."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from dnslib import AAAA, CNAME, EDNS0, QTYPE, RCODE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from dns import AnswerCache, ClientView, DnsServer, HostnameMatcher, Resolver, Upstream, Zone, bind_udp
from dns import wire

CLIENT = "127.0.0.1"


class FakeClock:
    def __init__(self, now: float = 500.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def view(*patterns, allow_all=False, ipv6=False, local_answer=None) -> ClientView:
    matcher = HostnameMatcher(patterns) if patterns else None
    return ClientView(matcher=matcher, allow_all=allow_all, ipv6=ipv6, local_answer=local_answer)


def summary(reply: DNSRecord) -> dict:
    """What a client sees, independent of how names were compressed."""
    h = reply.header
    return {
        "header": (h.id, h.qr, h.opcode, h.aa, h.tc, h.rd, h.ra, h.rcode),
        "questions": [(str(q.qname), q.qtype, q.qclass) for q in reply.questions],
        "rr": [(str(rr.rname).lower(), rr.rtype, rr.rclass, rr.ttl, str(rr.rdata).lower()) for rr in reply.rr],
        "auth": len(reply.auth),
        "ar": [(rr.rtype, rr.rclass, rr.ttl) for rr in reply.ar],
    }


def event_fields(event) -> tuple:
    return (event.client_ip, event.qname, event.qtype, event.verdict, event.reason,
            event.matched_pattern, event.addresses, event.ttl, event.error, event.rcode)


class Twin:
    """Two identical resolvers in front of one upstream: one answers via resolve_wire, the
    other via resolve (dnslib) + the server's EDNS echo and truncation, as DnsServer does."""

    def __init__(self, clients, upstream, **kwargs):
        self.calls = {"wire": [], "dnslib": []}
        self.events = {"wire": [], "dnslib": []}
        self.resolvers = {
            path: Resolver(
                clients,
                upstream,
                on_answer=lambda *args, path=path: self.calls[path].append(args),
                on_query=self.events[path].append,
                **kwargs,
            )
            for path in ("wire", "dnslib")
        }

    def both(self, request: DNSRecord, *, tcp: bool = False) -> tuple[DNSRecord, DNSRecord]:
        from dns.message import truncated, udp_limit, with_edns

        data = request.pack()
        fast = self.resolvers["wire"].resolve_wire(CLIENT, data, tcp=tcp)
        assert fast is not None, "query should have taken the wire path"
        slow = with_edns(request, self.resolvers["dnslib"].resolve(CLIENT, DNSRecord.parse(data)))
        packed = slow.pack()
        if not tcp and len(packed) > udp_limit(request):
            packed = truncated(slow).pack()
        return DNSRecord.parse(fast), DNSRecord.parse(packed)

    def assert_same(self, request: DNSRecord, *, tcp: bool = False) -> DNSRecord:
        fast, slow = self.both(request, tcp=tcp)
        assert summary(fast) == summary(slow)
        assert self.calls["wire"] == self.calls["dnslib"]
        assert [event_fields(e) for e in self.events["wire"]] == [event_fields(e) for e in self.events["dnslib"]]
        return fast


def question(name: str, qtype: str = "A", *, edns: int | None = None, rd: bool = True) -> DNSRecord:
    request = DNSRecord.question(name, qtype)
    request.header.rd = int(rd)
    if edns is not None:
        request.add_ar(EDNS0(udp_len=edns))
    return request


# -- same behaviour as the dnslib path --------------------------------------------------------


@pytest.fixture
def twin(world):
    def clients(ip):
        return {CLIENT: view("api.example.com", "*.example.com", "github.com", "missing.test")}.get(ip)

    return Twin(clients, world[1], cache=AnswerCache(0))


BIG = [f"10.1.0.{i}" for i in range(1, 61)]  # world_zone's big.example.com, in order


# What the client must see, besides both paths agreeing: rcode, TC bit, the answer section's
# rdata in order, whether an OPT record is echoed, and the resolver's verdict on the name.
@pytest.mark.parametrize(
    "name,qtype,kwargs,rcode,tc,answers,opt,verdict",
    [
        ("api.example.com", "A", {}, RCODE.NOERROR, 0, ["203.0.113.34"], False, "allowed"),
        # client's spelling echoed, answers still match
        ("API.Example.COM.", "A", {}, RCODE.NOERROR, 0, ["203.0.113.34"], False, "allowed"),
        # CNAME chain in one reply
        ("www.example.com", "A", {}, RCODE.NOERROR, 0,
         ["edge.example.com.", "cdn.provider.net.", "192.0.2.151", "192.0.2.165"], False, "allowed"),
        # IPv4-only client: empty NOERROR, not forwarded
        ("api.example.com", "AAAA", {}, RCODE.NOERROR, 0, [], False, "allowed"),
        # upstream NXDOMAIN
        ("nothere.example.com", "A", {}, RCODE.NXDOMAIN, 0, [], False, "allowed"),
        # NODATA (not an address type: dnslib reads the reply)
        ("github.com", "MX", {}, RCODE.NOERROR, 0, [], False, "allowed"),
        # denied: NXDOMAIN
        ("evil.net", "A", {}, RCODE.NXDOMAIN, 0, [], False, "denied"),
        # denied apex, RD clear echoed
        ("example.com", "A", {"rd": False}, RCODE.NXDOMAIN, 0, [], False, "denied"),
        # 60 records: truncated over UDP (header and question only)
        ("big.example.com", "A", {}, RCODE.NOERROR, 1, [], False, "allowed"),
        # EDNS: fits, OPT echoed
        ("big.example.com", "A", {"edns": 4096}, RCODE.NOERROR, 0, BIG, True, "allowed"),
        ("github.com", "A", {"edns": 1232}, RCODE.NOERROR, 0, ["192.0.2.140"], True, "allowed"),
    ],
)
def test_wire_path_matches_dnslib_path(twin, name, qtype, kwargs, rcode, tc, answers, opt, verdict):
    request = question(name, qtype, **kwargs)
    reply = twin.assert_same(request)
    assert (RCODE[reply.header.rcode], reply.header.tc) == (RCODE[rcode], tc)
    assert [str(rr.rdata) for rr in reply.rr] == answers
    assert [QTYPE[rr.rtype] for rr in reply.ar] == (["OPT"] if opt else [])
    assert reply.header.rd == request.header.rd
    assert [str(q.qname) for q in reply.questions] == [str(request.q.qname)]  # spelling kept
    assert [e.verdict for e in twin.events["wire"]] == [verdict]


def test_wire_path_matches_over_tcp(twin):
    reply = twin.assert_same(question("big.example.com"), tcp=True)
    assert not reply.header.tc and len(reply.rr) == 60


@pytest.mark.parametrize(
    "clients,rcode",
    [
        (lambda ip: None, RCODE.REFUSED),  # not a known devbox: refused, not answered
        (lambda ip: view(), RCODE.NXDOMAIN),  # a devbox whose policy allows no name: denied
    ],
    ids=["unknown-client", "deny-all"],
)
def test_unknown_client_and_deny_all(world, clients, rcode):
    twin = Twin(clients, world[1])
    reply = twin.assert_same(question("github.com"))
    assert RCODE[reply.header.rcode] == RCODE[rcode]
    assert reply.rr == []


def test_local_answer_same(world):
    def local(qname, qtype):
        return ["10.200.0.7", "fd00::7"] if qname == "devbox-2.devbox.local" else None

    twin = Twin(lambda ip: view(local_answer=local, ipv6=True), world[1])
    for qtype in ("A", "AAAA"):
        reply = twin.assert_same(question("Devbox-2.devbox.local", qtype))
        assert reply.header.aa and len(reply.rr) == 1


def test_on_answer_failure_and_upstream_failure_same(world):
    def boom(*args):
        raise RuntimeError("nft down")

    fast = Resolver(lambda ip: view("github.com"), world[1], on_answer=boom)
    reply = DNSRecord.parse(fast.resolve_wire(CLIENT, question("github.com").pack()))
    assert reply.header.rcode == RCODE.SERVFAIL and reply.rr == []

    silent = bind_udp("127.0.0.1")
    try:
        events = []
        dead = Resolver(lambda ip: view(allow_all=True), Upstream([silent.getsockname()], timeout=0.2),
                        on_query=events.append)
        reply = DNSRecord.parse(dead.resolve_wire(CLIENT, question("x.test").pack()))
        assert reply.header.rcode == RCODE.SERVFAIL
        assert (events[0].reason, "timeout" in events[0].error) == ("upstream_error", True)
    finally:
        silent.close()


def test_cname_only_upstream_chased_from_wire_path(serve):
    zone = Zone(
        {"cdn.provider.net": ["192.0.2.151"]},
        cnames={"www.example.com": "edge.example.com", "edge.example.com": "cdn.provider.net"},
        follow_cnames=False,
    )
    server = serve(zone.resolve)
    twin = Twin(lambda ip: view("www.example.com"), Upstream(server.udp_addresses, timeout=1.0))
    reply = twin.assert_same(question("www.example.com"))
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME", "CNAME", "A"]


def test_unrelated_records_dropped_on_wire_path(serve):
    def poisoning(client_ip, request):
        reply = request.reply()
        reply.add_answer(RR("evil.test", QTYPE.A, rdata=A("203.0.113.166"), ttl=60))
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("10.0.0.1"), ttl=60))
        return reply

    server = serve(poisoning)
    twin = Twin(lambda ip: view("good.test"), Upstream(server.udp_addresses, timeout=1.0))
    reply = twin.assert_same(question("good.test"))
    assert [str(rr.rdata) for rr in reply.rr] == ["10.0.0.1"]
    assert twin.calls["wire"] == [(CLIENT, "good.test", [("10.0.0.1", 60)])]


def test_unusual_queries_are_left_to_the_dnslib_path(world):
    called = []
    resolver = Resolver(lambda ip: called.append(ip) or view(allow_all=True), world[1],
                        on_query=called.append)
    plain = question("github.com").pack()
    two = DNSRecord(DNSHeader(id=1), questions=[DNSQuestion("a.test"), DNSQuestion("b.test")]).pack()
    compressed = plain[:12] + b"\xc0\x0c" + plain[-4:]
    chaos = plain[:-2] + b"\x00\x03"
    response = DNSRecord.question("github.com").reply().pack()
    notify = bytearray(plain)
    notify[2] |= 4 << 3  # opcode NOTIFY
    odd_label = DNSRecord.question("a b.test").pack()
    for data in (b"", b"\x00" * 11, plain + b"x", two, compressed, chaos, response, bytes(notify), odd_label,
                 DNSRecord(DNSHeader(id=7)).pack()):
        assert resolver.resolve_wire(CLIENT, data) is None
    assert called == []  # returned before any callback


# -- cache hits -------------------------------------------------------------------------------


def test_cache_hit_bytes_equal_fresh_reply_apart_from_ttl(world):
    clock = FakeClock()
    calls = []
    resolver = Resolver(lambda ip: view("*.example.com"), world[1], clock=clock,
                        on_answer=lambda *args: calls.append(args))
    first = resolver.resolve_wire(CLIENT, question("www.example.com").pack())
    clock.now += 10.5
    request = question("WWW.example.com")
    hit = DNSRecord.parse(resolver.resolve_wire(CLIENT, request.pack()))
    fresh = DNSRecord.parse(first)

    assert hit.header.id == request.header.id != fresh.header.id  # ID patched to the client's
    assert str(hit.q.qname) == "WWW.example.com."
    strip = lambda r: [(str(rr.rname).lower(), rr.rtype, str(rr.rdata)) for rr in r.rr]
    assert strip(hit) == strip(fresh)
    assert [rr.ttl for rr in fresh.rr] == [60, 60, 60, 60]
    assert [rr.ttl for rr in hit.rr] == [50, 50, 50, 50]  # 60 - 10.5, rounded up
    assert calls[1] == (CLIENT, "www.example.com", [("192.0.2.151", 50), ("192.0.2.165", 50)])

    clock.now += 0.4  # same second of age: same TTLs
    assert [rr.ttl for rr in DNSRecord.parse(resolver.resolve_wire(CLIENT, request.pack())).rr] == [50] * 4
    clock.now += 1.0
    assert [rr.ttl for rr in DNSRecord.parse(resolver.resolve_wire(CLIENT, request.pack())).rr] == [49] * 4


def test_cache_shared_between_paths(world):
    clock = FakeClock()
    for first_path in ("wire", "dnslib"):
        resolver = Resolver(lambda ip: view("*.example.com"), CountingUpstream(world[1]), clock=clock)
        if first_path == "wire":
            resolver.resolve_wire(CLIENT, question("api.example.com").pack())
        else:
            resolver.resolve(CLIENT, question("api.example.com"))
        clock.now += 5
        by_wire = DNSRecord.parse(resolver.resolve_wire(CLIENT, question("api.example.com").pack()))
        by_dnslib = resolver.resolve(CLIENT, question("api.example.com"))
        assert resolver._upstream.count == 1
        assert [(str(rr.rdata), rr.ttl) for rr in by_wire.rr] == [("203.0.113.34", 55)]
        assert [(str(rr.rdata), rr.ttl) for rr in by_dnslib.rr] == [("203.0.113.34", 55)]


class CountingUpstream:
    def __init__(self, inner: Upstream):
        self.inner = inner
        self.count = 0

    def query(self, request):
        self.count += 1
        return self.inner.query(request)

    def query_wire(self, name_wire, qtype):
        self.count += 1
        return self.inner.query_wire(name_wire, qtype)


def test_on_answer_runs_before_cache_hit_is_sent(serve, world):
    """As test_on_answer_runs_before_client_receives, for a hit served from cached bytes."""
    entered, release = threading.Event(), threading.Event()
    blocking = threading.Event()

    def on_answer(client_ip, qname, found):
        if blocking.is_set():
            entered.set()
            release.wait(5.0)

    resolver = Resolver(lambda ip: view("github.com"), world[1], on_answer=on_answer)
    server = serve(resolver.resolve)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.1", 0))
        client.settimeout(2.0)
        client.sendto(question("github.com").pack(), server.udp_addresses[0])
        client.recv(4096)  # warm: now cached
        client.settimeout(None)
        blocking.set()
        request = question("github.com")
        client.sendto(request.pack(), server.udp_addresses[0])
        assert entered.wait(2.0), "on_answer was never called"
        with pytest.raises(BlockingIOError):
            client.recv(4096, socket.MSG_DONTWAIT)
        release.set()
        client.settimeout(2.0)
        reply = DNSRecord.parse(client.recv(4096))
        assert reply.header.id == request.header.id
        assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.140"]
        deadline = time.monotonic() + 2.0  # counted just after the send: may lag the reply
        while server.stats.answered < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats.malformed == 0 and server.stats.answered == 2
    finally:
        release.set()
        client.close()


def test_section_aged_patches_only_ttls():
    records = [RR("x.test", QTYPE.A, rdata=A("10.0.0.1"), ttl=30), RR("x.test", QTYPE.A, rdata=A("10.0.0.2"), ttl=90)]
    section = wire.section_from_records("x.test", QTYPE.A, records)
    data, found, smallest = section.aged(0.2)
    assert data == section.data and found == [("10.0.0.1", 30), ("10.0.0.2", 90)] and smallest == 30
    data, found, smallest = section.aged(29.9)
    assert found == [("10.0.0.1", 1), ("10.0.0.2", 61)] and smallest == 1
    assert len(data) == len(section.data)
    diff = [i for i, (a, b) in enumerate(zip(data, section.data)) if a != b]
    assert all(any(o <= i < o + 4 for o in section.ttl_offsets) for i in diff)


# -- wire reading -----------------------------------------------------------------------------

_HEAD = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"  # id 0x1234, RD, one question
_A_IN = b"\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "qname_wire, expected",
    [
        (b"\x06GitHub\x03com\x00", "github.com"),
        (b"\x01a\x00", "a"),
        (b"\x05_http\x04_tcp\x02a-\x01b\x00", "_http._tcp.a-.b"),
        # A length byte that is itself a name character ("5" is 53) is still a length.
        (b"\x35" + b"x" * 53 + b"\x02io\x00", "x" * 53 + ".io"),
        # 255 bytes on the wire, the most RFC 1035 allows.
        ((b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00", ".".join(["a" * 63] * 3 + ["b" * 61])),
        ((b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"b" * 62 + b"\x00", None),  # 256 bytes
        (b"\x03a.b\x04test\x00", None),  # a dot inside a label is not two labels
        (b"\x03a b\x04test\x00", None),
        (b"\x03a\x00b\x04test\x00", None),
        (b"\x03\xc3\xa9a\x00", None),  # not ASCII
        (b"\x00", None),  # the root
        (b"\x40" + b"a" * 64 + b"\x00", None),  # label over 63
        (b"\x04test\xc0\x0c", None),  # a compression pointer in a query
        (b"\x04test", None),  # no terminator
        (b"\x09test\x00", None),  # a label running past the end
    ],
)
def test_parse_query_accepts_only_plain_names(qname_wire, expected):
    q = wire.parse_query(_HEAD + qname_wire + _A_IN)
    if expected is None:
        assert q is None
    else:
        assert q is not None and q.name == expected and q.name_wire == qname_wire.lower()
        assert (q.id, q.qtype, q.qend, q.udp_limit, q.edns) == (0x1234, 1, 12 + len(qname_wire) + 4, 512, False)



def _upstream_reply(qname: str, qtype: str, *records: RR, rcode: int = RCODE.NOERROR, tc: bool = False) -> tuple[bytes, bytes]:
    """(reply as dnslib packs it - owners compressed to the question - , our question section)."""
    request = DNSRecord.question(qname, qtype)
    reply = request.reply()
    reply.header.rcode = rcode
    reply.header.tc = int(tc)
    for rr in records:
        reply.add_answer(rr)
    return bytes(reply.pack()), bytes(request.pack()[12:])


@pytest.mark.parametrize(
    "qtype, records, expected",
    [
        ("A", [RR("x.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=30), RR("x.test", QTYPE.A, rdata=A("192.0.2.2"), ttl=90)],
         [("192.0.2.1", 0), ("192.0.2.2", 1)]),
        ("AAAA", [RR("x.test", QTYPE.AAAA, rdata=AAAA("2001:db8:0:0::1"), ttl=30)], [("2001:db8::1", 0)]),
        ("A", [], []),  # NODATA
        # Anything else is for read_answers: a CNAME chain, another owner, another type.
        ("A", [RR("x.test", QTYPE.CNAME, rdata=CNAME("y.test"), ttl=30), RR("y.test", QTYPE.A, rdata=A("192.0.2.1"))], None),
        ("A", [RR("other.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=30)], None),
        ("A", [RR("x.test", QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=30)], None),
        ("MX", [], None),
    ],
)
def test_read_address_answers_fast_path(qtype, records, expected):
    data, qsection = _upstream_reply("x.test", qtype, *records)
    got = wire.read_address_answers(data, qsection, getattr(QTYPE, qtype))
    if expected is None:
        assert got is None
        return
    rcode, section = got
    assert rcode == RCODE.NOERROR
    if not expected:
        assert section is None
        return
    # The same section, TTL offsets and addresses read_answers (the general reader) sees.
    _rcode, general, section_bytes, offsets = wire.read_answers(data, qsection)
    assert section.data == section_bytes and section.ttl_offsets == tuple(offsets)
    assert section.addresses == tuple(expected) and section.ttls == tuple(rr.ttl for rr in general)
    assert section.name_len == len(qsection) - 4


def test_read_address_answers_refuses_odd_replies():
    rr = RR("x.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=30)
    data, qsection = _upstream_reply("x.test", "A", rr)
    assert wire.read_address_answers(data[:-1], qsection, QTYPE.A) is None  # cut short
    assert wire.read_address_answers(data, qsection.replace(b"x", b"z"), QTYPE.A) is None  # not our question
    tc, _q = _upstream_reply("x.test", "A", rr, tc=True)
    assert wire.read_address_answers(tc, qsection, QTYPE.A) is None
    huge = bytearray(data)
    huge[-10] |= 0x80  # a TTL with the top bit set
    assert wire.read_address_answers(bytes(huge), qsection, QTYPE.A) is None
    nx, _q = _upstream_reply("x.test", "A", rcode=RCODE.NXDOMAIN)
    assert wire.read_address_answers(nx, qsection, QTYPE.A) == (RCODE.NXDOMAIN, None)


def test_read_name_refuses_forward_and_header_pointers():
    message = b"\x00" * 12 + b"\x01a\x04test\x00"
    assert wire.read_name(message, 12) == ("a.test", 20)
    assert wire.read_name(message + b"\xc0\x0c", 20) == ("a.test", 22)
    assert wire.read_name(message + b"\xc0\x05", 20) is None  # into the header
    assert wire.read_name(message + b"\xc0\x14", 20) is None  # to itself (a loop)
    assert wire.read_name(message + b"\xc0\x30", 20) is None  # forwards


# -- upstream socket reuse --------------------------------------------------------------------


def test_upstream_reuses_udp_sockets(world):
    _server, upstream = world
    made = []

    def factory(family, type_):
        made.append(type_)
        return socket.socket(family, type_)

    pooled = Upstream(upstream.servers, timeout=1.0, socket_factory=factory)
    for _ in range(5):
        assert pooled.query(DNSRecord.question("github.com")).header.rcode == RCODE.NOERROR
        raw, qsection = pooled.query_wire(b"\x06github\x03com\x00", QTYPE.A)
        assert raw[12 : 12 + len(qsection)] == qsection and raw[2] & 0x80
    assert made == [socket.SOCK_DGRAM]
    pooled.close()
    pooled.query(DNSRecord.question("github.com"))  # still usable after close()
    assert made == [socket.SOCK_DGRAM, socket.SOCK_DGRAM]
    pooled.close()


def test_timed_out_socket_is_not_reused():
    silent = bind_udp("127.0.0.1")
    made = []

    def factory(family, type_):
        made.append(type_)
        return socket.socket(family, type_)

    try:
        upstream = Upstream([silent.getsockname()], timeout=0.1, socket_factory=factory)
        for _ in range(2):
            with pytest.raises(Exception, match="timeout"):
                upstream.query_wire(b"\x01x\x04test\x00", QTYPE.A)
        assert len(made) == 2
    finally:
        silent.close()


# -- server in wire mode ----------------------------------------------------------------------


def test_wire_server_stops_quickly_and_closes_upstream_sockets(world):
    udp = bind_udp("127.0.0.1")
    upstream = Upstream(world[1].servers, timeout=1.0)
    resolver = Resolver(lambda ip: view("github.com"), upstream)
    server = DnsServer(resolver.resolve, udp_sockets=[udp], name="wiretest")
    server.start()
    try:
        reply = DNSRecord.parse(question("github.com").send(*udp.getsockname(), timeout=2.0))
        assert reply.header.rcode == RCODE.NOERROR
        assert sum(len(pool) for pool in upstream._idle.values()) == 1
    finally:
        start = time.monotonic()
        server.stop(timeout=2.0)
    assert time.monotonic() - start < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("wiretest")]
    assert udp.fileno() == -1
    assert sum(len(pool) for pool in upstream._idle.values()) == 0


def test_wire_server_counts_malformed_and_truncated(serve, world):
    resolver = Resolver(lambda ip: view("*.example.com"), world[1])
    server = serve(resolver.resolve)
    address = server.udp_addresses[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for junk in (b"", b"\xff" * 11, DNSRecord.question("x.example.com").reply().pack()):
            sock.sendto(junk, address)
        request = question("big.example.com")
        sock.sendto(request.pack(), address)
        reply = DNSRecord.parse(sock.recv(4096))
        assert reply.header.tc and reply.header.id == request.header.id
        deadline = time.monotonic() + 2.0
        while server.stats.malformed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert server.stats.malformed == 3 and server.stats.udp_truncated == 1


def _raw_query(labels: list[bytes], qid: int = 0x4242) -> bytes:
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


def test_names_longer_than_dns_allows_are_malformed_not_tracebacks(serve, world, caplog):
    """A 64-byte label or a name over 255 bytes is not a name (RFC 1035): counted as
    malformed and dropped quietly, over UDP and TCP; no error logged per packet (a devbox
    could otherwise fill the log) and the server keeps answering."""
    resolver = Resolver(lambda ip: view("*.example.com"), world[1])
    server = serve(resolver.resolve)
    bad = [_raw_query([b"a" * 64, b"example", b"com"]), _raw_query([b"b" * 63] * 4 + [b"example", b"com"])]
    with caplog.at_level("WARNING"), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for datagram in bad:
            sock.sendto(datagram, server.udp_addresses[0])
        deadline = time.monotonic() + 2.0
        while server.stats.malformed < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection(server.tcp_addresses[0], timeout=2.0) as conn:
            conn.sendall(struct.pack("!H", len(bad[0])) + bad[0])
            assert conn.recv(10) == b""  # closed: the framing is fine, the message is not
        request = question("github.example.com")
        sock.sendto(request.pack(), server.udp_addresses[0])
        assert DNSRecord.parse(sock.recv(4096)).header.id == request.header.id
    assert server.stats.malformed == 3
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "WARNING")] == []


def _query(name_wire: bytes, *, qd: int = 1, an: int = 0, ns: int = 0, extra: bytes = b"", ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 1, 0x0100, qd, an, ns, ar) + name_wire + b"\x00\x01\x00\x01" + extra


_OPT = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"
_WWW = b"\x03www\x07example\x03com\x00"


@pytest.mark.parametrize(
    "data",
    [
        _query(_WWW),
        _query(_WWW, extra=_OPT, ar=1),
        _query(_WWW, extra=_OPT + _OPT, ar=2),  # the resolver answers FORMERR
        _query(_WWW, extra=_WWW[4:] + b"\x00\x01\x00\x01", qd=2),  # FORMERR too
        _query(_WWW, extra=b"\xc0\x0c\x00\x01\x00\x01", qd=2),  # a backward pointer
        _query(b"\x3f" + b"a" * 63 + b"\x00"),
        _query(b"\x00"),  # the root
        _query(b"\x03foo\x00", extra=b"\x03foo\x00" + _OPT[1:], ar=1),  # OPT not owned by the root
        _query(b"\x01_\x03tcp\x00"),  # odd names still reach the resolver, which says NXDOMAIN
    ],
)
def test_query_shape_accepts_what_a_resolver_reads(data):
    assert wire.query_shape_ok(data)


def _chain(hops: int) -> bytes:
    """A query whose second OPT is owned by a name that follows ``hops`` pointers: a chain of
    pointers, each to the one before, laid in the first OPT's data."""
    head = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 2) + b"\x01a\x00\x00\x01\x00\x01"  # "a" at 12
    chain = bytearray()
    start = len(head) + 11  # where the first OPT's data begins
    prev = 12
    for _ in range(hops - 1):
        here = start + len(chain)
        chain += struct.pack("!H", 0xC000 | prev)
        prev = here
    first_opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00" + struct.pack("!H", len(chain)) + chain
    second_opt = struct.pack("!H", 0xC000 | prev) + _OPT[1:]
    return head + first_opt + second_opt


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 11,
        _query(_WWW, qd=5, extra=(b"\xc0\x0c\x00\x01\x00\x01") * 4),  # more questions than a query has
        _query(_WWW, an=1, extra=_WWW + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x01\x02\x03\x04"),
        _query(_WWW, ns=1, extra=_WWW + b"\x00\x02\x00\x01\x00\x00\x00\x00\x00\x01\x00"),
        _query(_WWW, ar=1, extra=_WWW + b"\x00\x05\x00\x01\x00\x00\x00\x00\x00\x02\xc0\x0c"),  # not an OPT
        _query(_WWW, ar=5, extra=_OPT * 5),
        _query(b"\xc0\x20\x00", extra=b"\x00" * 40),  # a forward pointer
        _query(b"\xc0\x05"),  # into the header
        _query(b"\x01a\xc0\x0c"),  # to itself
        _query(b"\x40" + b"a" * 64 + b"\x00"),  # a 64-byte label
        _query((b"\x3f" + b"a" * 63) * 4 + b"\x00"),  # 257 bytes
        _query(_WWW[:-1]),  # runs off the end
        _query(_WWW, extra=b"\x00\x00\x29", ar=1),  # a cut OPT
        _query(_WWW, extra=_OPT[:-2] + b"\x00\x09", ar=1),  # rdlength past the end
        _chain(33),
    ],
)
def test_query_shape_rejects_what_dnslib_would_spend_long_on_or_no_query_has(data):
    assert not wire.query_shape_ok(data)


def test_a_pointer_chain_within_the_limit_is_accepted():
    assert wire.query_shape_ok(_chain(32))
