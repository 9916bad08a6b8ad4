"""Kernel state kept per uid outlives a devbox: devbox commands cannot use kernel keyrings
(seccomp), and a later devbox never gets an earlier one's uid anyway."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.privileged

# add_key(2) / keyctl(2) by number (no keyutils needed in the devbox).
KEYS = r'''
import ctypes, platform, sys
add_key, keyctl = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
USER_KEYRING = ctypes.c_long(-4)
if sys.argv[1] == "put":
    r = libc.syscall(add_key, b"user", b"dbxsim-test-key", b"secret", ctypes.c_size_t(6), USER_KEYRING)
else:
    r = libc.syscall(keyctl, ctypes.c_long(10), USER_KEYRING, b"user", b"dbxsim-test-key", ctypes.c_long(0))
print("ok" if r >= 0 else f"errno {ctypes.get_errno()}")
'''


@pytest.mark.parametrize("plane", ["netns"], indirect=True)
def test_keyrings_are_refused_and_uids_never_come_back(devboxes):
    import errno

    runtime = devboxes.runtime
    first = devboxes.create(None)
    runtime.write_file(first, "keys.py", KEYS.encode())
    for action in ("put", "get"):
        out = devboxes.sh(first, f"/usr/bin/python3 keys.py {action}")
        assert out.stdout.strip() == f"errno {errno.EPERM}", out.stderr
    first_uid = runtime._get(first).sandbox.uid
    slot = runtime.dataplane.attached(first).address.slot
    runtime.shutdown(first)
    # Its address is free and is the next one given out, as after a restart (the pool starts
    # again from the first address): before uids were unique, so was its uid.
    runtime.dataplane.pool._next = slot
    later = devboxes.create(None)
    assert runtime.dataplane.attached(later).address.slot == slot
    assert runtime._get(later).sandbox.uid != first_uid
