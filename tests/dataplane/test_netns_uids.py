"""Kernel state kept per uid outlives a devbox: a later devbox must never get its uid."""

from __future__ import annotations

import subprocess

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
    print("stored" if r >= 0 else f"error {ctypes.get_errno()}")
elif sys.argv[1] == "get":
    r = libc.syscall(keyctl, ctypes.c_long(10), USER_KEYRING, b"user", b"dbxsim-test-key", ctypes.c_long(0))
    print("found" if r >= 0 else "none")
else:
    libc.syscall(keyctl, ctypes.c_long(7), USER_KEYRING)  # KEYCTL_CLEAR
'''


def _keys(devboxes, devbox_id: str, action: str) -> str:
    devboxes.runtime.write_file(devbox_id, "keys.py", KEYS.encode())
    out = devboxes.sh(devbox_id, f"/usr/bin/python3 keys.py {action}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("plane", ["netns"], indirect=True)
def test_a_devboxs_keyring_never_reaches_a_later_devbox(devboxes):
    runtime = devboxes.runtime
    first = devboxes.create(None)
    first_uid = runtime._get(first).sandbox.uid
    try:
        assert _keys(devboxes, first, "put") == "stored"
        assert _keys(devboxes, first, "get") == "found"  # the check can see a key
        slot = runtime.dataplane.attached(first).address.slot
        runtime.shutdown(first)
        # Its address is free, and is the next one given out, as after a restart (the pool
        # starts again from the first address): before uids were unique, so was its uid.
        runtime.dataplane.pool._next = slot
        later = [devboxes.create(None) for _ in range(3)]
        assert runtime.dataplane.attached(later[0]).address.slot == slot
        assert first_uid not in {runtime._get(d).sandbox.uid for d in later}
        for devbox_id in later:
            assert _keys(devboxes, devbox_id, "get") == "none"
    finally:
        # The kernel keeps the key until reboot: clear it as its uid.
        subprocess.run(
            ["setpriv", f"--reuid={first_uid}", f"--regid={first_uid}", "--clear-groups",
             "/usr/bin/python3", "-c", KEYS, "clear"],
            check=True, timeout=20,
        )
