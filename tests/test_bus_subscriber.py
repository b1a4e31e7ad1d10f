"""The bus's subscriber takes a published message straight from redis-py's
parsed reply (RedisBus._next, gchat/cluster/redis_bus.py), anything else
through redis-py's handle_message. On a real Redis, read as the bus's loop
reads (these tests do not patch the standard library, so the loop's
greenlet would block the test: its steps are called here): what a node is
handed, in order, from its own channel and the cluster-wide one; its own
invalidations skipped; the subscription's confirmations and the health
check's answers never handed on."""

from __future__ import annotations

import time

from gchat.cluster.redis_bus import RedisBus
from gchat.cluster.redis_keys import ALL, node_channel
from gchat.config import Settings
from tests.cluster_support import RedisServer


def test_the_subscriber_hands_on_what_is_published_to_its_node_in_order(redis_server: RedisServer) -> None:
    r = redis_server.client()
    got: list[tuple[str, object]] = []
    # a health check after 0.2 s of silence: its PONG comes on the subscription
    bus = RedisBus("s", Settings(redis_url=redis_server.url, bus_idle_check=0.2))
    bus._on_deliver = lambda users, body: got.append(("deliver", (users, body)))
    bus._on_invalidate = lambda gid: got.append(("group", gid))
    bus._on_blocks = lambda uid: got.append(("blocks", uid))
    pubsub = bus._subscribe()
    try:
        nothing = [bus._next(pubsub) for _ in range(4)]  # two confirmations, then silence, a PING and its PONG
        assert nothing == [None] * 4
        r.publish(node_channel("s"), b"D1,2 7,1 {}")
        r.publish(ALL, b"other G5")
        r.publish(ALL, b"s G6")  # its own: applied already where it was made
        r.publish(node_channel("s"), b"MD3 7,2 {}\nD1 7,3 {}")
        r.publish(ALL, b"other B9")
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            one = bus._next(pubsub)
            if one is not None:
                bus._handle(*one)
        assert bus._next(pubsub) is None
        assert got == [("deliver", ([1, 2], b"7,1 {}")), ("group", 5), ("deliver", ([3], b"7,2 {}")),
                       ("deliver", ([1], b"7,3 {}")), ("blocks", 9)]
    finally:
        pubsub.close()
        bus.stop()
        r.close()
