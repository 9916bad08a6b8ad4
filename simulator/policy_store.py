"""SQL for network policies. Callers hold the connection (``Database.read``/``transaction``)."""

from __future__ import annotations

import json
import sqlite3

from simulator.db import select_one
from simulator.pagination import paginate
from simulator.policy_model import Egress, NetworkPolicy, Page


# Stored egress text -> parsed Egress. Lists re-read the same rows over and over; parsing them
# was a third of a list request. Bounded: cleared when full (a miss only costs a parse).
_EGRESS_CACHE: dict[str, Egress] = {}
_EGRESS_CACHE_MAX = 20_000


def _egress(text: str) -> Egress:
    egress = _EGRESS_CACHE.get(text)
    if egress is None:
        egress = Egress.from_json(json.loads(text))
        if len(_EGRESS_CACHE) >= _EGRESS_CACHE_MAX:
            _EGRESS_CACHE.clear()
        _EGRESS_CACHE[text] = egress
    return egress


def _from_row(row: sqlite3.Row) -> NetworkPolicy:
    return NetworkPolicy(
        id=row["id"],
        account=row["account"],
        name=row["name"],
        description=row["description"],
        egress=_egress(row["egress"]),
        create_time_ms=row["create_time_ms"],
        update_time_ms=row["update_time_ms"],
    )


def get(conn: sqlite3.Connection, account: str, policy_id: str) -> NetworkPolicy | None:
    row = select_one(conn, "network_policies", account=account, id=policy_id)
    return _from_row(row) if row else None



def by_request_id(conn: sqlite3.Connection, account: str, request_id: str) -> NetworkPolicy | None:
    row = select_one(conn, "network_policies", account=account, request_id=request_id)
    return _from_row(row) if row else None


def name_taken(conn: sqlite3.Connection, account: str, name: str, except_id: str | None = None) -> bool:
    row = conn.execute(
        "SELECT id FROM network_policies WHERE account = ? AND name = ? AND id IS NOT ?",
        (account, name, except_id),
    ).fetchone()
    return row is not None


def count(conn: sqlite3.Connection, account: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM network_policies WHERE account = ?", (account,)).fetchone()[0]


def insert(conn: sqlite3.Connection, policy: NetworkPolicy, request_id: str | None) -> None:
    conn.execute(
        "INSERT INTO network_policies (id, account, name, description, egress, create_time_ms,"
        " update_time_ms, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            policy.id,
            policy.account,
            policy.name,
            policy.description,
            policy.egress_json(),
            policy.create_time_ms,
            policy.update_time_ms,
            request_id,
        ),
    )


def update(conn: sqlite3.Connection, policy: NetworkPolicy) -> None:
    conn.execute(
        "UPDATE network_policies SET name = ?, description = ?, egress = ?, update_time_ms = ?"
        " WHERE account = ? AND id = ?",
        (policy.name, policy.description, policy.egress_json(), policy.update_time_ms, policy.account, policy.id),
    )


def delete(conn: sqlite3.Connection, account: str, policy_id: str) -> None:
    conn.execute("DELETE FROM network_policies WHERE account = ? AND id = ?", (account, policy_id))


def list_page(
    conn: sqlite3.Connection,
    account: str,
    *,
    id: str | None,
    name: str | None,
    search: str | None,
    starting_after: str | None,
    limit: int | None,
    include_total_count: bool,
) -> Page:
    where, params = ["account = ?"], [account]
    if id:
        where.append("id = ?")
        params.append(id)
    if name:
        where.append("instr(lower(name), lower(?)) > 0")
        params.append(name)
    if search:
        where.append("(instr(id, ?) > 0 OR instr(lower(name), lower(?)) > 0)")
        params += [search, search]
    page = paginate(
        conn,
        table="network_policies",
        where=where,
        params=params,
        starting_after=starting_after,
        limit=limit,
        include_total_count=include_total_count,
    )
    page.items = [_from_row(row) for row in page.items]
    return page
