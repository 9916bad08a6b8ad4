"""SQLite store: one connection in WAL mode, serialised by a lock, schema by migrations.

FastAPI runs sync endpoints on a thread pool, so every access goes through ``read()`` or
``transaction()``; writes use ``BEGIN IMMEDIATE`` so a check-then-write (name uniqueness, the
per-account quota) cannot interleave with another writer.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Append only: each entry moves the schema one version forward (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE network_policies (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT,
        egress TEXT NOT NULL,
        create_time_ms INTEGER NOT NULL,
        update_time_ms INTEGER NOT NULL,
        request_id TEXT
    );
    CREATE UNIQUE INDEX network_policies_name ON network_policies(account, name);
    CREATE UNIQUE INDEX network_policies_request
        ON network_policies(account, request_id) WHERE request_id IS NOT NULL;
    CREATE INDEX network_policies_account ON network_policies(account, id);
    """,
    # Devboxes and their executions. JSON columns hold what is echoed as given; the policy id
    # is also a column so that "is this policy in use" is one indexed query.
    """
    CREATE TABLE devboxes (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        status TEXT NOT NULL,
        name TEXT,
        metadata TEXT NOT NULL,
        launch_parameters TEXT NOT NULL,
        environment_variables TEXT NOT NULL,
        network_policy_id TEXT,
        blueprint_id TEXT,
        snapshot_id TEXT,
        state_transitions TEXT NOT NULL,
        create_time_ms INTEGER NOT NULL,
        end_time_ms INTEGER,
        failure_reason TEXT,
        shutdown_reason TEXT,
        request_id TEXT
    );
    CREATE INDEX devboxes_account ON devboxes(account, id);
    CREATE INDEX devboxes_policy ON devboxes(account, network_policy_id) WHERE network_policy_id IS NOT NULL;
    CREATE UNIQUE INDEX devboxes_request ON devboxes(account, request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        devbox_id TEXT NOT NULL REFERENCES devboxes(id),
        command TEXT NOT NULL,
        command_id TEXT,
        request_id TEXT,
        status TEXT NOT NULL,
        exit_status INTEGER,
        stdout TEXT,
        stderr TEXT,
        stdout_truncated INTEGER NOT NULL DEFAULT 0,
        stderr_truncated INTEGER NOT NULL DEFAULT 0,
        create_time_ms INTEGER NOT NULL,
        end_time_ms INTEGER
    );
    CREATE INDEX executions_devbox ON executions(devbox_id, id);
    CREATE UNIQUE INDEX executions_command ON executions(devbox_id, command_id) WHERE command_id IS NOT NULL;
    CREATE UNIQUE INDEX executions_request ON executions(account, request_id) WHERE request_id IS NOT NULL;
    """,
]


class Database:
    def __init__(self, path: Path | str):
        self.path = str(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for index in range(version, len(MIGRATIONS)):
                with self.transaction() as conn:
                    for statement in _statements(MIGRATIONS[index]):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={index + 1}")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; rolled back if the block raises (nothing half-stored)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def select_one(conn: sqlite3.Connection, table: str, **where) -> sqlite3.Row | None:
    """The row of ``table`` matching every ``column=value`` given (callers pass trusted names)."""
    clause = " AND ".join(f"{column} = ?" for column in where)
    return conn.execute(f"SELECT * FROM {table} WHERE {clause}", tuple(where.values())).fetchone()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
