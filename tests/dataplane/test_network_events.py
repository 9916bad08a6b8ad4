"""The decision log fed by real traffic: DNS decisions from the resolver, dropped connections
from nftables (NFLOG), each attributed to the right devbox."""

from __future__ import annotations

import dataclasses
import time

import pytest

from simulator.network_events import NetworkEventLog
from tests.dataplane.conftest import BLOCKED, GITHUB, make_policy

pytestmark = pytest.mark.privileged


@pytest.fixture
def events(plane):
    dataplane = plane[0]
    log = NetworkEventLog()
    dataplane.query_listeners.append(log.on_query)
    dataplane.block_listeners.append(log.on_blocked)
    try:
        yield log
    finally:
        dataplane.query_listeners.remove(log.on_query)
        dataplane.block_listeners.remove(log.on_blocked)


def wait_for(log, devbox, predicate, seconds=10.0):
    """NFLOG delivers asynchronously: poll the log (bounded) until an event matches."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [e for e in log.list_network_events(devbox, limit=1000)[0] if predicate(e)]
        if found:
            return found
        time.sleep(0.05)  # polling with a deadline
    raise AssertionError(f"no matching event; have {log.list_network_events(devbox, limit=1000)[0]}")


def test_blocked_direct_ip_and_denied_name(plane, devboxes, events):
    box = devboxes.create(make_policy())
    other = devboxes.create(make_policy(allow_all=True))
    assert not devboxes.run(box, "tcp", BLOCKED, "443").startswith("OK")
    blocked = wait_for(events, box, lambda e: e.kind == "blocked" and e.addresses == (BLOCKED,))
    assert (blocked[0].verdict, blocked[0].protocol, blocked[0].port) == ("denied", "tcp", 443)
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")
    dns = wait_for(events, box, lambda e: e.kind == "dns" and e.name == "github.com" and e.qtype == "A")
    assert (dns[0].verdict, dns[0].reason) == ("denied", "deny_all")
    assert events.list_network_events(other)[0] == []  # nothing attributed to the wrong devbox


def test_drops_towards_other_devboxes_are_logged_too(plane, devboxes, events):
    """Another account's devbox (even under allow_all) and a peer the policy does not allow
    are dropped like any destination, and logged as such."""
    dataplane = plane[0]
    mine = devboxes.create(make_policy(allow_all=True))
    sibling = devboxes.create(make_policy(allow_all=True))
    foreign = devboxes.create(make_policy("acct-b", allow_all=True), account="acct-b")
    closed = devboxes.create(make_policy())  # deny-all: no devbox-to-devbox either
    foreign_ip, sibling_ip = (dataplane.attached(b).address.ip for b in (foreign, sibling))
    assert not devboxes.run(mine, "tcp", foreign_ip, "8080").startswith("OK")
    blocked = wait_for(events, mine, lambda e: e.kind == "blocked" and e.addresses == (foreign_ip,))
    assert (blocked[0].verdict, blocked[0].protocol, blocked[0].port) == ("denied", "tcp", 8080)
    assert not devboxes.run(closed, "tcp", sibling_ip, "8080").startswith("OK")
    wait_for(events, closed, lambda e: e.kind == "blocked" and e.addresses == (sibling_ip,))


def test_allowed_connection_then_revoked_attempt_names_the_host(plane, devboxes, events):
    dataplane = plane[0]
    policy = make_policy(allowed_hostnames=["github.com"])
    box = devboxes.create(policy)
    assert devboxes.run(box, "tcp", "github.com", "443") == "OK ping"
    allowed = wait_for(events, box, lambda e: e.kind == "dns" and e.name == "github.com" and e.qtype == "A")
    assert allowed[0].verdict == "allowed" and allowed[0].addresses == (GITHUB,)
    assert allowed[0].matched_pattern == "github.com"
    assert not [e for e in events.list_network_events(box, limit=1000)[0] if e.kind == "blocked"]
    revoked = dataclasses.replace(policy, egress=dataclasses.replace(policy.egress, allowed_hostnames=()), update_time_ms=1)
    dataplane.policy_updated(policy, revoked)
    assert not devboxes.run(box, "tcp", GITHUB, "443").startswith("OK")
    blocked = wait_for(events, box, lambda e: e.kind == "blocked" and e.addresses == (GITHUB,))
    assert blocked[0].name == "github.com"  # the name that address last resolved to


def test_allowed_new_connections_are_counted_per_destination(plane, devboxes):
    dataplane = plane[0]
    open_box = devboxes.create(make_policy(allow_all=True))
    closed_box = devboxes.create(make_policy())
    for _ in range(3):
        assert devboxes.run(open_box, "tcp", GITHUB, "443") == "OK ping"
    assert devboxes.run(open_box, "udp", BLOCKED, "7") == "OK ping"
    assert not devboxes.run(closed_box, "tcp", BLOCKED, "443").startswith("OK")
    counts = dataplane.allowed_connections(open_box)
    assert counts == [
        {"destination": GITHUB, "protocol": "tcp", "port": 443, "connections": 3},
        {"destination": BLOCKED, "protocol": "udp", "port": 7, "connections": 1},
    ]
    assert dataplane.allowed_connections(closed_box) == []  # dropped attempts are not counted


def test_a_drop_just_before_the_devbox_goes_is_logged_in_order_and_on_time(plane, devboxes, events):
    """The kernel delivers each logged drop at once (not batched for up to a second): a drop
    right before the devbox ends is still its, and it comes before a later DNS decision."""
    box = devboxes.create(make_policy(allowed_hostnames=["github.com"]))
    before_ms = int(time.time() * 1000)
    # One short connect (one SYN, dropped), then a lookup, then the devbox ends: all well
    # within the second the kernel would otherwise hold the drop's message.
    attempt = devboxes.sh(box, "/usr/bin/python3 -c 'import socket; s = socket.socket(); s.settimeout(0.2); "
                               f"print(s.connect_ex((\"{BLOCKED}\", 443))); print(socket.gethostbyname(\"github.com\"))'")
    devboxes.runtime.shutdown(box)
    assert attempt.stdout.split()[1:] == [GITHUB], attempt
    blocked = wait_for(events, box, lambda e: e.kind == "blocked" and e.addresses == (BLOCKED,), seconds=3)
    [dns] = [e for e in events.list_network_events(box, limit=1000)[0] if e.kind == "dns" and e.qtype == "A"]
    assert blocked[0].seq < dns.seq
    assert before_ms <= blocked[0].time_ms <= dns.time_ms


def test_a_devboxs_counts_are_its_own_and_outlive_it(plane, devboxes):
    """Counted in a set of the devbox's own, which goes with it: whichever devbox gets its
    address next starts from nothing; its counts stay readable after it has gone."""
    from netns import ruleset

    dataplane = plane[0]
    box = devboxes.create(make_policy(allow_all=True))
    key = dataplane.attached(box).address.key
    assert devboxes.run(box, "tcp", GITHUB, "443") == "OK ping"
    counted = [{"destination": GITHUB, "protocol": "tcp", "port": 443, "connections": 1}]
    assert dataplane.allowed_connections(box) == counted
    devboxes.runtime.shutdown(box)
    sets = {o["set"]["name"] for o in dataplane._nft.list_ruleset()["nftables"] if "set" in o}
    assert ruleset.conns_set(key) not in sets
    assert dataplane.allowed_connections(box) == counted


def test_a_noisy_devbox_fills_only_its_own_counts(plane, devboxes):
    from netns import ruleset

    dataplane = plane[0]
    noisy = devboxes.create(make_policy("acct-noisy", allow_all=True), account="acct-noisy")
    quiet = devboxes.create(make_policy("acct-quiet", allow_all=True), account="acct-quiet")
    spread = ruleset.CONNS_PER_DEVBOX + 100  # distinct destinations (ports), one datagram each
    sent = devboxes.sh(noisy, "/usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                              f"for port in range(20000, 20000 + {spread}): s.sendto(b\"x\", (\"{BLOCKED}\", port))\n"
                              "print(\"sent\")'", timeout=60)
    assert sent.stdout.strip() == "sent", sent
    assert len(dataplane.allowed_connections(noisy)) == ruleset.CONNS_PER_DEVBOX
    assert devboxes.run(quiet, "tcp", GITHUB, "443") == "OK ping"
    assert dataplane.allowed_connections(quiet) == [{"destination": GITHUB, "protocol": "tcp", "port": 443, "connections": 1}]


def test_a_name_denied_under_a_cidr_only_policy_is_no_matching_pattern_not_deny_all(plane, devboxes, events):
    box = devboxes.create(make_policy(allowed_cidrs=[{"cidr": f"{BLOCKED}/32", "ports": [{"port": 443}]}]))
    assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"  # the policy allows something
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")
    [dns] = wait_for(events, box, lambda e: e.kind == "dns" and e.name == "github.com" and e.qtype == "A")
    assert (dns.verdict, dns.reason, dns.rcode) == ("denied", "no_matching_pattern", "NXDOMAIN")


def test_one_blocked_connect_is_one_event_however_often_tcp_retries(plane, devboxes, events):
    box = devboxes.create(make_policy())
    # SYNs at 0, 1 and 3 s: three packets, each new to the firewall, one attempt.
    attempt = devboxes.sh(box, "/usr/bin/python3 -c 'import socket; s = socket.socket(); s.settimeout(3.5); "
                               f"print(s.connect_ex((\"{BLOCKED}\", 443)))'")
    assert attempt.stdout.strip() != "0", attempt
    assert devboxes.run(box, "tcp", GITHUB, "443").startswith("FAIL")  # a second attempt, after it
    both = wait_for(events, box, lambda e: e.kind == "blocked" and e.addresses == (GITHUB,))
    assert [e.addresses for e in events.list_network_events(box, limit=1000)[0] if e.kind == "blocked"] == [
        (BLOCKED,), (GITHUB,)], both


def test_drops_by_the_routers_shared_rules_are_logged_with_their_reason(plane, devboxes, events):
    """Not only what a policy refuses: DNS or DNS-over-TLS to anyone but the resolver, and the
    router itself, are logged too (under allow_all as under any policy)."""
    dataplane = plane[0]
    box = devboxes.create(make_policy(allow_all=True))
    for host, port in ((BLOCKED, "853"), (BLOCKED, "53"), (dataplane.gateway, "22")):
        assert devboxes.run(box, "tcp", host, port).startswith("FAIL")
    assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"  # allowed: not logged
    wait_for(events, box, lambda e: e.kind == "blocked" and e.addresses == (dataplane.gateway,))
    blocked = [(e.addresses[0], e.port, e.reason) for e in events.list_network_events(box, limit=1000)[0]
               if e.kind == "blocked"]
    assert blocked == [(BLOCKED, 853, "resolver_bypass"), (BLOCKED, 53, "resolver_bypass"),
                       (dataplane.gateway, 22, "router")]


def test_each_decision_names_the_policy_version_that_made_it(plane, devboxes, events):
    dataplane = plane[0]
    policy = dataclasses.replace(make_policy(allowed_hostnames=["github.com"]), update_time_ms=1000)
    box = devboxes.create(policy)
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    revoked = dataclasses.replace(policy, egress=dataclasses.replace(policy.egress, allowed_hostnames=()),
                                  update_time_ms=2000)
    dataplane.policy_updated(policy, revoked)
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")
    assert not devboxes.run(box, "tcp", GITHUB, "443").startswith("OK")
    wait_for(events, box, lambda e: e.kind == "blocked")
    seen = [(e.kind, e.verdict, e.network_policy_id, e.network_policy_update_time_ms)
            for e in events.list_network_events(box, limit=1000)[0] if e.qtype in ("A", None)]
    assert seen == [("dns", "allowed", policy.id, 1000), ("dns", "denied", policy.id, 2000),
                    ("blocked", "denied", policy.id, 2000)]
    unrestricted = devboxes.create(None)
    assert devboxes.run(unrestricted, "resolve", "github.com") == f"OK {GITHUB}"
    [dns] = wait_for(events, unrestricted, lambda e: e.kind == "dns" and e.qtype == "A")
    assert (dns.network_policy_id, dns.network_policy_update_time_ms) == (None, None)
