"""ClientRates: token buckets per client (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from dns.rate import ClientRates


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "rate,burst,steps,expected",
    [
        # (advance seconds, client) -> delay
        (10, 3, [(0, "a"), (0, "a"), (0, "a")], [0.0, 0.0, 0.0]),  # the burst is free
        (10, 3, [(0, "a")] * 5, [0.0, 0.0, 0.0, 0.1, 0.2]),  # then each waits its turn
        (10, 3, [(0, "a")] * 4 + [(0, "b")], [0.0, 0.0, 0.0, 0.1, 0.0]),  # per client
        (10, 2, [(0, "a"), (0, "a"), (0.1, "a"), (0.05, "a")], [0.0, 0.0, 0.0, 0.05]),  # refills at the rate
        (10, 2, [(0, "a"), (0, "a"), (60, "a"), (0, "a"), (0, "a")], [0.0, 0.0, 0.0, 0.0, 0.1]),  # never above the burst
    ],
)
def test_delays(rate, burst, steps, expected):
    clock = Clock()
    rates = ClientRates(rate, burst, clock=clock)
    got = []
    for advance, client in steps:
        clock.now += advance
        got.append(round(rates.delay(client), 6))
    assert got == expected


def test_refilled_buckets_are_forgotten_and_a_forgotten_client_starts_full():
    clock = Clock()
    rates = ClientRates(10, 2, clock=clock, max_clients=3)
    for client in ("a", "b", "c"):
        rates.delay(client)
    clock.now += 1.0  # all three full again
    rates.delay("d")
    assert set(rates._buckets) == {"d"}
    assert rates.delay("a") == 0.0 and rates.delay("a") == 0.0


@pytest.mark.parametrize("rate,burst", [(0, 1), (-1, 5), (5, 0)])
def test_nonsense_refused(rate, burst):
    with pytest.raises(ValueError):
        ClientRates(rate, burst)
