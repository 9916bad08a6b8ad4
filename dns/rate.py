"""Token buckets per client: how long a client's next query must wait.

DnsServer paces each TCP connection with it (a client may pipeline thousands of queries into a
few segments, which no per-packet firewall limit sees); UDP is limited by the firewall before
it reaches the resolver.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ClientRates"]


class ClientRates:
    """``rate`` queries a second per client after a burst of ``burst``. ``delay(client)`` takes
    one and says how many seconds the caller should wait before serving it (0.0: now); a
    client's concurrent callers queue behind one another, each waiting its turn."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 4096):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when counted)
        self._lock = threading.Lock()

    def delay(self, client: str) -> float:
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate) - 1  # below 0: owed
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > self._max_clients:
                self._forget_full(now)
            return 0.0 if tokens >= 0 else -tokens / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: a forgotten client starts full, the same."""
        full = [c for c, (tokens, then) in self._buckets.items() if tokens + (now - then) * self.rate >= self.burst]
        for client in full:
            del self._buckets[client]
