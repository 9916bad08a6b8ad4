"""The decision-log record the resolver emits once per query."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["QueryEvent", "VERDICTS"]

VERDICTS = ("allowed", "denied", "error")


@dataclass(frozen=True)
class QueryEvent:
    """One resolver decision.

    verdict: "allowed" | "denied" | "error".
    reason:  why - "allow_all", "pattern", "local" (allowed); "deny_all",
             "no_matching_pattern", "unknown_client" (denied); "upstream_error", "client_busy",
             "cname_loop", "cname_depth", "on_answer_failed", "bad_request",
             "internal_error" (error).
    addresses: A/AAAA addresses handed to the client (canonical text), in answer order.
    ttl:     the smallest TTL in the answer section, None when it is empty.
    time:    wall-clock time (time.time()) when the query arrived.
    """

    client_ip: str
    qname: str
    qtype: str
    verdict: str
    reason: str
    matched_pattern: str | None = None
    addresses: list[str] = field(default_factory=list)
    ttl: int | None = None
    error: str | None = None
    time: float = 0.0
    rcode: str = "NOERROR"
