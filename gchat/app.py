"""Wiring: build a node's parts from the Settings, in one place."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from gevent import get_hub

from gchat import friends, schema
from gchat.audit import FailedLogins
from gchat.cache import Cache
from gchat.cluster.bus import Bus, LocalBus
from gchat.cluster.mirror import StateMirror
from gchat.cluster.presence import LocalPresence, Presence
from gchat.config import Settings
from gchat.control import AdminSocket, Control
from gchat.metrics import Counts, Health, MetricsServer, NodeCollector, registry_for
from gchat.passwords import Passwords
from gchat.registry import Registry
from gchat.router import Router
from gchat.server import Listener
from gchat.service import Services
from gchat.sessions import Sessions
from gchat.store import Database
from gchat.throttle import LoginThrottle
from gchat.web.listener import WebListener

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
    control: Control
    web: WebListener | None = None
    metrics: MetricsServer | None = None
    admin_socket: AdminSocket | None = None

    def start(self) -> None:
        self.presence.start(self._lost, self._freed)
        router = self.services.router
        self.bus.start(router.on_bus_delivery, self.services.invalidate_group, self._forget_cache,
                       self.control.on_bus, on_notice=router.on_bus_notice, on_blocks=self.services.invalidate_blocks)
        if self.admin_socket is not None:
            self.admin_socket.start()
        if self.web is not None:  # before the TCP listener's "ready" line, which tests wait for
            self.web.start()
        self.listener.start()
        if self.metrics is not None:
            try:
                self.metrics.start()
            except OSError as e:
                # the chat is what users need; a missing endpoint shows at
                # the first scrape, and this line says why
                log.warning("metrics: cannot listen on %s (%s); serving chat without /metrics",
                            self.settings.metrics_bind, e)
                self.metrics = None
            else:
                host, port = self.metrics.address
                log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", host, port)

    def stop(self) -> None:
        log.info("stopping: %d connection(s)", len(self.listener.connections))
        if self.metrics is not None:
            self.metrics.stop()
        if self.admin_socket is not None:
            self.admin_socket.stop()
        if self.web is not None:
            self.web.close()
        self.listener.stop()  # every connection, TCP and WebSocket
        if self.web is not None:
            self.web.stop()
        self.services.failed_logins.flush()  # the summary of a storm cut short by the stop
        self.bus.stop()
        self.presence.stop()
        self.services.writer.close()
        self.db.dispose()
        log.info("stopped")

    # The cluster's repairs that reach into this node.

    def _lost(self, user_id: int) -> None:
        """Another node claimed the user while this one was cut off from
        Redis: online on one node only, so its connection here goes."""
        peer = self.services.registry.get(user_id)
        if peer is not None:
            peer.close("logged in on another node")

    def _freed(self, user_ids: list[int]) -> None:
        """This node reaped a dead node's users: their friends are told."""
        friends.announce(self.services, user_ids, "offline")

    def _forget_cache(self) -> None:
        """The bus was down or Redis cut its subscriber: invalidations may
        have been missed, so every cached group membership goes; deliveries
        may have been dropped, so every local session is checked against the
        conversation log (gchat/sessions.py)."""
        self.services.counts.bus_reconnects += 1
        self.services.cache.forget_groups()
        self.services.sessions.repair_all()


def build(settings: Settings) -> App:
    db = Database(
        settings.sqlalchemy_url,
        pool_size=settings.pool_size,
        overflow=settings.pool_overflow,
        timeout=settings.db_timeout,
        tls=settings.database_tls,
    )
    schema.prepare(db)
    mirror = StateMirror(db)
    presence: Presence
    bus: Bus
    reclaimed: Any = None  # RedisPresence: the hook for users re-claimed after a reap
    if settings.redis_url:
        from gchat.cluster.redis_bus import RedisBus
        from gchat.cluster.redis_presence import RedisPresence

        presence = reclaimed = RedisPresence(settings.node, mirror, settings)
        bus = RedisBus(settings.node, settings)
    else:
        presence, bus = LocalPresence(settings.node, mirror), LocalBus()
    registry = Registry()
    counts = Counts()
    services = Services(
        db=db,
        registry=registry,
        presence=presence,
        router=Router(registry, bus, db, Sessions(db, flush_interval=settings.cursor_flush,
                                                       sweep_interval=settings.repair_sweep), counts),
        passwords=Passwords(settings.hash_time_cost, settings.hash_memory_kib, offload=_offload),
        limits=settings.limits,
        throttle=LoginThrottle(
            free=settings.login_free,
            free_per_address=settings.login_free_per_address,
            free_per_account=settings.login_free_per_account,
            backoff=settings.login_backoff,
            backoff_max=settings.login_backoff_max,
            forget=settings.login_forget,
            clock=time.monotonic,
        ),
        resume_ttl=settings.resume_ttl,
        cache=Cache(settings.cache_groups),
        friend_requests=settings.friend_requests,
        log_linger=settings.log_linger,
        log_gather=settings.log_gather,
        group_notices_live=settings.group_notices_live,
        sync_max=settings.sync_max,
        sync_bytes=settings.sync_bytes,
        counts=counts,
        failed_logins=FailedLogins(settings.login_failures_logged, settings.login_failures_window),
    )
    if reclaimed is not None:
        # a node reaped while it could not heartbeat: deliveries to its users
        # were counted missed meanwhile
        reclaimed.on_reclaimed = services.sessions.repair_all
    listener = Listener(settings, services)
    web = WebListener(listener) if settings.web_address else None
    metrics = None
    if settings.metrics_address is not None:
        collector = NodeCollector(counts, lambda: len(listener.connections), lambda: len(registry), db)
        metrics = MetricsServer(*settings.metrics_address, registry_for(collector),
                                Health(db, settings.redis_url))
    # gchat-admin's requests: over the bus in a cluster, on the admin socket when alone
    control = Control(settings.node, registry, lambda ids: services.cache.forget_users(ids))
    admin_socket = AdminSocket(settings.admin_socket, control.handle) if settings.admin_socket else None
    return App(settings, db, presence, bus, services, listener, control, web, metrics, admin_socket)
