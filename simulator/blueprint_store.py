"""SQL for blueprints and their build logs. Callers hold the connection."""

from __future__ import annotations

import json
import sqlite3

from simulator.blueprint_model import BUILD_COMPLETE, CREATED, IN_BUILD, Blueprint, BuildLog
from simulator.policy_model import Page
from simulator.table import Table, Where

# Stored as columns; ``parameters`` holds the rest (and the policy ids, for the view).
_COLUMNS = (
    "id", "account", "name", "status", "state", "base_blueprint_id", "disk", "failure_reason",
    "create_time_ms", "build_finish_time_ms",
)


def _from_row(row: sqlite3.Row) -> Blueprint:
    return Blueprint(parameters=json.loads(row["parameters"]), **{column: row[column] for column in _COLUMNS})


def _values(blueprint: Blueprint) -> dict:
    return {
        **{column: getattr(blueprint, column) for column in _COLUMNS},
        "parameters": json.dumps(blueprint.parameters, separators=(",", ":")),
        "build_policy_id": blueprint.build_policy_id,
        "launch_policy_id": blueprint.launch_parameters.get("network_policy_id"),
    }


TABLE = Table("blueprints", _from_row)
get = TABLE.get
by_request_id = TABLE.by_request_id


def newest_built(conn: sqlite3.Connection, account: str, name: str) -> Blueprint | None:
    row = conn.execute(
        "SELECT * FROM blueprints WHERE account = ? AND name = ? AND status = ? AND state = ? ORDER BY id DESC LIMIT 1",
        (account, name, BUILD_COMPLETE, CREATED),
    ).fetchone()
    return _from_row(row) if row else None


def insert(conn: sqlite3.Connection, blueprint: Blueprint, request_id: str | None) -> None:
    TABLE.insert(conn, _values(blueprint), request_id)


def update(conn: sqlite3.Connection, blueprint: Blueprint) -> None:
    TABLE.update(conn, _values(blueprint))


def using_policy(conn: sqlite3.Connection, account: str, policy_id: str) -> list[str]:
    """Blueprints (not deleted) naming the policy for their devboxes, or for a build still to
    end: a build's policy is not inherited by the blueprint's devboxes, so an ended build no
    longer holds it (a test deleting its build policy before its blueprint got 400)."""
    marks = ", ".join("?" * len(IN_BUILD))
    rows = conn.execute(
        "SELECT id FROM blueprints WHERE account = ? AND state = ?"
        f" AND (launch_policy_id = ? OR (build_policy_id = ? AND status IN ({marks}))) ORDER BY id",
        (account, CREATED, policy_id, policy_id, *IN_BUILD),
    ).fetchall()
    return [row["id"] for row in rows]


def all_in_build(conn: sqlite3.Connection) -> list[Blueprint]:
    marks = ", ".join("?" * len(IN_BUILD))
    rows = conn.execute(f"SELECT * FROM blueprints WHERE status IN ({marks}) ORDER BY id", IN_BUILD).fetchall()
    return [_from_row(row) for row in rows]


def add_log(conn: sqlite3.Connection, blueprint_id: str, log: BuildLog) -> None:
    conn.execute(
        "INSERT INTO blueprint_logs (blueprint_id, level, message, timestamp_ms) VALUES (?, ?, ?, ?)",
        (blueprint_id, log.level, log.message, log.timestamp_ms),
    )


def logs(conn: sqlite3.Connection, blueprint_id: str) -> list[BuildLog]:
    rows = conn.execute(
        "SELECT level, message, timestamp_ms FROM blueprint_logs WHERE blueprint_id = ? ORDER BY seq", (blueprint_id,)
    ).fetchall()
    return [BuildLog(row["level"], row["message"], row["timestamp_ms"]) for row in rows]


def list_page(
    conn: sqlite3.Connection,
    account: str,
    *,
    name: str | None,
    status: str | None,
    starting_after: str | None,
    limit: int | None,
    include_total_count: bool,
) -> Page:
    where = Where.of(account=account, state=CREATED).equal(name=name, status=status)
    return TABLE.page(
        conn, where, starting_after=starting_after, limit=limit, include_total_count=include_total_count
    )
