"""A lean connection for load generation: gevent sockets and the codec of
gchat.protocol, nothing else.

It speaks docs/protocol.md part A (NUL-terminated frames, as the original client
sends them) so that it can drive any server of the protocol; part B's `seq`
is used only where the caller asks for it. Chat messages carry a tag in their
text, `b<sender>.<n>.<t_ns>`: the sender's user id, the sender's message
number and the (intended) send time on the system-wide monotonic clock, so a
receiver in any process can take the latency and count losses exactly.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gevent import socket

from gchat.protocol import FrameDecoder, dumps, loads

# Linux: bind a source address without reserving a port until connect(), so
# the 4-tuple (not the source port alone) must be unique: each 127.0.0.x
# source gets the whole ephemeral range.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

RECV_SIZE = 256 * 1024

_TAG = re.compile(rb'"msg":"b(\d+)\.(\d+)\.(\d+)')


class BenchError(Exception):
    """The server answered something the scenario cannot go on with."""


def tag(sender: int, n: int, t_ns: int) -> str:
    return f"b{sender}.{n}.{t_ns}"


def read_tag(frame: bytes) -> tuple[int, int, int] | None:
    """(sender, n, t_ns) of a delivered chat message, None for other frames.
    A regular expression over the bytes: a full JSON decode of every one of
    100,000 deliveries a second would make the bench its own bottleneck."""
    m = _TAG.search(frame)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3])


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


class Conn:
    def __init__(
        self,
        address: tuple[str, int],
        *,
        source: str | None = None,
        terminator: bytes = b"\0",
        timeout: float = 60.0,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.term = terminator
        self.decoder = FrameDecoder(1 << 26)
        self.stash: list[bytes] = []  # frames read while waiting for a reply
        self.timeout = timeout

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(dumps(obj) + self.term)

    def frames(self) -> list[bytes]:
        """Block for the next read; every complete frame in it."""
        while True:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("server closed the connection")
            frames = self.decoder.feed(data)
            if frames:
                return frames

    def request(self, obj: dict[str, Any], reply_msgid: int, seq: int | None = None,
                timeout: float | None = None) -> dict[str, Any] | None:
        """Send and wait for the reply with `reply_msgid` (and `seq`, when
        given). Other frames are stashed. None when nothing came in time."""
        self.send(obj)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                frames = self.frames()
            except TimeoutError:
                return None
            finally:
                self.sock.settimeout(self.timeout)
            for i, frame in enumerate(frames):
                reply = loads(frame)
                if reply.get("msgid") == reply_msgid and (seq is None or reply.get("seq") == seq):
                    self.stash += frames[i + 1:]
                    return reply  # type: ignore[no-any-return]
                self.stash.append(frame)

    # --- the flows of part A ----------------------------------------------

    def register(self, name: str, password: str) -> tuple[int, bool]:
        """(user id, whether the server echoed seq: it speaks part B)."""
        reply = self.request({"msgid": 3, "name": name, "password": password, "seq": 1}, 4)
        if reply is None or reply.get("errno") != 0:
            raise BenchError(f"register {name}: {reply}")
        return int(reply["id"]), reply.get("seq") == 1

    def login(self, user_id: int, password: str = "", token: str = "", resume: bool = False) -> dict[str, Any]:
        req: dict[str, Any] = {"msgid": 1, "id": user_id}
        if token:
            req["token"] = token
        else:
            req["password"] = password
        if resume:
            req["resume"] = True
        reply = self.request(req, 2)
        if reply is None or reply.get("errno") != 0:
            raise BenchError(f"login {user_id}: {reply}")
        return reply
