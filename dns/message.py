"""Small helpers over dnslib messages shared by the zone, the resolver and the server.

Kept here so each of those modules reads as policy or plumbing, not as wire-format fiddling.
"""

from __future__ import annotations

import ipaddress

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, A, DNSHeader, DNSQuestion, DNSRecord

__all__ = [
    "ADDRESS_TYPES",
    "address_family_matches",
    "address_rr",
    "addresses_with_ttl",
    "empty_reply",
    "qtype_name",
    "question",
    "rcode_name",
    "truncated",
    "udp_limit",
    "with_edns",
]

# Record types that carry an address the firewall must learn about.
ADDRESS_TYPES = frozenset({QTYPE.A, QTYPE.AAAA})

# RFC 1035 limit for a UDP reply when the client did not advertise EDNS0.
CLASSIC_UDP_LIMIT = 512
# Upper bound on an EDNS0-advertised size we honour; bigger UDP replies fragment, and
# fragments are exactly what DNS flag day 2020 told everyone to avoid.
MAX_UDP_LIMIT = 4096


# dnslib's QTYPE[x] / RCODE[x] go through a Bimap with attribute magic; the resolver
# names the type and rcode of every query, so plain dicts are built once.
_QTYPE_NAMES: dict[int, str] = dict(QTYPE.forward)
_RCODE_NAMES: dict[int, str] = dict(RCODE.forward)


def qtype_name(qtype: int) -> str:
    name = _QTYPE_NAMES.get(qtype)
    return name if name is not None else f"TYPE{qtype}"


def rcode_name(rcode: int) -> str:
    name = _RCODE_NAMES.get(rcode)
    return name if name is not None else f"RCODE{rcode}"


def question(request: DNSRecord) -> DNSQuestion | None:
    """The single question of a query, or None when there is not exactly one."""
    if len(request.questions) != 1:
        return None
    return request.questions[0]


def empty_reply(request: DNSRecord, rcode: int = RCODE.NOERROR, *, aa: bool = False) -> DNSRecord:
    """A reply to ``request`` with the question echoed and no records."""
    header = DNSHeader(
        id=request.header.id,
        qr=1,
        opcode=request.header.opcode,
        aa=int(aa),
        rd=request.header.rd,
        ra=1,
        rcode=rcode,
    )
    return DNSRecord(header, questions=list(request.questions))


def address_rr(name: str, address: str, ttl: int) -> RR | None:
    """An A or AAAA record for ``address``; None if it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 4:
        return RR(name, QTYPE.A, rdata=A(str(ip)), ttl=ttl)
    return RR(name, QTYPE.AAAA, rdata=AAAA(str(ip)), ttl=ttl)


def address_family_matches(address: str, qtype: int) -> bool:
    """Whether ``address`` belongs in the answer to an A (IPv4) or AAAA (IPv6) question."""
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        return False
    return (qtype == QTYPE.A and version == 4) or (qtype == QTYPE.AAAA and version == 6)


def addresses_with_ttl(records: list[RR]) -> list[tuple[str, int]]:
    """(address, ttl) for every A/AAAA record, in answer order, addresses in canonical form."""
    out = []
    for rr in records:
        if rr.rtype in ADDRESS_TYPES:
            # Canonical text so "2001:DB8:0::1" and "2001:db8::1" are one firewall element.
            out.append((ipaddress.ip_address(str(rr.rdata)).compressed, int(rr.ttl)))
    return out


def udp_limit(request: DNSRecord | None) -> int:
    """Largest UDP reply the client said it accepts (EDNS0 OPT), else 512 bytes."""
    if request is not None:
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                # For OPT the CLASS field carries the requestor's UDP payload size.
                return max(CLASSIC_UDP_LIMIT, min(int(rr.rclass), MAX_UDP_LIMIT))
    return CLASSIC_UDP_LIMIT


def _has_opt(record: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in record.ar)


def with_edns(request: DNSRecord, reply: DNSRecord) -> DNSRecord:
    """Echo an OPT record when the client sent one.

    Without it the client must assume we do not speak EDNS0, and a reply larger than 512
    bytes over UDP would then be a protocol violation even though the client asked for it.
    """
    if _has_opt(request) and not _has_opt(reply):
        reply.add_ar(EDNS0(udp_len=MAX_UDP_LIMIT))
    return reply


def truncated(reply: DNSRecord) -> DNSRecord:
    """Header and question of ``reply`` with TC set: tells the client to retry over TCP.

    dnslib's own ``truncate()`` drops the question too; keeping it lets stub resolvers
    match the reply to their query.
    """
    header = DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap)
    header.tc = 1
    opt = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    return DNSRecord(header, questions=list(reply.questions), ar=opt)
