"""The uid each netns devbox runs as: never the same one twice on this machine.

A devbox's uid is what keeps it from signalling or reading another, but some kernel state is
kept per uid and outlives every process of it: above all the user and persistent keyrings
(``add_key(2)``/``keyctl(2)``; a user keyring stays as long as the user namespace, i.e. until
reboot). A uid handed to a later devbox, maybe of another account, would hand it those keys.
So uids are not reused: one counter for the whole machine (``COUNTER_FILE``, shared under
``flock`` by every simulator, whatever its data dir, and kept when a data dir is removed)
walks through ``SPAN`` uids from ``UID_BASE``; only after that many devboxes does a uid come
round again. The range lies above systemd's container uids (``0x80000``-``0x6FFEFFFF``) and
the usual ``/etc/subuid`` ranges, and below 2**31 (some tools still read uids as signed).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

UID_BASE = 0x70000000
SPAN = (1 << 31) - 1 - UID_BASE  # 268,435,455 devboxes before a uid repeats
# Not in any data dir (a data dir may be removed, and the service keeps its own under
# /var/lib/devbox-sim); the 0700 directory keeps it from devboxes.
COUNTER_FILE = Path("/var/lib/devbox-sim-uids/next")


class DevboxUids:
    def __init__(self, counter_file: Path = COUNTER_FILE):
        self._file = Path(counter_file)
        self._file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def allocate(self) -> int:
        """A uid no devbox on this machine had before (until ``SPAN`` devboxes later)."""
        self._create_once()
        fd = os.open(self._file, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # other simulators on this machine wait their turn
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            try:
                current = int(text)  # empty: emptied since it was made (by hand): damaged
                if current < 0:
                    raise ValueError("negative")
            except ValueError:
                # Damaged: start from a random place rather than from 0 (reuse is then a
                # one in SPAN chance per devbox, not a certainty).
                current = secrets.randbelow(SPAN)
                log.warning("%s was unreadable (%r); devbox uids continue from a random point", self._file, text[:20])
            # Written before the uid is used: a crash may skip uids, never repeat one (a
            # machine crash may lose the write, but the kernel's keyrings go with it). Written
            # over the old value, never truncated first: a kill between a truncation and the
            # write left an empty file, read as 0, and uids were handed out again. The count
            # only grows, so the new text covers the old; a shorter one (after a random
            # restart) is cut to its length after it was written.
            line = f"{current + 1}\n".encode()
            os.pwrite(fd, line, 0)
            if os.fstat(fd).st_size > len(line):
                os.ftruncate(fd, len(line))
        finally:
            os.close(fd)  # releases the lock
        return UID_BASE + current % SPAN

    def _create_once(self) -> None:
        """The counter at 0 on this machine's first devbox, made whole or not at all: a file
        made empty and written after would look damaged to another simulator between the two."""
        if self._file.exists():
            return
        staged = self._file.with_name(f".{self._file.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"0\n")
        finally:
            os.close(fd)
        try:
            os.link(staged, self._file)  # fails if another one came first: its counter stands
        except FileExistsError:
            pass
        finally:
            os.unlink(staged)
