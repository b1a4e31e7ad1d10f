"""gchat-bench over WebSocket: `--server ws://HOST:PORT` drives a node's web
listener (docs/protocol.md section E) with the same scenarios as TCP.

`WebSocketStream` stands where the bench's socket stands for writing: what
the bench writes (frames ended by NUL) goes out as one text message per
frame. For reading it is the connection's splitter (gchat.client.framing):
the bytes of each read go to the library, and each text message it completes
is a frame, handed to the bench as it is (no terminator added only to be
split off again: the bench's clients must cost about what TCP's cost, or the
node would see fewer messages per wake-up over WebSocket and its CPU per
message would measure the bench). websockets' Sans-I/O client does the
handshake and the framing, as its server side does on the node.
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
TEXT, CONT = Opcode.TEXT, Opcode.CONT


class WebSocketAddress(tuple):  # type: ignore[type-arg]
    """(host, port) of a web listener: Conn speaks WebSocket to it."""

    def __str__(self) -> str:
        return f"{SCHEME}{self[0]}:{self[1]}{PATH}"


class WebSocketStream:
    """A connected socket after the WebSocket handshake: writes as a socket,
    reads as a splitter (`recv` gives the socket's bytes, `feed` the
    messages in them)."""

    def __init__(self, sock: Any, address: tuple[str, int], recv_size: int) -> None:
        self.sock = sock
        self.ws = ClientProtocol(parse_uri(f"{SCHEME}{address[0]}:{address[1]}{PATH}"), max_size=None)
        self._partial: list[bytes | bytearray | memoryview] = []
        # messages that came in the same read as the 101 (for RawClient.frames)
        self.early: list[bytes] = []
        self.ws.send_request(self.ws.connect())
        sock.sendall(b"".join(self.ws.data_to_send()))
        while self.ws.state is State.CONNECTING:
            data = sock.recv(recv_size)
            if not data:
                raise ConnectionError("the server closed the connection during the WebSocket handshake")
            self.ws.receive_data(data)
            events = self.ws.events_received()
            for event in events:
                if isinstance(event, Response) and event.status_code != 101:
                    raise ConnectionError(f"WebSocket handshake refused: HTTP {event.status_code}")
            self.early += self._messages(events)

    def sendall(self, data: bytes) -> None:
        ws = self.ws
        for frame in data.split(b"\0"):
            if frame.strip():
                ws.send_text(frame)
        self.sock.sendall(b"".join(ws.data_to_send()))

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)  # type: ignore[no-any-return]

    def feed(self, data: bytes) -> list[bytes]:
        """The messages these bytes complete. A close from the node leaves
        none: the node then closes the socket, and the next recv ends it."""
        ws = self.ws
        ws.receive_data(data)
        out = self._messages(ws.events_received())
        pending = ws.data_to_send()  # pongs, the answer to a close
        if pending:
            try:
                self.sock.sendall(b"".join(pending))
            except OSError:
                pass  # closed by the node: the next recv says so
        return out

    def _messages(self, events: list[Any]) -> list[bytes]:
        out: list[bytes] = []
        for frame in events:
            if type(frame) is not Frame:
                continue
            opcode = frame.opcode
            if opcode is TEXT and frame.fin and not self._partial:  # a whole message, the usual case
                out.append(bytes(frame.data))
            elif opcode is TEXT or opcode is CONT:
                self._partial.append(frame.data)
                if frame.fin:
                    out.append(b"".join(self._partial))
                    self._partial.clear()
        return out

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()
