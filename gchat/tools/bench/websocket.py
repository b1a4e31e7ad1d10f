"""gchat-bench over WebSocket: `--server ws://HOST:PORT` drives a node's web
listener (docs/protocol.md section E) with the same scenarios as TCP.

`WebSocketStream` stands where the bench's socket stands: what the bench
writes (frames ended by NUL) goes out as one text message per frame, and the
messages read come back as frames ended by NUL, so the bench's codec and
counting are the same on both transports. wsproto does the handshake and
the framing, as on the node.
"""

from __future__ import annotations

from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

PATH = "/ws"
SCHEME = "ws://"


class WebSocketAddress(tuple):  # type: ignore[type-arg]
    """(host, port) of a web listener: Conn speaks WebSocket to it."""

    def __str__(self) -> str:
        return f"{SCHEME}{self[0]}:{self[1]}{PATH}"


class WebSocketStream:
    """A connected socket after the WebSocket handshake, seen as a byte stream."""

    def __init__(self, sock: Any, address: tuple[str, int], recv_size: int) -> None:
        self.sock = sock
        self.recv_size = recv_size
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._partial: list[str] = []
        self._closed = False
        sock.sendall(self.ws.send(Request(host=f"{address[0]}:{address[1]}", target=PATH)))
        while True:
            data = sock.recv(recv_size)
            if not data:
                raise ConnectionError("the server closed the connection during the WebSocket handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"WebSocket handshake refused: HTTP {event.status_code}")

    def sendall(self, data: bytes) -> None:
        out = b"".join(
            self.ws.send(TextMessage(data=frame.decode())) for frame in data.split(b"\0") if frame.strip()
        )
        self.sock.sendall(out)

    def recv(self, size: int) -> bytes:
        """The next messages, each followed by NUL; b"" once closed."""
        while not self._closed:
            data = self.sock.recv(self.recv_size)
            if not data:
                return b""
            self.ws.receive_data(data)
            out: list[bytes] = []
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self._partial.append(event.data)
                    if event.message_finished:
                        out.append("".join(self._partial).encode() + b"\0")
                        self._partial.clear()
                elif isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._closed = True
            if out:
                return b"".join(out)
        return b""

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()
