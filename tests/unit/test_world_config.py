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
    ],
)
def test_rejects(data, message):
    with pytest.raises(WorldConfigError, match=message):
        WorldConfig.from_dict(data)
