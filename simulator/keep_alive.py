"""Keep-alive timers: a running devbox shuts down ``keep_alive_time_seconds`` after its last
activity (``shutdown_reason: keep_alive_timeout``), or, with ``after_idle``, does what that
says after its ``idle_time_seconds`` (``simulator.idle_policy``).

What counts as activity (decided here; the Runloop docs call keep_alive "reset the idle
time"): becoming running, ``keep_alive``, ``resume``, a command starting or ending, stdin sent
to a command, a file read or written through the API. A command that runs silently for longer
than the keep-alive time does not hold the devbox up, as with an idle timer. A suspended
devbox has no timer (it is not running); resume starts a fresh one.

One daemon thread sleeps until the earliest deadline; ``touch`` moves a deadline later. The
clock is injectable, and with ``automatic`` off only direct ``expire_due`` calls expire
anything, so tests drive time by hand and need no sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("devbox_sim.keep_alive")

DEFAULT_SECONDS = 3600.0  # Runloop's default keep_alive_time_seconds


class KeepAliveTimers:
    def __init__(
        self, on_expire: Callable[[str, str], None], clock: Callable[[], float] = time.monotonic, automatic: bool = True
    ):
        """``on_expire(account, devbox_id)`` runs on the timer thread when a deadline passes."""
        self._on_expire = on_expire
        self.clock = clock
        self.automatic = automatic
        self._cond = threading.Condition()
        self._timers: dict[str, tuple[str, float, float]] = {}  # id -> (account, seconds, deadline)
        self._thread: threading.Thread | None = None

    def start(self, account: str, devbox_id: str, seconds: float | None) -> None:
        """Arm (or re-arm) the devbox's timer: it expires ``seconds`` from now."""
        seconds = float(seconds) if seconds else DEFAULT_SECONDS
        with self._cond:
            self._timers[devbox_id] = (account, seconds, self.clock() + seconds)
            self._ensure_thread()
            self._cond.notify()

    def touch(self, devbox_id: str) -> None:
        """Activity: push the deadline to a full period from now (no-op without a timer)."""
        with self._cond:
            timer = self._timers.get(devbox_id)
            if timer is not None:
                account, seconds, _ = timer
                self._timers[devbox_id] = (account, seconds, self.clock() + seconds)

    def stop(self, devbox_id: str) -> None:
        with self._cond:
            self._timers.pop(devbox_id, None)

    def deadline(self, devbox_id: str) -> float | None:
        with self._cond:
            timer = self._timers.get(devbox_id)
            return timer[2] if timer else None

    def expire_due(self) -> list[str]:
        """Expire every timer whose deadline has passed; the devbox ids expired."""
        now = self.clock()
        with self._cond:
            due = [(devbox_id, t[0]) for devbox_id, t in self._timers.items() if t[2] <= now]
            for devbox_id, _ in due:
                del self._timers[devbox_id]
        for devbox_id, account in due:
            try:
                self._on_expire(account, devbox_id)
            except Exception:
                log.exception("keep-alive expiry of %s failed", devbox_id)
        return [devbox_id for devbox_id, _ in due]

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="keep-alive", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = self.clock()
                nearest = min((t[2] for t in self._timers.values()), default=None)
                if not self.automatic:
                    nearest = None  # time is driven by hand (tests): sleep until woken
                if nearest is None or nearest > now:
                    # Woken early by start(); touch() only moves deadlines later, so waking
                    # at the old deadline and finding nothing due is harmless.
                    self._cond.wait(None if nearest is None else nearest - now)
                    continue
            self.expire_due()
