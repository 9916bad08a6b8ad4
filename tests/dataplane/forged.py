"""Hand-built packets and frames for tests where root inside a devbox's namespace forges what
its kernel would never send (no scapy here), and a tap that sees what arrives."""

from __future__ import annotations

import socket
import struct
import time

from netns import namespaces

ETH_P_ALL = 0x0003


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x4242, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    length = 8 + len(data)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    return struct.pack("!HHHH", sport, dport, length, checksum(pseudo + header + data) or 0xFFFF) + data


def icmp_unreachable(src: str, dst: str, quoted_src: str, quoted_dst: str, quoted_sport: int,
                     quoted_dport: int, extra: bytes = b"") -> bytes:
    """An ICMP port unreachable from ``src`` to ``dst`` quoting the UDP packet
    quoted_src:quoted_sport -> quoted_dst:quoted_dport, with ``extra`` bytes after the quote."""
    quoted = ipv4(quoted_src, quoted_dst, 17, udp(quoted_src, quoted_dst, quoted_sport, quoted_dport, b"x" * 8))
    message = struct.pack("!BBH", 3, 3, 0) + b"\0\0\0\0" + quoted + extra
    return ipv4(src, dst, 1, message[:2] + struct.pack("!H", checksum(message)) + message[4:])


def raw_ip_socket(netns) -> socket.socket:
    """A socket in ``netns`` that sends whole IPv4 packets as given (IP_HDRINCL)."""
    return namespaces.socket_in(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)


def send_ip(netns, packet: bytes, dst: str) -> None:
    with raw_ip_socket(netns) as sock:
        sock.sendto(packet, (dst, 0))


def ethernet(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + struct.pack("!H", ethertype) + payload


def frame_socket(netns, ifname: str = "eth0") -> socket.socket:
    sock = namespaces.socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    return sock


def tap(netns, ifname: str) -> socket.socket:
    """Every frame that arrives on ``ifname`` in ``netns`` (read with ``arrived``)."""
    sock = namespaces.socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    sock.settimeout(0.1)
    return sock


def arrived(sock: socket.socket, seconds: float, wanted) -> list[bytes]:
    """The incoming frames on ``sock`` for which ``wanted(frame)`` holds, during ``seconds``."""
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame, address = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if address[2] != socket.PACKET_OUTGOING and wanted(frame):
            got.append(frame)
    return got
