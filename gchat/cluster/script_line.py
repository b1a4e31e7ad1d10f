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

A call may be posted (`post`): sent, and its reply read later, by the next
call on the line (Redis answers one connection's commands in order, so the
replies come in step) or, when none comes within DRAIN_AFTER, by a greenlet
the hub's timer starts. Why: a group message's route is one call per writer
batch at low rates (one message a batch), and waiting for its reply was one
more wake-up of the node per message, about half of what a group message
cost more across nodes than locally (docs/benchmarks.md, "Across/local on
main, profiled per batch"); the reply is read at the next call from what
the kernel already holds, without a wake-up of its own. A posted call's
failures are the same as a waited one's, found later: a connection lost
with calls unanswered sends them all again on the next one, in order; a
Redis that forgot the script (NOSCRIPT) has it loaded and the calls it
refused sent again. A message published twice is dropped by its receiver
(sequence number), one not published at all is repaired from the log.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import redis
from gevent.lock import Semaphore
from redis.commands.core import Script

from gchat.cluster.resp import Arg, ReplyError, Wire, pack

log = logging.getLogger(__name__)

# how long a posted call's reply may wait unread when no other call on the
# line comes to read it (its misses counted late, a NOSCRIPT or a lost
# connection found late: the calls sent again that much later). While calls
# keep coming, each reads the replies before it and the timer only starts
# again: its wake-up is one per DRAIN_AFTER, not one per call
DRAIN_AFTER = 0.5

# a reply and what to do with it: the call's reply, or a ReplyError
Then = Callable[[Any], None]


class ScriptLine:
    def __init__(self, client: redis.Redis, script: Script) -> None:
        self._client = client
        self._script = script
        self._conn: Any = None  # a redis.connection.AbstractConnection, taken from the client's pool once
        self._wire: Wire | None = None  # its socket, written and read here (gchat/cluster/resp.py)
        self._busy = Semaphore()
        # the calls sent whose reply was not read yet, in order: the command
        # as sent (sent again on a new connection) and who takes the reply
        self._sent: deque[tuple[bytes, Then]] = deque()
        self._late: Any = None  # the hub's timer that reads replies nobody came back for
        self._posts = 0  # calls posted so far
        self._armed_at = 0  # ... when the timer was started

    def __call__(self, args: Sequence[Arg]) -> Any:
        """The script's reply to args (no KEYS: the bus's scripts take none).
        Raises redis.RedisError as a client's call would."""
        if not self._busy.acquire(blocking=False):
            return self._script(keys=[], args=args)  # the line is in use: the pool's way
        got: list[Any] = []
        try:
            self._sent.append((self._command(args), got.append))
            self._run(wait=True)
        finally:
            self._busy.release()
        if not got:  # its connection lost during a reload of the script
            raise redis.ConnectionError("the route call was not answered")
        reply = got[0]
        if isinstance(reply, ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    def post(self, args: Sequence[Arg], then: Then) -> None:
        """Send the call without waiting for its reply: `then` gets it (or
        a ReplyError) when it is read, in the greenlet of a later call or
        of the timer's drain. Raises redis.RedisError when it could not be
        sent (then it was not)."""
        if not self._busy.acquire(blocking=False):
            then(self._script(keys=[], args=args))  # the line is in use: the pool's way, waited for
            return
        try:
            self._sent.append((self._command(args), then))
            self._run(wait=False)
        finally:
            self._busy.release()
        self._posts += 1
        if self._sent:
            self._arm()

    def settle(self) -> None:
        """Read every reply still due (the bus's stop; the timer's drain).
        A failure is logged: the calls' messages are in the log."""
        with self._busy:
            if not self._sent:
                return
            try:
                # most often every reply is there: read without a wait (a
                # wait would add the socket to the loop's set, and a wake-up
                # for the next reply nobody waits for)
                self._run(wait=False, new=False)
                if self._sent:
                    self._run(wait=True, new=False)
            except redis.RedisError as e:
                log.warning("bus: %d route call(s) unanswered (%s); their messages are repaired from the log",
                            len(self._sent), e)

    def close(self) -> None:
        if self._late is not None:
            self._late.stop()
        self.settle()

    def _command(self, args: Sequence[Arg]) -> bytes:
        return pack(("EVALSHA", self._script.sha, 0, *args))

    def _run(self, wait: bool, new: bool = True) -> None:
        """Send what is due on the line (the call just queued, if `new`;
        every call unanswered when the connection is new) and read replies:
        all that are due when waiting, else those the kernel already holds."""
        sent = self._sent
        for attempt in (1, 2):
            try:
                wire, fresh = self._line()
                # a new connection: what the one before left unanswered is
                # sent again, in order (published twice at most: dropped by seq)
                out = b"".join(c for c, _ in sent) if fresh else sent[-1][0] if new else b""
                if out:
                    wire.send(out)
                retry: list[tuple[bytes, Then]] = []
                if wait or not wire.can_peek:
                    while sent:
                        retry += self._read(wire.replies())
                else:
                    got = wire.ready()
                    if got:
                        retry = self._read(got)
                if retry:
                    self._reload(wire, retry)
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if self._conn is not None:
                    self._conn.disconnect()
                if attempt == 2:
                    sent.clear()
                    raise
        raise AssertionError("unreachable")

    def _line(self) -> tuple[Wire, bool]:
        """The line's wire, connected; and whether its connection is new."""
        conn = self._conn
        if conn is None:
            # kept out of the pool for good; the pool's disconnect (the
            # bus's stop) still closes it. It connects again by itself at
            # the next command after a disconnect (to the master the
            # sentinels name, on a Sentinel client)
            conn = self._conn = self._client.connection_pool.get_connection()
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
            return wire, True
        return wire, False

    def _read(self, replies: list[Any]) -> list[tuple[bytes, Then]]:
        """Hand replies to their calls, in order; the calls Redis refused
        for want of the script (NOSCRIPT) are returned instead."""
        sent = self._sent
        refused: list[tuple[bytes, Then]] = []
        for reply in replies:
            if not sent:  # more than was asked for: out of step
                raise redis.ConnectionError(f"Redis answered {len(replies)} replies to fewer commands")
            call = sent.popleft()
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                refused.append(call)
            else:
                _hand(call[1], reply)
        return refused

    def _reload(self, wire: Wire, refused: list[tuple[bytes, Then]]) -> None:
        """A Redis restarted (or another server) without the script: load
        it, and send the calls it refused again, in their order; waited
        for (a rare path)."""
        sent = self._sent
        while sent:  # those sent after it went to the same Redis: answered first
            refused += self._read(wire.replies())
        # kept with the calls due from now: a connection lost meanwhile sends
        # them again on the next (refused again there: loaded again)
        sent.extend(refused)
        script = self._script
        source = script.script
        if isinstance(source, memoryview):
            source = source.tobytes()
        wire.send(pack(("SCRIPT", "LOAD", source)))
        replies = wire.replies()
        if len(replies) != 1:  # more than was asked for: out of step
            raise redis.ConnectionError(f"Redis answered {len(replies)} replies to one command")
        sha = replies[0]
        if isinstance(sha, ReplyError):
            raise redis.ResponseError(str(sha))
        script.sha = sha.decode() if isinstance(sha, bytes) else sha
        # the same text, the same sha: the commands go again as they were
        wire.send(b"".join(c for c, _ in refused))
        while sent:
            for _, then in self._read(wire.replies()):  # refused again: not loaded twice
                _hand(then, ReplyError("NOSCRIPT the script was refused after it was loaded"))

    def _arm(self) -> None:
        timer = self._late
        if timer is None or not timer.active:
            # a new one each time: libev's one-shot timer started again
            # after it fired fires at once (gevent 26)
            timer = self._late = gevent.get_hub().loop.timer(DRAIN_AFTER, ref=False)  # keeps no loop alive
            self._armed_at = self._posts
            timer.start(self._due)

    def _due(self) -> None:
        # in the hub, which must not block: the reads go in a greenlet
        if not self._sent:
            return
        if self._posts != self._armed_at:  # calls are still coming: they read the replies
            self._arm()
        else:
            gevent.spawn(self.settle)


def _hand(then: Then, reply: Any) -> None:
    try:
        then(reply)
    except Exception:  # the line stays in step whatever a caller's handler does
        log.exception("bus: handling a route call's reply")
