"""Two data planes with one instance id (two data dirs whose paths hash alike): the second is
refused before it touches anything, and the first keeps its devboxes and their network."""

from __future__ import annotations

import pytest

from simulator.data_dir_lock import InstanceInUse
from simulator.dataplane import DataPlane, DataPlaneConfig
from tests.dataplane.conftest import GITHUB, make_policy

pytestmark = pytest.mark.privileged


def test_a_second_data_plane_with_the_same_instance_id_is_refused(plane, devboxes):
    dataplane = plane[0]
    box = devboxes.create(make_policy(allowed_hostnames=["github.com"]))
    twin = DataPlane(DataPlaneConfig(instance=dataplane.config.instance, subnet="10.86.0.0/16"))
    with pytest.raises(InstanceInUse, match=dataplane.config.instance):
        twin.start()
    twin.stop()  # as a caller's cleanup would: the namespaces are the first one's
    # Nothing of the first was removed as the twin's "orphans".
    assert devboxes.run(box, "resolve", "github.com") == f"OK {GITHUB}"
    assert devboxes.run(box, "tcp", "github.com", "443") == "OK ping"
