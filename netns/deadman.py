"""Fail closed when the simulator dies: a watchdog that turns the router's forwarding off.

The kernel state outlives a process killed with SIGKILL (or one that crashed): the router
namespace, its rules, the devboxes' namespaces and processes. The rules are closed (no new
DNS answers, learned addresses expire), but what a policy allowed - allow_all above all -
stays open until the next start cleans up. So the data plane starts this watchdog with the
router: a separate process that blocks reading a pipe whose only writer is the simulator.
The kernel closes the pipe however the simulator ends; the watchdog then writes
``net.ipv4.ip_forward=0`` in the router namespace (no devbox traffic is routed any more:
out, to the world or the host, or back) and exits. Signals do not stop it early (a group
SIGTERM from a service manager reaches it with the simulator): only the pipe does.

A clean stop removes the router namespace; the watchdog then finds nothing to do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


class Deadman:
    """The watchdog for one router namespace (``start`` it once the namespace exists)."""

    def __init__(self, router_ns: str):
        self.router_ns = router_ns
        self._write: int | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> Deadman:
        read, write = os.pipe()  # not inherited by other children: only we hold the write end
        try:
            boot = f"import sys; sys.path.insert(0, {str(_ROOT)!r}); from netns.deadman import main; main({self.router_ns!r})"
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", boot],
                stdin=read, stdout=subprocess.DEVNULL, cwd="/",
                start_new_session=True,  # not in the terminal's group: a Ctrl-C is the simulator's
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._write = write
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Let the watchdog go (it acts as for a death: call this once the router is gone)."""
        if self._write is not None:
            os.close(self._write)
            self._write = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def main(router_ns: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while os.read(0, 4096):  # nobody writes: this returns b"" when the simulator is gone
        pass
    from netns import namespaces, sysctl

    try:
        if namespaces.exists(router_ns):
            sysctl.write(router_ns, "net.ipv4.ip_forward", 0)
    except Exception as exc:  # gone meanwhile (a clean stop): nothing left to close
        print(f"deadman: {router_ns}: {exc!r}", file=sys.stderr)
