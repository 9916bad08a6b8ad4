"""Wake-ups for long polls (``wait_for_status``), without polling and without holding threads.

Changes happen on worker threads (provisioning, command readers) or in request threads;
waiters are coroutines on the event loop. ``notify(key)`` wakes every coroutine waiting on
``key`` through ``loop.call_soon_threadsafe``, so a held request costs no thread: fifty
concurrent waits leave the thread pool free for other requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")


class Watch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def notify(self, key: str) -> None:
        """Wake the waiters of ``key``; safe from any thread."""
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # that loop is closed; its waiter is gone with it

    def waiting(self, key: str) -> int:
        """How many coroutines wait on ``key`` (tests use it to know a request is held)."""
        with self._lock:
            return len(self._waiters.get(key, ()))

    async def wait(self, key: str, check: Callable[[], T | None], timeout: float | None) -> T | None:
        """Return ``check()`` once it is not None, re-checking after each notify of ``key``;
        None when ``timeout`` seconds pass first (``None`` waits without limit).

        ``check`` runs in a worker thread (it reads the store, whose lock a writer may hold).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        entry = (loop, asyncio.Event())
        with self._lock:
            self._waiters.setdefault(key, set()).add(entry)
        try:
            while True:
                # Clear before checking: a notify that lands after the check sets it again.
                entry[1].clear()
                result = await anyio.to_thread.run_sync(check)
                if result is not None:
                    return result
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(entry[1].wait(), remaining)
                except asyncio.TimeoutError:
                    pass  # one last check above, then None
        finally:
            with self._lock:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[key]
