"""SQL for network policies. Callers hold the connection (``Database.read``/``transaction``)."""

from __future__ import annotations

import json
import sqlite3

from simulator.policy_model import Egress, NetworkPolicy, Page
from simulator.table import Table, Where


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


TABLE = Table("network_policies", _from_row)
get = TABLE.get
by_request_id = TABLE.by_request_id


def name_taken(conn: sqlite3.Connection, account: str, name: str, except_id: str | None = None) -> bool:
    row = conn.execute(
        "SELECT id FROM network_policies WHERE account = ? AND name = ? AND id IS NOT ?",
        (account, name, except_id),
    ).fetchone()
    return row is not None


def count(conn: sqlite3.Connection, account: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM network_policies WHERE account = ?", (account,)).fetchone()[0]


def _values(policy: NetworkPolicy) -> dict:
    return {
        "id": policy.id,
        "account": policy.account,
        "name": policy.name,
        "description": policy.description,
        "egress": policy.egress_json(),
        "create_time_ms": policy.create_time_ms,
        "update_time_ms": policy.update_time_ms,
    }


def insert(conn: sqlite3.Connection, policy: NetworkPolicy, request_id: str | None) -> None:
    TABLE.insert(conn, _values(policy), request_id)


def update(conn: sqlite3.Connection, policy: NetworkPolicy) -> None:
    values = _values(policy)
    del values["create_time_ms"]  # never changes
    TABLE.update(conn, values)


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
    where = Where.of(account=account).equal(id=id)
    if name:
        where.add("instr(casefold(name), ?) > 0", name.casefold())
    if search:
        where.add("(instr(id, ?) > 0 OR instr(casefold(name), ?) > 0)", search, search.casefold())
    return TABLE.page(
        conn, where, starting_after=starting_after, limit=limit, include_total_count=include_total_count
    )
