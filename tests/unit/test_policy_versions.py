"""The data plane remembers the newest version of each updated policy (a devbox provisioning
with an older one must enforce the newer), and forgets it when the policy is deleted: it used
to keep every updated policy, deleted ones too, for the process's life."""

from __future__ import annotations

from simulator.dataplane import DataPlane, DataPlaneConfig
from simulator.db import Database
from simulator.network_policies import NetworkPolicyService


def test_a_deleted_policy_s_newest_version_is_forgotten():
    plane = DataPlane(DataPlaneConfig(instance="0c0ffe"))  # not started: no kernel state
    db = Database(":memory:")
    policies = NetworkPolicyService(db)
    policies.add_update_hook(plane.policy_updated)
    policies.add_delete_hook(plane.policy_deleted)
    kept = policies.create_network_policy("acct", {"name": "kept"})
    gone = policies.create_network_policy("acct", {"name": "gone"})
    for policy in (kept, gone):
        policies.update_network_policy("acct", policy.id, {"allowed_hostnames": ["a.example.com"]})
    assert set(plane._latest) == {kept.id, gone.id}
    assert plane._latest[gone.id].egress.allowed_hostnames == ("a.example.com",)
    policies.delete_network_policy("acct", gone.id)
    assert set(plane._latest) == {kept.id}
    db.close()
