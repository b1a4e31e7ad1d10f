"""The bus over Redis pub/sub (channels and the ROUTE script:
gchat/cluster/redis_keys.py).

Each node subscribes to its own channel, which carries the deliveries for
the users it holds (one PUBLISH per target node per message, or per batch of
the log's writer, made by the ROUTE scripts that also look the owners up), and to the channel of group
invalidations, each prefixed with its origin so a node skips its own.

Order: a node's writer routes each committed batch in one call of the
ROUTE_BATCH script, which publishes to each target node one message holding
that node's share of the batch in seq order; the batches' calls go on one
connection (gchat/cluster/script_line.py), which Redis answers in order,
whether the writer waits for the answer (a one-to-one message's ACK says
whether it was reached) or not (`post_batch`: group messages, and chats
sent without seq, which have no ACK), and one subscriber connection per node
hands them on in that order.

The bus is not the record (docs/architecture.md, "The conversation log"): a
chat message is committed to the log before it is published, and whatever
the bus drops (Redis cut the subscriber past its output buffer limit, the
node was paused, Redis restarted) is found missing by its sequence number and
brought from the log. So the node must hear of every re-subscription: the
bus's loop makes them (the subscription's reads, `Subscription`, raise a lost
one instead of letting redis-py reconnect silently), and one redis-py would
make by itself (its connect finding the connection closed) calls
`_resubscribed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import redis
from redis.backoff import EqualJitterBackoff

from gchat.cluster.bus import (
    ControlHandler,
    DeliverHandler,
    InvalidateHandler,
    ResubscribedHandler,
    dispatch,
    encode_blocks_invalidation,
    encode_invalidation,
)
from gchat.cluster.redis_client import connect, subscribe
from gchat.cluster.redis_keys import ALL, PREFIX, Scripts, node_channel
from gchat.cluster.redis_shards import ShardedRoute
from gchat.cluster.resp import ReplyError, Wire
from gchat.cluster.script_line import ScriptLine
from gchat.config import Settings
from gchat.errors import Unavailable

log = logging.getLogger(__name__)

# the first reconnect waits 50 to 100 ms: a Redis restart takes longer, so
# the first retries are cheap; then the wait doubles up to bus_reconnect_max,
# with jitter so that the nodes of a cluster do not reconnect in lockstep
RECONNECT_BASE = 0.05
# bodies and user ids in one ROUTE_BATCH call at most: a script runs alone in
# Redis, so a batch to very large groups is cut into calls of bounded length
# rather than holding every other client up
BATCH_ARGS = 4096


class RedisBus:
    def __init__(self, node: str, settings: Settings) -> None:
        self.node = node
        self.url = settings.redis_url
        self.timeout = settings.redis_timeout
        self.idle_check = settings.bus_idle_check
        self.redis = connect(self.url, self.timeout)
        # in a Redis Cluster, a lookup then SPUBLISH per message
        # (gchat/cluster/redis_shards.py); else the scripts, a batch in one call
        # (a writer batch's on a connection of its own: gchat/cluster/script_line.py)
        self._route: Callable[..., Any]
        self._route_batch: ScriptLine | None
        if isinstance(self.redis, redis.Redis):
            scripts = Scripts(self.redis)
            self._route, self._route_batch = scripts.route, ScriptLine(self.redis, scripts.route_batch)
        else:
            self._route, self._route_batch = ShardedRoute(self.redis), None
        self._backoff = EqualJitterBackoff(cap=settings.bus_reconnect_max, base=RECONNECT_BASE)
        self._channel = node_channel(node).encode()
        self._all = ALL.encode()
        self._origin = node.encode() + b" "
        self._on_deliver: DeliverHandler | None = None
        self._on_invalidate: InvalidateHandler | None = None
        self._on_resubscribed: ResubscribedHandler | None = None
        self._on_control: ControlHandler | None = None
        self._on_notice: DeliverHandler | None = None
        self._on_blocks: InvalidateHandler | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._sub: Subscription | None = None  # its connection, read by the bus itself
        self._listener: gevent.Greenlet[[], None] | None = None

    def start(
        self,
        on_deliver: DeliverHandler,
        on_invalidate: InvalidateHandler,
        on_resubscribed: ResubscribedHandler,
        on_control: ControlHandler | None = None,
        on_notice: DeliverHandler | None = None,
        on_blocks: InvalidateHandler | None = None,
    ) -> None:
        self._on_deliver, self._on_invalidate = on_deliver, on_invalidate
        self._on_resubscribed, self._on_control = on_resubscribed, on_control
        self._on_notice, self._on_blocks = on_notice, on_blocks
        try:
            # subscribed before the node says ready, so a delivery routed
            # here right away finds a listener
            self._pubsub = self._subscribe()
        except redis.RedisError as e:
            log.warning("bus: Redis unavailable at start (%s); will keep trying", e)
        self._listener = gevent.spawn(self._listen)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.kill()
        if self._route_batch is not None:
            self._route_batch.close()  # the replies of calls posted and not read yet
        self._close_pubsub()
        self.redis.close()

    def route(self, user_ids: list[int], body: bytes) -> list[int]:
        try:
            missed = self._route(keys=[], args=[PREFIX, self.node, "D", body, *user_ids])
        except redis.RedisError as e:
            raise Unavailable("bus unavailable") from e
        return [int(u) for u in missed]

    def route_batch(self, items: list[tuple[list[int], bytes]]) -> list[list[int]]:
        if self._route_batch is None:  # a Redis Cluster: one message at a time
            return [self.route(user_ids, body) for user_ids, body in items]
        return self._route_calls(self._calls(items))

    def _route_calls(self, calls: list[list[bytes | str]]) -> list[list[int]]:
        assert self._route_batch is not None
        missed: list[list[int]] = []
        for args in calls:
            try:
                missed += _misses(self._route_batch(args))
            except redis.RedisError as e:
                raise Unavailable("bus unavailable") from e
        return missed

    def post_batch(self, items: list[tuple[list[int], bytes]], then: Callable[[list[list[int]]], None]) -> None:
        if self._route_batch is None:  # a Redis Cluster: waited for
            then(self.route_batch(items))
            return
        calls = self._calls(items)
        if len(calls) != 1:  # a batch of several calls: waited for
            then(self._route_calls(calls))
            return

        def answered(reply: Any) -> None:
            if isinstance(reply, ReplyError):
                log.warning("bus: a route call failed (%s); its messages are repaired from the log", reply)
            else:
                then(_misses(reply))

        try:
            self._route_batch.post(calls[0], answered)
        except redis.RedisError as e:
            raise Unavailable("bus unavailable") from e

    def _calls(self, items: list[tuple[list[int], bytes]]) -> list[list[bytes | str]]:
        """ROUTE_BATCH's arguments for a batch, in calls of BATCH_ARGS at most."""
        calls: list[list[bytes | str]] = []
        args: list[bytes | str] = [PREFIX, self.node]
        size = 0
        for user_ids, body in items:
            # a message's users in one argument (ROUTE_BATCH splits them)
            args += (body, b",".join(b"%d" % u for u in user_ids))
            size += 2 + len(user_ids)
            if size >= BATCH_ARGS:
                calls.append(args)
                args, size = [PREFIX, self.node], 0
        if size:
            calls.append(args)
        return calls

    def notify(self, user_ids: list[int], body: bytes) -> None:
        # the delivery's script, with the notice envelope; who it missed is
        # offline, and a notice is not stored
        try:
            self._route(keys=[], args=[PREFIX, self.node, "N", body, *user_ids])
        except redis.RedisError as e:
            raise Unavailable("bus unavailable") from e

    def invalidate_group(self, group_id: int) -> None:
        try:
            self.redis.publish(ALL, self._origin + encode_invalidation(group_id))
        except redis.RedisError as e:
            raise Unavailable("bus unavailable") from e

    def invalidate_blocks(self, user_id: int) -> None:
        try:
            self.redis.publish(ALL, self._origin + encode_blocks_invalidation(user_id))
        except redis.RedisError as e:
            raise Unavailable("bus unavailable") from e

    # --- the subscriber --------------------------------------------------------

    def _subscribe(self) -> redis.client.PubSub:
        # on one Redis, the master Sentinel names, or the cluster node that
        # holds this node's shard channel (gchat/cluster/redis_client.py)
        pubsub = subscribe(self.url, self.timeout, self.idle_check, self._channel, ALL)
        # redis-py reconnects and re-subscribes by itself when Redis closes
        # the subscriber (past its output buffer limit: the node was paused
        # or slow), silently: whatever was published meanwhile is gone, so
        # the node must hear of it and repair from the log
        assert pubsub.connection is not None
        pubsub.connection.register_connect_callback(self._resubscribed)
        return pubsub

    def _resubscribed(self, _connection: Any) -> None:
        log.warning("bus: Redis dropped the subscription (output buffer limit, or a pause); re-subscribed")
        if self._on_resubscribed is not None:
            gevent.spawn(self._on_resubscribed)

    def _listen(self) -> None:
        """Blocks on the subscription and hands what arrives to the local
        connections; reconnects with backoff for as long as the node runs,
        so a Redis restart does not leave the node deaf."""
        failures, lost_at = 0, 0.0
        while True:
            if self._pubsub is None:
                try:
                    self._pubsub = self._subscribe()
                except redis.RedisError:
                    failures += 1
                    gevent.sleep(self._backoff.compute(failures))
                    continue
                if lost_at:
                    log.info("bus: reconnected to Redis after %.1f s", time.monotonic() - lost_at)
                else:
                    log.info("bus: connected to Redis")
                failures = 0
                if self._on_resubscribed is not None:
                    self._on_resubscribed()
            try:
                if self._sub is None:
                    self._sub = Subscription(self._pubsub, self.idle_check)
                got = self._sub.messages()
            except (redis.RedisError, OSError) as e:
                log.warning("bus: lost Redis (%s: %s); reconnecting", e.__class__.__name__, e)
                lost_at = time.monotonic()
                self._close_pubsub()
                continue
            for channel, data in got:
                self._handle(channel, data)

    def _handle(self, channel: bytes, data: bytes) -> None:
        assert self._on_deliver is not None and self._on_invalidate is not None
        if channel == self._all:
            if data.startswith(self._origin):
                return  # our own invalidation, already applied
            data = data.partition(b" ")[2]
        try:
            dispatch(data, self._on_deliver, self._on_invalidate, self._on_control, self._on_notice, self._on_blocks)
        except Exception:
            log.exception("bus: could not handle %r", data[:64])

    def _close_pubsub(self) -> None:
        self._sub = None
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (redis.RedisError, OSError) as e:
                log.debug("bus: closing the subscription: %s", e)
            self._pubsub = None


def _misses(reply: list[bytes]) -> list[list[int]]:
    """ROUTE_BATCH's reply: per message, the users it missed."""
    return [[int(u) for u in m.split(b",")] if m else [] for m in reply]


# the health check's PING, answered on the subscription (its argument tells
# the answer from anything else there)
HEALTH_CHECK = b"*2\r\n$4\r\nPING\r\n$12\r\nhealth-check\r\n"


class Subscription:
    """A subscription's connection, read by the bus itself once redis-py has
    connected and subscribed it (gchat/cluster/resp.py): each read hands on
    every published message it brought, in order, not one per call; a
    subscription's confirmations and the health check's answers are
    skipped.

    What redis-py did around its reads is done here: after `idle_check`
    seconds of silence a PING goes out, and a connection that stays silent
    for as long again is lost (raised as redis.ConnectionError, so the bus
    subscribes again and repairs from the log); so is an unsubscription
    Redis made by itself (on a Redis Cluster, the shard channel's slot moved
    to another node: gchat/cluster/redis_client.py ShardSubscriber) and an
    error reply. redis-py's own reconnect and re-subscribe never happen on
    this connection: a failure reaches the bus's loop, which subscribes
    anew and tells the node (`on_resubscribed`)."""

    def __init__(self, pubsub: redis.client.PubSub, idle_check: float) -> None:
        conn: Any = pubsub.connection
        assert conn is not None
        conn.connect()  # at once when connected (it is: it subscribed)
        sock = conn._sock
        sock.settimeout(idle_check)
        self._wire = Wire(sock, _unread(conn))
        self._pinged = False

    def messages(self) -> list[tuple[bytes, bytes]]:
        """The (channel, data) of each message one read brought, maybe none
        (an idle check, a confirmation). Raises redis.RedisError when the
        subscription is lost."""
        wire = self._wire
        try:
            replies = wire.replies()
        except redis.TimeoutError:
            if self._pinged:
                raise redis.ConnectionError("Redis did not answer the subscription's health check") from None
            wire.send(HEALTH_CHECK)
            self._pinged = True
            return []
        self._pinged = False
        out: list[tuple[bytes, bytes]] = []
        for reply in replies:
            if type(reply) is list and len(reply) == 3:
                kind = reply[0]
                if kind == b"message" or kind == b"smessage":
                    out.append((reply[1], reply[2]))
                elif kind == b"sunsubscribe" or kind == b"unsubscribe":
                    raise redis.ConnectionError(f"Redis ended the subscription to {reply[1]!r}")
                # else a subscription's confirmation
            elif isinstance(reply, ReplyError):
                raise redis.ConnectionError(f"Redis answered the subscription with an error: {reply}")
            # else the health check's answer (a bulk string, or RESP2's pong)
        return out


def _unread(conn: Any) -> bytes:
    """What redis-py's parser read from the connection and did not parse
    yet (nothing, as it only sent the subscription; taken all the same)."""
    buffer = getattr(getattr(conn, "_parser", None), "_buffer", None)
    raw = getattr(buffer, "_buffer", None)
    if buffer is None or raw is None or not buffer.unread_bytes():
        return b""
    return bytes(raw.getvalue()[raw.tell():])
