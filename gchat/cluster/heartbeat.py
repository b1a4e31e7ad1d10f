"""A node's heartbeat: the key whose expiry tells the cluster the node died.

It is renewed from a native OS thread on a blocking socket, not from a
greenlet: a busy event loop (a login storm, a burst of group messages) would
delay a greenlet's heartbeat past the TTL and get a live node reaped, while a
thread blocked in a C call releases the GIL and runs on time. Only a wedged
loop stops it on purpose (see WEDGED_MIN): a node that cannot serve its
users must let the cluster free them.

The thread talks to Redis through redis-py, on a connection whose socket is
the standard library's blocking one (`monkey.get_original`): after
`monkey.patch_all()` redis-py would otherwise make a gevent socket, whose
waits belong to the main thread's hub. Not gevent's threadpool: its workers
also hash passwords (app._offload), so a login storm would queue the
heartbeat behind argon2id work.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
from gevent import monkey
from redis.sentinel import SentinelManagedConnection

from gchat.cluster.redis_client import blocking_client, parse
from gchat.cluster.redis_keys import HEARTBEAT

# a loop that has not run for this long cannot serve its users: stop
# heartbeating so that the cluster frees them (at least 3 TTLs, so a node that
# is merely busy is never reaped)
WEDGED_MIN = 30.0


class _BlockingConnection(redis.connection.Connection):
    """redis-py's connection on the unpatched, blocking socket."""

    def _connect(self) -> Any:
        real_socket = monkey.get_original("socket", "socket")
        getaddrinfo = monkey.get_original("socket", "getaddrinfo")
        family, kind, proto, _, addr = getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = real_socket(family, kind, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.socket_connect_timeout)
            sock.connect(addr)
            sock.settimeout(self.socket_timeout)
        except OSError:
            sock.close()
            raise
        return sock


class _BlockingSentinelConnection(SentinelManagedConnection, _BlockingConnection):
    """The connection to the master Sentinel names, on a blocking socket."""


class Heartbeat:
    """Renews node:{node} every `interval` seconds with a TTL of `ttl`.

    `on_gone` is called (from the heartbeat's thread: it must only set a
    flag) when the key had lost this node's token: Redis lost it, or the node
    was reaped while it could not heartbeat; the node must claim its users
    again. The event loop calls `feed()` every interval to show it runs."""

    def __init__(self, redis_url: str, node: str, *, interval: float, ttl: float, timeout: float,
                 on_gone: Callable[[], None]) -> None:
        self.node = node
        self.interval = interval
        self.ttl = ttl
        self.wedged = max(WEDGED_MIN, 3 * ttl)
        self._on_gone = on_gone
        self._token = f"{os.getpid()}:{time.time():.6f}"
        self._ttl_ms = str(max(1, int(ttl * 1000)))
        # a failed beat is simply tried again at the next interval
        self._layout = parse(redis_url).layout
        self._client = blocking_client(redis_url, max(timeout, interval), _BlockingConnection,
                                       _BlockingSentinelConnection)
        self._script = self._client.register_script(HEARTBEAT)
        allocate_lock = monkey.get_original("_thread", "allocate_lock")
        self._sleep = allocate_lock()  # held until stop(): the thread's sleep
        self._sleep.acquire()
        self._running = allocate_lock()  # held while the thread runs
        self._tick = time.monotonic()
        self.stalled = False

    def beat(self) -> None:
        """One heartbeat, now. Raises redis.RedisError."""
        keys = [self._layout.node_key(self.node), self._layout.nodes]
        kept = self._script(keys=keys, args=[self._token, self._ttl_ms, self.node])
        if kept != 1:
            self._on_gone()

    def start(self) -> None:
        self._running.acquire()
        monkey.get_original("_thread", "start_new_thread")(self._run, ())

    def stop(self) -> None:
        """Stop, and wait for a heartbeat in flight: one landing after the
        node left would make it look alive for another TTL."""
        self._sleep.release()
        if self._running.acquire(True, max(1.0, self.interval) + 1):
            self._running.release()
        self._disconnect()

    def feed(self) -> float:
        """The event loop ran now. Returns how long it had not, when that
        paused the heartbeat (the node's users were freed), else 0."""
        now = time.monotonic()
        paused = now - self._tick if self.stalled else 0.0
        self._tick = now
        return paused

    def _run(self) -> None:
        # wakes early only when stop() releases the lock; no logging from
        # here: logging's locks are gevent's after patching, not for a
        # foreign thread, so the loop reports `stalled` through feed()
        while not self._sleep.acquire(True, self.interval):
            if time.monotonic() - self._tick > self.wedged:
                self.stalled = True
                continue
            self.stalled = False
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the heartbeat must outlive any one failure; it retries
                self._disconnect()
        self._running.release()

    def _disconnect(self) -> None:
        """Drop every connection: the next beat connects afresh (asking the
        sentinels or the cluster where the master is now)."""
        if isinstance(self._client, redis.Redis):
            self._client.connection_pool.disconnect()
        else:
            self._client.disconnect_connection_pools()
