"""The SQL every store runs the same way on its own table: one row by columns, a row by the
request id a create was retried with, insert and update by column name, and a filtered page
of rows (``simulator.pagination``) mapped to the domain model.

A store keeps what is its own (the row <-> model mapping, its other queries) and names its
table once: ``TABLE = Table("devboxes", _from_row)``. Callers hold the connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from simulator.db import select_one
from simulator.pagination import paginate
from simulator.policy_model import Page

T = TypeVar("T")


@dataclass
class Where:
    """The conditions of a list query. ``Where(account=a)`` always applies; ``equal`` adds a
    filter only for the values given (a query parameter left out filters nothing)."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, **columns: Any) -> Where:
        where = cls()
        for column, value in columns.items():
            where.add(f"{column} = ?", value)
        return where

    def add(self, clause: str, *params: Any) -> Where:
        self.clauses.append(clause)
        self.params.extend(params)
        return self

    def equal(self, **columns: Any) -> Where:
        for column, value in columns.items():
            if value:
                self.add(f"{column} = ?", value)
        return self


@dataclass(frozen=True)
class Table(Generic[T]):
    name: str  # a trusted table name, never user input
    from_row: Callable[[sqlite3.Row], T]

    def one(self, conn: sqlite3.Connection, **where: Any) -> T | None:
        row = select_one(conn, self.name, **where)
        return self.from_row(row) if row else None

    def get(self, conn: sqlite3.Connection, account: str, id: str) -> T | None:
        return self.one(conn, account=account, id=id)

    def by_request_id(self, conn: sqlite3.Connection, account: str, request_id: str) -> T | None:
        """What a create with this ``x-request-id`` stored (the SDK reuses it on retries)."""
        return self.one(conn, account=account, request_id=request_id)

    def insert(self, conn: sqlite3.Connection, values: dict[str, Any], request_id: str | None) -> None:
        columns = [*values, "request_id"]
        conn.execute(
            f"INSERT INTO {self.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [*values.values(), request_id],
        )

    def update(self, conn: sqlite3.Connection, values: dict[str, Any]) -> None:
        """Set every column of ``values`` but ``account`` and ``id``, which name the row."""
        changes = {column: value for column, value in values.items() if column not in ("account", "id")}
        sets = ", ".join(f"{column} = ?" for column in changes)
        conn.execute(
            f"UPDATE {self.name} SET {sets} WHERE account = ? AND id = ?",
            [*changes.values(), values["account"], values["id"]],
        )

    def page(
        self,
        conn: sqlite3.Connection,
        where: Where,
        *,
        starting_after: str | None,
        limit: int | None,
        include_total_count: bool,
    ) -> Page:
        page = paginate(
            conn,
            table=self.name,
            where=where.clauses,
            params=where.params,
            starting_after=starting_after,
            limit=limit,
            include_total_count=include_total_count,
        )
        page.items = [self.from_row(row) for row in page.items]
        return page
