"""One simulator per data dir: the lock ``serve`` takes first."""

import fcntl
import os
import subprocess
import sys

import pytest

from simulator.data_dir_lock import (
    LOCK_NAME,
    DataDirInUse,
    InstanceInUse,
    _lock,
    lock_data_dir,
    lock_instance,
    release_instance,
)
from tests.server import ServerProcess


def test_a_held_data_dir_cannot_be_locked_again_until_released(tmp_path):
    data = tmp_path / "data"
    fd = lock_data_dir(data)
    try:
        assert (data.stat().st_mode & 0o777) == 0o700
        assert (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # not inherited by what we start
        with pytest.raises(DataDirInUse, match=f"in use by another devbox-sim \\(pid {os.getpid()}\\)"):
            lock_data_dir(data)
    finally:
        os.close(fd)
    again = lock_data_dir(data)  # released with the descriptor (as when a process dies)
    os.close(again)


def test_an_instance_id_is_held_machine_wide_until_released(tmp_path):
    locks = tmp_path / "run"
    fd = lock_instance("c0ffee", locks)
    try:
        assert (locks / "c0ffee.lock").read_text() == f"{os.getpid()}\n"
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        with pytest.raises(InstanceInUse, match=f"c0ffee .* in use by another devbox-sim \\(pid {os.getpid()}\\)"):
            lock_instance("c0ffee", locks)
        os.close(lock_instance("beef01", locks))  # another id is another lock
    finally:
        os.close(fd)
    os.close(lock_instance("c0ffee", locks))


def test_a_released_instance_leaves_no_lock_file_and_a_waiting_opener_locks_a_new_one(tmp_path):
    """One file per data dir ever used piled up in /run/devbox-sim (1,497 on a test machine)."""
    locks = tmp_path / "run"
    fd = lock_instance("c0ffee", locks)
    stale = os.open(locks / "c0ffee.lock", os.O_RDWR)  # another starter opened it, not yet locked
    release_instance(fd, "c0ffee", locks)
    assert list(locks.iterdir()) == []
    # Its flock would succeed on the unlinked file: _lock sees that and locks the path anew.
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(stale)
    fd = lock_instance("c0ffee", locks)
    try:
        assert (locks / "c0ffee.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(InstanceInUse):
            lock_instance("c0ffee", locks)
    finally:
        release_instance(fd, "c0ffee", locks)


def test_a_lock_taken_on_a_file_unlinked_meanwhile_is_taken_again_on_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / "x.lock"
    real_flock = fcntl.flock
    unlinked = []

    def flock_after_unlink(fd, op):
        if not unlinked:  # the holder released and unlinked between our open and our flock
            os.unlink(path)
            unlinked.append(True)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_unlink)
    fd = _lock(path, lambda holder: AssertionError(holder))
    try:
        assert os.fstat(fd).st_ino == os.stat(path).st_ino and unlinked
    finally:
        os.close(fd)


def test_serve_refuses_a_data_dir_in_use_and_the_first_server_keeps_working(tmp_path):
    data = tmp_path / "data"
    headers = {"Authorization": "Bearer lock-token"}
    import httpx

    with ServerProcess(data) as first:
        made = httpx.post(f"{first.url}/v1/network-policies", json={"name": "kept"}, headers=headers)
        assert made.status_code == 200
        second = subprocess.run(
            [sys.executable, "-m", "simulator", "serve", "--runtime", "none", "--port", "0", "--data-dir", str(data)],
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"devbox-sim: error: data dir {data} is in use by another devbox-sim (pid {first.proc.pid}); "
            "stop it first, or give this one another --data-dir"
        )
        assert httpx.get(f"{first.url}/v1/network-policies/{made.json()['id']}", headers=headers).json() == made.json()
    with ServerProcess(data) as after:  # the first one's exit released it
        assert httpx.get(f"{after.url}/v1/network-policies", headers=headers).json()["total_count"] == 1
