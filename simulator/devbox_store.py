"""SQL for devboxes. Callers hold the connection (``Database.read``/``transaction``)."""

from __future__ import annotations

import json
import sqlite3

from simulator import lifecycle
from simulator.devbox_model import Devbox, StateTransition, Tunnel
from simulator.policy_model import Page
from simulator.table import Table, Where


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _from_row(row: sqlite3.Row) -> Devbox:
    return Devbox(
        id=row["id"],
        account=row["account"],
        status=row["status"],
        create_time_ms=row["create_time_ms"],
        launch_parameters=json.loads(row["launch_parameters"]),
        metadata=json.loads(row["metadata"]),
        environment_variables=json.loads(row["environment_variables"]),
        state_transitions=tuple(StateTransition(**t) for t in json.loads(row["state_transitions"])),
        name=row["name"],
        end_time_ms=row["end_time_ms"],
        failure_reason=row["failure_reason"],
        shutdown_reason=row["shutdown_reason"],
        blueprint_id=row["blueprint_id"],
        snapshot_id=row["snapshot_id"],
        tunnel=Tunnel(**json.loads(row["tunnel"])) if row["tunnel"] else None,
    )


def _values(devbox: Devbox) -> dict:
    return {
        "id": devbox.id,
        "account": devbox.account,
        "status": devbox.status,
        "name": devbox.name,
        "metadata": _dumps(devbox.metadata),
        "launch_parameters": _dumps(devbox.launch_parameters),
        "environment_variables": _dumps(devbox.environment_variables),
        "network_policy_id": devbox.network_policy_id,
        "blueprint_id": devbox.blueprint_id,
        "snapshot_id": devbox.snapshot_id,
        "state_transitions": _dumps([t.to_json() for t in devbox.state_transitions]),
        "create_time_ms": devbox.create_time_ms,
        "end_time_ms": devbox.end_time_ms,
        "failure_reason": devbox.failure_reason,
        "shutdown_reason": devbox.shutdown_reason,
        "tunnel": _dumps(devbox.tunnel.to_json()) if devbox.tunnel else None,
        "tunnel_key": devbox.tunnel.tunnel_key if devbox.tunnel else None,
    }


# What an update stores: status and its bookkeeping, name, metadata, tunnel (the rest never
# changes).
_MUTABLE = ("account", "id", "status", "name", "metadata", "state_transitions", "end_time_ms", "failure_reason",
            "shutdown_reason", "tunnel", "tunnel_key")

TABLE = Table("devboxes", _from_row)
get = TABLE.get
by_request_id = TABLE.by_request_id


def insert(conn: sqlite3.Connection, devbox: Devbox, request_id: str | None) -> None:
    TABLE.insert(conn, _values(devbox), request_id)


def update(conn: sqlite3.Connection, devbox: Devbox) -> None:
    """Store every mutable field (status and its bookkeeping, name, metadata, tunnel)."""
    values = _values(devbox)
    TABLE.update(conn, {column: values[column] for column in _MUTABLE})


def by_tunnel_key(conn: sqlite3.Connection, tunnel_key: str) -> Devbox | None:
    """The devbox whose tunnel has this key, whatever its account (a tunnel URL is the
    capability; the key is unique)."""
    row = conn.execute("SELECT * FROM devboxes WHERE tunnel_key = ?", (tunnel_key,)).fetchone()
    return _from_row(row) if row is not None else None


def active_using_policy(conn: sqlite3.Connection, account: str, policy_id: str) -> list[str]:
    marks = ",".join("?" * len(lifecycle.ACTIVE))
    rows = conn.execute(
        f"SELECT id FROM devboxes WHERE account = ? AND network_policy_id = ? AND status IN ({marks}) ORDER BY id",
        (account, policy_id, *sorted(lifecycle.ACTIVE)),
    ).fetchall()
    return [row["id"] for row in rows]


def provisioning_from(conn: sqlite3.Connection, account: str, *, snapshot_id: str | None = None,
                      blueprint_id: str | None = None) -> list[str]:
    """Devboxes still being made from the snapshot or blueprint (their copy of its disk may not
    have begun)."""
    column, source = ("snapshot_id", snapshot_id) if snapshot_id is not None else ("blueprint_id", blueprint_id)
    rows = conn.execute(
        f"SELECT id FROM devboxes WHERE account = ? AND {column} = ? AND status = ? ORDER BY id",
        (account, source, lifecycle.PROVISIONING),
    ).fetchall()
    return [row["id"] for row in rows]


def all_active(conn: sqlite3.Connection) -> list[Devbox]:
    marks = ",".join("?" * len(lifecycle.ACTIVE))
    rows = conn.execute(
        f"SELECT * FROM devboxes WHERE status IN ({marks}) ORDER BY id", sorted(lifecycle.ACTIVE)
    ).fetchall()
    return [_from_row(row) for row in rows]


def list_page(
    conn: sqlite3.Connection,
    account: str,
    *,
    status: str | None,
    starting_after: str | None,
    limit: int | None,
    include_total_count: bool,
) -> Page:
    return TABLE.page(
        conn, Where.of(account=account).equal(status=status), starting_after=starting_after, limit=limit,
        include_total_count=include_total_count,
    )
