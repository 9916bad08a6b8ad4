"""A WebSocket end over a plain socket (wsproto), for tests that check each frame and close
code as it went over the wire."""

from __future__ import annotations

import socket

from wsproto import ConnectionType, WSConnection
from wsproto.events import Message, Ping, RejectConnection, Request, TextMessage

SECONDS = 10


class Peer:
    """One end of a WebSocket over a socket: ``events()`` reads until there are some."""

    def __init__(self, sock: socket.socket, role: ConnectionType):
        self.sock, self.ws = sock, WSConnection(role)
        self.sock.settimeout(SECONDS)
        self.pending: list = []

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def next(self):
        """The next event; a CloseConnection when the connection ends without one."""
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    def message(self):
        """The next whole message's data, answering pings on the way."""
        parts = []
        while True:
            event = self.next()
            if isinstance(event, Ping):
                self.send(event.response())
                continue
            assert isinstance(event, Message), event
            parts.append(event.data)
            if event.message_finished:
                return ("" if isinstance(event, TextMessage) else b"").join(parts)


def handshake(address: tuple[str, int], host: str, target: str = "/", subprotocols=(), headers=(),
              extensions=()) -> tuple[Peer, object]:
    """A client of the server at ``address``: (the peer, the server's answer: AcceptConnection,
    or (RejectConnection, body))."""
    client = Peer(socket.create_connection(address, timeout=SECONDS), ConnectionType.CLIENT)
    client.send(Request(host=host, target=target, subprotocols=list(subprotocols), extra_headers=list(headers),
                        extensions=list(extensions)))
    event = client.next()
    if isinstance(event, RejectConnection):
        body = b""
        while event.has_body:
            part = client.next()
            body += part.data
            if part.body_finished:
                break
        return client, (event, body)
    return client, event
