"""How to wait for one upstream server's reply: poll for it, or sleep until it comes.

A thread that sleeps in ``recv`` lets its CPU go idle, and waking an idle CPU again costs tens
of microseconds on a VM (the virtual CPU halts; the wake-up is an IPI through the hypervisor).
A forwarded query pays that twice more than a direct one. Polling (non-blocking ``recv`` in a
loop for a bounded time) keeps the CPU awake for the reply instead - but only pays when the
reply comes soon and the CPU it burns is not taken from the server being waited for. The
hypervisor may be short of physical CPUs (steal time), and then polling slows the reply down.

So, per server, ``ReplyWait`` keeps the round trip of each way of waiting (smoothed, as TCP's
SRTT) and polls only when:

  - the server usually answers within ``poll_below`` (a local upstream such as the offline
    world; never one milliseconds away, where a bounded poll would only burn CPU);
  - this is the only query in flight (under load a second query stops the poll at once, so at
    most one thread polls, and waiting threads leave the CPUs to the ones doing work);
  - the thread may run on two or more CPUs (on one, polling only delays the server);
  - polling has been measured faster than sleeping here and now. Every ``EXPLORE``-th eligible
    query takes the other way, so the comparison follows the machine as its load changes.

KVM's adaptive halt-polling and Linux's hybrid polling for fast block devices make the same
trade. This module is pure: the caller measures and does the socket work.
"""

from __future__ import annotations

__all__ = ["ReplyWait"]

WEIGHT = 0.125  # of each new sample in a smoothed round trip
EXPLORE = 8  # every EXPLORE-th eligible query waits the way not currently preferred


class ReplyWait:
    """Round trips to one server and the choice between polling and sleeping."""

    __slots__ = ("poll_below", "rtt", "rtt_polling", "rtt_sleeping", "_eligible")

    def __init__(self, poll_below: float):
        self.poll_below = poll_below
        self.rtt: float | None = None  # however it was waited for
        self.rtt_polling: float | None = None
        self.rtt_sleeping: float | None = None
        self._eligible = 0

    def choose(self, in_flight: int, cpus: int) -> bool | None:
        """How the query about to wait should: True poll first, False sleep (as the measured
        alternative to polling), None sleep because polling is no option now (module doc)."""
        if self.rtt is None or self.rtt > self.poll_below or in_flight != 1 or cpus < 2:
            return None
        if self.rtt_polling is None:
            return True
        if self.rtt_sleeping is None:
            return False
        self._eligible += 1
        prefer = self.rtt_polling < self.rtt_sleeping
        return not prefer if self._eligible % EXPLORE == 0 else prefer

    def record(self, rtt: float, polled: bool | None) -> None:
        """A reply came ``rtt`` seconds after the query, waited for as ``choose`` said."""
        self.rtt = _smooth(self.rtt, rtt)
        if polled is True:
            self.rtt_polling = _smooth(self.rtt_polling, rtt)
        elif polled is False:
            self.rtt_sleeping = _smooth(self.rtt_sleeping, rtt)

    def forget(self) -> None:
        """The server failed: no polling for it until it answers again."""
        self.rtt = None


def _smooth(old: float | None, sample: float) -> float:
    return sample if old is None else old + WEIGHT * (sample - old)
