"""ReplyWait: when a query polls for its upstream reply and when it sleeps (pure)."""

from __future__ import annotations

import pytest

from dns.reply_wait import EXPLORE, ReplyWait

FAST, SLOW = 0.0002, 0.0004  # seconds; both under the 1 ms bound below


def measured(polling: float | None, sleeping: float | None, rtt: float | None = FAST) -> ReplyWait:
    wait = ReplyWait(poll_below=0.001)
    wait.rtt, wait.rtt_polling, wait.rtt_sleeping = rtt, polling, sleeping
    return wait


# (rtt, polling, sleeping, in_flight, cpus) -> choice
@pytest.mark.parametrize(
    "state, in_flight, cpus, expected",
    [
        ((None, None, None), 1, 2, None),  # no round trip known yet: sleep, just measure
        ((0.005, FAST, SLOW), 1, 2, None),  # a server milliseconds away: never poll
        ((FAST, FAST, SLOW), 2, 2, None),  # another query in flight
        ((FAST, FAST, SLOW), 1, 1, None),  # one CPU: polling would starve the server
        ((FAST, None, None), 1, 2, True),  # polling not measured yet: try it
        ((FAST, FAST, None), 1, 4, False),  # sleeping not measured yet: try it
        ((FAST, FAST, SLOW), 1, 2, True),  # polling measured faster
        ((FAST, SLOW, FAST), 1, 2, False),  # sleeping measured faster (e.g. steal time)
        ((FAST, FAST, FAST), 1, 2, False),  # a tie: do not burn CPU for nothing
    ],
)
def test_choice(state, in_flight, cpus, expected):
    rtt, polling, sleeping = state
    assert measured(polling, sleeping, rtt).choose(in_flight, cpus) is expected


@pytest.mark.parametrize("polling, sleeping, preferred", [(FAST, SLOW, True), (SLOW, FAST, False)])
def test_every_explore_th_eligible_query_takes_the_other_way(polling, sleeping, preferred):
    wait = measured(polling, sleeping)
    choices = [wait.choose(1, 2) for _ in range(EXPLORE * 4)]
    assert choices.count(not preferred) == 4
    assert choices.count(preferred) == EXPLORE * 4 - 4
    # Ineligible queries do not advance the count.
    assert [wait.choose(2, 2) for _ in range(EXPLORE)] == [None] * EXPLORE


def test_record_smooths_each_way_separately():
    wait = ReplyWait(poll_below=0.001)
    wait.record(0.0008, None)
    assert (wait.rtt, wait.rtt_polling, wait.rtt_sleeping) == (0.0008, None, None)
    wait.record(0.0004, True)
    assert wait.rtt_polling == 0.0004 and wait.rtt_sleeping is None
    assert wait.rtt == pytest.approx(0.0008 + (0.0004 - 0.0008) / 8)
    wait.record(0.0006, False)
    wait.record(0.0002, False)
    assert wait.rtt_sleeping == pytest.approx(0.0006 + (0.0002 - 0.0006) / 8)
    assert wait.rtt_polling == 0.0004


def test_a_slower_machine_turns_polling_off():
    """Polling measured fast at first, then slower than sleeping: the preference flips."""
    wait = measured(FAST, SLOW)
    assert wait.choose(1, 2) is True
    for _ in range(40):
        wait.record(0.0009, True)  # e.g. the hypervisor now takes CPU from the server we poll for
        wait.record(0.0003, False)
    wait._eligible = 0
    assert wait.choose(1, 2) is False


def test_forget_stops_polling_until_the_server_answers_again():
    wait = measured(FAST, SLOW)
    wait.forget()
    assert wait.choose(1, 2) is None
    wait.record(FAST, None)
    assert wait.choose(1, 2) is True
