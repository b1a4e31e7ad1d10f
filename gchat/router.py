"""Where a logged message goes: a local session, or another node through
the bus. The log is the record (gchat/writer.py commits a message before it
gets here), so nothing here has to be reliable: a delivery the bus drops, or
that finds its user gone, is found missing by its sequence number and
brought from the log (gchat/sessions.py), or comes at the next login.

On the bus a delivery is `conv,seq ` followed by the delivered JSON text, so
the receiving node sorts it against what its sessions have without parsing
the JSON.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import gevent
from gevent.event import Event

from gchat import store
from gchat.cluster.bus import Bus
from gchat.convlog import is_notice
from gchat.errors import DomainError, Unavailable
from gchat.metrics import Counts
from gchat.registry import Registry
from gchat.sessions import NOT_STORED, Sessions
from gchat.store import Database
from gchat.writer import Written

log = logging.getLogger(__name__)

# the longest a login waits for messages being stored for its user: a store
# gives up within the database timeouts, far sooner
STORE_WAIT = 30.0
# offers of one delivery between two turns of the event loop: a message to a
# group of 50,000 is some 16,700 offers (and pushes) on each of three nodes,
# and a broadcast's loop as long held the loop past the heartbeat's watchdog
# on a loaded machine (gchat/control.py BROADCAST_SLICE, docs/benchmarks.md)
OFFER_SLICE = 256


class Router:
    def __init__(self, registry: Registry, bus: Bus, db: Database, sessions: Sessions | None = None,
                 counts: Counts | None = None) -> None:
        self.registry = registry
        self.bus = bus
        self.db = db
        # user id -> messages to it that were found offline here and are not
        # stored yet; and the logins waiting for that count to reach zero
        self._storing: dict[int, int] = {}
        self._settled: dict[int, Event] = {}
        self.sessions = sessions if sessions is not None else Sessions(db)
        self.counts = counts if counts is not None else Counts()
        # told of each logged message another node routed here (conv, seq,
        # notice): the log's writer learns where the conversation is
        # (LogWriter.heard; set by service.Services)
        self.heard: Callable[[int, int, bool], None] | None = None

    @contextlib.contextmanager
    def _deciding(self, user_ids: list[int]) -> Iterator[None]:
        """Counts the users a message was found offline for, from the moment
        the registry said so (no switch in between) until it is stored."""
        for uid in user_ids:
            self._storing[uid] = self._storing.get(uid, 0) + 1
        try:
            yield
        finally:
            for uid in user_ids:
                left = self._storing[uid] - 1
                if left:
                    self._storing[uid] = left
                else:
                    del self._storing[uid]
                    settled = self._settled.pop(uid, None)
                    if settled is not None:
                        settled.set()

    def wait_stored(self, user_id: int, timeout: float = STORE_WAIT) -> None:
        """Wait until every message found offline for user_id before now is
        stored (or failed to be). A login calls this once its user is bound
        here: no later message is stored for it, every earlier one is then
        in the store, so taking the stored messages misses none. Without it,
        a message found offline just before the bind and committed just
        after the login took the stored ones waited for the next login
        (issue 11). Messages stored by other nodes are not counted here."""
        if user_id in self._storing:
            self._settled.setdefault(user_id, Event()).wait(timeout)

    def deliver_logged(self, batch: Sequence[Written], told: bool = True) -> list[int]:
        """Tell the recipients of a committed batch: local sessions here, the
        others' nodes through the bus, all of the batch in one round trip to
        Redis (a round trip, not the bytes, is what a message across nodes
        cost: docs/benchmarks.md). Returns, per message, how many were
        reached live: exact when `told` (an ACK says whether a one-to-one's
        recipient was reached, so the route's reply is waited for); else a
        message routed to another node counts as reached."""
        own, offer = self.sessions.own, self.sessions.offer
        reached: list[int] = []
        remote: list[tuple[int, list[int]]] = []  # (index in batch, users not here)
        for i, (conv, seq, _, sender, body, recipients) in enumerate(batch):
            own(sender, conv, seq)
            if len(recipients) == 1:  # one-to-one: the common case, without the loop's bookkeeping
                if offer(recipients[0], conv, seq, body):
                    reached.append(1)
                else:
                    reached.append(0)
                    remote.append((i, list(recipients)))
                continue
            here = 0
            elsewhere: list[int] = []
            for k, uid in enumerate(recipients):
                if k and not k % OFFER_SLICE:
                    gevent.sleep(0)
                if offer(uid, conv, seq, body):
                    here += 1
                else:
                    elsewhere.append(uid)
            reached.append(here)
            if elsewhere:
                remote.append((i, elsewhere))
        counts = self.counts
        counts.delivered_local += sum(reached)
        if not remote:
            return reached
        items = [(elsewhere, b"%d,%d %s" % (batch[i].conv, batch[i].seq, batch[i].body)) for i, elsewhere in remote]
        try:
            # a one-to-one's ACK says whether it was reached
            if told and any(len(batch[i].recipients) == 1 for i, _ in remote):
                missed = self.bus.route_batch(items)
            else:
                # a group message's ACK counts its members, not who was
                # reached, and a chat without seq has no ACK: nothing waits
                # for the route's reply (a wake-up a batch: docs/benchmarks.md,
                # "The route without waiting")
                self.bus.post_batch(items, lambda lost: self._routed(remote, lost, None))
                for i, elsewhere in remote:
                    reached[i] += len(elsewhere)
                return reached
        except DomainError as e:
            # the log has it: the recipients' nodes repair when their bus
            # comes back, or the recipients get it at their next login
            log.warning("bus unavailable (%s); recipients of %d message(s) get them from the log",
                        e, len(remote))
            missed = [elsewhere for _, elsewhere in remote]
        self._routed(remote, missed, reached)
        return reached

    def _routed(self, remote: list[tuple[int, list[int]]], missed: list[list[int]], reached: list[int] | None) -> None:
        counts = self.counts
        for (i, elsewhere), lost in zip(remote, missed, strict=True):
            routed = len(elsewhere) - len(lost)
            counts.routed += routed
            counts.stored += len(lost)  # kept for them in the log, handed over at their next login
            if reached is not None:
                reached[i] += routed

    def tell(self, user_ids: list[int], body: bytes) -> None:
        """A push that is not a chat message (a read receipt): to whoever is
        online, here or elsewhere (`- ` on the bus); nobody keeps it for the
        others, who read the state at their next sync."""
        elsewhere = []
        for uid in user_ids:
            peer = self.registry.get(uid)
            if peer is not None:
                peer.push(body, NOT_STORED)
            else:
                elsewhere.append(uid)
        if elsewhere:
            try:
                self.bus.route(elsewhere, b"- " + body)
            except DomainError as e:
                log.info("bus unavailable (%s): %d notification(s) not sent", e, len(elsewhere))

    def on_bus_logged(self, user_ids: list[int], body: bytes) -> bool:
        """A logged message another node routed here (`conv,seq json`), or a
        notification (`- json`); False when body is neither (a plain
        delivery)."""
        head, _, text = body.partition(b" ")
        if head == b"-":
            for uid in user_ids:
                peer = self.registry.get(uid)
                if peer is not None:
                    peer.push(text, NOT_STORED)
            return True
        conv, sep, seq = head.partition(b",")
        if not sep or not conv.isdigit() or not seq.isdigit():
            return False
        c, q = int(conv), int(seq)
        if self.heard is not None:
            self.heard(c, q, is_notice(text))
        offered = 0
        for k, uid in enumerate(user_ids):
            if k and not k % OFFER_SLICE:
                gevent.sleep(0)
            # a user gone since the routing decision: the log keeps it for
            # its next login
            offered += self.sessions.offer(uid, c, q, text)
        self.counts.delivered_local += offered
        return True

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
        self.counts.delivered_local += reached
        if elsewhere:
            with self._deciding(elsewhere):
                try:
                    offline = self.bus.route(elsewhere, body)
                except Unavailable as e:
                    # the bus cannot say who is online where: stored is never
                    # lost, only late
                    log.warning("bus unavailable (%s); storing %d message(s)", e, len(elsewhere))
                    offline = elsewhere
                routed = len(elsewhere) - len(offline)
                self.counts.routed += routed
                reached += routed
                if offline:
                    self.store_offline(offline, body)
        return reached

    def notify(self, user_ids: Iterable[int], body: bytes) -> None:
        """Push a notice (docs/protocol.md section F) to those of the users
        online with sessions that asked for notices, here or on any node;
        never stored. Best effort: with the bus down, only this node's."""
        elsewhere: list[int] = []
        for uid in user_ids:
            peer = self.registry.get(uid)
            if peer is None:
                elsewhere.append(uid)
            elif peer.notices:
                peer.notify(body)
        if elsewhere:
            try:
                self.bus.notify(elsewhere, body)
            except Unavailable as e:
                log.warning("bus unavailable (%s); %d notice(s) not sent", e, len(elsewhere))

    def on_bus_notice(self, user_ids: list[int], body: bytes) -> None:
        """A notice another node routed here: for whoever is still here."""
        for uid in user_ids:
            peer = self.registry.get(uid)
            if peer is not None and peer.notices:
                peer.notify(body)

    def invalidate_group(self, group_id: int) -> None:
        """Tell the other nodes that a group's membership changed (after the
        commit, so a node that reloads sees it). Best effort: a node that
        missed it drops its whole cache when its bus comes back."""
        try:
            self.bus.invalidate_group(group_id)
        except Unavailable:
            log.warning("could not tell other nodes that group %d changed", group_id)

    def invalidate_blocks(self, user_id: int) -> None:
        """Tell the other nodes that a user's blocks changed; best effort,
        as for groups."""
        try:
            self.bus.invalidate_blocks(user_id)
        except Unavailable:
            log.warning("could not tell other nodes that user %d's blocks changed", user_id)

    def store_offline(self, user_ids: list[int], body: bytes) -> None:
        text = body.decode()
        self.db.run(lambda s: store.store_offline(s, [(uid, text) for uid in user_ids]))
        self.counts.stored += len(user_ids)

    def store_offline_batch(self, items: list[tuple[int, bytes]]) -> None:
        """Store (user id, body) pairs in one unit of work, in order: what a
        closing connection could not write (its order is kept at next login)."""
        self.db.run(lambda s: store.store_offline(s, [(uid, body.decode()) for uid, body in items]))
        self.counts.stored += len(items)

    def on_bus_delivery(self, user_ids: list[int], body: bytes) -> None:
        """A delivery another node routed here. The user may have left since
        the routing decision: then it is stored, never dropped."""
        if self.on_bus_logged(user_ids, body):
            return
        gone = []
        for uid in user_ids:
            peer = self.registry.get(uid)
            if peer is not None:
                peer.push(body)
            else:
                gone.append(uid)
        self.counts.delivered_local += len(user_ids) - len(gone)
        if gone:
            try:
                with self._deciding(gone):
                    self.store_offline(gone, body)
            except Unavailable:
                log.error("could not store %d message(s) for %s: database unavailable", len(gone), gone)

