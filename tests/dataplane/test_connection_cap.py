"""A devbox's and an account's share of the router's connection tracking: new connections
beyond a cap are dropped for that devbox or account alone (the table is shared: one devbox, or
one account's many devboxes, filling it would leave every other devbox without new
connections)."""

from __future__ import annotations

import time

import pytest

from tests.dataplane.conftest import GITHUB, NPM, held_connections

pytestmark = pytest.mark.privileged

PLANE_OPTIONS = {"max_connections_per_devbox": 3, "max_connections_per_account": 4}


def test_new_connections_beyond_a_devboxs_share_are_dropped_for_it_alone(plane, devboxes):
    from simulator.network_events import NetworkEventLog

    greedy = devboxes.create(None, account="acct-greedy")
    other = devboxes.create(None, account="acct-other")
    events = NetworkEventLog()
    plane[0].block_listeners.append(events.on_blocked)
    try:
        with held_connections(devboxes, greedy, GITHUB, 443, 3):
            assert devboxes.run(greedy, "tcp", NPM, "443").startswith("FAIL")  # its fourth: dropped
        # ... and logged as such (NFLOG delivers on its own thread: poll, bounded)
        deadline = time.monotonic() + 5
        while not events.list_network_events(greedy)[0]:
            assert time.monotonic() < deadline, "the drop was not logged"
            time.sleep(0.05)
    finally:
        plane[0].block_listeners.remove(events.on_blocked)
    assert [(e.addresses, e.port, e.reason) for e in events.list_network_events(greedy)[0]] == [
        ((NPM,), 443, "connection_limit")]
    with held_connections(devboxes, greedy, GITHUB, 443, 3) as held:
        assert devboxes.run(greedy, "tcp", NPM, "443").startswith("FAIL")
        assert devboxes.run(other, "tcp", NPM, "443") == "OK ping"  # another devbox: its own share
        ending = held.pop()
        ending.stdin.close()  # the probe closes its connection and exits: the slot comes back
        ending.wait(10)
        deadline = time.monotonic() + 10
        while devboxes.run(greedy, "tcp", NPM, "443") != "OK ping":
            assert time.monotonic() < deadline, "the slot did not come back"


def test_new_connections_beyond_an_accounts_share_are_dropped_for_that_account_alone(devboxes):
    first = devboxes.create(None, account="acct-many")
    second = devboxes.create(None, account="acct-many")
    other = devboxes.create(None, account="acct-bystander")
    with held_connections(devboxes, first, GITHUB, 443, 3) as held, \
            held_connections(devboxes, second, GITHUB, 443, 1):
        # the account holds 4: the second devbox, with 1 of its own 3, gets no fifth
        assert devboxes.run(second, "tcp", NPM, "443").startswith("FAIL")
        assert devboxes.run(other, "tcp", NPM, "443") == "OK ping"  # another account: its own share
        ending = held.pop()
        ending.stdin.close()  # one of the first devbox's connections ends: the account has a slot
        ending.wait(10)
        deadline = time.monotonic() + 10
        while devboxes.run(second, "tcp", NPM, "443") != "OK ping":
            assert time.monotonic() < deadline, "the account's slot did not come back"


def test_an_accounts_count_survives_its_devboxes_coming_and_going(devboxes):
    """The account's count is not reset when another of its devboxes starts or ends."""
    first = devboxes.create(None, account="acct-churn")
    with held_connections(devboxes, first, GITHUB, 443, 3):
        passing = devboxes.create(None, account="acct-churn")
        devboxes.runtime.shutdown(passing)
        second = devboxes.create(None, account="acct-churn")
        assert devboxes.run(second, "tcp", NPM, "443") == "OK ping"  # the account's fourth
        with held_connections(devboxes, second, GITHUB, 443, 1):
            assert devboxes.run(second, "tcp", NPM, "443").startswith("FAIL")
