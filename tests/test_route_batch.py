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

import gevent
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


def test_misses_stay_with_their_messages_across_the_calls_of_a_long_batch(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis]) -> None:
    """ROUTE_BATCH answers '' when it reached everyone, else every message's
    misses in order: a long batch's calls each answer for their own
    messages, those that reached everyone included."""
    a, handed, r = buses
    members = list(range(1000, 1000 + BATCH_ARGS // 3))
    r.mset({online_key(uid): "b" for uid in members})
    items = [(members, b"7,%d {}" % seq) for seq in range(1, 5)] + [([7, 8], b"9,1 {}"), ([members[0]], b"9,2 {}")]
    assert a.route_batch(items) == [[], [], [], [], [7, 8], []]
    assert handed(5) == [(members, body) for _, body in items[:4]] + [([members[0]], b"9,2 {}")]


def test_a_batch_is_routed_again_after_redis_restarted(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis], redis_server: RedisServer) -> None:
    """The route's own connection (gchat/cluster/script_line.py) was closed
    by the restart and Redis forgot the script: the next batch still
    reaches its users (one more connection, the script loaded again), and
    none of it is reported missed."""
    a, handed, r = buses
    r.set(online_key(11), "b")
    assert a.route_batch([([11], b"7,1 {}")]) == [[]]
    assert handed(1) == [([11], b"7,1 {}")]
    r, sub = _restarted(redis_server)  # r kept: its pool's disconnect when collected would close sub
    assert a.route_batch([([11], b"7,2 {}"), ([12, 13], b"8,1 {}")]) == [[], [13]]
    assert _received(sub, 2) == [([11], b"7,2 {}"), ([12], b"8,1 {}")]


def test_a_batch_routed_while_the_route_s_own_connection_is_busy_reaches_its_users(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis]) -> None:
    """A caller that finds the route's own connection busy (the writer's
    batch on its way: held here) goes through the client's pool: its batch
    arrives whole and in order, its misses are its own; and the line serves
    the next batch once free."""
    a, handed, r = buses
    for uid in range(20, 30):
        r.set(online_key(uid), "b")
    line = a._route_batch
    assert line is not None
    first = [([uid], b"7,%d {}" % (uid - 19)) for uid in range(20, 25)] + [([99], b"7,6 {}")]
    second = [([uid], b"8,%d {}" % (uid - 24)) for uid in range(25, 30)]
    assert line._busy.acquire(blocking=False)
    try:
        assert a.route_batch(first) == [[], [], [], [], [], [99]]
    finally:
        line._busy.release()
    assert a.route_batch(second) == [[], [], [], [], []]
    assert handed(10) == [d for d in first if d[0] != [99]] + second


def test_posted_batches_reach_their_users_in_order_and_their_misses_come_with_a_later_call(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis]) -> None:
    """A group message's route is posted (gchat/cluster/script_line.py
    `post`): sent without waiting for Redis's reply, which the next call
    on the line reads (Redis answers one connection in order). Batches
    posted and waited for arrive in the order they were sent; each posted
    batch's misses reach its own handler, before the waited call returns."""
    a, handed, r = buses
    for uid in (11, 12, 13):
        r.set(online_key(uid), "b")
    told: list[list[list[int]]] = []
    a.post_batch([([11, 12, 40], b"7,1 {}")], told.append)
    a.post_batch([([13], b"7,2 {}"), ([41], b"8,1 {}")], told.append)
    assert a.route_batch([([11], b"9,1 {}")]) == [[]]
    assert told == [[[40]], [[], [41]]]
    assert handed(3) == [([11, 12], b"7,1 {}"), ([13], b"7,2 {}"), ([11], b"9,1 {}")]


def test_a_posted_batch_s_reply_is_read_by_the_line_s_timer_when_no_call_follows(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis]) -> None:
    a, handed, r = buses
    r.set(online_key(11), "b")
    told: list[list[list[int]]] = []
    a.post_batch([([11, 40], b"7,1 {}")], told.append)
    deadline = time.monotonic() + 5
    while not told and time.monotonic() < deadline:
        gevent.sleep(0.02)  # the hub runs the timer's drain
    assert told == [[[40]]]
    line = a._route_batch
    assert line is not None and not line._sent
    assert handed(1) == [([11], b"7,1 {}")]


def test_posted_batches_reach_their_users_after_redis_restarted(
        buses: tuple[RedisBus, Callable[[int], Got], redis.Redis], redis_server: RedisServer) -> None:
    """A restart closes the line's connection and empties the script cache:
    the calls posted on the dead connection are sent again on a new one,
    the script loaded again, and every batch still arrives, in order (a
    receiver drops by seq what reached it twice)."""
    a, _handed, r = buses
    r.set(online_key(11), "b")
    a.post_batch([([11], b"7,1 {}")], lambda _: None)
    line = a._route_batch
    assert line is not None
    line.settle()
    r, sub = _restarted(redis_server)  # r kept: its pool's disconnect when collected would close sub
    told: list[list[list[int]]] = []
    a.post_batch([([11], b"7,2 {}")], told.append)
    a.post_batch([([12, 13], b"8,1 {}")], told.append)
    line.settle()
    assert told == [[[]], [[13]]]
    got = _received(sub, 2)
    assert [d for i, d in enumerate(got) if d not in got[:i]] == [([11], b"7,2 {}"), ([12], b"8,1 {}")]


def _restarted(redis_server: RedisServer) -> tuple[redis.Redis, redis.client.PubSub]:
    """Redis restarted (its script cache and keys gone): node b's channel
    subscribed again, b alive, users 11 and 12 on it. The client is the
    subscription's: it must live as long (collected, it disconnects its
    pool, the subscription's connection too)."""
    redis_server.restart()
    r = redis_server.client()
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(node_channel("b"))
    r.set(node_key("b"), "token")
    r.set(online_key(11), "b")
    r.set(online_key(12), "b")
    return r, sub


def _received(sub: redis.client.PubSub, n: int) -> Got:
    """What node b's channel carries until at least n deliveries came and
    the channel went quiet (a repeat, if any, included), or 10 s passed."""
    got: Got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = sub.get_message(timeout=0.2)
        if msg is not None:
            dispatch(msg["data"], lambda u, body: got.append((u, body)), lambda g: pytest.fail("no invalidation"))
        elif len(got) >= n:
            break
    sub.close()
    return got
