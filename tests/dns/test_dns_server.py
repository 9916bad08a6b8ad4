"""DnsServer: framing, truncation, robustness against garbage, concurrency, shutdown."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from dnslib import RCODE, DNSRecord

from dns import DnsServer, Zone, bind_udp, bind_udp_tcp


@pytest.fixture
def zone():
    return Zone({"host.test": ["10.0.0.1"], "big.test": [f"10.2.0.{i}" for i in range(1, 61)]})


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    return sock


def test_malformed_udp_dropped_and_server_keeps_answering(serve, zone, ask):
    server = serve(zone.resolve)
    address = server.udp_addresses[0]
    response = DNSRecord.question("host.test").reply()  # QR set: must not be answered
    with udp_client() as sock:
        for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34" + b"\x01\x00" + b"\x00\x05" + b"\x00" * 6, response.pack()):
            sock.sendto(junk, address)
        # Datagrams from one socket are processed in order only per worker, so prove the
        # junk was handled by waiting for the counter (bounded), then check liveness.
        deadline = time.monotonic() + 2.0
        while server.stats.malformed < 5 and time.monotonic() < deadline:
            assert ask(address, "host.test").header.rcode == RCODE.NOERROR
        assert server.stats.malformed == 5
        sock.settimeout(0.0)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)  # nothing was sent back for any of the junk
    assert [str(rr.rdata) for rr in ask(address, "host.test").rr] == ["10.0.0.1"]


def _pointer_chain_query(depth: int = 900, extra: int = 1000) -> bytes:
    """~13 KB: question i's name is "a" + a pointer to question i-1's, the ``extra`` ones a
    bare pointer to the deepest. dnslib takes seconds to decode it (once per pointer, copying
    the labels at each level)."""
    data = bytearray(struct.pack("!HHHHHH", 0x1234, 0x0100, depth + extra, 0, 0, 0))
    prev = None
    for _ in range(depth):
        here = len(data)
        data += b"\x01a\x00" if prev is None else b"\x01a" + struct.pack("!H", 0xC000 | prev)
        data += b"\x00\x01\x00\x01"
        prev = here
    for _ in range(extra):
        data += struct.pack("!H", 0xC000 | prev) + b"\x00\x01\x00\x01"
    return bytes(data)


def test_queries_too_costly_to_parse_are_dropped_before_dnslib(serve, zone, ask):
    """Eight such datagrams, one per worker, left nobody answered for half a minute."""
    server = serve(zone.resolve, workers=2)
    address = server.udp_addresses[0]
    with udp_client() as sock:
        for _ in range(8):
            sock.sendto(_pointer_chain_query(), address)
        deadline = time.monotonic() + 2.0
        while server.stats.malformed < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats.malformed == 8
    assert [str(rr.rdata) for rr in ask(address, "host.test", timeout=1.0).rr] == ["10.0.0.1"]


def _name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\x00"


def _update() -> bytes:
    """nsupdate's "update add x.test 60 A 10.0.0.9" in zone test: opcode UPDATE, a record in
    the update (authority) section."""
    header = struct.pack("!HHHHHH", 0x4242, (5 << 11) | 0x0100, 1, 0, 1, 0)
    return header + _name("test") + struct.pack("!HH", 6, 1) + _name("x.test") + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 9])


def _tsig_query() -> bytes:
    """host.test A signed with TSIG (dig -y hmac-sha256:k:...): a TSIG record as additional."""
    header = struct.pack("!HHHHHH", 0x4343, 0x0100, 1, 0, 0, 1)
    rdata = _name("hmac-sha256") + struct.pack("!HIH", 0, 1700000000, 300) + struct.pack("!H", 32) + b"\x00" * 32 \
        + struct.pack("!HHH", 0x4343, 0, 0)
    return header + _name("host.test") + struct.pack("!HH", 1, 1) + _name("k") + struct.pack("!HHIH", 250, 255, 0, len(rdata)) + rdata


def test_an_update_is_told_notimp_from_its_header_and_a_signed_query_is_answered(serve, zone):
    """Neither is given to dnslib whole (an update's sections, like a crafted query's, could
    be costly to read) and neither is dropped: clients get their answer at once."""
    server = serve(zone.resolve)
    with udp_client() as sock:
        sock.sendto(_update(), server.udp_addresses[0])
        reply = DNSRecord.parse(sock.recv(4096))
        assert (reply.header.id, reply.header.qr, reply.header.opcode, reply.header.rcode) == (0x4242, 1, 5, RCODE.NOTIMP)
        assert (reply.questions, reply.rr, reply.auth, reply.ar) == ([], [], [], [])
        sock.sendto(_tsig_query(), server.udp_addresses[0])
        reply = DNSRecord.parse(sock.recv(4096))
        assert reply.header.id == 0x4343 and [str(rr.rdata) for rr in reply.rr] == ["10.0.0.1"]
        sock.sendto(DNSRecord.question("host.test").reply().pack()[:12] + b"\x00", server.udp_addresses[0])
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # a response is never answered, NOTIMP or not


def test_malformed_tcp_closes_connection_only(serve, zone, ask):
    server = serve(zone.resolve)
    address = server.tcp_addresses[0]
    with socket.create_connection(address, timeout=2.0) as conn:
        conn.sendall(struct.pack("!H", 5) + b"\x00junk")
        assert conn.recv(10) == b""  # closed by the server
    assert ask(address, "host.test", tcp=True).header.rcode == RCODE.NOERROR


def test_several_queries_per_tcp_connection(serve, zone, tcp_exchange):
    server = serve(zone.resolve)
    with socket.create_connection(server.tcp_addresses[0], timeout=2.0) as conn:
        for name in ("host.test", "big.test", "nope.test"):
            request = DNSRecord.question(name)
            reply = tcp_exchange(conn, request)
            assert reply.header.id == request.header.id
        assert len(tcp_exchange(conn, DNSRecord.question("big.test")).rr) == 60


def test_pipelined_tcp_queries_are_paced_per_client(serve, zone):
    """Thousands of queries fit in a few TCP segments, which no per-packet firewall limit sees:
    with a rate per client, a connection pipelining them is answered at that rate - every
    query, in order, just later - instead of taking the server's CPU."""
    rate, burst, count = 400, 20, 220
    server = serve(zone.resolve, tcp_query_rate=(rate, burst))
    queries = [DNSRecord.question("host.test") for _ in range(count)]
    with socket.create_connection(server.tcp_addresses[0], timeout=5.0) as conn:
        start = time.monotonic()
        conn.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.pack() for q in queries)))
        stream = conn.makefile("rb")
        ids = []
        for _ in range(count):
            (length,) = struct.unpack("!H", stream.read(2))
            ids.append(DNSRecord.parse(stream.read(length)).header.id)
        took = time.monotonic() - start
    assert ids == [q.header.id for q in queries]
    assert took >= (count - burst) / rate * 0.9  # 0.5 s at the rate; unpaced it takes ~0.05 s
    assert server.stats.tcp_paced > count // 2  # most waited their turn (tokens refill meanwhile)


def test_udp_truncation_respects_512_and_edns(serve, zone, ask):
    server = serve(zone.resolve)
    reply = ask(server.udp_addresses[0], "big.test")
    assert reply.header.tc and reply.rr == [] and reply.header.id
    assert len(ask(server.udp_addresses[0], "big.test", tcp=True).rr) == 60
    assert server.stats.udp_truncated == 1


def test_tcp_idle_timeout(serve, zone):
    server = serve(zone.resolve, tcp_idle_timeout=0.2)
    with socket.create_connection(server.tcp_addresses[0], timeout=3.0) as conn:
        start = time.monotonic()
        assert conn.recv(10) == b""
        assert time.monotonic() - start < 2.0


def test_tcp_connection_cap(serve, zone, tcp_exchange):
    server = serve(zone.resolve, max_tcp_connections=1)
    address = server.tcp_addresses[0]
    with socket.create_connection(address, timeout=2.0) as first:
        tcp_exchange(first, DNSRecord.question("host.test"))  # accepted and registered
        with socket.create_connection(address, timeout=2.0) as second:
            try:
                assert second.recv(10) == b""
            except ConnectionResetError:
                pass
        assert server.stats.tcp_rejected == 1
        assert tcp_exchange(first, DNSRecord.question("host.test")).header.rcode == RCODE.NOERROR


def _connect_from(source: str, address) -> socket.socket:
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(2.0)
    conn.bind((source, 0))
    conn.connect(address)
    return conn


def _refused(conn: socket.socket) -> bool:
    try:
        return conn.recv(10) == b""
    except ConnectionResetError:
        return True


def test_tcp_connections_are_capped_per_client(serve, zone, tcp_exchange):
    """One client holding its share of connections cannot keep another out (a devbox
    must not take every TCP slot of the shared resolver)."""
    server = serve(zone.resolve, max_tcp_connections=8, max_tcp_per_client=2)
    address = server.tcp_addresses[0]
    greedy = [_connect_from("127.0.0.2", address) for _ in range(2)]
    try:
        for conn in greedy:
            tcp_exchange(conn, DNSRecord.question("host.test"))  # accepted and registered
        with _connect_from("127.0.0.2", address) as third:
            assert _refused(third)
        assert server.stats.tcp_rejected == 1
        with _connect_from("127.0.0.3", address) as other:
            assert tcp_exchange(other, DNSRecord.question("host.test")).header.rcode == RCODE.NOERROR
        greedy.pop().close()
        deadline = time.monotonic() + 5.0  # bounded: the server notices the close
        while True:
            with _connect_from("127.0.0.2", address) as again:
                try:
                    if tcp_exchange(again, DNSRecord.question("host.test")).header.rcode == RCODE.NOERROR:
                        break
                except (OSError, struct.error):
                    pass
            assert time.monotonic() < deadline, "the closed connection's slot never came back"
            time.sleep(0.05)
    finally:
        for conn in greedy:
            conn.close()


def test_a_full_pool_is_shared_fairly_between_groups(serve, zone, tcp_exchange):
    """One group (an account's devboxes) holding every TCP slot cannot lock another out: a
    newcomer from a smaller group takes the oldest connection of the busiest client of the
    largest group; a newcomer of the largest group itself is refused."""
    groups = {"127.0.0.2": "greedy", "127.0.0.3": "greedy", "127.0.0.4": "polite", "127.0.0.5": "third"}
    server = serve(zone.resolve, max_tcp_connections=4, max_tcp_per_client=3, tcp_group=groups.get,
                   tcp_idle_timeout=30.0)
    address = server.tcp_addresses[0]
    held = [_connect_from(ip, address) for ip in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.2")]
    extra = []
    try:
        for conn in held:
            tcp_exchange(conn, DNSRecord.question("host.test"))  # accepted and registered
        with _connect_from("127.0.0.3", address) as same_group:
            assert _refused(same_group)  # the largest group gains nothing by asking again
        extra.append(_connect_from("127.0.0.4", address))
        assert tcp_exchange(extra[-1], DNSRecord.question("host.test")).header.rcode == RCODE.NOERROR
        # The oldest connection of the busiest greedy client (127.0.0.2's first) was ended.
        assert _refused(held[0])
        for conn in held[1:]:
            assert tcp_exchange(conn, DNSRecord.question("host.test")).header.rcode == RCODE.NOERROR
        assert (server.stats.tcp_evicted, server.stats.tcp_rejected) == (1, 1)
        # greedy 3, polite 1: a third group still gets in (3 > 0 + 1); then greedy 2, polite 1,
        # third 1 - polite asking again finds no group more than one ahead, and is refused.
        extra.append(_connect_from("127.0.0.5", address))
        assert tcp_exchange(extra[-1], DNSRecord.question("host.test")).header.rcode == RCODE.NOERROR
        assert server.stats.tcp_evicted == 2
        with _connect_from("127.0.0.4", address) as polite_again:
            assert _refused(polite_again)
    finally:
        for conn in held + extra:
            conn.close()


def test_without_groups_each_client_is_its_own(serve, zone, tcp_exchange):
    server = serve(zone.resolve, max_tcp_connections=2, tcp_idle_timeout=30.0)
    address = server.tcp_addresses[0]
    held = [_connect_from("127.0.0.2", address) for _ in range(2)]
    try:
        for conn in held:
            tcp_exchange(conn, DNSRecord.question("host.test"))
        with _connect_from("127.0.0.3", address) as other:
            assert tcp_exchange(other, DNSRecord.question("host.test")).header.rcode == RCODE.NOERROR
        assert _refused(held[0]) and server.stats.tcp_evicted == 1
    finally:
        for conn in held:
            conn.close()


def test_slow_query_does_not_block_others(serve, zone, ask):
    release = threading.Event()
    slow_started = threading.Event()

    def handler(client_ip, request):
        if str(request.q.qname) == "slow.test.":
            slow_started.set()
            release.wait(5.0)
        return zone.resolve(client_ip, request)

    server = serve(handler, workers=2)
    try:
        with udp_client() as slow:
            slow.sendto(DNSRecord.question("slow.test").pack(), server.udp_addresses[0])
            assert slow_started.wait(2.0)
            assert ask(server.udp_addresses[0], "host.test").header.rcode == RCODE.NOERROR
            release.set()
            assert DNSRecord.parse(slow.recv(4096)).header.rcode == RCODE.NXDOMAIN
    finally:
        release.set()


def test_handler_exception_is_servfail(serve, ask):
    def handler(client_ip, request):
        raise RuntimeError("boom")

    server = serve(handler)
    assert ask(server.udp_addresses[0], "x.test").header.rcode == RCODE.SERVFAIL
    assert ask(server.udp_addresses[0], "x.test", tcp=True).header.rcode == RCODE.SERVFAIL
    assert server.stats.handler_errors == 2


def test_handler_gets_client_ip(serve, zone, ask):
    seen = []
    server = serve(lambda ip, request: seen.append(ip) or zone.resolve(ip, request))
    ask(server.udp_addresses[0], "host.test")
    assert seen == ["127.0.0.1"]


def test_stop_is_quick_and_releases_everything(zone, tcp_exchange):
    udp, tcp = bind_udp_tcp("127.0.0.1")
    server = DnsServer(zone.resolve, udp_sockets=[udp], tcp_sockets=[tcp], name="stoptest")
    server.start()
    idle = None
    try:
        DNSRecord.question("host.test").send(*udp.getsockname(), timeout=2.0)
        idle = socket.create_connection(tcp.getsockname(), timeout=2.0)
        # One exchange proves the connection thread exists; it now waits in recv() for more.
        tcp_exchange(idle, DNSRecord.question("host.test"))
    finally:
        start = time.monotonic()
        server.stop(timeout=2.0)
        elapsed = time.monotonic() - start
        if idle is not None:
            idle.close()
    assert elapsed < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("stoptest")]
    assert udp.fileno() == -1 and tcp.fileno() == -1
    server.stop()  # idempotent


def test_needs_a_socket():
    with pytest.raises(ValueError):
        DnsServer(lambda ip, r: r)


def test_bind_helpers_use_ephemeral_ports():
    udp = bind_udp("127.0.0.1")
    try:
        assert udp.getsockname()[1] != 0
    finally:
        udp.close()
    udp, tcp = bind_udp_tcp("127.0.0.1")
    try:
        assert udp.getsockname() == tcp.getsockname()
    finally:
        udp.close()
        tcp.close()
