"""SQL for disk snapshots. Callers hold the connection (``Database.read``/``transaction``)."""

from __future__ import annotations

import json
import sqlite3

from simulator.policy_model import Page
from simulator.snapshot_model import DELETED, IN_PROGRESS, DiskSnapshot
from simulator.table import Table, Where

_COLUMNS = (
    "id", "account", "source_devbox_id", "source_blueprint_id", "network_policy_id", "status", "name",
    "commit_message", "metadata", "disk", "error_message", "create_time_ms", "size_bytes",
)


def _from_row(row: sqlite3.Row) -> DiskSnapshot:
    values = {column: row[column] for column in _COLUMNS}
    values["metadata"] = json.loads(values["metadata"])
    return DiskSnapshot(**values)


def _values(snapshot: DiskSnapshot) -> dict:
    values = {column: getattr(snapshot, column) for column in _COLUMNS}
    values["metadata"] = json.dumps(snapshot.metadata, separators=(",", ":"))
    return values


TABLE = Table("disk_snapshots", _from_row)
get = TABLE.get
by_request_id = TABLE.by_request_id


def insert(conn: sqlite3.Connection, snapshot: DiskSnapshot, request_id: str | None) -> None:
    TABLE.insert(conn, _values(snapshot), request_id)


def update(conn: sqlite3.Connection, snapshot: DiskSnapshot) -> None:
    TABLE.update(conn, _values(snapshot))


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
    where = Where.of(account=account).add("status != ?", DELETED)
    where.equal(source_devbox_id=devbox_id, source_blueprint_id=source_blueprint_id)
    # json_each, not a JSON path: any key (dots, quotes) matches exactly.
    for key, value in metadata.items():
        where.add("EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value = ?)", key, value)
    for key, values in metadata_in.items():
        marks = ", ".join("?" * len(values))
        where.add(f"EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value IN ({marks}))", key, *values)
    return TABLE.page(
        conn, where, starting_after=starting_after, limit=limit, include_total_count=include_total_count
    )
