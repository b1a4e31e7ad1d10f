"""The Redis clients of a node: where they connect and how they fail.

The URL's scheme says what kind of deployment the cluster bus runs on
(docs/operations.md, "Redis: one server, Sentinel, Cluster"):

  redis://HOST:PORT/DB (rediss://, unix://)   one Redis, as redis-py reads it
  redis+sentinel://[USER:PASS@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]
      the master Sentinel names for SERVICE; every client asks the
      sentinels again when its connection fails (after a failover)
  redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT...]
      a Redis Cluster (7 or later): keys in one hash slot
      (redis_keys.SLOTTED), the per-node channels sharded (SPUBLISH,
      SSUBSCRIBE) so each message crosses only its channel's shard

Every client of a node (the bus's publisher and subscriber, presence, the
heartbeat's thread, /readyz) is made here, so they all follow one URL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from gchat.cluster.redis_keys import ONE, SLOTTED, Layout
from gchat.config import REDIS_FORMS

# One Redis or a Sentinel-watched master (redis.Redis), or a Redis Cluster;
# both answer the commands gchat sends (GET, SMEMBERS, PUBLISH, scripts).
Client = redis.Redis | RedisCluster

SENTINEL = "redis+sentinel"
CLUSTER = "redis+cluster"


@dataclass(frozen=True)
class Target:
    """A parsed redis URL. `kind` is "one", "sentinel" or "cluster"; `hosts`
    the sentinels or the cluster's start-up nodes."""

    kind: str
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def layout(self) -> Layout:
        return SLOTTED if self.kind == "cluster" else ONE

    def auth(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}


def parse(url: str) -> Target:
    """Raises ValueError on a URL that is none of FORMS."""
    scheme, sep, rest = url.partition("://")
    if not sep or not url.startswith(REDIS_FORMS):
        raise ValueError(f"{url!r} is not a Redis URL (one of {', '.join(f + '...' for f in REDIS_FORMS)})")
    if scheme not in (SENTINEL, CLUSTER):
        return Target("one", url)
    netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    hosts = tuple(_host(h, url) for h in hostlist.split(","))
    parts = [p for p in path.split("/") if p]
    if scheme == CLUSTER:
        if parts:
            raise ValueError(f"{url!r}: a Redis Cluster has no database number or service name")
        return Target("cluster", url, hosts, username=username, password=password)
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"{url!r}: a Sentinel URL ends in /SERVICE or /SERVICE/DB")
    db = int(parts[1]) if len(parts) == 2 else 0
    return Target("sentinel", url, hosts, unquote(parts[0]), db, username, password)


def _host(hostport: str, url: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{url!r}: {hostport!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


# Connections one client keeps to a single Redis at most (redis-py's own
# default). Callers past it wait for one to be free, up to the client's
# timeout: redis-py's plain pool refuses them instead (MaxConnectionsError),
# which in a login storm of a few hundred at once failed logins with errno
# 11 and put the node's presence in its "Redis unavailable" mode; and a pool
# without a bound would hold a socket per call in flight, on a node whose
# client connections already use most of its open-file limit
# (docs/benchmarks.md, 50,000 connections across three nodes). Sentinel and
# Cluster clients keep redis-py's pools.
POOL_SIZE = 100


def connect(url: str, timeout: float, pool_size: int = POOL_SIZE) -> Client:
    """A client that fails fast: one retry (a pooled connection that a Redis
    restart or a failover closed is replaced on the spot), then the error;
    on one Redis, at most `pool_size` connections, a caller past them
    waiting up to `timeout`.

    In a cluster the client reads the slot map now, so the cluster must
    answer at start-up; a Sentinel client asks the sentinels at its first
    command."""
    target = parse(url)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 0,
    }
    if target.kind == "sentinel":
        master: redis.Redis = sentinel(target, timeout).master_for(target.service, db=target.db, **target.auth(),
                                                                   **options)
        return master
    if target.kind == "cluster":
        return _cluster(startup_nodes=_nodes(target.hosts), **target.auth(), **options)
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=timeout, **options)
    return redis.Redis(connection_pool=pool)


def sentinel(target: Target, timeout: float, **connection: Any) -> Sentinel:
    """The sentinels of a target, asked with the node's Redis timeout (the
    credentials of the URL are the master's; sentinels are asked without)."""
    return Sentinel(list(target.hosts), sentinel_kwargs={"socket_timeout": timeout,
                                                         "socket_connect_timeout": timeout},
                    **connection)


def _nodes(hosts: Iterable[tuple[str, int]]) -> list[ClusterNode]:
    return [ClusterNode(h, p) for h, p in hosts]


class _Cluster(RedisCluster):
    """A RedisCluster whose failures are all redis.RedisError, which every
    caller in gchat handles: redis-py raises RedisClusterException, not a
    RedisError, when no node answers or a slot has no master (in the
    seconds of a failover)."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisClusterException as e:
            raise redis.ConnectionError(f"Redis Cluster: {e}") from e


def _cluster(**kwargs: Any) -> RedisCluster:
    """A client of the cluster; it reads the slot map now."""
    try:
        return _Cluster(**kwargs)
    except RedisClusterException as e:
        raise redis.ConnectionError(f"Redis Cluster: {e}") from e


# --- the subscriber ---------------------------------------------------------


class ShardSubscriber(redis.client.PubSub):
    """A subscriber on the one cluster node that holds its shard channel's
    slot: the node's channel by SSUBSCRIBE, the cluster-wide channel by
    SUBSCRIBE (a classic PUBLISH reaches every node of a cluster).

    A shard message is handed on as a plain one, so both read alike. When
    the slot leaves the node (a failover, a resharding), Redis ends the
    subscription with an SUNSUBSCRIBE the client never asked for: that is a
    lost subscription, raised as a ConnectionError so the bus subscribes
    again where the slot went, and repairs from the log. (The bus reads its
    subscription itself once subscribed, with the same two rules:
    gchat/cluster/redis_bus.py `Subscription`.)"""

    def handle_message(self, response: Any, ignore_subscribe_messages: bool = False) -> dict[str, Any] | None:
        kind = response[0] if isinstance(response, list) else None
        if kind in (b"sunsubscribe", "sunsubscribe"):
            raise redis.ConnectionError("Redis moved the node's shard channel to another node")
        message: dict[str, Any] | None = super().handle_message(  # type: ignore[no-untyped-call]
            response, ignore_subscribe_messages)
        if message is not None and message.get("type") == "smessage":
            message["type"] = "message"
        return message


def subscribe(url: str, timeout: float, idle_check: float, own: bytes, everyone: str) -> redis.client.PubSub:
    """A subscription to this node's channel `own` and the cluster-wide
    `everyone`. The read timeout outlasts the idle check: an idle channel is
    normal, and a dead connection is found by the health-check PING.
    Raises redis.RedisError when Redis cannot be reached.

    The subscription holds its pool itself, never through a client: a
    redis.Redis that made its own pool closes it when collected, and with it
    the subscriber's connection, which redis-py then silently makes again
    (whatever was published meanwhile lost)."""
    target = parse(url)
    options: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": idle_check,
                               "health_check_interval": idle_check}
    pubsub: redis.client.PubSub
    if target.kind == "cluster":
        # the slot map is read afresh at every subscription: after a
        # failover the channel's slot has a new master
        topology = _cluster(startup_nodes=_nodes(target.hosts), socket_timeout=timeout,
                            socket_connect_timeout=timeout, **target.auth())
        try:
            node = topology.get_node_from_key(own)
        except RedisClusterException as e:  # the slot has no master now (a failover under way)
            raise redis.ConnectionError(f"Redis Cluster: {e}") from e
        finally:
            topology.close()
        pool = redis.ConnectionPool(host=node.host, port=node.port, **target.auth(), **options)
        pubsub = ShardSubscriber(pool, ignore_subscribe_messages=True)
        try:
            pubsub.ssubscribe(own)
            pubsub.subscribe(everyone)
        except BaseException:
            pubsub.close()
            raise
        return pubsub
    if target.kind == "sentinel":
        # a connection of a Sentinel pool asks the sentinels for the master
        # whenever it connects: redis-py's own re-subscription after a
        # failover (the sentinels kill the old master's clients) lands on the
        # new master
        pool = SentinelConnectionPool(target.service, sentinel(target, timeout), db=target.db, **target.auth(),
                                      **options)
    else:
        pool = redis.ConnectionPool.from_url(url, **options)
    pubsub = redis.client.PubSub(pool, ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(own, everyone)
    except BaseException:
        pubsub.close()
        raise
    return pubsub


# --- the heartbeat's client -------------------------------------------------


def blocking_client(url: str, timeout: float, connection_class: type[redis.connection.Connection],
                    sentinel_connection_class: type[SentinelManagedConnection]) -> Client:
    """A client for a native thread: every socket it opens (to Redis, to the
    sentinels, to the cluster's nodes) is made by `connection_class`, the
    heartbeat's blocking one. No retry inside redis-py: its backoff would
    sleep with the patched time.sleep, a greenlet's; the caller retries."""
    target = parse(url)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
    if target.kind == "sentinel":
        watch = sentinel(target, timeout)
        watch.sentinels = [
            redis.Redis(connection_pool=redis.ConnectionPool(
                host=h, port=p, connection_class=connection_class, socket_timeout=timeout,
                socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)))
            for h, p in target.hosts
        ]
        master: redis.Redis = watch.master_for(target.service, db=target.db, connection_class=sentinel_connection_class,
                                               **target.auth(), **options)
        return master
    if target.kind == "cluster":
        (host, port), *rest = target.hosts
        # made "from a URL" so that redis-py builds each node's pool with
        # the connection class given
        return _cluster(url=f"redis://{host}:{port}", startup_nodes=_nodes(rest),
                        connection_class=connection_class, **target.auth(), **options)
    pool = redis.ConnectionPool.from_url(url, connection_class=connection_class, **options)
    return redis.Redis(connection_pool=pool)
