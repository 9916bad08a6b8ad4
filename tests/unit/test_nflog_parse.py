"""Parsing nfnetlink_log messages (hand-packed here like the kernel sends them), and the IPv4
packets they carry (netns.nflog.parse_packet, pure)."""

import socket
import struct

import pytest

from netns.nflog import (
    NFNL_SUBSYS_ULOG,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    LoggedPacket,
    parse_messages,
    parse_packet,
)


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


PORTS = struct.pack("!HH", 40000, 53) + b"\0" * 4


@pytest.mark.parametrize("proto, name, ports", [
    (6, "tcp", (40000, 53)),
    (17, "udp", (40000, 53)),
    (136, "udplite", (40000, 53)),  # ports first, like UDP: the resolver-bypass rule matches them too
    (132, "sctp", (40000, 53)),
    (33, "dccp", (40000, 53)),
    (1, "icmp", (None, None)),  # no ports
    (47, "47", (None, None)),  # GRE: shown by number
])
def test_protocols_and_ports(proto, name, ports):
    packet = parse_packet(ipv4(proto, "10.88.0.9", "198.51.100.53", PORTS), "resolver_bypass ")
    assert (packet.src, packet.dst, packet.proto, (packet.sport, packet.dport)) == ("10.88.0.9", "198.51.100.53", name, ports)


def test_ip_options_are_skipped_and_short_packets_give_no_ports():
    plain = ipv4(17, "10.88.0.9", "198.51.100.53", PORTS)
    with_options = bytes([0x46]) + plain[1:20] + b"\1\1\1\0" + PORTS  # IHL 6: one word of options
    assert parse_packet(with_options, "").dport == 53
    assert parse_packet(ipv4(17, "10.88.0.9", "198.51.100.53", b"\0\1"), "").dport is None  # cut short
    assert parse_packet(b"\x45\0", "") is None
