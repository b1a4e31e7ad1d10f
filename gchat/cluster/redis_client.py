"""The Redis clients of a node: how they connect and how they fail."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: one retry (a pooled connection that a Redis
    restart closed is replaced on the spot), then the error."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
