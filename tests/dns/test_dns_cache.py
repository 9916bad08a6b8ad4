"""AnswerCache with a fake clock: expiry, TTL decrement, bounds, what is not cached."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RR, A, CNAME

from dns.cache import MAX_CACHE_SECONDS, AnswerCache, cache_seconds


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def a(name: str, ip: str, ttl: int) -> RR:
    return RR(name, QTYPE.A, rdata=A(ip), ttl=ttl)


def test_hit_decrements_ttls_and_expires_at_min_ttl():
    clock = FakeClock()
    cache = AnswerCache(clock=clock)
    records = [RR("www.x.com", QTYPE.CNAME, rdata=CNAME("x.com"), ttl=300), a("x.com", "10.0.0.1", 60)]
    assert cache.put("www.x.com", QTYPE.A, records)

    got = cache.get("www.x.com", QTYPE.A)
    assert [rr.ttl for rr in got] == [300, 60]

    clock.now += 20.5
    got = cache.get("WWW.X.COM.", QTYPE.A)  # key is normalised
    assert [rr.ttl for rr in got] == [280, 40]  # rounded up, never 0 while served
    assert str(got[1].rdata) == "10.0.0.1"

    clock.now += 39.4
    assert [rr.ttl for rr in cache.get("www.x.com", QTYPE.A)] == [241, 1]

    clock.now += 0.1  # exactly 60 s after storing: the shortest TTL has run out
    assert cache.get("www.x.com", QTYPE.A) is None
    assert len(cache) == 0


def test_key_includes_qtype():
    cache = AnswerCache(clock=FakeClock())
    cache.put("x.com", QTYPE.A, [a("x.com", "10.0.0.1", 60)])
    assert cache.get("x.com", QTYPE.AAAA) is None
    assert cache.get("y.com", QTYPE.A) is None


def test_returned_records_are_copies():
    cache = AnswerCache(clock=FakeClock())
    original = [a("x.com", "10.0.0.1", 60)]
    cache.put("x.com", QTYPE.A, original)
    original[0].ttl = 1
    got = cache.get("x.com", QTYPE.A)
    got[0].ttl = 2
    assert cache.get("x.com", QTYPE.A)[0].ttl == 60


def test_negative_and_zero_ttl_not_cached():
    cache = AnswerCache(clock=FakeClock())
    assert not cache.put("nx.com", QTYPE.A, [])  # negative answers are never cached
    assert not cache.put("z.com", QTYPE.A, [a("z.com", "10.0.0.1", 0)])
    assert len(cache) == 0


@pytest.mark.parametrize("ttl, kept", [(0, 0), (60, 60), (86400, 86400), (86401, 86400), (2**31 - 1, 86400),
                                       (2**31, 0), (2**32 - 1, 0)])
def test_cache_seconds_reads_a_top_bit_ttl_as_zero_and_keeps_a_day_at_most(ttl, kept):
    assert MAX_CACHE_SECONDS == 86400 and cache_seconds(ttl) == kept


def test_a_ttl_of_years_is_kept_a_day_and_one_with_the_top_bit_not_at_all():
    clock = FakeClock()
    cache = AnswerCache(clock=clock)
    assert cache.put("long.com", QTYPE.A, [a("long.com", "10.0.0.1", 2**31 - 1)])
    assert not cache.put("top.com", QTYPE.A, [a("top.com", "10.0.0.2", 2**32 - 1)])
    clock.now += MAX_CACHE_SECONDS - 1
    assert cache.get("long.com", QTYPE.A) is not None
    clock.now += 1
    assert cache.get("long.com", QTYPE.A) is None and cache.get("top.com", QTYPE.A) is None


def test_bounded_evicts_least_recently_used():
    cache = AnswerCache(max_entries=3, clock=FakeClock())
    for i in range(3):
        cache.put(f"h{i}.com", QTYPE.A, [a(f"h{i}.com", f"10.0.0.{i}", 60)])
    assert cache.get("h0.com", QTYPE.A) is not None  # h0 is now the most recently used
    cache.put("h3.com", QTYPE.A, [a("h3.com", "10.0.0.3", 60)])
    assert len(cache) == 3
    assert cache.get("h1.com", QTYPE.A) is None  # evicted
    assert cache.get("h0.com", QTYPE.A) is not None
    assert cache.get("h3.com", QTYPE.A) is not None


def test_size_zero_disables_caching():
    cache = AnswerCache(max_entries=0, clock=FakeClock())
    assert not cache.put("x.com", QTYPE.A, [a("x.com", "10.0.0.1", 60)])
    assert cache.get("x.com", QTYPE.A) is None


def test_purge_drops_only_expired():
    clock = FakeClock()
    cache = AnswerCache(clock=clock)
    cache.put("short.com", QTYPE.A, [a("short.com", "10.0.0.1", 10)])
    cache.put("long.com", QTYPE.A, [a("long.com", "10.0.0.2", 100)])
    clock.now += 50
    assert cache.purge() == 1
    assert len(cache) == 1
    assert cache.get("long.com", QTYPE.A)[0].ttl == 50


def _fill(cache: AnswerCache, scope: str, count: int, prefix: str = "h") -> None:
    for i in range(count):
        name = f"{prefix}{i}.{scope}.com"
        assert cache.put(name, QTYPE.A, [a(name, "192.0.2.1", 60)], scope)


def _held(cache: AnswerCache, scope: str, count: int, prefix: str = "h") -> int:
    return sum(cache.get(f"{prefix}{i}.{scope}.com", QTYPE.A, scope) is not None for i in range(count))


def test_one_scopes_lookups_never_evict_anothers_entries():
    """A shared LRU let an account fill the cache and time its own hits to watch another
    account's lookups push them out."""
    cache = AnswerCache(max_entries=100, per_scope=10, clock=FakeClock())
    _fill(cache, "a", 10)
    _fill(cache, "b", 500)  # far past its own bound
    assert _held(cache, "a", 10) == 10
    assert cache.scope_len("a") == 10 and cache.scope_len("b") == 10
    assert len(cache) == 20


def test_a_scope_past_its_bound_loses_its_own_least_recently_used():
    cache = AnswerCache(max_entries=100, per_scope=3, clock=FakeClock())
    _fill(cache, "a", 3)
    assert cache.get("h0.a.com", QTYPE.A, "a") is not None  # h0 now the most recently used
    _fill(cache, "a", 1, prefix="new")
    assert [cache.get(f"h{i}.a.com", QTYPE.A, "a") is not None for i in range(3)] == [True, False, True]
    assert cache.scope_len("a") == 3


def test_past_the_whole_bound_a_scope_makes_room_in_its_own_list_only():
    cache = AnswerCache(max_entries=10, per_scope=8, clock=FakeClock())
    _fill(cache, "small", 2)
    _fill(cache, "big", 8)  # the whole cache is full now
    name = "h0.other.com"
    assert not cache.put(name, QTYPE.A, [a(name, "192.0.2.1", 60)], "other")  # nothing of its own to give up
    assert cache.put("new.small.com", QTYPE.A, [a("new.small.com", "192.0.2.1", 60)], "small")
    assert _held(cache, "small", 2) == 1 and _held(cache, "big", 8) == 8  # "small" gave up its own oldest
    assert len(cache) == 10


def test_a_dropped_scope_frees_its_room():
    cache = AnswerCache(max_entries=4, per_scope=4, clock=FakeClock())
    _fill(cache, "gone", 4)
    assert cache.drop_scope("gone") == 4 and cache.drop_scope("gone") == 0
    assert len(cache) == 0
    _fill(cache, "next", 4)
    assert _held(cache, "next", 4) == 4


def test_a_full_cache_drops_expired_entries_to_make_room():
    clock = FakeClock()
    cache = AnswerCache(max_entries=4, per_scope=4, clock=clock)
    _fill(cache, "old", 4)
    clock.now += 61  # all expired, never looked up again
    _fill(cache, "new", 2)
    assert cache.scope_len("old") == 0 and _held(cache, "new", 2) == 2 and len(cache) == 2


@pytest.mark.parametrize(
    "per_scope, expected",
    [(None, 4), (2, 2), (50, 4)],  # per_scope defaults to, and never exceeds, the whole bound
)
def test_per_scope_bound(per_scope, expected):
    cache = AnswerCache(max_entries=4, per_scope=per_scope, clock=FakeClock())
    _fill(cache, "a", 6)
    assert cache.scope_len("a") == expected


def test_expired_entries_leave_their_scope_and_the_count():
    clock = FakeClock()
    cache = AnswerCache(max_entries=10, per_scope=5, clock=clock)
    _fill(cache, "a", 2)
    clock.now += 61
    assert cache.get("h0.a.com", QTYPE.A, "a") is None  # dropped on lookup
    assert cache.purge() == 1
    assert len(cache) == 0 and cache.scope_len("a") == 0


def test_negative_bounds_are_refused():
    with pytest.raises(ValueError):
        AnswerCache(max_entries=4, per_scope=-1)


def test_explicit_scopes_take_entries_only_while_open():
    """An answer a departed account's query was waiting for must not bring its scope back."""
    cache = AnswerCache(max_entries=10, per_scope=5, explicit_scopes=True, clock=FakeClock())
    assert not cache.put("x.a.com", QTYPE.A, [a("x.a.com", "192.0.2.1", 60)], "a")  # never opened
    cache.open_scope("a")
    _fill(cache, "a", 2)
    assert cache.drop_scope("a") == 2
    assert not cache.put("late.a.com", QTYPE.A, [a("late.a.com", "192.0.2.1", 60)], "a")
    assert cache.scope_len("a") == 0 and len(cache) == 0
    cache.open_scope("a")  # its next first devbox
    _fill(cache, "a", 1)
    assert _held(cache, "a", 1) == 1


def test_a_full_scope_in_a_full_cache_gives_up_its_own_oldest_without_a_purge():
    clock = FakeClock()
    cache = AnswerCache(max_entries=4, per_scope=4, clock=clock)
    _fill(cache, "a", 2)
    _fill(cache, "b", 2)
    clock.now += 61  # "b"'s entries are expired but never looked up
    _fill(cache, "a", 1, prefix="new")  # "a" has entries of its own: it gives up one of them
    assert cache.scope_len("b") == 2 and cache.scope_len("a") == 2
