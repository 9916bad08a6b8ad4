"""Link plumbing: namespaces, router bridge, devbox veths, uplinks (real kernel objects).

Every name comes from ``unique_name``; every fixture removes what it made in ``finally``.
Packets only ever go to addresses inside namespaces made here (10.231.x devboxes,
100.127.255.x link nets, 192.0.2.x world); the host uplink is checked for setup/teardown only,
in a namespace playing the host (``fake_host``): the real host's links, routes, nftables and
sysctls are never changed.
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
from pathlib import Path

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


def test_attach_starts_no_process(router, make_ns, monkeypatch):
    """attach() (once per devbox, on the create path) is netlink messages and sysctl writes only:
    no `ip`/`sysctl` child process per call. Any way of starting one fails here."""
    names = [make_ns() for _ in range(10)]
    started: list = []

    def no_process(*args, **kwargs):
        started.append(args[:1])
        raise AssertionError(f"attach started a process: {args[:1]!r}")

    with monkeypatch.context() as m:
        m.setattr(subprocess, "Popen", no_process)
        for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                m.setattr(os, name, no_process)
        times = [
            router.attach(n, port_ifname=f"{n}p", ip=f"10.231.0.{20 + i}", mac=f"02:00:0a:e7:00:{20 + i:02x}").elapsed_ms
            for i, n in enumerate(names)
        ]
    assert started == []  # also if a netlink-worker thread swallowed the error
    print(f"\nattach: avg {sum(times) / len(times):.2f} ms, max {max(times):.2f} over {len(times)}")  # information only
    assert [p.ifname for p in router.list_ports()] == sorted(f"{n}p" for n in names)
    assert all(ping(n, SUBNET_GW) for n in names[:2])  # the ports work


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
ADMIN, RETURN = [["-d", "192.0.2.128/25", "-j", "DROP"]], ["-j", "RETURN"]
state_path = os.environ["FAKE_IPT_STATE"]
args = sys.argv[1:]
with open(os.environ["FAKE_IPT_LOG"], "a") as f:
    f.write(" ".join(args) + "\n")
chain_exists = os.environ.get("FAKE_IPT_DOCKER") == "1"
# DOCKER-USER as Docker makes it, with a rule of the admin's before its closing RETURN.
state = json.load(open(state_path)) if os.path.exists(state_path) else {{"rules": ADMIN + [RETURN] if chain_exists else []}}
a = [x for x in args if x not in ("-w", "-n")]
if a[:2] == ["-t", "filter"]:
    a = a[2:]
op, chain, rule = a[0], a[1], a[2:]
if chain == "DOCKER-USER" and not chain_exists:
    sys.exit(1)
if op == "-S":
    if chain == "DOCKER-USER":
        print("-N DOCKER-USER")
        for r in state["rules"]:
            print(" ".join(["-A", "DOCKER-USER", *r]))
    else:
        print("-P {{}} DROP".format(chain))
    sys.exit(0)
if op == "-L":
    sys.exit(0)
if op == "-C":
    sys.exit(0 if rule in state["rules"] else 1)
if op == "-I":
    position = int(rule.pop(0)) - 1 if rule and rule[0].isdigit() else 0
    state["rules"].insert(position, rule)
elif op == "-A":
    state["rules"].append(rule)
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


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_host(uniq):
    """A namespace that plays the host for the host-uplink tests (as tests/fake_host.py does).

    ``uplink_host`` works on "the host" = the namespace the process started in, so the code runs
    in a child process started inside this namespace (``on_fake_host``): its veth, addresses,
    routes, nft table and ip_forward are made there, never on the real host, and the fixed link
    nets and routed subnet below cannot collide with another run or a real simulator."""
    name = uniq("tlF")
    namespaces.create(name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sysctl.write(name, "net.ipv4.ip_forward", 0)  # (a new namespace may inherit 1): uplink_host must set it
        yield name
    finally:
        namespaces.delete(name)
        assert not namespaces.exists(name)


def on_fake_host(host_ns: str, scenario: str, router_ns: str, host_if: str) -> dict:
    """Run ``scenario(router_ns, host_if)`` (a function of this module) in a child process whose
    host namespace is ``host_ns``; return what it observed (its last stdout line, JSON)."""
    code = ("import json, sys; from tests.netns import test_links as t; "
            f"print(json.dumps(t.{scenario}(*sys.argv[1:])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        run = subprocess.run(
            ["nsenter", f"--net={namespaces.path(host_ns)}", sys.executable, "-c", code, router_ns, host_if],
            check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        # A child that died half-way leaves its router namespace (the host side goes with host_ns).
        if namespaces.exists(router_ns):
            namespaces.delete(router_ns)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _inet(addr_info: list[dict], family: str = "inet") -> list[tuple[str, int]]:
    return [(a["local"], a["prefixlen"]) for a in addr_info if a["family"] == family]


def _uplink_host_setup_and_teardown(router_ns: str, host_if: str) -> dict:
    """In the fake host: a host uplink, what the host and router look like, a refused second
    uplink of the same name, then what teardown leaves."""
    seen: dict = {"ip_forward_before": sysctl.read(None, "net.ipv4.ip_forward")}
    r = links.Router(router_ns, gateway=SUBNET_GW, prefix=PREFIX)
    table = links.host_table_name(host_if)
    lan = host_if + "l"
    sh("ip", "link", "add", lan, "type", "veth", "peer", "name", host_if + "m")  # the host's own (its LAN)
    try:
        r.setup()
        up = r.uplink_host(host_if, "100.127.255.8/30")
        (h,) = ip_json("addr", "show", "dev", host_if)
        (u,) = ip_json("-n", r.ns, "addr", "show", "dev", "uplink0")
        state = os.environ["FAKE_IPT_STATE"]
        seen.update(
            nft_table=up.nft_table, table=table,
            iptables_rules=[list(rule) for rule in up.iptables_rules], warnings=list(up.warnings),
            host_inet=_inet(h["addr_info"]), host_inet6=_inet(h["addr_info"], "inet6"),
            uplink_inet=_inet(u["addr_info"]),
            router_default=[(x["gateway"], x["dev"]) for x in ip_json("-n", r.ns, "route", "show", "default")],
            ip_forward=sysctl.read(None, "net.ipv4.ip_forward"),
            listing=sh("nft", "list", "table", "ip", table).stdout,
            table_exists=links.host_table_exists(host_if), tables=links.list_host_uplink_tables(),
            fake_iptables=json.loads(Path(state).read_text())["rules"] if os.path.exists(state) else [],
        )
        try:
            r.uplink_host(host_if, "100.127.255.8/30")
            seen["second"] = "accepted"
        except links.LinkError as e:
            seen["second"] = f"refused: {e}"
        seen["host_link_after_second"] = host_link_exists(host_if)
    finally:
        r.teardown()
    sh("ip", "link", "del", lan)
    seen.update(host_link_left=host_link_exists(host_if), table_left=links.host_table_exists(host_if),
                router_ns_left=namespaces.exists(r.ns), ip_forward_after=sysctl.read(None, "net.ipv4.ip_forward"))
    return seen


@pytest.mark.parametrize("docker", [True, False])
def test_uplink_host_setup_and_teardown(uniq, fake_iptables, monkeypatch, fake_host, docker):
    monkeypatch.setenv("FAKE_IPT_DOCKER", "1" if docker else "0")
    router_ns, host_if = uniq("tlR"), uniq("tlH")
    seen = on_fake_host(fake_host, "_uplink_host_setup_and_teardown", router_ns, host_if)
    assert seen["ip_forward_before"] == "0"  # fake_host's; uplink_host turns it on
    assert seen["nft_table"] == seen["table"] == links.host_table_name(host_if)
    assert seen["host_inet"] == [["100.127.255.9", 30]] and seen["host_inet6"] == []
    assert seen["uplink_inet"] == [["100.127.255.10", 30]]
    assert seen["router_default"] == [["100.127.255.9", "uplink0"]]
    assert seen["ip_forward"] == "1"
    listing = seen["listing"]
    assert f'iifname "{host_if}"' in listing and "drop" in listing
    assert "masquerade" in listing and "100.127.255.8/30" in listing
    assert seen["table_exists"] and seen["table"] in seen["tables"]
    if docker:
        # after the admin's rule (it applies to devboxes too), before Docker's closing RETURN;
        # into Docker's bridges Docker's own rules decide
        assert seen["fake_iptables"] == [
            ["-d", "192.0.2.128/25", "-j", "DROP"],
            ["-i", host_if, "-o", "docker0", "-j", "RETURN"],
            ["-i", host_if, "-o", "br-+", "-j", "RETURN"],
            ["-i", host_if, "-j", "ACCEPT"],
            ["-o", host_if, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ["-j", "RETURN"],
        ]
        assert len(seen["iptables_rules"]) == 4 and seen["warnings"] == []
    else:
        assert seen["fake_iptables"] == [] and seen["iptables_rules"] == []
        assert any("FORWARD policy is DROP" in w for w in seen["warnings"])
    # a second uplink with the same host name is refused, the first stays intact
    assert seen["second"].startswith("refused") and seen["host_link_after_second"]
    assert (seen["host_link_left"], seen["table_left"], seen["router_ns_left"]) == (False, False, False)
    # forwarding was off on this host: while the uplink is up the host does not route between
    # the interfaces it had (only devbox traffic); forwarding stays on after (others may rely on it)
    own = f'{{ "{host_if}l", "{host_if}m" }}'
    assert f"iifname {own} oifname {own}" in listing and "not between its own interfaces" in listing
    assert seen["ip_forward_after"] == "1"
    assert fake_iptables() == ([["-d", "192.0.2.128/25", "-j", "DROP"], ["-j", "RETURN"]] if docker else [])
    # and the real host never saw any of it
    assert not host_link_exists(host_if) and not links.host_table_exists(host_if)


def _uplink_host_cleanup_after_restart(router_ns: str, host_if: str) -> dict:
    """In the fake host, without iptables: a host uplink with a routed subnet, removed by a fresh
    Router object (the simulator restarted)."""
    links._iptables = lambda: None  # as on a host without iptables (this child process only)
    seen: dict = {}
    r = links.Router(router_ns, gateway=SUBNET_GW, prefix=PREFIX)
    try:
        r.setup()
        r.uplink_host(host_if, "100.127.255.12/30", routed_subnets=["10.231.0.0/24"])
        seen["routes"] = [(x["gateway"], x["dev"]) for x in ip_json("route", "show", "10.231.0.0/24")]
        again = links.Router(r.ns, gateway=SUBNET_GW, prefix=PREFIX)
        again.teardown()
        seen.update(host_link_left=host_link_exists(host_if), table_left=links.host_table_exists(host_if),
                    routes_left=ip_json("route", "show", "10.231.0.0/24"))
    finally:
        r.teardown()
        links.remove_host_uplink(host_if)
    seen["router_ns_left"] = namespaces.exists(r.ns)
    return seen


def test_uplink_host_cleanup_after_restart_and_without_iptables(uniq, fake_host):
    """A fresh Router object (simulator restarted) still removes the host side it finds."""
    router_ns, host_if = uniq("tlR"), uniq("tlH")
    seen = on_fake_host(fake_host, "_uplink_host_cleanup_after_restart", router_ns, host_if)
    assert seen["routes"] == [["100.127.255.14", host_if]]
    assert (seen["host_link_left"], seen["table_left"], seen["routes_left"]) == (False, False, [])
    assert seen["router_ns_left"] is False
    assert not host_link_exists(host_if)  # the real host never had it


def test_remove_host_uplink_refuses_non_veth():
    # lo is not a veth: never deleted, whatever name is passed
    with pytest.raises(links.LinkError):
        links.remove_host_uplink("lo")
    assert host_link_exists("lo")


def test_host_table_name_is_injective():
    assert links.host_table_name("a-b") != links.host_table_name("a_b")
    assert links.host_table_name("dbx0").startswith("devbox_sim_uplink_")
