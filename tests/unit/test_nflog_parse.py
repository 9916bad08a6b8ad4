"""netns.nflog.parse_packet: what a logged IPv4 packet says (pure)."""

from __future__ import annotations

import socket
import struct

import pytest

from netns.nflog import parse_packet


def _ipv4(proto: int, l4: bytes, ihl: int = 5) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                         socket.inet_aton("10.88.0.9"), socket.inet_aton("198.51.100.53"))
    return header + b"\0" * (4 * ihl - 20) + l4


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
    packet = parse_packet(_ipv4(proto, PORTS), "resolver_bypass ")
    assert (packet.src, packet.dst, packet.proto, (packet.sport, packet.dport)) == ("10.88.0.9", "198.51.100.53", name, ports)


def test_ip_options_are_skipped_and_short_or_foreign_packets_refused():
    assert parse_packet(_ipv4(17, PORTS, ihl=6), "").dport == 53
    assert parse_packet(_ipv4(17, b"\0\1"), "").dport is None  # cut short: no ports read
    assert parse_packet(b"\x60" + b"\0" * 39, "") is None  # IPv6
    assert parse_packet(b"\x45\0", "") is None
