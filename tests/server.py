"""A real devbox-sim server process for tests: `python -m simulator serve --port 0`.

The port is read from the server's own "listening on" log line; stop() terminates it and
waits, so a test leaves no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://[\d.]+:(\d+))")


class ServerProcess:
    def __init__(self, data_dir: Path | None, *extra_args: str, env: dict[str, str] | None = None,
                 argv: list[str] | None = None, cwd: str | None = None, log_file: Path | None = None):
        """``devbox-sim serve`` on ``data_dir`` with ``extra_args``; or, with ``argv``, exactly
        that command, in ``cwd``, with exactly ``env`` (e.g. a systemd unit's ExecStart).

        The server's log is read line by line into ``log`` by a thread of this process, unless
        ``log_file`` is given: then it goes to that file (benchmarks: a reader thread here would
        compete with the load generator for the GIL, and a lagging reader would block the
        server on a full pipe)."""
        self.data_dir = data_dir
        self.cwd = cwd
        self.log_file = log_file
        if argv is not None:
            self.args, self.env = list(argv), dict(env or {})
        else:
            # API only unless the test asks for a runtime: never a host uplink from a test.
            runtime = [] if "--runtime" in extra_args else ["--runtime", "none"]
            self.args = [sys.executable, "-m", "simulator", "serve", "--port", "0", "--data-dir", str(data_dir), *runtime, *extra_args]
            self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None
        self.url: str | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the server and wait until it answers /healthz. If it does not (or anything else
        goes wrong, Ctrl-C included), the process is stopped before the error propagates: a
        caller's ``with``/``finally`` never sees a server that failed to start."""
        try:
            if self.log_file is not None:
                self._start_logging_to_file(timeout)
            else:
                self._start_reading_log(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_reading_log(self, timeout: float) -> None:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            text=True, env=self.env, cwd=self.cwd,
        )
        found = threading.Event()

        def pump():
            assert self.proc and self.proc.stderr
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + "\n".join(self.log[-30:]))
        self._wait_until_ready(deadline)

    def _start_logging_to_file(self, timeout: float) -> None:
        with open(self.log_file, "w") as log:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stderr=log, stdout=subprocess.DEVNULL,
                text=True, env=self.env, cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        while self.url is None:
            match = _LISTENING.search(self.log_file.read_text())
            if match:
                self.url = match.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + self.log_file.read_text()[-3000:])
            else:
                time.sleep(0.02)  # polling the log file with a deadline
        self._wait_until_ready(deadline)

    def _wait_until_ready(self, deadline: float) -> None:
        import httpx

        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.02)  # polling with a deadline: uvicorn binds before it serves
        raise RuntimeError("server never answered")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop (SIGTERM, like `systemctl stop`); the exit code, or None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._pump is not None:
            self._pump.join(timeout=5)  # the log's last lines (read until the pipe's EOF)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def send_held_request(url: str, method: str, path: str, body: bytes, headers: dict[str, str],
                      timeout: float = 10.0) -> socket.socket:
    """Send one whole HTTP request to the server at ``url`` and return its connected socket
    once the server has read the request (its end of the connection holds no unread bytes).

    A request only *started* by a thread may still be in the client's connect() when the test
    stops the server; one the server has read is in uvicorn's hands and is answered before it
    exits. Read the answer with ``http.client.HTTPResponse(sock)``."""
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n{head}\r\n".encode() + body)
    client_port = sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while _server_unread_bytes(int(port), client_port) != 0:
        if time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server never read the request")
        time.sleep(0.01)  # polling the kernel's socket table with a deadline
    return sock


def _server_unread_bytes(server_port: int, client_port: int) -> int | None:
    """The receive queue of the server's end of the loopback connection from ``client_port``
    (None while the kernel does not list it)."""
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            remote_port = int(fields[2].split(":")[1], 16)
            if (local_port, remote_port) == (server_port, client_port):
                return int(fields[4].split(":")[1], 16)
    return None
