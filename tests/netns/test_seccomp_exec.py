"""seccomp-exec itself (netns/seccomp_exec.c): exit statuses, and --init as a PID namespace's
pid 1 (as in every Docker devbox)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from netns.sandbox import SECCOMP_EXEC

pytestmark = pytest.mark.privileged


def test_exit_statuses_are_a_shells():
    for args in ([SECCOMP_EXEC, "--", "/nonexistent"], [SECCOMP_EXEC, "--init", "--", "/nonexistent"]):
        assert subprocess.run(args, stderr=subprocess.DEVNULL).returncode == 127  # not found
    assert subprocess.run([SECCOMP_EXEC, "--init", "--", "sh", "-c", "exit 5"]).returncode == 5
    assert subprocess.run([SECCOMP_EXEC, "--init", "--", "sh", "-c", "kill -TERM $$"]).returncode == 128 + 15
    assert subprocess.run([SECCOMP_EXEC], stderr=subprocess.DEVNULL).returncode == 126  # usage


def _caught(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("SigCgt:")[1].split()[0], 16)


def test_init_passes_on_a_sigterm_sent_as_soon_as_it_listens():
    """pid 1 of a PID namespace gets only the signals it has a handler for. Once its handler
    is there, a SIGTERM must reach the command even if the command's pid is not known yet
    (held until then, not dropped): 30 starts, each signalled the moment it listens."""
    for _ in range(30):
        outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", SECCOMP_EXEC, "--init", "--", "sleep", "30"])
        try:
            deadline = time.monotonic() + 10  # bounded poll: until pid 1 has its handler
            init = None
            while init is None:
                assert time.monotonic() < deadline, "pid 1 never installed its handler"
                children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
                if children:
                    try:
                        if _caught(int(children[0])) & (1 << (signal.SIGTERM - 1)):
                            init = int(children[0])
                    except (OSError, IndexError):
                        pass
            subprocess.run(["kill", "-TERM", str(init)], check=True)
            assert outer.wait(timeout=5) == 128 + signal.SIGTERM  # sleep ended by the SIGTERM
        finally:
            if outer.poll() is None:
                outer.kill()
                outer.wait()
