"""LineLog: a command's output as log lines, split on newlines whatever the pieces."""

from __future__ import annotations

from simulator.devbox_logs import MAX_LINE_CHARS, LineLog


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
