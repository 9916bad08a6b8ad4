"""The socket half of the DNS proxy: receive, call the handler, send. No policy here.

Threads (all daemon):

  io thread      one selector over every UDP socket, every TCP listener and a wake-up
                 socketpair. UDP datagrams are queued raw (no parsing on this thread);
                 TCP connections are accepted and handed to a connection thread.
  workers        a small fixed pool: parse, call the handler, truncate if needed, send.
                 A fixed pool means a slow upstream for one client cannot stall the
                 others, and no thread is created per UDP query.
  connections    one thread per TCP connection (capped in all and, optionally, per client
                 address), several length-framed queries each, closed after an idle timeout;
                 optionally paced to a query rate per client (``rate.ClientRates``). With
                 every slot taken, a newcomer from a smaller group (``tcp_group``: e.g. an
                 account) ends the oldest connection of the largest group, so slots are
                 shared fairly rather than first come, first served.

Wire handlers. When the handler is the bound ``resolve`` of an object that also has
``resolve_wire(client_ip, data, tcp=False) -> bytes | None`` (``Resolver``), UDP is served
without the io thread and the queue: the workers themselves block in ``recvfrom`` on the UDP
sockets (the kernel wakes one of them per datagram), ask ``resolve_wire`` for the reply bytes
and send them - one thread and no hand-off per query, so a cache hit is answered by the
thread that received it, and a query that needs the upstream occupies that thread as before.
The kernel's socket buffer is then the bound on pending datagrams. ``resolve_wire`` returning
None means "not a query I handle": the worker then takes the general path below (parse,
handler, pack), which also counts malformed datagrams. TCP queries try ``resolve_wire`` too.
``stop()`` also calls the handler object's ``close()`` if it has one (the resolver releases
its pooled upstream sockets; it stays usable).

Sockets are handed in already bound, because the simulator creates them inside the router's
network namespace; the server owns them from then on and closes them in ``stop()``.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable

from dnslib import RCODE, DNSRecord

from .message import empty_reply, truncated, udp_limit, with_edns
from .rate import ClientRates
from .wire import other_opcode_reply, query_shape_ok

__all__ = ["DnsServer", "ServerStats", "bind_tcp", "bind_udp", "bind_udp_tcp"]

log = logging.getLogger(__name__)

Handler = Callable[[str, DNSRecord], DNSRecord]

_UDP_DRAIN = 64  # datagrams read per readiness event before servicing other sockets
_ACCEPT_DRAIN = 16
_TCP_MAX_MESSAGE = 65535


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_udp(host: str, port: int = 0) -> socket.socket:
    """A UDP socket bound to (host, port); port 0 picks a free one."""
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(host: str, port: int = 0, backlog: int = 128) -> socket.socket:
    """A listening TCP socket bound to (host, port); port 0 picks a free one."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        # A restarted simulator must be able to rebind port 53 while old connections
        # sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_udp_tcp(host: str, port: int = 0, *, attempts: int = 16) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on the same (host, port).

    DNS clients retry a truncated UDP answer over TCP on the *same* port, so a server needs
    both. With port 0 the UDP port is chosen by the kernel and may be taken for TCP; we try
    a few fresh ports before giving up.
    """
    last_error: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        udp = bind_udp(host, port)
        try:
            return udp, bind_tcp(host, udp.getsockname()[1])
        except OSError as exc:
            udp.close()
            last_error = exc
    assert last_error is not None
    raise last_error


class ServerStats:
    """Counters for observability and tests, read as attributes (``stats.answered``).

    ``incr`` takes a lock: `+=` on a shared attribute is not atomic across threads. The UDP
    readers count every query, so each has a shard of its own instead (a list only that
    thread writes); reading a counter adds the shards in.
    """

    COUNTERS = ("udp_received", "udp_dropped_overload", "udp_truncated", "malformed",
                "tcp_accepted", "tcp_rejected", "tcp_evicted", "tcp_paced", "answered", "handler_errors")
    # Index of each counter in a reader's shard.
    SHARD = ("udp_received", "udp_truncated", "answered")

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._shards: list[list[int]] = []

    def incr(self, counter: str) -> None:
        with self._lock:
            self._counts[counter] += 1

    def shard(self) -> list[int]:
        """A fresh [udp_received, udp_truncated, answered] for one thread to count in."""
        shard = [0] * len(self.SHARD)
        with self._lock:
            self._shards.append(shard)
        return shard

    def __getattr__(self, name: str) -> int:
        counts = self.__dict__.get("_counts")
        if counts is None or name not in counts:
            raise AttributeError(name)
        total = counts[name]
        if name in self.SHARD:
            index = self.SHARD.index(name)
            total += sum(shard[index] for shard in self._shards)
        return total

    def __repr__(self) -> str:
        return "ServerStats(" + ", ".join(f"{name}={getattr(self, name)}" for name in self.COUNTERS) + ")"


class DnsServer:
    """Serves ``handler(client_ip, request) -> reply`` on the given bound sockets."""

    def __init__(
        self,
        handler: Handler,
        *,
        udp_sockets: Iterable[socket.socket] = (),
        tcp_sockets: Iterable[socket.socket] = (),
        workers: int = 8,
        max_pending: int = 1024,
        max_tcp_connections: int = 64,
        max_tcp_per_client: int | None = None,
        tcp_idle_timeout: float = 5.0,
        max_queries_per_connection: int = 1000,
        tcp_query_rate: tuple[float, int] | None = None,
        tcp_group: Callable[[str], str | None] | None = None,
        name: str = "dns",
    ):
        self._handler = handler
        self._udp = list(udp_sockets)
        self._tcp = list(tcp_sockets)
        if not self._udp and not self._tcp:
            raise ValueError("DnsServer needs at least one socket")
        if workers < 1 or max_pending < 1 or max_tcp_connections < 1:
            raise ValueError("workers, max_pending and max_tcp_connections must be >= 1")
        self._workers_n = workers
        self._max_tcp = max_tcp_connections
        # Open connections per client address, when capped: one client must not hold every
        # connection slot (TCP is where truncated answers go).
        self._max_tcp_per_client = max_tcp_per_client
        self._tcp_per_client: dict[str, int] = {}
        # Who shares the connection slots fairly (e.g. a devbox's account; None or no function:
        # each client address alone). When every slot is taken, a newcomer whose group holds
        # fewer than the largest group less one takes the oldest connection of that group's
        # busiest client: no group can lock the others out of TCP by holding every slot.
        self._tcp_group = tcp_group
        self._conn_info: dict[socket.socket, tuple[str, str]] = {}  # conn -> (client, group)
        self._evicted: set[socket.socket] = set()
        self._idle = tcp_idle_timeout
        self._max_queries = max_queries_per_connection
        # (queries a second, burst) per client over TCP, all its connections together: a
        # connection over it waits (TCP pushes back on the client) instead of taking the CPU.
        self._tcp_rates = ClientRates(*tcp_query_rate) if tcp_query_rate is not None else None
        self._name = name
        # Bounded: under a flood we drop datagrams (clients retry) instead of growing memory.
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._stopping = threading.Event()
        self._started = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._io_thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        self.stats = ServerStats()
        owner = getattr(handler, "__self__", None)
        resolve_wire = getattr(owner, "resolve_wire", None)
        self._wire = resolve_wire if getattr(handler, "__name__", None) == "resolve" else None
        self._owner_close = getattr(owner, "close", None) if self._wire is not None else None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def udp_addresses(self) -> list[tuple]:
        return [s.getsockname() for s in self._udp]

    @property
    def tcp_addresses(self) -> list[tuple]:
        return [s.getsockname() for s in self._tcp]

    def start(self) -> DnsServer:
        if self._started:
            raise RuntimeError("DnsServer already started")
        self._started = True
        if self._wire is not None and self._udp:
            # Readers per socket; with more sockets than workers, one each.
            per_socket = max(1, self._workers_n // len(self._udp))
            for index, sock in enumerate(self._udp):
                sock.setblocking(True)
                for i in range(per_socket):
                    self._spawn(lambda sock=sock: self._reader(sock), f"{self._name}-worker-{index}.{i}")
        else:
            for i in range(self._workers_n):
                self._spawn(self._worker, f"{self._name}-worker-{i}")
        self._io_thread = self._spawn(self._io_loop, f"{self._name}-io")
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close every socket; returns within about ``timeout`` seconds."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        # The io thread first, so no datagram is queued and no connection accepted after
        # the steps below.
        if self._io_thread is not None:
            self._io_thread.join(max(0.0, deadline - time.monotonic()))
        with self._conns_lock:
            conns = list(self._conns.items())
        for conn, _thread in conns:
            try:
                # Wakes a connection thread blocked in recv(); close() alone would not.
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._wire is not None:
            for sock in self._udp:
                try:
                    # Wakes every reader blocked in recvfrom(), even on an unconnected UDP
                    # socket (Linux reports ENOTCONN but shuts the socket down anyway).
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        # Unblock idle workers. Pending datagrams are discarded: we are shutting down.
        for _ in range(self._queue.maxsize):
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in range(self._workers_n):
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for thread in self._threads + [t for _c, t in conns]:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not stop within %.1fs", thread.name, timeout)
        for sock in self._udp + self._tcp + [self._wake_r, self._wake_w]:
            sock.close()
        if self._owner_close is not None:
            try:
                self._owner_close()
            except Exception:
                log.exception("%s: closing the handler failed", self._name)

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target, name) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    # -- io thread ---------------------------------------------------------------------

    def _io_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            for sock in self._udp if self._wire is None else ():
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, "udp")
            for sock in self._tcp:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, "tcp")
            # Runs until stop(): the wake-up socketpair ends the blocking select.
            while not self._stopping.is_set():
                for key, _events in sel.select():
                    if key.data == "wake" or self._stopping.is_set():
                        return
                    try:
                        if key.data == "udp":
                            self._drain_udp(key.fileobj)
                        else:
                            self._accept(key.fileobj)
                    except Exception:
                        log.exception("%s: io error", self._name)

    def _drain_udp(self, sock: socket.socket) -> None:
        for _ in range(_UDP_DRAIN):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. ICMP errors surfacing from an earlier sendto; nothing to do.
                return
            self.stats.incr("udp_received")
            try:
                self._queue.put_nowait((sock, data, addr))
            except queue.Full:
                self.stats.incr("udp_dropped_overload")

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_DRAIN):
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client = addr[0]
            group = self._group_of(client)
            with self._conns_lock:
                held = self._tcp_per_client.get(client, 0)
                if (
                    (self._max_tcp_per_client is not None and held >= self._max_tcp_per_client)
                    or self._stopping.is_set()
                    # Evicted connections leave when their current query ends (an upstream
                    # lookup may take seconds): at most as many again may be on their way out.
                    or len(self._conns) >= 2 * self._max_tcp
                    or (len(self._conns) - len(self._evicted) >= self._max_tcp and not self._evict_for(group))
                ):
                    self.stats.incr("tcp_rejected")
                    conn.close()
                    continue
                self._tcp_per_client[client] = held + 1
                self._conn_info[conn] = (client, group)
                thread = threading.Thread(
                    target=self._serve_tcp,
                    args=(conn, addr),
                    name=f"{self._name}-tcp-{addr[0]}:{addr[1]}",
                    daemon=True,
                )
                self._conns[conn] = thread
                # Started under the lock so stop() never sees (and joins) an unstarted thread.
                thread.start()
            self.stats.incr("tcp_accepted")

    def _group_of(self, client: str) -> str:
        if self._tcp_group is not None:
            try:
                group = self._tcp_group(client)
            except Exception:
                log.exception("%s: tcp_group failed for %s", self._name, client)
                group = None
            if group is not None:
                return "g:" + group
        return "c:" + client

    def _evict_for(self, group: str) -> bool:
        """With every slot taken (``_conns_lock`` held): end the oldest connection of the busiest
        client of the largest group, if that group holds more than ``group`` plus one. True if
        one was ended (its thread gives the slot back as it exits)."""
        held: dict[str, list[tuple[socket.socket, str]]] = {}
        for conn, (client, owner) in self._conn_info.items():  # oldest first (dict order)
            if conn not in self._evicted:
                held.setdefault(owner, []).append((conn, client))
        largest = max(held, key=lambda g: len(held[g]), default=None)
        if largest is None or len(held[largest]) <= len(held.get(group, ())) + 1:
            return False
        per_client: dict[str, int] = {}
        for _, client in held[largest]:
            per_client[client] = per_client.get(client, 0) + 1
        busiest = max(per_client, key=per_client.__getitem__)
        victim = next(conn for conn, client in held[largest] if client == busiest)
        self._evicted.add(victim)
        try:
            victim.shutdown(socket.SHUT_RDWR)  # its thread's recv returns; it closes and leaves
        except OSError:
            pass
        self.stats.incr("tcp_evicted")
        return True

    # -- workers (UDP) -----------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            sock, data, addr = item
            try:
                self._answer_udp(sock, data, addr)
            except Exception:
                log.exception("%s: failed to answer %s", self._name, addr)

    def _reader(self, sock: socket.socket) -> None:
        """Wire-handler mode: receive, answer, send - all on this thread."""
        resolve_wire = self._wire
        stopping = self._stopping
        counts = self.stats.shard()  # [received, truncated, answered]
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        while True:
            try:
                data, addr = recvfrom(65535)
            except OSError:
                if stopping.is_set():
                    return
                time.sleep(0.001)  # e.g. a queued ICMP error; never spin on a broken socket
                continue
            if stopping.is_set():
                return
            counts[0] += 1
            try:
                wire = resolve_wire(addr[0], data)
                if wire is None:
                    self._answer_udp(sock, data, addr)
                    continue
                if wire[2] & 0x02:
                    counts[1] += 1
                try:
                    sendto(wire, addr)
                except OSError:
                    continue  # socket full or closed by stop(): UDP clients retry
                counts[2] += 1
            except Exception:
                log.exception("%s: failed to answer %s", self._name, addr)

    def _answer_udp(self, sock: socket.socket, data: bytes, addr) -> None:
        request = self._parse(data)
        if request is None:
            return
        if isinstance(request, bytes):  # answered from the header alone
            wire = request
        else:
            reply = with_edns(request, self._call(addr[0], request))
            wire = reply.pack()
            if len(wire) > udp_limit(request):
                self.stats.incr("udp_truncated")
                wire = truncated(reply).pack()
        try:
            sock.sendto(wire, addr)
        except OSError:
            return  # socket full or closed by stop(): UDP clients retry
        self.stats.incr("answered")

    # -- connections (TCP) -------------------------------------------------------------

    def _serve_tcp(self, conn: socket.socket, addr) -> None:
        try:
            conn.setblocking(True)
            for _ in range(self._max_queries):
                # The whole next message must arrive within the idle timeout, so a client
                # trickling one byte at a time cannot hold a connection slot forever.
                deadline = time.monotonic() + self._idle
                prefix = _recv_exact(conn, 2, deadline)
                if prefix is None:
                    return
                (length,) = struct.unpack("!H", prefix)
                data = _recv_exact(conn, length, deadline) if length else None
                if data is None:
                    return
                if self._tcp_rates is not None:
                    wait = self._tcp_rates.delay(addr[0])
                    if wait > 0:
                        self.stats.incr("tcp_paced")
                        if self._stopping.wait(wait):
                            return
                wire = self._wire(addr[0], data, tcp=True) if self._wire is not None else None
                if wire is not None:
                    conn.settimeout(self._idle)
                    conn.sendall(struct.pack("!H", len(wire)) + wire)
                    self.stats.incr("answered")
                    continue
                request = self._parse(data)
                if request is None:
                    return  # framing can no longer be trusted: close
                if isinstance(request, bytes):  # answered from the header alone
                    wire = request
                else:
                    reply = with_edns(request, self._call(addr[0], request))
                    wire = reply.pack()
                    if len(wire) > _TCP_MAX_MESSAGE:  # cannot be framed; tell the client so
                        wire = truncated(reply).pack()
                conn.settimeout(self._idle)
                conn.sendall(struct.pack("!H", len(wire)) + wire)
                self.stats.incr("answered")
        except (OSError, ValueError):
            return  # idle timeout, reset, or shut down by stop()
        except Exception:
            log.exception("%s: TCP connection from %s failed", self._name, addr)
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
                self._conn_info.pop(conn, None)
                self._evicted.discard(conn)
                left = self._tcp_per_client.get(addr[0], 1) - 1
                if left > 0:
                    self._tcp_per_client[addr[0]] = left
                else:
                    self._tcp_per_client.pop(addr[0], None)
            conn.close()

    # -- shared ------------------------------------------------------------------------

    def _parse(self, data: bytes) -> DNSRecord | bytes | None:
        """The request; or the reply (bytes) to one not given to dnslib; or None: dropped."""
        if not query_shape_ok(data):  # before dnslib: some small messages take it seconds
            self.stats.incr("malformed")
            # An UPDATE or NOTIFY (sections a query lacks) is told NOTIMP; anything else goes
            # unanswered.
            return other_opcode_reply(data)
        try:
            request = DNSRecord.parse(data)
        except Exception:  # dnslib raises DNSError, struct.error, IndexError, ...
            self.stats.incr("malformed")
            return None
        if request.header.qr:
            # A response sent to us: answering it could start a reflection loop.
            self.stats.incr("malformed")
            return None
        if not all(_legal_name(q.qname.label) for q in request.questions):
            # dnslib reads labels of any length, but such a name cannot be encoded back (or
            # looked up): not a query, and no traceback per packet a devbox can send.
            self.stats.incr("malformed")
            return None
        return request

    def _call(self, client_ip: str, request: DNSRecord) -> DNSRecord:
        try:
            return self._handler(client_ip, request)
        except Exception:
            self.stats.incr("handler_errors")
            log.exception("%s: handler failed", self._name)
            return empty_reply(request, RCODE.SERVFAIL)


def _legal_name(labels: tuple[bytes, ...]) -> bool:
    """RFC 1035 2.3.4: labels of 1-63 bytes, at most 255 bytes on the wire."""
    return all(0 < len(label) <= 63 for label in labels) and sum(len(label) + 1 for label in labels) < 255


def _recv_exact(conn: socket.socket, n: int, deadline: float) -> bytes | None:
    """Exactly n bytes, or None if the peer closed first; socket.timeout past ``deadline``."""
    buf = bytearray()
    # Each successful recv returns >= 1 byte, so n iterations always suffice.
    for _ in range(n):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("message not received in time")
        conn.settimeout(left)
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
        if len(buf) >= n:
            break
    return bytes(buf)
