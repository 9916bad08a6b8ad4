"""The uid each netns devbox runs as: never the same one twice on this machine.

A devbox's uid is what keeps it from signalling or reading another, but some kernel state is
kept per uid and outlives every process of it: above all the user and persistent keyrings
(``add_key(2)``/``keyctl(2)``; a user keyring stays as long as the user namespace, i.e. until
reboot). A uid handed to a later devbox, maybe of another account, would hand it those keys.
So uids are not reused: each data dir (simulator instance) has its own block of
``BLOCK_SIZE`` uids, picked by a hash of the instance, and a counter kept in the data dir
walks through it across restarts. Only after ``BLOCK_SIZE`` devboxes of one data dir does a
uid come round again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

UID_BASE = 200_000
BLOCK_SIZE = 1 << 20  # devboxes per data dir before a uid repeats
BLOCKS = 1 << 10  # instance blocks; all below 2**31 (some tools still read uids as signed)


class DevboxUids:
    def __init__(self, counter_file: Path, instance: str):
        block = int(hashlib.sha256(instance.encode()).hexdigest(), 16) % BLOCKS
        self.first = UID_BASE + block * BLOCK_SIZE
        self._file = Path(counter_file)
        self._lock = threading.Lock()
        try:
            self._next = int(self._file.read_text().strip())
        except (FileNotFoundError, ValueError):
            self._next = 0

    def allocate(self) -> int:
        """A uid no devbox of this data dir had before (until the block wraps around)."""
        with self._lock:
            uid = self.first + self._next % BLOCK_SIZE
            self._next += 1
            # Written before the uid is used: a crash may skip uids, never repeat one. (A
            # machine crash loses the write, and the kernel's keyrings with it.)
            partial = self._file.with_name(self._file.name + ".partial")
            partial.write_text(f"{self._next}\n")
            os.replace(partial, self._file)
        return uid
