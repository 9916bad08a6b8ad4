"""Accept/reject table for allowed_cidrs validation."""

import pytest

from simulator.cidrs import validate_cidrs
from simulator.errors import InvalidRequest
from simulator.policy_model import AllowedCidr, PortRule


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"cidr": "10.12.0.0/16"}, AllowedCidr("10.12.0.0/16", None)),
        ({"cidr": "0.0.0.0/0"}, AllowedCidr("0.0.0.0/0", None)),
        ({"cidr": "192.0.2.7/32", "ports": []}, AllowedCidr("192.0.2.7/32", ())),
        (
            {"cidr": "198.51.100.0/24", "ports": [{"port": 443, "protocol": "TCP"}, {"port": 1, "end_port": 65535}]},
            AllowedCidr("198.51.100.0/24", (PortRule(443, None, "TCP"), PortRule(1, 65535, None))),
        ),
        ({"cidr": "10.0.0.0/8", "ports": [{"port": 53, "end_port": 53, "protocol": "UDP"}]}, AllowedCidr("10.0.0.0/8", (PortRule(53, 53, "UDP"),))),
    ],
)
def test_accepts(raw, expected):
    assert validate_cidrs([raw]) == (expected,)


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"cidr": ""},
        {"cidr": 10},
        {"cidr": "10.0.0.1/8"},
        {"cidr": "10.0.0.0"},
        {"cidr": "10.0.0.0/33"},
        {"cidr": "10.01.0.0/16"},  # leading zeros
        {"cidr": "2001:db8::/32"},
        {"cidr": "example.com/32"},
        {"cidr": "10.0.0.0/8", "ports": [{"port": 0}]},
        {"cidr": "10.0.0.0/8", "ports": [{"port": 70000}]},
        {"cidr": "10.0.0.0/8", "ports": [{"port": True}]},
        {"cidr": "10.0.0.0/8", "ports": [{"port": "80"}]},
        {"cidr": "10.0.0.0/8", "ports": [{"port": 80, "end_port": 79}]},
        {"cidr": "10.0.0.0/8", "ports": [{"port": 80, "end_port": 65536}]},
        {"cidr": "10.0.0.0/8", "ports": [{"port": 80, "protocol": "tcp"}]},
        {"cidr": "10.0.0.0/8", "ports": [{"port": 80, "protocol": "SCTP"}]},
    ],
)
def test_rejects(raw):
    with pytest.raises(InvalidRequest):
        validate_cidrs([raw])


def test_duplicates_dropped():
    assert validate_cidrs([{"cidr": "10.0.0.0/8"}, {"cidr": "10.0.0.0/8", "ports": None}]) == (AllowedCidr("10.0.0.0/8"),)
