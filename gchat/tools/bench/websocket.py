"""gchat-bench over WebSocket: `--server ws://HOST:PORT` drives a node's web
listener (docs/protocol.md section E) with the same scenarios as TCP.

`WebSocketStream` stands where the bench's socket stands: what the bench
writes (frames ended by NUL) goes out as one text message per frame, and the
messages read come back as frames ended by NUL, so the bench's codec and
counting are the same on both transports. websockets' Sans-I/O client does
the handshake and the framing, as its server side does on the node.
"""

from __future__ import annotations

from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

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
        self.ws = ClientProtocol(parse_uri(f"{SCHEME}{address[0]}:{address[1]}{PATH}"), max_size=None)
        self._partial: list[bytes | bytearray | memoryview] = []
        self.ws.send_request(self.ws.connect())
        sock.sendall(b"".join(self.ws.data_to_send()))
        while self.ws.state is State.CONNECTING:
            data = sock.recv(recv_size)
            if not data:
                raise ConnectionError("the server closed the connection during the WebSocket handshake")
            self.ws.receive_data(data)
            for event in self.ws.events_received():
                if isinstance(event, Response) and event.status_code != 101:
                    raise ConnectionError(f"WebSocket handshake refused: HTTP {event.status_code}")

    def sendall(self, data: bytes) -> None:
        for frame in data.split(b"\0"):
            if frame.strip():
                self.ws.send_text(frame)
        self.sock.sendall(b"".join(self.ws.data_to_send()))

    def recv(self, size: int) -> bytes:
        """The next messages, each followed by NUL; b"" once closed."""
        while self.ws.state is State.OPEN:
            data = self.sock.recv(self.recv_size)
            if not data:
                return b""
            self.ws.receive_data(data)
            out: list[bytes] = []
            for frame in self.ws.events_received():
                if isinstance(frame, Frame) and frame.opcode in (Opcode.TEXT, Opcode.CONT):
                    self._partial.append(frame.data)
                    if frame.fin:
                        out.append(b"".join(self._partial) + b"\0")
                        self._partial.clear()
            pending = self.ws.data_to_send()  # pongs
            if pending:
                self.sock.sendall(b"".join(pending))
            if out:
                return b"".join(out)
        return b""

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()
