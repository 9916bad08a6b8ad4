"""netns/zygote.py: sandbox holders are forked by a small helper process, not the simulator."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from netns.zygote import Spawner


def _output(fd: int, seconds: float = 10) -> str:
    buf = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not r:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                return buf.decode()
            buf += chunk
    finally:
        os.close(fd)
    raise AssertionError(f"child output did not end: {buf!r}")


@pytest.fixture
def spawner():
    s = Spawner()
    try:
        yield s
    finally:
        s.close()


def test_child_is_a_clean_session_leader(spawner):
    script = "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; ps -o sid= -p $$; echo $$; echo $X; trap"
    pid, fd = spawner.spawn(["/bin/sh", "-c", script], {"X": "from-env", "PATH": "/usr/bin:/bin"}, None)
    lines = _output(fd).splitlines()
    assert lines[0].split() == ["0", "1", "2", "3"]  # stdin, output pipe (1, 2), ls's own dir
    assert int(lines[1]) == int(lines[2]) == pid  # its own session
    assert lines[3] == "from-env"  # exactly the given environment
    assert lines[4:] == []  # no inherited ignored signals (trap prints nothing)


def test_setup_errors_are_reported_on_the_output(spawner):
    plan = {"net": "/run/netns/dbxsim-no-such-ns", "hostname": "x", "sources": [], "hides": []}
    _pid, fd = spawner.spawn(["/bin/true"], {}, plan)
    out = _output(fd)
    assert out.startswith("sandbox setup failed:") and "No such file" in out, out


def test_a_dead_zygote_is_replaced(spawner):
    spawner.start()
    first = spawner.pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while spawner.pid is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # bounded poll: the kernel delivers the kill asynchronously
    pid, fd = spawner.spawn(["/bin/sh", "-c", "echo again"], {}, None)
    assert _output(fd) == "again\n"
    assert spawner.pid not in (None, first)


def test_zygote_exits_when_the_simulator_side_closes(spawner):
    spawner.start()
    pid = spawner.pid
    spawner.close()
    assert not os.path.exists(f"/proc/{pid}")  # exited on EOF and was reaped
