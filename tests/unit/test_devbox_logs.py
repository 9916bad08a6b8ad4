"""LineLog: a command's output as log lines, split on newlines whatever the pieces; the
store's retention: the newest lines per devbox."""

from __future__ import annotations

from simulator import devbox_logs
from simulator.db import Database
from simulator.devbox_logs import MAX_LINE_CHARS, LineLog, LogEntry


def test_log_lines_split_on_newlines_across_pieces_and_cut_long_lines():
    lines = LineLog("exec", "cmd", "exn_1")
    lines.add("stdout", "one\ntw")
    lines.add("stderr", "err")
    lines.add("stdout", "o\n" + "x" * (MAX_LINE_CHARS * 3))
    lines.add("stdout", "y\nlast")
    entries = lines.finish(0)
    messages = [(e.level, e.message) for e in entries]
    assert messages[0] == ("info", "started") and messages[-1] == ("info", "exited with 0")
    assert messages[1:-1] == [
        ("info", "one"), ("info", "two"), ("info", "x" * MAX_LINE_CHARS + "..."), ("info", "last"), ("error", "err")
    ]
    assert {e.execution_id for e in entries} == {"exn_1"} and entries[-1].exit_code == 0


def _batch(start: int, count: int, execution_id: str | None = None) -> list[LogEntry]:
    return [LogEntry("info", "exec", 1, "cmd", execution_id, None, f"line {n}") for n in range(start, start + count)]


def test_each_devbox_keeps_its_newest_lines_and_the_store_stays_bounded(monkeypatch):
    monkeypatch.setattr(devbox_logs, "MAX_LINES_PER_DEVBOX", 100)
    monkeypatch.setattr(devbox_logs, "PRUNE_SLACK", 10)
    db = Database(":memory:")
    with db.transaction() as conn:
        devbox_logs.insert(conn, "acct", "dbx_quiet", _batch(0, 5))
        devbox_logs.insert(conn, "other", "dbx_chatty", _batch(0, 3))  # same id, another account
        for start in range(0, 1000, 30):
            devbox_logs.insert(conn, "acct", "dbx_chatty", _batch(start, 30, execution_id=f"exn_{start}"))
            stored = conn.execute("SELECT COUNT(*) FROM devbox_logs WHERE devbox_id = 'dbx_chatty' AND account = 'acct'")
            assert stored.fetchone()[0] <= 110  # cap + slack, whatever the devbox prints
        devbox_logs.insert(conn, "acct", "dbx_chatty", [])
    with db.read() as conn:
        chatty = devbox_logs.list_for(conn, "acct", "dbx_chatty", None)
        assert [e.message for e in chatty] == [f"line {n}" for n in range(920, 1020)]  # the newest 100, in order
        assert [e.message for e in devbox_logs.list_for(conn, "acct", "dbx_chatty", "exn_990")] == [
            f"line {n}" for n in range(990, 1020)
        ]
        assert devbox_logs.list_for(conn, "acct", "dbx_chatty", "exn_0") == []  # pruned
        assert len(devbox_logs.list_for(conn, "acct", "dbx_quiet", None)) == 5  # other devboxes keep theirs
        assert len(devbox_logs.list_for(conn, "other", "dbx_chatty", None)) == 3


def test_the_migration_counts_the_lines_an_older_store_already_has(tmp_path, monkeypatch):
    from simulator import db as db_module

    path = tmp_path / "old.db"
    all_migrations = db_module.MIGRATIONS
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations[:4])  # before retention
    old = Database(path)
    with old.transaction() as conn:  # as that version wrote them
        conn.executemany(
            "INSERT INTO devbox_logs (account, devbox_id, level, source, timestamp_ms, message) VALUES (?, ?, ?, ?, ?, ?)",
            [("acct", "dbx_old", "info", "exec", 1, f"line {n}") for n in range(7)],
        )
    old.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", all_migrations)
    new = Database(path)
    with new.read() as conn:
        row = conn.execute("SELECT lines FROM devbox_log_counts WHERE account = 'acct' AND devbox_id = 'dbx_old'")
        assert row.fetchone()[0] == 7
    new.close()


def test_a_command_logs_at_most_its_first_characters(monkeypatch):
    """Lines are held in memory while the command runs: 10,000 long lines were as much as its
    output again. The log is the first lines that fit, then a count of the rest."""
    monkeypatch.setattr(devbox_logs, "MAX_CHARS_PER_COMMAND", 50)
    lines = LineLog("exec", "cmd", "exn_1")
    lines.add("stdout", "a" * 20 + "\n" + "b" * 20 + "\n" + "c" * 20 + "\n")
    lines.add("stderr", "d\n")  # would fit, but comes after a dropped line: no holes
    messages = [e.message for e in lines.finish(0)]
    assert messages == ["started", "a" * 20, "b" * 20, "2 more output lines not logged", "exited with 0"]


def test_a_long_command_is_stored_once_per_run_not_on_each_line(monkeypatch):
    """A 100 KB command printing 1,000 lines stored 100 MB of copies of itself."""
    monkeypatch.setattr(devbox_logs, "MAX_LINES_PER_DEVBOX", 100)
    monkeypatch.setattr(devbox_logs, "PRUNE_SLACK", 10)
    long_cmd = "cat > f <<'EOF'\n" + "x" * 5000 + "\nEOF"
    db = Database(":memory:")
    lines = LineLog("exec", long_cmd, "exn_long")
    lines.add("stdout", "".join(f"line {i}\n" for i in range(50)))
    short = LineLog("exec", "echo hi", "exn_short")
    short.add("stdout", "hi\n")
    with db.transaction() as conn:
        devbox_logs.insert(conn, "acct", "dbx_1", lines.finish(0))
        devbox_logs.insert(conn, "acct", "dbx_1", short.finish(0))
        (copies,) = conn.execute("SELECT COALESCE(SUM(length(cmd)), 0) FROM devbox_logs").fetchone()
        assert copies == len("echo hi") * 3  # the short one inline (started, a line, exited)
        assert [r[0] for r in conn.execute("SELECT cmd FROM log_commands")] == [long_cmd]
        shown = devbox_logs.list_for(conn, "acct", "dbx_1", "exn_long")
        assert len(shown) == 52 and {e.cmd for e in shown} == {long_cmd}  # every entry shows it
        assert {e.cmd for e in devbox_logs.list_for(conn, "acct", "dbx_1", "exn_short")} == {"echo hi"}
        # Once pruning has dropped every entry of the long command, its text goes too.
        for n in range(3):
            more = LineLog("exec", "seq 40", f"exn_{n}")
            more.add("stdout", "".join(f"{i}\n" for i in range(40)))
            devbox_logs.insert(conn, "acct", "dbx_1", more.finish(0))
        assert conn.execute("SELECT COUNT(*) FROM log_commands").fetchone()[0] == 0
    db.close()
