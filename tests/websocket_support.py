"""A raw WebSocket client for the tests: wsproto over a blocking socket.
It sends exactly what a test asks (text, binary, oversized, not JSON) and
returns the node's messages decoded, and the close code it ends with."""

from __future__ import annotations

import socket
import time
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from gchat.protocol import dumps, loads
from tests.support import Flows


class Rejected(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"handshake rejected with HTTP {status}")
        self.status = status


class WsWire(Flows):
    def __init__(self, address: tuple[str, int], *, origin: str | None = None, path: str = "/ws",
                 timeout: float = 10.0, host: str | None = None) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.timeout = timeout
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[str | bytes] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.pings = 0
        headers = [("Origin", origin)] if origin else []
        self.sock.sendall(self.ws.send(Request(host=host or f"{address[0]}:{address[1]}", target=path,
                                               extra_headers=headers)))
        self._partial: list[Any] = []
        while True:
            events = self._read()
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    # what the node wrote right behind its 101 (a refusal
                    # with errno 10 and its close frame) may have come in the
                    # same read: it is kept, not dropped with the handshake
                    self._handle(events[i + 1:])
                    return
                if isinstance(event, RejectConnection):
                    self.sock.close()
                    raise Rejected(event.status_code)

    def __enter__(self) -> WsWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _read(self, timeout: float | None = None) -> list[Any]:
        self.sock.settimeout(timeout or self.timeout)
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        events = list(self.ws.events())
        return events

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(BytesMessage(data=data)))

    def send(self, obj: Any) -> None:
        self.send_text(dumps(obj).decode())

    def _pump(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no message arrived")
        try:
            events = self._read(left)
        except TimeoutError:
            raise AssertionError("no message arrived") from None
        self._handle(events)

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Message):
                self._partial.append(event.data)
                if event.message_finished:
                    whole = "".join(self._partial) if isinstance(event, TextMessage) else b"".join(self._partial)
                    self._partial = []
                    self.messages.append(whole)
            elif isinstance(event, Ping):
                self.pings += 1
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code, self.close_reason = event.code, event.reason
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    try:
                        self.sock.sendall(self.ws.send(event.response()))
                    except OSError:
                        pass  # the node may have closed the socket right after its close frame
            elif isinstance(event, RejectData):
                pass

    def recv_message(self, timeout: float | None = None) -> str | bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.messages:
            if self.close_code is not None:
                raise ConnectionError(f"closed with {self.close_code}")
            self._pump(deadline)
        return self.messages.pop(0)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        message = self.recv_message(timeout)
        assert isinstance(message, str), f"a binary message from the node: {message!r}"
        return loads(message)  # type: ignore[no-any-return]

    def request(self, obj: Any) -> dict[str, Any]:
        self.send(obj)
        return self.recv()

    def closed_with(self, timeout: float = 10.0) -> int:
        """The close code the node sends (after any messages, kept in .messages)."""
        deadline = time.monotonic() + timeout
        while self.close_code is None:
            self._pump(deadline)
        return self.close_code



def ws_user(address: tuple[str, int]) -> tuple[WsWire, int]:
    w = WsWire(address)
    uid = w.register()
    w.login(uid)
    return w, uid
