"""A static authoritative zone: the "internet" of the offline world, and the fake upstream in tests.

It answers the way a recursive resolver in front of it would: CNAME chains inside the zone
are followed and returned in one reply. With ``follow_cnames=False`` it behaves like an
authoritative server whose CNAME target lives elsewhere (only the CNAME comes back), which
is the case the policy resolver must chase itself.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping

from dnslib import CNAME, OPCODE, QTYPE, RCODE, RR, DNSRecord

from .message import address_family_matches, address_rr, empty_reply, question
from .patterns import normalise_name

__all__ = ["Zone"]

# Beyond this the zone is misconfigured; the reply ends at SERVFAIL instead of looping.
_MAX_CHAIN = 16


class Zone:
    """Names -> addresses (IPv4 and IPv6 mixed) and aliases, answered authoritatively.

    A name may be an alias or have addresses, not both (as in real DNS). Updates through
    ``set``/``remove`` are atomic with respect to concurrent ``resolve`` calls.
    """

    def __init__(
        self,
        records: Mapping[str, list[str]],
        cnames: Mapping[str, str] | None = None,
        ttl: int = 300,
        *,
        follow_cnames: bool = True,
    ):
        self.ttl = ttl
        self.follow_cnames = follow_cnames
        self._lock = threading.Lock()
        self._records: dict[str, tuple[str, ...]] = {}
        self._cnames: dict[str, str] = {}
        for name, addresses in records.items():
            self.set(name, addresses)
        for alias, target in (cnames or {}).items():
            self.set_cname(alias, target)

    def set(self, name: str, addresses: list[str]) -> None:
        for address in addresses:
            ipaddress.ip_address(address)  # reject typos at load time, not at query time
        key = normalise_name(name)
        with self._lock:
            if key in self._cnames:
                raise ValueError(f"{name} is a CNAME; it cannot also have addresses")
            self._records[key] = tuple(addresses)

    def set_cname(self, alias: str, target: str) -> None:
        key = normalise_name(alias)
        with self._lock:
            if key in self._records:
                raise ValueError(f"{alias} has addresses; it cannot also be a CNAME")
            self._cnames[key] = normalise_name(target)

    def remove(self, name: str) -> None:
        key = normalise_name(name)
        with self._lock:
            self._records.pop(key, None)
            self._cnames.pop(key, None)

    def resolve(self, client_ip: str, request: DNSRecord) -> DNSRecord:
        """Answer ``request``; same signature as a DnsServer handler (client_ip is unused)."""
        q = question(request)
        if q is None:
            return empty_reply(request, RCODE.FORMERR, aa=True)
        if request.header.opcode != OPCODE.QUERY:
            return empty_reply(request, RCODE.NOTIMP, aa=True)
        reply = empty_reply(request, aa=True)
        reply.header.rcode = self._answer(str(q.qname), q.qtype, reply)
        return reply

    def _answer(self, qname: str, qtype: int, reply: DNSRecord) -> int:
        name = normalise_name(qname)
        owner = qname  # answer with the client's spelling of the first owner name
        with self._lock:
            for _ in range(_MAX_CHAIN):
                target = self._cnames.get(name)
                if target is not None:
                    reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=self.ttl))
                    if qtype == QTYPE.CNAME or not self.follow_cnames:
                        return RCODE.NOERROR
                    name = owner = target
                    continue
                addresses = self._records.get(name)
                if addresses is None:
                    # Unknown name; after a CNAME the rcode describes the chain's end.
                    return RCODE.NXDOMAIN
                for address in addresses:
                    if qtype == QTYPE.ANY or address_family_matches(address, qtype):
                        reply.add_answer(address_rr(owner, address, self.ttl))
                return RCODE.NOERROR  # possibly empty: known name, no record of this type
        return RCODE.SERVFAIL
