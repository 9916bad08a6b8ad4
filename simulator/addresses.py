"""Addresses for devboxes on the bridge: IP, MAC, nft key and port name from one slot number.

Slots are handed out next-fit (never the one just freed), so a recently removed devbox's
address, conntrack entries and veth name are not reused while the kernel may still hold them.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Address:
    slot: int
    ip: str
    mac: str
    key: str  # nft chain/set suffix
    port: str  # bridge port name in the router namespace (<= 15 chars)


class AddressPool:
    def __init__(self, subnet: str):
        self.network = ipaddress.IPv4Network(subnet)
        if self.network.prefixlen > 24:
            raise ValueError(f"devbox subnet {subnet} is too small; use a /24 or larger")
        self.gateway = str(self.network.network_address + 1)
        # Slots 2 .. size-2: .0 is the network, .1 the gateway, the last the broadcast.
        self._first, self._last = 2, self.network.num_addresses - 2
        self._next = self._first
        self._used: set[int] = set()
        self._retired: set[int] = set()  # slots whose kernel state could not be removed
        self._lock = threading.Lock()

    def allocate(self) -> Address:
        with self._lock:
            span = self._last - self._first + 1
            for _ in range(span):
                slot = self._next
                self._next = self._first if slot == self._last else slot + 1
                if slot not in self._used:
                    self._used.add(slot)
                    return self.address(slot)
        raise RuntimeError(f"no free devbox address left in {self.network}")

    def release(self, slot: int) -> None:
        with self._lock:
            if slot not in self._retired:
                self._used.discard(slot)

    def retire(self, slot: int) -> None:
        """Never give ``slot`` out again (until a restart): its kernel state may be left over."""
        with self._lock:
            self._retired.add(slot)
            self._used.add(slot)

    def address(self, slot: int) -> Address:
        ip = self.network.network_address + slot
        # Locally administered unicast MAC carrying the slot, so it is unique on the bridge.
        mac = "02:d5:%02x:%02x:%02x:%02x" % tuple(slot.to_bytes(4, "big"))
        return Address(slot=slot, ip=str(ip), mac=mac, key=f"d{slot:x}", port=f"dp{slot:x}")
