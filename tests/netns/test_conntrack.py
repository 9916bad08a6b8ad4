"""Conntrack listing and cutting inside the router namespace (real TCP through the router).

Topology made here: devbox ns --veth/bridge-- router ns --uplink-- world ns (192.0.2.10).
Every name comes from ``unique_name``; fixtures clean up in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess

import pytest

from netns import conntrack, links, namespaces

WORLD_IP = "192.0.2.10"
DEVBOX_IP = "10.232.0.11"
GW = "10.232.0.1"


def nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", script], check=True, capture_output=True, timeout=20)


@pytest.fixture
def topo(uniq):
    r = links.Router(uniq("tcR"), gateway=GW, prefix=24)
    w = links.World(uniq("tcW"))
    d = uniq("tcD")
    try:
        r.setup()
        w.setup()
        w.add_address(WORLD_IP)
        r.uplink_offline(w, "100.127.255.16/30", route_back=False)
        namespaces.create(d)
        r.attach(d, port_ifname=f"{d}p", ip=DEVBOX_IP, mac="02:00:0a:e8:00:0b")
        # masquerade onto the uplink (as the real ruleset does) and a forward chain to revoke in
        nft(
            r.ns,
            "add table ip tct; "
            "add chain ip tct post { type nat hook postrouting priority srcnat; }; "
            'add rule ip tct post oifname "uplink0" masquerade; '
            "add chain ip tct filt { type filter hook forward priority 0; policy accept; }; "
            "add rule ip tct filt ct state established,related accept",
        )
        yield r, w, d
    finally:
        with contextlib.suppress(Exception):
            namespaces.delete(d)
        r.teardown()
        w.teardown()
        assert not any(namespaces.exists(n) for n in (r.ns, w.ns, d))


@contextlib.contextmanager
def tcp_pair(devbox: str, world: str, port: int):
    srv = namespaces.socket_in(world, socket.AF_INET, socket.SOCK_STREAM)
    cli = conn = None
    try:
        srv.bind((WORLD_IP, port))  # its own address, not 0.0.0.0
        srv.listen(1)
        srv.settimeout(3)
        cli = namespaces.socket_in(devbox, socket.AF_INET, socket.SOCK_STREAM)
        cli.settimeout(3)
        cli.connect((WORLD_IP, port))
        conn, _ = srv.accept()
        conn.settimeout(3)
        yield cli, conn
    finally:
        for s in (cli, conn, srv):
            if s is not None:
                s.close()


def roundtrip(cli: socket.socket, conn: socket.socket, data: bytes, timeout: float = 3) -> bool:
    cli.sendall(data)
    conn.settimeout(timeout)
    try:
        return conn.recv(100) == data
    except TimeoutError:
        return False


def _require_conntrack_cli(why: str) -> None:
    """Skip without the conntrack CLI on a laptop; fail in CI (scripts/bootstrap.sh installs it)."""
    if shutil.which("conntrack") is None:
        reason = f"conntrack CLI not installed ({why})"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must have it: scripts/bootstrap.sh installs conntrack")
        pytest.skip(reason)


def _backend(name: str) -> str:
    if name == "cli":
        _require_conntrack_cli("the cli backend runs it")
    return name


@pytest.mark.privileged
@pytest.mark.parametrize("backend", ["netlink", "pyroute2", "cli"])
def test_established_flow_listed_and_cut(topo, backend):
    backend = _backend(backend)
    r, w, d = topo
    with tcp_pair(d, w.ns, 8080) as (cli, conn):
        assert roundtrip(cli, conn, b"hello")
        sport = cli.getsockname()[1]

        (flow,) = conntrack.flows(r.ns, DEVBOX_IP, backend=backend)
        assert (flow.proto, flow.src, flow.dst, flow.sport, flow.dport) == ("tcp", DEVBOX_IP, WORLD_IP, sport, 8080)
        assert flow.state == "ESTABLISHED"
        assert flow.reply_src == WORLD_IP and flow.reply_dst == "100.127.255.18"  # masqueraded
        assert conntrack.flows(r.ns, DEVBOX_IP, WORLD_IP, dport=8080, proto="tcp", backend=backend) == [flow]
        assert conntrack.flows(r.ns, DEVBOX_IP, dport=9999, proto="tcp", backend=backend) == []
        assert conntrack.flows(r.ns, "10.232.0.99", backend=backend) == []

        # The policy is revoked: new flows to the world are dropped from now on. The
        # established connection still works as long as its conntrack entry exists ...
        nft(r.ns, f"add rule ip tct filt ip daddr {WORLD_IP} drop")
        assert roundtrip(cli, conn, b"still")

        # ... and is cut once the entry is deleted: the next segment is a mid-stream "new" flow.
        assert conntrack.delete(r.ns, DEVBOX_IP, WORLD_IP, dport=8080, proto="tcp", backend=backend) == 1
        assert conntrack.flows(r.ns, DEVBOX_IP, backend=backend) == []
        assert not roundtrip(cli, conn, b"cut", timeout=0.5)
        assert conntrack.delete(r.ns, DEVBOX_IP, backend=backend) == 0


@pytest.mark.privileged
def test_delete_filters_by_destination_port_and_icmp(topo):
    r, w, d = topo
    with tcp_pair(d, w.ns, 8081) as (c1, s1), tcp_pair(d, w.ns, 8082) as (c2, s2):
        assert roundtrip(c1, s1, b"a") and roundtrip(c2, s2, b"b")
        ping = subprocess.run(["ip", "netns", "exec", d, "ping", "-n", "-c1", "-W1", WORLD_IP], capture_output=True)
        assert ping.returncode == 0
        got = conntrack.flows(r.ns, DEVBOX_IP)
        assert sorted((f.proto, f.dport) for f in got) == [("icmp", None), ("tcp", 8081), ("tcp", 8082)]
        (icmp,) = [f for f in got if f.proto == "icmp"]
        assert icmp.icmp_id is not None and icmp.state is None

        assert conntrack.delete(r.ns, DEVBOX_IP, dport=8081, proto="tcp") == 1
        assert sorted((f.proto, f.dport) for f in conntrack.flows(r.ns, DEVBOX_IP)) == [("icmp", None), ("tcp", 8082)]
        assert conntrack.delete(r.ns, DEVBOX_IP, proto="icmp") == 1
        assert [(f.proto, f.dport) for f in conntrack.flows(r.ns, DEVBOX_IP)] == [("tcp", 8082)]
        # without a drop rule the cut connection is simply picked up again (mid-stream)
        assert conntrack.delete(r.ns, DEVBOX_IP) == 1
        assert roundtrip(c2, s2, b"again")


@pytest.mark.privileged
def test_missing_namespace_is_an_error(uniq):
    with pytest.raises(namespaces.NamespaceError):
        conntrack.flows(uniq("tcX"), "10.0.0.1")


def test_argument_validation():
    with pytest.raises(ValueError):
        conntrack.flows("x", "10.0.0.1", dport=80)  # a port needs a protocol
    with pytest.raises(ValueError):
        conntrack.flows("x", "not-an-ip")
    with pytest.raises(ValueError):
        conntrack.delete("x", None)  # type: ignore[arg-type]


def test_parse_cli_lines():
    tcp = (
        "tcp      6 431999 ESTABLISHED src=10.232.0.11 dst=192.0.2.10 sport=40000 dport=8080 "
        "src=192.0.2.10 dst=100.127.255.18 sport=8080 dport=40000 [ASSURED] mark=0 use=1"
    )
    f = conntrack.parse_cli_line(tcp)
    assert f == conntrack.Flow("tcp", "10.232.0.11", "192.0.2.10", 40000, 8080, "ESTABLISHED", "192.0.2.10", "100.127.255.18")
    udp = (
        "udp      17 29 src=10.232.0.11 dst=192.0.2.53 sport=5353 dport=53 [UNREPLIED] "
        "src=192.0.2.53 dst=10.232.0.11 sport=53 dport=5353 mark=0 use=1"
    )
    f = conntrack.parse_cli_line(udp)
    assert (f.proto, f.sport, f.dport, f.state, f.reply_src) == ("udp", 5353, 53, None, "192.0.2.53")
    icmp = (
        "icmp     1 29 src=10.232.0.11 dst=192.0.2.10 type=8 code=0 id=77 "
        "src=192.0.2.10 dst=100.127.255.18 type=0 code=0 id=77 mark=0 use=1"
    )
    f = conntrack.parse_cli_line(icmp)
    assert (f.proto, f.sport, f.dport, f.icmp_id) == ("icmp", None, None, 77)
    assert conntrack.parse_cli_line("conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.") is None


@pytest.fixture
def bare_ns(uniq):
    name = uniq("tcB")
    namespaces.create(name)
    try:
        yield name
    finally:
        namespaces.delete(name)
        assert not namespaces.exists(name)


def _insert(ns: str, src: str, dport: int = 443) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "conntrack", "-I", "-p", "tcp", "-s", src, "-d", WORLD_IP, "--sport", "1000",
         "--dport", str(dport), "--state", "ESTABLISHED", "-t", "120", "-u", "SEEN_REPLY"],
        check=True, capture_output=True, timeout=20,
    )


@pytest.mark.privileged
def test_netlink_dump_spans_many_messages_and_filters_in_the_kernel(bare_ns):
    _require_conntrack_cli("used to insert entries")
    sources = [f"10.233.{i // 250}.{i % 250 + 1}" for i in range(600)]
    for src in sources:
        _insert(bare_ns, src)
    got = conntrack.flows(bare_ns, backend="netlink")
    assert sorted(f.src for f in got) == sorted(sources)  # > one recv buffer of messages
    assert all(f.state == "ESTABLISHED" and f.dport == 443 and f.raw_tuple for f in got)
    (one,) = conntrack.flows(bare_ns, "10.233.1.7", backend="netlink")
    assert one.src == "10.233.1.7"
    assert conntrack.flows(bare_ns, "10.233.1.7", "192.0.2.99", backend="netlink") == []
    # delete_flows deletes exactly the given entries, and does not count gone ones
    victims = [f for f in got if f.src.startswith("10.233.0.")]
    assert conntrack.delete_flows(bare_ns, victims) == len(victims) == 250
    assert conntrack.delete_flows(bare_ns, victims[:3]) == 0
    assert len(conntrack.flows(bare_ns)) == 350


@pytest.mark.privileged
def test_tracker_mirrors_the_table_from_events(bare_ns):
    _require_conntrack_cli("used to insert entries")
    _insert(bare_ns, "10.233.0.1")  # before the tracker: found by its initial dump
    tracker = conntrack.Tracker(bare_ns)
    try:
        assert tracker.events_enabled
        assert [f.src for f in tracker.flows()] == ["10.233.0.1"]
        for i in range(2, 40):
            _insert(bare_ns, f"10.233.0.{i}", dport=8000 + i)
        tracker.sync()
        assert tracker.resyncs == 1  # events, no new dump
        assert sorted(f.src for f in tracker.flows()) == sorted(f.src for f in conntrack.flows(bare_ns))
        (f5,) = tracker.flows(["10.233.0.5"])
        assert (f5.proto, f5.dst, f5.dport, f5.state) == ("tcp", WORLD_IP, 8005, "ESTABLISHED")
        # deleted elsewhere: the DESTROY event removes it from the mirror
        subprocess.run(["ip", "netns", "exec", bare_ns, "conntrack", "-D", "-s", "10.233.0.6"], capture_output=True, check=True)
        tracker.sync()
        assert tracker.flows(["10.233.0.6"]) == []
        # deleted through the tracker
        assert tracker.delete(tracker.flows(["10.233.0.7", "10.233.0.8"])) == 2
        assert conntrack.flows(bare_ns, "10.233.0.7") == [] and tracker.flows(["10.233.0.7"]) == []
        tracker.sync()
        assert sorted(f.src for f in tracker.flows()) == sorted(f.src for f in conntrack.flows(bare_ns))
        # lost events (simulated): the next sync rebuilds the mirror from a dump
        tracker._stale = True
        tracker.sync()
        assert tracker.resyncs == 2
        assert len(tracker.flows()) == 36
    finally:
        tracker.close()
