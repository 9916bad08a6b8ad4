"""The simulator raises its soft open-file limit (a login shell's 1024 ran out at a few hundred
running commands), and what waits on descriptors still works once they are 1024 or more."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import threading

import pytest

from simulator.fd_limit import WANTED, raise_open_file_limit

LOW = 256


def _soft_limit_of(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def _expected(hard: int) -> int:
    return WANTED if hard == resource.RLIM_INFINITY else min(WANTED, hard)


def test_serve_raises_a_low_soft_limit(tmp_path):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= LOW:
        pytest.fail(f"hard open-file limit {hard} leaves nothing to test")

    def low_soft_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, hard))

    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "serve", "--runtime", "none", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(tmp_path / "data")],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, preexec_fn=low_soft_limit, text=True,
    )
    try:
        listening = threading.Event()

        def read_log():  # the listening line comes once the app is built
            for line in proc.stderr:
                if "listening on" in line:
                    listening.set()

        threading.Thread(target=read_log, daemon=True).start()
        assert listening.wait(30), "the server never said it was listening"
        assert proc.poll() is None, "the server exited"
        assert _soft_limit_of(proc.pid) == _expected(hard)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def _soft_limit(soft: int):
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_raise_never_lowers_and_never_passes_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with _soft_limit(min(soft, LOW)):
        got = raise_open_file_limit(wanted=LOW + 10)
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(LOW + 10, _expected(hard))
        assert raise_open_file_limit(wanted=LOW) == got  # never lowered
        assert raise_open_file_limit(wanted=10**12) == resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= hard


@contextlib.contextmanager
def _descriptors_from_1024():
    """Fill the descriptor table up to 1100 so that what opens next gets a descriptor >= 1024."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.fail(f"hard open-file limit {hard}: cannot test descriptors of 1024 or more")
    with _soft_limit(2048):
        fillers = []
        try:
            while len(fillers) < 1100:
                fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                fillers.append(fd)
                if fd >= 1100:
                    break
            yield
        finally:
            for fd in fillers:
                os.close(fd)


def test_sandbox_start_reads_its_ready_line_on_a_high_descriptor():
    from netns.sandbox import Sandbox

    with _descriptors_from_1024():
        r, w = os.pipe()
        try:
            assert r >= 1024
            os.write(w, b"ready\n")
            assert Sandbox._read_ready(r) is None
        finally:
            os.close(r)
            os.close(w)


@pytest.mark.privileged
def test_nflog_reader_runs_on_high_descriptors(uniq):
    from netns.nflog import NflogReader

    name = uniq("fd")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with _descriptors_from_1024():
            reader = NflogReader(name, 7, lambda packet: None)
            died = []
            hook, threading.excepthook = threading.excepthook, died.append
            try:
                assert reader._sock.fileno() >= 1024
                reader.start()
            finally:
                reader.stop()  # joins the thread: it waited for the stop, or died trying to wait
                threading.excepthook = hook
            assert not reader._thread.is_alive()
            assert not died, f"the reader thread died: {died[0].exc_value!r}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.privileged
def test_no_nft_context_is_made_on_a_descriptor_libnftables_cannot_wait_on(uniq):
    """libnftables waits with select(): a context on descriptor 1024 or more aborted the whole
    process (a test worker died so). Nft refuses with an error instead; the process lives on."""
    from netns.nft import Nft, NftError

    name = uniq("fd")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with _descriptors_from_1024():
            with pytest.raises(NftError, match="no descriptor below 1024 is free"):
                Nft(name)
        with Nft(name) as nft:  # descriptors below 1024 free again: it works
            nft.apply({"nftables": [{"add": {"table": {"family": "inet", "name": "t"}}}]})
            assert ("inet", "t") in nft.list_tables()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
