"""Zone: the authoritative offline world."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from dns.zone import Zone


def q(zone: Zone, name: str, qtype: str = "A") -> DNSRecord:
    return zone.resolve("127.0.0.1", DNSRecord.question(name, qtype))


@pytest.fixture
def zone():
    return Zone(
        {"host.test": ["10.0.0.1", "10.0.0.2", "2001:db8::1"], "v4only.test": ["10.0.0.9"]},
        cnames={"alias.test": "mid.test", "mid.test": "host.test", "dangling.test": "nowhere.test"},
        ttl=120,
    )


def test_a_and_aaaa_by_family(zone):
    a = q(zone, "HOST.test.")
    assert a.header.rcode == RCODE.NOERROR and a.header.aa
    assert [str(rr.rdata) for rr in a.rr] == ["10.0.0.1", "10.0.0.2"]
    assert all(rr.ttl == 120 for rr in a.rr)
    aaaa = q(zone, "host.test", "AAAA")
    assert [str(rr.rdata) for rr in aaaa.rr] == ["2001:db8::1"]


def test_known_name_without_type_is_empty_noerror(zone):
    reply = q(zone, "v4only.test", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
    assert q(zone, "v4only.test", "MX").rr == []


def test_unknown_name_is_nxdomain(zone):
    assert q(zone, "nope.test").header.rcode == RCODE.NXDOMAIN


def test_cname_chain_followed(zone):
    reply = q(zone, "alias.test")
    assert [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in reply.rr] == [
        ("alias.test.", "CNAME", "mid.test."),
        ("mid.test.", "CNAME", "host.test."),
        ("host.test.", "A", "10.0.0.1"),
        ("host.test.", "A", "10.0.0.2"),
    ]


def test_cname_to_unknown_is_nxdomain_with_chain(zone):
    reply = q(zone, "dangling.test")
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME"]


def test_cname_only_mode_returns_just_the_alias():
    zone = Zone({"host.test": ["10.0.0.1"]}, cnames={"alias.test": "host.test"}, follow_cnames=False)
    reply = q(zone, "alias.test")
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME"]


def test_cname_loop_is_servfail():
    zone = Zone({}, cnames={"a.test": "b.test", "b.test": "a.test"})
    assert q(zone, "a.test").header.rcode == RCODE.SERVFAIL


def test_validation_and_updates():
    with pytest.raises(ValueError):
        Zone({"x.test": ["not-an-ip"]})
    with pytest.raises(ValueError):
        Zone({"x.test": ["10.0.0.1"]}, cnames={"x.test": "y.test"})
    zone = Zone({})
    zone.set("new.test", ["10.9.9.9"])
    assert [str(rr.rdata) for rr in q(zone, "new.test").rr] == ["10.9.9.9"]
    zone.remove("new.test")
    assert q(zone, "new.test").header.rcode == RCODE.NXDOMAIN


def test_served_over_udp_and_tcp(serve, ask, zone):
    server = serve(zone.resolve)
    address = server.udp_addresses[0]
    assert [str(rr.rdata) for rr in ask(address, "alias.test").rr][-1] == "10.0.0.2"
    assert ask(address, "nope.test", tcp=True).header.rcode == RCODE.NXDOMAIN
