"""Releases of many users at once share their round trips to
Redis (a crowd of 16,700 leaving one node at once waited past redis_timeout
for pooled connections, one round trip each; docs/benchmarks.md, 50,000
connections across three nodes). RedisPresence on a real Redis; its state
mirror is a stand-in that records what it was told."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gevent
import pytest
import redis

from gchat.cluster.redis_keys import online_key, users_key
from gchat.cluster.redis_presence import RedisPresence
from gchat.config import Settings
from tests.cluster_support import RedisServer


class Recorder:
    """The state mirror (gchat/cluster/mirror.py), as a set of who is online."""

    def __init__(self) -> None:
        self.states: set[int] = set()

    def online(self, user_id: int) -> None:
        self.states.add(user_id)

    def offline(self, user_id: int) -> None:
        self.states.discard(user_id)

    def online_many(self, user_ids: Sequence[int]) -> None:
        self.states |= set(user_ids)

    def offline_many(self, user_ids: Sequence[int]) -> None:
        self.states -= set(user_ids)


@pytest.fixture
def presence(redis_server: RedisServer) -> Iterator[tuple[RedisPresence, Recorder]]:
    redis_server.client().flushdb()
    mirror = Recorder()
    # no heartbeat and no sweep once started (each is an EVALSHA, which the
    # crowd test counts): a beat every second slipped into the count when
    # the releases and the checks took over a second on a loaded machine
    settings = Settings(redis_url=redis_server.url, heartbeat_interval=600.0, node_ttl=1800.0)
    p = RedisPresence("batch-node", mirror, settings)  # type: ignore[arg-type]
    p.start(on_lost=lambda uid: None)
    yield p, mirror
    p.stop()


def evalsha_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_crowd_claimed_and_released_at_once(presence: tuple[RedisPresence, Recorder],
                                              redis_server: RedisServer) -> None:
    p, mirror = presence
    r = redis_server.client()
    users = list(range(1, 301))
    claims = [gevent.spawn(p.claim, uid) for uid in users]
    gevent.joinall(claims, raise_error=True)
    assert all(g.value for g in claims)
    assert {int(u) for u in r.smembers(users_key("batch-node"))} == set(users)
    assert mirror.states == set(users)
    # a second claim of a user held here is refused, as before
    assert p.claim(7) is False

    before = evalsha_calls(r)
    gevent.joinall([gevent.spawn(p.release, uid) for uid in users], raise_error=True)
    # every one free for another node at once, and mirrored offline
    assert r.scard(users_key("batch-node")) == 0
    assert not any(r.exists(online_key(uid)) for uid in users)
    assert mirror.states == set()
    # 300 users left in one RELEASE script (the first caller's, and the rest together)
    assert evalsha_calls(r) - before <= 2


def test_a_user_released_and_claimed_again_at_once_stays_claimed(presence: tuple[RedisPresence, Recorder],
                                                                 redis_server: RedisServer) -> None:
    p, _ = presence
    r = redis_server.client()
    assert p.claim(42)
    leave = gevent.spawn(p.release, 42)
    back = gevent.spawn(p.claim, 42)
    gevent.joinall([leave, back], raise_error=True)
    assert back.value is True
    assert r.get(online_key(42)) == b"batch-node"
    assert int(r.scard(users_key("batch-node"))) == 1
