"""The bus's subscriber reads its connection itself once redis-py has
subscribed it (RedisBus's Subscription, gchat/cluster/redis_bus.py; the wire
format in gchat/cluster/resp.py). On a real Redis, read as the bus's loop
reads (these tests do not patch the standard library, so the loop's
greenlet would block the test: its steps are called here): what a node is
handed, in order, from its own channel and the cluster-wide one; its own
invalidations skipped; the subscription's confirmations and the health
check's answers never handed on; every message one read brought handed on
by that read; a silent Redis found lost."""

from __future__ import annotations

import select
import time

import pytest
import redis

from gchat.cluster.redis_bus import RedisBus, Subscription
from gchat.cluster.redis_keys import ALL, node_channel
from gchat.config import Settings
from tests.cluster_support import RedisServer


def _bus(redis_server: RedisServer, got: list[tuple[str, object]], idle_check: float = 0.2) -> RedisBus:
    # a health check after idle_check seconds of silence: its answer comes
    # on the subscription
    bus = RedisBus("s", Settings(redis_url=redis_server.url, bus_idle_check=idle_check))
    bus._on_deliver = lambda users, body: got.append(("deliver", (users, body)))
    bus._on_invalidate = lambda gid: got.append(("group", gid))
    bus._on_blocks = lambda uid: got.append(("blocks", uid))
    return bus


def _readable(pubsub: redis.client.PubSub) -> None:
    conn = pubsub.connection
    assert conn is not None and conn._sock is not None
    select.select([conn._sock], [], [], 5)
    time.sleep(0.05)  # the rest of what Redis wrote


def test_the_subscriber_hands_on_what_is_published_to_its_node_in_order(redis_server: RedisServer) -> None:
    r = redis_server.client()
    got: list[tuple[str, object]] = []
    bus = _bus(redis_server, got)
    pubsub = bus._subscribe()
    try:
        sub = Subscription(pubsub, bus.idle_check)
        # the two confirmations (in one read or two), then silence: a PING, then its answer
        nothing = [sub.messages() for _ in range(3)]
        assert nothing == [[]] * 3
        r.publish(node_channel("s"), b"D1,2 7,1 {}")
        r.publish(ALL, b"other G5")
        r.publish(ALL, b"s G6")  # its own: applied already where it was made
        r.publish(node_channel("s"), b"MD3 7,2 {}\nD1 7,3 {}")
        r.publish(ALL, b"other B9")
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            for one in sub.messages():
                bus._handle(*one)
        assert got == [("deliver", ([1, 2], b"7,1 {}")), ("group", 5), ("deliver", ([3], b"7,2 {}")),
                       ("deliver", ([1], b"7,3 {}")), ("blocks", 9)]
        assert sub.messages() == []  # silence again: a PING, answered
        assert sub.messages() == []
    finally:
        pubsub.close()
        bus.stop()
        r.close()


def test_every_message_one_read_brings_is_handed_on_by_that_read(redis_server: RedisServer) -> None:
    r = redis_server.client()
    bus = _bus(redis_server, [], idle_check=2.0)
    pubsub = bus._subscribe()
    try:
        sub = Subscription(pubsub, bus.idle_check)
        _readable(pubsub)
        assert sub.messages() == []  # the confirmations
        big = b"x" * 300_000  # longer than one read: it comes whole, once
        for i in range(20):
            r.publish(node_channel("s"), b"D1 7,%d {}" % i)
        r.publish(node_channel("s"), b"D1 7,20 " + big)
        r.publish(node_channel("s"), b"D1 7,21 {}")
        _readable(pubsub)
        first = sub.messages()
        # the twenty small ones came in the first read, all handed on by it
        assert len(first) >= 20
        assert [data for _, data in first[:20]] == [b"D1 7,%d {}" % i for i in range(20)]
        rest = first[20:]
        deadline = time.monotonic() + 10
        while len(rest) < 2 and time.monotonic() < deadline:
            rest += sub.messages()
        assert [data for _, data in rest] == [b"D1 7,20 " + big, b"D1 7,21 {}"]
    finally:
        pubsub.close()
        bus.stop()
        r.close()


def test_a_redis_that_does_not_answer_the_health_check_is_a_lost_subscription(redis_server: RedisServer) -> None:
    r = redis_server.client()
    bus = _bus(redis_server, [])
    pubsub = bus._subscribe()
    try:
        sub = Subscription(pubsub, bus.idle_check)
        while not sub._pinged:  # the confirmations, then silence: a PING
            assert sub.messages() == []
        assert sub.messages() == []  # its answer
        assert not sub._pinged
        r.client_pause(1000, all=True)  # Redis runs no command meanwhile
        assert sub.messages() == []  # silence: a PING, unanswered
        with pytest.raises(redis.ConnectionError):
            sub.messages()
    finally:
        r.client_unpause()
        pubsub.close()
        bus.stop()
        r.close()
