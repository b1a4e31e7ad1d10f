"""What a client needs of the wire besides the codec: splitting what a server
sends into frames, and telling which frame answers which request. Pure (no
sockets): `Client`, `RawClient`, gchat-bench and the tests' wire helper all
use these two, so a server is read and matched the same way everywhere."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from gchat.protocol import REPLY_ID, FrameDecoder, MsgId

# The original client sends `strlen(s) + 1` bytes: the JSON text and its NUL.
TERMINATOR = b"\0"

# Replies can be far larger than requests: a login ack carries every stored
# offline message (each up to 8,000 characters) and every group with its
# members. This cap only stops a broken peer from exhausting memory.
REPLY_FRAME_MAX = 64 * 1024 * 1024

_TERMINATOR_BYTES = (0, 10)  # NUL, LF: what a read ends with when no frame is cut


class Splitter(Protocol):
    """Bytes in, complete frames out: `ReplySplitter`, or a plain
    `FrameDecoder` where only terminated frames may count (tests of the wire)."""

    def feed(self, data: bytes) -> list[bytes]: ...


class ReplySplitter:
    """FrameDecoder, plus tolerance for the original server, which writes
    `response.dump()` with no terminator at all. Bytes after the last
    terminator are kept aside; once they end in '}' and hold whole JSON
    objects, those objects are frames. A gchat frame whose terminator is still
    in flight is caught the same way; its terminator then arrives as an empty
    frame, which FrameDecoder skips."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder(REPLY_FRAME_MAX)
        self._tail = b""
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[bytes]:
        frames = self._decoder.feed(data)
        if data and data[-1] in _TERMINATOR_BYTES:
            # a gchat node's reads end at a terminator: nothing is left aside
            # (the path of every delivery a benchmark counts)
            self._tail = b""
            return frames
        cut = max(data.rfind(b"\0"), data.rfind(b"\n"))
        self._tail = data[cut + 1 :] if cut >= 0 else self._tail + data
        if not self._tail.rstrip().endswith(b"}"):
            return frames
        try:
            text = self._tail.decode()
        except UnicodeDecodeError:
            return frames  # a multi-byte character cut by the read; wait
        pos, n = 0, len(text)
        while True:
            while pos < n and text[pos] in " \t\r":
                pos += 1
            if pos >= n:
                break
            try:
                _, end = self._json.raw_decode(text, pos)
            except ValueError:
                break
            frames.append(text[pos:end].encode())
            pos = end
        if pos:  # whole objects were taken: restart the decoder on the rest
            rest = text[pos:].encode()
            self._decoder = FrameDecoder(REPLY_FRAME_MAX)
            self._decoder.feed(rest)
            self._tail = rest
        return frames


@dataclass(frozen=True)
class ReplyTo:
    """Which frame answers a request (docs/protocol.md): LOGIN_ACK / REG_ACK
    for login and register, whose `seq` the original server does not echo;
    for every other request the ACK_MSG carrying its `seq` (part B: without a
    seq, part A sends no reply at all)."""

    msgid: int
    seq: int | None

    @classmethod
    def of(cls, request: dict[str, Any]) -> ReplyTo:
        return cls(int(REPLY_ID.get(request["msgid"], MsgId.ACK)), request.get("seq"))

    @property
    def expected(self) -> bool:
        """False for a part-A request that no server answers."""
        return self.msgid != MsgId.ACK or self.seq is not None

    def matches(self, reply: dict[str, Any]) -> bool:
        if reply.get("msgid") != self.msgid:
            return False
        if self.msgid == MsgId.ACK:
            return self.seq is not None and reply.get("seq") == self.seq
        # login / register: the original server does not echo seq
        return "seq" not in reply or reply["seq"] == self.seq
