"""Validation of ``allowed_cidrs``: canonical IPv4 networks and their port rules."""

from __future__ import annotations

import ipaddress

from simulator.errors import InvalidRequest
from simulator.policy_model import AllowedCidr, PortRule

PROTOCOLS = ("TCP", "UDP")


def validate_cidrs(raw: list[dict]) -> tuple[AllowedCidr, ...]:
    result: dict[AllowedCidr, None] = {}
    for index, entry in enumerate(raw):
        result.setdefault(_validate_cidr(entry, f"allowed_cidrs[{index}]"))
    return tuple(result)


def _validate_cidr(entry: dict, where: str) -> AllowedCidr:
    text = entry.get("cidr")
    if not isinstance(text, str) or not text:
        raise InvalidRequest(f"{where}.cidr is required: an IPv4 network like '10.12.0.0/16'")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidRequest(f"{where}.cidr: {text!r} is not an IPv4 network like '10.12.0.0/16'") from None
    if network.version != 4:
        raise InvalidRequest(f"{where}.cidr: {text!r} is IPv6; only IPv4 networks are supported")
    if "/" not in text:
        raise InvalidRequest(f"{where}.cidr: {text!r} has no prefix length; did you mean '{network}'?")
    if network.network_address != ipaddress.ip_interface(text).ip:
        raise InvalidRequest(f"{where}.cidr: {text!r} has host bits set; did you mean '{network}'?")
    if str(network) != text:
        raise InvalidRequest(f"{where}.cidr: {text!r} is not in canonical form; did you mean '{network}'?")
    ports = entry.get("ports")
    if ports is None:
        return AllowedCidr(str(network), None)
    rules: dict[PortRule, None] = {}
    for index, port in enumerate(ports):
        rules.setdefault(_validate_port(port, f"{where}.ports[{index}]"))
    return AllowedCidr(str(network), tuple(rules))


def _validate_port(entry: dict, where: str) -> PortRule:
    port = entry.get("port")
    end_port = entry.get("end_port")
    protocol = entry.get("protocol")
    if not _is_port(port):
        raise InvalidRequest(f"{where}.port must be an integer from 1 to 65535, got {port!r}")
    if end_port is not None:
        if not _is_port(end_port):
            raise InvalidRequest(f"{where}.end_port must be an integer from 1 to 65535, got {end_port!r}")
        if end_port < port:
            raise InvalidRequest(f"{where}.end_port ({end_port}) is smaller than port ({port})")
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidRequest(f"{where}.protocol must be 'TCP', 'UDP' or null (both), got {protocol!r}")
    return PortRule(port, end_port, protocol)


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
