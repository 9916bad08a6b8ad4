"""A policy update reaches running devboxes at once, and revocation cuts established flows."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time

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


def test_an_update_keeps_connections_to_names_it_still_allows_after_their_answer_expired(plane, devboxes):
    """A connection opened while its answer was fresh outlives the answer (a clone, a
    websocket): an update that removes another name does not cut it; removing its own does."""
    dataplane = plane[0]
    policy = make_policy(allowed_hostnames=["github.com", "registry.npmjs.org", "*.example.com"])
    box = devboxes.create(policy)
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    held = Held(devboxes, box, GITHUB, 443)
    try:
        assert held.poke("before") == "OK before"
        # The answer's window ends (max(TTL, 60) + 30 s after it; the connection stays up).
        attached = dataplane.attached(box)
        attached.learned[GITHUB] = {name: time.monotonic() - 1 for name in attached.learned[GITHUB]}
        fewer = updated(policy, allowed_hostnames=("github.com", "*.example.com"))
        dataplane.policy_updated(policy, fewer)
        assert held.poke("kept") == "OK kept"
        fewer_still = updated(fewer, allowed_hostnames=("github.com",))
        dataplane.policy_updated(fewer, fewer_still)  # twice: the expired name is still known
        assert held.poke("kept again") == "OK kept again"
        revoked = updated(fewer_still, allowed_hostnames=())
        dataplane.policy_updated(fewer_still, revoked)
        assert held.poke("after").startswith("FAIL")
    finally:
        held.close()
    assert GITHUB not in dataplane.attached(box).learned  # revoked and expired: forgotten


def test_an_expired_name_without_a_connection_is_forgotten_at_the_next_narrowing(plane, devboxes):
    dataplane = plane[0]
    policy = make_policy(allowed_hostnames=["github.com", "registry.npmjs.org"])
    box = devboxes.create(policy)
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    attached = dataplane.attached(box)
    attached.learned[GITHUB] = {name: time.monotonic() - 1 for name in attached.learned[GITHUB]}
    dataplane.policy_updated(policy, updated(policy, allowed_hostnames=("github.com",)))
    assert GITHUB not in attached.learned


def test_every_answer_keeps_its_addresses_open_for_its_own_window(plane, devboxes):
    """An answer moves the kernel's expiry of its addresses to max(TTL, 60) + 30 s from now,
    when that is later than what the kernel holds by more than the re-arm slack."""
    from netns import ruleset
    from simulator.dataplane import REARM_SLACK_SECONDS, learn_timeout

    dataplane = plane[0]
    box = devboxes.create(make_policy(allowed_hostnames=["github.com"]))
    ip = dataplane.attached(box).address.ip
    key = dataplane.attached(box).address.key

    def kernel_expiry() -> float:
        [element] = [e["elem"] for e in dataplane._nft.list_set("inet", ruleset.TABLE, ruleset.learned_set(key))
                     if isinstance(e, dict) and e.get("elem", {}).get("val") == GITHUB]
        return element["expires"]

    dataplane._on_answer(ip, "github.com", [(GITHUB, 1000)])  # what the resolver calls, before its reply
    first = kernel_expiry()
    assert learn_timeout(1000) - 5 <= first <= learn_timeout(1000)
    dataplane._on_answer(ip, "github.com", [(GITHUB, 1500)])  # a later answer with a longer TTL
    assert kernel_expiry() >= learn_timeout(1500) - 5
    dataplane._on_answer(ip, "github.com", [(GITHUB, 1500 - REARM_SLACK_SECONDS // 2)])  # within the slack
    assert kernel_expiry() >= learn_timeout(1500) - 5


def test_devbox_to_devbox_off_keeps_the_devboxs_tunnel_connections(plane, devboxes):
    """The tunnel proxy connects from the router (the gateway's address, inside the devbox
    subnet): no devbox-to-devbox rule governs it, so turning that off does not cut it, and a
    devbox server that sends first (push, SSE, websockets) still reaches the client."""
    import select

    from netns import conntrack

    dataplane = plane[0]
    policy = make_policy(allow_devbox_to_devbox=True)
    box = devboxes.create(policy)
    devboxes.runtime.write_file(box, "push.py", PUSH_SERVER.encode())
    server = devboxes.runtime.exec(box, "/usr/bin/python3 push.py")
    assert server.stdout.readline().decode().strip() == "OK ready"
    sock, ip = dataplane.tunnel_socket(box)
    try:
        sock.settimeout(5)
        sock.connect((ip, 9200))

        def push(word: str) -> str:
            server.stdin.write(word.encode() + b"\n")
            server.stdin.flush()
            readable, _, _ = select.select([sock], [], [], 5)
            return sock.recv(100).decode() if readable else "nothing came"

        def tunnel_flows():
            return [f for f in conntrack.flows(dataplane.router_ns, dst=ip, backend="netlink")
                    if f.src == dataplane.gateway and f.dport == 9200]

        assert push("one") == "one"
        assert tunnel_flows()
        dataplane.policy_updated(policy, updated(policy, allow_devbox_to_devbox=False))
        assert tunnel_flows()
        assert push("two") == "two"
    finally:
        sock.close()
        server.kill()
        server.wait(5)


PUSH_SERVER = r'''
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", 9200))
listener.listen()
print("OK ready", flush=True)
conn, _ = listener.accept()
for line in sys.stdin:
    conn.sendall(line.strip().encode())
'''


class _CommitFails:
    """The store's connection, whose next COMMIT fails as SQLite's does on a full disk."""

    def __init__(self, conn):
        self._conn = conn
        self.failed = 0

    def execute(self, sql, *args):
        if sql == "COMMIT" and not self.failed:
            self.failed += 1
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_an_update_the_store_could_not_commit_is_not_enforced(plane, devboxes, tmp_path):
    """The kernel is changed inside the store's transaction (before the API answers); when its
    COMMIT fails, the running devboxes go back to the stored version."""
    from simulator.db import Database
    from simulator.network_policies import NetworkPolicyService

    dataplane = plane[0]
    db = Database(tmp_path / "store.db")
    service = NetworkPolicyService(db)
    service.add_update_hook(dataplane.policy_updated)
    policy = service.create_network_policy("acct-a", {"name": "p", "allowed_hostnames": ["github.com"]})
    box = devboxes.create(policy)
    assert devboxes.run(box, "tcp", BLOCKED, "443").startswith("FAIL")
    db._conn = failing = _CommitFails(db._conn)
    with pytest.raises(sqlite3.OperationalError):
        service.update_network_policy("acct-a", policy.id, {"allow_all": True})
    assert failing.failed == 1
    assert service.retrieve_network_policy("acct-a", policy.id).egress.allow_all is False
    assert devboxes.run(box, "tcp", BLOCKED, "443").startswith("FAIL")  # the stored version rules
    # The store is not left inside the failed transaction: the next update is stored and enforced.
    service.update_network_policy("acct-a", policy.id, {"allow_all": True})
    assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"
    db.close()


def test_what_a_devbox_resolved_is_remembered_within_bounds(plane, devboxes, monkeypatch):
    """A wildcard DNS answers every name. Past a threshold the data plane forgets expired names
    of addresses the devbox has no connection to (never a name an open connection may still
    need: an update cuts connections by their names); past a hard cap new names get SERVFAIL."""
    from simulator import dataplane as module

    dataplane = plane[0]
    monkeypatch.setattr(module, "LEARNED_PRUNE_AT", 8)
    monkeypatch.setattr(module, "MAX_LEARNED_NAMES", 60)
    policy = make_policy(allowed_hostnames=["*.example.com"])
    box = devboxes.create(policy)
    attached = dataplane.attached(box)
    ip = attached.address.ip
    for i in range(40):  # one address, many names (a CDN): all remembered
        dataplane._on_answer(ip, f"cdn{i}.example.com", [(GITHUB, 60)])
    held = Held(devboxes, box, GITHUB, 443)
    try:
        assert held.poke("open") == "OK open"
        for i in range(6):  # addresses with no connection
            dataplane._on_answer(ip, f"other{i}.example.com", [(f"198.51.100.{100 + i}", 60)])
        for names in attached.learned.values():  # every answer's window ends
            for name in names:
                names[name] = time.monotonic() - 1
        attached.prune_at, attached.next_prune = 0, 0.0  # (passes are spaced out: due again now)
        dataplane._on_answer(ip, "new.example.com", [(BLOCKED, 60)])  # over the threshold: forgets
        assert set(attached.learned) == {GITHUB, BLOCKED}  # the connection's names stay
        assert len(attached.learned[GITHUB]) == 40
        # an update keeping one of those names keeps the connection
        dataplane.policy_updated(policy, updated(policy, allowed_hostnames=("cdn7.example.com",)))
        assert held.poke("kept") == "OK kept"
    finally:
        held.close()
    fresh = devboxes.create(make_policy(allowed_hostnames=["*.example.com"]))
    fresh_ip = dataplane.attached(fresh).address.ip
    for i in range(60):  # live names up to the cap
        dataplane._on_answer(fresh_ip, f"live{i}.example.com", [(f"198.51.100.{i + 1}", 3600)])
    with pytest.raises(RuntimeError):
        dataplane._on_answer(fresh_ip, "one-more.example.com", [(GITHUB, 3600)])
    dataplane._on_answer(fresh_ip, "live3.example.com", [(f"198.51.100.{4}", 3600)])  # a known one: fine

def test_an_address_kept_for_another_name_closes_when_that_names_answer_would(plane, devboxes):
    """Two allowed names answered with one address, one with a day's TTL: revoking that one
    keeps the address for the other, for the other's window only."""
    from netns import ruleset
    from simulator.dataplane import learn_timeout

    dataplane = plane[0]
    policy = make_policy(allowed_hostnames=["long.example.com", "short.example.com"])
    box = devboxes.create(policy)
    attached = dataplane.attached(box)

    def kernel_expiry():
        found = [e["elem"]["expires"] for e in dataplane._nft.list_set("inet", ruleset.TABLE, ruleset.learned_set(attached.address.key))
                 if isinstance(e, dict) and isinstance(e.get("elem"), dict) and e["elem"].get("val") == GITHUB]
        return found[0] if found else None

    dataplane._on_answer(attached.address.ip, "long.example.com", [(GITHUB, 86400)])
    dataplane._on_answer(attached.address.ip, "short.example.com", [(GITHUB, 60)])
    assert kernel_expiry() > 80000
    dataplane.policy_updated(policy, updated(policy, allowed_hostnames=("short.example.com",)))
    assert 0 < kernel_expiry() <= learn_timeout(60)
    assert devboxes.run(box, "tcp", GITHUB, "443") == "OK ping"  # still open for the other name
    # and the next answer for it re-arms it as usual
    dataplane._on_answer(attached.address.ip, "short.example.com", [(GITHUB, 600)])
    assert kernel_expiry() > learn_timeout(60)


def test_an_update_that_failed_after_its_rules_were_applied_is_not_enforced(plane, devboxes, tmp_path):
    """The data plane applies the rules, then cuts the flows they revoke; when cutting fails,
    nothing is stored and the devboxes go back to the stored version."""
    from simulator.db import Database
    from simulator.network_policies import NetworkPolicyService

    dataplane = plane[0]
    db = Database(tmp_path / "store.db")
    service = NetworkPolicyService(db)
    service.add_update_hook(dataplane.policy_updated)
    try:
        policy = service.create_network_policy("acct-a", {"name": "p", "allow_all": True})
        box = devboxes.create(policy)
        assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"
        real_sync = dataplane._conntrack.sync

        def sync_fails():
            raise OSError(105, "ctnetlink: No buffer space available")  # as the kernel may

        dataplane._conntrack.sync = sync_fails
        try:
            with pytest.raises(OSError):
                service.update_network_policy("acct-a", policy.id, {"allow_all": False, "allowed_hostnames": ["github.com"]})
        finally:
            dataplane._conntrack.sync = real_sync
        assert service.retrieve_network_policy("acct-a", policy.id).egress.allow_all is True  # not stored
        assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"  # the stored version rules
    finally:
        db.close()


@contextlib.contextmanager
def _policy_served_to_a_target_and_a_peer(plane, devboxes, tmp_path):
    """A stored policy allowing github.com (devbox-to-devbox off) whose updates go through the
    data plane; a devbox under it ("target", serving TCP 9100, having resolved github.com)
    and a peer of the same account that allows devbox-to-devbox. Yields
    (service, policy, target, peer, target_ip)."""
    from simulator.db import Database
    from simulator.network_policies import NetworkPolicyService

    dataplane = plane[0]
    db = Database(tmp_path / "store.db")
    service = NetworkPolicyService(db)
    service.add_update_hook(dataplane.policy_updated)
    try:
        policy = service.create_network_policy("acct-a", {"name": "p", "allowed_hostnames": ["github.com"]})
        target, peer = devboxes.create(policy), devboxes.create(make_policy(allow_devbox_to_devbox=True))
        server = devboxes.start(target, "serve", "9100")
        try:
            assert server.stdout.readline().decode().strip() == "OK ready"
            assert devboxes.run(target, "resolve", "github.com") == f"OK {GITHUB}"
            yield service, policy, target, peer, _ip(dataplane, target)
        finally:
            server.kill()
            server.wait(timeout=10)
    finally:
        db.close()


# devbox-to-devbox on, github.com revoked
_OPEN_PEERS_REVOKE_GITHUB = {"allow_devbox_to_devbox": True, "allowed_hostnames": ["example.com"]}


def test_an_update_the_kernel_applied_without_answering_is_put_back(plane, devboxes, tmp_path):
    """A policy update goes by raw netlink. If the kernel applies it and the answer never
    comes (a timeout), the update is not stored, and the kernel is put back to the stored
    version: devbox-to-devbox stays off (a connection opened while the update was in force
    is cut), and a learned address the update removed is back."""
    dataplane = plane[0]
    with _policy_served_to_a_target_and_a_peer(plane, devboxes, tmp_path) as (service, policy, target, peer, target_ip):
        assert devboxes.run(target, "tcp", GITHUB, "443") == "OK ping"
        assert devboxes.run(peer, "tcp", target_ip, "9100").startswith("FAIL")
        real_apply = dataplane._elements.apply
        held = []

        def applied_but_no_answer(ops):
            real_apply(ops)
            held.append(Held(devboxes, peer, target_ip, 9100))  # while the update is in force
            raise TimeoutError("nf_tables did not answer")

        dataplane._elements.apply = applied_but_no_answer
        try:
            with pytest.raises(TimeoutError):
                service.update_network_policy("acct-a", policy.id, _OPEN_PEERS_REVOKE_GITHUB)
            stored = service.retrieve_network_policy("acct-a", policy.id).egress
            assert stored.allow_devbox_to_devbox is False and stored.allowed_hostnames == ("github.com",)
            assert devboxes.run(peer, "tcp", target_ip, "9100").startswith("FAIL")
            assert not held[0].poke("after").startswith("OK")  # cut
            assert devboxes.run(target, "tcp", GITHUB, "443") == "OK ping"  # without resolving again
        finally:
            dataplane._elements.apply = real_apply
            for h in held:
                h.close()


def test_an_update_that_cannot_be_put_back_closes_its_devboxes(plane, devboxes, tmp_path):
    """The kernel applied an update without answering, and putting the stored version back
    fails too: the policy's devboxes are closed (fail closed), not left on either version."""
    from netns.nft import NftError

    dataplane = plane[0]
    with _policy_served_to_a_target_and_a_peer(plane, devboxes, tmp_path) as (service, policy, target, peer, target_ip):
        real_apply, real_nft = dataplane._elements.apply, dataplane._nft.apply
        calls = []

        def applied_but_no_answer(ops):
            real_apply(ops)
            calls.append(len(ops))
            if len(calls) == 1:
                raise TimeoutError("nf_tables did not answer")

        def refused(doc):
            raise NftError("refused")

        dataplane._elements.apply, dataplane._nft.apply = applied_but_no_answer, refused
        try:
            with pytest.raises(TimeoutError):
                service.update_network_policy("acct-a", policy.id, _OPEN_PEERS_REVOKE_GITHUB)
        finally:
            dataplane._elements.apply, dataplane._nft.apply = real_apply, real_nft
        assert service.retrieve_network_policy("acct-a", policy.id).egress.allow_devbox_to_devbox is False
        assert devboxes.run(peer, "tcp", target_ip, "9100").startswith("FAIL")
        assert devboxes.run(target, "tcp", GITHUB, "443").startswith("FAIL")  # neither version's access


def test_a_devbox_at_the_name_cap_gets_new_names_again_once_its_answers_expire(plane, devboxes, monkeypatch):
    from simulator import dataplane as module

    dataplane = plane[0]
    monkeypatch.setattr(module, "LEARNED_PRUNE_AT", 8)
    monkeypatch.setattr(module, "MAX_LEARNED_NAMES", 20)
    box = devboxes.create(make_policy(allowed_hostnames=["*.example.com"]))
    attached = dataplane.attached(box)
    ip = attached.address.ip
    for i in range(20):
        dataplane._on_answer(ip, f"live{i}.example.com", [(f"198.51.100.{i + 1}", 3600)])
    with pytest.raises(RuntimeError):  # at the cap, all of them live
        dataplane._on_answer(ip, "one-more.example.com", [(GITHUB, 60)])
    for names in attached.learned.values():  # their windows end; no connection uses them
        for name in names:
            names[name] = time.monotonic() - 1
    attached.next_prune = 0.0  # (a pass at most once a second: as if that second had passed)
    dataplane._on_answer(ip, "one-more.example.com", [(GITHUB, 60)])
    assert set(attached.learned) == {GITHUB}
    for i in range(18):  # one below the cap now (with one-more)
        dataplane._on_answer(ip, f"again{i}.example.com", [(f"198.51.100.{i + 1}", 3600)])
    # an answer with two addresses would go past it: refused whole, nothing of it noted
    with pytest.raises(RuntimeError):
        dataplane._on_answer(ip, "two.example.com", [(BLOCKED, 60), ("203.0.113.31", 60)])
    assert BLOCKED not in attached.learned and "203.0.113.31" not in attached.learned
    assert attached.names == 19
