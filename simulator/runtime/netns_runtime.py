"""The netns runtime: a devbox is a network namespace on the data plane plus a sandbox
(PID + mount namespaces, an unprivileged uid, no capabilities) for its processes.

Files live under ``<data-dir>/devboxes/<id>/`` (home and /tmp); the data dir itself is hidden
inside every sandbox, so untrusted code cannot read the store or other devboxes' files.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from netns import namespaces
from netns.sandbox import Sandbox, SandboxError, kill_orphans
from simulator.addresses import Address
from simulator.dataplane import DataPlane
from simulator.runtime.base import DevboxSpec, RuntimeFailure

log = logging.getLogger(__name__)

# Each devbox runs as its own uid (base + address slot): devboxes cannot signal or read each other.
DEVBOX_UID_BASE = 200_000


@dataclass
class _Devbox:
    address: Address
    netns: str
    sandbox: Sandbox


class NetnsRuntime:
    name = "netns"

    def __init__(self, dataplane: DataPlane, data_dir: Path, secret_paths: tuple[Path, ...] = ()):
        """``secret_paths``: files outside the data dir devboxes must not read (e.g. --api-keys)."""
        self.dataplane = dataplane
        self.data_dir = Path(data_dir).resolve()
        self.hidden_paths = [self.data_dir, *(Path(p).resolve() for p in secret_paths)]
        self.devboxes_dir = self.data_dir / "devboxes"
        self.devboxes_dir.mkdir(parents=True, exist_ok=True)
        self._devboxes: dict[str, _Devbox] = {}
        self._lock = threading.Lock()
        # Sandbox names carry the instance, so only this simulator's leftovers are killed.
        self.sandbox_prefix = f"{dataplane.devbox_ns_prefix}-"
        killed = kill_orphans(self.sandbox_prefix)
        if killed:
            log.warning("killed %d orphaned devbox process trees from a previous run", len(killed))

    def provision(self, spec: DevboxSpec) -> None:
        address = self.dataplane.allocate()
        netns = self.dataplane.devbox_netns(address)
        sandbox = None
        try:
            namespaces.create(netns)
            self.dataplane.connect(spec.id, spec.account, spec.policy, address, netns=netns)
            uid = DEVBOX_UID_BASE + address.slot
            sandbox = Sandbox(
                name=self.sandbox_prefix + spec.id,
                netns=netns,
                root=self.devboxes_dir / spec.id,
                uid=uid,
                gid=uid,
                nameserver=self.dataplane.gateway,
                hidden_paths=self.hidden_paths,
            )
            sandbox.start()
        except Exception as exc:
            self._teardown(spec.id, _Devbox(address, netns, sandbox) if sandbox else None, address, netns)
            raise RuntimeFailure(f"could not provision devbox {spec.id}: {exc}") from exc
        with self._lock:
            self._devboxes[spec.id] = _Devbox(address, netns, sandbox)

    def exec(self, devbox_id: str, command: str, *, env=None, cwd=None) -> subprocess.Popen:
        try:
            return self._get(devbox_id).sandbox.exec(command, env=env, cwd=cwd)
        except (SandboxError, ValueError) as exc:  # e.g. the sandbox is gone: a clear 4xx, not a 500
            raise RuntimeFailure(f"devbox {devbox_id} cannot run commands: {exc}") from exc

    def read_file(self, devbox_id: str, path: str) -> bytes:
        return self._get(devbox_id).sandbox.read_file(path)

    def write_file(self, devbox_id: str, path: str, data: bytes) -> None:
        self._get(devbox_id).sandbox.write_file(path, data)

    def suspend(self, devbox_id: str) -> None:
        try:
            self._get(devbox_id).sandbox.suspend()
        except SandboxError as exc:
            raise RuntimeFailure(f"devbox {devbox_id} cannot be suspended: {exc}") from exc

    def resume(self, devbox_id: str) -> None:
        try:
            self._get(devbox_id).sandbox.resume()
        except SandboxError as exc:
            raise RuntimeFailure(f"devbox {devbox_id} cannot be resumed: {exc}") from exc

    def sandbox(self, devbox_id: str) -> Sandbox:
        return self._get(devbox_id).sandbox

    def shutdown(self, devbox_id: str) -> None:
        with self._lock:
            devbox = self._devboxes.pop(devbox_id, None)
        if devbox is not None:
            self._teardown(devbox_id, devbox, devbox.address, devbox.netns)

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
