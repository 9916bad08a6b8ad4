"""Hostname patterns from a network policy, and matching query names against them.

Pure: no sockets, no dnslib. Two kinds of pattern exist:

* exact ``api.example.com`` - matches that name only;
* wildcard ``*.example.com`` - matches every name *below* example.com at any depth
  (``a.example.com``, ``a.b.example.com``) and never ``example.com`` itself, so a policy
  must list the apex explicitly if it wants it.

Matching is a dict lookup for the exact name plus one dict lookup per parent suffix, so the
cost is O(labels in the query name), independent of how many patterns a policy has.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["HostnameMatcher", "normalise_name", "validate_pattern"]


def normalise_name(name: str) -> str:
    """Canonical form of a DNS name: lowercase, without one trailing dot (root -> "").

    DNS names are case-insensitive and the trailing dot only marks a name as fully
    qualified; both must not change a policy decision.
    """
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    return name


def validate_pattern(pattern: str) -> str:
    """Return the normalised pattern, or raise ValueError for one that could never be meant.

    A ``*`` is only understood as a whole leftmost label (``*.example.com``); anything else
    (``*``, ``a*.example.com``, ``*.*.example.com``) is rejected rather than silently being
    an exact name nobody can resolve.
    """
    norm = normalise_name(pattern.strip())
    if not norm:
        raise ValueError(f"empty hostname pattern: {pattern!r}")
    suffix = norm[2:] if norm.startswith("*.") else norm
    if not suffix or "*" in suffix:
        raise ValueError(f"unsupported hostname pattern: {pattern!r}")
    if any(label == "" for label in suffix.split(".")):
        raise ValueError(f"empty label in hostname pattern: {pattern!r}")
    return norm


class HostnameMatcher:
    """Matches query names against a fixed set of patterns.

    ``match`` returns the pattern as the caller spelled it (for the decision log), or None.
    When several patterns match, the exact name wins, then the longest wildcard suffix -
    the most specific rule is the one worth reporting.
    """

    __slots__ = ("_exact", "_wildcards", "_patterns")

    def __init__(self, patterns: Iterable[str]):
        # normalised name -> pattern as given; the first spelling of a duplicate wins.
        self._exact: dict[str, str] = {}
        # normalised suffix ("example.com" for "*.example.com") -> pattern as given.
        self._wildcards: dict[str, str] = {}
        self._patterns: tuple[str, ...] = tuple(patterns)
        for pattern in self._patterns:
            norm = validate_pattern(pattern)
            if norm.startswith("*."):
                self._wildcards.setdefault(norm[2:], pattern)
            else:
                self._exact.setdefault(norm, pattern)

    @property
    def patterns(self) -> tuple[str, ...]:
        return self._patterns

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards)

    def __repr__(self) -> str:
        return f"HostnameMatcher({list(self._patterns)!r})"

    def match(self, qname: str) -> str | None:
        name = normalise_name(qname)
        if not name:
            return None  # the root is never a policy target
        hit = self._exact.get(name)
        if hit is not None:
            return hit
        if not self._wildcards:
            return None
        # Walk parent suffixes longest first: "a.b.example.com" tries "b.example.com",
        # then "example.com", then "com". Starting after the first dot is what keeps
        # "*.example.com" from matching "example.com" itself, and splitting on dots (not
        # endswith) keeps it from matching "badexample.com".
        dot = name.find(".")
        while dot != -1:
            hit = self._wildcards.get(name[dot + 1 :])
            if hit is not None:
                return hit
            dot = name.find(".", dot + 1)
        return None
