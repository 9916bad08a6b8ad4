"""Devboxes are IPv4-only, and stay so even if root inside re-enables IPv6: the bridge drops
every IPv6 frame from a devbox port, so no IPv6 resolver (or anything else) is reachable."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from netns import namespaces
from tests.dataplane.conftest import make_policy

pytestmark = pytest.mark.privileged
ETH_P_ALL = 0x0003  # a protocol-specific tap would sit after the bridge's rx handler: blind


def tap(netns, ifname: str) -> socket.socket:
    sock = namespaces.socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    sock.settimeout(0.2)
    return sock


def frames(sock: socket.socket, seconds: float) -> int:
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65535)
            count += frame[12:14] == b"\x86\xdd"  # IPv6 ethertype
        except TimeoutError:
            pass
    return count


def test_ipv6_from_a_devbox_never_passes_the_bridge(plane, devboxes):
    dataplane = plane[0]
    box = devboxes.create(make_policy(allow_all=True))
    address = dataplane.attached(box).address
    devbox_ns, in_devbox = devboxes.netns(box), devboxes.nsenter(box)
    port_tap = tap(dataplane.router_ns, address.port)  # what the devbox sends, before filtering
    bridge_tap = tap(dataplane.router_ns, "br0")  # what the bridge lets through to the router
    try:
        assert namespaces.run_in(devbox_ns, lambda: open("/proc/sys/net/ipv6/conf/eth0/disable_ipv6").read().strip()) == "1"
        # A privileged helper inside the devbox turns IPv6 back on and queries DNS over IPv6.
        for setting in ("net.ipv6.conf.eth0.accept_dad=0", "net.ipv6.conf.eth0.disable_ipv6=0"):
            subprocess.run([*in_devbox, "sysctl", "-qw", setting], check=True)
        deadline = time.monotonic() + 5
        while "fe80::" not in subprocess.run([*in_devbox, "ip", "-6", "addr", "show", "dev", "eth0"],
                                             capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "no IPv6 link-local address appeared"
            time.sleep(0.05)  # polling the kernel with a deadline
        sender = namespaces.socket_in(devbox_ns, socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            ifindex = namespaces.run_in(devbox_ns, socket.if_nametoindex, "eth0")
            for _ in range(5):
                sender.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01", ("ff02::1", 53, 0, ifindex))
                sender.sendto(b"x", ("ff02::2", 853, 0, ifindex))
        finally:
            sender.close()
        sent, passed = frames(port_tap, 1.0), frames(bridge_tap, 0.5)
        assert sent >= 10  # the frames really left the devbox ...
        assert passed == 0  # ... and the bridge dropped every one
    finally:
        port_tap.close()
        bridge_tap.close()
