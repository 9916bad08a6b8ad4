"""Forwarding a query to upstream servers: UDP first, TCP when the reply is truncated.

Sockets come from ``socket_factory(family, type)`` so the simulator can hand in sockets
created inside another network namespace; this module never knows about namespaces.

Each query goes out with a fresh random ID and must come back from the server it was sent
to (connected sockets) with that ID and the same question - anything else is ignored, which
is the cheap part of spoofing resistance. The caller's ID is restored on the reply.
"""

from __future__ import annotations

import array
import ipaddress
import math
import os
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


class _QueryIds:
    """Random 16-bit query IDs from the OS CSPRNG, fetched 1,024 at a time.

    One getrandom() call per thousand queries instead of one (plus secrets' Python
    machinery, ~3 us) per query. ``next`` on an array iterator runs under the GIL, so
    threads never get the same ID from one batch; two threads refilling at once just
    each start a fresh batch.
    """

    __slots__ = ("_ids",)

    def __init__(self):
        self._ids = iter(())

    def __call__(self) -> int:
        try:
            return next(self._ids)
        except StopIteration:
            self._ids = iter(array.array("H", os.urandom(2048)))
            return next(self._ids)


class _Conn:
    """A connected UDP socket to one server, blocking, with SO_RCVTIMEO as the timeout.

    A Python socket with a timeout polls before every send and recv; a blocking socket whose
    receive timeout the kernel enforces needs just the send and the recv.
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket, server, timeout: float):
        self.sock = sock
        try:
            sock.setblocking(True)
            self.set_timeout(timeout)
            # connect(): the kernel drops datagrams from other sources and reports ICMP
            # port-unreachable as ConnectionRefusedError instead of a silent timeout.
            sock.connect(server)
        except BaseException:
            sock.close()
            raise

    def set_timeout(self, seconds: float) -> None:
        micro = max(1, math.ceil(seconds * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", micro // 1_000_000, micro % 1_000_000))

    def recv(self) -> bytes:
        try:
            return self.sock.recv(65535)
        except BlockingIOError:  # EAGAIN: SO_RCVTIMEO ran out
            raise TimeoutError("timed out") from None

    def close(self) -> None:
        self.sock.close()


class Upstream:
    """Forwards queries to ``servers`` in order until one gives a usable reply.

    ``timeout`` bounds each server attempt (UDP plus a possible TCP retry share it), so a
    query costs at most ``len(servers) * timeout``.

    UDP sockets are kept for reuse (up to ``max_idle_sockets`` idle ones per server): a
    socket per query would cost more system calls than the query itself. A socket that saw
    an error or a timeout is closed, never reused; ``close()`` drops the idle ones (the
    Upstream stays usable and makes new ones as needed).
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float = 2.0,
        *,
        socket_factory: SocketFactory = socket.socket,
        max_idle_sockets: int = 16,
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
        self._max_idle = max_idle_sockets
        self._next_id = _QueryIds()
        # list.append/pop are atomic: no lock needed for the idle pools.
        self._idle: dict[tuple[str, int], list[_Conn]] = {server: [] for server in self.servers}

    def __repr__(self) -> str:
        return f"Upstream({self.servers!r}, timeout={self.timeout})"

    def close(self) -> None:
        """Close the idle pooled sockets (sockets in use are closed when their query ends)."""
        for pool in self._idle.values():
            while True:
                try:
                    pool.pop().close()
                except IndexError:
                    break

    def query(self, request: DNSRecord) -> DNSRecord:
        """Send ``request`` upstream and return the reply (with the request's ID)."""
        q = question(request)
        if q is None:
            raise UpstreamError("query must have exactly one question")
        qid = self._next_id()
        wire = struct.pack("!H", qid) + request.pack()[2:]  # a renumbered copy

        def accept(data: bytes):
            return _parse_reply(data, qid, q)

        reply, _data = self._exchange(wire, accept)
        reply.header.id = request.header.id
        return reply

    def query_wire(self, name_wire: bytes, qtype: int) -> tuple[bytes, bytes]:
        """Ask for (name, qtype, IN) with RD set; (raw reply, our question section).

        ``name_wire`` is the lowercased wire form of the name. The reply has passed the same
        checks as in ``query`` (our ID, QR, our question); the hot path reads it with
        ``wire.read_answers``, anything else with dnslib.
        """
        qid = self._next_id()
        qsection = name_wire + struct.pack("!HH", qtype, 1)
        wire = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qsection
        head = struct.pack("!H", qid)
        qlen = len(qsection)

        def accept(data: bytes):
            if data[:2] != head or len(data) < 12 or not data[2] & 0x80:
                return None
            qd = data[4:6]
            if qd == b"\0\1" and data[12 : 12 + qlen].lower() == qsection:
                return data
            if qd == b"\0\0":
                return data  # e.g. truncated without question, as ``query`` allows
            # Unusual layout (compressed question, several questions): let dnslib judge.
            return data if _parse_reply(data, qid, _Question(name_wire, qtype)) is not None else None

        return self._exchange(wire, accept)[1], qsection

    # -- transport -------------------------------------------------------------------------

    def _exchange(self, wire: bytes, accept):
        """(accept(reply), reply) from the first server that gives an accepted reply."""
        errors = []
        for server in self.servers:
            deadline = time.monotonic() + self.timeout
            try:
                data, got = self._udp(server, wire, accept, deadline)
                if data[2] & 0x02:  # TC: the full answer needs TCP
                    data, got = self._tcp(server, wire, accept, deadline)
            except (OSError, UpstreamError) as exc:
                errors.append(f"{server[0]}:{server[1]}: {_describe(exc)}")
                continue
            return got, data
        raise UpstreamError("; ".join(errors))

    def _udp(self, server, wire: bytes, accept, deadline: float):
        pool = self._idle[server]
        try:
            conn = pool.pop()
        except IndexError:
            conn = _Conn(self._socket_factory(_family(server[0]), socket.SOCK_DGRAM), server, self.timeout)
        reusable = True
        try:
            conn.sock.send(wire)
            for _ in range(_MAX_IGNORED_DATAGRAMS):
                data = conn.recv()
                got = accept(data) if len(data) >= 12 else None
                if got is not None:
                    if reusable and len(pool) < self._max_idle:
                        pool.append(conn)
                        conn = None
                    return data, got
                # Not ours (e.g. a late duplicate): wait only for what is left of the attempt,
                # and do not pool a socket whose timeout no longer is the default.
                reusable = False
                conn.set_timeout(_remaining(deadline))
            raise UpstreamError("only mismatched or garbage replies")
        finally:
            if conn is not None:
                conn.close()

    def _tcp(self, server, wire: bytes, accept, deadline: float):
        with self._socket_factory(_family(server[0]), socket.SOCK_STREAM) as sock:
            sock.settimeout(_remaining(deadline))
            sock.connect(server)
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", _recv_exact(sock, 2, deadline))
            data = _recv_exact(sock, length, deadline)
        got = accept(data) if len(data) >= 12 else None
        if got is None:
            raise UpstreamError("garbage or mismatched TCP reply")
        return data, got


class _Question:
    """The question ``query_wire`` asked, in the shape _parse_reply compares."""

    def __init__(self, name_wire: bytes, qtype: int):
        labels, pos = [], 0
        while name_wire[pos]:
            labels.append(name_wire[pos + 1 : pos + 1 + name_wire[pos]].decode("ascii"))
            pos += 1 + name_wire[pos]
        self.qname = ".".join(labels) + "."
        self.qtype = qtype


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


def _parse_reply(data: bytes, qid: int, sent) -> DNSRecord | None:
    """The reply if it answers our query (ID ``qid``, QR, question ``sent``), else None."""
    try:
        reply = DNSRecord.parse(data)
    except Exception:  # dnslib raises a mix of DNSError, struct.error, IndexError...
        return None
    if reply.header.id != qid or not reply.header.qr:
        return None
    # A truncated reply may omit the question; otherwise it must echo ours.
    if reply.questions:
        got = reply.questions[0]
        if got.qtype != sent.qtype or str(got.qname).lower() != str(sent.qname).lower():
            return None
    return reply


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
