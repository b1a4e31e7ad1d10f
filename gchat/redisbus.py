"""The bus over Redis pub/sub.

Channels: `gchat:node:{node}` carries the deliveries for the users a node
holds (one PUBLISH per target node per message, made by the ROUTE script
that also looks the owners up); `gchat:all` carries group invalidations,
each prefixed with its origin so a node skips its own.

Order: a sender's requests are handled one after another and each PUBLISH
waits for Redis's answer, so Redis sees a sender's messages in order; one
subscriber connection per node hands them to the outboxes in that order.

Nothing is lost: PUBLISH answers how many subscribers got the message, and 0
(the node died, or its subscriber is reconnecting) makes the sender store
it. A node that received a delivery for a user who just left stores it
(Router.on_bus_delivery).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import redis

from gchat.bus import (
    DeliverHandler,
    InvalidateHandler,
    dispatch,
    encode_invalidation,
)
from gchat.errors import Unavailable
from gchat.redispresence import PREFIX, connect

log = logging.getLogger(__name__)

ALL = PREFIX + "all"
BACKOFF_MAX = 2.0


def node_channel(node: str) -> str:
    return f"{PREFIX}node:{node}"


# ARGV prefix, this node, body, uid...: publishes body to the node holding
# each user (one PUBLISH per node, envelope of gchat/bus.py) and returns the
# users it could not hand to a listening node: offline, held by a node whose
# heartbeat expired or that has no subscriber, or claimed by this node itself
# (claimed here but not connected: the caller stores them).
ROUTE = """
local p, me, body = ARGV[1], ARGV[2], ARGV[3]
local by_node, nodes, missed, alive = {}, {}, {}, {}
for i = 4, #ARGV do
  local uid = ARGV[i]
  local o = redis.call('GET', p .. 'online:' .. uid)
  if o and o ~= me then
    if alive[o] == nil then alive[o] = redis.call('EXISTS', p .. 'node:' .. o) == 1 end
  end
  if o and o ~= me and alive[o] then
    if by_node[o] == nil then by_node[o] = {}; nodes[#nodes + 1] = o end
    local ids = by_node[o]
    ids[#ids + 1] = uid
  else
    missed[#missed + 1] = uid
  end
end
for _, o in ipairs(nodes) do
  local ids = by_node[o]
  if redis.call('PUBLISH', p .. 'node:' .. o, 'D' .. table.concat(ids, ',') .. ' ' .. body) == 0 then
    for _, uid in ipairs(ids) do missed[#missed + 1] = uid end
  end
end
return missed
"""


class RedisBus:
    def __init__(self, redis_url: str, node: str) -> None:
        self.node = node
        self.url = redis_url
        self.redis = connect(redis_url)
        # called after the subscriber came back: invalidations published
        # meanwhile were missed, so every cached membership must go
        self.on_reconnect: Callable[[], None] | None = None
        self._channel = node_channel(node).encode()
        self._origin = node.encode() + b" "
        self._on_deliver: DeliverHandler | None = None
        self._on_invalidate: InvalidateHandler | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._listener: gevent.Greenlet | None = None
        self._route: Any = None

    def start(self, on_deliver: DeliverHandler, on_invalidate: InvalidateHandler) -> None:
        self._on_deliver, self._on_invalidate = on_deliver, on_invalidate
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
        self._close_pubsub()
        self.redis.close()

    def route(self, user_ids: list[int], body: bytes) -> list[int]:
        # one round trip: the owners are looked up and the deliveries
        # published by the same script (a lookup, then a PUBLISH, cost twice
        # the redis-py overhead that dominated a cross-node message)
        try:
            if self._route is None:
                self._route = self.redis.register_script(ROUTE)
            missed = self._route(keys=[], args=[PREFIX, self.node, body, *user_ids])
        except redis.RedisError as e:
            raise Unavailable("bus unavailable") from e
        return [int(u) for u in missed]

    def invalidate_group(self, group_id: int) -> None:
        try:
            self.redis.publish(ALL, self._origin + encode_invalidation(group_id))
        except redis.RedisError as e:
            raise Unavailable("bus unavailable") from e

    # --- the subscriber --------------------------------------------------------

    def _subscribe(self) -> redis.client.PubSub:
        # no read timeout on the subscriber: an idle channel is normal; a
        # dead connection is found by the health-check PING instead
        client = redis.Redis.from_url(self.url, socket_connect_timeout=2.0, socket_timeout=5.0,
                                      health_check_interval=5)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._channel, ALL)
        except BaseException:
            pubsub.close()
            raise
        return pubsub

    def _listen(self) -> None:
        """Blocks on the subscription and hands what arrives to the local
        connections; reconnects with backoff for as long as the node runs
        (the original's listener thread just died with the connection)."""
        delay, lost_at = 0.05, 0.0
        while True:
            if self._pubsub is None:
                try:
                    self._pubsub = self._subscribe()
                except redis.RedisError:
                    gevent.sleep(delay * (0.5 + random.random()))
                    delay = min(BACKOFF_MAX, delay * 2)
                    continue
                if lost_at:
                    log.info("bus: reconnected to Redis after %.1f s", time.monotonic() - lost_at)
                else:
                    log.info("bus: connected to Redis")
                delay = 0.05
                if self.on_reconnect is not None:
                    self.on_reconnect()
            try:
                msg = self._pubsub.get_message(timeout=5.0)
            except (redis.RedisError, OSError) as e:
                log.warning("bus: lost Redis (%s: %s); reconnecting", e.__class__.__name__, e)
                lost_at = time.monotonic()
                self._close_pubsub()
                continue
            if msg is not None and msg.get("type") == "message":
                self._handle(msg["channel"], msg["data"])

    def _handle(self, channel: bytes, data: bytes) -> None:
        assert self._on_deliver is not None and self._on_invalidate is not None
        if channel == ALL.encode():
            if data.startswith(self._origin):
                return  # our own invalidation, already applied
            data = data.partition(b" ")[2]
        try:
            dispatch(data, self._on_deliver, self._on_invalidate)
        except Exception:
            log.exception("bus: could not handle %r", data[:64])

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (redis.RedisError, OSError) as e:
                log.debug("bus: closing the subscription: %s", e)
            self._pubsub = None
