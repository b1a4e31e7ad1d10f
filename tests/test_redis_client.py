"""A node's Redis client under more callers than its pool holds: they wait
for a connection instead of failing (a login storm of a few hundred at once
got errno 11 from redis-py's refusing pool), and the node never holds more
sockets to Redis than the pool's size (its open files are its clients')."""

from __future__ import annotations

import threading

import pytest
import redis

from gchat.cluster.redis_client import connect
from tests.cluster_support import RedisServer


def connected(checker: redis.Redis) -> int:
    return int(checker.info("clients")["connected_clients"])


def test_callers_past_the_pool_wait_for_a_connection(redis_server: RedisServer) -> None:
    checker = redis_server.client()  # one connection of its own, counted in both readings
    before = connected(checker)
    r = connect(redis_server.url, timeout=5.0, pool_size=2)
    start = threading.Barrier(6)
    results: list[object] = []
    errors: list[Exception] = []

    def one() -> None:
        start.wait()  # all six ask for a connection at once
        try:
            # holds its connection for 0.3 s: six of them take three rounds of two
            results.append(r.blpop(["crowd-test:nothing"], timeout=0.3))
        except redis.RedisError as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # none refused (a plain pool of two refuses the other four at once)
    assert errors == [] and results == [None] * 6
    # and never more sockets than the pool's two
    assert 1 <= connected(checker) - before <= 2
    r.close()


def test_a_caller_that_cannot_get_a_connection_in_time_gets_an_error(redis_server: RedisServer) -> None:
    r = connect(redis_server.url, timeout=0.5, pool_size=1)
    busy = r.connection_pool.get_connection()  # the pool's one connection, in use
    try:
        # a RedisError after the wait, which presence and bus turn into errno 11
        # (gchat.errors.Unavailable)
        with pytest.raises(redis.RedisError):
            r.get("crowd-test:anything")
    finally:
        r.connection_pool.release(busy)
    assert r.get("crowd-test:anything") is None  # free again: served
    r.close()
