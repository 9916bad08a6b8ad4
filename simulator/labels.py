"""Names of resources (network policies, devboxes, blueprints, snapshots) are labels people
read in lists, the CLI's tables and the server's log: never control characters (a line break
in a name would forge a log line; NUL and escapes garble a terminal)."""

from __future__ import annotations

from simulator.errors import InvalidRequest


def reject_control_characters(field: str, value: str) -> str:
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):  # C0, DEL, C1
        raise InvalidRequest(f"{field} must not contain control characters (NUL, line breaks, tabs, DEL)")
    return value
