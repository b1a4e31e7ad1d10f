"""Cluster-wide presence in Redis, with node liveness that needs no help
from a node that died.

Keys (all under PREFIX, "gchat:"):
  node:{node}     heartbeat, TTL = node_ttl, renewed every heartbeat_interval
  nodes           set: every node that ever heartbeated and was not reaped yet
  online:{uid}    the node holding the user
  users:{node}    set: the users a node holds (for reaping and `gchat-admin nodes`)

How "online on at most one node" stays true across nodes: a login claims
online:{uid} with one Lua script, atomic in Redis, which refuses when the
holder's heartbeat key exists. A claim held by a node whose heartbeat expired
counts as free, so the users of a node killed with -9 can log in elsewhere at
most node_ttl after its last heartbeat, whether or not anyone swept yet.
Every live node also sweeps: it reaps the nodes whose heartbeat expired
(deletes their claims, mirrors their users offline in MySQL).

The heartbeat is renewed by a native thread on its own blocking socket, so a
busy event loop does not make a live node look dead. A watchdog fed by a
greenlet stops the heartbeat if the loop is wedged for long, so a node that
can no longer serve anyone is reaped too.

When Redis comes back empty (restarted without persistence, flushed) or the
node was reaped while it could not heartbeat, the heartbeat finds its key
gone; the node then re-registers and re-claims its connected users.
"""

from __future__ import annotations

import _socket
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import redis
from gevent import monkey
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from gchat import store
from gchat.config import Settings
from gchat.errors import Unavailable
from gchat.store import Database

log = logging.getLogger(__name__)

PREFIX = "gchat:"
NODES = PREFIX + "nodes"
# a loop that has not run for this long cannot serve its users: stop
# heartbeating so that the cluster frees them (at least 3 TTLs, so a node that
# is merely busy is never reaped)
WEDGED_MIN = 30.0


def node_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


def online_key(user_id: int) -> str:
    return f"{PREFIX}online:{user_id}"


def users_key(node: str) -> str:
    return f"{PREFIX}users:{node}"


# KEYS[1] node:{node}, KEYS[2] nodes; ARGV token, ttl ms, node.
# Returns 1 if the key still held our token, 0 if it was gone (Redis lost
# it, or we were reaped): then the node must re-claim its users.
HEARTBEAT = """
local had = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if had == ARGV[1] then return 1 end
return 0
"""

# KEYS[1] online:{uid}; ARGV prefix, node, uid. The caller has checked that
# it does not hold the user itself, so a claim by its own node is stale.
CLAIM = """
local p, node, uid = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= node then
  if redis.call('EXISTS', p .. 'node:' .. cur) == 1 then return 0 end
  redis.call('SREM', p .. 'users:' .. cur, uid)
end
redis.call('SET', KEYS[1], node)
redis.call('SADD', p .. 'users:' .. node, uid)
return 1
"""

# ARGV prefix, node, uid...: drop the node's claims on those users (a claim
# another node took meanwhile is left alone). Returns the uids released.
RELEASE = """
local p, node = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local k = p .. 'online:' .. ARGV[i]
  if redis.call('GET', k) == node then
    redis.call('DEL', k)
    out[#out + 1] = ARGV[i]
  end
  redis.call('SREM', p .. 'users:' .. node, ARGV[i])
end
return out
"""

# ARGV prefix, uid...: the live node holding each user, '' for none.
OWNERS = """
local p = ARGV[1]
local out, alive = {}, {}
for i = 2, #ARGV do
  local o = redis.call('GET', p .. 'online:' .. ARGV[i])
  if o then
    if alive[o] == nil then alive[o] = redis.call('EXISTS', p .. 'node:' .. o) == 1 end
    if not alive[o] then o = false end
  end
  out[#out + 1] = o or ''
end
return out
"""

# ARGV prefix, node, force. Reaps a node whose heartbeat expired (or any
# node, with force='1'): its claims go, it leaves the registry. Returns the
# users freed, or nil when the node is alive. Atomic, so when several nodes
# sweep at once exactly one of them gets the list.
REAP = """
local p, node = ARGV[1], ARGV[2]
if ARGV[3] ~= '1' and redis.call('EXISTS', p .. 'node:' .. node) == 1 then return false end
local freed = {}
for _, uid in ipairs(redis.call('SMEMBERS', p .. 'users:' .. node)) do
  local k = p .. 'online:' .. uid
  if redis.call('GET', k) == node then
    redis.call('DEL', k)
    freed[#freed + 1] = uid
  end
end
redis.call('DEL', p .. 'users:' .. node)
redis.call('SREM', p .. 'nodes', node)
return freed
"""


def connect(url: str, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: one retry (a pooled connection that a Redis
    restart closed is replaced on the spot), then the error."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


def reap(client: redis.Redis, node: str, force: bool = False) -> list[int] | None:
    """Free a node's users; None (nothing done) when it is alive and not forced."""
    freed = client.eval(REAP, 0, PREFIX, node, "1" if force else "0")
    return None if freed is None else [int(u) for u in freed]


def live_nodes(client: redis.Redis) -> dict[str, bool]:
    """Every registered node, with whether its heartbeat is alive."""
    nodes = sorted(n.decode() for n in client.smembers(NODES))
    pipe = client.pipeline(transaction=False)
    for n in nodes:
        pipe.exists(node_key(n))
    return {n: bool(alive) for n, alive in zip(nodes, pipe.execute(), strict=True)}


class RedisPresence:
    def __init__(self, redis_url: str, node: str, db: Database, settings: Settings) -> None:
        self.node = node
        self.db = db
        self.url = redis_url
        self.interval = settings.heartbeat_interval
        self.ttl_ms = max(1, int(settings.node_ttl * 1000))
        self.wedged = max(WEDGED_MIN, 3 * settings.node_ttl)
        self.redis = connect(redis_url)
        self._scripts: dict[str, Any] = {}
        # called with a user this node held but another node claimed while
        # this one was cut off: its connection here must go
        self.on_lost: Callable[[int], None] | None = None
        self._local: set[int] = set()  # users held here
        self._pending: set[int] = set()  # claims in flight
        self._token = f"{os.getpid()}:{time.time():.6f}"
        self._resync = True
        self._redis_ok = True
        self._tick = time.monotonic()
        self._greenlets: list[gevent.Greenlet] = []
        self._heartbeat: _HeartbeatThread | None = None

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        # register before the node says ready: a claim made by a node without
        # a heartbeat key would count as free to every other node
        try:
            self._beat_once()
            self._sync()
        except redis.RedisError as e:
            self._unavailable(e)
        self._heartbeat = _HeartbeatThread(self)
        self._heartbeat.start()
        self._greenlets = [gevent.spawn(self._feed_watchdog), gevent.spawn(self._maintain)]

    def stop(self) -> None:
        """Release this node's users (whatever the connections did not
        release on their way out), and only them; then leave the cluster."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        gevent.killall(self._greenlets)
        self._local.clear()
        try:
            freed = reap(self.redis, self.node, force=True) or []
            self.redis.delete(node_key(self.node))
        except redis.RedisError as e:
            log.warning("could not leave the cluster cleanly (%s): other nodes reap this one in %.0f s",
                        e, self.ttl_ms / 1000)
            freed = []
        self._mirror(freed, "offline")
        self.redis.close()

    # --- Presence --------------------------------------------------------------

    def claim(self, user_id: int) -> bool:
        if user_id in self._local or user_id in self._pending:
            return False
        self._pending.add(user_id)
        try:
            won = self._call(CLAIM, 1, online_key(user_id), PREFIX, self.node, user_id)
        finally:
            self._pending.discard(user_id)
        if won:
            self._local.add(user_id)
        return bool(won)

    def release(self, user_id: int) -> None:
        self._local.discard(user_id)
        try:
            self._call(RELEASE, 0, PREFIX, self.node, user_id)
        except Unavailable:
            self._resync = True  # the claim is dropped at the next sync
            raise

    def owner(self, user_id: int) -> str | None:
        return self.owners([user_id]).get(user_id)

    def owners(self, user_ids: Iterable[int]) -> dict[int, str]:
        ids = set(user_ids)
        found = dict.fromkeys(ids & self._local, self.node)
        rest = sorted(ids - self._local)
        if rest:  # one round trip for all of them (a group's members)
            owners = self._call(OWNERS, 0, PREFIX, *rest)
            found.update((uid, o.decode()) for uid, o in zip(rest, owners, strict=True) if o)
        return found

    def online(self, user_ids: Iterable[int]) -> set[int]:
        return set(self.owners(user_ids))

    def _call(self, script: str, nkeys: int, *args: Any) -> Any:
        """Redis errors end here, as errno 11."""
        try:
            # EVALSHA: the script text crosses the wire once, not on every call
            if script not in self._scripts:
                self._scripts[script] = self.redis.register_script(script)
            return self._scripts[script](keys=list(args[:nkeys]), args=list(args[nkeys:]))
        except redis.RedisError as e:
            self._unavailable(e)
            raise Unavailable("presence store unavailable") from e

    # --- liveness ------------------------------------------------------------

    def _feed_watchdog(self) -> None:
        while True:
            now = time.monotonic()
            if self._heartbeat is not None and self._heartbeat.stalled:
                log.error("event loop stalled for %.0f s: the heartbeat paused, this node's users were "
                          "freed for the cluster", now - self._tick)
            self._tick = now
            gevent.sleep(self.interval)

    def _beat_once(self) -> None:
        kept = self.redis.eval(HEARTBEAT, 2, node_key(self.node), NODES, self._token, self.ttl_ms, self.node)
        if not kept:
            self._resync = True

    def _maintain(self) -> None:
        """Every interval: re-claim after a loss, then reap dead nodes."""
        while True:
            gevent.sleep(self.interval)
            if not self._redis_ok:
                # back from an outage: Redis may have come back empty, and
                # the heartbeat thread may not have noticed yet
                self._resync = True
            try:
                if self._resync:
                    self._sync()
                self._sweep()
            except redis.RedisError as e:
                self._unavailable(e)
                continue
            except Unavailable:
                continue
            except Exception:
                log.exception("presence maintenance failed")
                continue
            else:
                if not self._redis_ok:
                    self._redis_ok = True
                    log.info("presence: Redis reachable again")

    def _unavailable(self, e: Exception) -> None:
        if self._redis_ok:
            self._redis_ok = False
            log.warning("presence: Redis unavailable (%s: %s); serving local users only", e.__class__.__name__, e)

    def _sync(self) -> None:
        """Make Redis agree with the connections here: claims of users that
        left go, users held here are claimed again (after a Redis restart,
        or after this node was reaped while it could not heartbeat)."""
        self._resync = False
        try:
            held = {int(u) for u in self.redis.smembers(users_key(self.node))}
            stale = held - self._local - self._pending
            freed = []
            if stale:
                freed = [int(u) for u in self.redis.eval(RELEASE, 0, PREFIX, self.node, *sorted(stale))]
            reclaimed: list[int] = []
            lost: list[int] = []
            for uid in sorted(self._local - held):
                won = self.redis.eval(CLAIM, 1, online_key(uid), PREFIX, self.node, uid)
                (reclaimed if won else lost).append(uid)
        except redis.RedisError:
            self._resync = True
            raise
        # a claim won meanwhile by a login elsewhere stays there; users that
        # logged out meanwhile are dropped, not re-claimed
        for uid in lost:
            if uid in self._local:
                self._local.discard(uid)
                log.warning("user %d logged in on another node while this one was cut off; closing here", uid)
                if self.on_lost is not None:
                    self.on_lost(uid)
        if freed:
            log.info("released %d stale claim(s) of this node", len(freed))
            self._mirror(freed, "offline")
        if reclaimed:
            log.info("re-claimed %d user(s) held here", len(reclaimed))
            self._mirror([u for u in reclaimed if u in self._local], "online")

    def _sweep(self) -> None:
        for node, alive in live_nodes(self.redis).items():
            if alive or node == self.node:
                continue
            freed = reap(self.redis, node)
            if freed is None:
                continue
            log.info("node %s is dead (no heartbeat for %.0f s): %d user(s) offline",
                     node, self.ttl_ms / 1000, len(freed))
            if freed:
                # those who already logged in again elsewhere stay online
                back = self.online(freed)
                self._mirror([u for u in freed if u not in back], "offline")

    def _mirror(self, user_ids: list[int], state: str) -> None:
        """user.state follows presence, for operators (best effort)."""
        if not user_ids:
            return
        try:
            with self.db.transaction() as s:
                store.set_state(s, user_ids, state)
        except Unavailable:
            log.warning("could not mirror %d user(s) %s in the database", len(user_ids), state)


class _HeartbeatThread:
    """Renews the heartbeat from a native thread, on an unpatched socket,
    speaking just enough RESP for one EVAL: the event loop's load cannot
    delay it (a blocked C call releases the GIL), only a wedged loop stops
    it (see WEDGED_MIN)."""

    def __init__(self, presence: RedisPresence) -> None:
        self.p = presence
        self.params = parse_url(presence.url)
        allocate_lock = monkey.get_original("_thread", "allocate_lock")
        self._lock = allocate_lock()  # held until stop(): the thread's sleep
        self._lock.acquire()
        self._done = allocate_lock()  # held while the thread runs
        self._sock: Any = None
        self._buf = b""
        self.stalled = False

    def start(self) -> None:
        self._done.acquire()
        monkey.get_original("_thread", "start_new_thread")(self._run, ())

    def stop(self) -> None:
        """Stop, and wait for a heartbeat in flight: one landing after the
        node left would make it look alive for another TTL."""
        self._lock.release()
        if self._done.acquire(True, max(1.0, self.p.interval) + 1):
            self._done.release()

    def _run(self) -> None:
        p = self.p
        # wakes early only when stop() releases the lock
        while not self._lock.acquire(True, p.interval):
            # no logging from here: logging's locks are gevent's after
            # patching, not for a foreign thread; the loop reports `stalled`
            if time.monotonic() - p._tick > p.wedged:
                self.stalled = True
                continue
            self.stalled = False
            try:
                kept = self._eval(HEARTBEAT, node_key(p.node), NODES, p._token, str(p.ttl_ms), p.node)
                if kept != 1:
                    p._resync = True
            except Exception:  # noqa: BLE001 - the heartbeat must outlive any one failure; it retries
                self._close()
        self._close()
        self._done.release()

    def _eval(self, script: str, *args: str) -> Any:
        if self._sock is None:
            self._connect()
        return self._command("EVAL", script, "2", *args)

    def _connect(self) -> None:
        host, port = self.params.get("host", "localhost"), self.params.get("port", 6379)
        family, kind, proto, _, addr = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)[0]
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(max(1.0, self.p.interval))
        try:
            sock.connect(addr)
        except OSError:
            sock.close()
            raise
        self._sock, self._buf = sock, b""
        if self.params.get("password"):
            user = self.params.get("username")
            self._command("AUTH", *([user] if user else []), self.params["password"])
        if self.params.get("db"):
            self._command("SELECT", str(self.params["db"]))

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None

    def _command(self, *args: str) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            data = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(out))
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise ValueError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n + 2)[:-2]
        return rest

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._fill()
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _fill(self) -> None:
        data = self._sock.recv(4096)
        if not data:
            raise OSError("Redis closed the connection")
        self._buf += data
