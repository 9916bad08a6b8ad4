"""Devbox logs (``GET /v1/devboxes/{id}/logs``): what ran in a devbox and what it printed.

Entries, oldest first (``source`` as the SDK's ``Log`` model names them):

* ``exec``: a command started (``cmd``, ``message`` "started"), each line it printed (level
  ``info`` for stdout, ``error`` for stderr, at the time it was read), and its end
  (``exit_code``). ``cmd_id`` is the execution id, which the ``execution_id`` filter matches.
* ``setup_commands``: the same for launch commands (no execution id).
* ``files``: a file written through the API.

A running command's lines live in memory (its ``LineLog``) and are stored with its result in
one transaction, so a busy command costs no write per line; the endpoint shows both. At most
``MAX_LINES_PER_COMMAND`` lines and ``MAX_CHARS_PER_COMMAND`` characters of a command are
logged (the execution keeps all its output): the lines are held in memory while it runs, and
long lines by the thousand would hold as much as its output again.

Storage: a command's text longer than ``INLINE_CMD_CHARS`` is stored once per run, in
``log_commands``, and its entries refer to it: every entry shows the command, and a 100 KB
command (a here-document writing a file, say) printing 1,000 lines stored 100 MB of copies.

Retention: the store keeps the newest ``MAX_LINES_PER_DEVBOX`` entries of each devbox (every
entry counts: a command's start, its lines, its end); older ones are dropped, so a chatty
devbox cannot grow the store without bound. Pruning is amortised: it runs once a devbox holds
``PRUNE_SLACK`` more than the cap, so at most cap + slack rows stay stored, and the endpoint
always shows the newest cap of them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from simulator import clock

MAX_LINES_PER_COMMAND = 10_000
MAX_LINES_PER_DEVBOX = 20_000  # stored entries per devbox: the newest are kept
PRUNE_SLACK = MAX_LINES_PER_DEVBOX // 10
MAX_LINE_CHARS = 16_384  # a longer line is cut (marked with "...")
MAX_CHARS_PER_COMMAND = 2 * 1024 * 1024  # all its logged lines together
INLINE_CMD_CHARS = 256  # a longer command is stored once, in log_commands


@dataclass(frozen=True)
class LogEntry:
    level: str
    source: str
    timestamp_ms: int
    cmd: str | None = None
    execution_id: str | None = None
    exit_code: int | None = None
    message: str | None = None

    def to_json(self) -> dict:
        return {
            "level": self.level,
            "source": self.source,
            "timestamp_ms": self.timestamp_ms,
            "cmd": self.cmd,
            "cmd_id": self.execution_id,
            "exit_code": self.exit_code,
            "message": self.message,
        }


class LineLog:
    """Lines of one command's stdout and stderr as they arrive (call under the caller's lock)."""

    def __init__(self, source: str, cmd: str, execution_id: str | None):
        self.source, self.cmd, self.execution_id = source, cmd, execution_id
        self.entries: list[LogEntry] = [self._entry("info", "started")]
        self._partial = {"stdout": "", "stderr": ""}
        self._lines = 0
        self._chars = 0
        self._dropped = 0

    def add(self, stream: str, text: str) -> None:
        pending = self._partial[stream] + text
        *lines, partial = pending.split("\n")
        for line in lines:
            self._line(stream, line)
        # A line without end (16 MB of output, no newline) is kept only as long as it is logged.
        self._partial[stream] = partial[: MAX_LINE_CHARS + 1]

    def finish(self, exit_code: int) -> list[LogEntry]:
        for stream, rest in self._partial.items():
            if rest:
                self._line(stream, rest)
        self._partial = {"stdout": "", "stderr": ""}
        if self._dropped:
            self.entries.append(self._entry("warn", f"{self._dropped} more output lines not logged"))
        self.entries.append(self._entry("info" if exit_code == 0 else "error", f"exited with {exit_code}", exit_code))
        return self.entries

    def _line(self, stream: str, line: str) -> None:
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + "..."
        # Sticky: the log is the command's first lines, without holes.
        if self._dropped or self._lines >= MAX_LINES_PER_COMMAND or self._chars + len(line) > MAX_CHARS_PER_COMMAND:
            self._dropped += 1
            return
        self._lines += 1
        self._chars += len(line)
        self.entries.append(self._entry("info" if stream == "stdout" else "error", line))

    def _entry(self, level: str, message: str, exit_code: int | None = None) -> LogEntry:
        return LogEntry(level, self.source, clock.now_ms(), self.cmd, self.execution_id, exit_code, message)


# --- SQL (callers hold the connection) ---------------------------------------------------


def insert(conn: sqlite3.Connection, account: str, devbox_id: str, entries: list[LogEntry]) -> None:
    if not entries:
        return
    refs: dict[str, int] = {}  # long command text -> its log_commands row, once per insert
    for e in entries:
        if e.cmd is not None and len(e.cmd) > INLINE_CMD_CHARS and e.cmd not in refs:
            refs[e.cmd] = conn.execute(
                "INSERT INTO log_commands (account, devbox_id, cmd) VALUES (?, ?, ?) RETURNING id",
                (account, devbox_id, e.cmd),
            ).fetchone()[0]
    conn.executemany(
        "INSERT INTO devbox_logs (account, devbox_id, execution_id, level, source, timestamp_ms, cmd, cmd_ref,"
        " exit_code, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (account, devbox_id, e.execution_id, e.level, e.source, e.timestamp_ms,
             None if e.cmd in refs else e.cmd, refs.get(e.cmd), e.exit_code, e.message)
            for e in entries
        ],
    )
    stored = conn.execute(
        "INSERT INTO devbox_log_counts (account, devbox_id, lines) VALUES (?, ?, ?)"
        " ON CONFLICT (account, devbox_id) DO UPDATE SET lines = lines + excluded.lines RETURNING lines",
        (account, devbox_id, len(entries)),
    ).fetchone()[0]
    if stored > MAX_LINES_PER_DEVBOX + PRUNE_SLACK:
        _prune(conn, account, devbox_id, MAX_LINES_PER_DEVBOX)


def _prune(conn: sqlite3.Connection, account: str, devbox_id: str, keep: int) -> None:
    """Drop all but the newest ``keep`` entries of the devbox."""
    conn.execute(
        "DELETE FROM devbox_logs WHERE account = ? AND devbox_id = ? AND seq <= ("
        " SELECT seq FROM devbox_logs WHERE account = ? AND devbox_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (account, devbox_id, account, devbox_id, keep),
    )
    conn.execute(
        "UPDATE devbox_log_counts SET lines = MIN(lines, ?) WHERE account = ? AND devbox_id = ?",
        (keep, account, devbox_id),
    )
    conn.execute(  # the commands no kept entry refers to
        "DELETE FROM log_commands WHERE account = ? AND devbox_id = ? AND id NOT IN ("
        " SELECT cmd_ref FROM devbox_logs WHERE account = ? AND devbox_id = ? AND cmd_ref IS NOT NULL)",
        (account, devbox_id, account, devbox_id),
    )


def list_for(conn: sqlite3.Connection, account: str, devbox_id: str, execution_id: str | None) -> list[LogEntry]:
    """Stored entries, oldest first: the newest ``MAX_LINES_PER_DEVBOX`` at most."""
    sql = (
        "SELECT l.level, l.source, l.timestamp_ms, COALESCE(l.cmd, c.cmd) AS cmd, l.execution_id, l.exit_code,"
        " l.message FROM devbox_logs l LEFT JOIN log_commands c ON c.id = l.cmd_ref"
        " WHERE l.account = ? AND l.devbox_id = ?"
    )
    params: list = [account, devbox_id]
    if execution_id is not None:
        sql += " AND l.execution_id = ?"
        params.append(execution_id)
    rows = conn.execute(sql + " ORDER BY l.seq DESC LIMIT ?", [*params, MAX_LINES_PER_DEVBOX]).fetchall()
    return [
        LogEntry(r["level"], r["source"], r["timestamp_ms"], r["cmd"], r["execution_id"], r["exit_code"], r["message"])
        for r in reversed(rows)
    ]
