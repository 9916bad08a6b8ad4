"""No frame of one devbox reaches another at layer 2; the router answers every ARP and routes
devbox-to-devbox traffic, which its forward chain judges.

The bridge flooded a devbox's ARP to every port: a devbox's kernel answering an ARP for its own
address records the asker in its neighbour table, which its unprivileged user reads in
/proc/net/arp. By merely trying to connect (the SYN dropped at the router, the ARP not), a
deny-all devbox set marks in another account's devbox: data out of a devbox whose policy
allows nothing (a byte, one receiver per bit, in a reviewer's test)."""

from __future__ import annotations

import pytest

from netns import namespaces
from tests.dataplane.conftest import make_policy
from tests.dataplane.test_enforcement import _listen


def _neighbours(devboxes, box: str) -> set[str]:
    out = devboxes.sh(box, "cat /proc/net/arp").stdout
    return {fields[0] for fields in (line.split() for line in out.splitlines()[1:]) if fields and fields[2] != "0x0"}


def _mac_of(devboxes, box: str, ip: str) -> str | None:
    out = devboxes.sh(box, "cat /proc/net/arp").stdout
    return next((fields[3] for fields in (line.split() for line in out.splitlines()[1:]) if fields and fields[0] == ip), None)


@pytest.mark.privileged
def test_a_deny_all_devbox_leaves_no_mark_in_another_accounts_devbox(plane, devboxes):
    dataplane = plane[0]
    receiver = devboxes.create(make_policy(account="acct-l2-rx", allow_all=True), account="acct-l2-rx")
    sender = devboxes.create(make_policy(account="acct-l2-tx"), account="acct-l2-tx")  # deny-all
    sender_ip, receiver_ip = dataplane.attached(sender).address.ip, dataplane.attached(receiver).address.ip
    assert devboxes.run(sender, "tcp", receiver_ip, "9").startswith("FAIL")  # blocked at the router
    assert sender_ip not in _neighbours(devboxes, receiver)


@pytest.mark.privileged
def test_peers_of_an_account_talk_through_the_router(plane, devboxes):
    """Their ARP is answered with the router's MAC; the connection works, and neither learns
    the other's MAC."""
    dataplane = plane[0]
    policy = make_policy(account="acct-l2-peers", allow_devbox_to_devbox=True)
    a = devboxes.create(policy, account="acct-l2-peers")
    b = devboxes.create(policy, account="acct-l2-peers")
    a_ip, b_ip = dataplane.attached(a).address.ip, dataplane.attached(b).address.ip
    _listen(devboxes, b, 9000)
    assert devboxes.run(a, "tcp", b_ip, "9000") == "OK ping"
    gateway_mac = dataplane._router.bridge_mac.lower()
    assert _mac_of(devboxes, a, b_ip) == gateway_mac
    assert _mac_of(devboxes, b, a_ip) in (None, gateway_mac)


@pytest.mark.privileged
def test_the_bridge_sends_no_redirects_and_answers_arp_for_the_ports(plane):
    dataplane = plane[0]
    bridge = dataplane._router.bridge

    def read(key):
        with open(f"/proc/sys/net/ipv4/conf/{bridge}/{key}") as f:
            return f.read().strip()

    with namespaces.entered(dataplane.router_ns):
        assert (read("send_redirects"), read("proxy_arp_pvlan")) == ("0", "1")
        with open(f"/proc/sys/net/ipv4/neigh/{bridge}/proxy_delay") as f:
            assert f.read().strip() == "0"  # proxied replies go at once, not up to 0.8 s later
