"""SQL for executions. Callers hold the connection (``Database.read``/``transaction``).

A row is written when a command starts (so ``command_id`` and ``x-request-id`` de-duplicate
at once) and rewritten when it completes; output lives in memory until then.

Retention: the store keeps ``MAX_STORED_OUTPUT_BYTES`` of command output, all devboxes
together (a command may keep up to 2 x 16 MiB). Past it, a completion drops the output of
completed commands, the oldest of the account that stores the most first: one account's
chatty commands must not wipe another's results. Their rows stay (status, exit status,
times), with empty output and ``stdout_truncated``/``stderr_truncated`` set, so nobody
mistakes "" for what they printed. The total is kept in ``stored_output``, and each
account's in ``stored_output_accounts``, so no completion has to add up every row.
"""

from __future__ import annotations

import sqlite3

from simulator.devbox_model import Execution
from simulator.table import Table


def _from_row(row: sqlite3.Row) -> Execution:
    return Execution(
        id=row["id"],
        account=row["account"],
        devbox_id=row["devbox_id"],
        command=row["command"],
        command_id=row["command_id"],
        status=row["status"],
        create_time_ms=row["create_time_ms"],
        exit_status=row["exit_status"],
        stdout=row["stdout"],
        stderr=row["stderr"],
        stdout_truncated=bool(row["stdout_truncated"]),
        stderr_truncated=bool(row["stderr_truncated"]),
        end_time_ms=row["end_time_ms"],
    )


TABLE = Table("executions", _from_row)

MAX_STORED_OUTPUT_BYTES = 1 << 30  # 1 GiB of command output in the store, all devboxes
by_request_id = TABLE.by_request_id


def get(conn: sqlite3.Connection, account: str, devbox_id: str, execution_id: str) -> Execution | None:
    return TABLE.one(conn, account=account, devbox_id=devbox_id, id=execution_id)


def by_command_id(conn: sqlite3.Connection, account: str, devbox_id: str, command_id: str) -> Execution | None:
    return TABLE.one(conn, account=account, devbox_id=devbox_id, command_id=command_id)


def insert(conn: sqlite3.Connection, execution: Execution, request_id: str | None) -> None:
    conn.execute(
        "INSERT INTO executions (id, account, devbox_id, command, command_id, request_id, status,"
        " create_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            execution.id,
            execution.account,
            execution.devbox_id,
            execution.command,
            execution.command_id,
            request_id,
            execution.status,
            execution.create_time_ms,
        ),
    )


def complete(conn: sqlite3.Connection, execution: Execution, max_stored: int = MAX_STORED_OUTPUT_BYTES) -> None:
    size = _size(execution.stdout) + _size(execution.stderr)
    conn.execute(
        "UPDATE executions SET status = ?, exit_status = ?, stdout = ?, stderr = ?, stdout_truncated = ?,"
        " stderr_truncated = ?, end_time_ms = ?, output_bytes = ? WHERE id = ?",
        (
            execution.status,
            execution.exit_status,
            execution.stdout,
            execution.stderr,
            int(execution.stdout_truncated),
            int(execution.stderr_truncated),
            execution.end_time_ms,
            size,
            execution.id,
        ),
    )
    conn.execute("UPDATE stored_output SET bytes = bytes + ? WHERE id = 0", (size,))
    if size:
        conn.execute(
            "INSERT INTO stored_output_accounts (account, bytes) VALUES (?, ?)"
            " ON CONFLICT (account) DO UPDATE SET bytes = bytes + excluded.bytes",
            (execution.account, size),
        )
    (total,) = conn.execute("SELECT bytes FROM stored_output WHERE id = 0").fetchone()
    if total > max_stored:
        _drop_oldest_output(conn, total - max_stored, keep=execution.id)


def _drop_oldest_output(conn: sqlite3.Connection, excess: int, keep: str) -> None:
    """Drop the output of completed commands (never ``keep``'s, the one just completed) until
    ``excess`` bytes are freed: the oldest of the account that stores the most, until it is no
    longer the largest (then the accounts are ranked again)."""
    freed = 0
    while freed < excess:
        ranked = conn.execute(
            "SELECT account, bytes FROM stored_output_accounts WHERE bytes > 0 ORDER BY bytes DESC, account"
        ).fetchall()
        for index, (account, stored) in enumerate(ranked):
            runner_up = ranked[index + 1][1] if index + 1 < len(ranked) else 0
            dropped: list[tuple[str]] = []
            size_dropped = 0
            oldest = conn.execute(
                "SELECT id, output_bytes FROM executions WHERE account = ? AND output_bytes > 0 AND id != ?"
                " ORDER BY end_time_ms, id",
                (account, keep),
            )
            for execution_id, size in oldest:  # read lazily: stops at the first rows that suffice
                dropped.append((execution_id,))
                size_dropped += size
                if freed + size_dropped >= excess or stored - size_dropped < runner_up:
                    break
            if not dropped:
                continue  # the account's only output is the one just stored
            conn.executemany(
                "UPDATE executions SET stdout = '', stderr = '', stdout_truncated = 1, stderr_truncated = 1,"
                " output_bytes = 0 WHERE id = ?",
                dropped,
            )
            conn.execute("UPDATE stored_output_accounts SET bytes = bytes - ? WHERE account = ?", (size_dropped, account))
            conn.execute("UPDATE stored_output SET bytes = bytes - ? WHERE id = 0", (size_dropped,))
            freed += size_dropped
            break
        else:
            return  # nothing else to drop


def _size(text: str | None) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if text else 0


def complete_unfinished(conn: sqlite3.Connection, exit_status: int, end_time_ms: int) -> int:
    """Complete rows left queued/running by a previous process (their processes are gone)."""
    return conn.execute(
        "UPDATE executions SET status = 'completed', exit_status = ?, stdout = COALESCE(stdout, ''),"
        " stderr = COALESCE(stderr, ''), end_time_ms = ? WHERE status != 'completed'",
        (exit_status, end_time_ms),
    ).rowcount
