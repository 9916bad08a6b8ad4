"""The disk-snapshot service: one method per API action, named like the action.

A snapshot is stored ``in_progress`` in the same transaction that checks its devbox is up;
a worker thread has the runtime copy the devbox's files (``DevboxRuntime.snapshot_disk``)
and then marks it ``complete`` with the disk's size (``DevboxRuntime.disk_size``, shown as
``size_bytes``), or ``error`` with a message. ``snapshot_disk`` holds the
request until then. A devbox with a snapshot in progress cannot be shut down (409). Deleting
keeps the row as ``deleted`` (status answers 200 ``deleted``) and removes the files.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import anyio.to_thread

from simulator import clock, devbox_store, disks, ids, lifecycle, snapshot_store
from simulator.db import Database
from simulator.devbox_model import Devbox
from simulator.devboxes import DevboxService
from simulator.errors import ApiError, Conflict, InvalidRequest, NotFound, found
from simulator.labels import reject_control_characters
from simulator.policy_model import Page
from simulator.runtime.base import RuntimeFailure
from simulator.snapshot_model import COMPLETE, DELETED, ERROR, IN_PROGRESS, DiskSnapshot
from simulator.watch import Watch

log = logging.getLogger("devbox_sim.snapshots")

ID_PREFIX = "snp"
MAX_NAME_LENGTH = 256
MAX_COMMIT_MESSAGE_LENGTH = 1000
# A list's metadata filters: each is a clause of one query, and SQLite refuses an expression
# tree 1,000 deep (a 500 before this bound).
MAX_METADATA_FILTERS = 64
MAX_METADATA_FILTER_VALUES = 1000
SNAPSHOT_HOLD_SECONDS = 590.0  # snapshot_disk: the SDK gives this call 600 s
SNAPSHOTTABLE = (lifecycle.RUNNING, lifecycle.SUSPENDED)


class SnapshotFailed(ApiError):
    status = 400
    code = "snapshot_failed"


def watch_key(snapshot_id: str) -> str:
    return f"snapshot:{snapshot_id}"


class SnapshotService:
    def __init__(self, db: Database, devboxes: DevboxService, watch: Watch | None = None):
        self.db = db
        self.devboxes = devboxes
        self.watch = watch or devboxes.watch
        devboxes.add_shutdown_guard(self._refuse_shutdown_while_snapshotting)

    # --- API actions -------------------------------------------------------------------

    def snapshot_disk_async(
        self, account: str, devbox_id: str, params: dict[str, Any], request_id: str | None = None
    ) -> DiskSnapshot:
        runtime = self.devboxes.require_runtime()
        fields = _check_fields(params)
        with self.db.transaction() as conn:
            if request_id:
                previous = snapshot_store.by_request_id(conn, account, request_id)
                if previous is not None:
                    return previous
            devbox = self.devboxes.retrieve_devbox(account, devbox_id)  # 404
            if devbox.status not in SNAPSHOTTABLE:
                raise InvalidRequest(
                    f"devbox {devbox_id} is {devbox.status}; only a running or suspended devbox can be snapshotted",
                    code="devbox_not_running",
                )
            snapshot = DiskSnapshot(
                id=ids.new_id(ID_PREFIX),
                account=account,
                source_devbox_id=devbox.id,
                status=IN_PROGRESS,
                create_time_ms=clock.now_ms(),
                metadata=fields.get("metadata") or {},
                name=fields.get("name"),
                commit_message=fields.get("commit_message"),
                source_blueprint_id=devbox.blueprint_id,
                network_policy_id=devbox.network_policy_id,
            )
            snapshot_store.insert(conn, snapshot, request_id)
        threading.Thread(
            target=self._capture, args=(runtime, snapshot), name=f"snapshot-{snapshot.id}", daemon=True
        ).start()
        return snapshot

    async def snapshot_disk(
        self, account: str, devbox_id: str, params: dict[str, Any], request_id: str | None = None,
        hold_seconds: float = SNAPSHOT_HOLD_SECONDS,
    ) -> DiskSnapshot:
        """Start a snapshot and hold until it is complete; a failed one is a 400 naming why."""
        snapshot = await anyio.to_thread.run_sync(self.snapshot_disk_async, account, devbox_id, params, request_id)

        def settled() -> DiskSnapshot | None:
            current = self._require(account, snapshot.id)
            return current if current.status != IN_PROGRESS else None

        done = await self.watch.wait(watch_key(snapshot.id), settled, hold_seconds)
        if done is None:
            return await anyio.to_thread.run_sync(self._require, account, snapshot.id)  # still in_progress
        if done.status == ERROR:
            raise SnapshotFailed(f"snapshot {done.id} failed: {done.error_message}")
        return done

    def query_status(self, account: str, snapshot_id: str) -> DiskSnapshot:
        return self._require(account, snapshot_id)

    def list_disk_snapshots(
        self,
        account: str,
        *,
        devbox_id: str | None = None,
        source_blueprint_id: str | None = None,
        metadata: dict[str, str] | None = None,
        metadata_in: dict[str, list[str]] | None = None,
        starting_after: str | None = None,
        limit: int | None = None,
        include_total_count: bool = True,
    ) -> Page:
        _check_metadata_filters(metadata or {}, metadata_in or {})
        with self.db.read() as conn:
            return snapshot_store.list_page(
                conn,
                account,
                devbox_id=devbox_id,
                source_blueprint_id=source_blueprint_id,
                metadata=metadata or {},
                metadata_in=metadata_in or {},
                starting_after=starting_after,
                limit=limit,
                include_total_count=include_total_count,
            )

    def update_disk_snapshot(self, account: str, snapshot_id: str, params: dict[str, Any]) -> DiskSnapshot:
        """Omitted or null fields stay; ``metadata`` given replaces the whole map."""
        fields = _check_fields(params)
        with self.db.transaction() as conn:
            snapshot = self._live(conn, account, snapshot_id)
            snapshot = replace(snapshot, **{k: v for k, v in fields.items() if v is not None})
            snapshot_store.update(conn, snapshot)
        return snapshot

    def delete_disk_snapshot(self, account: str, snapshot_id: str) -> None:
        """Idempotent on a deleted snapshot; 409 while it is still being taken."""
        with self.db.transaction() as conn:
            snapshot = self._require(account, snapshot_id, conn)
            if snapshot.status == DELETED:
                return
            if snapshot.status == IN_PROGRESS:
                raise Conflict(f"snapshot {snapshot_id} is still in progress; delete it once it is complete",
                               code="snapshot_in_progress")
            # A devbox accepted from it may not have begun copying its disk yet (the runtime's
            # copy lock comes later): deleting the disk now would fail that devbox.
            restoring = devbox_store.provisioning_from(conn, account, snapshot_id=snapshot_id)
            if restoring:
                raise Conflict(f"snapshot {snapshot_id} is being restored into {', '.join(restoring)}; delete it once"
                               " they are running", code="snapshot_in_use")
            snapshot_store.update(conn, replace(snapshot, status=DELETED, disk=None))
        self.watch.notify(watch_key(snapshot_id))
        if snapshot.disk is not None:
            disks.delete(self.devboxes.runtime, snapshot.disk)

    # --- helpers for other services and the simulator -----------------------------------

    def require_complete(self, account: str, snapshot_id: str) -> DiskSnapshot:
        """For a devbox created from a snapshot: 400 (not 404) unless it is complete."""
        with self.db.read() as conn:
            snapshot = snapshot_store.get(conn, account, snapshot_id)
        if snapshot is None or snapshot.status == DELETED:
            raise InvalidRequest(f"disk snapshot {snapshot_id!r} does not exist", code="unknown_snapshot")
        if snapshot.status != COMPLETE:
            raise InvalidRequest(f"disk snapshot {snapshot_id} is {snapshot.status}, not complete", code="snapshot_not_ready")
        return snapshot

    def reconcile(self) -> list[str]:
        """After a restart: snapshots cut short become ``error`` (a runtime never leaves half a
        disk under a name it handed out: netns copies under a temporary name)."""
        with self.db.read() as conn:
            cut = snapshot_store.all_in_progress(conn)
        for snapshot in cut:
            self._finish(snapshot, error="the simulator restarted while the snapshot was being taken")
        return [snapshot.id for snapshot in cut]

    # --- internals -----------------------------------------------------------------------

    def _capture(self, runtime, snapshot: DiskSnapshot) -> None:
        what = f"the outcome of snapshot {snapshot.id}"
        try:
            disk = runtime.snapshot_disk(snapshot.source_devbox_id, snapshot.id)
        except Exception as exc:
            if not isinstance(exc, RuntimeFailure):
                log.warning("snapshot %s of %s failed", snapshot.id, snapshot.source_devbox_id, exc_info=True)
            error = str(exc) or type(exc).__name__
            self.devboxes.store_retrier.write(what, lambda: self._finish(snapshot, error=error))
            return
        size_bytes = disks.size(runtime, disk)

        def record() -> None:
            if not self._finish(snapshot, disk=disk, size_bytes=size_bytes):
                disks.delete(runtime, disk)  # it was failed meanwhile (a reconcile): nobody owns these files

        self.devboxes.store_retrier.write(what, record)

    def _finish(
        self, snapshot: DiskSnapshot, *, disk: str | None = None, size_bytes: int | None = None, error: str | None = None
    ) -> bool:
        """Record the outcome of a snapshot still in progress; False if it no longer was."""
        with self.db.transaction() as conn:
            current = snapshot_store.get(conn, snapshot.account, snapshot.id)
            recorded = current is not None and current.status == IN_PROGRESS
            if recorded:
                done = replace(
                    current, status=ERROR if error else COMPLETE, disk=disk, size_bytes=size_bytes, error_message=error
                )
                snapshot_store.update(conn, done)
        self.watch.notify(watch_key(snapshot.id))
        return recorded

    def _refuse_shutdown_while_snapshotting(self, devbox: Devbox) -> None:
        with self.db.read() as conn:
            busy = snapshot_store.in_progress_of_devbox(conn, devbox.account, devbox.id)
        if busy:
            raise Conflict(
                f"devbox {devbox.id} has a disk snapshot in progress ({', '.join(busy)}); shut it down once"
                " the snapshot is complete",
                code="snapshot_in_progress",
            )

    def _require(self, account: str, snapshot_id: str, conn=None) -> DiskSnapshot:
        if conn is None:
            with self.db.read() as conn:
                return self._require(account, snapshot_id, conn)
        return found(snapshot_store.get(conn, account, snapshot_id), "disk snapshot", snapshot_id)

    def _live(self, conn, account: str, snapshot_id: str) -> DiskSnapshot:
        snapshot = self._require(account, snapshot_id, conn)
        if snapshot.status == DELETED:
            raise NotFound(f"disk snapshot {snapshot_id!r} was deleted")
        return snapshot


def _check_fields(params: dict[str, Any]) -> dict[str, Any]:
    name, message = params.get("name"), params.get("commit_message")
    if name is not None and len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"name is longer than {MAX_NAME_LENGTH} characters")
    if name is not None:
        reject_control_characters("name", name)
    if message is not None and len(message) > MAX_COMMIT_MESSAGE_LENGTH:
        raise InvalidRequest(f"commit_message is longer than {MAX_COMMIT_MESSAGE_LENGTH} characters")
    metadata = params.get("metadata")
    return {"name": name, "commit_message": message, "metadata": dict(metadata) if metadata is not None else None}


def _check_metadata_filters(metadata: dict[str, str], metadata_in: dict[str, list[str]]) -> None:
    if len(metadata) + len(metadata_in) > MAX_METADATA_FILTERS:
        raise InvalidRequest(f"at most {MAX_METADATA_FILTERS} metadata filters, got {len(metadata) + len(metadata_in)}")
    values = sum(len(v) for v in metadata_in.values())
    if values > MAX_METADATA_FILTER_VALUES:
        raise InvalidRequest(f"at most {MAX_METADATA_FILTER_VALUES} metadata[KEY][in] values in all, got {values}")
