"""Answer cache: the final answer section for (qname, qtype), until its shortest TTL runs out.

Entries are kept per ``scope`` (a client group, e.g. an account; None is a scope of its own):
a cached answer's TTL has run down since it was asked for, so a shared entry would tell one
scope what another looked up, and when.

Why the resolver caches at all: every cache hit still reports its addresses to the firewall
(with the remaining TTL), so a busy devbox keeps its firewall elements fresh without
hammering the upstream.

Negative answers (NXDOMAIN, empty NOERROR) are deliberately NOT cached: the upstream of the
offline world is a local zone that tests and the simulator edit at runtime, and a cached
"does not exist" would hide a name that was just added. Answers whose minimum TTL is 0 are
not cached either - the upstream asked for that.

Entries are evicted least-recently-used when the cache is full; expired entries are dropped
when they are next looked up (or by ``purge``), never served.

An entry holds the records as dnslib RRs (``put``/``get``), as a wire-format answer section
(``put_section``/``lookup``, the resolver's hot path), or both: whichever form is missing is
built from the other the first time it is asked for, once per entry.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from dnslib import RR, DNSRecord

from . import wire
from .patterns import normalise_name

__all__ = ["AnswerCache"]


class _Entry:
    __slots__ = ("records", "section", "stored_at", "expires_at", "key")

    def __init__(self, records, section, stored_at, expires_at, key):
        self.records: tuple[RR, ...] | None = records
        self.section: wire.Section | None = section
        self.stored_at = stored_at
        self.expires_at = expires_at
        self.key = key

    def rrs(self) -> tuple[RR, ...]:
        records = self.records
        if records is None:
            records = self.records = _records_from_section(self.key, self.section)
        return records

    def wire_section(self) -> wire.Section | None:
        section = self.section
        if section is None:
            try:
                section = wire.section_from_records(self.key[0], self.key[1], self.records)
            except Exception:  # a record dnslib cannot pack the way we expect: no wire form
                section = None
            self.section = section
        return section


def _records_from_section(key, section: wire.Section) -> tuple[RR, ...]:
    name_wire = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in key[0].split(".") if label
    ) + b"\0"
    message = (
        wire.HEADER.pack(0, wire.FLAG_QR, 1, section.count, 0, 0)
        + name_wire
        + struct.pack("!HH", key[1], wire.CLASS_IN)
        + section.data
    )
    return tuple(DNSRecord.parse(message).rr)


def _copy_rr(rr: RR, ttl: int) -> RR:
    # Fresh RR objects so neither the caller nor a later reply can mutate cached state;
    # rdata objects are never mutated by this package and are shared.
    return RR(rr.rname, rr.rtype, rr.rclass, ttl, rr.rdata)


# How long an answer is kept at most, and for its smallest TTL (wire.capped_ttl).
MAX_CACHE_SECONDS = wire.MAX_TTL
cache_seconds = wire.capped_ttl


class AnswerCache:
    """Bounded, thread-safe (qname, qtype) -> answer records cache with an injectable clock."""

    def __init__(self, max_entries: int = 4096, *, clock: Callable[[], float] = time.monotonic):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str | None, str, int], _Entry] = OrderedDict()  # (scope, qname, qtype)
        # The server resolves on several worker threads.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, qname: str, qtype: int, records: list[RR], scope: str | None = None) -> bool:
        """Store ``records``; returns whether they were cached (not: empty, TTL 0, size 0)."""
        if not records or self._max == 0:
            return False
        min_ttl = cache_seconds(min(int(rr.ttl) for rr in records))
        if min_ttl <= 0:
            return False
        now = self._clock()
        key = (normalise_name(qname), int(qtype))
        entry = _Entry(tuple(_copy_rr(rr, int(rr.ttl)) for rr in records), None, now, now + min_ttl, key)
        self._store((scope, *key), entry)
        return True

    def put_section(self, qname: str, qtype: int, section: wire.Section, scope: str | None = None) -> bool:
        """Store an answer section (as ``put``; ``qname`` already normalised)."""
        if section.count == 0 or self._max == 0:
            return False
        min_ttl = cache_seconds(section.min_ttl)
        if min_ttl <= 0:
            return False
        now = self._clock()
        key = (qname, int(qtype))
        self._store((scope, *key), _Entry(None, section, now, now + min_ttl, key))
        return True

    def _store(self, key, entry: _Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            # Bounded: at most one eviction per insert because we insert one at a time.
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def lookup(self, qname: str, qtype: int, scope: str | None = None) -> tuple[wire.Section, float] | None:
        """(answer section, seconds since it was stored) - the wire form of ``get``.

        ``qname`` must already be normalised. Use ``Section.aged(elapsed)`` for the bytes.
        """
        if self._max == 0:
            return None
        found = self._live((scope, qname, qtype))
        if found is None:
            return None
        entry, now = found
        section = entry.wire_section()
        if section is None:
            return None
        return section, now - entry.stored_at

    def _live(self, key) -> tuple[_Entry, float] | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry.expires_at:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
        return entry, now

    def get(self, qname: str, qtype: int, scope: str | None = None) -> list[RR] | None:
        """Cached records with TTLs lowered by the time spent in the cache, or None."""
        if self._max == 0:
            return None
        found = self._live((scope, normalise_name(qname), int(qtype)))
        if found is None:
            return None
        entry, now = found
        elapsed = now - entry.stored_at
        # ceil so a record is never reported with TTL 0 while it is still being served,
        # and never with more time than it really has left (rounded up to the second).
        return [_copy_rr(rr, max(1, math.ceil(rr.ttl - elapsed))) for rr in entry.rrs()]

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
