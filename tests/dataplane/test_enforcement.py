"""Real packets from inside netns devboxes, enforced by nftables and the resolver.

Every destination is a host in the offline world (documentation ranges) or another devbox,
all inside namespaces the `plane` fixture created."""

from __future__ import annotations

import socket

import pytest

from netns import namespaces
from tests.dataplane.conftest import BLOCKED, CNAME_TARGET, GITHUB, NPM, WORLD_DNS, held_connections, make_policy

pytestmark = pytest.mark.privileged


def ok(result: str) -> bool:
    return result.startswith("OK")


def test_allow_all_reaches_every_world_host(devboxes):
    box = devboxes.create(make_policy(allow_all=True))
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    assert devboxes.run(box, "tcp", "github.com", "443") == "OK ping"
    assert devboxes.run(box, "http", "registry.npmjs.org", "80") == "OK registry.npmjs.org /probe"
    assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"
    assert devboxes.run(box, "udp", BLOCKED, "7") == "OK ping"


def test_no_policy_is_unrestricted(devboxes):
    box = devboxes.create(None)
    assert devboxes.run(box, "tcp", "blocked.example", "443") == "OK ping"


def test_deny_all_reaches_nothing_and_resolves_nothing(devboxes):
    box = devboxes.create(make_policy())
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL gaierror")
    assert not ok(devboxes.run(box, "tcp", GITHUB, "443"))
    assert not ok(devboxes.run(box, "udp", BLOCKED, "7"))
    # No resolver but ours: the world's public DNS is unreachable over UDP, TCP and DoT.
    assert not ok(devboxes.run(box, "dns", WORLD_DNS, "53", "github.com", "udp"))
    assert not ok(devboxes.run(box, "dns", WORLD_DNS, "53", "github.com", "tcp"))
    assert not ok(devboxes.run(box, "tcp", WORLD_DNS, "853"))
    # Our resolver answers, with NXDOMAIN (rcode 3).
    assert devboxes.run(box, "dns", "10.89.0.1", "53", "github.com", "udp") == "OK rcode=3"


def test_other_resolvers_blocked_even_under_allow_all(devboxes):
    box = devboxes.create(make_policy(allow_all=True))
    assert not ok(devboxes.run(box, "dns", WORLD_DNS, "53", "github.com", "udp"))
    assert not ok(devboxes.run(box, "dns", WORLD_DNS, "53", "github.com", "tcp"))
    assert not ok(devboxes.run(box, "tcp", WORLD_DNS, "853"))
    assert devboxes.run(box, "dns", "10.89.0.1", "53", "github.com", "udp") == "OK rcode=0"


def test_hostnames_exact_and_wildcard(devboxes):
    box = devboxes.create(make_policy(allowed_hostnames=["github.com", "*.npmjs.org"]))
    # An address not learned from an allowed answer is closed, even a permitted host's.
    assert not ok(devboxes.run(box, "tcp", GITHUB, "443"))
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    assert devboxes.run(box, "tcp", GITHUB, "443") == "OK ping"
    assert devboxes.run(box, "http", "registry.npmjs.org", "80") == "OK registry.npmjs.org /probe"
    assert devboxes.run(box, "resolve", "blocked.example").startswith("FAIL gaierror")
    assert devboxes.run(box, "resolve", "www.github.com").startswith("FAIL gaierror")  # not listed
    assert not ok(devboxes.run(box, "tcp", BLOCKED, "443"))


def test_a_name_with_underscores_is_allowed_as_given_through_the_api_and_only_it(devboxes):
    from simulator.hostnames import normalise_patterns

    allowed = normalise_patterns(["_SVC._tcp.GitHub.com."])  # what the API stores
    assert allowed == ("_svc._tcp.github.com",)
    box = devboxes.create(make_policy(allowed_hostnames=list(allowed)))
    assert devboxes.run(box, "resolve", "_svc._tcp.github.com") == f"OK {GITHUB}"
    assert devboxes.run(box, "tcp", "_svc._tcp.github.com", "443") == "OK ping"
    assert devboxes.run(box, "resolve", "www.github.com").startswith("FAIL gaierror")


def test_cname_target_of_an_allowed_name_works(devboxes):
    box = devboxes.create(make_policy(allowed_hostnames=["alias.allowed.org"]))
    assert devboxes.run(box, "resolve", "alias.allowed.org") == f"OK {CNAME_TARGET}"
    assert devboxes.run(box, "tcp", "alias.allowed.org", "443") == "OK ping"
    assert devboxes.run(box, "resolve", "target.elsewhere.net").startswith("FAIL gaierror")


def test_each_account_has_its_own_cached_answers(plane, devboxes):
    """A cached answer's TTL runs down: served to another account it would tell when the name
    was looked up. The data plane gives the resolver's cache one scope per account."""
    cache = plane[0].resolver.cache
    me, them = "acct-cache-me", "acct-cache-them"  # accounts no other test resolves with
    mine = devboxes.create(make_policy(account=me, allow_all=True), account=me)
    theirs = devboxes.create(make_policy(account=them, allow_all=True), account=them)
    assert devboxes.run(mine, "resolve", "github.com") == f"OK {GITHUB}"
    assert cache.lookup("github.com", 1, me) is not None
    assert cache.lookup("github.com", 1, them) is None
    assert devboxes.run(theirs, "resolve", "github.com") == f"OK {GITHUB}"
    assert cache.lookup("github.com", 1, them) is not None
    # An account's answers go with its last devbox (the cache's room is shared).
    devboxes.runtime.shutdown(mine)
    assert cache.scope_len(me) == 0 and cache.lookup("github.com", 1, them) is not None


def test_cidrs_allow_exactly_their_ports(devboxes):
    box = devboxes.create(
        make_policy(allowed_cidrs=[{"cidr": f"{BLOCKED}/32", "ports": [{"port": 443, "protocol": "TCP"}]},
                                   {"cidr": "192.0.2.0/28"}])
    )
    assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"
    assert not ok(devboxes.run(box, "http", BLOCKED, "80"))
    assert not ok(devboxes.run(box, "udp", BLOCKED, "7"))
    # A CIDR without ports: every port and protocol.
    assert devboxes.run(box, "tcp", GITHUB, "443") == "OK ping"
    assert devboxes.run(box, "http", GITHUB, "80") == "OK github.com /probe"
    assert not ok(devboxes.run(box, "tcp", NPM, "443"))  # 192.0.2.20 is outside /28
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")  # CIDRs allow no names


def _listen(devboxes, box: str, port: int):
    """Start a TCP echo server inside a devbox; returns the process (killed with the devbox)."""
    server = (
        "import socket\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port})); s.listen(); print('ready', flush=True)\n"
        "while True:\n"
        "    c,_=s.accept(); c.sendall(c.recv(100)); c.close()\n"
    )
    proc = devboxes.runtime.exec(box, f"/usr/bin/python3 -c \"{server}\"")
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def _ip(plane, box: str) -> str:
    return plane[0].attached(box).address.ip


def test_devbox_to_devbox_on_off_and_never_across_accounts(plane, devboxes):
    target = devboxes.create(make_policy(allow_devbox_to_devbox=True))
    _listen(devboxes, target, 9000)
    target_ip = _ip(plane, target)
    peer_on = devboxes.create(make_policy(allow_devbox_to_devbox=True))
    peer_off = devboxes.create(make_policy())
    stranger = devboxes.create(make_policy(account="acct-b", allow_all=True), account="acct-b")
    assert devboxes.run(peer_on, "tcp", target_ip, "9000") == "OK ping"
    # Devboxes find each other by name: <id, lower case, '_' as '-'>.devbox.internal
    local_name = f"{target.lower().replace('_', '-')}.devbox.internal"
    assert devboxes.run(peer_on, "resolve", local_name) == f"OK {target_ip}"
    assert devboxes.run(peer_on, "tcp", local_name, "9000") == "OK ping"
    assert not ok(devboxes.run(peer_off, "tcp", target_ip, "9000"))
    # A devbox that may not talk to its siblings does not learn their addresses either.
    assert devboxes.run(peer_off, "resolve", local_name).startswith("FAIL")
    assert not ok(devboxes.run(stranger, "tcp", target_ip, "9000"))
    assert devboxes.run(stranger, "resolve", local_name).startswith("FAIL")
    # Both ends must allow it: an allow_all devbox reaches the target, not the devbox without.
    open_box = devboxes.create(make_policy(allow_all=True))
    _listen(devboxes, peer_off, 9000)
    assert devboxes.run(open_box, "tcp", target_ip, "9000") == "OK ping"
    # No policy is a peer too (the subnet is private, but devbox-to-devbox decides it first).
    assert devboxes.run(devboxes.create(None), "tcp", target_ip, "9000") == "OK ping"
    assert not ok(devboxes.run(open_box, "tcp", _ip(plane, peer_off), "9000"))


def test_devboxes_reach_neither_router_services_nor_host(plane, devboxes):
    dataplane = plane[0]
    box = devboxes.create(make_policy(allow_all=True))
    # Listeners on the router itself (gateway and uplink address), like an API would be.
    listeners = []
    try:
        for address in (dataplane.gateway, dataplane.uplink_address):
            sock = namespaces.socket_in(dataplane.router_ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((address, 8484))
            sock.listen()
            listeners.append(sock)
        assert not ok(devboxes.run(box, "tcp", dataplane.gateway, "8484"))
        assert not ok(devboxes.run(box, "tcp", dataplane.uplink_address, "8484"))
    finally:
        for sock in listeners:
            sock.close()


def test_a_command_as_long_as_the_api_takes_runs_on_the_runtime(devboxes):
    """The API's cap (MAX_COMMAND_BYTES) leaves room for how each runtime wraps a command: one
    that long still runs (the kernel refuses one argument over 128 KiB with E2BIG)."""
    from simulator.devboxes import MAX_COMMAND_BYTES

    box = devboxes.create(make_policy())
    command = "echo " + "a" * (MAX_COMMAND_BYTES - 5)
    assert len(command.encode()) == MAX_COMMAND_BYTES
    done = devboxes.sh(box, command)
    assert done.returncode == 0 and len(done.stdout) == MAX_COMMAND_BYTES - 4, done.stderr[-500:]


def test_a_devbox_holding_its_share_of_a_world_service_leaves_the_others_theirs(devboxes, monkeypatch):
    """The world's services cap connections per client: the router masqueraded every devbox
    to its one uplink address, so one devbox's share was everyone's, across accounts."""
    from simulator import world as world_module

    monkeypatch.setattr(world_module, "MAX_CONCURRENT_PER_CLIENT", 2)
    greedy = devboxes.create(None, account="acct-greedy")
    other = devboxes.create(None, account="acct-other")
    with held_connections(devboxes, greedy, GITHUB, 443, 2):
        assert devboxes.run(greedy, "tcp", GITHUB, "443") == "OK"  # over its own share: closed, no echo
        assert devboxes.run(other, "tcp", GITHUB, "443") == "OK ping"  # another devbox: served
