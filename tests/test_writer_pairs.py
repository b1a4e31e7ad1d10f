"""The first message of a pair finds (or makes) its conversation together
with the other readers' that wait meanwhile (LogWriter.pair): one query and
at most one transaction for a burst of new pairs, not two transactions each
queued for the pool (on a fresh database at 1,000/s their first messages
waited hundreds of ms). A pair another node made meanwhile is found, never
made twice."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import pytest
from sqlalchemy import func, select

from gchat import convlog, store
from gchat.models import Conversation, Cursor
from gchat.store import Database
from gchat.writer import LogWriter
from tests.test_writer import _store_url


@contextmanager
def counted(db: Database) -> Iterator[list[int]]:
    """How many transactions db opened meanwhile (a one-item list)."""
    count = [0]
    real = db.transaction

    def transaction(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(*args, **kwargs)

    db.transaction = transaction  # type: ignore[method-assign]
    try:
        yield count
    finally:
        db.transaction = real  # type: ignore[method-assign]


@pytest.fixture(params=["sqlite", "mariadb"])
def users(request: Any, mariadb: Any, tmp_path: Any) -> Iterator[tuple[str, list[int]]]:
    url = _store_url(request.param, mariadb, tmp_path)
    db = Database(url)
    with db.transaction() as s:
        ids = [store.create_user(s, f"u{i}", "x") for i in range(40)]
    db.dispose()
    yield url, ids


def _pairs(db: Database) -> dict[tuple[int, int], int]:
    with db.transaction() as s:
        q = select(Conversation.id, Conversation.user_lo, Conversation.user_hi).where(Conversation.kind == convlog.PAIR)
        return {(lo, hi): conv for conv, lo, hi in s.execute(q)}


def test_a_burst_of_new_pairs_takes_one_lookup_and_one_transaction(users: tuple[str, list[int]]) -> None:
    url, ids = users
    db = Database(url)
    writer = LogWriter(db)
    try:
        # 20 pairs; both users of each send their first message at once
        calls = [(ids[i], ids[i + 20]) for i in range(20)] + [(ids[i + 20], ids[i]) for i in range(20)]
        with counted(db) as count:
            jobs = [gevent.spawn(writer.pair, a, b) for a, b in calls]
            gevent.joinall(jobs, raise_error=True)
        # the first caller's batch alone, then everyone who queued meanwhile
        # together: two lookups, at most two creations; never 2 per pair
        assert count[0] <= 4, count[0]
        got = [job.value for job in jobs]
        stored = _pairs(db)
        assert len(stored) == 20  # one conversation per pair, both directions the same
        for (a, b), conv in zip(calls, got, strict=True):
            assert stored[convlog.pair_key(a, b)] == conv
        with db.transaction() as s:
            cursors = s.scalar(select(func.count()).select_from(Cursor))
        assert cursors == 40  # both users' cursors, each once
        with counted(db) as count:
            assert writer.pair(ids[0], ids[20]) == got[0]
        assert count[0] == 0  # known from then on
    finally:
        writer.close()
        db.dispose()


def test_a_pair_another_node_made_meanwhile_is_found_not_made_again(
        users: tuple[str, list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup misses a pair that another node then makes: the batch's
    creation fails on the unique key, and each pair is made or found alone;
    the other pairs of the batch still get theirs."""
    url, ids = users
    db, other = Database(url), Database(url)
    writer, elsewhere = LogWriter(db), LogWriter(other)
    try:
        raced = elsewhere.pair(ids[0], ids[1])  # made "meanwhile" by another node
        real = convlog.find_pairs
        monkeypatch.setattr(convlog, "find_pairs", lambda s, keys: {})  # the lookup ran before it
        jobs = [gevent.spawn(writer.pair, a, b) for a, b in [(ids[0], ids[1]), (ids[2], ids[3]), (ids[4], ids[5])]]
        gevent.joinall(jobs, raise_error=True)
        monkeypatch.setattr(convlog, "find_pairs", real)
        assert jobs[0].value == raced
        stored = _pairs(db)
        assert len(stored) == 3
        assert [job.value for job in jobs] == [stored[convlog.pair_key(ids[i], ids[i + 1])] for i in (0, 2, 4)]
    finally:
        writer.close()
        elsewhere.close()
        db.dispose()
        other.dispose()
