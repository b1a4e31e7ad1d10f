"""The log writer's fast path on MariaDB (gchat/writer.py, convlog.FastSql):
its statements go to the driver in one round trip, the values bound by the
driver's rules, on a connection of the writer's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select

from gchat import convlog, schema, store
from gchat.convlog import render
from gchat.errors import Conflict
from gchat.models import Conversation, Message
from gchat.protocol import Errno, ProtocolError, loads
from gchat.store import Database
from gchat.writer import LogWriter, Outgoing, Written
from tests.conftest import database_url


def test_render_binds_ints_and_strings_and_refuses_anything_else() -> None:
    assert render("VALUES (%s, %s)", [12, "it's \\ 100%"]) == "VALUES (12, 'it\\'s \\\\ 100%')"
    for bad in (True, 1.5, None, b"x"):
        with pytest.raises(TypeError):
            render("VALUES (%s)", [bad])


ODD = ["it's \"quoted\"", "back\\slash \\n not a newline", "nul \0 and \x1a", "%s %(x)s %%", "emoji \U0001f600 é",
       "'); DROP TABLE message; --"]



def _store_url(backend: str, mariadb, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A fresh store at head: a SQLite file, or a MariaDB database."""
    url = database_url(backend, mariadb, tmp_path)
    if backend == "sqlite":
        schema.upgrade(Database(url))
    return url

@contextmanager
def two_writers_on_a_pair(url: str) -> Iterator[tuple[int, int, LogWriter, LogWriter, Database]]:
    """Users a and b, and two writers on their own Database each, as two
    nodes have: (a, b, one, two, one's Database)."""
    db_a, db_b = Database(url), Database(url)
    try:
        with db_a.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
        one, two = LogWriter(db_a), LogWriter(db_b)
        yield a, b, one, two, db_a
        one.close()
        two.close()
    finally:
        db_a.dispose()
        db_b.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_odd_message_texts_are_stored_and_delivered_exactly_as_sent(backend, mariadb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = _store_url(backend, mariadb, tmp_path)
    db = Database(url)
    delivered: list[bytes] = []

    def deliver(batch: list[Written], _told: bool) -> list[int]:  # one call per committed batch
        delivered.extend(w.body for w in batch)
        return [1] * len(batch)

    try:
        with db.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
        writer = LogWriter(db, deliver)
        first = [writer.submit(Outgoing(a, {"msgid": 5, "msg": text}, to=b)) for text in ODD]
        writer.append(Outgoing(a, {"msgid": 5, "msg": "warm"}, to=b))
        # the conversation is known now: these take the fast path
        second = [writer.submit(Outgoing(b, {"msgid": 5, "msg": text}, to=a)) for text in ODD]
        written = [writer.result(p)[0] for p in first + second]
        with db.transaction() as s:
            stored = convlog.messages_between(s, written[0].conv, 0)
        assert [loads(m.body)["msg"] for m in stored] == ODD + ["warm"] + ODD
        assert [m.seq for m in stored] == list(range(1, 2 * len(ODD) + 2))
        assert [m.body.encode() for m in stored] == delivered
        assert [w.seq for w in written] == [m.seq for m in stored if loads(m.body)["msg"] != "warm"]
        writer.close()
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_two_writers_taking_turns_on_one_conversation_keep_one_gap_free_order(backend, mariadb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two nodes' writers on one pair: each one's fast path expects the
    conversation where it last left it, finds it moved by the other (the
    checking UPDATE matches nothing and its INSERT hits the other's numbers),
    rolls back and numbers under the lock instead. No gap, no duplicate."""
    with two_writers_on_a_pair(_store_url(backend, mariadb, tmp_path)) as (a, b, one, two, db):
        seqs = []
        for i in range(12):
            writer = one if i % 3 else two  # runs of two on one writer, then a turn on the other
            w, _ = writer.append(Outgoing(a if i % 2 else b, {"msgid": 5, "msg": f"m{i}"}, to=b if i % 2 else a))
            seqs.append(w.seq)
        assert seqs == list(range(1, 13))
        with db.transaction() as s:
            stored = convlog.messages_between(s, w.conv, 0)
        assert [loads(m.body)["msg"] for m in stored] == [f"m{i}" for i in range(12)]


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_a_message_to_a_group_deleted_meanwhile_is_refused_and_the_rest_of_its_batch_written(
        backend, mariadb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """gchat-admin deletes the group's last member, and with it the group
    and its conversation row, while this writer has the conversation
    cached: a batch naming it refuses that message (errno 7) and writes the
    others."""
    url = _store_url(backend, mariadb, tmp_path)
    db = Database(url)
    try:
        with db.transaction() as s:
            a, b, c = (store.create_user(s, name, "x") for name in "abc")
            gid = store.create_group(s, "g", "", c)
            convlog.create_group_conversation(s, gid, c)
        writer = LogWriter(db)
        assert writer.append(Outgoing(c, {"msgid": 9, "msg": "warm"}, group=gid))[0].seq == 1
        assert writer.append(Outgoing(a, {"msgid": 5, "msg": "warm"}, to=b))[0].seq == 1
        with db.transaction() as s:
            assert store.delete_users(s, [c])["groups"] == 1
        # one batch: submitted before the writer runs
        gone = writer.submit(Outgoing(c, {"msgid": 9, "msg": "to nobody"}, group=gid))
        pair = writer.submit(Outgoing(a, {"msgid": 5, "msg": "still here"}, to=b))
        with pytest.raises(ProtocolError) as refused:
            writer.result(gone)
        assert (refused.value.errno, refused.value.errmsg) == (Errno.NOT_FOUND, f"no group {gid}")
        w, _ = writer.result(pair)
        with db.transaction() as s:
            stored = convlog.messages_between(s, w.conv, 0)
        assert [(m.seq, loads(m.body)["msg"]) for m in stored] == [(1, "warm"), (2, "still here")]
        # the group is looked up again, and is not there
        with pytest.raises(LookupError):
            writer.submit(Outgoing(a, {"msgid": 9, "msg": "again"}, group=gid))
        writer.close()
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_a_batch_whose_insert_fails_commits_nothing(backend, mariadb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The locking path sends its UPDATE, INSERT and COMMIT in one query on
    MariaDB: an INSERT that fails (here a row already holding the number,
    never expected) must leave the COMMIT unsent, last_seq where it was,
    and the writer's connection usable for the next batch."""
    url = _store_url(backend, mariadb, tmp_path)
    db = Database(url)
    try:
        with db.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
            conv = convlog.create_pair(s, a, b)
            s.execute(insert(Message), [{"conversation_id": conv, "seq": 1, "sender": a, "created": 0,
                                         "body": "in the way", "kind": convlog.CHAT}])
        writer = LogWriter(db)  # knows nothing of the conversation: the locking path
        with pytest.raises(Conflict):
            writer.append(Outgoing(a, {"msgid": 5, "msg": "blocked"}, to=b))
        with db.transaction() as s:
            assert s.scalar(select(Conversation.last_seq).where(Conversation.id == conv)) == 0
            s.execute(delete(Message).where(Message.conversation_id == conv))
        w, _ = writer.append(Outgoing(a, {"msgid": 5, "msg": "through"}, to=b))
        assert (w.conv, w.seq) == (conv, 1)
        with db.transaction() as s:
            assert [loads(m.body)["msg"] for m in convlog.messages_between(s, conv, 0)] == ["through"]
        writer.close()
    finally:
        db.dispose()


def test_a_conversation_locked_by_another_node_does_not_hold_up_a_batch_of_another(mariadb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Another node's writer holds conversation Y's row (its batch not yet
    committed). This node's fast path for conversation X alone must lock X
    only: a checking UPDATE that scanned the whole key (as
    `(id, last_seq, member_epoch) IN ((x, ...))` alone does on MariaDB) waited
    for Y, and two nodes doing so deadlocked."""
    url = _store_url("mariadb", mariadb, tmp_path)
    db, other = Database(url), Database(url)
    released: list[bool] = []
    try:
        with db.transaction() as s:
            a, b, c, d = (store.create_user(s, n, "x") for n in "abcd")
        writer = LogWriter(db)
        x = writer.append(Outgoing(a, {"msgid": 5, "msg": "x1"}, to=b))[0].conv
        y = writer.append(Outgoing(c, {"msgid": 5, "msg": "y1"}, to=d))[0].conv
        holder = other.engine.connect()
        tx = holder.begin()
        holder.execute(select(Conversation.id).where(Conversation.id == y).with_for_update())

        def release() -> None:  # the wait would otherwise last innodb_lock_wait_timeout (50 s)
            released.append(True)
            tx.rollback()

        timer = threading.Timer(10.0, release)
        timer.start()
        try:
            w, _ = writer.append(Outgoing(b, {"msgid": 5, "msg": "x2"}, to=a))
        finally:
            timer.cancel()
        assert not released, "the batch for X waited for Y's lock"
        assert (w.conv, w.seq) == (x, 2)
        if tx.is_active:
            tx.rollback()
        holder.close()
        writer.close()
    finally:
        db.dispose()
        other.dispose()
