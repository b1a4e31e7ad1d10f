"""The bus between nodes: deliveries to users held by another node, and cache
invalidations for every node.

The service never sees Redis: it sees this interface. `LocalBus` is the bus of
a node that is alone (the embedded default); `RedisBus`
(gchat/cluster/redis_bus.py) carries the same envelopes over Redis pub/sub.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# Envelopes, as bytes on the wire between nodes:
#   b"D" + b"1,2,3" + b" " + body   deliver body (JSON text) to those users
#                                   (built by the ROUTE script, in Redis:
#                                   gchat/cluster/redis_keys.py)
#   b"G" + b"42"                    group 42's membership changed
#   b"C" + JSON object              a gchat-admin request (gchat/control.py)
#   b"B" + b"42"                    user 42's blocks changed
#   b"N" + b"1,2,3" + b" " + body   a notice for those users (presence, a
#                                   friend request: docs/protocol.md section
#                                   F): pushed if they are here, never stored
#   b"M" + envelope + b"\n" + ...   several D envelopes in order, as one
#                                   message: a batch of the log's writer
#                                   (ROUTE_BATCH), so a node wakes once per
#                                   batch, not once per message. A body never
#                                   holds a raw LF (gchat/protocol.py dumps).
#                                   A node older than this logs it as unknown
#                                   during a rolling upgrade: the messages are
#                                   then repaired from the log
DeliverHandler = Callable[[list[int], bytes], None]
InvalidateHandler = Callable[[int], None]
# the bus was cut off and is back: invalidations published meanwhile were
# missed, so every cached group membership must go
ResubscribedHandler = Callable[[], None]
# a gchat-admin request (the JSON after b"C"): gchat/control.py
ControlHandler = Callable[[bytes], None]


def encode_invalidation(group_id: int) -> bytes:
    return b"G" + str(group_id).encode()


def encode_blocks_invalidation(user_id: int) -> bytes:
    return b"B" + str(user_id).encode()


def dispatch(envelope: bytes, on_deliver: DeliverHandler, on_invalidate: InvalidateHandler,
             on_control: ControlHandler | None = None, on_notice: DeliverHandler | None = None,
             on_blocks: InvalidateHandler | None = None) -> None:
    """Decode one envelope and hand it to its handler. Raises ValueError on
    an envelope no gchat node would send."""
    kind, rest = envelope[:1], envelope[1:]
    if kind == b"M":
        for one in rest.split(b"\n"):
            dispatch(one, on_deliver, on_invalidate, on_control, on_notice, on_blocks)
    elif kind in (b"D", b"N"):
        ids, _, body = rest.partition(b" ")
        users = [int(u) for u in ids.split(b",")]
        if kind == b"D":
            on_deliver(users, body)
        elif on_notice is not None:  # else nobody here takes notices
            on_notice(users, body)
    elif kind == b"G":
        on_invalidate(int(rest))
    elif kind == b"C" and on_control is not None:
        on_control(rest)
    elif kind == b"B":
        if on_blocks is not None:
            on_blocks(int(rest))
    else:
        raise ValueError(f"unknown bus envelope {envelope[:16]!r}")


class Bus(Protocol):
    def start(
        self,
        on_deliver: DeliverHandler,
        on_invalidate: InvalidateHandler,
        on_resubscribed: ResubscribedHandler,
        on_control: ControlHandler | None = None,
        on_notice: DeliverHandler | None = None,
        on_blocks: InvalidateHandler | None = None,
    ) -> None:
        """Listen for what other nodes (and gchat-admin) send here; the
        handlers run in this node's event loop."""

    def stop(self) -> None: ...

    def route(self, user_ids: list[int], body: bytes) -> list[int]:
        """Hand body to the live nodes holding these users (none of them is
        connected here); return those it could not reach, for the caller to
        store. Raises gchat.errors.Unavailable when the bus is down: then
        the caller stores them all."""

    def route_batch(self, items: list[tuple[list[int], bytes]]) -> list[list[int]]:
        """route() for each (user ids, body) of a batch, in one round trip
        and with one message per target node; returns, per item, the users
        it could not reach. Raises gchat.errors.Unavailable as route()."""

    def post_batch(self, items: list[tuple[list[int], bytes]], then: Callable[[list[list[int]]], None]) -> None:
        """route_batch() for a caller that needs no answer now (group
        messages: their ACK counts members, not who was reached; chats sent
        without seq, which have no ACK): sent,
        not waited for; `then` gets the misses once Redis's reply is read
        (later, from another greenlet; never if the call failed after it
        was sent: its messages are repaired from the log). Raises
        gchat.errors.Unavailable when it could not be sent."""

    def invalidate_group(self, group_id: int) -> None:
        """Tell the other nodes that a group's membership changed. Raises
        gchat.errors.Unavailable when the bus is down."""

    def invalidate_blocks(self, user_id: int) -> None:
        """Tell the other nodes that a user's blocks changed. Raises
        gchat.errors.Unavailable when the bus is down."""

    def notify(self, user_ids: list[int], body: bytes) -> None:
        """Hand a notice to the live nodes holding these users (none of them
        is connected here): one message per node, however many users it
        holds. Those offline are skipped: a notice is never stored. Raises
        gchat.errors.Unavailable when the bus is down."""


class LocalBus:
    """The bus of a single node: there is no other node to route to, and
    nobody to invalidate."""

    def start(
        self,
        on_deliver: DeliverHandler,
        on_invalidate: InvalidateHandler,
        on_resubscribed: ResubscribedHandler,
        on_control: ControlHandler | None = None,
        on_notice: DeliverHandler | None = None,
        on_blocks: InvalidateHandler | None = None,
    ) -> None:
        pass  # a lone node hears gchat-admin on its admin socket (gchat/control.py)

    def stop(self) -> None:
        pass

    def route(self, user_ids: list[int], body: bytes) -> list[int]:
        return list(user_ids)  # no other node: whoever is not connected here is offline

    def route_batch(self, items: list[tuple[list[int], bytes]]) -> list[list[int]]:
        return [list(user_ids) for user_ids, _ in items]

    def post_batch(self, items: list[tuple[list[int], bytes]], then: Callable[[list[list[int]]], None]) -> None:
        then(self.route_batch(items))

    def invalidate_group(self, group_id: int) -> None:
        pass

    def invalidate_blocks(self, user_id: int) -> None:
        pass

    def notify(self, user_ids: list[int], body: bytes) -> None:
        pass  # nobody elsewhere
