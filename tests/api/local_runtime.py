"""TEST DOUBLE: a ``DevboxRuntime`` made of plain subprocesses in a temporary directory.

No isolation whatsoever (no namespaces, no network policy, same user): it exists so the HTTP
contract of devboxes and executions can be tested fast and without root. Each devbox is a
directory with a ``home``; each command is ``/bin/sh -c`` in its own session (so its own
process group, like the real runtimes promise).

Test hooks: ``hold_provisioning()`` blocks ``provision`` until released, and
``fail_provisioning(message)`` makes the next ``provision`` raise ``RuntimeFailure``;
``hold_snapshots()`` and ``fail_snapshot(message)`` do the same for ``snapshot_disk``.
Disk snapshots copy the home with ``simulator.runtime.disk_copy`` (as the current user) to
``<root>/disks/<id>``; their size is ``disk_copy.tree_size``, as on netns.
Files: devbox paths as on the real runtimes (home-relative, ``~/``, absolute under
``/home/user`` or ``/tmp``) map to ``<root>/<id>/home`` and ``<root>/<id>/tmp``; any other
absolute path, or one that leaves those areas, raises ValueError. (Commands see the host's
``/tmp``: only the file endpoints know the mapping.) Suspend/resume send SIGSTOP/SIGCONT to
every command's process group; ``suspended`` lists the devboxes currently stopped.
The server-side test hook (``DEVBOX_SIM_TEST_RUNTIME=tests.api.local_runtime:make_runtime``)
builds one from the simulator settings.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from simulator.runtime.base import MAX_READ_BYTES, DevboxSpec, RuntimeFailure, stop_if_cancelled
from simulator.runtime.disk_copy import DiskCopyError, copy_areas, remove_tree, remove_unlisted, tree_size


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
        self._snapshot_gate: threading.Event | None = None
        self._fail_snapshot: str | None = None
        self.disks = self.root / "disks"
        self.disks.mkdir(exist_ok=True)
        self.provisioned: list[str] = []
        self.shut_down: list[str] = []
        self.suspended: set[str] = set()

    # --- test hooks ------------------------------------------------------------------------

    def hold_provisioning(self) -> threading.Event:
        """Block every ``provision`` until the returned event is set."""
        self._gate = threading.Event()
        return self._gate

    def fail_provisioning(self, message: str) -> None:
        self._fail_next = message

    def hold_snapshots(self) -> threading.Event:
        """Block every ``snapshot_disk`` until the returned event is set."""
        self._snapshot_gate = threading.Event()
        return self._snapshot_gate

    def fail_snapshot(self, message: str) -> None:
        self._fail_snapshot = message

    def alive_ids(self) -> set[str]:
        with self._lock:
            return set(self._devboxes)

    # --- DevboxRuntime ---------------------------------------------------------------------

    def provision(self, spec: DevboxSpec) -> None:
        gate = self._gate
        if gate is not None:
            deadline = time.monotonic() + 60
            # As the real runtimes do between steps: a devbox shut down meanwhile stops here.
            while not gate.wait(0.01) and time.monotonic() < deadline and not spec.cancelled():
                pass
        stop_if_cancelled(spec)
        with self._lock:
            message, self._fail_next = self._fail_next, None
        if message is not None:
            raise RuntimeFailure(message)
        if spec.disk is not None:
            try:
                copy_areas(self._disk_path(spec.disk), self.root / spec.id, only_owner=os.getuid(), uid=os.getuid(),
                           gid=os.getgid(), cancelled=spec.cancelled)
            except (OSError, DiskCopyError) as exc:
                raise RuntimeFailure(f"could not restore disk {spec.disk}: {exc}") from exc
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

    def read_file(self, devbox_id: str, path: str) -> bytes:
        host = self._host_path(devbox_id, path)
        if host.is_file() and host.stat().st_size > MAX_READ_BYTES:  # as the real runtimes
            raise OSError(errno.EFBIG, f"larger than the {MAX_READ_BYTES} bytes a read may return", path)
        return host.read_bytes()

    def write_file(self, devbox_id: str, path: str, data: bytes) -> None:
        host = self._host_path(devbox_id, path)
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a parent is a file: what the real runtime reports
            raise NotADirectoryError(f"a parent of {path!r} is not a directory") from None
        host.write_bytes(data)

    def suspend(self, devbox_id: str) -> None:
        self._signal_all(devbox_id, signal.SIGSTOP)
        with self._lock:
            self.suspended.add(devbox_id)

    def resume(self, devbox_id: str) -> None:
        self._signal_all(devbox_id, signal.SIGCONT)
        with self._lock:
            self.suspended.discard(devbox_id)

    def _signal_all(self, devbox_id: str, sig: int) -> None:
        with self._lock:
            if devbox_id not in self._devboxes:
                raise RuntimeFailure(f"devbox {devbox_id} is not provisioned")
            procs = list(self._procs[devbox_id])
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)  # the group outlives its leader: background children
            except (ProcessLookupError, PermissionError):
                pass

    def _host_path(self, devbox_id: str, path: str) -> Path:
        with self._lock:
            if devbox_id not in self._devboxes:
                raise RuntimeFailure(f"devbox {devbox_id} is not provisioned")
        if path in ("", "~") or path.startswith("~/"):
            path = "/home/user" + path[1:]
        elif not path.startswith("/"):
            path = "/home/user/" + path
        path = posixpath.normpath(path)
        for prefix, area in (("/home/user", "home"), ("/tmp", "tmp")):
            if path == prefix or path.startswith(prefix + "/"):
                base = self.root / devbox_id / area
                base.mkdir(parents=True, exist_ok=True)
                host = base / path[len(prefix) + 1 :]
                if host.resolve() != base.resolve() and base.resolve() not in host.resolve().parents:
                    raise ValueError(f"{path!r} leaves the devbox")
                return host
        raise ValueError(f"{path!r}: only paths under /home/user and /tmp are accessible")

    def snapshot_disk(self, devbox_id: str, snapshot_id: str) -> str:
        gate = self._snapshot_gate
        if gate is not None:
            gate.wait(60)
        with self._lock:
            message, self._fail_snapshot = self._fail_snapshot, None
            alive = devbox_id in self._devboxes
        if message is not None:
            raise RuntimeFailure(message)
        if not alive:
            raise RuntimeFailure(f"devbox {devbox_id} is not provisioned")
        try:
            copy_areas(self.root / devbox_id, self._disk_path(snapshot_id), only_owner=os.getuid(), uid=os.getuid(), gid=os.getgid())
        except (OSError, DiskCopyError) as exc:
            raise RuntimeFailure(f"could not snapshot {devbox_id}: {exc}") from exc
        return snapshot_id

    def disk_size(self, disk: str) -> int:
        return tree_size(self._disk_path(disk))

    def delete_disk(self, disk: str) -> None:
        remove_tree(self._disk_path(disk))

    def remove_unreferenced_disks(self, referenced: set[str]) -> list[str]:
        return remove_unlisted(self.disks, referenced)

    def disk_ids(self) -> set[str]:
        return {p.name for p in self.disks.iterdir()}

    def _disk_path(self, disk: str) -> Path:
        if "/" in disk or disk in ("", ".", ".."):
            raise RuntimeFailure(f"not a disk: {disk!r}")
        return self.disks / disk

    def tunnel_socket(self, devbox_id: str) -> tuple[socket.socket, str]:
        """Commands run on the host here: the devbox's ports are the host's loopback ports."""
        if devbox_id not in self._devboxes:
            raise LookupError(f"devbox {devbox_id} is not running here")
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM), "127.0.0.1"

    def shutdown(self, devbox_id: str) -> None:
        with self._lock:
            self._devboxes.pop(devbox_id, None)
            procs = self._procs.pop(devbox_id, [])
            self.shut_down.append(devbox_id)
            self.suspended.discard(devbox_id)
        for proc in procs:
            # The whole group, even if its leader exited: background children live on in it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.root / devbox_id, ignore_errors=True)

    def close(self) -> None:
        for gate in (self._gate, self._snapshot_gate):
            if gate is not None:
                gate.set()
        for devbox_id in list(self.alive_ids()):
            self.shutdown(devbox_id)


def make_runtime(settings) -> LocalRuntime:
    """Factory for the server's test hook: one runtime under the data directory."""
    return LocalRuntime(Path(settings.data_dir) / "local-runtime")
