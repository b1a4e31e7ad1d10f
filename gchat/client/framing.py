"""Splitting what a server sends into frames."""

from __future__ import annotations

import json

from gchat.protocol import FrameDecoder

# Replies can be far larger than requests: a login ack carries every stored
# offline message (each up to 8,000 characters) and every group with its
# members. This cap only stops a broken peer from exhausting memory.
REPLY_FRAME_MAX = 64 * 1024 * 1024


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
