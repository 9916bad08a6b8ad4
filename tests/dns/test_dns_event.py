"""fast_query_event builds the same frozen QueryEvent as the constructor."""

from __future__ import annotations

import dataclasses

import pytest

from dns.event import QueryEvent, fast_query_event

FIELDS = [f.name for f in dataclasses.fields(QueryEvent)]

CASES = [
    dict(client_ip="10.88.0.2", qname="a.example.com", qtype="A", verdict="allowed", reason="pattern",
         matched_pattern="*.example.com", addresses=["192.0.2.1", "192.0.2.2"], ttl=30, error=None,
         time=1700000000.25, rcode="NOERROR"),
    dict(client_ip="10.88.0.3", qname="x.test", qtype="AAAA", verdict="error", reason="upstream_error",
         matched_pattern=None, addresses=[], ttl=None, error="198.51.100.53:53: timeout", time=0.0,
         rcode="SERVFAIL"),
]


@pytest.mark.parametrize("fields", CASES)
def test_same_as_the_constructor(fields):
    fast = fast_query_event(*(fields[name] for name in FIELDS))
    slow = QueryEvent(**fields)
    assert fast == slow
    assert vars(fast) == vars(slow)  # the same attributes, in the same order
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow) == fields
    assert repr(fast) == repr(slow)
    assert dataclasses.replace(fast, time=1.0) == dataclasses.replace(slow, time=1.0)


def test_queryevent_has_nothing_that_fast_construction_would_skip():
    # fast_query_event bypasses __init__: a __post_init__ or __slots__ added to QueryEvent
    # would be skipped or break it.
    assert not hasattr(QueryEvent, "__post_init__")
    assert not hasattr(QueryEvent, "__slots__")


def test_still_frozen():
    event = fast_query_event(*(CASES[0][name] for name in FIELDS))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.verdict = "denied"


def test_takes_every_field_in_order():
    # A field added to QueryEvent must be added to fast_query_event too.
    import inspect

    assert list(inspect.signature(fast_query_event).parameters) == FIELDS
