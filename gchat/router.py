"""Where a message goes: a local outbox, another node through the bus, or
offline storage. The rule that nothing accepted is lost lives here: whatever
cannot be handed to a live connection is stored, on this node or on the node
the bus brought it to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gchat import store
from gchat.cluster.bus import Bus
from gchat.errors import Unavailable
from gchat.registry import Registry
from gchat.store import Database

log = logging.getLogger(__name__)


class Router:
    def __init__(self, registry: Registry, bus: Bus, db: Database) -> None:
        self.registry = registry
        self.bus = bus
        self.db = db

    def deliver(self, user_id: int, body: bytes) -> str:
        """Deliver to one user: "online" when it went to a live connection
        (here or on another node), "offline" when it was stored."""
        return "online" if self.deliver_many([user_id], body) else "offline"

    def deliver_many(self, user_ids: Iterable[int], body: bytes) -> int:
        """Deliver the same body to each user; returns how many were reached
        live. Raises Unavailable only if some of it could be
        neither delivered nor stored."""
        elsewhere: list[int] = []
        reached = 0
        for uid in user_ids:
            peer = self.registry.get(uid)
            if peer is not None:
                peer.push(body)
                reached += 1
            else:
                elsewhere.append(uid)
        if elsewhere:
            try:
                offline = self.bus.route(elsewhere, body)
            except Unavailable as e:
                # the bus cannot say who is online where: stored is never
                # lost, only late
                log.warning("bus unavailable (%s); storing %d message(s)", e, len(elsewhere))
                offline = elsewhere
            reached += len(elsewhere) - len(offline)
            if offline:
                self.store_offline(offline, body)
        return reached

    def invalidate_group(self, group_id: int) -> None:
        """Tell the other nodes that a group's membership changed (after the
        commit, so a node that reloads sees it). Best effort: a node that
        missed it drops its whole cache when its bus comes back."""
        try:
            self.bus.invalidate_group(group_id)
        except Unavailable:
            log.warning("could not tell other nodes that group %d changed", group_id)

    def store_offline(self, user_ids: list[int], body: bytes) -> None:
        text = body.decode()
        with self.db.transaction() as s:
            store.store_offline(s, ((uid, text) for uid in user_ids))

    def store_offline_batch(self, items: list[tuple[int, bytes]]) -> None:
        """Store (user id, body) pairs in one unit of work, in order: what a
        closing connection could not write (its order is kept at next login)."""
        with self.db.transaction() as s:
            store.store_offline(s, ((uid, body.decode()) for uid, body in items))

    def on_bus_delivery(self, user_ids: list[int], body: bytes) -> None:
        """A delivery another node routed here. The user may have left since
        the routing decision: then it is stored, never dropped."""
        gone = []
        for uid in user_ids:
            peer = self.registry.get(uid)
            if peer is not None:
                peer.push(body)
            else:
                gone.append(uid)
        if gone:
            try:
                self.store_offline(gone, body)
            except Unavailable:
                log.error("could not store %d message(s) for %s: database unavailable", len(gone), gone)

