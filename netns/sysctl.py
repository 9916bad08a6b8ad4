"""Per-namespace sysctls through /proc/sys, in-process.

``/proc/sys/net/*`` resolves against the network namespace of the *thread* that opens the file,
so a thread-level ``namespaces.entered(target)`` is enough: no ``ip netns exec sysctl``.

Keys are dotted (``net.ipv4.ip_forward``) or slash paths relative to /proc/sys
(``net/ipv4/conf/eth0.100/rp_filter``; use the slash form when an interface name has a dot).
"""

from __future__ import annotations

import os
from typing import Mapping

from netns import namespaces

PROC_SYS = "/proc/sys"


class SysctlError(RuntimeError):
    pass


def key_path(key: str) -> str:
    rel = key if "/" in key else key.replace(".", "/")
    rel = rel.strip("/")
    if not rel or ".." in rel.split("/"):
        raise ValueError(f"invalid sysctl key {key!r}")
    return os.path.join(PROC_SYS, rel)


def _read_here(key: str) -> str:
    with open(key_path(key)) as f:
        return f.read().strip()


def _write_here(key: str, value: str | int) -> None:
    with open(key_path(key), "w") as f:
        f.write(f"{value}\n")


def read(target: namespaces.Target, key: str) -> str:
    with namespaces.entered(target):
        return _read_here(key)


def exists(target: namespaces.Target, key: str) -> bool:
    with namespaces.entered(target):
        return os.path.exists(key_path(key))


def write(target: namespaces.Target, key: str, value: str | int, *, verify: bool = False) -> None:
    write_many(target, {key: value}, verify=verify)


def write_many(
    target: namespaces.Target,
    values: Mapping[str, str | int],
    *,
    verify: bool = False,
    missing_ok: bool = False,
) -> None:
    """Write several sysctls in one namespace switch; ``verify`` reads each one back.

    ``missing_ok`` silently skips keys whose /proc/sys file does not exist (e.g. IPv6 sysctls on a
    kernel without IPv6).
    """
    with namespaces.entered(target):
        for key, value in values.items():
            p = key_path(key)
            if missing_ok and not os.path.exists(p):
                continue
            try:
                _write_here(key, value)
            except OSError as e:
                raise SysctlError(f"cannot set {key}={value} in namespace {target!r}: {e}") from e
            if verify:
                got = _read_here(key)
                if got != str(value):
                    raise SysctlError(f"{key} in namespace {target!r} reads {got!r} after writing {value!r}")
