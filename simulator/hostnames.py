"""Validation and normalisation of ``allowed_hostnames`` entries.

An entry is an exact DNS name (``github.com``) or a wildcard whose whole first label is ``*``
(``*.example.com``). ``*.example.com`` matches every name below example.com at any depth and
never example.com itself (matching is in ``dns.patterns``). Entries are stored normalised:
lower case, no trailing dot, IDN labels in punycode by UTS-46 (IDNA 2008) non-transitional
rules (``bücher.de`` -> ``xn--bcher-kva.de``, ``faß.de`` -> ``xn--fa-hia.de``). A label may
hold "_" (``_dmarc.example.com``); an internationalised one may not (IDNA 2008 forbids it).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import idna

from simulator.errors import InvalidRequest

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Letters, digits, inner hyphens, and "_" anywhere: DNS names hold underscores
# (``_dmarc.example.com``, ``_http._tcp.example.com``, some hosts' own names), the offline
# world serves them, and the resolver matches them like any other name.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")


def normalise_pattern(raw: object, where: str = "allowed_hostnames") -> str:
    if not isinstance(raw, str):
        raise InvalidRequest(f"{where}: expected a string, got {type(raw).__name__}")
    shown = raw if len(raw) <= 80 else raw[:77] + "..."

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"{where}: {shown!r} is not a valid hostname: {why}")

    if raw == "":
        raise bad("it is empty")
    if any(c.isspace() for c in raw):
        raise bad("it contains white space")
    if "://" in raw:
        raise bad("it looks like a URL; give the bare hostname, e.g. 'github.com'")
    if "/" in raw:
        raise bad("it contains a path or a CIDR; give a bare hostname (CIDRs go in allowed_cidrs)")
    if _is_ip(raw.strip("[]")):
        if ":" in raw:
            raise bad("IP addresses are not hostnames, and devboxes are IPv4-only (no IPv6 egress)")
        raise bad("IP addresses are not hostnames; use allowed_cidrs with a /32")
    if ":" in raw:
        raise bad("ports are not part of a hostname (port rules go in allowed_cidrs)")
    name = raw.lower()
    if name.endswith("."):
        name = name[:-1]
    if name in ("*", ""):
        raise bad("a wildcard needs a domain after it, e.g. '*.example.com'")
    wildcard = name.startswith("*.")
    body = name[2:] if wildcard else name
    if "*" in body:
        raise bad("a wildcard is only allowed as the whole first label, e.g. '*.example.com'")
    if not body.isascii():
        # UTS-46, non-transitional (IDNA 2008), as browsers and libidn2 resolve names:
        # faß.de is xn--fa-hia.de. Python's own "idna" codec is IDNA 2003, which made it
        # fass.de - another domain - so the policy opened a name its author never gave.
        try:
            body = _to_ascii(body)
        except UnicodeError as exc:  # idna.IDNAError is one
            raise bad(f"it is not a valid internationalised name ({exc})") from None
    labels = body.split(".")
    ascii_labels = []
    for label in labels:
        if label == "":
            raise bad("it has an empty label (two dots in a row, or a leading dot)")
        if len(label) > MAX_LABEL_LENGTH:
            raise bad(f"label {label[:20]!r}... is longer than {MAX_LABEL_LENGTH} characters")
        if not _LABEL.match(label):
            raise bad(f"label {label!r} may only hold letters, digits, '_' and inner hyphens")
        if label.startswith("xn--") and not _valid_a_label(label):
            raise bad(f"label {label!r} is not the punycode of an internationalised label")
        ascii_labels.append(label)
    if ascii_labels[-1].isdigit():
        raise bad("the top-level label is all digits")
    normalised = ".".join(ascii_labels)
    if wildcard:
        normalised = "*." + normalised
    if len(normalised) > MAX_NAME_LENGTH:
        raise bad(f"it is longer than {MAX_NAME_LENGTH} characters")
    return normalised


def _to_ascii(body: str) -> str:
    """UTS-46 (non-transitional) to punycode. Its STD3 rules refuse "_", so a name holding
    one is mapped without them (full-width letters and dots still map) and its labels are
    encoded one by one: ASCII labels as they are (the label check above judges them), the
    others by IDNA 2008."""
    if "_" not in body:
        return idna.encode(body, uts46=True, transitional=False).decode("ascii")
    mapped = idna.uts46_remap(body, std3_rules=False, transitional=False)
    return ".".join(label if label.isascii() else idna.encode(label).decode("ascii")
                    for label in mapped.split("."))


def _valid_a_label(label: str) -> bool:
    """An "xn--" label is punycode, in its one spelling, of text that is not all ASCII and that
    UTS-46 leaves as it is (already mapped: lower case, or Cherokee's upper case, which is its
    mapped form; NFC; not starting with a combining mark). Not IDNA 2008's own validity:
    names registered under IDNA 2003 (emoji domains such as xn--ls8h.la) are real and
    resolve by their ASCII form; a name given in Unicode goes by IDNA 2008 (see _to_ascii)."""
    try:
        text = label[4:].encode("ascii").decode("punycode")
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except UnicodeError:  # idna.IDNAError is one
        return False
    return (not text.isascii() and mapped == text and unicodedata.is_normalized("NFC", text)
            and not unicodedata.category(text[0]).startswith("M")
            and "xn--" + text.encode("punycode").decode("ascii") == label)


def normalise_patterns(raw: list[object]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for index, entry in enumerate(raw):
        seen.setdefault(normalise_pattern(entry, f"allowed_hostnames[{index}]"))
    return tuple(seen)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
