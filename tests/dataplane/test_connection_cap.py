"""A devbox's share of the router's connection tracking: new connections beyond the cap are
dropped for that devbox alone (the table is shared: one devbox filling it would leave every
other devbox without new connections)."""

from __future__ import annotations

import time

import pytest

from tests.dataplane.conftest import GITHUB, NPM, held_connections

pytestmark = pytest.mark.privileged

PLANE_OPTIONS = {"max_connections_per_devbox": 3}


def test_new_connections_beyond_a_devboxs_share_are_dropped_for_it_alone(devboxes):
    greedy = devboxes.create(None, account="acct-greedy")
    other = devboxes.create(None, account="acct-other")
    with held_connections(devboxes, greedy, GITHUB, 443, 3) as held:
        assert devboxes.run(greedy, "tcp", NPM, "443").startswith("FAIL")  # its fourth: dropped
        assert devboxes.run(other, "tcp", NPM, "443") == "OK ping"  # another devbox: its own share
        ending = held.pop()
        ending.stdin.close()  # the probe closes its connection and exits: the slot comes back
        ending.wait(10)
        deadline = time.monotonic() + 10
        while devboxes.run(greedy, "tcp", NPM, "443") != "OK ping":
            assert time.monotonic() < deadline, "the slot did not come back"
