"""Without the resolver, devboxes stay closed: no answers, and no address opens."""

from __future__ import annotations

import pytest

from tests.dataplane.conftest import GITHUB, make_policy

pytestmark = pytest.mark.privileged


def test_resolver_stopped_keeps_devboxes_closed(plane, devboxes):
    # This module has its own plane (module scope), so stopping its resolver affects no other test.
    dataplane = plane[0]
    box = devboxes.create(make_policy(allowed_hostnames=["github.com"]))
    dataplane.stop_resolver()
    assert devboxes.run(box, "resolve", "github.com").startswith("FAIL")
    assert not devboxes.run(box, "tcp", GITHUB, "443").startswith("OK")
    assert not devboxes.run(box, "dns", "198.51.100.53", "53", "github.com", "udp").startswith("OK")
