"""Resource ids: ``<prefix>_`` + 21 base62 characters, sortable by creation time.

The 21 characters encode a 125-bit number: 48 bits of milliseconds, a 16-bit counter for ids
made within the same millisecond, and 61 random bits. The alphabet is in ASCII order, so a
plain string comparison orders ids by creation. That lets ``starting_after`` page by id even
when the item it names has been deleted meanwhile.
"""

from __future__ import annotations

import secrets
import threading
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LENGTH = 21

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _encode(value: int) -> str:
    chars = []
    for _ in range(LENGTH):
        value, digit = divmod(value, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    global _last_ms, _counter
    with _lock:
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            now = _last_ms  # clock went back or same millisecond: keep order with the counter
            _counter += 1
            if _counter >= 1 << 16:
                now += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = now
        value = (now << 77) | (_counter << 61) | secrets.randbits(61)
    return f"{prefix}_{_encode(value)}"


def looks_like(prefix: str, value: str) -> bool:
    body = value[len(prefix) + 1 :]
    return (
        value.startswith(prefix + "_")
        and len(body) == LENGTH
        and all(c in ALPHABET for c in body)
    )
