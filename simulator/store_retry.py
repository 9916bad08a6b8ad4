"""Outcomes the store could not take when they happened, written again until it can.

A command that ends, a snapshot or a build that finishes is recorded by a background thread;
if that write fails (the data dir's file system is full, say), dropping it would leave the
object ``running`` or ``in_progress`` in the store for good: waits that never end, a devbox
that cannot be shut down. Instead the write is retried every ``RETRY_SECONDS`` by one thread
until it succeeds or the simulator stops (the next start then reconciles what is left, as
after a crash). Callers keep answering from memory meanwhile where they can.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


class StoreRetrier:
    def __init__(self, stopping: threading.Event):
        self._stopping = stopping
        self._lock = threading.Lock()
        self._pending: dict[str, Callable[[], None]] = {}
        self._thread: threading.Thread | None = None

    def write(self, what: str, write: Callable[[], None]) -> bool:
        """Run ``write`` now; if it raises, log it once and retry it in the background.
        True when it succeeded now. ``what`` names it (an object id): one pending write each."""
        try:
            write()
            return True
        except Exception:
            log.exception("could not store %s; retrying every %g s", what, RETRY_SECONDS)
        with self._lock:
            self._pending[what] = write
            if self._thread is None:
                self._thread = threading.Thread(target=self._retry, name="store-retry", daemon=True)
                self._thread.start()
        return False

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def _retry(self) -> None:
        while True:
            stopping = self._stopping.wait(RETRY_SECONDS)
            with self._lock:
                pending = list(self._pending.items())
            for what, write in pending:
                try:
                    write()
                except Exception as exc:
                    log.debug("storing %s failed again: %r", what, exc)
                    continue
                log.info("stored %s at last", what)
                with self._lock:
                    self._pending.pop(what, None)
            with self._lock:
                if not self._pending or stopping:
                    if self._pending:
                        log.warning("not stored before the stop (the next start reconciles them): %s",
                                    ", ".join(self._pending))
                    self._thread = None
                    return
