"""How long an answered address stays open in a devbox's learned set."""

from __future__ import annotations

import pytest

from simulator.dataplane import LEARN_CEILING_SECONDS, LEARN_FLOOR_SECONDS, LEARN_GRACE_SECONDS, learn_timeout


@pytest.mark.parametrize("ttl, open_for", [
    (0, LEARN_FLOOR_SECONDS),  # a short TTL must not close a connection opened right after
    (5, LEARN_FLOOR_SECONDS),
    (300, 300),
    (86400, 86400),
    (10 * 86400, 86400),  # an upstream's TTL of days opens the address for a day at most
    (2**31 - 1, 86400),
    (2**32 - 1, LEARN_FLOOR_SECONDS),  # RFC 2181: a TTL with the top bit set reads as zero
])
def test_learn_timeout(ttl, open_for):
    assert LEARN_CEILING_SECONDS == 86400
    assert learn_timeout(ttl) == open_for + LEARN_GRACE_SECONDS
