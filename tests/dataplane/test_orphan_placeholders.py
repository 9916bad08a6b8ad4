"""A namespace create killed between its placeholder file and the bind mount leaves an empty
file under /run/netns: `ip netns list` shows it, though nothing is mounted on it. A restart's
reconcile removes it (it listed mounted namespaces only, and the file stayed until that slot's
next devbox)."""

from __future__ import annotations

import os
import secrets

import pytest

from netns import namespaces
from simulator.dataplane import NS_PREFIX, DataPlane, DataPlaneConfig


@pytest.mark.privileged
def test_a_restart_removes_placeholders_of_interrupted_creates():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    instance = secrets.token_hex(3)
    placeholder = f"{NS_PREFIX}{instance}-d7"
    other = f"{NS_PREFIX}{secrets.token_hex(3)}-d7"  # another instance's: not ours to remove
    paths = [namespaces.path(name) for name in (placeholder, other)]
    os.makedirs(namespaces.NETNS_RUN_DIR, exist_ok=True)
    try:
        for path in paths:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))  # what create makes first
        assert not namespaces.exists(placeholder)
        assert placeholder in namespaces.list_names(f"{NS_PREFIX}{instance}-", placeholders=True)
        assert placeholder not in namespaces.list_names(f"{NS_PREFIX}{instance}-")

        assert DataPlane(DataPlaneConfig(instance=instance)).remove_orphans() == [placeholder]
        assert not os.path.lexists(paths[0])
        assert os.path.lexists(paths[1])
    finally:
        for path in paths:
            if os.path.lexists(path):
                os.unlink(path)
