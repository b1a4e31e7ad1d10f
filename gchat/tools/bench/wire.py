"""The bench's connection: the client library's RawClient on a gevent socket
(framing and request/reply matching are the library's), plus the flows the
scenarios need.

It speaks docs/protocol.md part A (NUL-terminated frames, as the original
client sends them) so that it can drive any server of the protocol, the C++
original included, whose frames carry no terminator at all; part B's `seq`
is used only where the caller asks for it. Chat messages carry a tag in their
text, `b<sender>.<n>.<t_ns>`: the sender's user id, the sender's message
number and the (intended) send time on the system-wide monotonic clock, so a
receiver in any process can take the latency and count losses exactly.
"""

from __future__ import annotations

import re
from typing import Any

from gevent import socket

from gchat.client import GchatError, RawClient
from gchat.client.wire import RECV_SIZE
from gchat.protocol import MsgId
from gchat.tools.bench.websocket import PATH, SCHEME, WebSocketAddress, WebSocketStream

# Linux: bind a source address without reserving a port until connect(), so
# the 4-tuple (not the source port alone) must be unique: each 127.0.0.x
# source gets the whole ephemeral range.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

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
    """HOST:PORT, or ws://HOST:PORT[/ws] for a node's web listener."""
    websocket = text.startswith(SCHEME)
    if websocket:
        text = text[len(SCHEME):].removesuffix(PATH)
    host, _, port = text.rpartition(":")
    address = (host or "127.0.0.1", int(port))
    return WebSocketAddress(address) if websocket else address


class Conn(RawClient):
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
        if isinstance(address, WebSocketAddress):
            # the stream writes WebSocket messages and splits what is read into them
            ws = WebSocketStream(sock, address, RECV_SIZE)
            super().__init__(ws, terminator=terminator, timeout=timeout, splitter=ws)
            self.frames += ws.early
        else:
            super().__init__(sock, terminator=terminator, timeout=timeout)

    def request(self, obj: dict[str, Any], what: str) -> dict[str, Any]:
        """`call`, with its failures and a non-zero errno as BenchError."""
        try:
            reply = self.call(obj)
        except GchatError as e:
            raise BenchError(f"{what}: {e}") from e
        if reply.get("errno") != 0:
            raise BenchError(f"{what}: {reply}")
        return reply

    # --- the flows of part A ----------------------------------------------

    def register(self, name: str, password: str) -> tuple[int, bool]:
        """(user id, whether the server echoed seq: it speaks part B)."""
        reply = self.request({"msgid": MsgId.REG, "name": name, "password": password, "seq": 1},
                             f"register {name}")
        return int(reply["id"]), reply.get("seq") == 1

    def login(self, user_id: int, password: str = "", token: str = "", resume: bool = False,
              seq: bool = False) -> dict[str, Any]:
        """`seq`: say the connection speaks part B, so a gchat node writes to
        it as a stream; without it the node paces what it writes, one frame
        at a time, as for the original client (gchat/outbox.py)."""
        req: dict[str, Any] = {"msgid": MsgId.LOGIN, "id": user_id}
        if seq:
            req["seq"] = 1
        if token:
            req["token"] = token
        else:
            req["password"] = password
        if resume:
            req["resume"] = True
        return self.request(req, f"login {user_id}")
