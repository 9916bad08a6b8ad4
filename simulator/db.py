"""SQLite store: one connection in WAL mode, serialised by a lock, schema by migrations.

FastAPI runs sync endpoints on a thread pool, so every access goes through ``read()`` or
``transaction()``; writes use ``BEGIN IMMEDIATE`` so a check-then-write (name uniqueness, the
per-account quota) cannot interleave with another writer.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

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
    # Devbox logs (GET /v1/devboxes/{id}/logs): commands, their output lines and exit codes,
    # launch commands and file writes. seq orders them (timestamps may tie).
    """
    CREATE TABLE devbox_logs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        devbox_id TEXT NOT NULL,
        execution_id TEXT,
        level TEXT NOT NULL,
        source TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        cmd TEXT,
        exit_code INTEGER,
        message TEXT
    );
    CREATE INDEX devbox_logs_devbox ON devbox_logs(account, devbox_id, seq);
    """,
    # Disk snapshots and blueprints. A deleted one keeps its row (status/state "deleted") so
    # that status and GET still answer; ``disk`` is the runtime's reference to the files.
    """
    CREATE TABLE disk_snapshots (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        source_devbox_id TEXT NOT NULL,
        source_blueprint_id TEXT,
        network_policy_id TEXT,
        status TEXT NOT NULL,
        name TEXT,
        commit_message TEXT,
        metadata TEXT NOT NULL,
        disk TEXT,
        error_message TEXT,
        create_time_ms INTEGER NOT NULL,
        request_id TEXT
    );
    CREATE INDEX disk_snapshots_account ON disk_snapshots(account, id);
    CREATE INDEX disk_snapshots_devbox ON disk_snapshots(account, source_devbox_id);
    CREATE INDEX disk_snapshots_blueprint ON disk_snapshots(account, source_blueprint_id) WHERE source_blueprint_id IS NOT NULL;
    CREATE UNIQUE INDEX disk_snapshots_request ON disk_snapshots(account, request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE blueprints (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        state TEXT NOT NULL,
        parameters TEXT NOT NULL,
        build_policy_id TEXT,
        launch_policy_id TEXT,
        base_blueprint_id TEXT,
        disk TEXT,
        failure_reason TEXT,
        create_time_ms INTEGER NOT NULL,
        build_finish_time_ms INTEGER,
        request_id TEXT
    );
    CREATE INDEX blueprints_account ON blueprints(account, id);
    CREATE INDEX blueprints_name ON blueprints(account, name, id);
    CREATE UNIQUE INDEX blueprints_request ON blueprints(account, request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE blueprint_logs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        blueprint_id TEXT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL
    );
    CREATE INDEX blueprint_logs_blueprint ON blueprint_logs(blueprint_id, seq);
    """,
    # A complete snapshot's disk size (DevboxRuntime.disk_size); NULL where unknown, e.g.
    # snapshots taken before this version.
    """
    ALTER TABLE disk_snapshots ADD COLUMN size_bytes INTEGER;
    """,
    # Devbox log retention (simulator.devbox_logs): lines stored per devbox, so that an insert
    # knows when to prune without counting the devbox's rows.
    """
    CREATE TABLE devbox_log_counts (
        account TEXT NOT NULL,
        devbox_id TEXT NOT NULL,
        lines INTEGER NOT NULL,
        PRIMARY KEY (account, devbox_id)
    );
    INSERT INTO devbox_log_counts (account, devbox_id, lines)
        SELECT account, devbox_id, COUNT(*) FROM devbox_logs GROUP BY account, devbox_id;
    """,
    # Command output retention (simulator.execution_store): each completed command's stored
    # output in bytes, and their total, so that a completion knows when to drop the oldest.
    """
    ALTER TABLE executions ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE executions SET output_bytes =
        COALESCE(length(CAST(stdout AS BLOB)), 0) + COALESCE(length(CAST(stderr AS BLOB)), 0);
    CREATE INDEX executions_output_age ON executions(end_time_ms, id) WHERE output_bytes > 0;
    CREATE TABLE stored_output (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
    INSERT INTO stored_output (id, bytes) SELECT 0, COALESCE(SUM(output_bytes), 0) FROM executions;
    """,
    # Devbox tunnels (simulator.tunnels): the view as JSON, and its key, by which the tunnel
    # proxy finds the devbox.
    """
    ALTER TABLE devboxes ADD COLUMN tunnel TEXT;
    ALTER TABLE devboxes ADD COLUMN tunnel_key TEXT;
    CREATE UNIQUE INDEX devboxes_tunnel_key ON devboxes(tunnel_key) WHERE tunnel_key IS NOT NULL;
    """,
    # Policy names may repeat (the contract, SDK 3.0: "names are labels"); --unique-policy-names
    # checks them in NetworkPolicyService, inside the write transaction.
    """
    DROP INDEX network_policies_name;
    CREATE INDEX network_policies_name ON network_policies(account, name);
    """,
    # Command output retention per account (simulator.execution_store): past the budget, the
    # account storing the most loses its oldest output first, not whoever is oldest.
    """
    CREATE TABLE stored_output_accounts (account TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
    INSERT INTO stored_output_accounts (account, bytes)
        SELECT account, SUM(output_bytes) FROM executions WHERE output_bytes > 0 GROUP BY account;
    CREATE INDEX executions_account_output_age ON executions(account, end_time_ms, id) WHERE output_bytes > 0;
    DROP INDEX executions_output_age;
    """,
    # A long command's text once per run, not on each of its log lines (simulator.devbox_logs):
    # a 100 KB command printing 1,000 lines stored 100 MB of copies.
    """
    CREATE TABLE log_commands (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        devbox_id TEXT NOT NULL,
        cmd TEXT NOT NULL
    );
    CREATE INDEX log_commands_devbox ON log_commands(account, devbox_id);
    ALTER TABLE devbox_logs ADD COLUMN cmd_ref INTEGER;
    """,
]


# Commits between two WAL checkpoints (see _Checkpointer), or sooner when the WAL has grown
# past WAL_CHECKPOINT_BYTES (a few big commits - a command's 16 MiB of output - are a lot of
# WAL); after a checkpoint SQLite cuts the file back to that size (journal_size_limit).
CHECKPOINT_EVERY = 200
WAL_CHECKPOINT_BYTES = 64 << 20


class _Checkpointer:
    """Checkpoints the WAL from a thread of its own. SQLite's automatic checkpoint runs inside
    the commit that crosses 1,000 pages, fsyncs included: every ~1,000th write stalled about
    10 ms (measured), which was a policy create's p99. A PASSIVE checkpoint on another
    connection blocks neither writers nor readers. Started on first use; no periodic wake-ups."""

    def __init__(self, path: str):
        self._path = path
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
            self._thread.start()
        self._due.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                try:
                    # fetched: a statement left unfinished holds a read lock on the WAL
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    log.exception("checkpointing %s", self._path)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(5)


def _casefold(value):
    """Unicode caseless form of a text column (None and non-text as they are)."""
    return value.casefold() if isinstance(value, str) else value


class StoreTooNew(RuntimeError):
    """The store's schema is newer than this version's migrations."""


class Database:
    def __init__(self, path: Path | str):
        self.path = str(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        # SQLite's lower() folds ASCII only: "Über" would never match "über".
        self._conn.create_function("casefold", 1, _casefold, deterministic=True)
        self._commits = 0
        self._checkpointer: _Checkpointer | None = None
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA wal_autocheckpoint=0")  # _Checkpointer does it
            self._conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}")
            self._checkpointer = _Checkpointer(self.path)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                # A newer devbox-sim wrote it: this one would not keep up what that one's
                # tables need (counters, new columns) and the newer one, back, would not know.
                raise StoreTooNew(
                    f"the data dir's store {self.path} was written by a newer devbox-sim (schema"
                    f" {version}, this one knows {len(MIGRATIONS)}); run that version, or another --data-dir"
                )
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
    def transaction(self, undo: Callable[[], None] | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction; rolled back if the block raises (nothing half-stored). When
        nothing was stored - the block raised, or the COMMIT failed (a full disk shows there) -
        ``undo`` runs, still under the store's lock, so no other write comes between: it takes
        back what the block did outside the store (the kernel's rules)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                if undo is not None:
                    undo()
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may leave the transaction open: end it, so the store is not
                # stuck "within a transaction" for every later write.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if undo is not None:
                    undo()
                raise
            self._commits += 1
            if self._checkpointer is not None and (
                self._commits % CHECKPOINT_EVERY == 0 or self._wal_bytes() > WAL_CHECKPOINT_BYTES
            ):
                self._checkpointer.request()

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self.path + "-wal").st_size
        except OSError:
            return 0

    def checkpoint(self) -> None:
        """Move the WAL into the database and empty it (a clean stop: no WAL left behind)."""
        if self._checkpointer is None:
            return
        for _attempt in range(50):  # the background checkpoint may hold the WAL a moment
            with self._lock:
                try:
                    busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                except sqlite3.Error:
                    log.exception("checkpointing %s", self.path)
                    return
            if not busy:
                return
            time.sleep(0.02)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._conn.close()


def select_one(conn: sqlite3.Connection, table: str, **where) -> sqlite3.Row | None:
    """The row of ``table`` matching every ``column=value`` given (callers pass trusted names)."""
    clause = " AND ".join(f"{column} = ?" for column in where)
    return conn.execute(f"SELECT * FROM {table} WHERE {clause}", tuple(where.values())).fetchone()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
