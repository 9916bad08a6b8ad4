"""Upstream: UDP, TCP fallback on TC, failures as UpstreamError, socket_factory."""

from __future__ import annotations

import os
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


# -- polling for fast servers' replies (dns.reply_wait decides; these check the socket side) --


def _two_cpus_or_skip():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("polling needs two CPUs; CI has them")


def test_fast_server_is_polled_for_and_answers_stay_right(world):
    _two_cpus_or_skip()
    server, _ = world
    # A generous poll window and bound: on a loaded machine a loopback round trip may take ms.
    upstream = Upstream(server.udp_addresses, timeout=1.0, poll_for=0.05, poll_below=0.05)
    for _ in range(64):
        reply = upstream.query(DNSRecord.question("github.com"))
        assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.140"]
    # The first query only measures; polling and sleeping are then each tried, and every
    # EXPLORE-th eligible query takes the way not preferred, so both ways keep being used.
    assert upstream.polls >= 64 // 8
    assert upstream.polled == upstream.polls  # a 50 ms window catches every loopback reply
    wait = upstream.waits[server.udp_addresses[0]]
    assert wait.rtt_polling is not None and wait.rtt_sleeping is not None


def test_no_polling_on_one_cpu(world):
    server, _ = world
    upstream = Upstream(server.udp_addresses, timeout=1.0, poll_for=0.05, poll_below=0.05)
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # this thread only
    try:
        for _ in range(16):
            upstream.query(DNSRecord.question("github.com"))
    finally:
        os.sched_setaffinity(0, allowed)
    assert upstream.polls == 0


def test_no_polling_for_a_server_milliseconds_away(serve, world_zone):
    def slow(client_ip, request):
        time.sleep(0.005)
        return world_zone.resolve(client_ip, request)

    server = serve(slow)
    upstream = Upstream(server.udp_addresses, timeout=1.0)  # default bound: 1 ms
    for _ in range(8):
        assert upstream.query(DNSRecord.question("github.com")).header.rcode == RCODE.NOERROR
    assert upstream.polls == 0
    assert upstream.waits[server.udp_addresses[0]].rtt >= 0.005


def test_poll_ends_at_once_when_another_query_is_in_flight(silent_udp):
    from dns.upstream import _Conn

    conn = _Conn(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), silent_udp, 1.0)
    try:
        conn.sock.send(b"x" * 12)
        start = time.monotonic()
        assert conn.poll(5.0, [conn, object()]) is None
        assert time.monotonic() - start < 1.0
        start = time.monotonic()
        assert conn.poll(0.05, [conn]) is None  # alone: polls its whole window
        assert time.monotonic() - start >= 0.05
    finally:
        conn.close()


def test_a_failed_server_is_not_polled_for_until_it_answers_again(silent_udp, world):
    _two_cpus_or_skip()
    server, _ = world
    upstream = Upstream([silent_udp, server.udp_addresses[0]], timeout=0.2, poll_for=0.05, poll_below=0.05)
    silent_wait = upstream.waits[silent_udp]
    silent_wait.rtt = silent_wait.rtt_polling = silent_wait.rtt_sleeping = 0.0001  # as if it had answered
    upstream.query(DNSRecord.question("github.com"))  # the silent one times out, the next answers
    assert silent_wait.rtt is None
    assert silent_wait.choose(1, 2) is None


def test_poll_options_validated():
    with pytest.raises(ValueError):
        Upstream([("127.0.0.1", 53)], timeout=1, poll_for=-1)
    assert Upstream([("127.0.0.1", 53)], timeout=1, poll_for=0).poll_for == 0
