"""Upstream: UDP, TCP fallback on TC, failures as UpstreamError, socket_factory."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from dnslib import RCODE, DNSRecord

from dns.upstream import Upstream, UpstreamError
from dns.server import bind_udp


def test_query_restores_caller_id(world):
    _server, upstream = world
    request = DNSRecord.question("api.example.com")
    reply = upstream.query(request)
    assert reply.header.id == request.header.id
    assert [str(rr.rdata) for rr in reply.rr] == ["203.0.113.34"]


def test_truncated_udp_retried_over_tcp(world):
    server, upstream = world
    reply = upstream.query(DNSRecord.question("big.example.com"))
    assert not reply.header.tc
    assert len(reply.rr) == 60
    assert server.stats.udp_truncated >= 1


@pytest.fixture
def silent_udp():
    """A bound UDP socket that never answers: an upstream that is down but not refusing."""
    sock = bind_udp("127.0.0.1")
    try:
        yield sock.getsockname()
    finally:
        sock.close()


def test_timeout_raises_quickly(silent_udp):
    upstream = Upstream([silent_udp], timeout=0.2)
    start = time.monotonic()
    with pytest.raises(UpstreamError, match="timeout"):
        upstream.query(DNSRecord.question("x.test"))
    assert time.monotonic() - start < 1.5


def test_refused_port_raises():
    sock = bind_udp("127.0.0.1")
    address = sock.getsockname()
    sock.close()  # nothing listens now: ICMP port unreachable -> ECONNREFUSED
    with pytest.raises(UpstreamError, match="refused|timeout"):
        Upstream([address], timeout=1.0).query(DNSRecord.question("x.test"))


def test_falls_over_to_next_server(silent_udp, world):
    _server, good = world
    upstream = Upstream([silent_udp, good.servers[0]], timeout=0.2)
    assert upstream.query(DNSRecord.question("github.com")).header.rcode == RCODE.NOERROR


@pytest.fixture
def garbage_server():
    """Answers every datagram with junk, then with a well-formed reply carrying a wrong ID."""
    sock = bind_udp("127.0.0.1")
    sock.settimeout(5.0)
    stop = threading.Event()

    def run():
        for _ in range(1):  # bounded: Upstream sends exactly one datagram per server
            if stop.is_set():
                return
            try:
                data, addr = sock.recvfrom(4096)
            except OSError:
                return
            sock.sendto(b"\xde\xad\xbe\xef garbage", addr)
            wrong = DNSRecord.parse(data).reply()
            wrong.header.id ^= 0xFFFF
            sock.sendto(wrong.pack(), addr)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a recvfrom() still waiting (Linux)
        except OSError:
            pass
        sock.close()
        thread.join(2.0)


def test_garbage_and_mismatched_replies_ignored(garbage_server):
    with pytest.raises(UpstreamError):
        Upstream([garbage_server], timeout=0.3).query(DNSRecord.question("x.test"))


def test_socket_factory_is_used(world):
    _server, upstream = world
    made = []

    def factory(family, type_):
        made.append((family, type_))
        return socket.socket(family, type_)

    custom = Upstream(upstream.servers, timeout=1.0, socket_factory=factory)
    custom.query(DNSRecord.question("big.example.com"))
    assert made == [(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_STREAM)]


def test_constructor_validation():
    with pytest.raises(ValueError):
        Upstream([], timeout=1)
    with pytest.raises(ValueError):
        Upstream([("dns.google", 53)], timeout=1)
    with pytest.raises(ValueError):
        Upstream([("127.0.0.1", 53)], timeout=0)
