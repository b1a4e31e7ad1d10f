"""RawClient: one connection with no reader thread: the caller writes frames
and reads them when it wants. `Client` is the library for programs; this is
for code that must see the wire itself: gchat-bench (thousands of
connections on gevent sockets, its own read loop where it measures) and the
tests of the wire. Framing and request/reply matching are `Client`'s own
(gchat.client.framing)."""

from __future__ import annotations

import socket
import time
from typing import Any, Self

from gchat.client.errors import ConnectionLost, RequestTimeout
from gchat.client.framing import TERMINATOR, ReplySplitter, ReplyTo, Splitter
from gchat.protocol import dumps, loads

# One read takes whatever the kernel holds, up to this: a load generator's
# connection may have hundreds of deliveries waiting.
RECV_SIZE = 256 * 1024


class RawClient:
    """Frames in, frames out, over a connected socket (the standard library's
    or gevent's: nothing here patches or imports gevent).

    `frames` holds frames read but not yet taken, in arrival order: those
    that came while `call` waited for its reply, and the rest of a read that
    `next_frame` took one frame of.
    """

    def __init__(self, sock: Any, *, terminator: bytes = TERMINATOR, timeout: float = 10.0,
                 splitter: Splitter | None = None) -> None:
        self.sock = sock
        self.terminator = terminator
        self.timeout = timeout
        self.splitter: Splitter = splitter or ReplySplitter()
        self.frames: list[bytes] = []
        sock.settimeout(timeout)

    @classmethod
    def connect(cls, address: tuple[str, int], *, timeout: float = 10.0, terminator: bytes = TERMINATOR,
                splitter: Splitter | None = None) -> Self:
        try:
            sock = socket.create_connection(address, timeout=timeout)
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {address[0]}:{address[1]}: {e.strerror or e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, terminator=terminator, timeout=timeout, splitter=splitter)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- writing -----------------------------------------------------------

    def send(self, obj: Any) -> None:
        self.send_raw(dumps(obj) + self.terminator)

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ConnectionLost(f"connection lost: {e.strerror or e}") from e

    # --- reading -----------------------------------------------------------

    def read(self) -> list[bytes]:
        """One read from the socket: the frames it completed (maybe none).
        ConnectionLost when the server closed the connection or the socket
        failed; RequestTimeout when the socket's timeout passed first."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise RequestTimeout("nothing arrived in time") from None
        except OSError as e:
            raise ConnectionLost(f"connection lost: {e.strerror or e}") from e
        if not data:
            raise ConnectionLost("the server closed the connection")
        return self.splitter.feed(data)

    def read_frames(self) -> list[bytes]:
        """The frames set aside, or else every frame of the next read that
        completes one. Uses the socket's own timeout."""
        if self.frames:
            frames, self.frames = self.frames, []
            return frames
        while not (frames := self.read()):
            pass
        return frames

    def next_frame(self, timeout: float | None = None) -> bytes:
        """The next frame; RequestTimeout if none arrives in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.frames:
            self._read_until(deadline, "no frame arrived in time")
        return self.frames.pop(0)

    def call(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send a request and return its reply, matched as `Client.request`
        matches it (gchat.client.framing.ReplyTo), whatever its errno. Frames
        read meanwhile stay in `frames`. RequestTimeout, ConnectionLost."""
        expect = ReplyTo.of(request)
        if not expect.expected:
            raise ValueError(f"msgid {request['msgid']} without a seq has no reply to wait for (part A)")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen = len(self.frames)  # frames already here came before the request
        self.send(request)
        while True:
            while seen < len(self.frames):
                reply = loads(self.frames[seen])
                if isinstance(reply, dict) and expect.matches(reply):
                    del self.frames[seen]
                    return reply
                seen += 1
            self._read_until(deadline, f"no reply to msgid {request['msgid']} in time")

    def _read_until(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(what)
        self.sock.settimeout(left)
        try:
            self.frames += self.read()
        except RequestTimeout:
            raise RequestTimeout(what) from None
        finally:
            self.sock.settimeout(self.timeout)
