"""Apply nftables JSON documents in a network namespace, in-process through libnftables.

One ``Nft`` holds one libnftables context. libnftables 1.0.6 opens its netlink socket in
``nft_ctx_new()`` and keeps it for the context's lifetime (it has no reopen path), and a
netlink socket belongs to the network namespace of the thread that created it. So the
context is created while the calling thread is temporarily ``setns``'d into the target
namespace, and the thread goes straight back; every later command, from any thread, talks
to the target namespace's nf_tables (verified in tests/netns/test_nft_apply.py).

Every ``apply`` is one libnftables run = one nf_tables transaction: on any error nothing is
applied. Calls are serialized by a lock (a context is not thread-safe).

libnftables waits for the kernel's answers with ``select()``: a context whose socket is
descriptor 1024 or more aborts the whole process on its first command ("bit out of range 0 -
FD_SETSIZE on fd_set", measured). The simulator makes its one context at start, when
descriptors are few; ``Nft`` refuses (NftError) rather than make one that would abort.

Two exceptions to "everything through here", both documents that change set elements only:
the resolver's per-answer ``add element`` into a learned set, and a policy update. They go
through ``netns.nft_elements`` (raw netlink, ~5-15x cheaper, since libnftables re-reads its
whole table/set cache on every call).
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from typing import Any

from netns.ruleset import OUR_TABLES

CLONE_NEWNET = 0x40000000
FD_SETSIZE = 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


class NftError(RuntimeError):
    """libnftables refused a command; ``str(err)`` is its error message."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _check_low_descriptor_free() -> None:
    """The context's socket takes the lowest free descriptor: it must be below FD_SETSIZE."""
    probe = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(probe)
    if probe >= FD_SETSIZE:
        raise NftError(f"no descriptor below {FD_SETSIZE} is free (the lowest is {probe}): libnftables, which "
                       "waits with select(), would abort the process")


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad network namespace name: {name!r}")
    return f"/run/netns/{name}"


class Nft:
    """libnftables bound to network namespace ``netns`` (a name under /run/netns), or to the
    calling thread's current namespace when ``netns`` is None."""

    def __init__(self, netns: str | None = None) -> None:
        import nftables  # the pip-nftables ctypes binding

        self.netns = netns
        self._lock = threading.Lock()
        _check_low_descriptor_free()
        if netns is None:
            self._nft = nftables.Nftables()
        else:
            target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(target)
                    try:
                        self._nft = nftables.Nftables()
                    finally:
                        try:
                            _setns(orig)
                        except OSError:  # pragma: no cover - cannot continue in a wrong netns
                            os.abort()
                finally:
                    os.close(orig)
            finally:
                os.close(target)
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    # ------------------------------------------------------------------ core

    def _run(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        text = json.dumps(doc, separators=(",", ":"))
        with self._lock:
            if self._nft is None:
                raise NftError("Nft context is closed")
            rc, out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError((err or "").strip() or f"libnftables failed (rc={rc})")
        return json.loads(out) if out else None

    def apply(self, doc: dict[str, Any]) -> None:
        """Run a ``{"nftables": [...]}`` document as one atomic transaction."""
        if not isinstance(doc, dict) or not isinstance(doc.get("nftables"), list):
            raise NftError('document must be {"nftables": [...]}')
        if not doc["nftables"]:
            return
        self._run(doc)

    def list_ruleset(self) -> dict[str, Any]:
        return self._run({"nftables": [{"list": {"ruleset": None}}]}) or {"nftables": []}

    def list_tables(self) -> list[tuple[str, str]]:
        out = self._run({"nftables": [{"list": {"tables": None}}]}) or {"nftables": []}
        return [(o["table"]["family"], o["table"]["name"]) for o in out["nftables"] if "table" in o]

    def list_set(self, family: str, table: str, name: str) -> list[Any]:
        """Elements of a set or map, as libnftables JSON (plain values, or
        ``{"elem": {"val", "timeout", "expires"}}`` objects for timeout sets, or
        ``[key, value]`` pairs for maps)."""
        ref = {"family": family, "table": table, "name": name}
        try:
            out = self._run({"nftables": [{"list": {"set": ref}}]})
        except NftError:
            out = self._run({"nftables": [{"list": {"map": ref}}]})
        for o in (out or {}).get("nftables", []):
            obj = o.get("set") or o.get("map")
            if obj is not None:
                return list(obj.get("elem", []))
        return []

    def delete_our_tables(self) -> list[tuple[str, str]]:
        """Delete the tables netns.ruleset owns (``inet devbox_sim``, ``bridge devbox_sim_br``)
        if present, in one transaction; other tables (also other ``devbox_sim*`` ones, such as
        netns/links.py's uplink tables) are left alone. Returns what was deleted."""
        ours = [t for t in self.list_tables() if t in OUR_TABLES]
        if ours:
            self.apply({"nftables": [{"delete": {"table": {"family": f, "name": n}}} for f, n in ours]})
        return ours

    def close(self) -> None:
        with self._lock:
            self._nft = None  # Nftables.__del__ frees the context

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Nft", "NftError", "netns_path"]
