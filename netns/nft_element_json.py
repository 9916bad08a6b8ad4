"""libnftables JSON element commands -> raw netlink set operations (``netns.nft_elements``).

``netns.ruleset`` compiles everything to libnftables JSON, and the golden files pin that
form. The documents that change only set elements (a policy update, learned addresses) are
also applied without libnftables: this module encodes them as ``SetOp``s, which
``SetElements.apply`` sends as one transaction. Pure; tested against libnftables itself
(the same document applied both ways lists the same elements).

Only what those documents hold is understood; anything else raises ``Unsupported`` (never
a guess): the commands ``add element``, ``delete element`` and ``flush set``; keys of the
types ``ipv4_addr``, ``inet_proto``, ``inet_service`` and ``nf_proto``, alone or
concatenated; values, ``{"range": [lo, hi]}`` and ``{"prefix": ...}`` in interval sets of
concatenations (sent as a first and a last key, as libnftables does for them); and
``{"elem": {"val", "timeout", "expires"}}`` with expires == timeout.

The kernel keys a concatenation as one 32-bit-aligned field per component, value first,
zero padding after (``ipv4_addr`` 4 bytes, ``inet_proto`` 1, ``inet_service`` 2 big-endian).
A key of one component has its own length.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from typing import Any

from netns.nft_elements import Element, SetOp


class Unsupported(ValueError):
    """The document holds something this encoder does not handle."""


# What a set's elements are: its key types, and whether it is an interval set.
SetKey = tuple[tuple[str, ...], bool]


_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
_NFPROTO = {"ipv4": 2, "ipv6": 10}


def _scalar(datatype: str, value: Any) -> bytes:
    if datatype == "ipv4_addr":
        try:
            return ipaddress.IPv4Address(value).packed
        except ValueError:
            raise Unsupported(f"ipv4_addr value {value!r}") from None
    if datatype == "inet_proto":
        number = _PROTOCOLS.get(value, value) if isinstance(value, str) else value
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 255:
            raise Unsupported(f"inet_proto value {value!r}")
        return bytes([number])
    if datatype == "inet_service":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
            raise Unsupported(f"inet_service value {value!r}")
        return struct.pack(">H", value)
    if datatype == "nf_proto":
        if value not in _NFPROTO:
            raise Unsupported(f"nf_proto value {value!r}")
        return bytes([_NFPROTO[value]])
    raise Unsupported(f"key type {datatype!r}")


def _span(datatype: str, value: Any, interval: bool) -> tuple[bytes, bytes]:
    """First and last key of one component."""
    if isinstance(value, dict):
        if not interval:
            raise Unsupported(f"{value!r} in a set without intervals")
        if set(value) == {"range"} and isinstance(value["range"], list) and len(value["range"]) == 2:
            return _scalar(datatype, value["range"][0]), _scalar(datatype, value["range"][1])
        if set(value) == {"prefix"} and datatype == "ipv4_addr":
            try:
                net = ipaddress.IPv4Network(f"{value['prefix']['addr']}/{value['prefix']['len']}")
            except (ValueError, TypeError, KeyError):
                raise Unsupported(f"prefix {value!r}") from None
            return net.network_address.packed, net.broadcast_address.packed
        raise Unsupported(f"{datatype} value {value!r}")
    one = _scalar(datatype, value)
    return one, one


def _whole_seconds(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _pad(field: bytes) -> bytes:
    return field + b"\0" * (-len(field) & 3)


def _element(key: SetKey, item: Any) -> Element:
    types, interval = key
    timeout = None
    if isinstance(item, dict) and "elem" in item:
        body = item["elem"]
        timeout = body.get("timeout") if isinstance(body, dict) else None
        if (not isinstance(body, dict) or "val" not in body or set(body) - {"val", "timeout", "expires"}
                or timeout != body.get("expires") or not (timeout is None or _whole_seconds(timeout))):
            raise Unsupported(f"element {item!r} (a value, and a timeout of whole seconds equal to its expiry)")
        item = body["val"]
    if len(types) == 1:
        if interval:
            raise Unsupported("an interval set of one component (its ranges need end elements)")
        first, _ = _span(types[0], item, False)
        return Element(first, timeout=timeout)
    if not (isinstance(item, dict) and set(item) == {"concat"} and len(item["concat"]) == len(types)):
        raise Unsupported(f"element {item!r} of a {' . '.join(types)} set")
    spans = [_span(t, v, interval) for t, v in zip(types, item["concat"])]
    first = b"".join(_pad(a) for a, _ in spans)
    last = b"".join(_pad(b) for _, b in spans)
    if not interval:  # first == last: _span refuses ranges outside interval sets
        return Element(first, timeout=timeout)
    return Element(first, key_end=last, timeout=timeout)


def set_ops(commands: Iterable[dict], key_of: Callable[[str], SetKey | None]) -> list[SetOp]:
    """The ``SetOp``s of libnftables JSON ``commands`` (a document's ``nftables`` list), in
    order. ``key_of(set_name)`` tells a set's key types and whether it is an interval set
    (None: unknown, Unsupported); ``netns.ruleset.element_key`` knows the sets it compiles."""
    ops: list[SetOp] = []
    for command in commands:
        if not (isinstance(command, dict) and len(command) == 1):
            raise Unsupported(f"command {command!r}")
        ((verb, body),) = command.items()
        if verb == "flush" and isinstance(body, dict) and set(body) == {"set"}:
            ref = body["set"]
            ops.append(SetOp("flush", ref["family"], ref["table"], ref["name"]))
            continue
        if verb not in ("add", "delete") or not (isinstance(body, dict) and set(body) == {"element"}):
            raise Unsupported(f"command {command!r}")
        ref = body["element"]
        key = key_of(ref["name"])
        if key is None:
            raise Unsupported(f"set {ref['name']!r}: its key type is not known")
        elements = tuple(_element(key, item) for item in ref["elem"])
        if verb == "delete" and any(e.timeout is not None for e in elements):
            raise Unsupported("a delete with timeouts")
        ops.append(SetOp(verb, ref["family"], ref["table"], ref["name"], elements))
    return ops


__all__ = ["SetKey", "Unsupported", "set_ops"]
