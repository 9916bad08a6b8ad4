"""Command starts against freezes of one container (``docker pause``: a suspend).

runc starts a command in a container by putting a ``runc init`` process into the container's
cgroup; if the cgroup is frozen meanwhile, that process hangs there and so does the start, with
docker's lock on the container: a pause that overlapped a start left the container paused for
good (seen with a snapshot's paused commit), and the next simulator's removal of it hung too.
So a freeze waits for the starts under way, and starts wait for a freeze waiting or under
way (after which docker refuses them: the container is paused); a waiting freeze goes first,
or a steady stream of starts would hold a suspend off for ever.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FreezeGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._starting = 0
        self._freezes_waiting = 0
        self._freezing = False

    @contextmanager
    def starting(self) -> Iterator[None]:
        """Held while a command starts (until its process runs)."""
        with self._cond:
            while self._freezing or self._freezes_waiting:
                self._cond.wait()
            self._starting += 1
        try:
            yield
        finally:
            with self._cond:
                self._starting -= 1
                self._cond.notify_all()

    @contextmanager
    def freezing(self) -> Iterator[None]:
        """Held while the container is being frozen, once no start is under way."""
        with self._cond:
            self._freezes_waiting += 1
            try:
                while self._freezing or self._starting:
                    self._cond.wait()
            finally:
                self._freezes_waiting -= 1
            self._freezing = True
        try:
            yield
        finally:
            with self._cond:
                self._freezing = False
                self._cond.notify_all()
