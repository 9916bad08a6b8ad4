"""Parsing nfnetlink_log messages (hand-packed here like the kernel sends them)."""

import socket
import struct

from netns.nflog import NFULA_PAYLOAD, NFULA_PREFIX, NFNL_SUBSYS_ULOG, LoggedPacket, parse_messages


def attr(kind, payload):
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def packet_message(prefix: bytes, payload: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(1)) + attr(NFULA_PREFIX, prefix) + attr(NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body


def ipv4(proto: int, src: str, dst: str, transport: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 0, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + transport


def test_tcp_udp_and_icmp_packets_in_one_buffer():
    tcp = ipv4(6, "10.88.0.2", "203.0.113.30", struct.pack("!HH", 40000, 443) + b"\0" * 16)
    udp = ipv4(17, "10.88.0.3", "192.0.2.10", struct.pack("!HHHH", 5353, 53, 8, 0))
    icmp = ipv4(1, "10.88.0.2", "198.51.100.1", b"\x08\x00\x00\x00")
    data = packet_message(b"dbx_d2 \0", tcp) + packet_message(b"dbx_d3 \0", udp) + packet_message(b"dbx_d2 \0", icmp)
    assert parse_messages(data) == [
        LoggedPacket("dbx_d2", "10.88.0.2", "203.0.113.30", "tcp", 443, sport=40000),
        LoggedPacket("dbx_d3", "10.88.0.3", "192.0.2.10", "udp", 53, sport=5353),
        LoggedPacket("dbx_d2", "10.88.0.2", "198.51.100.1", "icmp", None),
    ]


def test_garbage_is_ignored():
    assert parse_messages(b"") == []
    assert parse_messages(b"\x01\x02\x03") == []
    assert parse_messages(packet_message(b"dbx_d2\0", b"\x60" + b"\0" * 39)) == []  # IPv6: not ours
