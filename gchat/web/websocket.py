"""The WebSocket transport: one JSON text per WebSocket text message.

The framing and its state machine are websockets' Sans-I/O layer
(`websockets.server.ServerProtocol`: bytes in, frames out, as h11; gevent
does the I/O here). wsproto, the first choice, parsed a small message in
about 11 us of pure Python against 3 us here, which put the node's CPU per
WebSocket message at over twice TCP's (docs/benchmarks.md, "WebSocket").

Whole text messages go to `server.Connection`, which handles them exactly as
TCP frames (docs/protocol.md, "WebSocket"). Replies and deliveries are
framed here, in the outbox's writer greenlet; control frames (pong, ping)
are queued in the same outbox, so one greenlet writes every byte of the
socket and a control frame never lands inside a message. A close frame is
written last, by `close`, after the outbox's final flush.
"""

from __future__ import annotations

import logging
import socket
from typing import Protocol

from websockets.exceptions import PayloadTooBig
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from gchat.protocol import Errno, FrameTooLarge, ProtocolError
from gchat.reads import Reads
from gchat.transport import Incoming, SocketIO

log = logging.getLogger(__name__)

TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
OPEN = State.OPEN

# The library's own frame log (DEBUG) prints payloads, and a login carries
# a password: it stays quiet even when the node runs at DEBUG.
FRAME_LOG = logging.getLogger("gchat.web.frames")
FRAME_LOG.setLevel(logging.WARNING)

# Connection.close reasons -> the close code the browser is told (RFC 6455,
# 7.4.1). A connection cut off as a slow reader, dead, or whose write failed
# gets none: its stream may end inside a message.
CLOSE_CODES = {
    "frame too large": CloseCode.MESSAGE_TOO_BIG,  # 1009, after the errno 9 reply
    "server shutting down": CloseCode.GOING_AWAY,  # 1001: the app reconnects to another node
    "flood": CloseCode.POLICY_VIOLATION,
    "login timeout": CloseCode.POLICY_VIOLATION,
    "logged in on another node": CloseCode.POLICY_VIOLATION,
    "too many connections": CloseCode.TRY_AGAIN_LATER,  # 1013, after errno 10 (max_per_ip)
}
NO_GOODBYE = {"slow reader", "write failed", "dead peer"}
# a close frame is a few bytes into an empty send buffer; a peer that does
# not take them in this long is gone anyway
GOODBYE_TIMEOUT = 1.0


def server_protocol(frame_max: int) -> ServerProtocol:
    """The state machine for one client: no extension (no compression), and
    no message over frame_max bytes (the library refuses it with 1009 and
    buffers no more than that)."""
    return ServerProtocol(max_size=frame_max, logger=FRAME_LOG)


class Control(bytes):
    """A WebSocket control frame, framed already. It is queued in the
    outbox as a reply (never stored: it belongs to no user) so that the
    writer greenlet writes it between two messages."""


class Writer(Protocol):
    """What the transport needs of the outbox: a place in its queue."""

    def reply(self, body: bytes) -> None: ...


class WebSocketTransport(SocketIO):
    """A client's WebSocket after the handshake (gchat.web.listener)."""

    __slots__ = ("sock", "ws", "frame_max", "writer", "heard", "pinged", "received", "_parts", "_size", "_goodbye",
                 "_ended", "_early")
    stream = False  # one frame per WebSocket message: never paced

    def __init__(self, sock: socket.socket, ws: ServerProtocol, frame_max: int, early: bytes = b"") -> None:
        self.sock = sock
        self._early = early  # bytes read with the handshake
        self._reads = Reads(sock)
        self.ws = ws
        self.frame_max = frame_max
        self.writer: Writer | None = None  # the connection's outbox, once it has one
        self.heard = True  # bytes came in since the last keepalive sweep
        self.pinged = False  # a ping went out and nothing came back yet
        self.received = 0  # bytes read
        self._parts: list[bytes | bytearray | memoryview] = []  # the text message being received
        self._size = 0
        # what the library queued on closing (its close frame, or the echo of
        # the peer's), written by close() after the outbox's last flush
        self._goodbye: list[bytes] = []
        self._ended = False

    def _feed(self, data: bytes) -> list[Incoming]:
        """The messages completed by these bytes."""
        ws = self.ws
        ws.receive_data(data)
        out: list[Incoming] = []
        for frame in ws.events_received():
            if type(frame) is not Frame:  # only frames come after the handshake
                continue
            opcode, payload = frame.opcode, frame.data
            if opcode is TEXT and frame.fin and not self._parts:
                # the usual case, a whole message in one frame: its payload
                # (bytes: the library unmasked it) is the frame as it is
                text = payload if type(payload) is bytes else bytes(payload)
            elif opcode is TEXT or (opcode is CONT and self._parts):
                self._parts.append(payload)
                self._size += len(payload)
                if not frame.fin:
                    continue
                text = b"".join(self._parts)
                self._parts = []
                self._size = 0
            else:
                if opcode is BINARY or opcode is CONT:
                    if frame.fin:  # answered once, when the message ends, in its place among the frames
                        out.append(ProtocolError(Errno.BAD_REQUEST, "binary WebSocket message: send JSON as text"))
                continue  # control frames: the library answers them (below)
            try:
                text.decode()
            except UnicodeDecodeError:  # RFC 6455 8.1: fail the connection
                ws.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                break
            out.append(text)
        sent = ws.data_to_send()
        if sent or ws.state is not OPEN:  # a ping, a close or a broken frame: the library answered
            self._answered(sent, out)
        return out

    def _answered(self, sent: list[bytes], out: list[Incoming]) -> None:
        """Write what the library wrote in answer to the peer's frames: a
        pong now, among the replies; a close frame last, at the end."""
        ws = self.ws
        if ws.state is OPEN:
            for data in sent:  # pongs
                self._control(data)
        else:  # closing: the peer's close, or a frame the library refused
            self._goodbye += sent
            self._ended = True
            exc = ws.parser_exc
            if isinstance(exc, PayloadTooBig):
                raise FrameTooLarge(self.frame_max, [f for f in out if type(f) is bytes])
            if exc is not None and not isinstance(exc, EOFError):
                log.info("WebSocket protocol error: %s", exc)

    # --- reading -------------------------------------------------------------

    def receive(self) -> list[Incoming] | None:
        while True:
            if self._ended:
                return None
            if self._early:
                data, self._early = self._early, b""
            else:
                data = self.recv()
            if not data:
                return None
            self.received += len(data)
            self.heard = True
            self.pinged = False
            out = self._feed(data)
            if out or self._ended:
                return out

    @property
    def buffered(self) -> int:
        return self._size

    # --- writing -------------------------------------------------------------

    def frame(self, body: bytes) -> bytes:
        if type(body) is Control:
            return body
        if self.ws.close_rcvd is not None:
            # the peer closed: it reads nothing more; the outbox stores it
            raise BrokenPipeError("WebSocket closed by the peer")
        # a server's text frame, unmasked, no extension: what send_text
        # writes, without its state check, so that the errno 9 reply still
        # goes out after the library refused the oversized message
        return Frame(TEXT, body).serialize(mask=False)

    def _control(self, data: bytes) -> None:
        if self.writer is not None and data:
            self.writer.reply(Control(data))

    def ping(self) -> None:
        """Queue a ping: the peer's pong (or anything it sends) proves it alive."""
        if self.ws.state is State.OPEN:
            self.pinged = True
            self.ws.send_ping(b"gchat")
            for data in self.ws.data_to_send():
                self._control(data)

    # --- the end -------------------------------------------------------------

    def close(self, reason: str = "") -> None:
        """After the outbox's last flush: the close frame (the peer's code
        echoed, the library's verdict, or the one of `reason`), then the socket."""
        if reason not in NO_GOODBYE:
            if self.ws.state is State.OPEN:
                self.ws.send_close(CLOSE_CODES.get(reason, CloseCode.NORMAL_CLOSURE), reason[:100])
                self._goodbye += self.ws.data_to_send()
            goodbye = b"".join(self._goodbye)
            if goodbye:
                try:
                    self.sock.settimeout(GOODBYE_TIMEOUT)
                    self.sock.sendall(goodbye)
                except OSError:
                    pass
        try:
            self.sock.close()
        except OSError:
            pass
