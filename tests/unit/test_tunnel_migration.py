"""The migration that adds devbox tunnels keeps an older store's devboxes readable and gives
them a tunnel slot (none yet)."""

from __future__ import annotations

from dataclasses import replace

from simulator import db as db_module
from simulator import devbox_store
from simulator.db import Database
from simulator.tunnels import new_tunnel


def test_an_older_store_gets_tunnels(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    all_migrations = db_module.MIGRATIONS
    tunnels = next(i for i, script in enumerate(all_migrations) if "tunnel_key" in script)
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations[:tunnels])
    old = Database(path)
    with old.transaction() as conn:  # as that version wrote it
        conn.execute(
            "INSERT INTO devboxes (id, account, status, metadata, launch_parameters, environment_variables,"
            " state_transitions, create_time_ms) VALUES ('dbx_old', 'acct', 'running', '{}', '{}', '{}', '[]', 1)"
        )
    old.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations)
    new = Database(path)
    with new.transaction() as conn:
        devbox = devbox_store.get(conn, "acct", "dbx_old")
        assert devbox is not None and devbox.tunnel is None
        tunnel = new_tunnel({"auth_mode": "authenticated"}, 5)
        devbox_store.update(conn, replace(devbox, tunnel=tunnel))
    with new.read() as conn:
        assert devbox_store.get(conn, "acct", "dbx_old").tunnel == tunnel
        assert devbox_store.by_tunnel_key(conn, tunnel.tunnel_key).id == "dbx_old"
        assert devbox_store.by_tunnel_key(conn, "0" * 32) is None
    new.close()
