"""TEST DOUBLE: a ``DevboxRuntime`` made of plain subprocesses in a temporary directory.

No isolation whatsoever (no namespaces, no network policy, same user): it exists so the HTTP
contract of devboxes and executions can be tested fast and without root. Each devbox is a
directory with a ``home``; each command is ``/bin/sh -c`` in its own session (so its own
process group, like the real runtimes promise).

Test hooks: ``hold_provisioning()`` blocks ``provision`` until released, and
``fail_provisioning(message)`` makes the next ``provision`` raise ``RuntimeFailure``.
The server-side test hook (``DEVBOX_SIM_TEST_RUNTIME=tests.api.local_runtime:make_runtime``)
builds one from the simulator settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from simulator.runtime.base import DevboxSpec, RuntimeFailure


class LocalRuntime:
    name = "local-test-double"

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="devbox-sim-local-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._devboxes: dict[str, dict[str, str]] = {}  # id -> environment
        self._procs: dict[str, list[subprocess.Popen]] = {}
        self._gate: threading.Event | None = None
        self._fail_next: str | None = None
        self.provisioned: list[str] = []
        self.shut_down: list[str] = []

    # --- test hooks ------------------------------------------------------------------------

    def hold_provisioning(self) -> threading.Event:
        """Block every ``provision`` until the returned event is set."""
        self._gate = threading.Event()
        return self._gate

    def fail_provisioning(self, message: str) -> None:
        self._fail_next = message

    def alive_ids(self) -> set[str]:
        with self._lock:
            return set(self._devboxes)

    # --- DevboxRuntime ---------------------------------------------------------------------

    def provision(self, spec: DevboxSpec) -> None:
        gate = self._gate
        if gate is not None:
            gate.wait(60)
        with self._lock:
            message, self._fail_next = self._fail_next, None
        if message is not None:
            raise RuntimeFailure(message)
        (self.root / spec.id / "home").mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._devboxes[spec.id] = dict(spec.environment_variables)
            self._procs[spec.id] = []
            self.provisioned.append(spec.id)

    def exec(self, devbox_id: str, command: str, *, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen:
        with self._lock:
            if devbox_id not in self._devboxes:
                raise RuntimeFailure(f"devbox {devbox_id} is not provisioned")
            home = self.root / devbox_id / "home"
            environment = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "LANG": "C.UTF-8",
                **self._devboxes[devbox_id],
                **(env or {}),
            }
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=cwd or home,
                env=environment,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self._procs[devbox_id].append(proc)
            return proc

    def shutdown(self, devbox_id: str) -> None:
        with self._lock:
            self._devboxes.pop(devbox_id, None)
            procs = self._procs.pop(devbox_id, [])
            self.shut_down.append(devbox_id)
        for proc in procs:
            # The whole group, even if its leader exited: background children live on in it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.root / devbox_id, ignore_errors=True)

    def close(self) -> None:
        if self._gate is not None:
            self._gate.set()
        for devbox_id in list(self.alive_ids()):
            self.shutdown(devbox_id)


def make_runtime(settings) -> LocalRuntime:
    """Factory for the server's test hook: one runtime under the data directory."""
    return LocalRuntime(Path(settings.data_dir) / "local-runtime")
