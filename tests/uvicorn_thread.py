"""An ASGI app served by uvicorn in a thread of the test process, as `devbox-sim serve` serves
(its protocol options: HTTP/1.1, h2c, WebSockets), on a loopback port of its own."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from simulator.cli import uvicorn_protocol_options


@contextlib.contextmanager
def served_in_thread(app, **config) -> Iterator[tuple[str, uvicorn.Server]]:
    """(base url, the server) while the block runs; stopped and joined after it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", **{"log_level": "error", **config},
                                           **uvicorn_protocol_options()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn's thread ended before it started"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)  # polling the server's start with a deadline
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
