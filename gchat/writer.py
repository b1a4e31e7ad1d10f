"""The log's writer: every accepted chat message, in batches.

The messages that arrive while a batch is in the database wait for the next
one, which numbers and stores them all in one transaction (the shape of
gchat/batch.py's logins):
1. lock the conversations' rows (`SELECT ... FOR UPDATE`, in id order, by
   primary key: convlog.BY_KEY): two nodes writing to one conversation take
   turns, so numbers are gap-free and every member sees one order;
2. a group whose member epoch moved since its member list was cached (a join
   or a leave committed, on any node) has its members read again, under that
   lock; a message whose sender is not among them, or whose conversation is
   gone (a group deleted with it), is refused (errno 6, 7): that message
   only, the others of the batch go on. The lock's reading is the only
   authority: a node's member cache may not have heard of a removal yet;
3. one UPDATE of last_seq for the batch, one multi-row INSERT of the messages;
4. commit. Only then are the messages delivered (in seq order) and their
   senders answered: an ACK with errno 0 means the message is in the log.

The writer holds one connection for its batches (one batch is in flight at
a time): a checkout per batch, with its ping and the ORM session around it,
was a sixth of a batch's CPU. On MySQL/MariaDB that connection is its own
(not the pool's) and may carry several statements per query, sent to the
driver itself (convlog.FastSql; round trips and SQLAlchemy's execution per
statement were most of a batch's CPU), the query that writes the rows on
the MySQL wire itself (gchat/sqlwire.py: PyMySQL's layers per query were a
seventh of a busy node's CPU), but on a TLS connection:
- the fast path (this node knows where the conversations are: it wrote
  them last, or heard of their last message over the bus, `heard`), one
  round trip: the UPDATE that checks this node's last_seq and member
  epoch, then, as the server finds its count (found rows), the INSERT and
  the COMMIT; or, when a conversation moved, a rollback and the lock's
  SELECT, whose rows are the answer: the locking path's first round trip,
  taken in the same one (one compound statement: convlog.FastSql.fast);
- the locking path (conversations another node writes too without this
  one hearing of it, `_contested`: the fast path would only fail on them):
  the lock's SELECT; then the UPDATE, the INSERT and the COMMIT in one
  query (the server runs nothing after a failed statement, so the COMMIT
  goes only with the rows).
A driver error but a deadlock drops the connection (the next batch opens a
fresh one); a batch that was a deadlock victim is run again as
store.Database.run would, as it was rolled back whole; a batch whose
connection was lost during the query holding its COMMIT is looked up in the
log by its first row (_committed): answered if it is there, run again if not.

Under load a batch holds tens of messages and they share the commit (and its
fsync); alone, a message is a batch of one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gevent.event import AsyncResult
from sqlalchemy import Connection, Dialect, Engine, make_url
from sqlalchemy import exc as sa_exc

from gchat import convlog, sqlwire
from gchat.batch import Batcher, Sink
from gchat.errors import Conflict, Unavailable
from gchat.metrics import Counts
from gchat.protocol import OUTCOME_UNKNOWN, Errno, ProtocolError, dumps
from gchat.store import Database, deadlock, driver_errors, make_engine

log = logging.getLogger(__name__)

# what the log said of a batch whose connection was lost during its commit
# (LogWriter._committed), as gchat_log_commits_lost_total counts it
_OUTCOMES = {True: "committed", False: "rolled_back", None: "unknown"}

# the MySQL protocol's flags (PyMySQL's constants.CLIENT and SERVER_STATUS)
MULTI_STATEMENTS = 1 << 16  # CLIENT_MULTI_STATEMENTS: a query may hold several statements
NO_BACKSLASH_ESCAPES = 512  # SERVER_STATUS_NO_BACKSLASH_ESCAPES: the sql_mode that quotes by doubling
NO_SUCH_THREAD = 1094  # ER_NO_SUCH_THREAD: KILL of a connection the server does not have
FENCE_POLL = 0.01  # seconds between looks for a killed connection's thread (_fence)
# two readings of a server's start (_server_started) this far apart are two
# runs of it: its uptime is in whole seconds, read a round trip apart
RESTART_SLACK = 3.0


class _Moved(Exception):
    """A conversation moved since this node last wrote it: take the locking path."""


class Outgoing(NamedTuple):
    """A chat message to log: `to` (one-to-one) or `group`, and the delivered
    object without its log fields. `told`: the sender's ACK says whether `to`
    was reached live (a one-to-one chat with seq), so its delivery must wait
    for the bus's answer. A NamedTuple, as Written: one is made per chat
    message."""

    sender: int
    body: dict[str, Any]
    to: int | None = None
    group: int | None = None
    told: bool = False


class Written(NamedTuple):
    """A message as the log holds it. A NamedTuple, not a frozen dataclass:
    one is made per message in the writer's loop, and a frozen dataclass's
    __init__ (an object.__setattr__ per field) cost about twice as much."""

    conv: int
    seq: int
    ts: int  # server time, Unix milliseconds
    sender: int
    body: bytes  # the delivered JSON text, as stored
    recipients: tuple[int, ...]


# a committed batch, and whether any of its outcomes must say who was reached
# live (Outgoing.told): per message, how many recipients were reached live
Deliver = Callable[[list[Written], bool], list[int]]

# a message of a batch: as written, with how many recipients were reached
# live; or why the log refused it (that message only: the batch goes on)
Done = tuple[Written, int] | ProtocolError


@dataclass
class _Sent:
    """A batch's query that would commit it is on its way: if the connection
    is lost before its answer, whether it committed is asked of the log by
    its first row, once the server thread it went to is gone (_fence)."""

    done: list[Written | ProtocolError]
    first: convlog.Row
    thread: int  # the connection's id on the server
    started: float  # when that server started (_server_started): its ids are its own


class LogWriter:
    def __init__(self, db: Database, deliver: Deliver | None = None, linger: float = 0.0,
                 counts: Counts | None = None, gather: int = 0) -> None:
        self.db = db
        # batches by the path that committed them (gchat_log_batches)
        self.counts = counts if counts is not None else Counts()
        # called with each committed batch, in seq order: how many recipients
        # of each message were reached live
        self.deliver = deliver
        self._batcher: Batcher[tuple[Outgoing, int], Done] = Batcher(self._write, linger=linger, gather=gather)
        self._pairs: dict[tuple[int, int], int] = {}
        self._pair_lookups: Batcher[tuple[int, int], int | BaseException] = Batcher(self._find_pairs)
        self._groups: dict[int, int] = {}
        # conversation -> (member epoch, member ids) as last read under the lock
        self._members: dict[int, tuple[int, tuple[int, ...]]] = {}
        # conversation -> (last_seq, member_epoch) as this node's last commit
        # left it, or as another node's delivery over the bus told (heard):
        # the fast path's expectation (see convlog.advance_if)
        self._last: dict[int, tuple[int, int]] = {}
        self._epochs: dict[int, int] = {}
        # conversations that moved under this node's feet the last time it
        # locked them: another node writes them too (_write), and this one
        # has not heard of it since (heard)
        self._contested: set[int] = set()
        # the path that wrote the last batch: the lock (the locking path, or
        # the fast one's when it found a conversation moved) or the fast one
        self._locked_last = False
        self._conn: Connection | None = None  # the batches' own, checked out once
        self._started = 0.0  # when its server started (_server_started)
        # MySQL/MariaDB: the fast path's statements go to the driver itself,
        # both in one round trip, on a connection of the writer's own
        self._sql: convlog.FastSql | None = None
        self._wire: sqlwire.Wire | None = None  # the writer's connection's socket, for its queries
        self._engine = db.engine
        if db.engine.dialect.name == "mysql":
            self._sql = convlog.FastSql(db.engine.dialect)
            self._engine = _multi_statement_engine(db)

    def close(self) -> None:
        """Close the writer's connection (before the database's dispose)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not self.db.engine:
            self._engine.dispose()

    def append(self, msg: Outgoing) -> tuple[Written, int]:
        """Log one message; returns it as written and how many recipients
        were reached live. Raises Unavailable when it is not in the log."""
        return self.result(self.submit(msg))

    def submit(self, msg: Outgoing) -> AsyncResult[Done]:
        """Queue one message for the next batch; `result()` waits for it. A
        connection's pipelined messages then share batches instead of each
        waiting for the commit of the one before."""
        conv = self._conv_of(msg)  # cached after the first message: no I/O
        return self._batcher.submit((msg, conv))

    def submit_to(self, msg: Outgoing, sink: Sink[Done]) -> None:
        """submit, with the outcome set on sink by the writer's greenlet
        (which must not block there) once the batch is committed, or failed:
        an exception, raised to the caller of result() as submit's."""
        self._batcher.submit_to((msg, self._conv_of(msg)), sink)

    @staticmethod
    def result(pending: AsyncResult[Done]) -> tuple[Written, int]:
        try:
            done = pending.get()
        except ProtocolError as e:  # re-raised as this caller's own (service.handle fills msgid, seq)
            raise ProtocolError(e.errno, e.errmsg) from e
        assert done is not None
        return LogWriter.outcome(done)

    @staticmethod
    def outcome(done: Done) -> tuple[Written, int]:
        """A message's outcome as written, or its refusal raised."""
        if isinstance(done, ProtocolError):  # refused by the log: this message only
            raise ProtocolError(done.errno, done.errmsg)
        return done

    # --- conversations -------------------------------------------------------

    def pair(self, a: int, b: int) -> int:
        key = convlog.pair_key(a, b)
        conv = self._pairs.get(key)
        if conv is None:
            # the first message of a pair: its conversation found (or made)
            # together with the other readers' that wait meanwhile, in one
            # query and at most one transaction: a burst of new pairs (a
            # fresh database at 1,000/s) queued two transactions each for
            # the pool, and their first messages waited hundreds of ms
            found = self._pair_lookups(key)
            if isinstance(found, BaseException):
                raise found
            conv = self._pairs[key] = found
        return conv

    def _find_pairs(self, keys: list[tuple[int, int]]) -> list[int | BaseException]:
        """One conversation per key (a key may come twice: both users' first
        messages), or why there is none: found in one query, the missing ones
        made in one transaction."""
        want = set(keys)
        with self.db.transaction() as s:
            found: dict[tuple[int, int], int | BaseException] = dict(convlog.find_pairs(s, want))
        missing = sorted(want - found.keys())
        if missing:
            try:
                with self.db.transaction() as s:
                    found.update(convlog.create_pairs(s, missing))
            except (Conflict, ProtocolError) as e:
                if not _made_elsewhere(e):
                    raise
                for key in missing:  # each alone, as the race decides
                    try:
                        found[key] = self._pair_alone(*key)
                    except Exception as alone:  # that key's callers only
                        found[key] = alone
        return [found[k] for k in keys]

    def _pair_alone(self, a: int, b: int) -> int:
        """A pair's conversation made in a transaction of its own, or found
        when another node made it first."""
        try:
            with self.db.transaction() as s:
                return convlog.create_pair(s, a, b)
        except (Conflict, ProtocolError) as e:
            if not _made_elsewhere(e):
                raise
            with self.db.transaction() as s:
                conv = convlog.find_pair(s, a, b)
            if conv is None:
                raise
            return conv

    def group(self, group_id: int) -> int | None:
        conv = self._groups.get(group_id)
        if conv is None:
            with self.db.transaction() as s:
                conv = convlog.find_group(s, group_id)
            if conv is not None:
                self._groups[group_id] = conv
        return conv

    def known_group(self, group_id: int, conv: int) -> None:
        self._groups[group_id] = conv

    def heard(self, conv: int, seq: int, notice: bool = False) -> None:
        """Another node logged conv's message number seq (its delivery came
        here over the bus). A one-to-one conversation whose users sit on two
        nodes is written by both in turn: without this, it moved under each
        node at every batch and took the locking path (two round trips).
        Knowing its last_seq, the next batch tries the fast path (one).
        Only a guess: the fast path's UPDATE checks last_seq (and the member
        epoch, kept as this node last saw it) in the log, and a wrong guess
        (a message still on its way here, a join meanwhile) is a moved
        conversation: a rollback and the locking path. A notice is a
        membership change: the epoch moved, so the conversation is locked
        first instead."""
        last = self._last.get(conv)
        if last is None or seq <= last[0]:  # never written here (locked first anyway), or old news
            return
        if notice:
            self._contested.add(conv)
            return
        self._last[conv] = (seq, last[1])
        self._contested.discard(conv)

    # --- the batch -------------------------------------------------------------

    def _conv_of(self, msg: Outgoing) -> int:
        if msg.to is not None:
            return self.pair(msg.sender, msg.to)
        assert msg.group is not None
        conv = self.group(msg.group)
        if conv is None:
            raise LookupError(f"group {msg.group} has no conversation")
        return conv

    def _write(self, items: list[tuple[Outgoing, int]]) -> Sequence[Done]:
        done: list[Written | ProtocolError] | None = None
        # a conversation another node wrote since this one's last batch
        # (`_contested`: it moved the last time it was locked here) is
        # locked first: the fast path would only find it moved, having
        # numbered and rendered the batch in vain
        counts = self.counts
        if self._fast_ok() and all(c in self._last and c not in self._contested for _, c in items):
            try:
                done = self._run(items, fast=True)
            except _Moved:  # known before anything was sent (stale members, a refusal to make)
                counts.batches_moved += 1
        if done is None:
            done = self._run(items, fast=False)
        if self._locked_last:
            counts.batches_locked += 1
        else:
            counts.batches_fast += 1
        written = [w for w in done if isinstance(w, Written)]
        last = self._last
        for w in written:  # committed: what this node wrote is where each conversation is
            # unless another node's later message was heard meanwhile (heard)
            if w.seq > last.get(w.conv, (-1, 0))[0]:
                last[w.conv] = (w.seq, self._epochs[w.conv])
        # committed: now, and only now, anyone may hear of it (the whole
        # batch at once: one round trip to the bus for all of it)
        reached = [0] * len(written)
        if self.deliver is not None and written:
            try:
                reached = self.deliver(written, any(m.told for m, _ in items))
            except Exception:  # it is in the log: repaired from there
                log.exception("delivery of a batch of %d failed; it stays in the log", len(written))
        live = iter(reached)
        return [w if isinstance(w, ProtocolError) else (w, next(live)) for w in done]

    def _fast_ok(self) -> bool:
        """The fast path's count check is an IF outside a stored program,
        which MariaDB runs and MySQL does not: on MySQL every batch locks.
        (The dialect knows which once its engine has connected.)"""
        dialect = self._engine.dialect
        return dialect.name != "mysql" or bool(getattr(dialect, "is_mariadb", False))

    def _run(self, items: list[tuple[Outgoing, int]], fast: bool) -> list[Written | ProtocolError]:
        """_number in one transaction on the writer's connection, committed;
        run again (up to the retry policy's attempts) when it was rolled back
        whole: a deadlock victim, a connection lost before the commit was
        sent, or one lost during the query holding the COMMIT when the log
        then shows the batch's first row absent (_committed; there, the
        batch is answered as written)."""
        attempt = 1
        while True:
            # set once the COMMIT is on its way: a lost connection then leaves the
            # outcome to be asked of the log (_Sent), or unknown (True: the Core path)
            sent: list[_Sent | bool] = []
            try:
                with driver_errors():
                    if self._conn is None:
                        self._conn = self._engine.connect()
                        if self._sql is not None:
                            self._started = _server_started(self._conn.connection.dbapi_connection)
                    if self._sql is not None:
                        return self._fast(self._conn, items, sent) if fast else self._locked(self._conn, items, sent)
                    self._locked_last = not fast
                    with self._conn.begin() as tx:
                        done, rows, expected = self._number(self._conn, items, fast)
                        if expected is not None:
                            if not convlog.advance_if(self._conn, expected):
                                raise _Moved
                        convlog.append(self._conn, [dict(zip(convlog.APPEND_COLUMNS, r, strict=True))
                                                    for r in rows])
                        sent.append(True)
                        tx.commit()
                    return done
            except Unavailable as e:
                invalidated = bool(getattr(e.__cause__, "connection_invalidated", False))
                # a deadlock victim's connection is sound (its transaction was
                # rolled back, and by the raw paths here): keep it. Opening
                # another (PyMySQL builds an SSL context for each) cost more
                # than the batch
                if invalidated or not deadlock(e.__cause__):
                    self._drop()
                lost = not sent and invalidated
                if invalidated and sent:
                    first = sent[0]
                    # unknown when the log could not be asked (the database
                    # still away), or is not asked (the Core path's COMMIT)
                    outcome = self._committed(first) if isinstance(first, _Sent) else None
                    self.counts.commits_lost[_OUTCOMES[outcome]] += 1
                    if outcome is None:  # the batch may be in the log
                        raise Unavailable(OUTCOME_UNKNOWN) from e.__cause__
                    if outcome and isinstance(first, _Sent):
                        return first.done
                    lost = True
                if attempt >= self.db.retry.attempts or not (lost or deadlock(e.__cause__)):
                    raise
            time.sleep(self.db.retry.delay(attempt))
            attempt += 1

    def _fast(self, conn: Connection, items: list[tuple[Outgoing, int]],
              sent: list[_Sent | bool]) -> list[Written | ProtocolError]:
        """The fast path on MySQL/MariaDB, on the driver's connection, in one
        round trip (convlog.FastSql.fast): the checking UPDATE, then the
        INSERT and the commit; or, when a conversation moved, the rows
        locked and read in the same round trip, and the batch numbered
        again and written as the locking path's second one."""
        assert self._sql is not None
        done, rows, expected = self._number(conn, items, True)
        raw = conn.connection.dbapi_connection
        assert raw is not None and expected is not None
        with _raw_transaction(raw, conn.dialect):
            sql = self._sql.fast(expected, rows, _backslash_escapes(raw))
            sent.append(_Sent(done, rows[0], raw.thread_id(), self._started))
            locked: list[sqlwire.Rows] = []
            self._command(raw, sql, locked)  # the values are in the text
            if not locked:  # committed
                self._locked_last = False
                return done
            # moved: rolled back, nothing written; the batch's rows are locked now
            sent.clear()
            self.counts.batches_moved += 1
            return self._write_locked(raw, items, convlog.locked_state(locked[0]), sent)

    def _locked(self, conn: Connection, items: list[tuple[Outgoing, int]],
                sent: list[_Sent | bool]) -> list[Written | ProtocolError]:
        """The locking path on MySQL/MariaDB, on the driver's connection, in
        two round trips: the rows locked and read (SELECT ... FOR UPDATE),
        then the write (_write_locked)."""
        assert self._sql is not None
        raw = conn.connection.dbapi_connection
        assert raw is not None
        with _raw_transaction(raw, conn.dialect):
            sql, ids = self._sql.lock(c for _, c in items)
            cur = raw.cursor()
            try:
                _execute(raw, cur, sql, ids)
                state = convlog.locked_state(cur.fetchall())
            finally:
                cur.close()
            return self._write_locked(raw, items, state, sent)

    def _write_locked(self, raw: Any, items: list[tuple[Outgoing, int]], state: Mapping[int, tuple[int, int]],
                      sent: list[_Sent | bool]) -> list[Written | ProtocolError]:
        """The batch numbered from `state`, read under the lock its rows are
        still under, and written: the UPDATE, the INSERT and the COMMIT in
        one query. Nothing needs checking between them: the rows are locked
        and their values known, and the server runs no statement of a query
        after one that failed, so an INSERT's error leaves the COMMIT unsent
        (the caller's _raw_transaction rolls back). A group whose member
        epoch moved has its members read first, under the lock (one round
        trip more)."""
        assert self._sql is not None
        self._locked_last = True
        stale = self._stale(items, state)
        if stale:
            cur = raw.cursor()
            try:
                sql, ids = self._sql.members(stale)
                _execute(raw, cur, sql, ids)
                fresh: dict[int, list[int]] = {g: [] for g in stale}
                for gid, uid in cur.fetchall():
                    fresh[int(gid)].append(int(uid))
            finally:
                cur.close()
            self._reloaded(stale, state, {g: tuple(m) for g, m in fresh.items()})
        self._moves(state)
        done, rows, advanced = self._numbered(items, state)
        if not rows:
            raw.rollback()  # the locks go; nothing was written
            return done
        update = self._sql.advance_if(advanced)  # matches: the rows are locked
        insert = self._sql.append(rows, _backslash_escapes(raw))
        sent.append(_Sent(done, rows[0], raw.thread_id(), self._started))
        # the values are in the text; the UPDATE's count first, then
        # the INSERT's and the COMMIT's results (an error, if any)
        matched = self._command(raw, update + ";" + insert + ";COMMIT")
        if matched != len(advanced):  # never: the rows are locked (a bug would show here)
            log.error("the locked UPDATE matched %d of %d conversations", matched, len(advanced))
        return done

    def _command(self, raw: Any, sql: str, sets: list[sqlwire.Rows] | None = None) -> int:
        """A query (one or several statements) on the driver's connection,
        every result read; the first one's found rows, and its result sets
        appended to `sets` (a query that may answer rows). On the wire
        itself (gchat/sqlwire.py) unless the connection is TLS's: then
        through PyMySQL's cursor."""
        wire = self._wire = sqlwire.Wire.for_(raw, self._wire)
        if wire.usable:
            return wire.query(sql, sets)
        return sqlwire.through_cursor(raw, sql, sets)

    def _committed(self, sent: _Sent) -> bool | None:
        """Whether the batch whose query was lost with its connection
        committed (its first row is in the log, as numbered); None when
        that cannot be read either (the database still away)."""
        assert self._sql is not None
        conv, seq, sender, created, *_ = sent.first
        try:
            with driver_errors():
                self._conn = self._engine.connect()
                raw = self._conn.connection.dbapi_connection
                assert raw is not None
                with _wrapped(self._conn.dialect):
                    cur = raw.cursor()
                    try:
                        _fence(cur, sent.thread, sent.started, self.db.timeout, self._conn.dialect.loaded_dbapi)
                        sql, args = self._sql.committed(conv, seq)
                        cur.execute(sql, args)
                        row = cur.fetchone()
                    finally:
                        cur.close()
                    raw.rollback()
        except Unavailable:
            self._drop()
            return None
        committed = row is not None and (int(row[0]), int(row[1])) == (sender, created)
        log.warning("the database connection was lost during a batch's commit: it %s",
                    "committed" if committed else "did not commit, and runs again")
        return committed

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back into the pool: its state is unknown
            except Exception:
                log.debug("closing the writer's connection failed", exc_info=True)

    def _stale(self, items: list[tuple[Outgoing, int]], state: Mapping[int, tuple[int, int]]) -> dict[int, int]:
        """group -> conversation of the batch's groups whose member list is
        not the one of the conversation's member epoch (a join or a leave
        committed since it was read, on any node; or never read here)."""
        return {m.group: c for m, c in items
                if m.group is not None and c in state and self._members.get(c, (-1, ()))[0] != state[c][1]}

    def _reloaded(self, stale: Mapping[int, int], state: Mapping[int, tuple[int, int]],
                  fresh: Mapping[int, tuple[int, ...]]) -> None:
        for gid, c in stale.items():
            self._members[c] = (state[c][1], fresh.get(gid, ()))

    def _moves(self, state: Mapping[int, tuple[int, int]]) -> None:
        """Under the lock: which conversations moved since this node's last
        commit (another node wrote them, or their members changed). They are
        locked first the next time (_write)."""
        for c, now in state.items():
            if c in self._last and self._last[c] != now:
                self._contested.add(c)
            else:
                self._contested.discard(c)

    def _number(self, s: Connection, items: list[tuple[Outgoing, int]], fast: bool) -> tuple[
            list[Written | ProtocolError], list[convlog.Row], dict[int, tuple[int, int, int]] | None]:
        """Number a batch in SQLAlchemy's transaction on `s` (or, for the fast
        path, from where this node last left each conversation): see
        _numbered. The fast path returns what its checking UPDATE expects
        (_Moved when a group's members are known to be stale, or when a
        message would be refused: only the locking path refuses, on what it
        read under the lock); the locking path reads (and locks) the rows
        first, advances them unchecked and returns None."""
        convs = {c for _, c in items}
        if fast:
            state = {c: self._last[c] for c in convs}
            if self._stale(items, state):
                raise _Moved
            numbered = self._numbered(items, state)
            # a refusal needs the log's word, under the lock: this node's
            # view of a conversation is only checked for those it writes
            if any(isinstance(d, ProtocolError) for d in numbered[0]):
                raise _Moved
            return numbered
        state = convlog.lock_conversations(s, convs)
        stale = self._stale(items, state)
        if stale:
            self._reloaded(stale, state, convlog.group_members(s, stale))
        self._moves(state)
        done, rows, advanced = self._numbered(items, state)
        convlog.advance(s, {c: n for c, (_, _, n) in advanced.items()})
        return done, rows, None

    def _numbered(self, items: list[tuple[Outgoing, int]], state: Mapping[int, tuple[int, int]]) -> tuple[
            list[Written | ProtocolError], list[convlog.Row], dict[int, tuple[int, int, int]]]:
        """The batch numbered from `state` (conv -> last_seq, member_epoch):
        each message as written, or refused (its conversation gone, its
        sender not a member of the group as the log's member epoch has it);
        the rows to insert; and conv -> (last_seq, member_epoch, n added)."""
        now = int(time.time() * 1000)
        self._epochs.update({c: epoch for c, (_, epoch) in state.items()})
        last = {c: st[0] for c, st in state.items()}
        done: list[Written | ProtocolError] = []
        rows: list[convlog.Row] = []
        for m, c in items:
            # a one-to-one message in a conversation there is: nothing to refuse (no call)
            if m.group is not None or c not in state:
                refused = self._refused(m, c, state)
                if refused is not None:
                    done.append(refused)
                    continue
            last[c] += 1
            seq = last[c]
            body = dict(m.body)
            body["conv"], body["cseq"], body["ts"] = c, seq, now
            text = dumps(body)
            if m.to is not None:
                recipients: tuple[int, ...] = (m.to,)
            else:
                recipients = tuple(u for u in self._members[c][1] if u != m.sender)
            done.append(Written(c, seq, now, m.sender, text, recipients))
            rows.append((c, seq, m.sender, now, text.decode(), convlog.CHAT))
        advanced = {c: (state[c][0], state[c][1], n - state[c][0]) for c, n in last.items() if n != state[c][0]}
        return done, rows, advanced

    def _refused(self, m: Outgoing, c: int, state: Mapping[int, tuple[int, int]]) -> ProtocolError | None:
        """Why m may not be numbered, if it may not: the only authority is
        the log, under the lock (a node's member cache may not have heard of
        a removal yet)."""
        if c not in state:  # its conversation was deleted (gchat-admin delete-user)
            self._forget(m, c)
            if m.group is not None:
                return ProtocolError(Errno.NOT_FOUND, f"no group {m.group}")
            return ProtocolError(Errno.NOT_FOUND, f"no user {m.to}")
        if m.group is not None:
            members = self._members[c][1]
            if not members:  # the group was deleted (its conversation detached)
                return ProtocolError(Errno.NOT_FOUND, f"no group {m.group}")
            if m.sender not in members:
                return ProtocolError(Errno.FORBIDDEN, f"not a member of group {m.group}")
        return None

    def _forget(self, m: Outgoing, c: int) -> None:
        """A deleted conversation: the next message to the group (or pair)
        looks it up again."""
        for cache in (self._last, self._members, self._epochs):
            cache.pop(c, None)
        self._contested.discard(c)
        if m.group is not None and self._groups.get(m.group) == c:
            del self._groups[m.group]
        if m.to is not None and self._pairs.get(convlog.pair_key(m.sender, m.to)) == c:
            del self._pairs[convlog.pair_key(m.sender, m.to)]


def _made_elsewhere(e: Conflict | ProtocolError) -> bool:
    """A pair's conversation could not be made because it exists: another
    node (or another batch) made it first, so it is to be found instead."""
    return not isinstance(e, ProtocolError) or e.errno == Errno.CONFLICT


def _server_started(raw: Any) -> float:
    """When the server started, on this process's monotonic clock (to a
    second or so): a thread id names a connection of that server's run
    only, as ids start again at 1 when it restarts."""
    cur = raw.cursor()
    try:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Uptime'")
        row = cur.fetchone()
    finally:
        cur.close()
    return time.monotonic() - float(row[1])


def _fence(cur: Any, thread: int, started: float, timeout: float, dbapi: Any) -> None:
    """Before the log is asked whether a lost connection's batch committed:
    make sure it can commit no more. The client gave up on the answer (a
    read timeout, a cut), but the server may still hold the query, queued
    behind a lock or not read yet. Asked too early, the log says "not
    committed", the batch runs again, and the old query's COMMIT logs every
    message of it a second time (seen in a cluster pingpong: each a message
    its recipient got twice). The server thread it went to is killed (its
    transaction rolled back, unless it committed) and waited for until it
    is gone; raised as lost when it outlives the timeout. Not when the
    server restarted since (started): its threads went with it, and the
    number may now be another connection's, another node's writer's."""
    if abs(_server_started(cur.connection) - started) > RESTART_SLACK:
        return
    try:
        cur.execute("KILL CONNECTION %s", (thread,))
    except dbapi.Error as e:
        if e.args[0] != NO_SUCH_THREAD:  # gone already: the server restarted, or it ended
            raise
    deadline = time.monotonic() + timeout
    while True:
        cur.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (thread,))
        if cur.fetchone() is None:
            return
        if time.monotonic() >= deadline:
            raise dbapi.OperationalError(sqlwire.CR_SERVER_LOST, f"server thread {thread} still there after KILL")
        time.sleep(FENCE_POLL)


def _backslash_escapes(raw: Any) -> bool:
    """The connection's sql_mode quotes strings with backslash escapes (not
    NO_BACKSLASH_ESCAPES): how a string's literal is written."""
    return not raw.server_status & NO_BACKSLASH_ESCAPES


def _execute(raw: Any, cur: Any, sql: str, args: list[Any]) -> None:
    """One query on the driver's cursor (the locking path's SELECTs; the
    batch's writing query goes on the wire: sqlwire), its values bound by
    the driver's quoting, or by convlog.render's when backslash escapes are
    on."""
    if _backslash_escapes(raw):
        cur.execute(convlog.render(sql, args))
    else:
        cur.execute(sql, args)  # the driver's quoting


class _raw_transaction:  # noqa: N801 -- used as the context manager it was (a class: a generator's cost more)
    """A transaction on the driver's connection: its errors as SQLAlchemy's
    (as _wrapped), and rolled back on any error but a lost connection (the
    server rolls that back itself): a deadlock victim's connection stays in
    use. A class, not a generator with contextlib's wrapper (that, with
    _wrapped inside it, was a few per cent of a small batch's CPU)."""

    __slots__ = ("raw", "dialect")

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        if e is None or isinstance(e, _Moved):
            return
        if isinstance(e, self.dialect.loaded_dbapi.Error):
            wrapped = _as_sqlalchemys(self.dialect, e)
            self._rollback(wrapped)
            raise wrapped from e
        self._rollback(e)

    def _rollback(self, e: BaseException) -> None:
        if not getattr(e, "connection_invalidated", False):
            try:
                self.raw.rollback()
            except Exception:
                log.debug("rollback after a failed batch failed", exc_info=True)


def _multi_statement_engine(db: Database) -> Engine:
    """One connection like the pool's, which may send several statements in
    one query (PyMySQL's client_flag, ORed with the dialect's FOUND_ROWS).
    Only the writer's fast path uses that; the pool's connections keep the
    default (a statement never carries another)."""
    url = make_url(db.url)
    given = url.query.get("client_flag", "0")
    flag = int(given if isinstance(given, str) else given[-1]) | MULTI_STATEMENTS
    url = url.update_query_dict({"client_flag": str(flag)})
    return make_engine(url.render_as_string(hide_password=False), pool_size=1, overflow=0,
                       timeout=db.timeout, tls=db.tls)


@contextlib.contextmanager
def _wrapped(dialect: Dialect) -> Iterator[None]:
    """The driver's own errors as SQLAlchemy's (what store.driver_errors
    translates), with a lost connection marked as SQLAlchemy marks it."""
    try:
        yield
    except dialect.loaded_dbapi.Error as e:
        raise _as_sqlalchemys(dialect, e) from e


def _as_sqlalchemys(dialect: Dialect, e: Any) -> BaseException:
    """The driver's error e as SQLAlchemy's, a lost connection marked."""
    dbapi = dialect.loaded_dbapi
    wrapped: BaseException = sa_exc.DBAPIError.instance(
        None, None, e, dbapi.Error, hide_parameters=True, dialect=dialect,
        connection_invalidated=dialect.is_disconnect(e, None, None),
    )
    return wrapped
