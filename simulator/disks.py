"""Disks the runtime captured (disk snapshots' and built blueprints' files), as the store
references them: the snapshot and blueprint services go through here to size and delete them,
and a fresh start removes those nothing references.

A disk's reference is stored on its snapshot or blueprint row (``disk``) and cleared in the
same transaction that deletes the row; the files are removed after that commit. A crash in
between leaves files no row references: ``remove_unreferenced`` (run at start-up, before any
snapshot or build can start) removes them.
"""

from __future__ import annotations

import logging
import sqlite3

from simulator.db import Database

log = logging.getLogger("devbox_sim.disks")


def referenced(conn: sqlite3.Connection) -> set[str]:
    """Every disk a stored snapshot or blueprint (any account, any status) still references."""
    rows = conn.execute(
        "SELECT disk FROM disk_snapshots WHERE disk IS NOT NULL UNION SELECT disk FROM blueprints WHERE disk IS NOT NULL"
    ).fetchall()
    return {row["disk"] for row in rows}


def remove_unreferenced(db: Database, runtime) -> list[str]:
    """Remove the runtime's disks that nothing stored references; what was removed."""
    if runtime is None:
        return []
    with db.read() as conn:
        keep = referenced(conn)
    try:
        return runtime.remove_unreferenced_disks(keep)
    except Exception:  # a start-up chore: never a reason not to serve (the next start retries)
        log.exception("runtime %s could not remove unreferenced disks", runtime.name)
        return []


def size(runtime, disk: str) -> int | None:
    """The disk's size in bytes (the snapshot's ``size_bytes``); None if the runtime cannot tell."""
    try:
        return runtime.disk_size(disk)
    except Exception:
        log.warning("runtime %s could not size disk %s", runtime.name, disk, exc_info=True)
        return None


def delete(runtime, disk: str) -> None:
    """Remove a disk whose reference is already gone from the store; failures are logged
    (the next start's ``remove_unreferenced`` retries)."""
    if runtime is None:
        return
    try:
        runtime.delete_disk(disk)
    except Exception:
        log.exception("runtime %s could not delete disk %s", runtime.name, disk)
