"""WebSocket through the tunnel proxy: the real middleware under uvicorn (httptools and
wsproto, as in production) on loopback, in front of WebSocket servers on loopback standing in
for servers in devboxes (``test_tunnel_proxy``'s fixtures). Clients and servers speak wsproto
over plain sockets, so every frame and close code is what went over the wire."""

from __future__ import annotations

import queue
import socket

import pytest
from wsproto import ConnectionType
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Pong,
)

from simulator.api import tunnel_websocket
from tests.unit.test_tunnel_proxy import TUNNEL, proxy, upstream, wait_for  # noqa: F401 (fixtures)
from tests.ws_peer import SECONDS, Peer, handshake


def connect(url: str, port: int, target: str = "/", subprotocols=(), headers=()):
    """A client through the proxy for ``port`` in the devbox: (peer, answer) as ``handshake``."""
    return handshake(("127.0.0.1", int(url.rsplit(":", 1)[1])), f"{port}{TUNNEL}", target, subprotocols, headers)


def server(script):
    """A handler for ``upstream``: accept the handshake (first subprotocol offered), record the
    request, then ``script(peer)``."""
    seen: queue.Queue = queue.Queue()

    def handle(conn):
        peer = Peer(conn, ConnectionType.SERVER)
        request = peer.next()
        seen.put(request)
        peer.send(AcceptConnection(subprotocol=request.subprotocols[0] if request.subprotocols else None,
                                   extra_headers=[(b"x-from-devbox", b"yes")]))
        script(peer)

    return handle, seen


def echo(peer: Peer) -> None:
    while True:
        event = peer.next()
        if isinstance(event, CloseConnection):
            if peer.ws.state is ConnectionState.REMOTE_CLOSING:  # a close frame, not the connection's end
                peer.send(event.response())
            return
        if isinstance(event, Message):
            peer.send(Message(data=event.data, message_finished=event.message_finished))


def test_messages_cross_both_ways_with_the_handshake_as_the_client_made_it(proxy, upstream):
    url, _, tunnels = proxy
    handler, seen = server(echo)
    box = upstream(handler)
    client, answer = connect(url, box.port, "/socket?room=7", subprotocols=["chat", "other"],
                             headers=[(b"x-agent", b"a1"), (b"x-runloop-tunnel-authorization", b"Bearer t")])
    assert isinstance(answer, AcceptConnection)
    assert answer.subprotocol == "chat"  # the devbox's choice, passed on
    assert (b"x-from-devbox", b"yes") in answer.extra_headers
    request = seen.get(timeout=SECONDS)
    assert request.target == "/socket?room=7" and request.subprotocols == ["chat", "other"]
    assert request.host == f"{box.port}{TUNNEL}"
    names = {name for name, _ in request.extra_headers}
    assert (b"x-agent", b"a1") in request.extra_headers and b"x-runloop-tunnel-authorization" not in names

    client.send(Message(data="hello"))
    assert client.message() == "hello"
    client.send(Message(data=b"\x00\xffbinary"))
    assert client.message() == b"\x00\xffbinary"
    big = bytes(range(256)) * 4096  # 1 MiB: many frames and reads on the way
    client.send(Message(data=big))
    assert client.message() == big
    client.send(CloseConnection(code=1000))
    event = client.next()
    assert isinstance(event, CloseConnection) and event.code == 1000
    assert tunnels.touched >= 1  # the accept counts as activity (http_keep_alive; at most once a second)
    wait_for(lambda: tunnels.held == [])  # the connection was registered, and let go


def test_a_refused_handshake_is_the_devbox_servers_response(proxy, upstream):
    url, _, _ = proxy

    def refuse(conn):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nnope")

    box = upstream(refuse)
    _, (rejection, body) = connect(url, box.port)
    assert rejection.status_code == 403 and body == b"nope"
    assert (b"content-type", b"text/plain") in rejection.headers


def test_no_server_in_the_devbox_is_a_502_with_the_reason(proxy):
    url, _, _ = proxy
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nothing listens there
    _, (rejection, body) = connect(url, port)
    assert rejection.status_code == 502 and b"tunnel_connect_failed" in body


@pytest.mark.parametrize("who", ["devbox", "client"])
def test_close_codes_and_reasons_cross(proxy, upstream, who):
    url, _, _ = proxy
    closed: queue.Queue = queue.Queue()

    def script(peer):
        if who == "devbox":
            peer.send(CloseConnection(code=4001, reason="bye"))
            return
        closed.put(peer.next())

    handler, _ = server(script)
    box = upstream(handler)
    client, answer = connect(url, box.port)
    assert isinstance(answer, AcceptConnection)
    if who == "devbox":
        event = client.next()
    else:
        client.send(CloseConnection(code=4002, reason="done"))
        event = closed.get(timeout=SECONDS)
    assert isinstance(event, CloseConnection) and (event.code, event.reason) == \
        ((4001, "bye") if who == "devbox" else (4002, "done"))


def test_a_dropped_devbox_connection_is_1011_and_a_cut_is_1001(proxy, upstream):
    url, _, tunnels = proxy
    handler, _ = server(lambda peer: peer.sock.shutdown(socket.SHUT_RDWR))  # no close frame
    dropped = upstream(handler)
    client, _ = connect(url, dropped.port)
    assert client.next().code == 1011

    handler, _ = server(echo)
    box = upstream(handler)
    client, _ = connect(url, box.port)
    client.send(Message(data="still there"))
    assert client.message() == "still there"
    wait_for(lambda: len(tunnels.held) == 1)
    tunnels.held[0]()  # what TunnelService does when the devbox ends
    event = client.next()
    assert isinstance(event, CloseConnection) and event.code == 1001
    wait_for(lambda: tunnels.held == [])


def test_the_devbox_servers_pings_are_answered_by_the_proxy(proxy, upstream):
    url, _, _ = proxy
    answered: queue.Queue = queue.Queue()

    def script(peer):
        peer.send(Ping(payload=b"are you there"))
        answered.put(peer.next())

    handler, _ = server(script)
    box = upstream(handler)
    client, _ = connect(url, box.port)
    pong = answered.get(timeout=SECONDS)
    assert isinstance(pong, Pong) and pong.payload == b"are you there"
    client.sock.close()  # only now: a client that leaves first would close before the pong


def test_a_message_over_the_limit_closes_both_sides_with_1009(proxy, upstream, monkeypatch):
    url, _, _ = proxy
    monkeypatch.setattr(tunnel_websocket, "MAX_MESSAGE", 1000)
    closed: queue.Queue = queue.Queue()

    def script(peer):
        peer.send(Message(data=b"x" * 600, message_finished=False))
        peer.send(Message(data=b"x" * 600, message_finished=True))  # 1,200 bytes in all
        closed.put(peer.next())

    handler, _ = server(script)
    box = upstream(handler)
    client, _ = connect(url, box.port)
    event = client.next()
    assert isinstance(event, CloseConnection) and event.code == 1009
    assert closed.get(timeout=SECONDS).code == 1009



@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",  # a 1xx other than 101: nothing to pass on
        b"HTTP/1.1 700 Odd\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: x\r\nsec-websocket-protocol: caf\xe9\r\n\r\n",  # not ASCII
    ],
)
def test_a_handshake_answer_uvicorn_cannot_pass_on_is_a_502(proxy, upstream, answer):
    url, _, _ = proxy

    def odd(conn):
        conn.recv(65536)
        conn.sendall(answer)
        conn.recv(1)  # until the proxy lets go

    box = upstream(odd)
    _, (rejection, body) = connect(url, box.port, subprotocols=["caf"])
    assert rejection.status_code == 502 and b"tunnel_bad_response" in body, body


def test_a_cut_ends_a_websocket_at_once_even_with_data_the_devbox_never_read(proxy, upstream):
    url, app, tunnels = proxy
    stop = queue.Queue()

    def deaf(peer):  # accepts, then reads nothing: what the proxy sends piles up
        stop.get(timeout=30)

    handler, _ = server(deaf)
    box = upstream(handler)
    client, _ = connect(url, box.port)
    chunk = b"x" * 65536
    client.sock.settimeout(0.5)
    try:
        for _ in range(400):  # until the buffers on the way are full (at most 26 MB)
            client.send(Message(data=chunk))
    except TimeoutError:
        pass
    client.sock.settimeout(SECONDS)
    wait_for(lambda: len(tunnels.held) == 1)
    tunnels.held[0]()
    event = client.next()
    while not isinstance(event, CloseConnection):
        event = client.next()
    assert event.code == 1001
    wait_for(lambda: tunnels.held == [] and app._websockets == {})
    stop.put(True)


def test_a_reset_from_the_devbox_server_is_1011_not_a_cut(proxy, upstream):
    url, _, _ = proxy

    def reset(peer):
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close = RST
        peer.sock.close()

    handler, _ = server(reset)
    box = upstream(handler)
    client, _ = connect(url, box.port)
    event = client.next()
    assert isinstance(event, CloseConnection) and event.code == 1011


def test_the_message_limit_counts_text_in_utf8_bytes(proxy, upstream, monkeypatch):
    url, _, _ = proxy
    monkeypatch.setattr(tunnel_websocket, "MAX_MESSAGE", 1000)
    handler, _ = server(lambda peer: (peer.send(Message(data="\U0001f600" * 400)), peer.next()))  # 1,600 bytes
    box = upstream(handler)
    client, _ = connect(url, box.port)
    event = client.next()
    assert isinstance(event, CloseConnection) and event.code == 1009


def test_an_international_host_reaches_the_devbox_as_sent(proxy, upstream):
    url, _, _ = proxy
    handler, seen = server(echo)
    box = upstream(handler)
    name = f"{box.port}{TUNNEL.replace('localhost', 'xn--bcher-kva.example')}"
    client, answer = handshake(("127.0.0.1", int(url.rsplit(":", 1)[1])), name)
    assert isinstance(answer, AcceptConnection)
    assert seen.get(timeout=SECONDS).host == name.encode().decode("idna")  # wsproto reads it back from IDNA
    client.sock.close()


@pytest.mark.parametrize(
    "bad",
    [b"Host: 80" + TUNNEL.encode().replace(b"localhost", b"xn--zz") + b"\r\n",  # no valid IDNA
     b"Host: 80" + TUNNEL.encode() + b"\r\nSec-WebSocket-Protocol: \xe9\r\n"],  # not ASCII
)
def test_a_handshake_wsproto_cannot_read_is_a_400_and_the_listener_goes_on(proxy, upstream, bad):
    url, _, tunnels = proxy
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=SECONDS) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + bad + b"\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # until closed
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")  # uvicorn alone: no answer, a traceback in the log
    assert tunnels.admitted == 0
    handler, _ = server(echo)
    client, answer = connect(url, upstream(handler).port)  # the next one is served
    assert isinstance(answer, AcceptConnection)
    client.sock.close()
