"""Add IPv4 elements with a timeout to an nftables set by raw nf_tables netlink.

This is the resolver's hot path: every allowed DNS answer puts its addresses into the
devbox's ``learned_<key>`` set before the reply leaves. Through libnftables (``netns.nft``)
one such ``add element`` cost ~0.7 ms, most of it re-reading the kernel's table/set cache,
which grows with every devbox. Here it is one batch (BEGIN, NEWSETELEM, END) on a netlink
socket opened once in the target namespace, and one ACK: tens of microseconds, independent
of how many sets exist.

Semantics are those of ``add element`` in ``netns.ruleset.learned_add`` (same attributes as
libnftnl sends): new addresses are inserted, existing ones get the new timeout and, through
the explicit expiration, a re-armed expiry. A batch is one nf_tables transaction: all
elements or none.

Message layout (linux/netfilter/nf_tables.h, nfnetlink.h)::

    nlmsghdr | nfgenmsg(family, version 0, res_id) | attributes
    NFNL_MSG_BATCH_BEGIN       res_id = htons(NFNL_SUBSYS_NFTABLES)
    NFT_MSG_NEWSETELEM         family = NFPROTO_INET, NLM_F_CREATE | NLM_F_ACK
      NFTA_SET_ELEM_LIST_TABLE    "devbox_sim"
      NFTA_SET_ELEM_LIST_SET      "learned_<key>"
      NFTA_SET_ELEM_LIST_ELEMENTS (nested)
        NFTA_LIST_ELEM (nested), one per address
          NFTA_SET_ELEM_KEY (nested) > NFTA_DATA_VALUE   4 bytes, network order
          NFTA_SET_ELEM_TIMEOUT                          be64 milliseconds
          NFTA_SET_ELEM_EXPIRATION                       be64 milliseconds
    NFNL_MSG_BATCH_END
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterable

from netns import namespaces

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFPROTO_INET = 1
FAMILIES = {"inet": NFPROTO_INET, "ip": 2, "bridge": 7}

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_DATA_VALUE = 1

_RECV_TIMEOUT_S = 2.0


class NftElementsError(RuntimeError):
    """The kernel refused the batch (e.g. no such set); ``errno`` holds its error."""

    def __init__(self, err: int, what: str):
        super().__init__(f"{what}: {os.strerror(err)}")
        self.errno = err


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)


def _nested(kind: int, payload: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, payload)


def _msg(kind: int, flags: int, seq: int, family: int, res_id: int, attrs: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def encode_add(family: str, table: str, set_name: str, entries: Iterable[tuple[str, int]], seq: int) -> bytes:
    """The batch adding ``[(ipv4, timeout_seconds)]`` (pure; golden-tested). Each element gets
    timeout == expiration, as ``ruleset.learned_add`` does. Duplicate addresses: last wins."""
    return encode_add_keys(family, table, set_name, ((ipaddress.IPv4Address(ip).packed, t) for ip, t in entries), seq)


def encode_add_keys(family: str, table: str, set_name: str, entries: Iterable[tuple[bytes, int]], seq: int) -> bytes:
    """``encode_add`` for keys given as the set's raw key bytes (e.g. one byte for
    ``nf_proto``)."""
    latest: dict[bytes, int] = {}
    for key, timeout in entries:
        t = int(timeout)
        if t < 1:
            raise ValueError(f"timeout must be >= 1 second: {timeout!r}")
        latest[bytes(key)] = t
    elems = b"".join(
        _nested(
            NFTA_LIST_ELEM,
            _nested(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key))
            + _attr(NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", t * 1000))
            + _attr(NFTA_SET_ELEM_EXPIRATION, struct.pack(">Q", t * 1000)),
        )
        for key, t in latest.items()
    )
    attrs = (
        _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
        + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
        + _nested(NFTA_SET_ELEM_LIST_ELEMENTS, elems)
    )
    return (
        _msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES)
        + _msg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
            seq + 1,
            FAMILIES[family],
            0,
            attrs,
        )
        + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, 0, NFNL_SUBSYS_NFTABLES)
    )


class SetElements:
    """A netlink socket in network namespace ``netns`` (a /run/netns name; None: the calling
    thread's) for adding timeout-set elements. Thread-safe (one request at a time)."""

    def __init__(self, netns: str | None = None):
        if netns is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        else:
            self._sock = namespaces.socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(_RECV_TIMEOUT_S)
        self._lock = threading.Lock()
        self._seq = itertools.count(1, 3)

    def add(self, family: str, table: str, set_name: str, entries: Iterable[tuple[str, int]]) -> None:
        self.add_keys(family, table, set_name, [(ipaddress.IPv4Address(ip).packed, t) for ip, t in entries])

    def add_keys(self, family: str, table: str, set_name: str, entries: Iterable[tuple[bytes, int]]) -> None:
        entries = list(entries)
        if not entries:
            return
        with self._lock:
            seq = next(self._seq) & 0x3FFFFFFF
            self._sock.send(encode_add_keys(family, table, set_name, entries, seq))
            self._await_ack(seq, f"add element {family} {table} {set_name}")

    def _await_ack(self, seq: int, what: str) -> None:
        """Wait for the ACK of the batch's NEWSETELEM (``seq + 1``); an error on its BEGIN or
        END (``seq``, ``seq + 2``) fails it too. Replies to an earlier batch whose wait timed
        out are skipped."""
        ours = (seq, seq + 1, seq + 2)
        while True:
            buf = self._sock.recv(65536)
            off = 0
            while off + 16 <= len(buf):
                length, kind, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", buf, off)
                if length < 16:
                    break
                if kind == NLMSG_ERROR and msg_seq in ours:
                    (err,) = struct.unpack_from("=i", buf, off + 16)
                    if err:
                        raise NftElementsError(-err, what)
                    if msg_seq == seq + 1:
                        return
                off += (length + 3) & ~3

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SetElements:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["NftElementsError", "SetElements", "encode_add", "encode_add_keys"]
