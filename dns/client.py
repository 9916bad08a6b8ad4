"""What the resolver needs to know about the devbox that sent a query.

The simulator builds one ``ClientView`` per devbox from its network policy; the resolver only
reads it. Keeping it a plain value object is what lets the resolver stay ignorant of
devboxes, policies and namespaces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .patterns import HostnameMatcher

__all__ = ["ClientView", "LocalAnswer"]

# (qname, qtype name such as "A") -> addresses the simulator serves itself, or None when the
# name is not one of its own (e.g. other devboxes).
LocalAnswer = Callable[[str, str], "list[str] | None"]


@dataclass(frozen=True)
class ClientView:
    """Policy-relevant facts about one DNS client.

    matcher:      allowed hostname patterns; None (or empty) means nothing is allowed.
    allow_all:    every name is allowed, the matcher is ignored.
    ipv6:         the client may use IPv6; when False, AAAA queries get an empty answer so
                  applications fall back to IPv4 instead of trying an address they cannot reach.
    local_answer: names answered by the simulator itself, before policy is applied.
    local_zone:   the simulator's own domain (e.g. "devbox.internal"): a name in it that
                  ``local_answer`` does not answer gets NXDOMAIN even where the policy allows
                  it, and never goes upstream (no upstream knows it; with a host uplink the
                  query would tell the real DNS about the devboxes).
    unmatched_reason: the reason given for a name denied when there is no pattern at all:
                  "deny_all" when the policy allows nothing; one that allows other things
                  (CIDRs, say) but no names says "no_matching_pattern", as with patterns.
    cache_scope:  the part of the answer cache the client reads and fills (the simulator: its
                  account). A cached answer's TTL has run down since someone asked: shared,
                  it would tell one account what another looked up, and when.
    """

    matcher: HostnameMatcher | None
    allow_all: bool
    ipv6: bool = False
    local_answer: LocalAnswer | None = None
    local_zone: str | None = None
    unmatched_reason: str = "deny_all"
    cache_scope: str | None = None

    def in_local_zone(self, qname: str) -> bool:
        zone = self.local_zone
        return zone is not None and (qname == zone or qname.endswith("." + zone))
