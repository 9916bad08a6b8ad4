"""Answer cache: the final answer section for (qname, qtype), until its shortest TTL runs out.

Why the resolver caches at all: every cache hit still reports its addresses to the firewall
(with the remaining TTL), so a busy devbox keeps its firewall elements fresh without
hammering the upstream.

Negative answers (NXDOMAIN, empty NOERROR) are deliberately NOT cached: the upstream of the
offline world is a local zone that tests and the simulator edit at runtime, and a cached
"does not exist" would hide a name that was just added. Answers whose minimum TTL is 0 are
not cached either - the upstream asked for that.

Entries are evicted least-recently-used when the cache is full; expired entries are dropped
when they are next looked up (or by ``purge``), never served.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import RR

from .patterns import normalise_name

__all__ = ["AnswerCache"]


@dataclass(frozen=True, slots=True)
class _Entry:
    records: tuple[RR, ...]
    stored_at: float
    expires_at: float


def _copy_rr(rr: RR, ttl: int) -> RR:
    # Fresh RR objects so neither the caller nor a later reply can mutate cached state;
    # rdata objects are never mutated by this package and are shared.
    return RR(rr.rname, rr.rtype, rr.rclass, ttl, rr.rdata)


class AnswerCache:
    """Bounded, thread-safe (qname, qtype) -> answer records cache with an injectable clock."""

    def __init__(self, max_entries: int = 4096, *, clock: Callable[[], float] = time.monotonic):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        # The server resolves on several worker threads.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, qname: str, qtype: int, records: list[RR]) -> bool:
        """Store ``records``; returns whether they were cached (not: empty, TTL 0, size 0)."""
        if not records or self._max == 0:
            return False
        min_ttl = min(int(rr.ttl) for rr in records)
        if min_ttl <= 0:
            return False
        now = self._clock()
        entry = _Entry(tuple(_copy_rr(rr, int(rr.ttl)) for rr in records), now, now + min_ttl)
        key = (normalise_name(qname), int(qtype))
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            # Bounded: at most one eviction per insert because we insert one at a time.
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return True

    def get(self, qname: str, qtype: int) -> list[RR] | None:
        """Cached records with TTLs lowered by the time spent in the cache, or None."""
        key = (normalise_name(qname), int(qtype))
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry.expires_at:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
        elapsed = now - entry.stored_at
        # ceil so a record is never reported with TTL 0 while it is still being served,
        # and never with more time than it really has left (rounded up to the second).
        return [_copy_rr(rr, max(1, math.ceil(rr.ttl - elapsed))) for rr in entry.records]

    def purge(self) -> int:
        """Drop every expired entry; returns how many were dropped."""
        now = self._clock()
        with self._lock:
            stale = [key for key, entry in self._entries.items() if now >= entry.expires_at]
            for key in stale:
                del self._entries[key]
        return len(stale)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
