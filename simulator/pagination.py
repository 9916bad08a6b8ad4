"""Keyset pagination shared by every list endpoint.

Ids sort by creation time (``simulator.ids``), so "newest first" is ``ORDER BY id DESC`` and
``starting_after=X`` is ``id < X``, which stays correct when X has been deleted meanwhile.
"""

from __future__ import annotations

import sqlite3

from simulator.errors import InvalidRequest
from simulator.policy_model import Page

DEFAULT_LIMIT = 20
MAX_LIMIT = 5000


def check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def paginate(
    conn: sqlite3.Connection,
    *,
    table: str,
    where: list[str],
    params: list,
    starting_after: str | None,
    limit: int | None,
    include_total_count: bool,
) -> Page:
    limit = check_limit(limit)
    clause = " AND ".join(where) or "1"
    total = None
    if include_total_count:
        total = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {clause}", params).fetchone()[0]
    page_where, page_params = clause, list(params)
    if starting_after:
        page_where += " AND id < ?"
        page_params.append(starting_after)
    rows = conn.execute(
        f"SELECT * FROM {table} WHERE {page_where} ORDER BY id DESC LIMIT ?",
        [*page_params, limit + 1],
    ).fetchall()
    return Page(items=rows[:limit], has_more=len(rows) > limit, total_count=total)
