"""A writer batch routed in one ROUTE_BATCH call (gchat/cluster/redis_bus.py),
each message's users in one comma-joined argument: the other node's
subscriber gets one envelope holding the batch's deliveries for it, in batch
order, each for exactly its users there; the users no live node holds come
back as missed, per message. A RedisBus and a subscription to the other
node's channel on a real Redis; the owners' claims are written as presence
writes them (gchat/cluster/redis_keys.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from gchat.cluster.bus import dispatch
from gchat.cluster.redis_bus import BATCH_ARGS, RedisBus
from gchat.cluster.redis_keys import node_channel, node_key, online_key
from gchat.config import Settings
from tests.cluster_support import RedisServer

Got = list[tuple[list[int], bytes]]


@pytest.fixture
def buses(redis_server: RedisServer) -> Iterator[tuple[RedisBus, Callable[[int], Got], redis.Redis]]:
    """Node "a" routes; node "b" is its channel's subscription, whose
    messages are decoded as a node's bus decodes them (dispatch)."""
    r = redis_server.client()
    r.flushdb()
    a = RedisBus("a", Settings(redis_url=redis_server.url))
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(node_channel("b"))
    for node in ("a", "b"):
        r.set(node_key(node), "token")

    def handed(n: int) -> Got:
        """What node b is handed, once it has n deliveries, and whatever
        else came within a short wait."""
        got: Got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = sub.get_message(timeout=0.05 if len(got) < n else 0.2)
            if msg is not None:
                dispatch(msg["data"], lambda u, body: got.append((u, body)), lambda g: pytest.fail("no invalidation"))
            elif len(got) >= n:
                break
        return got

    yield a, handed, r
    sub.close()
    a.stop()


def test_a_batch_reaches_each_message_s_users_on_the_other_node_in_order(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis]) -> None:
    a, handed, r = buses
    for uid in (11, 12, 13, 105):
        r.set(online_key(uid), "b")
    r.set(online_key(14), "a")  # claimed by the router's own node: not connected there, so missed
    r.set(online_key(15), "gone")  # a node whose heartbeat expired
    missed = a.route_batch([([11, 14, 12, 16], b"7,1 {}"), ([105], b"8,3 {}"), ([15, 13], b"7,2 {}"),
                            ([16], b"9,1 {}")])
    assert missed == [[14, 16], [], [15], [16]]
    assert handed(3) == [([11, 12], b"7,1 {}"), ([105], b"8,3 {}"), ([13], b"7,2 {}")]


def test_a_batch_past_the_argument_bound_goes_in_several_calls_in_order(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis]) -> None:
    a, handed, r = buses
    members = list(range(1000, 1000 + BATCH_ARGS // 3))
    r.mset({online_key(uid): "b" for uid in members})
    items = [(members, b"7,%d {}" % seq) for seq in range(1, 6)]
    assert a.route_batch(items) == [[], [], [], [], []]
    assert handed(5) == [(members, body) for _, body in items]
