"""A policy update reaches running devboxes at once, and revocation cuts established flows."""

from __future__ import annotations

import dataclasses

import pytest

from simulator.policy_model import AllowedCidr, PortRule
from tests.dataplane.conftest import BLOCKED, GITHUB, make_policy

pytestmark = pytest.mark.privileged


def updated(policy, **changes):
    egress = dataclasses.replace(policy.egress, **changes)
    return dataclasses.replace(policy, egress=egress)


class Held:
    """An established TCP connection inside a devbox, poked on demand."""

    def __init__(self, devboxes, box, host, port):
        self.proc = devboxes.start(box, "hold", host, str(port))
        assert self.proc.stdout.readline().decode().strip() == "OK first"

    def poke(self, word: str) -> str:
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def close(self):
        self.proc.kill()
        self.proc.wait(5)


def test_update_opens_a_running_devbox_at_once(plane, devboxes):
    dataplane = plane[0]
    policy = make_policy()
    box = devboxes.create(policy)
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")
    opened = updated(policy, allowed_hostnames=("github.com",))
    dataplane.policy_updated(policy, opened)
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    assert devboxes.run(box, "tcp", "github.com", "443") == "OK ping"
    to_all = updated(opened, allow_all=True)
    dataplane.policy_updated(opened, to_all)
    assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"


def test_removing_a_cidr_cuts_the_established_connection(plane, devboxes):
    dataplane = plane[0]
    policy = make_policy(allowed_cidrs=[{"cidr": f"{BLOCKED}/32", "ports": [{"port": 443}]}])
    box = devboxes.create(policy)
    held = Held(devboxes, box, BLOCKED, 443)
    try:
        assert held.poke("before") == "OK before"
        # An unrelated change keeps the flow.
        wider = updated(policy, allowed_cidrs=policy.egress.allowed_cidrs + (AllowedCidr("192.0.2.0/24", (PortRule(80),)),))
        dataplane.policy_updated(policy, wider)
        assert held.poke("kept") == "OK kept"
        revoked = updated(wider, allowed_cidrs=(AllowedCidr("192.0.2.0/24", (PortRule(80),)),))
        dataplane.policy_updated(wider, revoked)
        assert held.poke("after").startswith("FAIL")
    finally:
        held.close()
    assert not devboxes.run(box, "tcp", BLOCKED, "443").startswith("OK")


def test_removing_a_hostname_cuts_its_connections_and_closes_its_addresses(plane, devboxes):
    dataplane = plane[0]
    policy = make_policy(allowed_hostnames=["github.com", "*.npmjs.org"])
    box = devboxes.create(policy)
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    assert devboxes.run(box, "resolve", "registry.npmjs.org").startswith("OK")
    held = Held(devboxes, box, GITHUB, 443)
    try:
        assert held.poke("before") == "OK before"
        revoked = updated(policy, allowed_hostnames=("*.npmjs.org",))
        dataplane.policy_updated(policy, revoked)
        assert held.poke("after").startswith("FAIL")
    finally:
        held.close()
    assert not devboxes.run(box, "tcp", GITHUB, "443").startswith("OK")
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")
    # The name still allowed keeps its learned address: no re-resolve needed.
    assert devboxes.run(box, "tcp", "192.0.2.20", "443") == "OK ping"


def test_allow_all_to_hostnames_keeps_only_matching_flows(plane, devboxes):
    dataplane = plane[0]
    policy = make_policy(allow_all=True)
    box = devboxes.create(policy)
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    github = Held(devboxes, box, GITHUB, 443)
    other = Held(devboxes, box, BLOCKED, 443)
    try:
        narrowed = updated(policy, allow_all=False, allow_devbox_to_devbox=False, allowed_hostnames=("github.com",))
        dataplane.policy_updated(policy, narrowed)
        assert github.poke("still") == "OK still"  # learned under allow_all, still allowed
        assert other.poke("gone").startswith("FAIL")
    finally:
        github.close()
        other.close()



def test_a_devbox_never_enforces_an_older_version_than_the_latest_update(plane, devboxes):
    dataplane = plane[0]
    old = make_policy(allowed_hostnames=["github.com"])
    new = dataclasses.replace(updated(old, allowed_hostnames=()), update_time_ms=old.update_time_ms + 1)
    dataplane.policy_updated(old, new)  # lands while no devbox uses the policy yet
    box = devboxes.create(old)  # provisioning read the policy just before the update
    assert dataplane.attached(box).policy.update_time_ms == new.update_time_ms
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")


def _ip(dataplane, box: str) -> str:
    return dataplane.attached(box).address.ip


def test_devbox_to_devbox_off_cuts_flows_whichever_side_opened_them(plane, devboxes):
    """Devbox-to-devbox needs both ends' policies: turning it off on either side cuts the
    established flows for good (the other side, still allowed, cannot re-create them)."""
    dataplane = plane[0]
    target_policy = make_policy(allow_devbox_to_devbox=True)
    peer_policy = make_policy(allow_devbox_to_devbox=True)
    target, peer = devboxes.create(target_policy), devboxes.create(peer_policy)
    target_ip, peer_ip = _ip(dataplane, target), _ip(dataplane, peer)
    servers = [devboxes.start(box, "serve", "9100") for box in (target, peer)]
    for server in servers:
        assert server.stdout.readline().decode().strip() == "OK ready"
    assert devboxes.run(peer, "tcp", target_ip, "9100") == "OK ping"

    # The receiving side turns it off: the flow the peer opened is cut and stays cut.
    held = Held(devboxes, peer, target_ip, 9100)
    try:
        assert held.poke("before") == "OK before"
        target_off = updated(target_policy, allow_devbox_to_devbox=False)
        dataplane.policy_updated(target_policy, target_off)
        assert held.poke("after").startswith("FAIL")
    finally:
        held.close()
    assert not devboxes.run(peer, "tcp", target_ip, "9100").startswith("OK")
    assert not devboxes.run(target, "tcp", peer_ip, "9100").startswith("OK")
    # Nor does the devbox that turned it off resolve its siblings' names any more.
    peer_name = f"{peer.lower().replace('_', '-')}.devbox.internal"
    assert devboxes.run(target, "resolve", peer_name).startswith("FAIL")
    # Back on: new connections work again, and names resolve.
    target_on = updated(target_off, allow_devbox_to_devbox=True)
    dataplane.policy_updated(target_off, target_on)
    assert devboxes.run(peer, "tcp", target_ip, "9100") == "OK ping"
    assert devboxes.run(target, "resolve", peer_name) == f"OK {peer_ip}"

    # The opening side turns it off: its own flow is cut too.
    held = Held(devboxes, peer, target_ip, 9100)
    try:
        assert held.poke("before") == "OK before"
        dataplane.policy_updated(peer_policy, updated(peer_policy, allow_devbox_to_devbox=False))
        assert held.poke("after").startswith("FAIL")
    finally:
        held.close()
    assert not devboxes.run(target, "tcp", peer_ip, "9100").startswith("OK")
    for server in servers:
        server.kill()


def test_a_devbox_that_goes_leaves_no_flow_towards_its_address(plane, devboxes):
    """Its address slot (IP, MAC, port name) goes to a later devbox, maybe another account's:
    a flow a peer had opened towards it must not outlive it (an established UDP flow lasts
    120 s, TCP five days), or the peer would reach the newcomer past its policy."""
    from netns import conntrack

    dataplane = plane[0]
    target = devboxes.create(make_policy(allow_devbox_to_devbox=True))
    peer = devboxes.create(make_policy(allow_devbox_to_devbox=True))
    target_ip = _ip(dataplane, target)
    server = devboxes.start(target, "serve", "9100")
    assert server.stdout.readline().decode().strip() == "OK ready"
    held = Held(devboxes, peer, target_ip, 9100)
    try:
        assert held.poke("before") == "OK before"
        assert conntrack.flows(dataplane.router_ns, dst=target_ip, backend="netlink")  # the peer's flow
        server.kill()
        devboxes.runtime.shutdown(target)
        devboxes.made.remove(target)
        assert conntrack.flows(dataplane.router_ns, dst=target_ip, backend="netlink") == []
        assert conntrack.flows(dataplane.router_ns, src=target_ip, backend="netlink") == []
    finally:
        held.close()


def test_an_update_while_a_devbox_is_being_plugged_in_is_enforced(plane, devboxes, monkeypatch):
    """An update can land while connect attaches the devbox's port (the data plane's lock not
    held): no devbox used the policy yet, so the update only noted the new version. The devbox
    must come up under that version, not the one its provisioning read."""
    dataplane = plane[0]
    policy = make_policy(allow_all=True)
    closed = dataclasses.replace(updated(policy, allow_all=False, allow_devbox_to_devbox=False),
                                 update_time_ms=policy.update_time_ms + 1)
    attach = dataplane._router.attach

    def attach_then_update(*args, **kwargs):
        result = attach(*args, **kwargs)
        dataplane.policy_updated(policy, closed)  # as the API's update would, meanwhile
        return result

    monkeypatch.setattr(dataplane._router, "attach", attach_then_update)
    box = devboxes.create(policy)
    monkeypatch.setattr(dataplane._router, "attach", attach)
    assert dataplane.attached(box).policy == closed
    assert not devboxes.run(box, "tcp", BLOCKED, "443").startswith("OK")
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")
