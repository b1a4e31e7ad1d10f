"""The bus between nodes: deliveries to users held by another node, and cache
invalidations for every node.

The service never sees Redis: it sees this interface. `LocalBus` is the bus of
a node that is alone (the embedded default); `RedisBus` (gchat/redisbus.py)
carries the same envelopes over Redis pub/sub.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# Envelopes, as bytes on the wire between nodes:
#   b"D" + b"1,2,3" + b" " + body   deliver body (JSON text) to those users
#   b"G" + b"42"                    group 42's membership changed
DeliverHandler = Callable[[list[int], bytes], None]
InvalidateHandler = Callable[[int], None]


def encode_delivery(user_ids: list[int], body: bytes) -> bytes:
    return b"D" + b",".join(str(u).encode() for u in user_ids) + b" " + body


def encode_invalidation(group_id: int) -> bytes:
    return b"G" + str(group_id).encode()


def dispatch(envelope: bytes, on_deliver: DeliverHandler, on_invalidate: InvalidateHandler) -> None:
    """Decode one envelope and hand it to its handler. Raises ValueError on
    an envelope no gchat node would send."""
    kind, rest = envelope[:1], envelope[1:]
    if kind == b"D":
        ids, _, body = rest.partition(b" ")
        on_deliver([int(u) for u in ids.split(b",")], body)
    elif kind == b"G":
        on_invalidate(int(rest))
    else:
        raise ValueError(f"unknown bus envelope {envelope[:16]!r}")


class Bus(Protocol):
    def start(self, on_deliver: DeliverHandler, on_invalidate: InvalidateHandler) -> None: ...

    def stop(self) -> None: ...

    def send(self, node: str, user_ids: list[int], body: bytes) -> None:
        """Deliver body to users held by `node`. Raises ProtocolError
        (errno 11) when the bus cannot take it; the caller then stores it."""

    def invalidate_group(self, group_id: int) -> None:
        """Tell the other nodes that a group's membership changed."""


class LocalBus:
    """The bus of a single node: every user is local, so a send to this node
    is a local delivery and there is nobody to invalidate."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._on_deliver: DeliverHandler | None = None

    def start(self, on_deliver: DeliverHandler, on_invalidate: InvalidateHandler) -> None:
        self._on_deliver = on_deliver

    def stop(self) -> None:
        self._on_deliver = None

    def send(self, node: str, user_ids: list[int], body: bytes) -> None:
        if node != self.node or self._on_deliver is None:
            raise LookupError(f"no node {node!r} on a local bus")
        self._on_deliver(user_ids, body)

    def invalidate_group(self, group_id: int) -> None:
        pass
