"""The netns runtime's disk store: snapshots appear whole or not at all; references are names."""

from __future__ import annotations

import os
import secrets
import stat
import time

import pytest

pytestmark = pytest.mark.privileged


class NoPlane:  # the disk methods need no data plane
    def __init__(self):
        self.devbox_ns_prefix = f"dbxs-t{secrets.token_hex(3)}"


def test_netns_snapshot_disk_is_all_or_nothing(tmp_path):
    """A partial copy (a crash mid-snapshot) never shows as a disk and is removed on start."""
    from simulator.runtime.base import RuntimeFailure
    from simulator.runtime.netns_runtime import NetnsRuntime

    runtime = NetnsRuntime(NoPlane(), tmp_path)
    (runtime.disks_dir / "snp_cut.partial" / "home").mkdir(parents=True)
    runtime = NetnsRuntime(NoPlane(), tmp_path)
    assert list(runtime.disks_dir.iterdir()) == []
    with pytest.raises(RuntimeFailure, match="not a disk"):
        runtime.delete_disk("../../etc")


def test_netns_removes_the_disks_nothing_references_and_only_those(tmp_path):
    from simulator.runtime.netns_runtime import NetnsRuntime

    runtime = NetnsRuntime(NoPlane(), tmp_path / "data")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    for name in ("snp_kept", "bpt_kept", "snp_stray"):
        (runtime.disks_dir / name / "home").mkdir(parents=True)
        (runtime.disks_dir / name / "home" / "f").write_text(name)
    (runtime.disks_dir / "snp_link").symlink_to(outside)
    removed = runtime.remove_unreferenced_disks({"snp_kept", "bpt_kept", "snp_gone_already"})
    assert removed == ["snp_link", "snp_stray"]
    assert sorted(p.name for p in runtime.disks_dir.iterdir()) == ["bpt_kept", "snp_kept"]
    assert (runtime.disks_dir / "snp_kept" / "home" / "f").read_text() == "snp_kept"
    assert (outside / "precious").read_text() == "keep"  # a link is removed, never followed


@pytest.mark.parametrize("plane", ["netns"], indirect=True)
def test_netns_disk_size_counts_the_bytes_copied_not_sparse_holes(devboxes):
    runtime = devboxes.runtime
    devbox = devboxes.create(None)
    taken = []
    try:
        taken.append(runtime.snapshot_disk(devbox, f"snp_size{os.getpid()}a"))
        setup = devboxes.sh(devbox, "head -c 300000 /dev/urandom > data.bin && truncate -s 1G sparse.bin"
                                    " && printf abc > /tmp/small")
        assert setup.returncode == 0, setup.stderr
        taken.append(runtime.snapshot_disk(devbox, f"snp_size{os.getpid()}b"))
        before, after = (runtime.disk_size(disk) for disk in taken)
        assert before > 0  # the probe the fixture wrote
        assert 300_000 <= after - before <= 300_003, (before, after)  # the hole counts nothing
        assert (runtime.disks_dir / taken[1] / "home" / "sparse.bin").stat().st_size == 1 << 30
    finally:
        for disk in taken:
            runtime.delete_disk(disk)


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


@pytest.mark.parametrize("plane", ["netns"], indirect=True)
def test_a_shutdown_during_a_snapshot_waits_for_a_whole_copy(devboxes):
    """Teardown removes the devbox's files: it must not run under a copy in flight (a forced
    shutdown once left a "complete" snapshot with a third of the files)."""
    import threading

    runtime = devboxes.runtime
    devbox = devboxes.create(None)
    made = devboxes.sh(devbox, "mkdir many && cd many && i=0; while [ $i -lt 4000 ]; do echo $i > f$i; i=$((i+1)); done")
    assert made.returncode == 0, made.stderr
    disk, outcome = f"snp_race{os.getpid()}", []

    def snapshot():
        try:
            outcome.append(runtime.snapshot_disk(devbox, disk))
        except Exception as exc:  # noqa: BLE001 - a clean refusal is a valid outcome too
            outcome.append(exc)

    worker = threading.Thread(target=snapshot)
    worker.start()
    deadline = time.monotonic() + 10
    while not (runtime.disks_dir / (disk + ".partial")).exists() and not outcome:
        assert time.monotonic() < deadline, "the snapshot never started"
        time.sleep(0.001)  # bounded poll: the copy has begun
    runtime.shutdown(devbox)
    worker.join(30)
    try:
        if outcome and outcome[0] == disk:
            assert len(os.listdir(runtime.disks_dir / disk / "home" / "many")) == 4000
        else:
            assert not (runtime.disks_dir / disk).exists(), outcome
    finally:
        runtime.delete_disk(disk)


@pytest.mark.parametrize("plane", ["netns"], indirect=True)
def test_a_disk_deleted_during_a_restore_is_waited_for_or_refused(devboxes):
    import threading

    from simulator.runtime.base import DevboxSpec, RuntimeFailure

    runtime = devboxes.runtime
    source = devboxes.create(None)
    made = devboxes.sh(source, "mkdir many && cd many && i=0; while [ $i -lt 20000 ]; do echo $i > f$i; i=$((i+1)); done")
    assert made.returncode == 0, made.stderr
    disk = runtime.snapshot_disk(source, f"snp_restore{os.getpid()}")
    restored = f"dbx_r{os.getpid():x}{secrets.token_hex(2)}"
    errors = []

    def restore():
        try:
            runtime.provision(DevboxSpec(id=restored, account="acct-a", policy=None, disk=disk))
        except RuntimeFailure as exc:
            errors.append(exc)

    worker = threading.Thread(target=restore)
    worker.start()
    deadline = time.monotonic() + 10
    while not (runtime.devboxes_dir / restored).exists() and worker.is_alive():
        assert time.monotonic() < deadline, "the restore never started"
        time.sleep(0.001)  # bounded poll: the copy has begun
    runtime.delete_disk(disk)
    worker.join(60)
    try:
        if not errors:  # the delete waited: the restored devbox has every file
            assert len(os.listdir(runtime.devboxes_dir / restored / "home" / "many")) == 20000
        else:
            assert "gone" in str(errors[0])
    finally:
        runtime.shutdown(restored)
