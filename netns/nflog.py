"""NFLOG reader: packets nftables logged with ``log group N`` in a namespace, in-process.

Hand-packed nfnetlink_log (like ``links.py`` does for rtnetlink): bind the group, ask for the
first 128 bytes of each packet, and hand every logged packet to a callback as
``LoggedPacket(prefix, src, dst, proto, dport)``. NFLOG instances are per network namespace,
so the socket is created inside the router's. The packet path never waits for this reader:
the kernel drops log messages when the socket buffer is full.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from netns import namespaces

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
COPY_RANGE = 128
_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 136: "udplite", 132: "sctp", 33: "dccp"}
# Transport protocols whose header starts with the source and destination ports.
_PORTED = (6, 17, 136, 132, 33)


@dataclass(frozen=True)
class LoggedPacket:
    prefix: str
    src: str
    dst: str
    proto: str
    dport: int | None
    sport: int | None = None


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(msg_type: int, family: int, res_id: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_packet(payload: bytes, prefix: str) -> LoggedPacket | None:
    """An IPv4 packet's addresses, protocol and ports."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    header = (payload[0] & 0x0F) * 4
    proto = payload[9]
    sport = dport = None
    if proto in _PORTED and len(payload) >= header + 4:
        sport, dport = struct.unpack_from("!HH", payload, header)
    return LoggedPacket(
        prefix=prefix,
        src=socket.inet_ntoa(payload[12:16]),
        dst=socket.inet_ntoa(payload[16:20]),
        proto=_PROTOCOLS.get(proto, str(proto)),
        dport=dport,
        sport=sport,
    )


def parse_messages(data: bytes) -> list[LoggedPacket]:
    packets = []
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if msg_type == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs, prefix, payload = offset + 20, "", b""
            end = offset + length
            while attrs + 4 <= end:
                alen, akind = struct.unpack_from("=HH", data, attrs)
                if alen < 4:
                    break
                value = data[attrs + 4 : attrs + alen]
                kind = akind & 0x3FFF
                if kind == NFULA_PREFIX:
                    prefix = value.rstrip(b"\0").decode("ascii", "replace")
                elif kind == NFULA_PAYLOAD:
                    payload = value
                attrs += (alen + 3) & ~3
            packet = parse_packet(payload, prefix.strip())
            if packet is not None:
                packets.append(packet)
        offset += (length + 3) & ~3
    return packets


class NflogReader:
    """A daemon thread delivering the packets logged to ``group`` inside ``netns``."""

    def __init__(self, netns: str, group: int, callback: Callable[[LoggedPacket], None]):
        self.netns, self.group, self.callback = netns, group, callback
        self._sock = namespaces.socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, 0))
        self._configure()
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name=f"nflog-{netns}", daemon=True)

    def _configure(self) -> None:
        bind = _message(NFULNL_MSG_CONFIG, socket.AF_UNSPEC, self.group,
                        _attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)), 1)
        mode = _message(NFULNL_MSG_CONFIG, socket.AF_UNSPEC, self.group,
                        _attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)), 2)
        # The kernel batches up to 100 messages or 1 s by default: a drop logged just before
        # its devbox goes would reach us after it (and be lost), every drop about 1 s late
        # (timed after later DNS queries). One message per packet, at once.
        qthresh = _message(NFULNL_MSG_CONFIG, socket.AF_UNSPEC, self.group,
                           _attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)), 3)
        for request in (bind, mode, qthresh):
            self._sock.send(request)
            reply = self._sock.recv(65536)
            if len(reply) >= 20 and struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
                error = -struct.unpack_from("=i", reply, 16)[0]
                if error:
                    raise OSError(error, f"NFLOG group {self.group}: {os.strerror(error)}")

    def start(self) -> NflogReader:
        self._thread.start()
        return self

    def _run(self) -> None:
        # poll, not select: select cannot watch a descriptor of 1024 or more (netns.sandbox).
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        stop = self._stop_r.fileno()
        while True:
            ready = poller.poll()
            if any(fd == stop for fd, _events in ready):
                return
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:  # ENOBUFS: the kernel dropped log messages; keep going
                log.debug("nflog recv: %s", exc)
                continue
            for packet in parse_messages(data):
                try:
                    self.callback(packet)
                except Exception:
                    log.exception("nflog callback")

    def stop(self) -> None:
        self._stop_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(2)
        for sock in (self._sock, self._stop_r, self._stop_w):
            sock.close()
