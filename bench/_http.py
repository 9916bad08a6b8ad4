"""A lean open-loop HTTP/1.1 load generator: raw keep-alive sockets, one selector thread.

httpx/asyncio cost more CPU per request than the server's cheapest endpoint on a 2-core
machine, so the generator itself would saturate the cores and its queueing would be measured.
Here each request is pre-encoded bytes; request i is due at start + i/rate and goes out on the
first idle connection; its latency is measured from when it was due (no coordinated omission).
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from urllib.parse import urlencode, urlsplit


def encode(host: str, method: str, path: str, *, headers: dict | None = None, params: dict | None = None,
           body: dict | None = None) -> bytes:
    if params:
        path += "?" + urlencode(params)
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(data)}"]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def open_loop(base_url: str, requests: list[bytes], rate: float, connections: int = 8) -> list[float]:
    """Send ``requests`` at ``rate``/s; latencies (ms) from each request's due time. Every
    response must be 200."""
    url = urlsplit(base_url)
    selector = selectors.DefaultSelector()
    idle = []
    for _ in range(connections):
        sock = socket.create_connection((url.hostname, url.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        idle.append(sock)
    state: dict[socket.socket, list] = {}  # sock -> [due, buffer]
    latencies: list[float] = []
    start = time.perf_counter()
    next_index = 0
    try:
        while len(latencies) < len(requests):
            now = time.perf_counter()
            while next_index < len(requests) and idle and start + next_index / rate <= now:
                sock = idle.pop()
                _send(sock, requests[next_index])
                state[sock] = [start + next_index / rate, b""]
                selector.register(sock, selectors.EVENT_READ)
                next_index += 1
            due = start + next_index / rate if next_index < len(requests) and idle else None
            timeout = max(0.0, due - time.perf_counter()) if due else 0.05
            for key, _ in selector.select(timeout):
                sock = key.fileobj
                entry = state[sock]
                entry[1] += sock.recv(65536)
                done = _complete(entry[1])
                if done is None:
                    continue
                status, rest = done
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {entry[1][:300]!r}")
                latencies.append((time.perf_counter() - entry[0]) * 1000)
                selector.unregister(sock)
                del state[sock]
                idle.append(sock)
    finally:
        for sock in [*idle, *state]:
            sock.close()
        selector.close()
    return latencies


def _send(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            selectors.DefaultSelector().select(0.001)
            continue
        view = view[sent:]


def _complete(buffer: bytes) -> tuple[int, bytes] | None:
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end].decode("latin-1").split("\r\n")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if len(buffer) < head_end + 4 + length:
        return None
    return int(head[0].split()[1]), buffer[head_end + 4 + length:]
