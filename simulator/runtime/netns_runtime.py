"""The netns runtime: a devbox is a network namespace on the data plane plus a sandbox
(PID + mount namespaces, an unprivileged uid, no capabilities) for its processes.

Files live under ``<data-dir>/devboxes/<id>/`` (home and /tmp); the data dir itself is hidden
inside every sandbox, so untrusted code cannot read the store or other devboxes' files.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from netns import namespaces
from netns.sandbox import Sandbox, SandboxError, kill_orphans
from simulator.addresses import Address
from simulator.dataplane import DataPlane
from simulator.runtime.base import (
    MAX_READ_BYTES,
    PIDS_LIMIT,
    DevboxSpec,
    RuntimeFailure,
    cpu_limit,
    memory_limit,
    stop_if_cancelled,
)
from simulator.runtime.devbox_uids import DevboxUids
from simulator.runtime.disk_copy import DiskCopyError, copy_areas, remove_tree, remove_unlisted, tree_size

log = logging.getLogger(__name__)



@dataclass
class _Devbox:
    address: Address
    netns: str
    sandbox: Sandbox


def remove_devbox_dirs(data_dir: Path) -> None:
    """The homes and /tmps of netns devboxes an earlier run left (only Sandbox.destroy removed
    them). Called as a runtime starts, when no devbox is alive: the restart marks every one
    the previous run left as failed."""
    left = sorted((Path(data_dir) / "devboxes").glob("*"))
    for path in left:
        remove_tree(path)
    if left:
        log.warning("removed %d devbox directories a previous run left", len(left))


class NetnsRuntime:
    name = "netns"

    def __init__(self, dataplane: DataPlane, data_dir: Path, secret_paths: tuple[Path, ...] = ()):
        """``secret_paths``: files outside the data dir devboxes must not read (e.g. --api-keys)."""
        self.dataplane = dataplane
        self.data_dir = Path(data_dir).resolve()
        self.hidden_paths = [self.data_dir, *(Path(p).resolve() for p in secret_paths)]
        self.devboxes_dir = self.data_dir / "devboxes"
        self.devboxes_dir.mkdir(parents=True, exist_ok=True)
        # Disk snapshots: <disks>/<snapshot id>/{home,tmp}, root-owned, hidden like the data dir.
        self.disks_dir = self.data_dir / "disks"
        self.disks_dir.mkdir(mode=0o700, exist_ok=True)
        for partial in self.disks_dir.glob("*.partial"):  # copies a crash cut short
            remove_tree(partial)
        self._devboxes: dict[str, _Devbox] = {}
        self._lock = threading.Lock()
        # Each devbox runs as a uid of its own, never reused: devboxes cannot signal or read
        # each other, nor find what an earlier devbox left in the kernel under its uid.
        self.uids = DevboxUids()
        # Copies in flight against what would pull files from under them: a snapshot of a
        # devbox against its teardown ("devbox:<id>"), a restore from a disk against the
        # disk's deletion ("disk:<id>"). Without them a forced shutdown during a snapshot
        # left a "complete" snapshot with a third of the files, and a delete during a restore
        # a devbox with a partial home.
        self._copy_locks: dict[str, threading.Lock] = {}
        # Sandbox names carry the instance, so only this simulator's leftovers are killed.
        self.sandbox_prefix = f"{dataplane.devbox_ns_prefix}-"
        killed = kill_orphans(self.sandbox_prefix)
        if killed:
            log.warning("killed %d orphaned devbox process trees from a previous run", len(killed))
        remove_devbox_dirs(self.data_dir)

    def provision(self, spec: DevboxSpec) -> None:
        address = self.dataplane.allocate()
        netns = self.dataplane.devbox_netns(address)
        sandbox = None
        try:
            uid = self.uids.allocate()
            if spec.disk is not None:
                # Before the sandbox prepares its root: it keeps an existing home as it is.
                with self._copy_lock("disk:" + spec.disk):
                    disk = self._disk_path(spec.disk)
                    if not disk.is_dir():
                        raise RuntimeFailure(f"disk {spec.disk} is gone (deleted meanwhile)")
                    copy_areas(disk, self.devboxes_dir / spec.id, only_owner=0, uid=uid, gid=uid, cancelled=spec.cancelled)
            stop_if_cancelled(spec)
            namespaces.create(netns)
            sandbox = Sandbox(
                name=self.sandbox_prefix + spec.id,
                netns=netns,
                root=self.devboxes_dir / spec.id,
                uid=uid,
                gid=uid,
                nameserver=self.dataplane.gateway,
                hidden_paths=self.hidden_paths,
                pids_max=PIDS_LIMIT,
                memory_max=memory_limit(spec),
                cpus=cpu_limit(spec),
            )
            # The holder sets itself up while the network is plugged in (it runs nothing of the
            # devbox's before provision returns, so no packet can beat the rules).
            sandbox.begin_start()
            stop_if_cancelled(spec)  # not plugged in (with a policy that may be gone by now)
            self.dataplane.connect(spec.id, spec.account, spec.policy, address, netns=netns)
            sandbox.finish_start()
        except Exception as exc:
            self._teardown(spec.id, _Devbox(address, netns, sandbox) if sandbox else None, address, netns)
            if sandbox is None:
                remove_tree(self.devboxes_dir / spec.id)  # a restored disk with no sandbox yet
            raise RuntimeFailure(f"could not provision devbox {spec.id}: {exc}") from exc
        with self._lock:
            self._devboxes[spec.id] = _Devbox(address, netns, sandbox)

    def exec(self, devbox_id: str, command: str, *, env=None, cwd=None) -> subprocess.Popen:
        try:
            return self._get(devbox_id).sandbox.exec(command, env=env, cwd=cwd)
        except (SandboxError, ValueError, OSError) as exc:  # the sandbox is gone, E2BIG...: a clear 4xx, not a 500
            raise RuntimeFailure(f"devbox {devbox_id} cannot run commands: {exc}") from exc

    def read_file(self, devbox_id: str, path: str) -> bytes:
        return self._get(devbox_id).sandbox.read_file(path, max_bytes=MAX_READ_BYTES)

    def write_file(self, devbox_id: str, path: str, data: bytes) -> None:
        self._get(devbox_id).sandbox.write_file(path, data)

    def suspend(self, devbox_id: str) -> None:
        try:
            self._get(devbox_id).sandbox.suspend()
        except (SandboxError, OSError) as exc:  # OSError: a shutdown removed its cgroup or files meanwhile
            raise RuntimeFailure(f"devbox {devbox_id} cannot be suspended: {exc}") from exc

    def resume(self, devbox_id: str) -> None:
        try:
            self._get(devbox_id).sandbox.resume()
        except (SandboxError, OSError) as exc:  # as in suspend
            raise RuntimeFailure(f"devbox {devbox_id} cannot be resumed: {exc}") from exc

    def snapshot_disk(self, devbox_id: str, snapshot_id: str) -> str:
        """Copy the devbox's home and /tmp (see ``disk_copy``: no devbox symlink is followed,
        only the devbox user's own files are taken) to ``<data-dir>/disks/<snapshot_id>``."""
        target = self._disk_path(snapshot_id)
        if target.exists():
            raise RuntimeFailure(f"disk {snapshot_id} already exists")
        # Copied under another name, renamed when complete: a disk is never half there.
        partial = target.with_name(target.name + ".partial")
        with self._copy_lock("devbox:" + devbox_id):  # teardown waits for the copy
            sandbox = self._get(devbox_id).sandbox  # after the lock: not torn down meanwhile
            remove_tree(partial)
            try:
                copy_areas(sandbox.root, partial, only_owner=sandbox.uid, uid=0, gid=0)
                partial.rename(target)
            except (OSError, DiskCopyError) as exc:
                remove_tree(partial)
                raise RuntimeFailure(f"could not snapshot the disk of devbox {devbox_id}: {exc}") from exc
        return snapshot_id

    def disk_size(self, disk: str) -> int:
        """Bytes of the disk's files as stored (``disk_copy.tree_size``: allocated bytes, at
        most each file's length; a sparse file's holes count nothing, as the copy keeps them)."""
        return tree_size(self._disk_path(disk))

    def delete_disk(self, disk: str) -> None:
        with self._copy_lock("disk:" + disk):  # waits for a restore from it
            remove_tree(self._disk_path(disk))
        self._forget_copy_lock("disk:" + disk)

    def _copy_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._copy_locks.setdefault(key, threading.Lock())

    def _forget_copy_lock(self, key: str) -> None:
        with self._lock:
            self._copy_locks.pop(key, None)

    def remove_unreferenced_disks(self, referenced: set[str]) -> list[str]:
        """Every entry of ``<data-dir>/disks/`` not referenced (a data dir is one instance's)."""
        return remove_unlisted(self.disks_dir, referenced)

    def _disk_path(self, disk: str) -> Path:
        # A disk reference is the snapshot's id: a plain name, never a path.
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", disk):
            raise RuntimeFailure(f"not a disk of this runtime: {disk!r}")
        return self.disks_dir / disk

    def sandbox(self, devbox_id: str) -> Sandbox:
        return self._get(devbox_id).sandbox

    def tunnel_socket(self, devbox_id: str) -> tuple[socket.socket, str]:
        return self.dataplane.tunnel_socket(devbox_id)

    def shutdown(self, devbox_id: str) -> None:
        with self._lock:
            devbox = self._devboxes.pop(devbox_id, None)  # no snapshot starts from now on
        if devbox is not None:
            with self._copy_lock("devbox:" + devbox_id):  # one in flight completes first
                self._teardown(devbox_id, devbox, devbox.address, devbox.netns)
            self._forget_copy_lock("devbox:" + devbox_id)

    def alive_ids(self) -> set[str]:
        with self._lock:
            return set(self._devboxes)

    def close(self) -> None:
        """Shut every devbox down and take the data plane with it (devboxes lose egress)."""
        for devbox_id in list(self.alive_ids()):
            self.shutdown(devbox_id)
        self.dataplane.stop()

    def _get(self, devbox_id: str) -> _Devbox:
        with self._lock:
            devbox = self._devboxes.get(devbox_id)
        if devbox is None:
            raise RuntimeFailure(f"devbox {devbox_id} is not running on this runtime")
        return devbox

    def _teardown(self, devbox_id: str, devbox: _Devbox | None, address: Address, netns: str) -> None:
        # Processes first (so nothing talks during teardown), then network, then files.
        if devbox is not None:
            try:
                devbox.sandbox.destroy()
            except Exception:
                log.exception("destroying sandbox of %s", devbox_id)
        try:
            self.dataplane.disconnect(devbox_id)
        except Exception:
            log.exception("disconnecting %s", devbox_id)
        namespaces.delete(netns)
        self.dataplane.release(address)
