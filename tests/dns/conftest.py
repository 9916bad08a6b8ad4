"""Fixtures for the dns package tests: servers on 127.0.0.1 ephemeral ports, always stopped.

No __init__.py in this directory on purpose: with one, pytest would import these modules
as ``dns.<name>`` and collide with the package under test.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from dnslib import DNSRecord

from dns import DnsServer, Upstream, Zone, bind_udp_tcp

LOOPBACK = "127.0.0.1"


def _ask(address, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = 2.0) -> DNSRecord:
    """One query to ``address`` (host, port) over UDP or TCP; parsed reply."""
    request = DNSRecord.question(name, qtype)
    wire = request.send(address[0], address[1], tcp=tcp, timeout=timeout)
    reply = DNSRecord.parse(wire)
    assert reply.header.id == request.header.id
    return reply


def _tcp_exchange(sock: socket.socket, request: DNSRecord) -> DNSRecord:
    """Send one length-framed query on an open TCP connection and read the framed reply."""
    wire = request.pack()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    (length,) = struct.unpack("!H", _recv_exact(sock, 2))
    return DNSRecord.parse(_recv_exact(sock, length))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(n):
        if len(buf) >= n:
            break
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


@pytest.fixture
def ask():
    """ask(address, name, qtype="A", *, tcp=False, timeout=2.0) -> parsed reply."""
    return _ask


@pytest.fixture
def tcp_exchange():
    """tcp_exchange(connected_sock, request) -> parsed reply (2-byte length framing)."""
    return _tcp_exchange


@pytest.fixture
def serve():
    """serve(handler, **DnsServer kwargs) -> started DnsServer on UDP+TCP 127.0.0.1:<same port>."""
    servers: list[DnsServer] = []

    def start(handler, **kwargs) -> DnsServer:
        udp, tcp = bind_udp_tcp(LOOPBACK)
        server = DnsServer(handler, udp_sockets=[udp], tcp_sockets=[tcp], **kwargs)
        servers.append(server)  # registered before start so a failing start is still stopped
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop(timeout=2.0)


@pytest.fixture
def world_zone() -> Zone:
    return Zone(
        {
            "api.example.com": ["203.0.113.34", "2001:db8::34"],
            "example.com": ["203.0.113.101"],
            "a.b.example.com": ["203.0.113.102"],
            "cdn.provider.net": ["192.0.2.151", "192.0.2.165"],
            "github.com": ["192.0.2.140"],
            "big.example.com": [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(60)],
        },
        cnames={
            "www.example.com": "edge.example.com",
            "edge.example.com": "cdn.provider.net",
        },
        ttl=60,
    )


@pytest.fixture
def world(serve, world_zone):
    """The offline 'internet': world_zone served on loopback, plus an Upstream pointing at it."""
    server = serve(world_zone.resolve)
    upstream = Upstream([server.udp_addresses[0]], timeout=1.0)
    return server, upstream


class Recorder:
    """Thread-safe list of callback invocations."""

    def __init__(self):
        self.calls: list = []
        self._lock = threading.Lock()

    def __call__(self, *args):
        with self._lock:
            self.calls.append(args if len(args) != 1 else args[0])

    def __len__(self):
        with self._lock:
            return len(self.calls)


@pytest.fixture
def recorder():
    return Recorder
