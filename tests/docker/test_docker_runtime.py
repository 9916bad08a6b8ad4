"""The Docker runtime itself: container shape (labels, network none, dropped capabilities,
resolver), Popen-like execs, files, suspend/resume, disk snapshots, shutdown and orphans."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

import docker.errors
import pytest
import requests

from simulator.command_output import signal_group
from simulator.runtime.base import RuntimeFailure
from simulator.runtime.docker_image import SNAPSHOT_REPOSITORY
from simulator.runtime.docker_runtime import DEVBOX_LABEL, INSTANCE_LABEL, DockerRuntime
from tests.dataplane.conftest import make_policy

pytestmark = pytest.mark.privileged
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def test_container_is_labelled_networkless_and_plumbed_onto_the_data_plane(docker_plane, boxes, docker_client):
    dataplane, runtime = docker_plane
    box = boxes.create(make_policy(allowed_hostnames=["github.com"]))
    info = docker_client.api.inspect_container(runtime.container_name(box))
    assert info["Config"]["Labels"][INSTANCE_LABEL] == dataplane.config.instance
    assert info["Config"]["Labels"][DEVBOX_LABEL] == box
    assert info["HostConfig"]["NetworkMode"] == "none"
    assert set(info["HostConfig"]["CapDrop"]) == {"ALL"}
    assert info["HostConfig"]["PidsLimit"] == 1024 and info["HostConfig"]["Memory"] == 2 * 1024**3
    address = dataplane.attached(box).address
    out = boxes.sh(box, "ip -4 addr show eth0; cat /etc/resolv.conf; grep CapEff /proc/self/status; pwd; echo $HOME")
    assert out.returncode == 0, out.stderr
    assert f"inet {address.ip}/16" in out.stdout
    assert f"nameserver {dataplane.gateway}" in out.stdout
    cap_eff = int(next(l for l in out.stdout.splitlines() if l.startswith("CapEff")).split()[1], 16)
    assert cap_eff == 0  # root in the container, but without a single capability
    assert out.stdout.splitlines()[-2:] == ["/home/user", "/home/user"]
    # Real outcomes of the policy and of the dropped capabilities, from inside.
    assert "192.0.2.10" in boxes.sh(box, "nslookup github.com").stdout
    assert boxes.sh(box, "nslookup blocked.example").returncode != 0
    spoof = boxes.sh(box, "ip link set eth0 address 02:00:00:00:00:99")
    assert spoof.returncode != 0 and "not permitted" in spoof.stderr.lower()


def test_exec_is_popen_like(docker_plane, boxes):
    runtime = docker_plane[1]
    box = boxes.create(None, environment_variables={"FROM_SPEC": "spec"})
    # A command gets the environment it is given (the services give the devbox's); the
    # spec's is not in the container's own config (see the snapshot test below).
    proc = runtime.exec(box, "echo out; echo err >&2; echo ${FROM_SPEC-unset} $EXTRA; pwd; exit 7", env={"EXTRA": "x"}, cwd="/tmp")
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (7, b"out\nunset x\n/tmp\n", b"err\n")
    cat = runtime.exec(box, "cat; echo done")
    assert cat.communicate(b"from stdin\n", timeout=10) == (b"from stdin\ndone\n", b"")
    # Killing the process group (what the execution service does) kills the children too.
    proc = runtime.exec(box, "sleep 301 & sleep 302")
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == 128 + signal.SIGKILL
    assert "sleep 30" not in boxes.sh(box, "ps -o args").stdout
    # A background child that keeps stdout open does not keep the command running.
    proc = runtime.exec(box, "sleep 303 & echo started")
    assert proc.wait(5) == 0
    assert proc.stdout.readline() == b"started\n"
    missing = runtime.exec(box, "exit 0", cwd="/no/such/dir")
    # It never started (pid 0): its exit is known at once, and nothing signals pid 0 (which
    # would kill this process's own group).
    assert missing.returncode is not None and missing.returncode != 0 and missing.wait(10) != 0
    assert missing.pid > 0 or not signal_group(missing, signal.SIGKILL)
    missing.kill()
    missing.send_signal(signal.SIGINT)


def test_a_quiet_command_keeps_its_stream_past_the_clients_timeout(docker_plane, boxes, monkeypatch):
    """The exec socket came with the API client's request timeout (60 s): a command quiet
    for longer lost everything it wrote afterwards, and its stdin was closed."""
    runtime = docker_plane[1]
    box = boxes.create(None)
    monkeypatch.setattr(runtime.api, "timeout", 1.0)
    quiet = runtime.exec(box, "echo start; sleep 2; echo end; exit 3")
    assert quiet.communicate(timeout=20) == (b"start\nend\n", b"") and quiet.returncode == 3
    reader = runtime.exec(box, "read line; echo got:$line")
    assert not reader.stdout.closed
    time.sleep(2)  # silence longer than the timeout (the subject of the test, not a sync)
    assert reader.communicate(b"hello\n", timeout=20) == (b"got:hello\n", b"")


def test_files_read_write_and_errors(docker_plane, boxes):
    runtime = docker_plane[1]
    box = boxes.create(None)
    runtime.write_file(box, "a/b/c.txt", b"hello\x00bytes")
    assert runtime.read_file(box, "~/a/b/c.txt") == b"hello\x00bytes"
    assert runtime.read_file(box, "/home/user/a/b/c.txt") == b"hello\x00bytes"
    assert boxes.sh(box, "cat a/b/c.txt | wc -c").stdout.strip() == "11"
    runtime.write_file(box, "/tmp/x", b"1")
    runtime.write_file(box, "/tmp/x", b"replaced")
    assert boxes.sh(box, "cat /tmp/x").stdout == "replaced"
    assert boxes.sh(box, "echo made > made.txt; ln -s /home/user/made.txt /tmp/link").returncode == 0
    assert runtime.read_file(box, "/tmp/link") == b"made\n"
    with pytest.raises(FileNotFoundError):
        runtime.read_file(box, "nope")
    with pytest.raises(IsADirectoryError):
        runtime.read_file(box, "a")
    with pytest.raises(IsADirectoryError):
        runtime.write_file(box, "a/b", b"would delete the directory")
    assert runtime.read_file(box, "a/b/c.txt") == b"hello\x00bytes"  # still there
    with pytest.raises(NotADirectoryError):
        runtime.read_file(box, "a/b/c.txt/deeper")
    with pytest.raises(NotADirectoryError):
        runtime.write_file(box, "a/b/c.txt/deeper", b"x")
    for bad in ("", "  ", "a\0b", "/"):
        with pytest.raises(ValueError):
            runtime.read_file(box, bad)


def test_dot_dot_after_a_link_is_the_parent_of_its_target_and_special_files_are_not_replaced(docker_plane, boxes):
    """As the kernel walks a path (and netns answers): "e/.." is the parent of e's target, not
    e's own directory; a FIFO is not replaced by a regular file."""
    runtime = docker_plane[1]
    box = boxes.create(None)
    setup = ("mkdir -p /opt/a; echo OPT > /opt/secret; echo HOME > /home/user/secret; ln -s /opt/a /home/user/e;"
             " echo f > /tmp/file; ln -s /tmp/file /home/user/filelink; mkfifo /tmp/fifo")
    assert boxes.sh(box, setup).returncode == 0
    assert runtime.read_file(box, "e/../secret") == b"OPT\n"
    assert runtime.read_file(box, "./e/./../secret") == b"OPT\n"
    assert runtime.read_file(box, "../user/secret") == b"HOME\n"
    runtime.write_file(box, "e/../written", b"w")
    assert boxes.sh(box, "cat /opt/written").stdout == "w"
    with pytest.raises(NotADirectoryError):
        runtime.read_file(box, "filelink/../secret")
    with pytest.raises(FileNotFoundError):
        runtime.write_file(box, "missing/../x", b"x")
    with pytest.raises(OSError, match="not a regular file"):
        runtime.write_file(box, "/tmp/fifo", b"x")
    assert boxes.sh(box, "test -p /tmp/fifo && echo fifo").stdout == "fifo\n"


def test_file_api_follows_symlinks_and_refuses_runtime_mounts(docker_plane, boxes):
    runtime = docker_plane[1]
    box = boxes.create(None)
    assert boxes.sh(box, "echo old > /tmp/target; ln -s /tmp/target lnk; ln -s /tmp/new dangling").returncode == 0
    runtime.write_file(box, "lnk", b"via link")
    assert boxes.sh(box, "cat /tmp/target; echo; test -L lnk && echo still-a-link").stdout == "via link\nstill-a-link\n"
    runtime.write_file(box, "dangling", b"made")
    assert boxes.sh(box, "cat /tmp/new; echo; test -L dangling && echo still-a-link").stdout == "made\nstill-a-link\n"
    # What the runtime mounts over the image is not on the disk the archive API sees:
    # refused, also through a link, rather than showing or writing a file the devbox never sees.
    assert boxes.sh(box, "ln -s /dev/shm shm").returncode == 0
    for path in ("/proc/self/status", "/dev/shm/note", "shm/note", "/sys/x"):
        with pytest.raises(ValueError, match="container runtime"):
            runtime.write_file(box, path, b"x")
        with pytest.raises(ValueError, match="container runtime"):
            runtime.read_file(box, path)
    # Docker's own files read as the devbox sees them, but are not writable.
    gateway = docker_plane[0].gateway
    assert f"nameserver {gateway}" in runtime.read_file(box, "/etc/resolv.conf").decode()
    assert boxes.sh(box, "cat /etc/hostname").stdout.encode() == runtime.read_file(box, "/etc/hostname")
    for path in ("/etc/resolv.conf", "/etc/hosts"):
        with pytest.raises(ValueError, match="cannot be written"):
            runtime.write_file(box, path, b"x")
    assert boxes.sh(box, "ln -s loop1 loop2; ln -s loop2 loop1").returncode == 0
    for call in (lambda: runtime.read_file(box, "loop1"), lambda: runtime.write_file(box, "loop1", b"x")):
        with pytest.raises(OSError) as caught:
            call()
        assert caught.value.errno == errno.ELOOP and "/var/lib/docker" not in str(caught.value)


def test_suspend_freezes_and_resume_thaws(docker_plane, boxes, docker_client):
    runtime = docker_plane[1]
    box = boxes.create(None)
    runtime.suspend(box)
    assert docker_client.api.inspect_container(runtime.container_name(box))["State"]["Paused"] is True
    with pytest.raises(RuntimeFailure):
        runtime.exec(box, "true")
    runtime.resume(box)
    assert boxes.sh(box, "echo back").stdout == "back\n"
    with pytest.raises(RuntimeFailure):
        runtime.resume(box)  # not paused: a clear failure, not a crash


def _start_commands_until(runtime, box, stop: threading.Event, threads: int = 6):
    """Threads starting `true` in the devbox over and over until ``stop`` (or a refusal);
    returns (threads, outcomes)."""
    outcomes: list[str] = []

    def loop():
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                proc = runtime.exec(box, "true")
            except RuntimeFailure:
                outcomes.append("refused")
                return
            except Exception as exc:
                outcomes.append(repr(exc))
                return
            proc.wait(10)
            outcomes.append("ran")

    started = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for thread in started:
        thread.start()
    return started, outcomes


def test_a_suspend_waits_for_command_starts_and_never_freezes_one_half_way(docker_plane, boxes, docker_client):
    """A command starting while the container froze hung inside the frozen cgroup (runc init),
    and with it docker's lock on the container. Starts under way finish first; later ones are
    refused while it is suspended, at once."""
    runtime = docker_plane[1]
    box = boxes.create(None)
    stop = threading.Event()
    threads, outcomes = _start_commands_until(runtime, box, stop)
    try:
        until = time.monotonic() + 10
        while outcomes.count("ran") < 6 and time.monotonic() < until:
            time.sleep(0.01)  # only to let starts be under way when the suspend comes
        runtime.suspend(box)
        for thread in threads:  # each is refused by the paused container, or was stopped in time
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads), "a command start hangs in the frozen devbox"
        assert "refused" in outcomes
    finally:
        stop.set()
        runtime.resume(box)
    assert boxes.sh(box, "echo back").stdout == "back\n"


def test_a_snapshot_does_not_pause_the_devbox(docker_plane, boxes, docker_client):
    """A paused commit froze every command for as long as the copy took, and one that overlapped
    a command's start left the container paused for good: commands start and run meanwhile."""
    runtime = docker_plane[1]
    box = boxes.create(None)
    name = runtime.container_name(box)
    since = int(time.time()) - 1
    stop = threading.Event()
    threads, outcomes = _start_commands_until(runtime, box, stop)
    disk = None
    try:
        disk = runtime.snapshot_disk(box, f"snp_nopause{os.getpid():x}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        if disk is not None:
            runtime.delete_disk(disk)
    assert not any(thread.is_alive() for thread in threads) and "refused" not in outcomes
    events = docker_client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                      filters={"container": name, "event": ["pause", "unpause"]})
    assert [event["Action"] for event in events] == []
    assert docker_client.api.inspect_container(name)["State"]["Paused"] is False


def test_snapshot_disk_restores_files_into_a_new_devbox(docker_plane, boxes, docker_client):
    runtime = docker_plane[1]
    box = boxes.create(None)
    assert boxes.sh(box, "echo home > kept.txt; echo tmp > /tmp/kept").returncode == 0
    snapshot = f"snp_test{os.getpid():x}"
    disk = runtime.snapshot_disk(box, snapshot)
    try:
        restored = boxes.create(make_policy(allow_all=True), disk=disk)
        assert runtime.read_file(restored, "kept.txt") == b"home\n"
        assert boxes.sh(restored, "cat /tmp/kept").stdout == "tmp\n"
        assert "nameserver" in boxes.sh(restored, "cat /etc/resolv.conf").stdout  # not a stale copy
    finally:
        runtime.delete_disk(disk)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(disk)
    runtime.delete_disk(disk)  # idempotent
    with pytest.raises(ValueError):
        runtime.delete_disk(runtime.image)  # never an image it did not make


def test_an_image_a_commit_tags_after_the_restart_is_removed(docker_plane, docker_client, monkeypatch):
    """A snapshot the restart failed whose commit the daemon finished later: its image was
    tagged after the start-up sweep, and stayed until the next start."""
    from simulator.runtime import docker_runtime

    _dataplane, runtime = docker_plane
    monkeypatch.setattr(docker_runtime, "LATE_DISK_POLL_SECONDS", 0.05)
    snapshot_id = f"snp_late{os.getpid():x}"
    tag = f"{SNAPSHOT_REPOSITORY}:{snapshot_id}"
    try:
        runtime.remove_late_disks([snapshot_id])
        docker_client.api.tag(runtime.image, SNAPSHOT_REPOSITORY, snapshot_id)  # the commit lands
        deadline = time.monotonic() + 10
        while docker_client.api.images(name=tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert docker_client.api.images(name=tag) == []
        assert docker_client.api.images(name=runtime.image)  # only that tag went
    finally:
        try:
            docker_client.api.remove_image(tag)
        except docker.errors.NotFound:
            pass


def test_snapshot_size_and_removing_unreferenced_snapshot_images(docker_plane, boxes, docker_client):
    """``disk_size`` is the committed image's Size; ``remove_unreferenced_disks`` removes this
    instance's snapshot images nothing references, never another instance's or other images."""
    dataplane, runtime = docker_plane
    box = boxes.create(None)
    tag = f"snp_size{os.getpid():x}"
    disks = [runtime.snapshot_disk(box, tag + "a")]
    other = docker_client.api.create_container(
        runtime.image, command=["true"], labels={INSTANCE_LABEL: "other-instance"},
        host_config=docker_client.api.create_host_config(network_mode="none"))["Id"]
    foreign = f"{SNAPSHOT_REPOSITORY}:{tag}other"
    try:
        docker_client.api.commit(other, repository=SNAPSHOT_REPOSITORY, tag=f"{tag}other")
        assert boxes.sh(box, "head -c 300000 /dev/urandom > data.bin").returncode == 0
        disks.append(runtime.snapshot_disk(box, tag + "b"))
        before, after = disks
        labels = docker_client.api.inspect_image(after)["Config"]["Labels"]
        assert labels[INSTANCE_LABEL] == dataplane.config.instance  # a commit keeps the container's labels
        assert runtime.disk_size(before) == docker_client.api.inspect_image(before)["Size"] > 0
        assert 300_000 <= runtime.disk_size(after) - runtime.disk_size(before) < 400_000
        removed = runtime.remove_unreferenced_disks({after})
        assert before in removed and after not in removed and foreign not in removed
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(before)
        for kept in (after, foreign, runtime.image):
            docker_client.images.get(kept)
        assert runtime.remove_unreferenced_disks({after}) == []
    finally:
        for disk in disks:
            runtime.delete_disk(disk)
        docker_client.api.remove_container(other, force=True)
        try:
            docker_client.api.remove_image(foreign, force=True)
        except docker.errors.NotFound:
            pass


def test_shutdown_removes_the_container_and_its_port(docker_plane, boxes, docker_client):
    dataplane, runtime = docker_plane
    box = boxes.create(make_policy())
    name = runtime.container_name(box)
    port = dataplane.attached(box).address.port
    runtime.shutdown(box)
    runtime.shutdown(box)  # idempotent
    assert docker_client.api.containers(all=True, filters={"name": name}) == []
    assert dataplane.attached(box) is None
    assert port not in [p.ifname for p in dataplane._router.list_ports()]
    with pytest.raises(RuntimeFailure):
        runtime.exec(box, "true")


def test_failed_provisioning_leaves_nothing(docker_plane, docker_client):
    from simulator.runtime.base import DevboxSpec

    dataplane, runtime = docker_plane
    used = len(dataplane.pool._used)
    with pytest.raises(RuntimeFailure):
        runtime.provision(DevboxSpec(id="dbx_missingdisk", account="a", policy=None, disk="devbox-sim/snapshot:missing"))
    assert docker_client.api.containers(all=True, filters={"label": f"{DEVBOX_LABEL}=dbx_missingdisk"}) == []
    assert dataplane.attached("dbx_missingdisk") is None
    assert len(dataplane.pool._used) == used  # its address went back to the pool


def test_orphans_of_this_instance_only_are_removed(docker_plane, docker_client):
    dataplane, runtime = docker_plane
    mine = docker_client.api.create_container(
        runtime.image, command=["true"], labels={INSTANCE_LABEL: dataplane.config.instance, DEVBOX_LABEL: "dbx_orphan"},
        host_config=docker_client.api.create_host_config(network_mode="none"))["Id"]
    other = docker_client.api.create_container(
        runtime.image, command=["true"], labels={INSTANCE_LABEL: "other-instance"},
        host_config=docker_client.api.create_host_config(network_mode="none"))["Id"]
    try:
        assert runtime.remove_orphans() == 1
        ids = {c["Id"] for c in docker_client.api.containers(all=True)}
        assert mine not in ids and other in ids
    finally:
        for container in (mine, other):
            try:
                docker_client.api.remove_container(container, force=True)
            except Exception:
                pass


def test_unknown_image_is_refused_not_pulled(docker_plane, docker_client):
    dataplane = docker_plane[0]
    with pytest.raises(RuntimeFailure, match="never pulled"):
        DockerRuntime(dataplane, image="devbox-sim/never-built:nope", client=docker_client)
    assert docker_client.api.images(name="devbox-sim/never-built") == []


def test_an_images_own_entrypoint_never_replaces_the_devbox(docker_plane, boxes):
    runtime = docker_plane[1]
    source = boxes.create(None)
    tag = f"entrypoint{os.getpid():x}"
    runtime.api.commit(runtime.container_name(source), repository=SNAPSHOT_REPOSITORY, tag=tag,
                       changes=['ENTRYPOINT ["/bin/false"]', 'CMD ["exit 1"]'])
    disk = f"{SNAPSHOT_REPOSITORY}:{tag}"
    try:
        box = boxes.create(None, disk=disk)
        assert boxes.sh(box, "echo alive").stdout == "alive\n"
    finally:
        runtime.delete_disk(disk)


def test_exec_streams_big_input_and_runs_concurrently(docker_plane, boxes):
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    runtime = docker_plane[1]
    box = boxes.create(None)
    blob = os.urandom(1 << 20)  # 1 MiB through stdin and back out: both pumps under load
    out, err = runtime.exec(box, "cat").communicate(blob, timeout=30)
    assert out == blob and err == b""

    def run(i: int) -> bytes:
        return runtime.exec(box, f"echo {i}; echo e{i} >&2").communicate(timeout=30)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(16)))
    assert results == [(f"{i}\n".encode(), f"e{i}\n".encode()) for i in range(16)]
    slow = runtime.exec(box, "sleep 30")
    with pytest.raises(subprocess.TimeoutExpired):
        slow.communicate(timeout=0.2)
    slow.kill()
    assert slow.wait(10) == 128 + signal.SIGKILL


def test_devbox_environment_stays_out_of_the_container_and_its_snapshots(docker_plane, boxes, docker_client):
    """A devbox's environment_variables go with each command, never into the container's
    config: a snapshot would commit them (secrets into every devbox made from it), and the
    keep-alive loop would run under the devbox's PATH. No container log either: a devbox
    writing to its pid 1's stdout must not fill the host's disk."""
    runtime = docker_plane[1]
    box = boxes.create(None, environment_variables={"API_SECRET": "s3cr3t", "PATH": "/nonexistent"})
    info = docker_client.api.inspect_container(runtime.container_name(box))
    assert not [e for e in info["Config"]["Env"] if e.startswith("API_SECRET=") or e == "PATH=/nonexistent"]
    assert info["HostConfig"]["LogConfig"]["Type"] == "none"
    # pid 1 (seccomp-exec --init) is not dumpable, so its descriptors are out of reach; the
    # keep-alive shell it runs shares its stdout and is an ordinary process of the image user.
    lines = boxes.sh(box, "ps -o pid,args").stdout.splitlines()
    shell_pid = next(pid for pid, _, args in (line.strip().partition(" ") for line in lines)
                     if args.strip().startswith("/bin/sh -c while"))
    assert boxes.sh(box, "echo noise > /proc/1/fd/1").returncode != 0
    assert boxes.sh(box, f"echo noise > /proc/{shell_pid}/fd/1").returncode == 0
    assert not docker_client.api.inspect_container(runtime.container_name(box)).get("LogPath")  # no log file
    disk = runtime.snapshot_disk(box, f"snp_env{os.getpid():x}")
    try:
        assert not [e for e in docker_client.api.inspect_image(disk)["Config"]["Env"] if "s3cr3t" in e]
        restored = boxes.create(None, disk=disk)
        assert boxes.sh(restored, "echo ${API_SECRET-unset}").stdout == "unset\n"
    finally:
        runtime.delete_disk(disk)


def test_keep_alive_survives_its_sleep_being_killed(docker_plane, boxes, docker_client):
    runtime = docker_plane[1]
    box = boxes.create(None)

    def sleeper() -> str | None:  # the keep-alive's `sleep 3600`, by pid
        lines = boxes.sh(box, "ps -o pid,args").stdout.splitlines()
        return next((pid for pid, _, args in (line.strip().partition(" ") for line in lines)
                     if args.strip().startswith("sleep 3600")), None)

    before = sleeper()
    assert before is not None
    assert boxes.sh(box, f"kill {before}").returncode == 0
    deadline = time.monotonic() + 10  # bounded poll: the loop starts a new sleep within ~1 s
    while sleeper() in (None, before):
        assert time.monotonic() < deadline, "the keep-alive loop did not start sleeping again"
        time.sleep(0.1)
    assert docker_client.api.inspect_container(runtime.container_name(box))["State"]["Running"]


def _wait_for(condition, what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds  # bounded poll: docker reports asynchronously
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_deaths_are_seen_after_the_daemons_event_stream_drops(docker_plane, boxes, docker_client, monkeypatch):
    """When the event stream ends (the daemon restarted, say), the runtime subscribes again
    and checks its containers: a death before, during or after the gap reaches the hook."""
    runtime = docker_plane[1]
    lost: dict[str, str] = {}
    runtime.set_lost_hook(lambda devbox_id, detail: lost.setdefault(devbox_id, detail))
    _wait_for(lambda: runtime._events is not None, "the event stream")
    first = boxes.create(None)
    docker_client.api.kill(runtime.container_name(first))
    _wait_for(lambda: first in lost, "the first death")
    # The daemon goes away: the stream ends and subscribing fails until it is back.
    attempts = []
    subscribe = runtime.client.events

    def daemon_away(*args, **kwargs):
        attempts.append(1)
        raise requests.ConnectionError("connection refused")

    monkeypatch.setattr(runtime.client, "events", daemon_away)
    stream = runtime._events
    stream.close()
    second = boxes.create(None)
    _wait_for(lambda: attempts, "a failed subscription")
    docker_client.api.kill(runtime.container_name(second))  # during the gap: no stream sees it
    monkeypatch.setattr(runtime.client, "events", subscribe)  # the daemon is back
    _wait_for(lambda: second in lost, "the death in the gap")
    _wait_for(lambda: runtime._events is not stream, "a new subscription")
    third = boxes.create(None)
    docker_client.api.remove_container(runtime.container_name(third), force=True)
    _wait_for(lambda: third in lost, "a death after the gap")
    assert "exited" in lost[first] and "exited" in lost[second]


def test_a_container_the_daemon_failed_to_remove_is_removed_later(docker_plane, boxes, docker_client, monkeypatch):
    dataplane, runtime = docker_plane
    box = boxes.create(None)
    name = runtime.container_name(box)

    def daemon_away(*_args, **_kwargs):
        raise requests.ConnectionError("connection refused")

    monkeypatch.setattr(runtime.api, "remove_container", daemon_away)
    monkeypatch.setattr("simulator.runtime.docker_runtime.REMOVE_RETRY_SECONDS", 0.2)
    runtime.shutdown(box)  # no exception: the devbox is released, its container remembered
    assert dataplane.attached(box) is None
    assert docker_client.api.containers(all=True, filters={"name": name}) != []
    monkeypatch.undo()  # the daemon answers again: the retry timer removes it
    _wait_for(lambda: docker_client.api.containers(all=True, filters={"name": name}) == [], "the retried removal")
    assert runtime._unremoved == {}


def test_docker_messages_name_no_host_paths():
    from simulator.runtime.docker_files import docker_message

    layer = "a" * 64
    for root in ("/var/lib/docker/overlay2", "/home/u/.local/share/docker/fuse-overlayfs", "/srv/docker/vfs/dir"):
        exc = OSError(f"evalSymlinksInScope: too many links in {root}/{layer}/merged/home/user/loop1: x")
        assert docker_message(exc) == "evalSymlinksInScope: too many links in /home/user/loop1: x"
    assert docker_message(OSError("no such file: /home/user/diff/x")) == "no such file: /home/user/diff/x"


def test_reads_stop_at_the_limit_even_if_the_file_grew_after_the_check(docker_plane, boxes, monkeypatch):
    """The devbox can swap a big file in between the size check and the read: the read stops
    at the limit instead of holding whatever docker sends."""
    from simulator.runtime import docker_files
    from simulator.runtime.base import MAX_READ_BYTES

    runtime = docker_plane[1]
    box = boxes.create(None)
    assert boxes.sh(box, f"truncate -s {MAX_READ_BYTES * 2} big").returncode == 0
    resolve = docker_files._resolve

    def stale(*args, **kwargs):  # what the stat said before the swap
        target, stat = resolve(*args, **kwargs)
        return target, dict(stat, size=1)

    monkeypatch.setattr(docker_files, "_resolve", stale)
    with pytest.raises(OSError) as caught:
        runtime.read_file(box, "big")
    assert caught.value.errno == errno.EFBIG
    monkeypatch.undo()
    runtime.write_file(box, "small", b"still readable")
    assert runtime.read_file(box, "small") == b"still readable"  # the connection pool is fine


def test_a_snapshot_of_more_than_a_disk_may_hold_fails_before_committing(docker_plane, boxes, docker_client, monkeypatch):
    """Sparse files count in full (a commit writes their holes out), so the check is on the
    apparent size of the changed files, before docker commits anything."""
    from simulator.runtime import docker_runtime

    runtime = docker_plane[1]
    box = boxes.create(None)
    monkeypatch.setattr(docker_runtime, "MAX_DISK_BYTES", 50 * 1024**2)
    assert boxes.sh(box, "truncate -s 100M /tmp/sparse").returncode == 0
    tag = f"snp_big{os.getpid():x}"
    with pytest.raises(RuntimeFailure, match="more than"):
        runtime.snapshot_disk(box, tag)
    assert docker_client.api.images(name=f"{SNAPSHOT_REPOSITORY}:{tag}") == []
    assert boxes.sh(box, "rm /tmp/sparse").returncode == 0
    disk = runtime.snapshot_disk(box, tag)
    runtime.delete_disk(disk)


def test_a_container_is_held_to_its_devboxs_size(docker_plane, boxes, docker_client):
    _dataplane, runtime = docker_plane
    small = boxes.create(make_policy(), cpus=0.5, memory=1024**3)
    large = boxes.create(make_policy(), cpus=8, memory=32 * 1024**3)
    unsized = boxes.create(make_policy())
    caps = [(config["NanoCpus"], config["Memory"]) for config in
            (docker_client.api.inspect_container(runtime.container_name(box))["HostConfig"] for box in (small, large, unsized))]
    # At most the daemon's CPUs (it refuses more) and 2 GiB.
    cpus = min(8, docker_client.info()["NCPU"])
    assert caps == [(500_000_000, 1024**3), (cpus * 1_000_000_000, 2 * 1024**3), (0, 2 * 1024**3)]


def test_pseudo_terminals_are_capped_per_container(docker_plane, boxes):
    """Docker's devpts per container has no cap: one devbox could take every other's."""
    from netns.sandbox_setup import PTY_MAX

    box = boxes.create(None)
    opens = " ".join(f"{fd}<>/dev/ptmx" for fd in range(3, 3 + PTY_MAX))
    held = boxes.sh(box, f"exec {opens} && echo all; exec {3 + PTY_MAX}<>/dev/ptmx && echo more")
    assert held.stdout == "all\n" and "No space left" in held.stderr


def test_signals_after_the_leader_ended_reach_only_the_containers_own_group(docker_plane, boxes, monkeypatch):
    """Once a command's leader has exited, its pid may be reused (by another devbox's command,
    say) before docker records the exit: the group's members are then vetted one by one."""
    import subprocess

    from simulator.command_output import signal_group
    from simulator.runtime import docker_exec

    runtime = docker_plane[1]
    box = boxes.create(None)
    proc = runtime.exec(box, "sleep 301 & exit 0")  # the background child lives on in the group
    _wait_for(lambda: proc._pidfd is None or proc._leader_gone(), "the leader's exit")
    # A host process that happens to carry the same process group id must be left alone.
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        members = docker_exec.group_members
        monkeypatch.setattr(docker_exec, "group_members", lambda pgid: members(pgid) + [bystander.pid])
        assert signal_group(proc, signal.SIGKILL)
        assert bystander.poll() is None
        _wait_for(lambda: "sleep 301" not in boxes.sh(box, "ps -o args").stdout, "the background child's end")
    finally:
        bystander.kill()
        bystander.wait()
    assert proc.wait(20) == 0


def test_every_process_runs_under_the_devbox_seccomp_filter(docker_plane, boxes, docker_client):
    """Docker's own profile lets a container open vsock (which reaches the hypervisor and host
    whatever the network namespace) and io_uring. The netns runtime's filter is stacked on it
    for pid 1, the keep-alive loop and every exec'd command; the helper cannot be read inside
    (so its process is not dumpable: nothing ptraces it before its filter is on)."""
    from tests.docker.images import python_image

    box = boxes.create(None, disk=python_image(docker_client))
    code = (
        "import ctypes, errno, os, socket\n"
        "for family in (socket.AF_VSOCK, 38):\n"
        "    try:\n"
        "        socket.socket(family, socket.SOCK_SEQPACKET if family == 38 else socket.SOCK_STREAM)\n"
        "        print('open', family)\n"
        "    except OSError as e:\n"
        "        print('refused', family, errno.errorcode[e.errno])\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "params = ctypes.create_string_buffer(120)\n"
        "print('io_uring', libc.syscall(425, 1, params), errno.errorcode[ctypes.get_errno()])\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()\n"
        "def filters(pid):\n"
        "    return next(l.split()[1] for l in open(f'/proc/{pid}/status') if l.startswith('Seccomp_filters:'))\n"
        "keepalive = next(p for p in os.listdir('/proc') if p.isdigit() and open(f'/proc/{p}/cmdline', 'rb').read().startswith(b'/bin/sh\\0-c\\0while'))\n"
        "print('filters', filters('self'), filters(1), filters(keepalive))\n"
    )
    out = boxes.sh(box, f"/usr/bin/python3 -c \"{code}\"")
    assert out.stdout.splitlines() == [
        "refused 40 EAFNOSUPPORT", "refused 38 EAFNOSUPPORT", "io_uring -1 ENOSYS",
        "filters 2 2 2",  # docker's profile and ours, everywhere
    ], out.stderr
    unreadable = boxes.sh(box, "cat /dev/.devbox-sim-seccomp-exec > /dev/null")
    assert unreadable.returncode != 0 and "Permission denied" in unreadable.stderr


def test_pid_1_reaps_orphans(docker_plane, boxes):
    """seccomp-exec --init is pid 1 in place of docker's init: the orphans of exec'd commands
    are reaped, not left as zombies."""
    box = boxes.create(None)
    assert boxes.sh(box, "for i in 1 2 3 4 5; do (sleep 0.1 &); done").returncode == 0
    def left() -> list[str]:  # the orphans still running, or dead and not reaped
        lines = boxes.sh(box, "ps -o stat,args").stdout.splitlines()[1:]
        return [line for line in lines if line.startswith("Z") or line.split(None, 1)[-1] == "sleep 0.1"]

    deadline = time.monotonic() + 10  # bounded poll: the orphans end 0.1 s after they start
    while left():
        assert time.monotonic() < deadline, left()
        time.sleep(0.05)


def test_an_images_healthcheck_never_runs(docker_plane, boxes, docker_client):
    """The daemon would exec an image's HEALTHCHECK itself, outside the seccomp helper."""
    runtime = docker_plane[1]
    source = boxes.create(None)
    tag = f"healthcheck{os.getpid():x}"
    runtime.api.commit(runtime.container_name(source), repository=SNAPSHOT_REPOSITORY, tag=tag,
                       changes=["HEALTHCHECK --interval=1s CMD sleep 30"])
    disk = f"{SNAPSHOT_REPOSITORY}:{tag}"
    try:
        assert docker_client.api.inspect_image(disk)["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "sleep 30"]
        box = boxes.create(None, disk=disk)
        info = docker_client.api.inspect_container(runtime.container_name(box))
        assert info["Config"]["Healthcheck"]["Test"] == ["NONE"]
        assert "Health" not in info["State"]  # no probe is scheduled at all
    finally:
        runtime.delete_disk(disk)


def test_the_seccomp_helper_must_be_static_unreadable_and_undumpable(tmp_path, monkeypatch):
    """Otherwise its process could be ptraced before its filter is on (or not run at all in a
    busybox image): the docker runtime refuses to start, saying what to do."""
    import shutil

    from netns import sandbox
    from simulator.runtime import docker_runtime

    good = tmp_path / "static-0111"
    shutil.copyfile(sandbox.SECCOMP_EXEC, good)
    good.chmod(0o111)
    readable = tmp_path / "static-0755"
    shutil.copyfile(sandbox.SECCOMP_EXEC, readable)
    readable.chmod(0o755)
    dynamic = tmp_path / "dynamic-0111"
    shutil.copyfile("/bin/true", dynamic)
    dynamic.chmod(0o111)
    suid_dumpable = tmp_path / "suid_dumpable"
    suid_dumpable.write_text("0\n")
    monkeypatch.setattr(docker_runtime, "SUID_DUMPABLE", str(suid_dumpable))

    def problem(path) -> str | None:
        monkeypatch.setattr(sandbox, "SECCOMP_EXEC", str(path))
        return docker_runtime.seccomp_helper_problem()

    assert problem(good) is None
    assert "mode 0111" in problem(readable) and "bootstrap" in problem(readable)
    assert "static" in problem(dynamic)
    assert "missing" in problem(tmp_path / "nothing")
    suid_dumpable.write_text("1\n")
    assert "suid_dumpable" in problem(good)


def _container_memory_cgroup(pid: int) -> tuple[str, str]:
    """(cgroup version, the container's memory cgroup directory), from its init's /proc entry."""
    v2 = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return "1", "/sys/fs/cgroup/memory" + path
        if (hierarchy, controllers) == ("0", ""):
            v2 = "/sys/fs/cgroup" + path
    assert v2 is not None, "no memory cgroup"
    return "2", v2


def test_tcp_buffers_are_charged_to_the_container(docker_plane, boxes):
    """Unread TCP data is memory of the machine's one TCP pool: a cgroup v1 daemon leaves it
    out of the container's memory unless KernelMemoryTCP is set, and a devbox could starve
    every socket of the host. Here 32 MiB go to a listener in the container that never reads."""
    runtime = docker_plane[1]
    box = boxes.create(make_policy())
    version, path = _container_memory_cgroup(runtime.container_pid(box))
    # busybox nc ends at the end of its stdin: the listener's is a pipe that stays open and
    # empty, and its output a pipe nobody reads (so it stops reading the connection).
    filler = runtime.exec(box, "sleep 60 | nc -l -p 9000 | sleep 60 & "
                               "for i in $(seq 200); do head -c 33554432 /dev/zero | nc 127.0.0.1 9000 && break; done")

    def charged() -> int:
        if version == "1":
            return int(Path(path, "memory.kmem.tcp.usage_in_bytes").read_text())
        return int(dict(line.split() for line in Path(path, "memory.stat").read_text().splitlines())["sock"])

    try:
        _wait_for(lambda: charged() > 2 << 20, "TCP buffers charged to the container", seconds=10)
    finally:
        os.killpg(filler.pid, signal.SIGKILL)  # the command's group: nc, sleep and the loop
        filler.wait(10)
