"""Redis's wire format (RESP2 and RESP3), read and written on a connection
redis-py opened and then left to the bus: the subscriber's
(gchat/cluster/redis_bus.py `Subscription`) and the writer batches' route
line (gchat/cluster/script_line.py).

Why not redis-py's parser: a published message read through it is a
`PubSub.parse_response` (a retry wrapper, a `can_read` that starts a gevent
Timeout and sets the socket's timeout twice, the reply parsed line by line
through a BytesIO, a logger looked up under its lock and the message's repr
built for a debug line nobody logs), one message per call; and a command's
arguments packed one by one through its encoder. Here one `recv` takes what
the kernel holds and every complete reply in it is parsed at once
(docs/benchmarks.md, "The bus reads and writes Redis's wire itself").
"""

from __future__ import annotations

import select
import socket
from collections.abc import Sequence
from typing import Any

import redis

from gchat.reads import Reads

# what one recv asks the kernel for; a longer reply comes in several
CHUNK = 65536

Arg = bytes | str | int


class ReplyError(Exception):
    """An error reply (`-ERR ...`), as its text; the caller says what it
    means (NOSCRIPT: load the script)."""


class Incomplete(Exception):
    """The buffer ends inside a reply; `need` bytes at least make it whole."""

    def __init__(self, need: int) -> None:
        self.need = need


def pack(args: Sequence[Arg]) -> bytes:
    """A command as Redis reads it (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out += (b"$%d\r\n" % len(a), a, b"\r\n")
    return b"".join(out)


def parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """The reply starting at buf[pos] and where the next one starts: bytes
    for a bulk or simple string, int, None, a list for an array or a push,
    ReplyError for an error. Raises Incomplete when buf ends inside it, and
    redis.ConnectionError on bytes no Redis sends (the connection is out of
    step: it must be dropped)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete(len(buf) + 1)
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if stop + 2 > len(buf):
            raise Incomplete(stop + 2)
        return buf[end + 2:stop], stop + 2
    if kind == 42 or kind == 62:  # * array, > push (RESP3)
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(n):
            item, at = parse(buf, at)
            items.append(item)
        return items, at
    if kind == 43:  # + simple string
        return buf[pos + 1:end], end + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 45:  # - error
        return ReplyError(buf[pos + 1:end].decode(errors="replace")), end + 2
    if kind == 95:  # _ null (RESP3)
        return None, end + 2
    raise redis.ConnectionError(f"unexpected reply from Redis: {buf[pos:pos + 32]!r}")


class Wire:
    """A socket's replies: `replies()` returns every complete reply one
    read brought (at least one), keeping a reply's beginning for the next
    read. Socket failures are raised as redis-py raises them
    (redis.ConnectionError, redis.TimeoutError), so callers handle both
    alike."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = buffered
        self._need = 1  # bytes the buffer must hold before a parse can end
        # a read waits for readability first when the last one left
        # nothing behind (gchat/reads.py); the first one too: the
        # connection has just been subscribed or been sent a command
        self._reads = Reads(sock, drained=True)

    def replies(self) -> list[Any]:
        out: list[Any] = []
        while not out:
            self._fill()
            out = self._parse()
        return out

    def ready(self) -> list[Any]:
        """The complete replies the kernel already holds, maybe none: never
        waits (a read that would block is not made). For a socket without
        TLS only (`can_peek`)."""
        # gevent's socket: its C socket, non-blocking; else (a test without
        # gevent's patching) a socket with a timeout, which would wait even
        # for MSG_DONTWAIT: asked first whether it is readable
        plain = self._reads.plain
        raw = self.sock._sock if plain else self.sock  # type: ignore[attr-defined]  # see Reads
        while True:
            try:
                if plain or select.select([raw], [], [], 0)[0]:
                    data = raw.recv(CHUNK, socket.MSG_DONTWAIT)
                else:
                    data = None
            except BlockingIOError:
                data = None
            except OSError as e:
                raise redis.ConnectionError(f"Error reading from Redis: {e}") from e
            if data == b"":
                raise redis.ConnectionError("Redis closed the connection")
            if data is None or len(data) < CHUNK:
                self._reads.expect()  # the kernel held no more: the next read waits first
                if data:
                    self._buf += data
                break
            self._buf += data
        if len(self._buf) < self._need:
            return []
        return self._parse()

    @property
    def can_peek(self) -> bool:
        """Whether `ready` may be used: not on TLS, whose records the
        descriptor's bytes are not."""
        return not hasattr(self.sock, "pending")

    def _parse(self) -> list[Any]:
        """Every complete reply in the buffer; a reply's beginning stays."""
        out: list[Any] = []
        buf, at = self._buf, 0
        try:
            while at < len(buf):
                reply, at = parse(buf, at)
                out.append(reply)
        except Incomplete as e:
            self._need = e.need - at
        except ValueError as e:  # a length that is not a number
            raise redis.ConnectionError(f"unexpected reply from Redis: {buf[at:at + 32]!r}") from e
        else:
            self._need = 1
        self._buf = buf[at:]
        return out

    def _fill(self) -> None:
        chunks = [self._buf] if self._buf else []
        have = len(self._buf)
        while have < self._need or not chunks:
            try:
                data = self._reads.recv(CHUNK)
            except TimeoutError as e:
                self._buf = b"".join(chunks)
                raise redis.TimeoutError("Timeout reading from Redis") from e
            except OSError as e:
                raise redis.ConnectionError(f"Error reading from Redis: {e}") from e
            if not data:
                raise redis.ConnectionError("Redis closed the connection")
            chunks.append(data)
            have += len(data)
        self._buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def send(self, data: bytes) -> None:
        try:
            if self._reads.plain:
                # gevent's socket over a plain one: its C socket (non-blocking)
                # takes a command at once; gevent's sendall, which asks the
                # kernel for the socket's buffer size on every call, only
                # for what the kernel did not take
                try:
                    sent = self.sock._sock.send(data)  # type: ignore[attr-defined]  # see Reads
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
            self.sock.sendall(data)
        except TimeoutError as e:
            raise redis.TimeoutError("Timeout writing to Redis") from e
        except OSError as e:
            raise redis.ConnectionError(f"Error writing to Redis: {e}") from e
