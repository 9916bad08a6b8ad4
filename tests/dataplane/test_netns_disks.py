"""The netns runtime's disk store: snapshots appear whole or not at all; references are names."""

from __future__ import annotations

import os
import secrets
import stat
import time

import pytest

pytestmark = pytest.mark.privileged


def test_netns_snapshot_disk_is_all_or_nothing(tmp_path):
    """A partial copy (a crash mid-snapshot) never shows as a disk and is removed on start."""
    from simulator.runtime.base import RuntimeFailure
    from simulator.runtime.netns_runtime import NetnsRuntime

    class NoPlane:  # the disk methods need no data plane
        devbox_ns_prefix = f"dbxs-t{secrets.token_hex(3)}"

    runtime = NetnsRuntime(NoPlane(), tmp_path)
    (runtime.disks_dir / "snp_cut.partial" / "home").mkdir(parents=True)
    runtime = NetnsRuntime(NoPlane(), tmp_path)
    assert list(runtime.disks_dir.iterdir()) == []
    with pytest.raises(RuntimeFailure, match="not a disk"):
        runtime.delete_disk("../../etc")


def _walk(root):
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk never follows symlinks by default
        for name in dirnames + filenames:
            yield os.path.join(dirpath, name)


@pytest.mark.parametrize("plane", ["netns"], indirect=True)  # netns disks are directories
def test_a_devbox_swapping_directories_for_symlinks_never_gets_host_files_into_a_snapshot(devboxes):
    runtime = devboxes.runtime
    assert runtime.name == "netns"
    devbox = devboxes.create(None)
    setup = devboxes.sh(devbox, "mkdir -p d && echo mine > d/x && ln -s /etc/shadow s && ln /etc/hostname h 2>/dev/null; true")
    assert setup.returncode == 0, setup.stderr
    # Swap d for a symlink to /etc and back, as fast as it can, while we snapshot.
    swapper = runtime.exec(devbox, "while :; do mv d d.real; ln -s /etc d; rm d; mv d.real d; done")
    taken, swapped = [], []
    home_dir = runtime.sandbox(devbox).home_dir
    try:
        deadline = time.monotonic() + 10  # bounded: until the swapper is seen at work
        while not (home_dir / "d.real").exists() and not (home_dir / "d").is_symlink():
            assert time.monotonic() < deadline, "the swapper never started"
            time.sleep(0.001)
        for n in range(30):
            snapshot_id = f"snp_race{os.getpid()}x{n}"
            taken.append(runtime.snapshot_disk(devbox, snapshot_id))
            home = runtime.disks_dir / snapshot_id / "home"
            for path in _walk(home):
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    continue
                assert st.st_uid == 0 and not st.st_mode & (stat.S_ISUID | stat.S_ISGID), path
                # Only what the devbox made: never a file of the host's /etc.
                assert os.path.relpath(path, home) in {"d", "d.real", "d/x", "d.real/x", "probe.py"}, path
            swapped.append(os.path.islink(home / "d") or (home / "d.real").exists())
            assert os.readlink(home / "s") == "/etc/shadow"
            assert not (home / "h").exists()  # a hard link to root's file (if it could make one)
    finally:
        _kill(swapper)
        for disk in taken:
            runtime.delete_disk(disk)
    assert not any((runtime.disks_dir / d).exists() for d in taken)
    assert any(swapped), "the race never happened: the test proved nothing"


def _kill(proc):
    from netns.sandbox import Sandbox

    Sandbox.kill(proc)
    proc.communicate()
