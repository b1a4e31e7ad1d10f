"""What a connection needs of the network, and its TCP implementation.

`server.Connection` (the reader) and `outbox.Outbox` (the writer) see a
client only through `Transport`, as httpcore's connections see only their
network stream: the transport turns bytes into whole frames (one JSON text
each) and each reply into its bytes on the wire. TCP frames end at a
terminator; `gchat.web.websocket.WebSocketTransport` reads WebSocket
messages instead, under the same connection, with every rule of
docs/protocol.md unchanged.
"""

from __future__ import annotations

import socket
from typing import Protocol

from gchat.config import Settings
from gchat.protocol import FrameDecoder, ProtocolError
from gchat.reads import Reads

RECV_SIZE = 64 * 1024

# What a read gives the reader: frames to handle, in order, and in their
# place the refusal of a message that is no frame at all (a WebSocket binary
# message), to be answered in order too.
Incoming = bytes | ProtocolError


class Transport(Protocol):
    # Frames share one byte stream, so a reader may get several in one read:
    # a classic client's are paced (docs/protocol.md part C). False where
    # each frame arrives as a message of its own (a WebSocket).
    stream: bool

    def receive(self) -> list[Incoming] | None:
        """The complete frames of the next read, blocking the calling
        greenlet (possibly none); None at the end of the stream. Raises
        FrameTooLarge (carrying the complete frames before it), and OSError
        when the connection is lost."""

    @property
    def buffered(self) -> int:
        """Bytes of a frame begun and not complete (for the log of a close)."""

    @property
    def received(self) -> int:
        """Bytes read so far (the reader pauses after each RECV_SIZE of them)."""

    def frame(self, body: bytes) -> bytes:
        """One reply or delivery (a JSON text) as it goes on the wire.
        OSError when nothing more can be written to this peer."""

    def send(self, data: bytes | memoryview) -> int:
        """Hand bytes to the kernel, blocking the calling greenlet until
        some are taken; returns how many. OSError when the connection is lost."""

    def send_nowait(self, data: bytes) -> int:
        """As `send`, but never waits: how many bytes the kernel took at once
        (0 when none). OSError when the connection is lost."""

    def shutdown_read(self) -> None:
        """Wake the reader (recv returns b""); what is queued may still be written."""

    def shutdown(self) -> None:
        """Stop both ways at once: a send blocked on a full buffer fails.
        Bytes the kernel already holds still reach the peer."""

    def close(self, reason: str = "") -> None:
        """The connection is over (`reason`: Connection.close_reason): say
        goodbye if the transport has a way to, and release the socket."""


class SocketIO:
    """The socket calls every transport makes the same way (TCP, WebSocket)."""

    __slots__ = ("_reads",)
    sock: socket.socket
    _reads: Reads  # made by each transport's __init__ over its sock

    def recv(self) -> bytes:
        """The next bytes from the peer, blocking the calling greenlet; b""
        at the end of the stream; after a read that emptied the kernel's
        buffer, a wait for readability comes first (gchat/reads.py)."""
        return self._reads.recv(RECV_SIZE)

    def send(self, data: bytes | memoryview) -> int:
        return self.sock.send(data)

    def send_nowait(self, data: bytes) -> int:
        try:
            if self._reads.plain:
                # the C socket under gevent's (non-blocking): the same call
                # without the Python wrapper of gevent's send(data, 0, 0.0);
                # a closed socket's stand-in raises EBADF, as that one does
                return self.sock._sock.send(data)  # type: ignore[attr-defined, no-any-return]
            # gevent's socket takes a timeout; 0 never waits
            return self.sock.send(data, 0, 0.0)  # type: ignore[call-arg]
        except BlockingIOError:
            return 0

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


class TcpTransport(SocketIO):
    """A client's TCP socket. Frames end at NUL or LF; replies end with the
    terminator the client's frames use, as the decoder found it
    (docs/protocol.md, framing)."""

    __slots__ = ("sock", "decoder", "received")
    stream = True

    def __init__(self, sock: socket.socket, decoder: FrameDecoder) -> None:
        self.sock = sock
        self.decoder = decoder
        self.received = 0
        self._reads = Reads(sock)

    def receive(self) -> list[Incoming] | None:
        data = self.recv()
        if not data:
            return None
        self.received += len(data)
        return self.decoder.feed(data)  # type: ignore[return-value]  # list is invariant; bytes are Incoming

    @property
    def buffered(self) -> int:
        return self.decoder.buffered

    def frame(self, body: bytes) -> bytes:
        return body + self.decoder.reply_terminator


    def close(self, reason: str = "") -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def tune(sock: socket.socket, settings: Settings) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # half-open connections (the peer vanished without a FIN) are found by
    # keepalive probes, and their users go offline
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, settings.keepalive_idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, settings.keepalive_interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.keepalive_count)
