"""What an operator watches: the node's counts in Prometheus format, and its
health, over HTTP on an address of its own (`--metrics-bind`, loopback by
default; docs/operations.md).

    /metrics   prometheus_client's exposition of the node's counts, the
               process's CPU, memory and open files
    /healthz   200 while the process serves
    /readyz    200 when the database (and Redis, in cluster mode) answer,
               503 naming what does not

The hot path only adds to plain integers (`Counts`): a delivery costs one
attribute add, no lock and no label lookup. prometheus_client reads them when
scraped (`NodeCollector`), and writes the exposition.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import redis
from gevent.lock import Semaphore
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from gchat.cluster.redis_client import Client, connect
from gchat.store import Database

log = logging.getLogger(__name__)

# A login is an argon2id check (about 32 ms at the default cost), a token
# check (well under 1 ms) and a transaction: buckets from 1 ms to 10 s.
LOGIN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A readiness probe must answer well within a load balancer's own timeout
# (typically 1 to 5 s), even when the database is frozen rather than down.
PROBE_TIMEOUT = 1.0
# Probes are cached this long: a scraper polling every 100 ms, or many at
# once, costs the database one SELECT 1 a second.
PROBE_CACHE = 1.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Counts:
    """Counted where it happens, read when scraped. Plain integers: greenlets
    switch only at I/O, so `+=` needs no lock."""

    __slots__ = ("delivered_local", "routed", "stored", "errors", "bus_reconnects", "login_seconds",
                 "batches_fast", "batches_locked", "batches_moved", "commits_lost")

    def __init__(self) -> None:
        self.delivered_local = 0  # pushed to a connection of this node
        self.routed = 0  # handed to another node by the bus
        self.stored = 0  # stored offline, for the recipient's next login
        self.errors: Counter[int] = Counter()  # errno -> requests refused with it
        self.bus_reconnects = 0
        # the log writer's batches by the path that committed them
        # (gchat/writer.py): one round trip (fast), or the lock first
        # (locked); moved: fast tries that found a conversation moved and
        # went on to the lock (counted in locked too)
        self.batches_fast = 0
        self.batches_locked = 0
        self.batches_moved = 0
        # writer batches whose connection was lost with the COMMIT on its
        # way, by what the log then said: committed, rolled back (run
        # again), or unknown (the log could not be asked: errno 11)
        self.commits_lost: Counter[str] = Counter()
        # not registered anywhere until a MetricsServer registers it: tests
        # build many Services in one process
        self.login_seconds = Histogram(
            "gchat_login_seconds", "time to handle a login request, by result",
            ["result"], buckets=LOGIN_BUCKETS, registry=None,
        )

    def error(self, errno: int) -> None:
        self.errors[errno] += 1


class NodeCollector(Collector):
    """The node's counts as metric families, read at scrape time."""

    def __init__(self, counts: Counts, connections: Callable[[], int], users: Callable[[], int],
                 db: Database) -> None:
        self.counts = counts
        self.connections = connections
        self.users = users
        self.db = db

    def collect(self) -> Iterator[Metric]:
        c = self.counts
        yield GaugeMetricFamily("gchat_connections", "client connections open on this node",
                                value=self.connections())
        yield GaugeMetricFamily("gchat_users_logged_in", "users logged in on this node", value=self.users())
        messages = CounterMetricFamily(
            "gchat_messages", "chat messages by where each recipient's copy went: a connection of this node "
            "(local), another node through the bus (routed), or the offline store (stored)", labels=["path"])
        messages.add_metric(["local"], c.delivered_local)
        messages.add_metric(["routed"], c.routed)
        messages.add_metric(["stored"], c.stored)
        yield messages
        errors = CounterMetricFamily("gchat_errors", "requests refused, by errno (docs/protocol.md part B)",
                                     labels=["errno"])
        for errno, n in sorted(c.errors.items()):
            errors.add_metric([str(errno)], n)
        yield errors
        batches = CounterMetricFamily(
            "gchat_log_batches", "the log writer's batches, by the path that committed them: one round trip "
            "(fast), the conversations locked first (locked); moved: fast tries that found a conversation "
            "another node wrote meanwhile, and went on to the lock", labels=["path"])
        batches.add_metric(["fast"], c.batches_fast)
        batches.add_metric(["locked"], c.batches_locked)
        batches.add_metric(["moved"], c.batches_moved)
        yield batches
        lost = CounterMetricFamily(
            "gchat_log_commits_lost", "the log writer's batches whose database connection was lost with the "
            "COMMIT on its way, by what the log then said: committed (answered as written), rolled_back (run "
            "again), unknown (the log could not be asked: refused, errno 11)", labels=["outcome"])
        for outcome in ("committed", "rolled_back", "unknown"):
            lost.add_metric([outcome], c.commits_lost[outcome])
        yield lost
        yield CounterMetricFamily("gchat_bus_reconnects", "times the cluster bus reconnected to Redis",
                                  value=c.bus_reconnects)
        pool = self.db.engine.pool
        if isinstance(pool, QueuePool):
            used = GaugeMetricFamily("gchat_db_pool_connections", "database connections, by state",
                                     labels=["state"])
            used.add_metric(["in_use"], pool.checkedout())
            used.add_metric(["idle"], pool.checkedin())
            yield used
            yield GaugeMetricFamily("gchat_db_pool_size", "connections the pool keeps (pool_size)",
                                    value=pool.size())


class Health:
    """Readiness: the stores a request needs answer. One probe at a time,
    its result cached for PROBE_CACHE seconds."""

    def __init__(self, db: Database, redis_url: str = "") -> None:
        self.db = db
        self.redis: Client | None = None
        if redis_url.startswith(("redis+sentinel:", "redis+cluster:")):
            self.redis = connect(redis_url, PROBE_TIMEOUT)  # the master Sentinel names; the cluster's nodes
        elif redis_url:
            self.redis = redis.Redis.from_url(redis_url, socket_timeout=PROBE_TIMEOUT,
                                              socket_connect_timeout=PROBE_TIMEOUT)
        self._lock = Semaphore()
        self._at = -PROBE_CACHE
        self._problems: list[str] = []

    def problems(self) -> list[str]:
        """What does not answer; empty when ready."""
        with self._lock:
            if time.monotonic() - self._at >= PROBE_CACHE:
                self._problems = self._probe()
                self._at = time.monotonic()
            return self._problems

    def _probe(self) -> list[str]:
        problems = []
        try:
            # a frozen database would hold the probe for db_timeout; the
            # timeout also invalidates the pooled connection it interrupted
            with gevent.Timeout(PROBE_TIMEOUT), self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except gevent.Timeout:
            problems.append(f"database: no answer within {PROBE_TIMEOUT:g} s")
        except (sa_exc.SQLAlchemyError, OSError) as e:
            problems.append(f"database: {e.__class__.__name__}")
        if self.redis is not None:
            try:
                with gevent.Timeout(PROBE_TIMEOUT):
                    self.redis.ping()
            except gevent.Timeout:
                problems.append(f"redis: no answer within {PROBE_TIMEOUT:g} s")
            except (redis.RedisError, OSError) as e:
                problems.append(f"redis: {e.__class__.__name__}")
        return problems

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


def registry_for(collector: NodeCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    registry.register(collector.counts.login_seconds)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, _resident_memory_bytes, _open_fds
    return registry


class MetricsServer:
    """The HTTP endpoint: gevent's WSGI server, each request on its own
    greenlet, next to the chat listener."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self.health = health
        self._metrics = make_wsgi_app(registry)
        self.server = WSGIServer((host, port), self._app, log=None, error_log=log)

    @property
    def address(self) -> tuple[str, int]:
        address = self.server.address
        return str(address[0]), int(address[1])

    def start(self) -> None:
        """Raises OSError when the address cannot be bound."""
        self.server.start()

    def stop(self) -> None:
        self.server.stop(timeout=1.0)
        self.health.close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            problems = self.health.problems()
            if problems:
                return _text(start_response, "503 Service Unavailable", "not ready: " + "; ".join(problems) + "\n")
            return _text(start_response, "200 OK", "ready\n")
        return _text(start_response, "404 Not Found", "/metrics, /healthz or /readyz\n")


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
