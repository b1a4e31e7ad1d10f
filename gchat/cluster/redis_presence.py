"""Cluster-wide presence in Redis, with node liveness that needs no help
from a node that died (key layout and scripts: gchat/cluster/redis_keys.py).

How "online on at most one node" stays true across nodes: a login claims
online:{uid} with one Lua script, atomic in Redis, which refuses when the
holder's heartbeat key exists (gchat/cluster/heartbeat.py). A claim held by a
node whose heartbeat expired counts as free, so the users of a node killed
with -9 can log in elsewhere at most node_ttl after its last heartbeat,
whether or not anyone swept yet. Every live node also sweeps
(gchat/cluster/reaper.py): it reaps the nodes whose heartbeat expired and
mirrors their users offline.

When Redis comes back empty (restarted without persistence, flushed) or the
node was reaped while it could not heartbeat, the heartbeat finds its key
gone; the node then re-registers and re-claims its connected users.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import redis
from gevent.event import AsyncResult
from redis.commands.core import Script

from gchat.batch import Batcher
from gchat.cluster.heartbeat import Heartbeat
from gchat.cluster.mirror import StateMirror
from gchat.cluster.presence import ONLINE, FreedHandler, LostHandler
from gchat.cluster.reaper import Reaper
from gchat.cluster.redis_client import connect, parse
from gchat.cluster.redis_keys import Scripts
from gchat.config import Settings
from gchat.errors import Unavailable

log = logging.getLogger(__name__)


class RedisPresence:
    def __init__(self, node: str, mirror: StateMirror, settings: Settings) -> None:
        self.node = node
        self._mirror = mirror
        self.interval = settings.heartbeat_interval
        self.ttl = settings.node_ttl
        self.redis = connect(settings.redis_url, settings.redis_timeout)
        self.keys = parse(settings.redis_url).layout
        self._scripts = Scripts(self.redis)
        self._reaper = Reaper(self.redis, self.keys)
        self._heartbeat = Heartbeat(settings.redis_url, node, interval=self.interval, ttl=self.ttl,
                                    timeout=settings.redis_timeout, on_gone=self._key_gone)
        self._on_lost: LostHandler | None = None
        self._on_freed: FreedHandler | None = None
        # called with the users re-claimed after this node was reaped (it
        # could not heartbeat): deliveries to them were counted missed
        # meanwhile, so they are checked against the conversation log
        self.on_reclaimed: Callable[[list[int]], None] | None = None
        self._local: set[int] = set()  # users held here
        self._pending: set[int] = set()  # claims in flight
        self._releases: Batcher[int, bool] = Batcher(self._release_many)
        self._releasing: dict[int, AsyncResult[bool]] = {}  # releases queued or in flight
        self._resync = True
        self._redis_ok = True
        self._greenlets: list[gevent.Greenlet[[], None]] = []

    # --- lifecycle -----------------------------------------------------------

    def start(self, on_lost: LostHandler, on_freed: FreedHandler | None = None) -> None:
        self._on_lost = on_lost
        self._on_freed = on_freed
        # register before the node says ready: a claim made by a node without
        # a heartbeat key would count as free to every other node
        try:
            self._heartbeat.beat()
            self._sync()
        except redis.RedisError as e:
            self._unavailable(e)
        self._heartbeat.start()
        self._greenlets = [gevent.spawn(self._feed_watchdog), gevent.spawn(self._maintain)]

    def stop(self) -> None:
        """Release this node's users (whatever the connections did not
        release on their way out), and only them; then leave the cluster."""
        self._heartbeat.stop()
        gevent.killall(self._greenlets)
        self._local.clear()
        try:
            freed = self._reaper.reap(self.node, force=True) or []
            self.redis.delete(self.keys.node_key(self.node))
        except redis.RedisError as e:
            log.warning("could not leave the cluster cleanly (%s): other nodes reap this one in %.0f s",
                        e, self.ttl)
            freed = []
        self._mirror.offline_many(freed)
        self.redis.close()

    # --- Presence --------------------------------------------------------------

    def claim(self, user_id: int) -> bool:
        if user_id in self._local or user_id in self._pending:
            return False
        self._pending.add(user_id)
        try:
            # a release of this user still queued (it left and came back at
            # once) goes first: run after the claim, it would drop it
            leaving = self._releasing.get(user_id)
            if leaving is not None:
                leaving.wait()
            won = self._call(self._scripts.claim, self.node, user_id)
        finally:
            self._pending.discard(user_id)
        if won:
            self._local.add(user_id)
            self._mirror.online(user_id)
        return bool(won)

    def release(self, user_id: int) -> None:
        self._local.discard(user_id)
        result = self._releases.submit(user_id)
        self._releasing[user_id] = result
        try:
            released = self._batched_result(result)
        except Unavailable:
            self._resync = True  # the claim is dropped at the next sync
            self._mirror.offline(user_id)
            raise
        finally:
            if self._releasing.get(user_id) is result:
                del self._releasing[user_id]
        # False: another node took the user while this one was cut off from
        # Redis, and the state column is that node's to mirror now
        if released:
            self._mirror.offline(user_id)

    # A crowd leaves a node all at once: the releases that come while a
    # round trip is out share the next one (one RELEASE script for many
    # users), instead of a pooled connection and a round trip each. With
    # 16,700 connections closing at once on a node, one round trip each
    # waited past redis_timeout for a pooled connection (docs/benchmarks.md,
    # 50,000 connections across three nodes).

    def _release_many(self, user_ids: list[int]) -> list[bool]:
        freed = {int(u) for u in self._scripts.release(keys=self.keys.anchor,
                                                        args=[self.keys.prefix, self.node, *user_ids])}
        return [uid in freed for uid in user_ids]

    def _batched_result(self, result: AsyncResult[bool]) -> bool:
        """Redis errors end here, as Unavailable."""
        try:
            return bool(result.get())
        except redis.RedisError as e:
            self._unavailable(e)
            raise Unavailable("presence store unavailable") from e

    def owner(self, user_id: int) -> str | None:
        return self.owners([user_id]).get(user_id)

    def owners(self, user_ids: Iterable[int]) -> dict[int, str]:
        ids = set(user_ids)
        found = dict.fromkeys(ids & self._local, self.node)
        rest = sorted(ids - self._local)
        if rest:  # one round trip for all of them (a group's members)
            owners = self._call(self._scripts.owners, *rest)
            found.update((uid, o.decode()) for uid, o in zip(rest, owners, strict=True) if o)
        return found

    def online(self, user_ids: Iterable[int]) -> set[int]:
        return set(self.owners(user_ids))

    def why_online(self, user_id: int) -> str:
        """After a node dies its claims hold until its heartbeat expires: a
        login meanwhile is told so, and when to retry, instead of only
        "id is online". The heartbeat's age is this node's TTL minus what is
        left of it (the nodes of a cluster share --node-ttl)."""
        try:
            raw = self.redis.get(self.keys.online_key(user_id))
            holder = raw.decode() if isinstance(raw, bytes) else raw
            if holder is None or holder == self.node:
                return ONLINE
            left = int(self.redis.pttl(self.keys.node_key(holder))) / 1000
        except redis.RedisError:
            return ONLINE
        silent = self.ttl - left
        # renewed every interval: two missed renewals are not a busy node
        if left <= 0 or silent < 2 * self.interval:
            return ONLINE
        return (f"{ONLINE} on a node that stopped answering {silent:.0f} s ago; if it is dead, the id is free "
                f"in {left:.0f} s: try again then")

    def _call(self, script: Script, *args: str | int) -> Any:
        """Runs a script of redis_keys with this deployment's key prefix
        (and, in a cluster, the key that says where). Redis errors end here,
        as Unavailable."""
        try:
            return script(keys=self.keys.anchor, args=[self.keys.prefix, *args])
        except redis.RedisError as e:
            self._unavailable(e)
            raise Unavailable("presence store unavailable") from e

    # --- liveness ------------------------------------------------------------

    def _key_gone(self) -> None:
        # called from the heartbeat's thread: only a flag, read by _maintain
        self._resync = True

    def _feed_watchdog(self) -> None:
        while True:
            paused = self._heartbeat.feed()
            if paused:
                log.error("event loop stalled for %.0f s: the heartbeat paused, this node's users were "
                          "freed for the cluster", paused)
            gevent.sleep(self.interval)

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
            held = {int(u) for u in self.redis.smembers(self.keys.users_key(self.node))}
            stale = held - self._local - self._pending
            freed: list[int] = []
            if stale:
                freed = [int(u) for u in self._scripts.release(keys=self.keys.anchor,
                                                               args=[self.keys.prefix, self.node, *sorted(stale)])]
            reclaimed: list[int] = []
            lost: list[int] = []
            for uid in sorted(self._local - held):
                won = self._scripts.claim(keys=self.keys.anchor, args=[self.keys.prefix, self.node, uid])
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
                if self._on_lost is not None:
                    self._on_lost(uid)
        if freed:
            log.info("released %d stale claim(s) of this node", len(freed))
            self._mirror.offline_many(freed)
        if reclaimed:
            log.info("re-claimed %d user(s) held here", len(reclaimed))
            self._mirror.online_many([u for u in reclaimed if u in self._local])
            if self.on_reclaimed is not None:
                self.on_reclaimed(reclaimed)

    def _sweep(self) -> None:
        for node, freed in self._reaper.sweep(self.node).items():
            log.info("node %s is dead (no heartbeat for %.0f s): %d user(s) offline", node, self.ttl, len(freed))
            if freed:
                # those who already logged in again elsewhere stay online
                back = self.online(freed)
                gone = [u for u in freed if u not in back]
                self._mirror.offline_many(gone)
                if gone and self._on_freed is not None:
                    self._on_freed(gone)
