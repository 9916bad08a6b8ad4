"""The decision log: bounded per devbox and globally, filtered and paged."""

import pytest

from dns import QueryEvent
from netns.nflog import LoggedPacket
from simulator.errors import InvalidRequest
from simulator.network_events import NetworkEventLog


def query(name="a.example.com", verdict="allowed", reason="pattern", at=1000.0, **kw):
    return QueryEvent(client_ip="10.88.0.2", qname=name, qtype="A", verdict=verdict, reason=reason, time=at, **kw)


def test_records_and_filters():
    log = NetworkEventLog()
    log.on_query("dbx_a", query("ok.example.com", addresses=["192.0.2.1"], ttl=30, matched_pattern="*.example.com"))
    log.on_query("dbx_a", query("bad.example", "denied", "no_matching_pattern", at=1001.0))
    log.on_query("dbx_b", query("other.example"))
    log.on_query(None, query("nobody.example"))  # not a devbox: not recorded
    events, more = log.list_network_events("dbx_a")
    assert [(e.name, e.verdict, e.reason) for e in events] == [
        ("ok.example.com", "allowed", "pattern"), ("bad.example", "denied", "no_matching_pattern")]
    assert events[0].addresses == ("192.0.2.1",) and events[0].ttl == 30 and events[0].matched_pattern == "*.example.com"
    assert not more
    assert [e.name for e in log.list_network_events("dbx_a", verdict="denied")[0]] == ["bad.example"]
    assert [e.name for e in log.list_network_events("dbx_a", since_ms=1000500)[0]] == ["bad.example"]
    assert log.size() == 3


def test_pages_by_seq():
    log = NetworkEventLog()
    for i in range(7):
        log.on_query("dbx_a", query(f"h{i}.example.com"))
    seen, cursor = [], None
    while True:
        page, more = log.list_network_events("dbx_a", starting_after=cursor, limit=3)
        seen += [e.name for e in page]
        if not more:
            break
        cursor = page[-1].seq
    assert seen == [f"h{i}.example.com" for i in range(7)]


def test_seq_counts_the_devbox_s_own_events_only():
    """A shared counter would tell one account, by the gaps in its own seqs, how many events
    the other accounts' devboxes logged in between."""
    log = NetworkEventLog()
    log.on_query("dbx_mine", query("a.example.com"))
    for i in range(5):
        log.on_query("dbx_theirs", query(f"t{i}.example.com"))
    log.on_blocked("dbx_theirs", LoggedPacket(prefix="dbx_x ", src="10.88.0.3", dst="192.0.2.9", proto="tcp", sport=40000, dport=443))
    log.on_query("dbx_mine", query("b.example.com"))
    log.on_blocked("dbx_mine", LoggedPacket(prefix="dbx_y ", src="10.88.0.2", dst="192.0.2.9", proto="tcp", sport=40001, dport=443))
    assert [e.seq for e in log.list_network_events("dbx_mine")[0]] == [1, 2, 3]
    assert [e.seq for e in log.list_network_events("dbx_theirs")[0]] == [1, 2, 3, 4, 5, 6]


def test_noisy_devbox_cannot_exhaust_memory_or_evict_others():
    log = NetworkEventLog(per_devbox=50, total=120)
    for i in range(10):
        log.on_query("quiet", query(f"q{i}.example.com"))
    for i in range(10_000):
        log.on_query("noisy", query(f"n{i}.example.com"))
    assert len(log.list_network_events("noisy", limit=1000)[0]) == 50  # the ring keeps the newest
    assert log.list_network_events("noisy", limit=1000)[0][-1].name == "n9999.example.com"
    for i in range(100):
        log.on_query(f"dbx_{i}", query())
    assert log.size() <= 120
    assert len(log.list_network_events("quiet")[0]) == 10  # the global cap evicted from the largest


@pytest.mark.parametrize("kwargs", [{"verdict": "maybe"}, {"limit": 0}, {"limit": 1001}])
def test_bad_filters_are_400(kwargs):
    with pytest.raises(InvalidRequest):
        NetworkEventLog().list_network_events("dbx_a", **kwargs)


def test_to_json_has_every_field_in_place():
    log = NetworkEventLog()
    log.on_query("dbx_a", QueryEvent(
        client_ip="10.88.0.2", qname="x.example.com", qtype="AAAA", verdict="error", reason="upstream_error",
        matched_pattern="*.example.com", addresses=["2001:db8::1"], ttl=42, error="198.51.100.53:53: timeout",
        time=1234.5678, rcode="SERVFAIL"))
    (event,), _ = log.list_network_events("dbx_a")
    assert list(event.to_json().items()) == [
        ("seq", 1), ("time_ms", 1234567), ("kind", "dns"), ("verdict", "error"), ("reason", "upstream_error"),
        ("name", "x.example.com"), ("qtype", "AAAA"), ("matched_pattern", "*.example.com"),
        ("addresses", ["2001:db8::1"]), ("ttl", 42), ("error", "198.51.100.53:53: timeout"),
        ("protocol", None), ("port", None), ("rcode", "SERVFAIL"),
        ("network_policy_id", None), ("network_policy_update_time_ms", None),
    ]


def test_an_allowed_name_the_upstream_does_not_know_shows_nxdomain():
    """Allowed, no addresses: NODATA or NXDOMAIN, told apart by the rcode."""
    log = NetworkEventLog()
    log.on_query("dbx_a", query("nope.example.com", rcode="NXDOMAIN"))
    log.on_query("dbx_a", query("a.example.com", addresses=["192.0.2.1"], ttl=60))
    events, _ = log.list_network_events("dbx_a")
    assert [(e.name, e.verdict, e.rcode) for e in events] == [
        ("nope.example.com", "allowed", "NXDOMAIN"), ("a.example.com", "allowed", "NOERROR")]


def test_names_are_kept_per_account():
    """A blocked event is named from what the same account's devboxes resolved, never from
    another account's lookups (that would show one account what another does)."""
    from netns.nflog import LoggedPacket

    accounts = {"dbx_a1": "acct-a", "dbx_a2": "acct-a", "dbx_b": "acct-b"}
    log = NetworkEventLog(account_of=accounts.get)
    log.on_query("dbx_a1", query("secret.example.com", addresses=["192.0.2.30"]))
    blocked = LoggedPacket(prefix="", src="10.88.0.9", dst="192.0.2.30", proto="tcp", dport=443)
    log.on_blocked("dbx_b", blocked)
    log.on_blocked("dbx_a2", blocked)
    unnamed = log.list_network_events("dbx_b")[0][-1]
    assert unnamed.name is None and unnamed.to_json()["name"] is None and unnamed.to_json()["qtype"] is None
    assert log.list_network_events("dbx_a2")[0][-1].name == "secret.example.com"
    assert log.name_for("acct-a", "192.0.2.30") == "secret.example.com"
    assert log.name_for("acct-b", "192.0.2.30") is None


def test_the_summary_counts_every_decision_not_only_those_the_log_still_holds():
    log = NetworkEventLog(per_devbox=10)
    for i in range(15):
        log.on_query("dbx_a", query(f"d{i}.example", "denied", "no_matching_pattern"))
    log.on_query("dbx_a", query("ok.example.com"))
    assert len(log.list_network_events("dbx_a", limit=100)[0]) == 10
    assert log.summary("dbx_a") == "1 allowed, 15 denied, 0 error DNS decisions, 0 blocked connections"


def test_drops_of_one_connection_attempt_are_one_event():
    """TCP sends its SYN again, a UDP socket its datagrams: each is "new" to the firewall and
    logged, but it is one attempt (same source port); another source port is another."""
    from netns.nflog import LoggedPacket

    log = NetworkEventLog()
    syn = LoggedPacket(prefix="", src="10.88.0.9", dst="192.0.2.30", proto="tcp", dport=443, sport=40000)
    for _ in range(3):
        log.on_blocked("dbx_a", syn)
    log.on_blocked("dbx_a", LoggedPacket("", "10.88.0.9", "192.0.2.30", "tcp", 443, sport=40001))
    log.on_blocked("dbx_b", syn)  # another devbox (its own address): its own attempt
    log.on_blocked("dbx_a", LoggedPacket("", "10.88.0.9", "192.0.2.30", "icmp", None))  # no ports: each counts
    log.on_blocked("dbx_a", LoggedPacket("", "10.88.0.9", "192.0.2.30", "icmp", None))
    assert [(e.protocol, e.port) for e in log.list_network_events("dbx_a")[0]] == [
        ("tcp", 443), ("tcp", 443), ("icmp", None), ("icmp", None)]
    assert len(log.list_network_events("dbx_b")[0]) == 1


def test_devboxes_whose_events_were_all_evicted_leave_nothing_behind():
    """Every devbox of a long run used to keep its ring, emptied or not, and each decision
    then searched them all for the largest (7.9 ms each after 150,000 devboxes)."""
    log = NetworkEventLog(per_devbox=5, total=100)
    for box in range(2000):
        for i in range(3):
            log.on_query(f"dbx_{box}", query(f"h{i}.example.com"))
    assert log.size() == 100
    assert len(log._events) <= 100 and all(log._events.values())  # no empty ring kept
    assert sum(len(bucket) for bucket in log._by_length.values()) == len(log._events)
    assert log.list_network_events("dbx_0")[0] == []  # evicted long ago
    # All rings are down to one event by then (the largest goes first): the newest 100 stay.
    assert {box for box, ring in log._events.items() if len(ring) == 1} == {f"dbx_{b}" for b in range(1900, 2000)}
    assert [e.name for e in log.list_network_events("dbx_1999")[0]] == ["h2.example.com"]
    log.on_query("dbx_0", query("again.example.com"))  # a devbox whose ring was dropped logs again
    assert [(e.seq, e.name) for e in log.list_network_events("dbx_0")[0]] == [(4, "again.example.com")]


def test_a_devbox_that_keeps_logging_keeps_its_seq_whatever_comes_and_goes(monkeypatch):
    """The seq counters are bounded by dropping the devbox that logged least recently, not the
    one that came first: a long-lived devbox's seq went back to 1 and paging skipped events."""
    from simulator import network_events

    monkeypatch.setattr(network_events, "MAX_TOTALS", 3)
    log = NetworkEventLog()
    for i in range(5):
        log.on_query("dbx_long", query(f"l{i}.example.com"))
        log.on_query(f"dbx_short{i}", query("s.example.com"))
    assert [e.seq for e in log.list_network_events("dbx_long")[0]] == [1, 2, 3, 4, 5]
    assert [e.name for e in log.list_network_events("dbx_long", starting_after=4)[0]] == ["l4.example.com"]
