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

Each scope is its own least-recently-used list with its own bound (``per_scope``): one scope's
lookups never evict another's entries. A shared list let an account fill the cache with its
own names and time its hits (0.08 ms against 0.4 ms uncached) to watch another account's
lookups push them out. The whole cache is bounded too (``max_entries``, memory): when it is
full a scope makes room in its own list only, and one with no entries caches nothing until
there is room. (So once the whole cache is full, which takes max_entries / per_scope full
scopes, a new scope learns that from its own misses: any shared bound tells something.
The owner sizes it so that does not happen; ``drop_scope`` frees a scope that is done.)
Expired entries are dropped when they are next looked up (or by ``purge``), never served.

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

    def __init__(
        self,
        max_entries: int = 4096,
        *,
        per_scope: int | None = None,
        explicit_scopes: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``max_entries`` bounds the whole cache, ``per_scope`` (default: the same) each scope.
        ``explicit_scopes``: only scopes opened (``open_scope``) and not dropped since take
        entries: an answer a departed client was waiting for does not bring its scope back."""
        if max_entries < 0 or (per_scope is not None and per_scope < 0):
            raise ValueError("max_entries and per_scope must be >= 0")
        self._max = max_entries
        self._per_scope = max_entries if per_scope is None else min(per_scope, max_entries)
        self._clock = clock
        self._scopes: dict[str | None, OrderedDict[tuple[str, int], _Entry]] = {}  # (qname, qtype)
        self._count = 0
        self._next_purge = float("-inf")
        self._open: set[str | None] | None = set() if explicit_scopes else None
        # The server resolves on several worker threads.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def scope_len(self, scope: str | None) -> int:
        with self._lock:
            return len(self._scopes.get(scope, ()))

    def put(self, qname: str, qtype: int, records: list[RR], scope: str | None = None) -> bool:
        """Store ``records``; returns whether they were cached (not: empty, TTL 0, size 0)."""
        if not records or self._per_scope == 0:
            return False
        min_ttl = cache_seconds(min(int(rr.ttl) for rr in records))
        if min_ttl <= 0:
            return False
        now = self._clock()
        key = (normalise_name(qname), int(qtype))
        entry = _Entry(tuple(_copy_rr(rr, int(rr.ttl)) for rr in records), None, now, now + min_ttl, key)
        return self._store(scope, key, entry)

    def put_section(self, qname: str, qtype: int, section: wire.Section, scope: str | None = None) -> bool:
        """Store an answer section (as ``put``; ``qname`` already normalised)."""
        if section.count == 0 or self._per_scope == 0:
            return False
        min_ttl = cache_seconds(section.min_ttl)
        if min_ttl <= 0:
            return False
        now = self._clock()
        key = (qname, int(qtype))
        return self._store(scope, key, _Entry(None, section, now, now + min_ttl, key))

    def _store(self, scope: str | None, key: tuple[str, int], entry: _Entry) -> bool:
        with self._lock:
            entries = self._scopes.get(scope)
            if entries is not None and key in entries:  # a newer answer for the same question
                entries[key] = entry
                entries.move_to_end(key)
                return True
            if entries is None and self._open is not None and scope not in self._open:
                return False  # dropped (its last client left) or never opened
            now = entry.stored_at
            if self._count >= self._max and not entries and not self._next_purge - 1.0 <= now < self._next_purge:
                # Expired entries hold room until looked up. Only when that is what refuses
                # this insert (a full list gives up its own oldest instead), at most once a
                # second: the scan holds the lock every lookup waits for (3-6 ms when full).
                self._next_purge = now + 1.0
                self._purge_locked(now)
            if self._count >= self._max or (entries is not None and len(entries) >= self._per_scope):
                if not entries:
                    return False  # full, and nothing of its own to give up
                entries.popitem(last=False)  # its own least recently used, never another's
                self._count -= 1
            if entries is None:
                entries = self._scopes[scope] = OrderedDict()
            entries[key] = entry
            self._count += 1
            return True

    def open_scope(self, scope: str | None) -> None:
        """With ``explicit_scopes``: ``scope`` may take entries (its first client came)."""
        with self._lock:
            if self._open is not None:
                self._open.add(scope)

    def drop_scope(self, scope: str | None) -> int:
        """Forget every entry of ``scope`` (its last client left); how many there were. With
        ``explicit_scopes`` it takes no more until opened again."""
        with self._lock:
            if self._open is not None:
                self._open.discard(scope)
            entries = self._scopes.pop(scope, None)
            dropped = len(entries) if entries else 0
            self._count -= dropped
        return dropped

    def lookup(self, qname: str, qtype: int, scope: str | None = None) -> tuple[wire.Section, float] | None:
        """(answer section, seconds since it was stored) - the wire form of ``get``.

        ``qname`` must already be normalised. Use ``Section.aged(elapsed)`` for the bytes.
        """
        if self._per_scope == 0:
            return None
        found = self._live(scope, (qname, qtype))
        if found is None:
            return None
        entry, now = found
        section = entry.wire_section()
        if section is None:
            return None
        return section, now - entry.stored_at

    def _live(self, scope: str | None, key: tuple[str, int]) -> tuple[_Entry, float] | None:
        now = self._clock()
        with self._lock:
            entries = self._scopes.get(scope)
            entry = None if entries is None else entries.get(key)
            if entry is None:
                return None
            if now >= entry.expires_at:
                self._drop(scope, entries, key)
                return None
            entries.move_to_end(key)
        return entry, now

    def _drop(self, scope: str | None, entries: OrderedDict, key: tuple[str, int]) -> None:
        del entries[key]
        self._count -= 1
        if not entries:
            del self._scopes[scope]

    def get(self, qname: str, qtype: int, scope: str | None = None) -> list[RR] | None:
        """Cached records with TTLs lowered by the time spent in the cache, or None."""
        if self._per_scope == 0:
            return None
        found = self._live(scope, (normalise_name(qname), int(qtype)))
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
            return self._purge_locked(now)

    def _purge_locked(self, now: float) -> int:
        dropped = 0
        for scope, entries in list(self._scopes.items()):
            for key in [key for key, entry in entries.items() if now >= entry.expires_at]:
                self._drop(scope, entries, key)
                dropped += 1
        return dropped

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()
            self._count = 0
