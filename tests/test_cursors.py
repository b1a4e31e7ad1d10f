"""The classic sessions' delivered cursors (convlog.set_delivered, written by
Sessions.flush): one statement per flush for every session's news, on
MariaDB and SQLite, that only ever raises an existing cursor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from sqlalchemy import delete, event, select, update

from gchat import convlog, schema, store
from gchat.errors import Unavailable
from gchat.models import Conversation, Cursor
from gchat.sessions import Sessions
from gchat.store import Database
from tests.support import HandedOver


@pytest.fixture(params=["sqlite", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/log.db"
        schema.upgrade(Database(url))
    else:
        url = request.getfixturevalue("mariadb").create()
    d = Database(url)
    yield d
    d.dispose()


def _pairs(db: Database, n_users: int) -> tuple[list[int], dict[tuple[int, int], int]]:
    """n_users users, a pair conversation between every two: user -> conv."""
    with db.transaction() as s:
        users = [store.create_user(s, f"u{i}", "x") for i in range(n_users)]
        convs = {}
        for i, a in enumerate(users):
            for b in users[i + 1:]:
                convs[a, b] = convs[b, a] = convlog.create_pair(s, a, b)
    return users, convs


def _cursors(db: Database) -> dict[tuple[int, int], tuple[int, int]]:
    with db.transaction() as s:
        rows = s.execute(select(Cursor.user_id, Cursor.conversation_id, Cursor.delivered_seq, Cursor.read_seq))
        return {(int(u), int(c)): (int(d), int(r)) for u, c, d, r in rows}


def _statements(db: Database) -> list[str]:
    """The UPDATEs the database will run from now on: an executemany's rows
    are one statement each (PyMySQL and sqlite3 run an UPDATE per row)."""
    seen: list[str] = []

    def before(_conn: Any, _cur: Any, statement: str, params: Any, _ctx: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            seen.extend([statement] * (len(params) if executemany else 1))

    event.listen(db.engine, "before_cursor_execute", before)
    return seen


@pytest.mark.parametrize("batch", [None, 100])
def test_every_cursor_of_many_is_raised_and_none_goes_back(db: Database, batch: int | None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if batch is not None:  # several statements for one call: no row lost at their seams
        monkeypatch.setattr(convlog, "DELIVERED_BATCH", batch)
    users, convs = _pairs(db, 30)  # 435 conversations, 870 cursors
    keys = sorted(_cursors(db))
    assert len(keys) == 870
    # every cursor a number of its own, in an order that is not the key's
    marks = [(u, c, 10 + i) for i, (u, c) in enumerate(reversed(keys))]
    updates = _statements(db)
    with db.transaction() as s:
        convlog.set_delivered(s, marks)
    assert len(updates) == (1 if batch is None else 9)
    want = {(u, c): q for u, c, q in marks}
    assert {k: d for k, (d, _r) in _cursors(db).items()} == want

    # lower marks (a slow node's late flush) and repeats in one call: the
    # highest wins, nothing moves back, read cursors are untouched
    lower = [(u, c, q - 5) for u, c, q in marks[::2]]
    again = [(u, c, q + 3) for u, c, q in marks[1::3]] + [(u, c, q + 1) for u, c, q in marks[1::3]]
    with db.transaction() as s:
        convlog.set_delivered(s, lower + again)
    for u, c, q in marks[1::3]:
        want[u, c] = q + 3
    assert {k: d for k, (d, _r) in _cursors(db).items()} == want
    assert {r for _d, r in _cursors(db).values()} == {0}


def test_a_removed_members_cursor_is_not_made_again(db: Database) -> None:
    users, convs = _pairs(db, 4)
    a, b, c = users[0], users[1], users[2]
    gone = convs[a, b]
    with db.transaction() as s:
        s.execute(delete(Cursor).where(Cursor.user_id == a, Cursor.conversation_id == gone))
    with db.transaction() as s:
        convlog.set_delivered(s, [(a, gone, 7), (b, gone, 6), (a, convs[a, c], 5)])
    cursors = _cursors(db)
    assert (a, gone) not in cursors
    assert cursors[b, gone] == (6, 0)
    assert cursors[a, convs[a, c]] == (5, 0)
    assert len(cursors) == 11


class Peer(HandedOver):
    """A classic client's connection that has handed everything to the kernel."""

    user_id: int | None = None
    notices = False

    def __init__(self) -> None:
        self.pushed: list[tuple[int, int]] = []

    def push(self, body: bytes, mark: tuple[int, int] | None = None) -> None:
        assert mark is not None
        self.pushed.append(mark)


def _classic_sessions(db: Database, users: list[int], convs: dict[tuple[int, int], int],
                      make: Callable[[], Any] = Peer) -> tuple[Sessions, dict[int, Any]]:
    """Every user logged in as a classic client (its peer made by `make`),
    each cursor at 0."""
    sessions = Sessions(db, flush_interval=0)
    peers = {}
    for u in users:
        peers[u] = make()
        sessions.begin(u, peers[u], sync=False)
        sessions.open(u, {convs[u, v]: 0 for v in users if v != u})
    return sessions, peers


def test_one_flush_writes_every_sessions_news_in_one_statement(db: Database) -> None:
    users, convs = _pairs(db, 12)
    sessions, _ = _classic_sessions(db, users, convs)
    updates = _statements(db)
    # each user is handed two messages from every other
    for u in users:
        for v in users:
            if v != u:
                for seq in (1, 2):
                    assert sessions.offer(u, convs[u, v], seq, b'{"msgid":5}')
    sessions.flush()
    assert len(updates) == 1
    assert {k: d for k, (d, _r) in _cursors(db).items()} == {(u, convs[u, v]): 2 for u in users for v in users
                                                           if v != u}
    # nothing new: no statement; one more message: its two cursors only
    sessions.flush()
    assert len(updates) == 1
    a, b = users[0], users[1]
    sessions.own(a, convs[a, b], 3)
    sessions.offer(b, convs[a, b], 3, b'{"msgid":5}')
    sessions.flush()
    assert len(updates) == 2
    cursors = _cursors(db)
    assert cursors[a, convs[a, b]] == (3, 0) and cursors[b, convs[a, b]] == (3, 0)
    assert sum(d for d, _r in cursors.values()) == 2 * len(cursors) + 2


def test_sessions_ending_at_once_write_their_cursors_together(db: Database) -> None:
    """A node whose clients are all cut off at once: their cursors go in one
    transaction (one statement), not one each, and each is right."""
    users, convs = _pairs(db, 12)
    sessions, peers = _classic_sessions(db, users, convs)
    for u in users:
        for v in users:
            if v != u:
                assert sessions.offer(u, convs[u, v], 1, b'{"msgid":5}')
    updates = _statements(db)
    gevent.joinall([gevent.spawn(sessions.end, u, peers[u]) for u in users], raise_error=True)
    assert len(updates) <= 2  # the first alone, the eleven that came meanwhile together
    assert {k: d for k, (d, _r) in _cursors(db).items()} == {(u, convs[u, v]): 1 for u in users for v in users
                                                           if v != u}


class CountingPeer(Peer):
    """A connection that counts the flushes that look at it, and may still
    hold messages (conversation -> the lowest seq the kernel has not taken)."""

    def __init__(self) -> None:
        super().__init__()
        self.looked = 0
        self.held: dict[int, int] = {}

    def unsent(self) -> dict[int, int]:
        self.looked += 1
        return dict(self.held)


def test_a_flush_looks_only_at_the_sessions_that_moved(db: Database) -> None:
    """Idle sessions cost a flush nothing: only those whose tracks moved
    since the flush before are looked at (and their cursors written)."""
    users, convs = _pairs(db, 6)
    sessions, peers = _classic_sessions(db, users, convs, CountingPeer)
    sessions.flush()  # the logins: every session once
    assert [p.looked for p in peers.values()] == [1] * 6
    sessions.flush()
    sessions.flush()
    assert [p.looked for p in peers.values()] == [1] * 6
    a, b = users[0], users[1]
    sessions.offer(b, convs[a, b], 1, b'{"msgid":5}')
    sessions.own(a, convs[a, b], 1)
    sessions.flush()
    assert [p.looked for p in peers.values()] == [2, 2, 1, 1, 1, 1]
    assert _cursors(db)[b, convs[a, b]] == (1, 0) and _cursors(db)[a, convs[a, b]] == (1, 0)


def test_a_cursor_held_back_by_the_connection_is_written_once_the_kernel_took_it(db: Database) -> None:
    """A message still queued at a flush holds its cursor back; nothing else
    happens to the session afterwards, yet the next flush writes it."""
    users, convs = _pairs(db, 3)
    sessions, peers = _classic_sessions(db, users, convs, CountingPeer)
    sessions.flush()
    a, b = users[0], users[1]
    conv = convs[a, b]
    for seq in (1, 2, 3):
        sessions.offer(b, conv, seq, b'{"msgid":5}')
    peers[b].held = {conv: 2}  # seq 1 written to the kernel, 2 and 3 queued
    sessions.flush()
    assert _cursors(db)[b, conv] == (1, 0)
    peers[b].held = {}
    sessions.flush()
    assert _cursors(db)[b, conv] == (3, 0)
    looked = peers[b].looked
    sessions.flush()  # all written: the session is idle again
    assert peers[b].looked == looked


def test_a_failed_write_is_tried_again_at_the_next_flush(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    users, convs = _pairs(db, 3)
    sessions, _ = _classic_sessions(db, users, convs, CountingPeer)
    sessions.flush()
    a, b = users[0], users[1]
    sessions.offer(b, convs[a, b], 1, b'{"msgid":5}')
    real = convlog.set_delivered

    def down(*_: Any) -> None:
        raise Unavailable("database unavailable")

    monkeypatch.setattr(convlog, "set_delivered", down)
    sessions.flush()
    assert _cursors(db)[b, convs[a, b]] == (0, 0)
    monkeypatch.setattr(convlog, "set_delivered", real)
    sessions.flush()
    assert _cursors(db)[b, convs[a, b]] == (1, 0)


def test_a_session_ended_before_its_flush_loses_nothing(db: Database) -> None:
    """Delivered and ended between two flushes: end writes the cursor, and a
    later flush does not look at the gone session."""
    users, convs = _pairs(db, 3)
    sessions, peers = _classic_sessions(db, users, convs, CountingPeer)
    sessions.flush()
    a, b = users[0], users[1]
    sessions.offer(b, convs[a, b], 1, b'{"msgid":5}')
    sessions.offer(b, convs[a, b], 2, b'{"msgid":5}')
    sessions.end(b, peers[b])
    assert _cursors(db)[b, convs[a, b]] == (2, 0)
    looked = peers[b].looked
    sessions.flush()
    assert peers[b].looked == looked


def test_behind_of_lists_the_conversations_after_the_delivered_cursor_only(db: Database) -> None:
    """The sweep's question (convlog.behind_of): of the users asked, each
    conversation whose last_seq is past the user's delivered cursor, on
    MariaDB and SQLite."""
    users, convs = _pairs(db, 4)
    a, b, c, d = users
    with db.transaction() as s:
        s.execute(update(Conversation).where(Conversation.id.in_([convs[a, b], convs[c, d]])).values(last_seq=3))
        convlog.set_delivered(s, [(a, convs[a, b], 3), (b, convs[a, b], 2)])
    with db.transaction() as s:
        assert convlog.behind_of(s, []) == []
        got = sorted(convlog.behind_of(s, [a, b, c]))
    assert got == sorted([(b, convs[a, b], 2, 3), (c, convs[c, d], 0, 3)])  # not a (had it), not d (not asked)


def test_a_new_conversations_first_answer_is_pushed_without_reading_the_log_for_the_users_own_message(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation made after a logged in: a sends 1 (its own: no track
    yet), the other answers 2. a's session starts the track at a's cursor
    when 2 comes, with 1 had: 2 is pushed, 1 is not, the cursor ends at 2,
    and the log is not read for 1 (at a node's start, every new
    conversation's first answer read it: a quarter of the node's CPU)."""
    users, convs = _pairs(db, 2)
    a = users[0]
    sessions, peers = _classic_sessions(db, users, convs)
    with db.transaction() as s:
        third = store.create_user(s, "u2", "x")
        conv = convlog.create_pair(s, a, third)
    sessions.begin(third, Peer(), sync=False)
    sessions.open(third, {})
    read: list[tuple[int, int, int]] = []
    real = sessions._read_pages

    def counted(keys: list[tuple[int, int, int]]) -> list[list[convlog.Logged]]:
        read.extend(keys)
        return real(keys)

    monkeypatch.setattr(sessions._pages, "_run", counted)
    sessions.own(a, conv, 1)
    assert sessions.offer(a, conv, 2, b'{"msgid":5,"msg":"two"}')
    deadline = gevent.Timeout(5)
    with deadline:
        while conv in sessions.get(a).repairing:  # type: ignore[union-attr]
            gevent.sleep(0.01)
    assert peers[a].pushed == [(conv, 2)]
    assert read == []
    sessions.flush()
    assert _cursors(db)[a, conv] == (2, 0)


def test_the_tracks_of_many_new_conversations_start_from_cursors_read_together(db: Database) -> None:
    """Ten users each get a first message in a conversation made after they
    logged in (a node's start, when every session's conversations are new
    to it): their delivered cursors are read in one or two queries, not one
    each, and every message is pushed to its user once."""
    users, convs = _pairs(db, 1)
    sessions, _ = _classic_sessions(db, users, convs)
    with db.transaction() as s:
        sender = store.create_user(s, "sender", "x")
        others = [store.create_user(s, f"r{i}", "x") for i in range(10)]
        new = {u: convlog.create_pair(s, sender, u) for u in others}
    peers = {}
    for u in others:
        peers[u] = Peer()
        sessions.begin(u, peers[u], sync=False)
        sessions.open(u, {})
    reads: list[str] = []

    def before(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "convcursor" in statement:
            reads.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    for u in others:
        assert sessions.offer(u, new[u], 1, b'{"msgid":5,"msg":"one"}')
    with gevent.Timeout(5):
        while any(new[u] in sessions.get(u).repairing for u in others):  # type: ignore[union-attr]
            gevent.sleep(0.01)
    assert {u: p.pushed for u, p in peers.items()} == {u: [(new[u], 1)] for u in others}
    assert 1 <= len(reads) <= 2
