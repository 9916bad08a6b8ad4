"""SQL for disk snapshots. Callers hold the connection (``Database.read``/``transaction``)."""

from __future__ import annotations

import json
import sqlite3

from simulator.db import select_one
from simulator.pagination import paginate
from simulator.policy_model import Page
from simulator.snapshot_model import DELETED, IN_PROGRESS, DiskSnapshot

_COLUMNS = (
    "id", "account", "source_devbox_id", "source_blueprint_id", "network_policy_id", "status", "name",
    "commit_message", "metadata", "disk", "error_message", "create_time_ms",
)


def _from_row(row: sqlite3.Row) -> DiskSnapshot:
    values = {column: row[column] for column in _COLUMNS}
    values["metadata"] = json.loads(values["metadata"])
    return DiskSnapshot(**values)


def _values(snapshot: DiskSnapshot) -> list:
    values = {column: getattr(snapshot, column) for column in _COLUMNS}
    values["metadata"] = json.dumps(snapshot.metadata, separators=(",", ":"))
    return [values[column] for column in _COLUMNS]


def get(conn: sqlite3.Connection, account: str, snapshot_id: str) -> DiskSnapshot | None:
    row = select_one(conn, "disk_snapshots", account=account, id=snapshot_id)
    return _from_row(row) if row else None


def by_request_id(conn: sqlite3.Connection, account: str, request_id: str) -> DiskSnapshot | None:
    row = select_one(conn, "disk_snapshots", account=account, request_id=request_id)
    return _from_row(row) if row else None


def insert(conn: sqlite3.Connection, snapshot: DiskSnapshot, request_id: str | None) -> None:
    marks = ", ".join("?" * (len(_COLUMNS) + 1))
    conn.execute(
        f"INSERT INTO disk_snapshots ({', '.join(_COLUMNS)}, request_id) VALUES ({marks})",
        [*_values(snapshot), request_id],
    )


def update(conn: sqlite3.Connection, snapshot: DiskSnapshot) -> None:
    sets = ", ".join(f"{column} = ?" for column in _COLUMNS[2:])
    conn.execute(
        f"UPDATE disk_snapshots SET {sets} WHERE account = ? AND id = ?",
        [*_values(snapshot)[2:], snapshot.account, snapshot.id],
    )


def in_progress_of_devbox(conn: sqlite3.Connection, account: str, devbox_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM disk_snapshots WHERE account = ? AND source_devbox_id = ? AND status = ? ORDER BY id",
        (account, devbox_id, IN_PROGRESS),
    ).fetchall()
    return [row["id"] for row in rows]


def live_of_blueprint(conn: sqlite3.Connection, account: str, blueprint_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM disk_snapshots WHERE account = ? AND source_blueprint_id = ? AND status != ? ORDER BY id",
        (account, blueprint_id, DELETED),
    ).fetchall()
    return [row["id"] for row in rows]


def all_in_progress(conn: sqlite3.Connection) -> list[DiskSnapshot]:
    rows = conn.execute("SELECT * FROM disk_snapshots WHERE status = ? ORDER BY id", (IN_PROGRESS,)).fetchall()
    return [_from_row(row) for row in rows]


def list_page(
    conn: sqlite3.Connection,
    account: str,
    *,
    devbox_id: str | None,
    source_blueprint_id: str | None,
    metadata: dict[str, str],
    metadata_in: dict[str, list[str]],
    starting_after: str | None,
    limit: int | None,
    include_total_count: bool,
) -> Page:
    where, params = ["account = ?", "status != ?"], [account, DELETED]
    if devbox_id:
        where.append("source_devbox_id = ?")
        params.append(devbox_id)
    if source_blueprint_id:
        where.append("source_blueprint_id = ?")
        params.append(source_blueprint_id)
    # json_each, not a JSON path: any key (dots, quotes) matches exactly.
    for key, value in metadata.items():
        where.append("EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value = ?)")
        params += [key, value]
    for key, values in metadata_in.items():
        marks = ", ".join("?" * len(values))
        where.append(f"EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value IN ({marks}))")
        params += [key, *values]
    page = paginate(
        conn,
        table="disk_snapshots",
        where=where,
        params=params,
        starting_after=starting_after,
        limit=limit,
        include_total_count=include_total_count,
    )
    page.items = [_from_row(row) for row in page.items]
    return page
