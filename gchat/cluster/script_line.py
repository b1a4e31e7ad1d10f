"""A script called on a connection of its own, outside redis-py's pool and
command layers: the bus's route of a writer batch (ROUTE_BATCH), one call
per batch of the log's writer.

Why: the call's cost on the node is its round trip, and in redis-py 8 a
command also pays, around that round trip, a pool checkout that reads the
socket once more (a `recv` that finds nothing: the check that a pooled
connection holds no stray reply), the release, a retry wrapper, a
deprecated-argument check per call and some seven look-ups of an
OpenTelemetry collector that is not configured. Measured alone
(docs/benchmarks.md, "The route on a line of its own"): 25-47% less of the
node's CPU per call of 16 messages, for the same round trip.

Same failure rules as the bus's client (gchat/cluster/redis_client.py
connect): a connection that Redis or a failover closed is made again and the
call sent once more (a script sent twice publishes twice: the receiving
node drops the second by its sequence number); then the error, which the
router turns into "repaired from the log". A Redis restarted has no script
cache: NOSCRIPT loads the script and calls it again.

One caller at a time holds the line; one that finds it busy goes through
the client's pool as before, so nobody waits for another's round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from gevent.lock import Semaphore
from redis.commands.core import Script

from gchat.cluster.resp import Arg, ReplyError, Wire, pack


class ScriptLine:
    def __init__(self, client: redis.Redis, script: Script) -> None:
        self._client = client
        self._script = script
        self._conn: Any = None  # a redis.connection.AbstractConnection, taken from the client's pool once
        self._wire: Wire | None = None  # its socket, written and read here (gchat/cluster/resp.py)
        self._busy = Semaphore()

    def __call__(self, args: Sequence[Arg]) -> Any:
        """The script's reply to args (no KEYS: the bus's scripts take none).
        Raises redis.RedisError as a client's call would."""
        if not self._busy.acquire(blocking=False):
            return self._script(keys=[], args=args)  # the line is in use: the pool's way
        try:
            for attempt in (1, 2):
                conn = self._conn
                if conn is None:
                    # kept out of the pool for good; the pool's disconnect
                    # (the bus's stop) still closes it. It connects again by
                    # itself at the next command after a disconnect (to the
                    # master the sentinels name, on a Sentinel client)
                    conn = self._conn = self._client.connection_pool.get_connection()
                try:
                    return self._call(conn, args)
                except (redis.ConnectionError, redis.TimeoutError):
                    conn.disconnect()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        finally:
            self._busy.release()

    def _call(self, conn: Any, args: Sequence[Arg]) -> Any:
        script = self._script
        # the pool's rule for a connection coming back to it: on a Sentinel
        # client, one to a server that is no longer the master is dropped
        if not self._client.connection_pool.owns_connection(conn):
            conn.disconnect()
        # connected here, not by the send: a send reconnects to the address
        # it had, and on a Sentinel client only connect() asks the sentinels
        # for the master (after a failover, a new one); at once when connected
        conn.connect()
        wire = self._wire
        if wire is None or wire.sock is not conn._sock:  # a new connection
            wire = self._wire = Wire(conn._sock)
        reply = self._ask(wire, pack(("EVALSHA", script.sha, 0, *args)))
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            # a Redis restarted (or another server) without it
            source = script.script
            if isinstance(source, memoryview):
                source = source.tobytes()
            sha = self._ask(wire, pack(("SCRIPT", "LOAD", source)))
            if isinstance(sha, ReplyError):
                raise redis.ResponseError(str(sha))
            script.sha = sha.decode() if isinstance(sha, bytes) else sha
            reply = self._ask(wire, pack(("EVALSHA", script.sha, 0, *args)))
        if isinstance(reply, ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    @staticmethod
    def _ask(wire: Wire, command: bytes) -> Any:
        """One command and its one reply (the line carries one at a time)."""
        wire.send(command)
        replies = wire.replies()
        if len(replies) != 1:  # more than was asked for: out of step
            raise redis.ConnectionError(f"Redis answered {len(replies)} replies to one command")
        return replies[0]
