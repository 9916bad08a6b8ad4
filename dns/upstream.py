"""Forwarding a query to upstream servers: UDP first, TCP when the reply is truncated.

Sockets come from ``socket_factory(family, type)`` so the simulator can hand in sockets
created inside another network namespace; this module never knows about namespaces.

Each query goes out with a fresh random ID and must come back from the server it was sent
to (connected sockets) with that ID and the same question - anything else is ignored, which
is the cheap part of spoofing resistance. The caller's ID is restored on the reply.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence

from dnslib import DNSRecord

from .message import question

__all__ = ["Upstream", "UpstreamError"]

SocketFactory = Callable[[int, int], socket.socket]

# Bounds on the receive loops: stray or mismatched datagrams we skip before giving up.
_MAX_IGNORED_DATAGRAMS = 32


class UpstreamError(Exception):
    """No usable answer from any upstream server (timeout, refused, garbage)."""


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


class Upstream:
    """Forwards queries to ``servers`` in order until one gives a usable reply.

    ``timeout`` bounds each server attempt (UDP plus a possible TCP retry share it), so a
    query costs at most ``len(servers) * timeout``.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float = 2.0,
        *,
        socket_factory: SocketFactory = socket.socket,
    ):
        if not servers:
            raise ValueError("at least one upstream server is required")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        for host, _port in servers:
            ipaddress.ip_address(host)  # raise early on a hostname: we cannot resolve it
        self.servers = [(host, int(port)) for host, port in servers]
        self.timeout = timeout
        self._socket_factory = socket_factory

    def __repr__(self) -> str:
        return f"Upstream({self.servers!r}, timeout={self.timeout})"

    def query(self, request: DNSRecord) -> DNSRecord:
        """Send ``request`` upstream and return the reply (with the request's ID)."""
        q = question(request)
        if q is None:
            raise UpstreamError("query must have exactly one question")
        outgoing = DNSRecord.parse(request.pack())  # a copy we may renumber
        outgoing.header.id = secrets.randbelow(0x10000)
        wire = outgoing.pack()
        errors = []
        for server in self.servers:
            deadline = time.monotonic() + self.timeout
            try:
                reply = self._udp(server, wire, outgoing, deadline)
                if reply.header.tc:
                    reply = self._tcp(server, wire, outgoing, deadline)
            except (OSError, UpstreamError) as exc:
                errors.append(f"{server[0]}:{server[1]}: {_describe(exc)}")
                continue
            reply.header.id = request.header.id
            return reply
        raise UpstreamError("; ".join(errors))

    def _udp(self, server, wire: bytes, outgoing: DNSRecord, deadline: float) -> DNSRecord:
        with self._socket_factory(_family(server[0]), socket.SOCK_DGRAM) as sock:
            # connect(): the kernel drops datagrams from other sources and reports ICMP
            # port-unreachable as ConnectionRefusedError instead of a silent timeout.
            sock.settimeout(_remaining(deadline))
            sock.connect(server)
            sock.send(wire)
            for _ in range(_MAX_IGNORED_DATAGRAMS):
                sock.settimeout(_remaining(deadline))
                data = sock.recv(65535)
                reply = _parse_reply(data, outgoing)
                if reply is not None:
                    return reply
        raise UpstreamError("only mismatched or garbage replies")

    def _tcp(self, server, wire: bytes, outgoing: DNSRecord, deadline: float) -> DNSRecord:
        with self._socket_factory(_family(server[0]), socket.SOCK_STREAM) as sock:
            sock.settimeout(_remaining(deadline))
            sock.connect(server)
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", _recv_exact(sock, 2, deadline))
            data = _recv_exact(sock, length, deadline)
        reply = _parse_reply(data, outgoing)
        if reply is None:
            raise UpstreamError("garbage or mismatched TCP reply")
        return reply


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    # Each recv returns >= 1 byte or raises/ends, so n iterations is a hard bound.
    for _ in range(max(n, 1)):
        if len(buf) >= n:
            break
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise UpstreamError("connection closed mid-reply")
        buf += chunk
    return bytes(buf)


def _parse_reply(data: bytes, outgoing: DNSRecord) -> DNSRecord | None:
    """The reply if it answers ``outgoing`` (ID, QR, question), else None."""
    try:
        reply = DNSRecord.parse(data)
    except Exception:  # dnslib raises a mix of DNSError, struct.error, IndexError...
        return None
    if reply.header.id != outgoing.header.id or not reply.header.qr:
        return None
    # A truncated reply may omit the question; otherwise it must echo ours.
    if reply.questions:
        sent, got = outgoing.questions[0], reply.questions[0]
        if got.qtype != sent.qtype or str(got.qname).lower() != str(sent.qname).lower():
            return None
    return reply


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
