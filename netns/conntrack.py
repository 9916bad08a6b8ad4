"""Conntrack entries inside a namespace: list them and cut them (policy revocation).

Backend ``pyroute2`` (default): ``pyroute2.Conntrack`` (ctnetlink) in-process. Like every pyroute2
object it lives in the netlink worker thread of ``netns.namespaces`` and its socket is created
while that thread is setns()ed into the namespace (never ``Conntrack(netns=...)``, which forks).
Listing asks the kernel to filter on the original source address (CTA_FILTER, kernel >= 5.8)
and filters the rest here; deletion deletes each matching entry by its original tuple.

Backend ``cli``: the ``conntrack`` tool from conntrack-tools through ``ip netns exec``
(``nsenter --net`` for pid targets). ``backend="auto"`` uses pyroute2 and falls back to the CLI
if ctnetlink through pyroute2 fails.

Deleting the entry of an established TCP connection does not send anything to either end: the
next packet of the flow is seen by conntrack as a new (mid-stream) flow and goes through the
router's policy rules again, where a revoked destination is dropped.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

from netns import namespaces

log = logging.getLogger(__name__)

_PROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp", 132: "sctp"}
_PROTO_NUMS = {v: k for k, v in _PROTO_NAMES.items()}
_ENOENT = 2


class ConntrackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Flow:
    proto: str  # "tcp", "udp", "icmp", ... or the protocol number as a string
    src: str  # original direction
    dst: str
    sport: int | None  # None for protocols without ports (icmp: see icmp_id)
    dport: int | None
    state: str | None  # TCP state ("ESTABLISHED", "SYN_SENT", ...); None for other protocols
    reply_src: str | None = None  # reply direction (shows NAT)
    reply_dst: str | None = None
    icmp_id: int | None = None


def _proto_num(proto: str | int | None) -> int | None:
    if proto is None:
        return None
    if isinstance(proto, int):
        return proto
    p = proto.lower()
    if p.isdigit():
        return int(p)
    if p not in _PROTO_NUMS:
        raise ValueError(f"unknown protocol {proto!r}")
    return _PROTO_NUMS[p]


def _proto_name(num: int) -> str:
    return _PROTO_NAMES.get(num, str(num))


def _matches(flow: Flow, src: str | None, dst: str | None, dport: int | None, proto: int | None) -> bool:
    if src is not None and flow.src != src:
        return False
    if dst is not None and flow.dst != dst:
        return False
    if proto is not None and flow.proto != _proto_name(proto):
        return False
    if dport is not None and flow.dport != dport:
        return False
    return True


def _norm_ip(ip: str | None) -> str | None:
    return None if ip is None else str(ipaddress.IPv4Address(ip))


# ----------------------------------------------------------------------------- pyroute2 backend


def _ct(target: namespaces.Target):
    from pyroute2 import Conntrack

    if isinstance(target, int):
        raise TypeError("pyroute2 backend: use a named namespace (or the cli backend for a pid)")
    return namespaces.cached("conntrack", target, Conntrack)


def _entry_to_flow(e) -> Flow:
    o, r = e.tuple_orig, e.tuple_reply
    state = None
    if e.protoinfo is not None:
        with_state = getattr(e.protoinfo, "state_name", None)
        state = with_state() if callable(with_state) else None
    return Flow(
        proto=_proto_name(o.proto),
        src=o.saddr,
        dst=o.daddr,
        sport=o.sport if o.proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132) else None,
        dport=o.dport if o.proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132) else None,
        state=state,
        reply_src=r.saddr if r is not None else None,
        reply_dst=r.daddr if r is not None else None,
        icmp_id=o.icmp_id if o.proto == socket.IPPROTO_ICMP else None,
    )


def _pr2_entries(target, src, dst, dport, proto):
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    ct = _ct(target)
    # Kernel-side filter on the source address only (port filters need the protocol and
    # pyroute2 re-checks the filter against every entry anyway); the rest is filtered here.
    flt = NFCTAttrTuple(saddr=src) if src is not None else None
    out = []
    for e in ct.dump_entries(tuple_orig=flt):
        f = _entry_to_flow(e)
        if _matches(f, src, dst, dport, proto):
            out.append((f, e))
    return out


def _pr2_flows(target, src, dst, dport, proto) -> list[Flow]:
    return [f for f, _ in _pr2_entries(target, src, dst, dport, proto)]


def _pr2_delete(target, src, dst, dport, proto) -> int:
    ct = _ct(target)
    n = 0
    for _f, e in _pr2_entries(target, src, dst, dport, proto):
        try:
            ct.delete(e)
            n += 1
        except Exception as ex:  # gone meanwhile (timed out / closed): not counted
            if getattr(ex, "code", None) == _ENOENT:
                continue
            raise
    return n


# ----------------------------------------------------------------------------- CLI backend

_KV = re.compile(r"(\w+)=(\S+)")


def _cli_prefix(target: namespaces.Target) -> list[str]:
    if target is None:
        return []
    if isinstance(target, int):
        return ["nsenter", f"--net=/proc/{target}/ns/net", "--"]
    namespaces.path(target)
    return ["ip", "netns", "exec", target]


def _cli_filter_args(src, dst, dport, proto) -> list[str]:
    args = ["-f", "ipv4"]
    if src is not None:
        args += ["-s", src]
    if dst is not None:
        args += ["-d", dst]
    if proto is not None:
        args += ["-p", _proto_name(proto)]
        if dport is not None:
            args += ["--dport", str(dport)]
    return args


def _cli(target, args: list[str]) -> subprocess.CompletedProcess:
    tool = shutil.which("conntrack")
    if tool is None:
        raise ConntrackError("the conntrack CLI (conntrack-tools) is not installed")
    return subprocess.run(_cli_prefix(target) + [tool, *args], capture_output=True, text=True, timeout=30)


def parse_cli_line(line: str) -> Flow | None:
    """Parse one line of ``conntrack -L`` output."""
    parts = line.split()
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    proto = parts[0]
    state = parts[3] if len(parts) > 3 and "=" not in parts[3] and not parts[3].startswith("[") else None
    kv = _KV.findall(line)
    orig: dict[str, str] = {}
    reply: dict[str, str] = {}
    for k, v in kv:
        if k in orig:
            if k in reply:
                continue
            reply[k] = v
        elif k in ("src", "dst", "sport", "dport", "type", "code", "id"):
            orig[k] = v
    if "src" not in orig or "dst" not in orig:
        return None

    def _int(d, k):
        return int(d[k]) if k in d else None

    return Flow(
        proto=proto,
        src=orig["src"],
        dst=orig["dst"],
        sport=_int(orig, "sport"),
        dport=_int(orig, "dport"),
        state=state if proto == "tcp" else None,
        reply_src=reply.get("src"),
        reply_dst=reply.get("dst"),
        icmp_id=_int(orig, "id") if proto == "icmp" else None,
    )


def _cli_flows(target, src, dst, dport, proto) -> list[Flow]:
    p = _cli(target, ["-L", *_cli_filter_args(src, dst, dport, proto)])
    if p.returncode != 0:
        raise ConntrackError(f"conntrack -L failed: {p.stderr.strip()}")
    out = []
    for line in p.stdout.splitlines():
        f = parse_cli_line(line)
        if f is not None and _matches(f, src, dst, dport, proto):
            out.append(f)
    return out


_DELETED = re.compile(r"(\d+) flow entries have been deleted")


def _cli_delete(target, src, dst, dport, proto) -> int:
    p = _cli(target, ["-D", *_cli_filter_args(src, dst, dport, proto)])
    m = _DELETED.search(p.stderr + p.stdout)
    if m:
        return int(m.group(1))
    if p.returncode != 0 and "0 flow entries" not in p.stderr:
        raise ConntrackError(f"conntrack -D failed: {p.stderr.strip()}")
    return 0


# ----------------------------------------------------------------------------- API


def _run(kind: str, target, src, dst, dport, proto, backend: str):
    src, dst = _norm_ip(src), _norm_ip(dst)
    proto_n = _proto_num(proto)
    if dport is not None and proto_n is None:
        raise ValueError("dport filter needs proto")
    pr2 = _pr2_flows if kind == "flows" else _pr2_delete
    cli = _cli_flows if kind == "flows" else _cli_delete
    if backend == "cli" or (backend == "auto" and isinstance(target, int)):
        return cli(target, src, dst, dport, proto_n)
    if backend not in ("auto", "pyroute2"):
        raise ValueError(f"unknown backend {backend!r}")
    try:
        return namespaces.netlink_call(pr2, target, src, dst, dport, proto_n)
    except (namespaces.NamespaceError, ValueError):
        raise
    except Exception as e:
        if backend == "pyroute2" or shutil.which("conntrack") is None:
            raise ConntrackError(f"conntrack {kind} in {target!r} failed: {e}") from e
        log.warning("ctnetlink via pyroute2 failed in %r (%s); using the conntrack CLI", target, e)
        return cli(target, src, dst, dport, proto_n)


def flows(
    ns: namespaces.Target,
    src: str | None = None,
    dst: str | None = None,
    *,
    dport: int | None = None,
    proto: str | int | None = None,
    backend: str = "auto",
) -> list[Flow]:
    """Conntrack entries in namespace ``ns`` whose ORIGINAL direction matches the filters."""
    return _run("flows", ns, src, dst, dport, proto, backend)


def delete(
    ns: namespaces.Target,
    src: str,
    dst: str | None = None,
    *,
    dport: int | None = None,
    proto: str | int | None = None,
    backend: str = "auto",
) -> int:
    """Delete entries whose original direction matches; returns how many were deleted."""
    if src is None:
        raise ValueError("delete() needs the source address")
    return _run("delete", ns, src, dst, dport, proto, backend)
