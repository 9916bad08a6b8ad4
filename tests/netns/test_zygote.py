"""netns/zygote.py: sandbox holders are forked by a small helper process, not the simulator."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from netns.zygote import Spawner


def _output(fd: int, seconds: float = 10) -> str:
    buf = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not r:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                return buf.decode()
            buf += chunk
    finally:
        os.close(fd)
    raise AssertionError(f"child output did not end: {buf!r}")


@pytest.fixture
def spawner():
    s = Spawner()
    try:
        yield s
    finally:
        s.close()


def test_child_is_a_clean_session_leader(spawner):
    script = "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; ps -o sid= -p $$; echo $$; echo $X; trap"
    pid, fd = spawner.spawn(["/bin/sh", "-c", script], {"X": "from-env", "PATH": "/usr/bin:/bin"}, None)
    lines = _output(fd).splitlines()
    assert lines[0].split() == ["0", "1", "2", "3"]  # stdin, output pipe (1, 2), ls's own dir
    assert int(lines[1]) == int(lines[2]) == pid  # its own session
    assert lines[3] == "from-env"  # exactly the given environment
    assert lines[4:] == []  # no inherited ignored signals (trap prints nothing)


def test_setup_errors_are_reported_on_the_output(spawner):
    plan = {"net": "/run/netns/dbxsim-no-such-ns", "hostname": "x", "sources": [], "hides": []}
    _pid, fd = spawner.spawn(["/bin/true"], {}, plan)
    out = _output(fd)
    assert out.startswith("sandbox setup failed:") and "No such file" in out, out


def test_a_dead_zygote_is_replaced(spawner):
    spawner.start()
    first = spawner.pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while spawner.pid is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # bounded poll: the kernel delivers the kill asynchronously
    pid, fd = spawner.spawn(["/bin/sh", "-c", "echo again"], {}, None)
    assert _output(fd) == "again\n"
    assert spawner.pid not in (None, first)


def test_zygote_exits_when_the_simulator_side_closes(spawner):
    spawner.start()
    proc = spawner._proc
    spawner.close()
    # It exited by itself on EOF (close() would have had to kill it: -9) and was reaped.
    assert proc.returncode == 0
    assert not os.path.exists(f"/proc/{proc.pid}")


def _pids_cgroup_dir() -> str | None:
    """A pids-controller hierarchy to put the zygote in: cgroup v1's, else v2's."""
    if os.path.isdir("/sys/fs/cgroup/pids"):
        return "/sys/fs/cgroup/pids"
    controllers = "/sys/fs/cgroup/cgroup.controllers"
    if os.path.exists(controllers) and "pids" in open(controllers).read().split():
        return "/sys/fs/cgroup"
    return None


@pytest.mark.privileged
def test_failed_forks_leak_no_descriptors(spawner, tmp_path):
    """Under a pids limit fork fails; the zygote reports it and closes the pipe it made."""
    base = _pids_cgroup_dir()
    if base is None:
        if os.environ.get("CI"):
            pytest.fail("no pids cgroup controller: CI must have one (v1 pids or v2 with pids enabled)")
        pytest.skip("no pids cgroup controller")
    spawner.start()
    zygote = spawner.pid
    group = os.path.join(base, f"dbxsim-test-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "pids.max"), "w") as f:
            f.write("1")  # the zygote itself: no child can be forked
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(zygote))
        # Counted after one failed request: start() does not wait for the zygote's imports
        # (a module file still open would count), and a failure's reply is sent only once
        # both pipe ends are closed (after a success, the read end closes after the reply).
        with pytest.raises(OSError, match="fork failed"):
            spawner.spawn(["/bin/true"], {}, None)
        before = len(os.listdir(f"/proc/{zygote}/fd"))
        for _ in range(5):
            with pytest.raises(OSError, match="fork failed"):
                spawner.spawn(["/bin/true"], {}, None)
        assert len(os.listdir(f"/proc/{zygote}/fd")) == before
    finally:
        spawner.close()  # the zygote leaves the group by exiting
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(group)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # bounded: the exited zygote leaves the group asynchronously


def _alive_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        with open(f"/proc/{entry}/stat") as g:
                            if g.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                                pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_a_child_forked_for_a_simulator_gone_meanwhile_is_killed(spawner, capfd):
    """The simulator killed between its request and the zygote's reply: the zygote printed a
    BrokenPipeError traceback, and its child went on to start a holder nobody tracked."""
    import json
    import secrets

    marker = f"dbxsim-zygote-orphan-{secrets.token_hex(4)}"
    spawner.start()
    zygote = spawner._proc
    request = {"argv": ["/bin/sh", "-c", f"exec -a {marker} sleep 100"], "env": {"PATH": "/usr/bin:/bin"}, "plan": None}
    spawner._sock.sendall(json.dumps(request).encode())
    spawner._sock.close()  # gone before the reply: the request is still read, the reply fails
    spawner._sock = None
    assert zygote.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _alive_with(marker) == []
    assert "Traceback" not in capfd.readouterr().err
