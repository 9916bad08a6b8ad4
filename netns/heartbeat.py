"""The simulator's heartbeat in the router: forwarding lasts only while it beats.

``netns.deadman`` closes the router when the simulator dies, but it is a process too: a
service manager's SIGKILL of the whole unit (``systemctl kill``, the end of a stop that took
too long, an OOM kill of the group) takes both at once, and what a policy allowed stayed open.
This needs no process: the router's forward chain drops everything unless its ``alive`` set
holds an element (``netns.ruleset.ALIVE_SET``) which the kernel expires ``timeout`` seconds
after it was last written; a thread of the simulator writes it every ``interval`` seconds
(raw netlink, ``netns.nft_elements``). However the simulator ends, or if it hangs, the router
stops forwarding within ``timeout`` seconds; the watchdog stays the quicker path for a death.
"""

from __future__ import annotations

import logging
import threading

from netns.nft_elements import SetElements

log = logging.getLogger(__name__)

NFPROTO_IPV4 = bytes([2])  # the set's key: an nf_proto, one byte


class Heartbeat:
    def __init__(self, netns: str, table: str, set_name: str, *, timeout: int, interval: float = 1.0):
        if not 0 < interval < timeout:
            raise ValueError(f"the interval ({interval}) must be shorter than the timeout ({timeout})")
        self.timeout, self.interval = timeout, interval
        self._table, self._set = table, set_name
        self._elements = SetElements(netns)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{netns}", daemon=True)

    def beat(self) -> None:
        self._elements.add_keys("inet", self._table, self._set, [(NFPROTO_IPV4, self.timeout)])

    def start(self) -> Heartbeat:
        try:
            self.beat()  # at once: the element bootstrap wrote may be old by now
        except BaseException:
            self._elements.close()
            raise
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # the router being torn down, say: try again, fail closed
                log.warning("router heartbeat failed: %r", exc)

    def stop(self) -> None:
        """Stop beating (forwarding then ends within ``timeout``, unless the tables go first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._elements.close()
