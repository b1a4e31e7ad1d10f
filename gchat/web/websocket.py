"""The WebSocket transport: one JSON text per WebSocket text message.

wsproto (sans-IO, as h11) owns the framing and its state machine; this
module feeds it the socket's bytes and hands whole messages to
`server.Connection`, which handles them exactly as TCP frames
(docs/protocol.md, "WebSocket"). Replies and deliveries are framed here, in
the outbox's writer greenlet: control frames (pong, ping) are queued in the
same outbox, so one greenlet writes every byte of the socket and a control
frame never lands inside a message.
"""

from __future__ import annotations

import logging
import socket
from typing import Protocol

from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from gchat.protocol import Errno, FrameTooLarge, ProtocolError
from gchat.transport import RECV_SIZE, Incoming

log = logging.getLogger(__name__)

# Connection.close reasons -> the close code the browser is told (RFC 6455,
# 7.4.1). A connection cut off as a slow reader, dead, or whose write failed
# gets none: its stream may end inside a message.
CLOSE_CODES = {
    "frame too large": CloseReason.MESSAGE_TOO_BIG,  # 1009, after the errno 9 reply
    "server shutting down": CloseReason.GOING_AWAY,  # 1001: the app reconnects to another node
    "flood": CloseReason.POLICY_VIOLATION,
    "login timeout": CloseReason.POLICY_VIOLATION,
    "logged in on another node": CloseReason.POLICY_VIOLATION,
    "too many connections": CloseReason.TRY_AGAIN_LATER,  # 1013, after errno 10 (max_per_ip)
}
NO_GOODBYE = {"slow reader", "write failed", "dead peer"}
# a close frame is a few bytes into an empty send buffer; a peer that does
# not take them in this long is gone anyway
GOODBYE_TIMEOUT = 1.0


class Control(bytes):
    """A WebSocket control frame, framed already. It is queued in the
    outbox as a reply (never stored: it belongs to no user) so that the
    writer greenlet writes it between two messages."""


class Writer(Protocol):
    """What the transport needs of the outbox: a place in its queue."""

    def reply(self, body: bytes) -> None: ...


class WebSocketTransport:
    """A client's WebSocket after the handshake (gchat.web.listener)."""

    __slots__ = ("sock", "ws", "frame_max", "writer", "heard", "pinged", "received", "_parts", "_chars", "_close_code")

    def __init__(self, sock: socket.socket, ws: WSConnection, frame_max: int, leftover: bytes = b"") -> None:
        self.sock = sock
        self.ws = ws
        self.frame_max = frame_max
        self.writer: Writer | None = None  # the connection's outbox, once it has one
        self.heard = True  # bytes came in since the last keepalive sweep
        self.pinged = False  # a ping went out and nothing came back yet
        self.received = 0  # bytes read
        self._parts: list[str] = []  # the text message being received
        self._chars = 0
        self._close_code: int | None = None  # the close to send back: the peer's, or a protocol error's
        if leftover:
            ws.receive_data(leftover)

    # --- reading -------------------------------------------------------------

    def receive(self) -> list[Incoming] | None:
        while True:
            if self._close_code is not None:
                return None
            data = self.sock.recv(RECV_SIZE)
            if not data:
                return None
            self.received += len(data)
            self.heard = True
            self.pinged = False
            self.ws.receive_data(data)
            out = self._events()
            if out or self._close_code is not None:
                return out

    def _events(self) -> list[Incoming]:
        out: list[Incoming] = []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                self._chars += len(event.data)
                # a character is 1 to 4 bytes: past frame_max characters
                # the message is too large whatever they are
                if self._chars > self.frame_max:
                    raise FrameTooLarge(self.frame_max, [f for f in out if type(f) is bytes])
                if event.message_finished:
                    text = "".join(self._parts).encode()
                    self._parts.clear()
                    self._chars = 0
                    if len(text) > self.frame_max:
                        raise FrameTooLarge(self.frame_max, [f for f in out if type(f) is bytes])
                    out.append(text)
            elif isinstance(event, BytesMessage):
                # answered once, when the message ends, in its place among the frames
                if event.message_finished:
                    out.append(ProtocolError(Errno.BAD_REQUEST, "binary WebSocket message: send JSON as text"))
            elif isinstance(event, Ping):
                self._control(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                # the peer's close (answered with its code), or a frame
                # wsproto refused (1002 protocol error, 1007 bad UTF-8)
                code = event.code
                self._close_code = CloseReason.NORMAL_CLOSURE if code == CloseReason.NO_STATUS_RCVD else code
                if self.ws.state is ConnectionState.OPEN:
                    log.info("WebSocket protocol error (%s): %s", code, event.reason)
                break
            elif isinstance(event, Pong):
                pass  # heard: counted above
        return out

    @property
    def buffered(self) -> int:
        return self._chars

    # --- writing -------------------------------------------------------------

    def frame(self, body: bytes) -> bytes:
        if type(body) is Control:
            return body
        try:
            return self.ws.send(TextMessage(data=body.decode()))
        except LocalProtocolError:
            # the peer closed: nothing more may be sent; the outbox stores it
            raise BrokenPipeError("WebSocket closed by the peer") from None

    def _control(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.reply(Control(data))

    def ping(self) -> None:
        """Queue a ping: the peer's pong (or anything it sends) proves it alive."""
        if self.ws.state is ConnectionState.OPEN:
            self.pinged = True
            self._control(self.ws.send(Ping(payload=b"gchat")))

    def send(self, data: bytes | memoryview) -> int:
        return self.sock.send(data)

    def send_nowait(self, data: bytes) -> int:
        try:
            # gevent's socket takes a timeout; 0 never waits
            return self.sock.send(data, 0, 0.0)  # type: ignore[call-arg]
        except BlockingIOError:
            return 0

    # --- the end -------------------------------------------------------------

    def shutdown_read(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, reason: str = "") -> None:
        """After the outbox's last flush: the close frame (the peer's code
        echoed, or the one of `reason`), then the socket."""
        if reason not in NO_GOODBYE and self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            code = self._close_code or CLOSE_CODES.get(reason, CloseReason.NORMAL_CLOSURE)
            try:
                data = self.ws.send(CloseConnection(code=code, reason=reason[:100]))
                self.sock.settimeout(GOODBYE_TIMEOUT)
                self.sock.sendall(data)
            except (OSError, LocalProtocolError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
