"""Root inside a devbox namespace (netns or container) forging what its kernel would never send:
ICMP errors that quote other devboxes' or the router's connections, and frames that would move
another devbox's MAC to its own bridge port. None of it gets data out, disturbs another devbox,
or breaks the resolver.

The sender is this (root) test process with a raw socket in the devbox's namespace: the
"privileged helper inside the devbox", as in test_spoofing.py."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from netns import namespaces
from tests.dataplane.conftest import BLOCKED, WORLD_DNS, make_policy
from tests.dataplane.forged import arrived, ethernet, frame_socket, icmp_unreachable, raw_ip_socket, send_ip, tap

pytestmark = pytest.mark.privileged
SECRET = b"secret-carried-in-an-icmp-error"


def _echo_flow(netns, src_ip: str, sport: int, dst: str, dport: int) -> socket.socket:
    """A connected UDP socket in a devbox whose echo came back (the flow exists in conntrack)."""
    sock = namespaces.socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src_ip, sport))
    sock.connect((dst, dport))
    sock.settimeout(2)
    sock.send(b"hello")
    assert sock.recv(100) == b"hello"
    return sock


def _echo_works(sock: socket.socket) -> bool:
    try:
        sock.send(b"again")
        return sock.recv(100) == b"again"
    except ConnectionRefusedError:  # an ICMP error for the flow reached the socket
        return False


def test_a_deny_all_devbox_carries_nothing_out_in_icmp_errors_about_another_devboxs_flow(plane, devboxes):
    dataplane = plane[0]
    talker = devboxes.create(make_policy(account="acct-icmp-b", allow_all=True), account="acct-icmp-b")
    closed = devboxes.create(make_policy(account="acct-icmp-a"), account="acct-icmp-a")
    closed_ip, talker_ip = dataplane.attached(closed).address.ip, dataplane.attached(talker).address.ip
    world = tap(dataplane.world_ns, "router0")
    flow = _echo_flow(devboxes.netns(talker), talker_ip, 40001, BLOCKED, 7)
    try:
        def carrying_secret(frame: bytes) -> bool:
            return SECRET in frame

        # Control: the allow_all devbox's own error, secret and all, reaches the world's tap.
        send_ip(devboxes.netns(talker), icmp_unreachable(talker_ip, BLOCKED, BLOCKED, talker_ip, 7, 40001, SECRET), BLOCKED)
        assert len(arrived(world, 1.0, carrying_secret)) == 1
        # The deny-all devbox quoting the same flow (its reply direction, as conntrack relates it).
        send_ip(devboxes.netns(closed), icmp_unreachable(closed_ip, BLOCKED, BLOCKED, talker_ip, 7, 40001, SECRET), BLOCKED)
        assert arrived(world, 1.0, carrying_secret) == []
    finally:
        flow.close()
        world.close()


def test_a_devbox_of_another_account_cannot_break_a_devboxs_flow_with_icmp_errors(plane, devboxes):
    dataplane = plane[0]
    victim = devboxes.create(make_policy(account="acct-icmp-v", allow_all=True), account="acct-icmp-v")
    attacker = devboxes.create(make_policy(account="acct-icmp-x"), account="acct-icmp-x")
    victim_ip, attacker_ip = dataplane.attached(victim).address.ip, dataplane.attached(attacker).address.ip
    flow = _echo_flow(devboxes.netns(victim), victim_ip, 40011, BLOCKED, 7)
    try:
        # "Your packet victim:40011 -> BLOCKED:7 could not be delivered", from another devbox.
        send_ip(devboxes.netns(attacker), icmp_unreachable(attacker_ip, victim_ip, victim_ip, BLOCKED, 40011, 7), victim_ip)
        assert _echo_works(flow)
        # Control: the same error from the world (where the flow goes) is the world's to send,
        # and reaches the devbox: the socket reports it.
        send_ip(dataplane.world_ns, icmp_unreachable(BLOCKED, victim_ip, victim_ip, BLOCKED, 40011, 7), victim_ip)
        deadline = time.monotonic() + 5
        while _echo_works(flow):
            assert time.monotonic() < deadline, "the world's ICMP error never reached the devbox"
    finally:
        flow.close()


def test_a_devbox_cannot_break_the_resolvers_upstream_with_icmp_errors(plane, devboxes):
    """Errors sprayed at the router's uplink address, quoting every port the resolver's pooled
    upstream sockets could have (uplink:P -> world resolver:53), reach no socket: another
    account's next lookups are answered."""
    dataplane = plane[0]
    victim = devboxes.create(make_policy(account="acct-dns-v", allowed_hostnames=["github.com", "registry.npmjs.org"]),
                             account="acct-dns-v")
    attacker = devboxes.create(make_policy(account="acct-dns-x"), account="acct-dns-x")
    attacker_ip, uplink = dataplane.attached(attacker).address.ip, dataplane.uplink_address
    assert devboxes.run(victim, "resolve", "github.com").startswith("OK")  # the pool has sockets
    low, high = namespaces.run_in(dataplane.router_ns,
                                  lambda: tuple(map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())))
    with raw_ip_socket(devboxes.netns(attacker)) as sender:
        for port in range(low, high + 1):  # bounded: the ephemeral range, about 28,000 packets
            sender.sendto(icmp_unreachable(attacker_ip, uplink, uplink, WORLD_DNS, port, 53), (uplink, 0))
    # One query each, uncached, with no retry (the probe's raw DNS) that could hide a SERVFAIL.
    assert devboxes.run(victim, "dns", dataplane.gateway, "53", "registry.npmjs.org", "udp") == "OK rcode=0"
    assert devboxes.run(victim, "dns", dataplane.gateway, "53", "github.com", "udp") == "OK rcode=0"


def _fdb_port(router_ns: str, bridge: str, mac: str) -> str | None:
    out = subprocess.run(["bridge", "-n", router_ns, "fdb", "show", "br", bridge], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == mac and "dev" in parts and "permanent" not in parts:
            return parts[parts.index("dev") + 1]
    return None


def test_a_devbox_cannot_take_another_devboxs_mac_on_the_bridge(plane, devboxes):
    """Frames to the IEEE link-local group (01:80:c2:00:00:0e, LLDP) with another devbox's
    source MAC: the bridge must not learn that MAC on the sender's port, or it would send the
    victim's incoming frames there."""
    dataplane = plane[0]
    victim = devboxes.create(make_policy(account="acct-fdb-v", allow_all=True), account="acct-fdb-v")
    attacker = devboxes.create(make_policy(account="acct-fdb-x"), account="acct-fdb-x")
    victim_port = dataplane.attached(victim).address
    assert devboxes.run(victim, "udp", BLOCKED, "7") == "OK ping"
    assert _fdb_port(dataplane.router_ns, dataplane._router.bridge, victim_port.mac) == victim_port.port
    lldp = ethernet("01:80:c2:00:00:0e", victim_port.mac, 0x88CC, b"\x02\x07\x04" + bytes(6) + bytes(40))
    stop = threading.Event()
    with frame_socket(devboxes.netns(attacker)) as sender:
        sender.send(lldp)

        def keep_sending():
            deadline = time.monotonic() + 15  # bounded in time and count
            for _ in range(100_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                sender.send(lldp)
                time.sleep(0.0002)

        thread = threading.Thread(target=keep_sending)
        thread.start()
        try:
            learned_on = _fdb_port(dataplane.router_ns, dataplane._router.bridge, victim_port.mac)
            echoes = [devboxes.run(victim, "udp", BLOCKED, "7") for _ in range(5)]
        finally:
            stop.set()
            thread.join(20)
    assert (learned_on, echoes) == (victim_port.port, ["OK ping"] * 5)


def test_a_devbox_being_shut_down_cannot_send_as_another_devbox(plane, devboxes):
    """While a devbox is taken off the bridge, its port leaves the anti-spoofing sets: root in
    it, sending with an allow_all devbox's address all along, gets nothing out even then."""
    dataplane, runtime = plane
    listener = namespaces.socket_in(dataplane.world_ns, socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((BLOCKED, 9998))
    listener.settimeout(0.5)
    leaked = 0
    try:
        for _attempt in range(3):  # the window is short: a few shutdowns
            open_box = devboxes.create(make_policy(allow_all=True))
            closed_box = devboxes.create(make_policy())
            sender = namespaces.socket_in(devboxes.netns(closed_box), socket.AF_INET, socket.SOCK_DGRAM)
            sender.setsockopt(socket.IPPROTO_IP, 19, 1)  # IP_TRANSPARENT: send from open_box's address
            sender.bind((dataplane.attached(open_box).address.ip, 0))
            stop, sending = threading.Event(), threading.Event()

            def spray():
                for count in range(2_000_000):  # bounded; ends with the event or the namespace
                    if stop.is_set():
                        return
                    try:
                        sender.sendto(b"spoofed", (BLOCKED, 9998))
                    except OSError:
                        return
                    if count == 100:
                        sending.set()

            thread = threading.Thread(target=spray)
            thread.start()
            try:
                assert sending.wait(10)
                runtime.shutdown(closed_box)
            finally:
                stop.set()
                thread.join(10)
                sender.close()
            try:
                for _ in range(2_000_000):
                    leaked += listener.recv(100) == b"spoofed"
            except TimeoutError:
                pass
            runtime.shutdown(open_box)
        assert leaked == 0, f"{leaked} spoofed datagrams from a devbox being shut down reached {BLOCKED}"
    finally:
        listener.close()
