"""Change nftables set elements by raw nf_tables netlink, without libnftables.

Two hot paths use it. The resolver puts every allowed DNS answer's addresses into the
devbox's ``learned_<key>`` set before the reply leaves, and a policy update refills its
policy's sets (``netns.ruleset.update_policy`` changes elements only). Through libnftables
(``netns.nft``) each call re-reads the kernel's table, chain and set cache, which grows with
every devbox: ~0.7 ms for one learned address, ~2 ms for a policy update among 100 devboxes.
Here a change is one batch on a netlink socket opened once in the target namespace: tens of
microseconds, however many sets exist.

A batch is one nf_tables transaction: all of its operations or none. ``add`` has the
semantics of ``add element`` (same attributes as libnftnl sends): new elements are inserted;
an existing one with a timeout gets the new timeout and, through the explicit expiration, a
re-armed expiry (see ``netns.ruleset.learned_add``). ``delete`` fails the batch if an element
is absent (ENOENT), as ``delete element`` does; ``flush`` empties a set.

Message layout (linux/netfilter/nf_tables.h, nfnetlink.h)::

    nlmsghdr | nfgenmsg(family, version 0, res_id) | attributes
    NFNL_MSG_BATCH_BEGIN       res_id = htons(NFNL_SUBSYS_NFTABLES)
    NFT_MSG_NEWSETELEM         add:    NLM_F_CREATE
    NFT_MSG_DELSETELEM         delete; flush: the same without ELEMENTS
      NFTA_SET_ELEM_LIST_TABLE    "devbox_sim"
      NFTA_SET_ELEM_LIST_SET      "learned_<key>"
      NFTA_SET_ELEM_LIST_ELEMENTS (nested; a message holds at most ~60 KB of them, since an
                                   attribute's length is 16 bits: longer lists take several)
        NFTA_LIST_ELEM (nested), one per element
          NFTA_SET_ELEM_KEY (nested) > NFTA_DATA_VALUE      the key's bytes
          NFTA_SET_ELEM_KEY_END (nested) > NFTA_DATA_VALUE  a concatenated range's last key
          NFTA_SET_ELEM_TIMEOUT                             be64 milliseconds
          NFTA_SET_ELEM_EXPIRATION                          be64 milliseconds
    ...                        one message per operation (or chunk); the last one NLM_F_ACK
    NFNL_MSG_BATCH_END

Replies. The kernel runs the whole batch inside ``send``, commits or aborts it, then queues
its replies: an error for each message it refused, and an ACK for each message that asked
for one. Only the last operation asks: a batch then gets one reply when committed, and the
refused message's error first when aborted, however many messages it holds. (An ACK per
message, libnftables' way, takes ~770 bytes of the socket's receive buffer each: past ~255
messages the kernel drops replies of a batch it has committed, and the sender cannot tell
a commit from a refusal.) Replies left over from an earlier batch are drained before each
send. If the kernel cannot queue a reply (ENOBUFS: its receive buffer is full, or an
allocation failed), the errors it did queue tell a refused batch; without one, the outcome is
unknown, and the caller is told so.

Keys are raw bytes here; ``netns.nft_element_json`` turns libnftables JSON element commands
(what ``netns.ruleset`` compiles) into these operations.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple, Self

from netns import namespaces

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFPROTO_INET = 1
FAMILIES = {"inet": NFPROTO_INET, "ip": 2, "bridge": 7}

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # an error reply quotes only the header of the refused message
SO_SNDBUFFORCE = 32

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_SET_ELEM_KEY_END = 10
NFTA_DATA_VALUE = 1

# Elements per message: the nested ELEMENTS attribute's length is a u16.
_MAX_ELEMENTS_BYTES = 60_000
_SEQ_LIMIT = 0x3FFFFFFF
_RECV_TIMEOUT_S = 2.0
_DRAIN_MAX = 10_000  # replies discarded before a send, at most


class NftElementsError(RuntimeError):
    """The kernel refused the batch (e.g. no such set); ``errno`` holds its error."""

    def __init__(self, err: int, what: str):
        super().__init__(f"{what}: {os.strerror(err)}")
        self.errno = err


class Element(NamedTuple):
    """One set element: its key bytes, a concatenated range's last key (``key_end``, for
    interval sets of concatenations), and an optional timeout in whole seconds (sent with
    expiration == timeout). A NamedTuple, checked when encoded: the resolver makes one or
    more per answer."""

    key: bytes
    key_end: bytes | None = None
    timeout: int | None = None


class SetOp(NamedTuple):
    """One operation on one set: ``add`` or ``delete`` its ``elements``, or ``flush`` it."""

    op: Literal["add", "delete", "flush"]
    family: str
    table: str
    set: str
    elements: tuple[Element, ...] = ()


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)


def _nested(kind: int, payload: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, payload)


def _msg(kind: int, flags: int, seq: int, family: int, res_id: int, attrs: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _element(e: Element) -> bytes:
    out = _nested(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, e.key))
    if e.key_end is not None:
        out += _nested(NFTA_SET_ELEM_KEY_END, _attr(NFTA_DATA_VALUE, e.key_end))
    if e.timeout is not None:
        if int(e.timeout) < 1:
            raise ValueError(f"timeout must be >= 1 second: {e.timeout!r}")
        ms = struct.pack(">Q", int(e.timeout) * 1000)
        out += _attr(NFTA_SET_ELEM_TIMEOUT, ms) + _attr(NFTA_SET_ELEM_EXPIRATION, ms)
    return _nested(NFTA_LIST_ELEM, out)


def _chunks(encoded: list[bytes]) -> list[bytes]:
    chunks: list[bytes] = []
    current = b""
    for one in encoded:
        if current and len(current) + len(one) > _MAX_ELEMENTS_BYTES:
            chunks.append(current)
            current = b""
        current += one
    chunks.append(current)
    return chunks


def _dedupe(elements: Iterable[Element]) -> list[Element]:
    """One element per key (and range end), in order of first appearance: the last one
    given wins."""
    latest: dict[tuple[bytes, bytes | None], Element] = {}
    for e in elements:
        latest[(e.key, e.key_end)] = e
    return list(latest.values())


def encode_batch(ops: Sequence[SetOp], seq: int) -> tuple[bytes, list[int]]:
    """The batch applying ``ops`` in order as one transaction (BEGIN has sequence number
    ``seq``, then one message or more per operation, then END), and for each message between
    BEGIN and END the index of its operation in ``ops``. Pure. An ``add``/``delete`` without
    elements is left out (an empty delete would be a flush to the kernel); no operation left:
    an empty batch. Duplicate elements of an ``add`` are merged (the last one wins)."""
    parts: list[tuple[int, int, int, bytes]] = []  # (message type, flags, family, attributes)
    owners: list[int] = []
    for index, op in enumerate(ops):
        if op.op not in ("add", "delete", "flush") or op.family not in FAMILIES:
            raise ValueError(f"unknown set operation {op.op!r} or family {op.family!r}")
        if op.op == "flush" and op.elements:
            raise ValueError("a flush takes no elements")
        names = (_attr(NFTA_SET_ELEM_LIST_TABLE, op.table.encode() + b"\0")
                 + _attr(NFTA_SET_ELEM_LIST_SET, op.set.encode() + b"\0"))
        if op.op == "flush":
            bodies = [names]
        else:
            elements = _dedupe(op.elements) if op.op == "add" else list(op.elements)
            if not elements:
                continue
            bodies = [names + _nested(NFTA_SET_ELEM_LIST_ELEMENTS, chunk)
                      for chunk in _chunks([_element(e) for e in elements])]
        kind, flags = ((NFT_MSG_NEWSETELEM, NLM_F_CREATE) if op.op == "add" else (NFT_MSG_DELSETELEM, 0))
        for body in bodies:
            parts.append(((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | flags, FAMILIES[op.family], body))
            owners.append(index)
    if not parts:
        return b"", []
    msgs = [_msg(kind, flags | (NLM_F_ACK if i == len(parts) - 1 else 0), seq + 1 + i, family, 0, body)
            for i, (kind, flags, family, body) in enumerate(parts)]  # one ACK: see Replies above
    batch = (_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES)
             + b"".join(msgs)
             + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1 + len(msgs), 0, NFNL_SUBSYS_NFTABLES))
    return batch, owners


def _ipv4(ip: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET, ip)  # dotted quads only; ~20x ipaddress's speed
    except (OSError, TypeError):
        raise ValueError(f"not an IPv4 address: {ip!r}") from None


def _ipv4_entries(entries: Iterable[tuple[str, int]]) -> list[Element]:
    return [Element(_ipv4(ip), None, int(t)) for ip, t in entries]


def encode_add(family: str, table: str, set_name: str, entries: Iterable[tuple[str, int]], seq: int) -> bytes:
    """The batch adding ``[(ipv4, timeout_seconds)]`` (pure). Each element gets
    timeout == expiration, as ``ruleset.learned_add`` does. Duplicate addresses: last wins."""
    return encode_batch([SetOp("add", family, table, set_name, tuple(_ipv4_entries(entries)))], seq)[0]


class SetElements:
    """A netlink socket in network namespace ``netns`` (a /run/netns name; None: the calling
    thread's) for changing set elements. Thread-safe (one batch at a time)."""

    def __init__(self, netns: str | None = None):
        if netns is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        else:
            self._sock = namespaces.socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        # Every read is MSG_DONTWAIT, and a wait is a poll with a deadline: a Python socket
        # timeout would make the drain's reads wait too, and the kernel's SO_RCVTIMEO starts
        # over each time a signal interrupts the read (Python retries it), so signals coming
        # faster than the timeout would make the wait endless.
        self._sock.setblocking(True)
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self._lock = threading.Lock()
        self._seq = 1

    def add(self, family: str, table: str, set_name: str, entries: Iterable[tuple[str, int]]) -> None:
        """Insert or re-arm ``[(ipv4, timeout_seconds)]``."""
        self.apply([SetOp("add", family, table, set_name, tuple(_ipv4_entries(entries)))])

    def add_keys(self, family: str, table: str, set_name: str, entries: Iterable[tuple[bytes, int]]) -> None:
        """``add`` for keys given as the set's raw key bytes (e.g. one byte for ``nf_proto``)."""
        self.apply([SetOp("add", family, table, set_name, tuple(Element(bytes(k), timeout=int(t)) for k, t in entries))])

    def apply(self, ops: Sequence[SetOp]) -> None:
        """Run ``ops`` as one transaction; NftElementsError (nothing applied) if refused."""
        with self._lock:
            seq = self._seq
            batch, owners = encode_batch(ops, seq)
            if not batch:
                return
            if seq + len(owners) + 1 >= _SEQ_LIMIT:
                seq = 1
                batch, owners = encode_batch(ops, seq)
            self._seq = seq + len(owners) + 2
            self._fit_send_buffer(len(batch))
            self._drain()
            self._sock.send(batch)
            self._await_acks(seq, owners, ops)

    def _fit_send_buffer(self, size: int) -> None:
        """A netlink message larger than the socket's send buffer is refused (EMSGSIZE); a
        large policy update grows it, as libnftables does."""
        need = size + 4096
        if need <= self._sndbuf:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, need)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, need)
        self._sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

    def _drain(self) -> None:
        """Discard replies still queued from an earlier batch (the errors after the first of
        a refused one, or the replies of one whose wait timed out): they would fill the
        receive buffer, and a full buffer makes the kernel drop the next batch's reply."""
        for _ in range(_DRAIN_MAX):
            try:
                self._sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ENOBUFS: replies were dropped earlier; reading clears it
                if exc.errno != errno.ENOBUFS:
                    raise

    def _await_acks(self, seq: int, owners: list[int], ops: Sequence[SetOp]) -> None:
        """Wait for the batch's ACK (on its last operation message: see Replies above). An
        error on any message of the batch, BEGIN and END included, comes before it and fails
        the batch (NftElementsError: nothing applied), naming the operation the kernel
        refused. Replies to an earlier batch are skipped. When the kernel could not queue a
        reply (ENOBUFS), what it did queue decides: an error of this batch means refused;
        none means the outcome is unknown (OSError, like a timeout: the caller must not
        assume nothing changed)."""
        end = seq + len(owners) + 1
        overflowed = False
        deadline = None
        while True:
            try:
                # The kernel handles a batch within send(), so its replies are normally queued
                # by now: the first read finds them without a poll.
                buf = self._sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if overflowed:
                    raise OSError(errno.ENOBUFS, f"nf_tables lost its answer to a batch of {len(ops)} set "
                                                 "operations: applied or not") from None
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + _RECV_TIMEOUT_S
                # poll() resumes after a signal with what is left of its timeout (PEP 475).
                if now >= deadline or not self._poll.poll(max(1, int((deadline - now) * 1000))):
                    raise TimeoutError(f"nf_tables did not answer a batch of {len(ops)} set operations") from None
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                overflowed = True  # replies were dropped; read what is queued without waiting
                continue
            off = 0
            while off + 16 <= len(buf):
                length, kind, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", buf, off)
                if length < 16:
                    break
                if kind == NLMSG_ERROR and seq <= msg_seq <= end:
                    (err,) = struct.unpack_from("=i", buf, off + 16)
                    if err:
                        if seq < msg_seq < end:
                            op = ops[owners[msg_seq - seq - 1]]
                            raise NftElementsError(-err, f"{op.op} element {op.family} {op.table} {op.set}")
                        raise NftElementsError(-err, f"nf_tables batch of {len(ops)} set operations")
                    if msg_seq == end - 1:
                        return
                off += (length + 3) & ~3

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Element", "NftElementsError", "SetElements", "SetOp", "encode_add", "encode_batch"]
