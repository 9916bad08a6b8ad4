"""The offline world's configuration: documentation ranges only, and the shipped example parses."""

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from simulator.world import WorldConfig, WorldConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_example_world_parses_and_answers():
    world = WorldConfig.load(ROOT / "examples" / "world.toml")
    assert world.resolver == "198.51.100.53"
    zone = world.zone()
    reply = zone.resolve("127.0.0.1", DNSRecord.question("www.github.com", "A"))
    assert [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A] == ["192.0.2.10"]
    assert zone.resolve("127.0.0.1", DNSRecord.question("nope.example", "A")).header.rcode == RCODE.NXDOMAIN


@pytest.mark.parametrize(
    "data, message",
    [
        ({"hosts": {"x": {"address": "198.18.0.1"}}}, "outside the documentation ranges"),
        ({"hosts": {"x": {"address": "10.0.0.1"}}}, "outside the documentation ranges"),
        ({"resolver": "100.64.0.53"}, "outside the documentation ranges"),
        ({"hosts": {"x": {"address": "not-an-ip"}}}, "not an IPv4 address"),
        ({"hosts": {"x": {}}}, "needs an address"),
        ({"hosts": {"x": {"address": "192.0.2.1", "http": [0]}}}, "not a port"),
        ({"hosts": {"x": {"address": "192.0.2.1", "http": 80}}}, "must be a list"),
        # A typo would silently leave a service out.
        ({"hosts": {"x": {"address": "192.0.2.1", "tcp_echos": [22]}}}, "unknown key 'tcp_echos'"),
        ({"resolvr": "198.51.100.53"}, "unknown key 'resolvr'"),
        ({"ttl": -1}, "ttl -1"),
        ({"ttl": "300"}, "ttl '300'"),
        # Two hosts aliasing each other: a name is a host or an alias, and no CNAME loops.
        ({"hosts": {"a.example": {"address": "192.0.2.1", "aliases": ["b.example"]},
                    "b.example": {"address": "192.0.2.2", "aliases": ["a.example"]}}}, "given twice"),
        ({"hosts": {"a.example": {"address": "192.0.2.1", "aliases": ["c.example"]},
                    "b.example": {"address": "192.0.2.2", "aliases": ["C.example."]}}}, "given twice"),
        ({"hosts": {"a.example": {"address": "192.0.2.1", "aliases": "www.a.example"}}}, "list of names"),
        # Names no query can reach.
        ({"hosts": {"a.example": {"address": "192.0.2.1", "aliases": ["x" * 64 + ".example"]}}}, "at most 63"),
        ({"hosts": {("a" * 60 + ".") * 5 + "example": {"address": "192.0.2.1"}}}, "longer than 253"),
        ({"hosts": {"sp ace.example": {"address": "192.0.2.1"}}}, "letters, digits"),
        ({"hosts": {"a..example": {"address": "192.0.2.1"}}}, "letters, digits"),
        ({"hosts": {"*.example": {"address": "192.0.2.1"}}}, "not wildcards"),
        # A service bound twice failed the start with "address already in use" after the
        # world was half built.
        ({"hosts": {"a.example": {"address": "192.0.2.1", "http": [80], "tcp_echo": [80]}}},
         r"hosts.'a.example': tcp_echo port 80 on 192.0.2.1 is already served by hosts.'a.example' \(http\)"),
        ({"hosts": {"a.example": {"address": "192.0.2.1", "udp_echo": [7, 7]}}}, "udp_echo port 7 on 192.0.2.1 is already served"),
        ({"hosts": {"a.example": {"address": "192.0.2.1", "tcp_echo": [22]},
                    "b.example": {"address": "192.0.2.1", "tcp_echo": [22]}}}, "is already served by hosts.'a.example'"),
        ({"hosts": {"dns.example": {"address": "198.51.100.53", "udp_echo": [53]}}}, "already served by the world's resolver"),
        ({"resolver": "192.0.2.9", "hosts": {"dns.example": {"address": "192.0.2.9", "http": [53]}}},
         "already served by the world's resolver"),
    ],
)
def test_rejects(data, message):
    with pytest.raises(WorldConfigError, match=message):
        WorldConfig.from_dict(data)


def test_names_are_normalised():
    world = WorldConfig.from_dict({"hosts": {"GitHub.com.": {"address": "192.0.2.10", "aliases": ["WWW.github.com"]},
                                             "bücher.example": {"address": "192.0.2.11"},
                                             "_http._tcp.My_Svc.example": {"address": "192.0.2.12"}}})
    assert [(h.name, h.aliases) for h in world.hosts] == [("github.com", ("www.github.com",)),
                                                         ("xn--bcher-kva.example", ()),
                                                         ("_http._tcp.my_svc.example", ())]


def test_a_world_of_many_hosts_loads_at_once():
    hosts = {f"h{i}.example": {"address": f"192.0.2.{i % 250 + 1}"} for i in range(20_000)}
    assert len(WorldConfig.from_dict({"hosts": hosts}).hosts) == 20_000  # (was quadratic: 6 s)


def test_the_same_port_over_tcp_and_udp_or_on_two_addresses_is_fine():
    WorldConfig.from_dict({"hosts": {
        "a.example": {"address": "192.0.2.1", "tcp_echo": [7], "udp_echo": [7]},
        "b.example": {"address": "192.0.2.2", "tcp_echo": [7]},
        "dns.example": {"address": "198.51.100.53", "http": [80], "udp_echo": [5353]},
    }})
