"""The interface every devbox runtime implements.

The devbox service drives the lifecycle (provisioning -> initializing -> running -> shutdown,
declared in ``simulator.lifecycle``) and calls these methods; a runtime never changes a
devbox's status itself. All methods are blocking and thread-safe; ``provision`` and
``shutdown`` are called from a worker thread, never from the event loop.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from simulator.policy_model import NetworkPolicy


# The most a file read through the API returns (read_file raises OSError(EFBIG) beyond):
# the bytes are held in memory, and a devbox can make huge sparse files for free.
MAX_READ_BYTES = 64 * 1024 * 1024
# Caps of one devbox, on every runtime: a fork bomb or a memory hog in a devbox hits its own
# cap, not the host's pid space or memory (and with them the simulator). Processes and
# threads at once; memory in bytes (Docker's "2g"): a devbox gets its size's memory, but
# never more than this, whatever its size asks (the host is a laptop or a small VM).
PIDS_LIMIT = 1024
MEMORY_LIMIT = 2 * 1024**3


class RuntimeFailure(Exception):
    """Provisioning or an operation failed; the message is shown as the devbox's failure."""


@dataclass(frozen=True)
class DevboxSpec:
    id: str
    account: str
    policy: NetworkPolicy | None  # None: no policy, unrestricted egress
    environment_variables: dict[str, str] = field(default_factory=dict)
    # A disk captured by ``snapshot_disk`` (of this runtime) to start from; None: an empty home.
    disk: str | None = None
    # CPUs the devbox may use at once (its size's vCPUs, e.g. 0.5); None: no CPU cap.
    cpus: float | None = None
    # Its size's memory in bytes (capped at MEMORY_LIMIT, see memory_limit); None: MEMORY_LIMIT.
    memory: int | None = None
    # True once the devbox was shut down while provisioning: ``provision`` stops (raising
    # ProvisioningCancelled) rather than copy a disk and plug in a network nobody will use.
    cancelled: Callable[[], bool] = lambda: False


def cpu_limit(spec: DevboxSpec, cpus_there: int | None = None) -> float | None:
    """The CPU cap of the devbox: its size's vCPUs, at most the CPUs where it runs
    (``cpus_there``, default this process's; Docker refuses more, "range of CPUs is from 0.01
    to 2.00", and as a quota more is no cap)."""
    if spec.cpus is None:
        return None
    return min(spec.cpus, cpus_there or len(os.sched_getaffinity(0)))


def memory_limit(spec: DevboxSpec) -> int:
    """The memory cap of the devbox: its size's, at most MEMORY_LIMIT."""
    return MEMORY_LIMIT if spec.memory is None else min(spec.memory, MEMORY_LIMIT)


class ProvisioningCancelled(RuntimeFailure):
    """The devbox was shut down while it was being provisioned."""


def stop_if_cancelled(spec: DevboxSpec) -> None:
    if spec.cancelled():
        raise ProvisioningCancelled(f"devbox {spec.id} was shut down while it was being provisioned")


class DevboxRuntime(Protocol):
    name: str  # "netns" or "docker"

    def provision(self, spec: DevboxSpec) -> None:
        """Create the devbox (network + sandbox + policy) and return when it can run commands."""

    def exec(
        self,
        devbox_id: str,
        command: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen:
        """Start ``/bin/sh -c command`` inside the devbox with stdin/stdout/stderr pipes (bytes).

        The process runs in its own process group; killing the group kills the command."""

    def read_file(self, devbox_id: str, path: str) -> bytes:
        """A file's bytes. ``path`` is home-relative, ``~/``-relative or absolute (devbox view).

        Raises ``FileNotFoundError`` / ``IsADirectoryError`` / ``PermissionError`` /
        ``ValueError`` (a path the devbox may not use), which the service maps to 4xx."""

    def write_file(self, devbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file (parents created), owned by the devbox's user."""

    def suspend(self, devbox_id: str) -> None:
        """Freeze every process of the devbox; its network and rules stay as they are."""

    def resume(self, devbox_id: str) -> None:
        """Thaw what ``suspend`` froze."""

    def snapshot_disk(self, devbox_id: str, snapshot_id: str) -> str:
        """Capture the devbox's files; return a reference that ``DevboxSpec.disk`` accepts
        (runtime-specific: a directory for netns, an image for Docker)."""

    def disk_size(self, disk: str) -> int | None:
        """The size in bytes of a disk ``snapshot_disk`` captured (the snapshot's
        ``size_bytes``; what it counts is the runtime's, documented there); None if unknown."""

    def delete_disk(self, disk: str) -> None:
        """Remove what ``snapshot_disk`` captured. Idempotent."""

    def remove_unreferenced_disks(self, referenced: set[str]) -> list[str]:
        """Remove every disk of this runtime (of this simulator instance only) whose reference
        is not in ``referenced``; the references removed. Called at start-up, before any
        snapshot or build can run: a crash between recording a delete and removing the files
        leaves such disks behind."""

    def tunnel_socket(self, devbox_id: str) -> tuple[socket.socket, str]:
        """An unconnected TCP socket from which the devbox's address (returned with it) is
        reachable, for the tunnel proxy; the caller connects and closes it. LookupError when
        the devbox is not on the runtime's network."""

    def shutdown(self, devbox_id: str) -> None:
        """Kill every process and remove everything the devbox had. Idempotent."""

    def close(self) -> None:
        """Release runtime-wide resources (the simulator is stopping). Devboxes stay as stored."""
