"""What a connection needs of the network, and its TCP implementation.

`server.Connection` (the reader) and `outbox.Outbox` (the writer) see a
client only through `Transport`, as httpcore's connections see only their
network stream: another transport (a WebSocket, whose messages need no
terminator) slots in under the same connection, with every rule of
docs/protocol.md unchanged.
"""

from __future__ import annotations

import socket
from typing import Protocol

from gchat.config import Settings
from gchat.protocol import FrameDecoder


class Transport(Protocol):
    def recv(self, size: int) -> bytes:
        """Up to `size` bytes, blocking the calling greenlet; b"" at the end
        of the stream. OSError when the connection is lost."""

    def send(self, data: bytes | memoryview) -> int:
        """Hand bytes to the kernel, blocking the calling greenlet until
        some are taken; returns how many. OSError when the connection is lost."""

    def send_nowait(self, data: bytes) -> int:
        """As `send`, but never waits: how many bytes the kernel took at once
        (0 when none). OSError when the connection is lost."""

    @property
    def reply_terminator(self) -> bytes:
        """What ends each message the node writes (docs/protocol.md: the
        client's own terminator)."""

    def shutdown_read(self) -> None:
        """Wake the reader (recv returns b""); what is queued may still be written."""

    def shutdown(self) -> None:
        """Stop both ways at once: a send blocked on a full buffer fails.
        Bytes the kernel already holds still reach the peer."""

    def close(self) -> None: ...


class TcpTransport:
    """A client's TCP socket. The terminator of replies is the one its
    frames use, as the decoder found it."""

    __slots__ = ("sock", "decoder")

    def __init__(self, sock: socket.socket, decoder: FrameDecoder) -> None:
        self.sock = sock
        self.decoder = decoder

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def send(self, data: bytes | memoryview) -> int:
        return self.sock.send(data)

    def send_nowait(self, data: bytes) -> int:
        try:
            # gevent's socket takes a timeout; 0 never waits
            return self.sock.send(data, 0, 0.0)  # type: ignore[call-arg]
        except BlockingIOError:
            return 0

    @property
    def reply_terminator(self) -> bytes:
        return self.decoder.reply_terminator

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

    def close(self) -> None:
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
