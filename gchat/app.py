"""Wiring: build a node's parts from the Settings, in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gevent import get_hub

from gchat import schema, store
from gchat.bus import Bus, LocalBus
from gchat.cache import Cache
from gchat.config import Settings
from gchat.passwords import Passwords
from gchat.presence import LocalPresence, Presence
from gchat.registry import Registry
from gchat.router import Router
from gchat.server import Listener
from gchat.service import Services
from gchat.store import Database

log = logging.getLogger(__name__)


def _offload(fn: Any, *args: Any) -> Any:
    """Run CPU-heavy C code (password hashing) on gevent's thread pool, so
    the event loop keeps serving chat meanwhile."""
    return get_hub().threadpool.apply(fn, args)


@dataclass
class App:
    settings: Settings
    db: Database
    presence: Presence
    bus: Bus
    services: Services
    listener: Listener

    def start(self) -> None:
        self.presence.start()
        self.bus.start(self.services.router.on_bus_delivery, self.services.invalidate_group)
        self.listener.start()

    def stop(self) -> None:
        log.info("stopping: %d connection(s)", len(self.listener.connections))
        self.listener.stop()
        self.bus.stop()
        self.presence.stop()
        self.db.dispose()
        log.info("stopped")


def build(settings: Settings) -> App:
    db = Database(
        settings.sqlalchemy_url,
        pool_size=settings.pool_size,
        overflow=settings.pool_overflow,
        timeout=settings.db_timeout,
    )
    schema.prepare(db)
    node_id = settings.node
    presence: Presence
    bus: Bus
    if settings.redis_url:
        from gchat.redisbus import RedisBus
        from gchat.redispresence import RedisPresence

        presence = RedisPresence(settings.redis_url, node_id, db, settings)
        bus = RedisBus(settings.redis_url, node_id)
    else:
        presence, bus = LocalPresence(node_id), LocalBus(node_id)
        # alone on its store: whoever the database still calls online was
        # left there by this node's previous life
        with db.transaction() as s:
            n = store.reset_states(s)
        if n:
            log.info("reset %d user(s) left online by a previous run", n)
    registry = Registry()
    services = Services(
        db=db,
        registry=registry,
        presence=presence,
        router=Router(registry, bus, db),
        passwords=Passwords(settings.hash_time_cost, settings.hash_memory_kib, offload=_offload),
        limits=settings.limits,
    )
    if settings.redis_url:
        _wire_cluster(presence, bus, registry, services)
    return App(settings, db, presence, bus, services, Listener(settings, services))


def _wire_cluster(presence: Any, bus: Any, registry: Registry, services: Services) -> None:
    """The cluster's repairs that reach into this node: a user another node
    claimed while this one was cut off from Redis loses its connection here
    (online on one node only), and after the bus was down every cached group
    membership is dropped (invalidations may have been missed)."""

    def lost(user_id: int) -> None:
        peer = registry.get(user_id)
        if peer is not None:
            peer.close("logged in on another node")

    def forget_cache() -> None:
        services.cache = Cache()

    presence.on_lost = lost
    bus.on_reconnect = forget_cache
