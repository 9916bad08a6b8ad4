"""FreezeGate: a freeze (docker pause) waits for command starts under way, starts wait for a
freeze waiting or under way, and a waiting freeze goes before new starts."""

from __future__ import annotations

import threading

from simulator.runtime.freeze_gate import FreezeGate

NOT_YET = 0.2  # how long "does not happen" is watched for


def _in_thread(fn) -> tuple[threading.Thread, threading.Event]:
    entered = threading.Event()
    release = threading.Event()

    def run():
        with fn():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.release = release  # type: ignore[attr-defined]
    return thread, entered


def test_a_freeze_waits_for_starts_and_new_starts_wait_for_it():
    gate = FreezeGate()
    start, started = _in_thread(gate.starting)
    assert started.wait(5)
    freeze, frozen = _in_thread(gate.freezing)
    assert not frozen.wait(NOT_YET)  # a start is under way
    late, late_started = _in_thread(gate.starting)
    assert not late_started.wait(NOT_YET)  # the waiting freeze goes first
    start.release.set()
    assert frozen.wait(5) and not late_started.is_set()
    freeze.release.set()
    assert late_started.wait(5)
    late.release.set()
    for thread in (start, freeze, late):
        thread.join(5)
        assert not thread.is_alive()


def test_starts_run_side_by_side_without_a_freeze():
    gate = FreezeGate()
    threads = [_in_thread(gate.starting) for _ in range(4)]
    assert all(entered.wait(5) for _thread, entered in threads)
    for thread, _entered in threads:
        thread.release.set()
        thread.join(5)
