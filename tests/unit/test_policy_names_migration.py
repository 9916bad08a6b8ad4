"""The migration that lets policy names repeat: an older store (a unique index on names) keeps
its policies and takes a second policy of the same name; strict mode still refuses one."""

from __future__ import annotations

import pytest

from simulator import db as db_module
from simulator.db import Database
from simulator.errors import InvalidRequest
from simulator.network_policies import NetworkPolicyService


def test_an_older_store_takes_repeated_names(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    all_migrations = db_module.MIGRATIONS
    relaxed = next(i for i, script in enumerate(all_migrations) if "DROP INDEX network_policies_name" in script)
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations[:relaxed])
    old = Database(path)
    first = NetworkPolicyService(old).create_network_policy("acct", {"name": "same"})
    with pytest.raises(Exception, match="UNIQUE"):  # what that version's index did
        with old.transaction() as conn:
            conn.execute("INSERT INTO network_policies SELECT 'npol_copy', account, name, description, egress,"
                         " create_time_ms, update_time_ms, request_id FROM network_policies")
    old.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations)
    new = Database(path)
    service = NetworkPolicyService(new)
    second = service.create_network_policy("acct", {"name": "same"})
    assert second.id != first.id
    assert sorted(p.id for p in service.list_network_policies("acct", name="same").items) == sorted([first.id, second.id])
    with pytest.raises(InvalidRequest) as refused:
        NetworkPolicyService(new, unique_names=True).create_network_policy("acct", {"name": "same"})
    assert refused.value.code == "duplicate_name"
    new.close()
