"""What each local session has been handed, per conversation: the repair of
whatever the live path lost, and the classic clients' delivered cursors.

The live path (a local push, Redis pub/sub) only tells; the log is the
record. For each logged-in user of this node and each of its conversations,
`high` is the sequence number up to which the session has everything (handed
over, or its own message) and `ahead` the numbers above it it has too. A
delivery is then
- at or below `high`, or in `ahead`: a duplicate (a repair and the live path
  both brought it), dropped;
- `high + 1`: pushed;
- beyond: a gap (the bus dropped something, a node was paused, a member list
  was stale). It is parked, and the missing numbers are read from the log and
  pushed first, in order: one repair at a time per session and conversation.

Group notices are log entries too (docs/protocol.md section F): a session
that did not ask for notices is not pushed them, but counts their numbers as
had, so they open no gap.

A message whose live delivery was lost and that is the last of its
conversation reveals no gap: every `sweep_interval` seconds the node compares
its sessions with the log's last_seq (one query per batch of sessions) and
repairs what has stayed missing since the sweep before (a message still in
flight then is not repaired for nothing).

A session of a classic client (docs/protocol.md part A) counts a message as
delivered when the kernel took its last byte: its delivered cursors are
written from what its connection no longer holds, every `flush_interval`
seconds (one statement for all sessions) and when it ends. A modern client
(`"sync": true` at login) moves its cursors itself, with receipts. The flush
visits only the sessions whose tracks moved since (or whose connection still
held something then): an idle node with 16,000 sessions spent 20-30 ms of CPU a second
walking them all for nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import gevent
from gevent.event import Event

from gchat import convlog
from gchat.batch import Batcher
from gchat.convlog import NOTICE_HEAD
from gchat.errors import DomainError
from gchat.protocol import ProtocolError
from gchat.store import Database

log = logging.getLogger(__name__)

Mark = tuple[int, int]  # (conversation id, seq)
# the mark of a push that is not a chat message (a read receipt): never stored
# offline if it is not written (its state is in the cursors, shown at the next
# sync), and in no conversation a session tracks
NOT_STORED: Mark = (0, 0)

# a repair reads the log in pages of this many messages, and sends the next
# page once the connection holds less than DRAINED bytes: a gap of thousands
# of 8 KB messages must not make its client look like a slow reader
REPAIR_PAGE = 200
DRAINED = 1024 * 1024
# sessions compared with the log per query of a sweep (one IN list of ids
# written into the text): 16,000 idle sessions in batches of 500 cost 75-169
# ms of CPU a sweep, in batches of 2,000 through convlog.behind_of 10-22 ms
# (scripts/sweep-speed)
SWEEP_BATCH = 2000
# a gap is given this long to fill from the live path before the log is
# read: across nodes it is most often a message still on its way (the other
# node committed seq N, this node's writer N+1 right after, and N's route
# through Redis to this node's subscriber is a few milliseconds behind this
# node's own delivery of N+1); reading the log for it cost a transaction per
# gap, in a group with members on two nodes once every few messages
# (docs/benchmarks.md, "Group fan-out across nodes, profiled again")
GAP_GRACE = 0.05
# the user's own messages remembered per conversation it has no track for
# (Session.mine): a new conversation's first answer then needs no read of
# the log (a node's first second after a start spent a quarter of its CPU
# reading them: docs/benchmarks.md, "A batch logged twice, and a slower
# machine"); a conversation it only ever writes to holds no more than this
MINE_MAX = 64


class LogPeer(Protocol):
    user_id: int | None
    notices: bool

    def push(self, body: bytes, mark: Mark | None = None) -> None: ...

    def unsent(self) -> dict[int, int]:
        """conversation -> the lowest seq still queued, not handed to the kernel."""

    def queued(self) -> int:
        """Bytes queued, not yet handed to the kernel."""

    def settle(self) -> dict[int, int]:
        """Before the session's cursor is written: log entries held behind
        a reply are withdrawn (returned as unsent() does), those queued
        written first (bounded)."""


@dataclass
class Track:
    high: int
    ahead: set[int] = field(default_factory=set)

    def take(self, seq: int) -> None:
        if seq == self.high + 1:
            self.high = seq
            while self.high + 1 in self.ahead:
                self.high += 1
                self.ahead.discard(self.high)
        elif seq > self.high:
            self.ahead.add(seq)

    def has(self, seq: int) -> bool:
        return seq <= self.high or seq in self.ahead


@dataclass
class Session:
    user_id: int
    peer: LogPeer
    sync: bool = False
    notices: bool = False  # it asked for notices: the log's are pushed to it
    ready: bool = False  # the login's read set the tracks
    tracks: dict[int, Track] = field(default_factory=dict)
    # deliveries waiting for the login's read, or for a repair of their conversation
    parked: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    repairing: set[int] = field(default_factory=set)
    flushed: dict[int, int] = field(default_factory=dict)  # delivered cursors as last written
    closed: bool = False
    # conversation -> the last_seq the sweep before found beyond `high`
    suspect: dict[int, int] = field(default_factory=dict)
    # conversation -> set when a delivery is parked behind its repair
    # (_await_live)
    woken: dict[int, Event] = field(default_factory=dict)
    # conversation -> the user's own messages in a conversation it has no
    # track for yet (Sessions.own): counted as had when its track starts
    # (_start), so its repair does not read them from the log (at most
    # MINE_MAX; past them, it does)
    mine: dict[int, set[int]] = field(default_factory=dict)

    def wants(self, body: bytes) -> bool:
        if not convlog.is_notice(body):
            return True
        # a large group's join or leave: in the log only (docs/protocol.md section F)
        return self.notices and not convlog.is_quiet(body)


class Sessions:
    def __init__(self, db: Database, flush_interval: float = 1.0, sweep_interval: float = 0.0) -> None:
        self.db = db
        self.flush_interval = flush_interval
        self.sweep_interval = sweep_interval
        self._by_user: dict[int, Session] = {}
        # classic sessions the next flush must look at: a track moved, or the
        # connection still held part of it at the flush before
        self._dirty: dict[int, Session] = {}
        self._flusher: gevent.Greenlet[[float, Callable[[], object], str], None] | None = None
        self._sweeper: gevent.Greenlet[[float, Callable[[], object], str], None] | None = None
        # repairs run on their own greenlets: a hook for tests and stats
        self.repairs = 0
        self.on_repair: Callable[[int, int, int], None] | None = None
        # the repairs of a conversation's same numbers share one read: a
        # large group's quiet notice (docs/protocol.md section F) opens the
        # same gap in every member's session at the next message
        self._pages: Batcher[tuple[int, int, int], list[convlog.Logged]] = Batcher(self._read_pages)
        # the delivered cursors new tracks start at, read together: a node's
        # start has every session's new conversations at once
        self._starts: Batcher[tuple[int, int], int | None] = Batcher(self._read_starts)
        # sessions ending at once (a node's clients all cut off) write their
        # cursors in one transaction: one each, on a pool of a few
        # connections, failed by the thousand in the 50,000 crowd's run, and
        # a classic client then got those messages twice at its next login
        self._ending: Batcher[tuple[tuple[int, int, int], ...], None] = Batcher(self._write_ends)

    # --- the session's life ------------------------------------------------

    def begin(self, user_id: int, peer: LogPeer, sync: bool, notices: bool = False) -> None:
        """Before the login binds the user: deliveries that come before the
        login's read are parked, then sorted against it (no duplicate of the
        login reply's messages, nothing missed)."""
        self._by_user[user_id] = Session(user_id, peer, sync, notices)
        if self._flusher is None and self.flush_interval > 0:
            self._flusher = gevent.spawn(_every, self.flush_interval, self.flush, "delivered cursors: flush")
        if self._sweeper is None and self.sweep_interval > 0:
            self._sweeper = gevent.spawn(_every, self.sweep_interval, self.sweep, "sweep")

    def open(self, user_id: int, highs: dict[int, int]) -> None:
        """The login's read is done: the session has everything up to
        `highs[conv]` (the conversation's last_seq at that read)."""
        sess = self._by_user.get(user_id)
        if sess is None:
            return
        sess.tracks = {c: Track(h) for c, h in highs.items()}
        sess.flushed = {}
        sess.ready = True
        self._touch(sess)
        parked, sess.parked = sess.parked, {}
        for conv, items in parked.items():
            for seq, body in sorted(items):
                self.offer(user_id, conv, seq, body)

    def handed(self, user_id: int, marks: Iterable[Mark]) -> None:
        """Messages handed over outside offer() (the login reply's backlog)."""
        sess = self._by_user.get(user_id)
        if sess is not None:
            for conv, seq in marks:
                sess.tracks.setdefault(conv, Track(0)).take(seq)
            self._touch(sess)

    def joined(self, user_id: int, conv: int, joined_seq: int) -> None:
        """The user joined a group here: it is owed what follows joined_seq,
        and nothing before (a member who left and joins again is not owed
        what was said meanwhile: its track starts afresh)."""
        sess = self._by_user.get(user_id)
        if sess is not None:
            track = sess.tracks.get(conv)
            if track is None or track.high < joined_seq:
                sess.tracks[conv] = Track(joined_seq)
                self._touch(sess)

    def end(self, user_id: int, peer: LogPeer) -> None:
        """The session is over (log-out, disconnect, a failed login): write
        a classic client's delivered cursors from what its connection handed
        to the kernel."""
        sess = self._by_user.get(user_id)
        if sess is None or sess.peer is not peer:
            return
        del self._by_user[user_id]
        sess.closed = True
        if sess.ready and not sess.sync:
            withdrawn = sess.peer.settle()
            unsent = sess.peer.unsent()
            marks = self._delivered([sess], withdrawn)
            if marks:
                self._ending(tuple(marks))
            if unsent:
                log.info("user %d: messages of %d conversation(s) not handed over stay in the log for its next login",
                         user_id, len(unsent))

    def get(self, user_id: int) -> Session | None:
        return self._by_user.get(user_id)

    # --- deliveries ----------------------------------------------------------

    def own(self, user_id: int, conv: int, seq: int) -> None:
        """The user sent seq itself: nothing to hand over. Only a track the
        session has is told: seq says nothing of the numbers below it. A
        conversation new to the session (its first message, or one whose
        earlier messages are still on their way: parked for a repair, or
        behind on the bus) starts at the delivered cursor when its first
        delivery comes, and its repair skips the user's own messages; a
        track made here as `Track(seq - 1)` counted those earlier messages
        as had, dropped them, and moved the cursor past them. seq itself is
        remembered for it (Session.mine), and had when the track starts."""
        sess = self._by_user.get(user_id)
        if sess is not None and sess.ready:
            track = sess.tracks.get(conv)
            if track is not None:
                # Track.take's common case and _touch inline, as in offer:
                # once per message sent
                if seq == track.high + 1 and not track.ahead:
                    track.high = seq
                else:
                    track.take(seq)
                if not sess.sync:
                    self._dirty[user_id] = sess
            else:
                mine = sess.mine.setdefault(conv, set())
                if len(mine) < MINE_MAX:
                    mine.add(seq)

    def offer(self, user_id: int, conv: int, seq: int, body: bytes) -> bool:
        """A delivery for a user of this node: pushed, dropped as a
        duplicate, or parked behind a repair. False when the user has no
        session here (it is in the log: it comes at its next login)."""
        sess = self._by_user.get(user_id)
        if sess is None:
            return False
        if not sess.ready or conv in sess.repairing:
            sess.parked.setdefault(conv, []).append((seq, body))
            woken = sess.woken.get(conv)
            if woken is not None:
                woken.set()
            return True
        track = sess.tracks.get(conv)
        if track is not None:
            if seq == track.high + 1:  # the next one: by far the most common case, checked first
                # Track.take, _touch and Session.wants's first test, inline:
                # once per delivery, 0.17 us of its 0.74 (scripts/deliver-speed)
                if track.ahead:
                    track.take(seq)
                else:
                    track.high = seq
                if not sess.sync:
                    self._dirty[sess.user_id] = sess
                if not body.startswith(NOTICE_HEAD) or sess.wants(body):
                    sess.peer.push(body, (conv, seq))
                return True
            if track.has(seq):
                return True
        # a gap, or a conversation this session has not seen yet
        sess.parked.setdefault(conv, []).append((seq, body))
        sess.repairing.add(conv)
        gevent.spawn(self._repair, sess, conv)
        return True

    def _repair(self, sess: Session, conv: int) -> None:
        """Read what the session misses in conv from the log and push it in
        order with what was parked meanwhile; again while more is parked. A
        parked entry with an empty body stands for "up to here": the log
        has it. A long gap goes in pages, each once the connection's outbox
        has drained: a repair must not make its client a slow reader."""
        try:
            while sess.parked.get(conv) and not sess.closed:
                self._await_live(sess, conv)
                parked = sorted(sess.parked.pop(conv))
                upto = parked[-1][0]
                have = {q: b for q, b in parked if b}
                try:
                    track = sess.tracks.get(conv) or self._start(sess, conv)
                    if track is None:
                        continue
                    pushed = 0
                    while not sess.closed:
                        page: list[convlog.Logged] = []
                        if self._holes(track, have, upto):
                            page = self._pages((conv, track.high, upto))
                        end = page[-1].seq if len(page) == REPAIR_PAGE else upto
                        items = {m.seq: (m.sender, m.body.encode()) for m in page}
                        for seq, body in have.items():
                            if seq <= end:
                                items.setdefault(seq, (0, body))
                        for seq in sorted(items):
                            sender, body = items[seq]
                            if track.has(seq):
                                continue
                            track.take(seq)
                            if sender != sess.user_id and sess.wants(body):
                                sess.peer.push(body, (conv, seq))
                                pushed += 1
                        self._touch(sess)
                        if end >= upto:
                            break
                        while sess.peer.queued() > DRAINED and not sess.closed:
                            gevent.sleep(0.05)
                except (DomainError, ProtocolError) as e:
                    # the database is down: the log keeps it; try again
                    log.warning("user %d: could not repair conversation %d: %s", sess.user_id, conv, e)
                    sess.parked.setdefault(conv, [])[:0] = parked
                    gevent.sleep(1.0)
                    continue
                # numbers the log does not hold below `upto` were pruned by
                # retention: nothing more will come for them
                while track.high < upto:
                    track.take(track.high + 1)
                self._touch(sess)
                self.repairs += 1
                if self.on_repair is not None:
                    self.on_repair(sess.user_id, conv, pushed)
        finally:
            sess.repairing.discard(conv)

    def _await_live(self, sess: Session, conv: int) -> None:
        """Before a repair reads the log: wait up to GAP_GRACE for the live
        path to bring what is missing (parked meanwhile). Not for a gap
        known to be lost (a parked "up to here" of the sweep), nor for a
        conversation the session has no track for (its start is read
        anyway)."""
        track = sess.tracks.get(conv)
        if track is None:
            return
        deadline = time.monotonic() + GAP_GRACE
        while not sess.closed:
            parked = sess.parked.get(conv)
            if not parked or not all(body for _, body in parked):
                return
            if not self._holes(track, dict(parked), max(seq for seq, _ in parked)):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            woken = sess.woken[conv] = Event()
            try:
                woken.wait(left)
            finally:
                del sess.woken[conv]

    def _read_pages(self, keys: list[tuple[int, int, int]]) -> list[list[convlog.Logged]]:
        """A page of the log for each (conv, after, upto), each distinct one
        read once, in one transaction for the batch."""
        pages: dict[tuple[int, int, int], list[convlog.Logged]] = {}
        with self.db.transaction() as s:
            for conv, after, upto in dict.fromkeys(keys):
                pages[conv, after, upto] = convlog.messages_between(s, conv, after, upto, limit=REPAIR_PAGE)
        return [pages[k] for k in keys]

    def _start(self, sess: Session, conv: int) -> Track | None:
        """A conversation this session has no track for (made after its
        login): it starts at the user's delivered cursor."""
        delivered = self._starts((sess.user_id, conv))
        if delivered is None:  # not the user's conversation (never expected)
            log.warning("user %d: delivery for conversation %d it is not in", sess.user_id, conv)
            return None
        track = sess.tracks.setdefault(conv, Track(delivered))
        for seq in sess.mine.pop(conv, ()):  # sent here since: had, and not to be read
            track.take(seq)
        return track

    def _read_starts(self, keys: list[tuple[int, int]]) -> list[int | None]:
        with self.db.transaction() as s:
            found = convlog.delivered_of(s, keys)
        return [found.get(k) for k in keys]

    @staticmethod
    def _holes(track: Track, have: dict[int, bytes], upto: int) -> bool:
        """Whether some number in (high, upto] is neither parked nor had."""
        present = {q for q in have if q > track.high} | {q for q in track.ahead if q <= upto}
        return len(present) < upto - track.high

    def repair_all(self, user_ids: Iterable[int] | None = None) -> None:
        """After the bus was cut (Redis dropped the subscriber, the node was
        paused or reaped): any conversation of any session (of `user_ids`)
        may have a gap at its end, where no later delivery would reveal it.
        Compare with the log's last_seq and fill in."""
        only = None if user_ids is None else set(user_ids)
        sessions = [s for s in self._by_user.values() if s.ready and (only is None or s.user_id in only)]
        if not sessions:
            return
        try:
            with self.db.transaction() as s:
                cursors = convlog.cursors_of(s, [x.user_id for x in sessions])
        except (DomainError, ProtocolError) as e:
            log.warning("could not check %d session(s) against the log: %s", len(sessions), e)
            return
        behind = 0
        for sess in sessions:
            for conv, (delivered, _read, _joined, last) in cursors.get(sess.user_id, {}).items():
                track = sess.tracks.get(conv)
                if last > (delivered if track is None else track.high):
                    behind += 1
                    self._behind(sess, conv, delivered, last)
        if behind:
            log.info("checked against the log: repairing %d conversation(s)", behind)

    def _behind(self, sess: Session, conv: int, delivered: int, upto: int) -> None:
        """The log holds up to `upto` in conv, beyond what the session has:
        repair up to there."""
        sess.tracks.setdefault(conv, Track(delivered))
        sess.parked.setdefault(conv, []).append((upto, b""))
        if conv not in sess.repairing:
            sess.repairing.add(conv)
            gevent.spawn(self._repair, sess, conv)

    def sweep(self) -> int:
        """The periodic check: for each ready session and conversation, the
        log's last_seq against what the session has. A number found missing
        by the sweep before and still missing now was lost on its way (a bus
        notification dropped, and no later message of the conversation to
        reveal the gap): it is repaired from the log. One query per
        SWEEP_BATCH sessions, of the conversations with something after the
        user's delivered cursor only (few: a classic client's cursor follows
        what it was handed within cursor_flush, a modern one's its
        receipts); how many conversations were repaired."""
        sessions = [x for x in list(self._by_user.values()) if x.ready]
        repaired = 0
        for i in range(0, len(sessions), SWEEP_BATCH):
            part = sessions[i:i + SWEEP_BATCH]
            try:
                with self.db.transaction() as s:
                    rows = convlog.behind_of(s, [x.user_id for x in part])
            except (DomainError, ProtocolError) as e:
                log.warning("sweep: could not check %d session(s) against the log: %s", len(part), e)
                return repaired
            found: dict[int, list[tuple[int, int, int]]] = {}
            for uid, conv, delivered, last in rows:
                found.setdefault(uid, []).append((conv, delivered, last))
            for sess in part:
                if sess.closed or (not sess.suspect and sess.user_id not in found):
                    continue  # nothing behind now nor at the sweep before: the common case, left as it is
                suspect: dict[int, int] = {}
                for conv, delivered, last in found.get(sess.user_id, ()):
                    track = sess.tracks.get(conv)
                    high = delivered if track is None else track.high
                    if last <= high:
                        continue
                    was = sess.suspect.get(conv)
                    if was is not None and high < was:
                        repaired += 1
                        self._behind(sess, conv, delivered, last)
                    else:
                        suspect[conv] = last
                sess.suspect = suspect
        if repaired:
            log.info("sweep: repairing %d conversation(s) whose last message never arrived", repaired)
        return repaired

    # --- classic clients' delivered cursors ---------------------------------------

    def _delivered(self, sessions: Iterable[Session], withdrawn: dict[int, int] | None = None,
                   ) -> list[tuple[int, int, int]]:
        """(user, conv, seq) for the cursors that moved: up to the track's
        high, but below anything the connection still holds (or withdrew)."""
        marks = []
        for sess in sessions:
            unsent = sess.peer.unsent()
            for conv, seq in (withdrawn or {}).items():
                unsent[conv] = min(seq, unsent.get(conv, seq))
            for conv, track in sess.tracks.items():
                upto = track.high
                if conv in unsent:
                    upto = min(upto, unsent[conv] - 1)
                if upto > sess.flushed.get(conv, 0):
                    marks.append((sess.user_id, conv, upto))
                    sess.flushed[conv] = upto
                if upto < track.high and not sess.closed:
                    self._touch(sess)  # the rest once the kernel took it
        return marks

    def _touch(self, sess: Session) -> None:
        """A track of the session moved: the next flush looks at it."""
        if not sess.sync:
            self._dirty[sess.user_id] = sess

    def flush(self) -> None:
        """The delivered cursors of the classic sessions touched since the
        flush before; the others have nothing new to write."""
        dirty, self._dirty = self._dirty, {}
        self._write(self._delivered(s for s in dirty.values()
                                    if s.ready and not s.closed and self._by_user.get(s.user_id) is s))

    def _write_ends(self, ends: list[tuple[tuple[int, int, int], ...]]) -> list[None]:
        """The cursors of sessions that ended meanwhile, in one transaction
        (_write: a failure is logged once for all of them; their next logins
        hand the messages over again)."""
        self._write([m for end in ends for m in end])
        return [None] * len(ends)

    def _write(self, marks: list[tuple[int, int, int]]) -> None:
        if not marks:
            return
        try:
            with self.db.transaction() as s:
                convlog.set_delivered(s, marks)
        except (DomainError, ProtocolError) as e:
            # the cursor stays behind: at worst the next login hands these again
            log.warning("could not write %d delivered cursor(s): %s", len(marks), e)
            for uid, conv, _ in marks:
                sess = self._by_user.get(uid)
                if sess is not None:
                    sess.flushed.pop(conv, None)
                    self._touch(sess)  # tried again at the next flush


def _every(interval: float, work: Callable[[], object], what: str) -> None:
    """The session table's background work (cursor flush, repair sweep): a
    failed round is logged and the next one runs on time."""
    while True:
        gevent.sleep(interval)
        try:
            work()
        except Exception:
            log.exception("%s failed", what)
