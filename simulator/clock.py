"""Wall-clock milliseconds, the unit of every ``*_time_ms`` field."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def later_than(previous_ms: int) -> int:
    """Now, but strictly after ``previous_ms`` (an update must move ``update_time_ms`` forward)."""
    return max(now_ms(), previous_ms + 1)
