"""The migration that starts command-output retention counts what an older store holds."""

from __future__ import annotations

from simulator import db as db_module
from simulator.db import Database


def test_the_migration_counts_the_output_an_older_store_already_has(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    all_migrations = db_module.MIGRATIONS
    retention = next(i for i, script in enumerate(all_migrations) if "output_bytes" in script)
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations[:retention])  # before output retention
    old = Database(path)
    with old.transaction() as conn:  # as that version wrote them
        conn.execute(
            "INSERT INTO devboxes (id, account, status, metadata, launch_parameters, environment_variables,"
            " state_transitions, create_time_ms) VALUES ('dbx_old', 'acct', 'running', '{}', '{}', '{}', '[]', 1)"
        )
        conn.executemany(
            "INSERT INTO executions (id, account, devbox_id, command, status, stdout, stderr, create_time_ms, end_time_ms)"
            " VALUES (?, 'acct', 'dbx_old', 'x', ?, ?, ?, 1, ?)",
            [("exn_a", "completed", "héllo\n", "", 2), ("exn_b", "completed", "12345", "err", 3),
             ("exn_c", "running", None, None, None)],
        )
    old.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations)
    new = Database(path)
    with new.read() as conn:
        sizes = dict(conn.execute("SELECT id, output_bytes FROM executions"))
        (total,) = conn.execute("SELECT bytes FROM stored_output").fetchone()
    new.close()
    assert sizes == {"exn_a": 7, "exn_b": 8, "exn_c": 0}  # bytes, not characters ("é" is two)
    assert total == 15


def test_the_migration_counts_each_account_s_stored_output(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    all_migrations = db_module.MIGRATIONS
    per_account = next(i for i, script in enumerate(all_migrations) if "stored_output_accounts" in script)
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations[:per_account])  # before it
    old = Database(path)
    with old.transaction() as conn:
        conn.execute(
            "INSERT INTO devboxes (id, account, status, metadata, launch_parameters, environment_variables,"
            " state_transitions, create_time_ms) VALUES ('dbx_old', 'acct', 'running', '{}', '{}', '{}', '[]', 1)"
        )
        conn.executemany(
            "INSERT INTO executions (id, account, devbox_id, command, status, stdout, stderr, create_time_ms,"
            " end_time_ms, output_bytes) VALUES (?, ?, 'dbx_old', 'x', 'completed', '', '', 1, 2, ?)",
            [("exn_a1", "alice", 10), ("exn_a2", "alice", 5), ("exn_b1", "bob", 7), ("exn_c1", "carol", 0)],
        )
    old.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations)
    new = Database(path)
    with new.read() as conn:
        counted = dict(conn.execute("SELECT account, bytes FROM stored_output_accounts"))
    new.close()
    assert counted == {"alice": 15, "bob": 7}
