"""A devbox leaving the data plane: its allowed-connection counts are readable throughout,
and an address whose kernel state could not be removed is never given to another devbox."""

from __future__ import annotations

import threading
import time

import pytest

from netns.nft import NftError
from tests.dataplane.conftest import BLOCKED, make_policy

pytestmark = pytest.mark.privileged
COUNTED = [{"destination": BLOCKED, "protocol": "tcp", "port": 443, "connections": 1}]


def test_counts_read_while_the_devbox_leaves_are_its_counts(plane, devboxes):
    dataplane = plane[0]
    for _attempt in range(5):  # the window is short: a few departures
        box = devboxes.create(make_policy(allow_all=True))
        assert devboxes.run(box, "tcp", BLOCKED, "443") == "OK ping"
        stop, reads, wrong = threading.Event(), [0], []

        def reader():
            for _ in range(100_000):  # bounded; ends with the event
                if stop.is_set():
                    return
                try:
                    counts = dataplane.allowed_connections(box)
                except Exception as exc:  # an API 500 if it escaped
                    wrong.append(repr(exc))
                    return
                if counts != COUNTED:
                    wrong.append(counts)
                    return
                reads[0] += 1

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 5
            while reads[0] < 5:  # the readers are under way
                assert time.monotonic() < deadline and not wrong, wrong
                time.sleep(0.01)
            devboxes.runtime.shutdown(box)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        assert not wrong, wrong
        assert dataplane.allowed_connections(box) == COUNTED


def test_an_address_whose_removal_failed_is_not_given_out_again(plane, devboxes):
    dataplane = plane[0]
    box = devboxes.create(make_policy(allow_all=True))
    slot = dataplane.attached(box).address.slot
    real_apply = dataplane._nft.apply
    failed = []

    def apply_fails_once(doc):
        if not failed:
            failed.append(doc)
            raise NftError("Could not process rule: No buffer space available")  # as the kernel may
        return real_apply(doc)

    dataplane._nft.apply = apply_fails_once
    try:
        devboxes.runtime.shutdown(box)  # the removal fails: logged, the devbox still goes
    finally:
        dataplane._nft.apply = real_apply
    assert failed and dataplane.attached(box) is None
    dataplane.pool._next = slot  # as if the pool had come round to it
    again = devboxes.create(make_policy(allow_all=True))
    assert dataplane.attached(again).address.slot != slot
    assert devboxes.run(again, "tcp", BLOCKED, "443") == "OK ping"
