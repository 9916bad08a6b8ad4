"""Root inside a devbox namespace (netns or container) cannot borrow another devbox's IP or MAC to get out.

The sender is this (root) test process with a socket created in the devbox's namespace: the
"privileged helper inside the devbox". The receiver is a UDP socket the test binds in the world.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from netns import namespaces
from tests.dataplane.conftest import BLOCKED, make_policy

pytestmark = pytest.mark.privileged
IP_TRANSPARENT = 19


@pytest.fixture
def world_listener(plane):
    sock = namespaces.socket_in(plane[0].world_ns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((BLOCKED, 9999))
    sock.settimeout(1.0)
    yield sock
    sock.close()


def received(listener) -> list[tuple[bytes, str]]:
    got = []
    try:
        while True:
            data, (src, _) = listener.recvfrom(100)
            got.append((data, src))
            listener.settimeout(0.3)
    except TimeoutError:
        pass
    finally:
        listener.settimeout(1.0)
    return got


def send_from(netns, src: str, payload: bytes) -> None:
    sock = namespaces.socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)  # send from an address eth0 does not hold
        sock.bind((src, 0))
        sock.sendto(payload, (BLOCKED, 9999))
    finally:
        sock.close()


def test_spoofed_ip_or_mac_gets_nothing_out(plane, devboxes, world_listener):
    dataplane = plane[0]
    open_box = devboxes.create(make_policy(allow_all=True))
    closed_box = devboxes.create(make_policy())
    open_addr, closed_addr = dataplane.attached(open_box).address, dataplane.attached(closed_box).address
    open_ns, closed_ns = devboxes.netns(open_box), devboxes.netns(closed_box)
    in_closed = devboxes.nsenter(closed_box)

    # Control: the allow_all devbox's own packets do arrive, so silence below means "blocked".
    send_from(open_ns, open_addr.ip, b"legit")
    assert [data for data, _ in received(world_listener)] == [b"legit"]

    # The deny-all devbox takes the allow_all devbox's IP.
    send_from(closed_ns, open_addr.ip, b"spoofed-ip")
    # ... and its MAC, with its own IP (a pair the bridge has never seen on this port).
    subprocess.run([*in_closed, "ip", "link", "set", "eth0", "address", open_addr.mac], check=True)
    try:
        send_from(closed_ns, closed_addr.ip, b"spoofed-mac")
        send_from(closed_ns, open_addr.ip, b"spoofed-both")
    finally:
        subprocess.run([*in_closed, "ip", "link", "set", "eth0", "address", closed_addr.mac], check=True)
    assert received(world_listener) == []
