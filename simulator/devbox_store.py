"""SQL for devboxes. Callers hold the connection (``Database.read``/``transaction``)."""

from __future__ import annotations

import json
import sqlite3

from simulator import lifecycle
from simulator.db import select_one
from simulator.devbox_model import Devbox, StateTransition
from simulator.pagination import paginate
from simulator.policy_model import Page


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
    )


def get(conn: sqlite3.Connection, account: str, devbox_id: str) -> Devbox | None:
    row = select_one(conn, "devboxes", account=account, id=devbox_id)
    return _from_row(row) if row else None



def by_request_id(conn: sqlite3.Connection, account: str, request_id: str) -> Devbox | None:
    row = select_one(conn, "devboxes", account=account, request_id=request_id)
    return _from_row(row) if row else None


def insert(conn: sqlite3.Connection, devbox: Devbox, request_id: str | None) -> None:
    conn.execute(
        "INSERT INTO devboxes (id, account, status, name, metadata, launch_parameters,"
        " environment_variables, network_policy_id, blueprint_id, snapshot_id, state_transitions,"
        " create_time_ms, end_time_ms, failure_reason, shutdown_reason, request_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            devbox.id,
            devbox.account,
            devbox.status,
            devbox.name,
            _dumps(devbox.metadata),
            _dumps(devbox.launch_parameters),
            _dumps(devbox.environment_variables),
            devbox.network_policy_id,
            devbox.blueprint_id,
            devbox.snapshot_id,
            _dumps([t.to_json() for t in devbox.state_transitions]),
            devbox.create_time_ms,
            devbox.end_time_ms,
            devbox.failure_reason,
            devbox.shutdown_reason,
            request_id,
        ),
    )


def update(conn: sqlite3.Connection, devbox: Devbox) -> None:
    """Store every mutable field (status and its bookkeeping, name, metadata)."""
    conn.execute(
        "UPDATE devboxes SET status = ?, name = ?, metadata = ?, state_transitions = ?, end_time_ms = ?,"
        " failure_reason = ?, shutdown_reason = ? WHERE account = ? AND id = ?",
        (
            devbox.status,
            devbox.name,
            _dumps(devbox.metadata),
            _dumps([t.to_json() for t in devbox.state_transitions]),
            devbox.end_time_ms,
            devbox.failure_reason,
            devbox.shutdown_reason,
            devbox.account,
            devbox.id,
        ),
    )


def active_using_policy(conn: sqlite3.Connection, account: str, policy_id: str) -> list[str]:
    marks = ",".join("?" * len(lifecycle.ACTIVE))
    rows = conn.execute(
        f"SELECT id FROM devboxes WHERE account = ? AND network_policy_id = ? AND status IN ({marks}) ORDER BY id",
        (account, policy_id, *sorted(lifecycle.ACTIVE)),
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
    where, params = ["account = ?"], [account]
    if status:
        where.append("status = ?")
        params.append(status)
    page = paginate(
        conn,
        table="devboxes",
        where=where,
        params=params,
        starting_after=starting_after,
        limit=limit,
        include_total_count=include_total_count,
    )
    page.items = [_from_row(row) for row in page.items]
    return page
