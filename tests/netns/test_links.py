"""Link plumbing: namespaces, router bridge, devbox veths, uplinks (real kernel objects).

Every name comes from ``unique_name``; every fixture removes what it made in ``finally``.
Packets only ever go to addresses inside namespaces made here (10.231.x devboxes,
100.127.255.x link nets, 192.0.2.x world); the host uplink is checked for setup/teardown only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from netns import links, namespaces, sysctl

pytestmark = pytest.mark.privileged

SUBNET_GW = "10.231.0.1"
PREFIX = 24


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=check)


def ping(ns: str, ip: str) -> bool:
    # One reply within 3 s, re-sending every 0.2 s: the first probe may wait on ARP under load.
    return sh("ip", "netns", "exec", ns, "ping", "-n", "-c1", "-w3", "-i0.2", ip, check=False).returncode == 0


def ip_json(*args: str) -> list[dict]:
    return json.loads(sh("ip", "-j", *args).stdout or "[]")


def host_link_exists(ifname: str) -> bool:
    return sh("ip", "link", "show", "dev", ifname, check=False).returncode == 0


def wait_for(pred, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def make_ns(uniq):
    made: list[str] = []

    def make(prefix: str = "tlD") -> str:
        name = uniq(prefix)
        made.append(name)
        namespaces.create(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            with contextlib.suppress(Exception):
                namespaces.delete(name)
        assert not [n for n in made if namespaces.exists(n)]


@pytest.fixture
def router(uniq):
    r = links.Router(uniq("tlR"), gateway=SUBNET_GW, prefix=PREFIX)
    try:
        r.setup()
        yield r
    finally:
        r.teardown()
        assert not namespaces.exists(r.ns)


@pytest.fixture
def world(uniq):
    w = links.World(uniq("tlW"))
    try:
        w.setup()
        yield w
    finally:
        w.teardown()
        assert not namespaces.exists(w.ns)


# ----------------------------------------------------------------------------- namespaces


def test_namespace_lifecycle_and_thread_switching(uniq):
    name = uniq("tlN")
    assert not namespaces.exists(name)
    namespaces.create(name)
    try:
        assert namespaces.exists(name)
        assert name in namespaces.list_names(prefix=name[:3])
        # visible to iproute2 like `ip netns add`
        assert name in sh("ip", "netns", "list").stdout
        with pytest.raises(FileExistsError):
            namespaces.create(name)

        home = namespaces.current_identity()
        target = namespaces.identity(name)
        assert home != target
        with namespaces.entered(name):
            assert namespaces.current_identity() == target
            # other threads are not moved
            seen = []
            t = threading.Thread(target=lambda: seen.append(namespaces.current_identity()))
            t.start()
            t.join()
            assert seen == [target]  # a thread started in there inherits the creator's ns
        assert namespaces.current_identity() == home

        with pytest.raises(ZeroDivisionError):
            with namespaces.entered(name):
                1 / 0
        assert namespaces.current_identity() == home

        s = namespaces.socket_in(name, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            assert namespaces.socket_identity(s) == target
            assert namespaces.current_identity() == home
        finally:
            s.close()
        assert namespaces.run_in(name, namespaces.current_identity) == target
        # A new namespace's IPv4 settings are copied from the host's (dockerd sets 1 there).
        sysctl.write(name, "net.ipv4.ip_forward", "0")
        assert sysctl.read(name, "net.ipv4.ip_forward") == "0"
    finally:
        assert namespaces.delete(name) is True
    assert not namespaces.exists(name)
    assert namespaces.delete(name) is False
    with pytest.raises(namespaces.NamespaceError):
        with namespaces.entered(name):
            pass
    with pytest.raises(ValueError):
        namespaces.create("../etc")
    # pyroute2 objects outside the netlink worker would silently act on the host: refused
    with pytest.raises(RuntimeError, match="worker"):
        namespaces.ipr(None)


def test_recreated_namespace_gets_a_fresh_cached_socket(uniq):
    name = uniq("tlN")
    namespaces.create(name)
    try:
        first = namespaces.netlink_call(lambda: namespaces.socket_identity(namespaces.ipr(name).asyncore.socket))
        assert first == namespaces.identity(name)
        namespaces.delete(name)
        namespaces.create(name)
        second = namespaces.netlink_call(lambda: namespaces.socket_identity(namespaces.ipr(name).asyncore.socket))
        assert second == namespaces.identity(name) != first
    finally:
        namespaces.delete(name)


# ----------------------------------------------------------------------------- router


def test_router_setup_sysctls_and_teardown(uniq):
    r = links.Router(uniq("tlR"), gateway=SUBNET_GW, prefix=PREFIX)
    try:
        r.setup()
        assert namespaces.exists(r.ns)
        assert sysctl.read(r.ns, "net.ipv4.ip_forward") == "1"
        assert sysctl.read(r.ns, "net.bridge.bridge-nf-call-iptables") == "1"
        assert sysctl.read(r.ns, "net.ipv4.conf.all.rp_filter") == "1"
        assert sysctl.read(r.ns, f"net/ipv6/conf/{r.bridge}/disable_ipv6") == "1"
        assert sysctl.read(r.ns, "net.ipv6.conf.default.disable_ipv6") == "1"
        (br,) = ip_json("-n", r.ns, "addr", "show", "dev", r.bridge)
        assert br["address"] == links.gateway_mac(SUBNET_GW)
        assert "UP" in br["flags"]
        assert [(a["local"], a["prefixlen"]) for a in br["addr_info"]] == [(SUBNET_GW, PREFIX)]
        (lo,) = ip_json("-n", r.ns, "link", "show", "dev", "lo")
        assert "UP" in lo["flags"]
        r.setup()  # idempotent (simulator restart adopts the namespace)
        (br,) = ip_json("-n", r.ns, "addr", "show", "dev", r.bridge)
        assert len(br["addr_info"]) == 1
    finally:
        r.teardown()
    assert not namespaces.exists(r.ns)
    r.teardown()  # idempotent


def test_router_requires_br_netfilter(uniq, monkeypatch):
    r = links.Router(uniq("tlR"), gateway=SUBNET_GW, prefix=PREFIX)
    real_isdir = os.path.isdir
    monkeypatch.setattr(links.os.path, "isdir", lambda p: False if p == "/proc/sys/net/bridge" else real_isdir(p))
    try:
        with pytest.raises(links.BrNetfilterMissing, match="modprobe br_netfilter"):
            r.setup()
    finally:
        r.teardown()


# ----------------------------------------------------------------------------- devboxes


def test_attach_two_devboxes_reach_gateway_and_each_other(router, make_ns):
    d1, d2 = make_ns(), make_ns()
    a1 = router.attach(d1, port_ifname=f"{d1}p", ip="10.231.0.11", mac="02:00:0a:e7:00:0b")
    a2 = router.attach(d2, port_ifname=f"{d2}p", ip="10.231.0.12", mac="02:00:0a:e7:00:0c")
    print(f"\nattach took {a1.elapsed_ms:.2f} ms and {a2.elapsed_ms:.2f} ms")

    (eth,) = ip_json("-n", d1, "addr", "show", "dev", "eth0")
    assert eth["address"] == "02:00:0a:e7:00:0b"
    assert "UP" in eth["flags"]
    assert [(a["family"], a["local"], a["prefixlen"]) for a in eth["addr_info"]] == [("inet", "10.231.0.11", 24)]
    (lo,) = ip_json("-n", d1, "link", "show", "dev", "lo")
    assert "UP" in lo["flags"]
    routes = ip_json("-n", d1, "route", "show", "default")
    assert [(x["gateway"], x["dev"]) for x in routes] == [(SUBNET_GW, "eth0")]
    for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6", "net/ipv6/conf/eth0/disable_ipv6"):
        assert sysctl.read(d1, key) == "1", key
    assert sysctl.read(router.ns, f"net/ipv6/conf/{a1.port_ifname}/disable_ipv6") == "1"

    ports = router.list_ports()
    assert [p.ifname for p in ports] == sorted([a1.port_ifname, a2.port_ifname])
    assert all(p.up for p in ports)

    assert ping(d1, SUBNET_GW)
    assert ping(d2, SUBNET_GW)
    assert ping(d1, "10.231.0.12")
    assert ping(d2, "10.231.0.11")


def test_attach_timing(router, make_ns):
    names = [make_ns() for _ in range(10)]
    times = [
        router.attach(n, port_ifname=f"{n}p", ip=f"10.231.0.{20 + i}", mac=f"02:00:0a:e7:00:{20 + i:02x}").elapsed_ms
        for i, n in enumerate(names)
    ]
    avg = sum(times) / len(times)
    print(f"\nattach: avg {avg:.2f} ms, min {min(times):.2f}, max {max(times):.2f} over {len(times)}")
    assert len(router.list_ports()) == 10
    assert avg < 50  # loose guard against a regression to per-call forks


def test_detach_removes_both_ends(router, make_ns):
    d = make_ns()
    port = f"{d}p"
    router.attach(d, port_ifname=port, ip="10.231.0.30", mac="02:00:0a:e7:00:1e")
    assert ping(d, SUBNET_GW)
    assert router.detach(port) is True
    assert router.list_ports() == []
    assert wait_for(lambda: sh("ip", "-n", d, "link", "show", "dev", "eth0", check=False).returncode != 0)
    assert router.detach(port) is False


def test_attach_errors_leave_nothing_behind(router, make_ns):
    d = make_ns()
    port = f"{d}p"
    with pytest.raises(ValueError):
        router.attach(d, port_ifname="x" * 16, ip="10.231.0.40", mac="02:00:00:00:00:01")
    with pytest.raises(ValueError):
        router.attach(d, port_ifname=port, ip="10.231.0.40", mac="01:00:00:00:00:01")  # multicast
    with pytest.raises(ValueError):
        router.attach(port_ifname=port, ip="10.231.0.40", mac="02:00:00:00:00:01")
    with pytest.raises(namespaces.NamespaceError):
        router.attach(d + "x", port_ifname=port, ip="10.231.0.40", mac="02:00:00:00:00:01")
    # the gateway is not on the link: the route fails after the veth exists -> rolled back
    with pytest.raises(links.LinkError):
        router.attach(d, port_ifname=port, ip="10.231.0.40", mac="02:00:00:00:00:01", gateway="10.99.0.1")
    assert router.list_ports() == []
    assert wait_for(lambda: sh("ip", "-n", d, "link", "show", "dev", "eth0", check=False).returncode != 0)
    # a used port name is refused with the kernel's reason
    d2 = make_ns()
    router.attach(d, port_ifname=port, ip="10.231.0.40", mac="02:00:00:00:00:01")
    with pytest.raises(links.LinkError, match="exists"):
        router.attach(d2, port_ifname=port, ip="10.231.0.41", mac="02:00:00:00:00:02")
    assert [p.ifname for p in router.list_ports()] == [port]


def test_attach_by_pid(router):
    """A process's own (unnamed) namespace, as with a Docker container."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
        a = router.attach(pid=proc.pid, port_ifname=f"{router.ns}q", ip="10.231.0.50", mac="02:00:0a:e7:00:32")
        assert a.ip == "10.231.0.50"
        res = sh("nsenter", f"--net=/proc/{proc.pid}/ns/net", "ping", "-n", "-c1", "-W1", SUBNET_GW, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- offline world


def test_offline_uplink_reaches_world_and_host_cannot(router, world, make_ns):
    world.add_address("192.0.2.10")
    world.add_address("192.0.2.10/32")  # idempotent
    world.add_address("198.51.100.7")
    assert world.addresses() == ["192.0.2.10", "198.51.100.7"]
    up = router.uplink_offline(world, "100.127.255.0/30", route_back=False)
    assert (up.router_ifname, up.router_address, up.peer_address) == ("uplink0", "100.127.255.2", "100.127.255.1")
    routes = ip_json("-n", router.ns, "route", "show", "default")
    assert [(x["gateway"], x["dev"]) for x in routes] == [("100.127.255.1", "uplink0")]

    d = make_ns()
    router.attach(d, port_ifname=f"{d}p", ip="10.231.0.60", mac="02:00:0a:e7:00:3c")
    # without a masquerade (and without a route back) the world cannot answer
    assert not ping(d, "192.0.2.10")
    sh("ip", "netns", "exec", router.ns, "nft",
       "add table ip tnat; add chain ip tnat post { type nat hook postrouting priority srcnat; }; "
       'add rule ip tnat post oifname "uplink0" masquerade')
    assert ping(d, "192.0.2.10")
    assert ping(d, "198.51.100.7")
    assert world.remove_address("198.51.100.7") is True
    assert world.remove_address("198.51.100.7") is False
    assert not ping(d, "198.51.100.7")

    # The host namespace has no way to the world: no interface of ours is on the host and the
    # address is not local there. (No packet is sent: a ping from the host would leave the machine.)
    host_ifnames = {link["ifname"] for link in ip_json("link", "show")}
    assert up.peer_ifname not in host_ifnames and "uplink0" not in host_ifnames
    (rt,) = ip_json("route", "get", "192.0.2.10")
    assert rt.get("dev") not in (up.peer_ifname, "uplink0", world.hosts_ifname)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError) as ei:
            s.bind(("192.0.2.10", 0))
        assert ei.value.errno == errno.EADDRNOTAVAIL
    finally:
        s.close()


def test_offline_uplink_route_back_without_nat(router, world, make_ns):
    world.add_address("203.0.113.5")
    router.uplink_offline(world.ns, "100.127.255.4/30", world_ifname="rtr1")
    d = make_ns()
    router.attach(d, port_ifname=f"{d}p", ip="10.231.0.61", mac="02:00:0a:e7:00:3d")
    assert ping(d, "203.0.113.5")
    routes = ip_json("-n", world.ns, "route", "show", "10.231.0.0/24")
    assert [(x["gateway"], x["dev"]) for x in routes] == [("100.127.255.6", "rtr1")]


# ----------------------------------------------------------------------------- host uplink (no traffic)


FAKE_IPTABLES = r"""#!{python}
import json, os, sys
state_path = os.environ["FAKE_IPT_STATE"]
args = sys.argv[1:]
with open(os.environ["FAKE_IPT_LOG"], "a") as f:
    f.write(" ".join(args) + "\n")
state = json.load(open(state_path)) if os.path.exists(state_path) else {{"rules": []}}
chain_exists = os.environ.get("FAKE_IPT_DOCKER") == "1"
a = [x for x in args if x not in ("-w", "-n")]
if a[:2] == ["-t", "filter"]:
    a = a[2:]
op, chain, rule = a[0], a[1], a[2:]
if op == "-S":
    print("-P {{}} DROP".format(chain))
    sys.exit(0)
if chain == "DOCKER-USER" and not chain_exists:
    sys.exit(1)
if op == "-L":
    sys.exit(0)
if op == "-C":
    sys.exit(0 if rule in state["rules"] else 1)
if op == "-I":
    state["rules"].insert(0, rule)
elif op == "-D":
    if rule not in state["rules"]:
        sys.exit(1)
    state["rules"].remove(rule)
json.dump(state, open(state_path, "w"))
"""


@pytest.fixture
def fake_iptables(tmp_path, monkeypatch):
    """Never touch the real firewall: an `iptables` that only records what it was asked."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "iptables"
    exe.write_text(FAKE_IPTABLES.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_IPT_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("FAKE_IPT_LOG", str(tmp_path / "log"))

    def rules() -> list[list[str]]:
        p = tmp_path / "state.json"
        return json.loads(p.read_text())["rules"] if p.exists() else []

    return rules


@pytest.fixture
def host_forwarding_restored():
    before = sysctl.read(None, "net.ipv4.ip_forward")
    try:
        yield
    finally:
        sysctl.write(None, "net.ipv4.ip_forward", before)


@pytest.mark.parametrize("docker", [True, False])
def test_uplink_host_setup_and_teardown(uniq, fake_iptables, monkeypatch, host_forwarding_restored, docker):
    monkeypatch.setenv("FAKE_IPT_DOCKER", "1" if docker else "0")
    r = links.Router(uniq("tlR"), gateway=SUBNET_GW, prefix=PREFIX)
    host_if = uniq("tlH")
    table = links.host_table_name(host_if)
    try:
        r.setup()
        up = r.uplink_host(host_if, "100.127.255.8/30")
        assert up.nft_table == table
        (h,) = ip_json("addr", "show", "dev", host_if)
        assert [(a["local"], a["prefixlen"]) for a in h["addr_info"] if a["family"] == "inet"] == [("100.127.255.9", 30)]
        assert not [a for a in h["addr_info"] if a["family"] == "inet6"]
        (u,) = ip_json("-n", r.ns, "addr", "show", "dev", "uplink0")
        assert [(a["local"], a["prefixlen"]) for a in u["addr_info"]] == [("100.127.255.10", 30)]
        routes = ip_json("-n", r.ns, "route", "show", "default")
        assert [(x["gateway"], x["dev"]) for x in routes] == [("100.127.255.9", "uplink0")]
        assert sysctl.read(None, "net.ipv4.ip_forward") == "1"
        listing = sh("nft", "list", "table", "ip", table).stdout
        assert f'iifname "{host_if}"' in listing and "drop" in listing
        assert "masquerade" in listing and "100.127.255.8/30" in listing
        assert links.host_table_exists(host_if)
        assert table in links.list_host_uplink_tables()
        if docker:
            assert fake_iptables() == [
                ["-i", host_if, "-j", "ACCEPT"],
                ["-o", host_if, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ]
            assert len(up.iptables_rules) == 2 and up.warnings == ()
        else:
            assert fake_iptables() == [] and up.iptables_rules == ()
            assert any("FORWARD policy is DROP" in w for w in up.warnings)
        # a second uplink with the same host name is refused, the first stays intact
        with pytest.raises(links.LinkError):
            r.uplink_host(host_if, "100.127.255.8/30")
        assert host_link_exists(host_if)
    finally:
        r.teardown()
    assert not host_link_exists(host_if)
    assert not links.host_table_exists(host_if)
    assert not namespaces.exists(r.ns)
    assert fake_iptables() == []


def test_uplink_host_cleanup_after_restart_and_without_iptables(uniq, monkeypatch, host_forwarding_restored):
    """A fresh Router object (simulator restarted) still removes the host side it finds."""
    monkeypatch.setattr(links, "_iptables", lambda: None)  # as on a host without iptables
    r = links.Router(uniq("tlR"), gateway=SUBNET_GW, prefix=PREFIX)
    host_if = uniq("tlH")
    try:
        r.setup()
        r.uplink_host(host_if, "100.127.255.12/30", routed_subnets=["10.231.0.0/24"])
        routes = ip_json("route", "show", "10.231.0.0/24")
        assert [(x["gateway"], x["dev"]) for x in routes] == [("100.127.255.14", host_if)]
        again = links.Router(r.ns, gateway=SUBNET_GW, prefix=PREFIX)
        again.teardown()
        assert not host_link_exists(host_if)
        assert not links.host_table_exists(host_if)
        assert not ip_json("route", "show", "10.231.0.0/24")
    finally:
        r.teardown()
        links.remove_host_uplink(host_if)
    assert not namespaces.exists(r.ns)


def test_remove_host_uplink_refuses_non_veth():
    # lo is not a veth: never deleted, whatever name is passed
    with pytest.raises(links.LinkError):
        links.remove_host_uplink("lo")
    assert host_link_exists("lo")


def test_host_table_name_is_injective():
    assert links.host_table_name("a-b") != links.host_table_name("a_b")
    assert links.host_table_name("dbx0").startswith("devbox_sim_uplink_")
