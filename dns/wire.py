"""Just enough DNS wire format for the resolver's hot path; dnslib does everything else.

The common query - one question, an ordinary host name and type, class IN, at most an EDNS0
OPT of version 0 - is read here without dnslib, its answer section is kept as wire bytes
(from the upstream reply or the cache) and spliced behind the client's own header and
question. Every function here returns None for anything it does not fully understand, and
the caller then takes the general dnslib path, so this module only has to be right about the
cases it accepts.

Why splicing is sound: a reply is header (12 bytes) + question + answer section. The answer
section of an upstream reply to *our* question (the client's name, lowercased) may contain
compression pointers into that question or into earlier answers; ``read_name`` only accepts
pointers that go backwards and not into the header, so the same bytes stay valid behind any
question of the same length - and every spelling of one name has the same length.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct

__all__ = [
    "OPT_ECHO",
    "Query",
    "Section",
    "empty_reply",
    "other_opcode_reply",
    "parse_query",
    "query_shape_ok",
    "read_answers",
    "reply",
    "section_from_records",
]

HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_TYPE_CLASS = struct.Struct("!HH")
_TTL = struct.Struct("!I")

TYPE_A, TYPE_CNAME, TYPE_AAAA, TYPE_OPT = 1, 5, 28, 41
CLASS_IN = 1
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080

# What message.with_edns adds to a reply: OPT, root owner, UDP size 4096, no flags/options.
OPT_ECHO = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"
CLASSIC_UDP_LIMIT = 512
MAX_UDP_LIMIT = 4096

# Host-name characters: with only these in a label, "." joins labels unambiguously and
# dnslib's text form of the name is the same string (no escapes).
_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_NAME_BYTES_DOT = _NAME_BYTES + b"."
_MAX_POINTERS = 32
# Meta and transfer types (0, OPT, TKEY, TSIG, IXFR, AXFR, MAILB, MAILA): the general path
# refuses them.
_SPECIAL_TYPES = frozenset((0, 41, 249, 250, 251, 252, 253, 254))


class Query:
    """The parts of a plain query the hot path needs."""

    __slots__ = ("id", "flags", "name", "name_wire", "qtype", "qend", "udp_limit", "edns")

    def __init__(self, id, flags, name, name_wire, qtype, qend, udp_limit, edns):
        self.id = id
        self.flags = flags
        self.name = name  # normalised text (lowercase, no trailing dot)
        self.name_wire = name_wire  # lowercased wire form, terminating zero included
        self.qtype = qtype
        self.qend = qend  # offset just past the question section
        self.udp_limit = udp_limit
        self.edns = edns


def parse_query(data: bytes) -> Query | None:
    """A plain query (see module doc), or None for anything else - including garbage."""
    n = len(data)
    if n < 17:
        return None
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    # QR=0, OPCODE=QUERY, exactly one question, nothing but (at most) one OPT record.
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:
        return None
    # Walk the labels by their length bytes; in a copy of the name (first length byte
    # left out) every later length byte becomes a dot, so one translate() checks every
    # character and the copy is the text form. Cheaper than a slice per label: this runs
    # for every query.
    length = data[12]
    if not length or length > 63:
        return None
    text = bytearray(data[13 : 13 + 255])
    pos = 12
    dots = 0
    while True:
        pos += 1 + length
        if pos >= n:
            return None
        length = data[pos]
        if not length:
            break
        if length > 63 or pos > 266:  # a compression pointer, or a name over 255 bytes
            return None
        text[pos - 13] = 46  # "."
        dots += 1
    if pos > 266:
        return None
    del text[pos - 13 :]
    # Only name characters and our dots: a "." inside a label would make the text ambiguous.
    if text.translate(None, _NAME_BYTES_DOT) or text.count(46) != dots:
        return None
    pos += 1
    if pos + 4 > n:
        return None
    qtype, qclass = _TYPE_CLASS.unpack_from(data, pos)
    if qclass != CLASS_IN or qtype in _SPECIAL_TYPES:
        return None
    pos += 4
    qend = pos
    limit, edns = CLASSIC_UDP_LIMIT, False
    if ar:
        if pos + 11 > n or data[pos] != 0:
            return None
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos + 1)
        if rtype != TYPE_OPT or ttl & 0xFF0000:  # EDNS version 0 only
            return None
        pos += 11 + rdlength
        limit, edns = max(CLASSIC_UDP_LIMIT, min(rclass, MAX_UDP_LIMIT)), True
    if pos != n:
        return None
    return Query(qid, flags, text.decode("ascii").lower(), data[12 : qend - 4].lower(), qtype, qend, limit, edns)


# The most questions and additional records a query may carry to reach dnslib at all (one
# of each is a query; a few more are still answered FORMERR by the resolver).
MAX_QUERY_QUESTIONS = 4
MAX_QUERY_ADDITIONAL = 4
# What a query's additional section may hold: OPT, and the signatures of signed queries
# (TSIG, SIG(0)), whose data dnslib keeps as bytes (`dig -y` is answered as unsigned).
_QUERY_ADDITIONAL_TYPES = frozenset((TYPE_OPT, 24, 250))
OPCODE_QUERY = 0
RCODE_NOTIMP = 4


def other_opcode_reply(data: bytes) -> bytes | None:
    """NOTIMP, from the header alone, for a request of another opcode than QUERY (a DNS
    UPDATE or NOTIFY, whose sections ``query_shape_ok`` refuses to hand to dnslib); None for
    anything else, a response included (never answered: no reflection loops)."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    opcode = (flags >> 11) & 0xF
    if flags & FLAG_QR or opcode == OPCODE_QUERY:
        return None
    return struct.pack("!HHHHHH", qid, FLAG_QR | (opcode << 11) | (flags & FLAG_RD) | RCODE_NOTIMP, 0, 0, 0, 0)


def query_shape_ok(data: bytes) -> bool:
    """Whether ``data`` is shaped like a query dnslib can read in bounded time: a few
    questions, no answer or authority records, additional records only of type OPT, and
    every name made of labels of at most 63 bytes, at most 255 bytes long, whose compression
    pointers go backwards (never into the header), at most _MAX_POINTERS of them.

    dnslib decodes a name recursively, once per pointer, copying the labels at each level:
    a 7 KB datagram of 900 questions each pointing at the one before took 3.4 s to parse,
    and eight of them held every resolver thread for half a minute. Whatever fails this is
    dropped as malformed before dnslib sees it (no query a resolver takes fails it)."""
    n = len(data)
    if n < 12:
        return False
    _id, _flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if qd > MAX_QUERY_QUESTIONS or an or ns or ar > MAX_QUERY_ADDITIONAL:
        return False
    pos = 12
    for _ in range(qd):
        pos = _bounded_name_end(data, pos)
        if pos is None or pos + 4 > n:
            return False
        pos += 4
    for _ in range(ar):
        pos = _bounded_name_end(data, pos)
        if pos is None or pos + 10 > n:
            return False
        rtype, _rclass, _ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
        if rtype not in _QUERY_ADDITIONAL_TYPES:  # an RR type whose data holds names would be decoded too
            return False
        pos += 10 + rdlength
        if pos > n:
            return False
    return True


def _bounded_name_end(data: bytes, pos: int) -> int | None:
    """The offset after the name at ``pos`` if it keeps the bounds of ``query_shape_ok``."""
    n = len(data)
    end = -1
    jumps = 0
    size = 1
    while True:
        if pos >= n:
            return None
        length = data[pos]
        if length == 0:
            return pos + 1 if end < 0 else end
        if length >= 0xC0:
            target = _pointer_target(data, pos)
            jumps += 1
            if target is None or jumps > _MAX_POINTERS:
                return None
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if length > 63:
            return None
        size += 1 + length
        if size > 255:
            return None
        pos += 1 + length


def reply(data: bytes, q: Query, rcode: int, section: bytes = b"", count: int = 0, *,
          aa: bool = False, max_size: int = 65535) -> bytes:
    """The reply to ``data`` (parsed as ``q``): its question, then ``section`` (``count`` RRs).

    Flags as message.empty_reply sets them; OPT echoed as message.with_edns does; over
    ``max_size`` only header and question (and OPT) go out, with TC set, as message.truncated.
    """
    flags = FLAG_QR | FLAG_RA | (q.flags & FLAG_RD) | rcode | (FLAG_AA if aa else 0)
    opt = OPT_ECHO if q.edns else b""
    question = data[12 : q.qend]
    wire = HEADER.pack(q.id, flags, 1, count, 0, 1 if opt else 0) + question + section + opt
    if len(wire) > max_size:
        wire = HEADER.pack(q.id, flags | FLAG_TC, 1, 0, 0, 1 if opt else 0) + question + opt
    return wire


def empty_reply(data: bytes, q: Query, rcode: int, *, aa: bool = False, max_size: int = 65535) -> bytes:
    return reply(data, q, rcode, aa=aa, max_size=max_size)


# -- reading answers ------------------------------------------------------------------------


def _pointer_target(data: bytes, pos: int) -> int | None:
    """Where the compression pointer at ``pos`` leads: backwards only, never into the header
    (see the module doc); None for any other."""
    if pos + 1 >= len(data):
        return None
    target = ((data[pos] & 0x3F) << 8) | data[pos + 1]
    return target if 12 <= target < pos else None


def read_name(data: bytes, pos: int) -> tuple[str, int] | None:
    """(normalised name, offset after it) at ``pos``; None if odd (see module doc)."""
    labels = []
    end = -1
    jumps = 0
    n = len(data)
    while True:
        if pos >= n:
            return None
        length = data[pos]
        if length == 0:
            if end < 0:
                end = pos + 1
            break
        if length >= 0xC0:
            target = _pointer_target(data, pos)
            jumps += 1
            if target is None or jumps > _MAX_POINTERS:
                return None
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if length > 63:
            return None
        label = data[pos + 1 : pos + 1 + length]
        if len(label) != length or label.translate(None, _NAME_BYTES):
            return None
        labels.append(label)
        pos += 1 + length
    return b".".join(labels).decode("ascii").lower(), end


class Record:
    """One answer RR as the hot path sees it. ``value``: address text (A/AAAA, canonical),
    target name (CNAME, normalised), else None."""

    __slots__ = ("owner", "rtype", "ttl", "value")

    def __init__(self, owner, rtype, ttl, value):
        self.owner = owner
        self.rtype = rtype
        self.ttl = ttl
        self.value = value


def read_answers(data: bytes, question: bytes):
    """(rcode, [Record], section bytes, [ttl offsets in section]) of an upstream reply whose
    question section is exactly ``question`` (case aside); None if anything is unusual."""
    if len(data) < 12:
        return None
    _id, flags, qd, an, _ns, _ar = HEADER.unpack_from(data)
    start = 12 + len(question)
    if qd != 1 or flags & FLAG_TC or data[12:start].lower() != question:
        return None
    records = []
    offsets = []
    pos = start
    n = len(data)
    for _ in range(an):
        got = read_name(data, pos)
        if got is None:
            return None
        owner, pos = got
        if pos + 10 > n:
            return None
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
        rdata = pos + 10
        if rclass != CLASS_IN or rdata + rdlength > n or ttl >= 0x80000000:
            return None
        offsets.append(pos + 4 - start)
        if rtype == TYPE_A:
            if rdlength != 4:
                return None
            value = socket.inet_ntoa(data[rdata : rdata + 4])
        elif rtype == TYPE_AAAA:
            if rdlength != 16:
                return None
            value = ipaddress.IPv6Address(data[rdata : rdata + 16]).compressed
        elif rtype == TYPE_CNAME:
            got = read_name(data, rdata)
            if got is None or got[1] != rdata + rdlength:
                return None
            value = got[0]
        else:
            value = None
        records.append(Record(owner, rtype, ttl, value))
        pos = rdata + rdlength
    return flags & 0xF, records, data[start:pos], offsets


_TTL_RDLENGTH = struct.Struct("!IH")
# Owner = a pointer to the question name (offset 12), then type and class IN.
_OWNER_TYPE_IN = {TYPE_A: b"\xc0\x0c\x00\x01\x00\x01", TYPE_AAAA: b"\xc0\x0c\x00\x1c\x00\x01"}
_RDLENGTH = {TYPE_A: 4, TYPE_AAAA: 16}


def read_address_answers(data: bytes, question: bytes, qtype: int):
    """``read_answers`` for the usual reply to an A or AAAA question: every answer record
    is of that type and owned by the question name, written as a pointer to it. Then the
    records are the whole chain and no name has to be read. Returns (rcode, Section or None
    when there are no records); None for any other reply (use ``read_answers``)."""
    prefix = _OWNER_TYPE_IN.get(qtype)
    if prefix is None or len(data) < 12:
        return None
    _id, flags, qd, an, _ns, _ar = HEADER.unpack_from(data)
    start = 12 + len(question)
    if qd != 1 or flags & FLAG_TC or data[12:start].lower() != question:
        return None
    if not an:
        return flags & 0xF, None
    rdlength = _RDLENGTH[qtype]
    step = 12 + rdlength
    end = start + an * step
    if end > len(data):
        return None
    offsets, ttls, addresses = [], [], []
    pos = start
    for index in range(an):
        if data[pos : pos + 6] != prefix:
            return None
        ttl, length = _TTL_RDLENGTH.unpack_from(data, pos + 6)
        if length != rdlength or ttl >= 0x80000000:
            return None
        rdata = data[pos + 12 : pos + step]
        addresses.append((socket.inet_ntoa(rdata) if rdlength == 4 else ipaddress.IPv6Address(bytes(rdata)).compressed, index))
        offsets.append(pos + 6 - start)
        ttls.append(ttl)
        pos += step
    return flags & 0xF, Section(data[start:end], offsets, ttls, addresses, len(question) - 4)


# -- cached answer sections -----------------------------------------------------------------


# The longest TTL handed out or kept (unbound's cache-max-ttl default): an upstream's TTL of
# years would otherwise pin a name's answer, and the addresses it opened, for as long.
MAX_TTL = 86400


def capped_ttl(ttl: int) -> int:
    """``ttl`` as the resolver uses it: RFC 2181 section 8 reads a TTL with the top bit set as
    zero, and none exceeds MAX_TTL."""
    if ttl >= 1 << 31:
        return 0
    return min(ttl, MAX_TTL)


class Section:
    """An answer section in wire form, with what is needed to hand it out again later.

    ``name_len``: length of the question name it was built behind (pointers may refer to it).
    ``addresses``: (address text, index of its record) for every A/AAAA record.
    """

    __slots__ = ("data", "count", "ttl_offsets", "ttls", "addresses", "name_len", "_memo")

    def __init__(self, data: bytes, ttl_offsets, ttls, addresses, name_len: int):
        ttls = tuple(ttls)
        ttl_offsets = tuple(ttl_offsets)
        if ttls and max(ttls) > MAX_TTL:  # rare; checked cheaply on every fresh answer
            # What the devbox is told is what the cache and the firewall use.
            capped = tuple(capped_ttl(ttl) for ttl in ttls)
            buf = bytearray(data)
            for offset, ttl in zip(ttl_offsets, capped):
                _TTL.pack_into(buf, offset, ttl)
            data, ttls = bytes(buf), capped
        self.data = data
        self.count = len(ttls)
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls
        self.addresses = tuple(addresses)
        self.name_len = name_len
        self._memo = None

    @property
    def min_ttl(self) -> int | None:
        return min(self.ttls, default=None)

    def found(self) -> list[tuple[str, int]]:
        ttls = self.ttls
        return [(address, ttls[i]) for address, i in self.addresses]

    def aged(self, elapsed: float) -> tuple[bytes, list[tuple[str, int]], int | None]:
        """(section, [(address, ttl)], smallest ttl) with every TTL lowered by ``elapsed``
        seconds, rounded up and never below 1 (as AnswerCache.get). Re-packed at most once
        per second of age; in between the same bytes are handed out."""
        whole = math.floor(elapsed)
        memo = self._memo
        if memo is not None and memo[0] == whole:
            return memo[1], memo[2], memo[3]
        # ceil(ttl - elapsed) == ttl - floor(elapsed) for integer TTLs.
        ttls = [max(1, ttl - whole) for ttl in self.ttls]
        if ttls == list(self.ttls):
            data = self.data
        else:
            buf = bytearray(self.data)
            for offset, ttl in zip(self.ttl_offsets, ttls):
                _TTL.pack_into(buf, offset, ttl)
            data = bytes(buf)
        found = [(address, ttls[i]) for address, i in self.addresses]
        smallest = min(ttls, default=None)
        self._memo = (whole, data, found, smallest)  # one tuple: a racing reader sees old or new
        return data, found, smallest


def section_from_records(qname: str, qtype: int, records) -> Section | None:
    """A Section for dnslib ``records`` answering ``qname``/``qtype`` (packed by dnslib)."""
    from dnslib import DNSHeader, DNSQuestion, DNSRecord

    from .message import addresses_with_ttl

    message = DNSRecord(DNSHeader(qr=1), questions=[DNSQuestion(qname, qtype)], rr=list(records)).pack()
    _id, _flags, _qd, an, _ns, _ar = HEADER.unpack_from(message)
    pos = 12
    while message[pos] != 0:  # our own question: plain labels
        pos += 1 + message[pos]
    name_len = pos + 1 - 12
    start = pos + 1 + 4
    offsets, ttls = [], []
    pos = start
    for _ in range(an):
        pos = _skip_name(message, pos)
        if pos is None:
            return None
        _rtype, _rclass, ttl, rdlength = _RR_FIXED.unpack_from(message, pos)
        offsets.append(pos + 4 - start)
        ttls.append(ttl)
        pos += 10 + rdlength
    if an != len(records):
        return None
    found = addresses_with_ttl(records)
    indices = [i for i, rr in enumerate(records) if rr.rtype in (TYPE_A, TYPE_AAAA)]
    addresses = [(address, i) for (address, _ttl), i in zip(found, indices)]
    return Section(message[start:pos], offsets, ttls, addresses, name_len)


def _skip_name(data: bytes, pos: int) -> int | None:
    for _ in range(128):
        length = data[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            return pos + 2
        pos += 1 + length
    return None
