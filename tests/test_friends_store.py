"""The store side of section F on SQLite and MariaDB: a deleted user leaves
no friend request or block behind (for gchat-admin delete-user), and the
search's pattern takes names literally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from gchat import schema, store
from gchat.models import Block, FriendRequest, User
from gchat.store import Database


@pytest.fixture(params=["sqlite", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        d = Database(f"sqlite:///{tmp_path / 's.db'}")
        schema.upgrade(d)
    else:
        d = Database(request.getfixturevalue("mariadb").create())
    yield d
    d.dispose()


def users(db: Database, *names: str) -> list[int]:
    with db.transaction() as s:
        return [store.create_user(s, n, "x") for n in names]


def counts(db: Database) -> tuple[int, int]:
    with db.transaction() as s:
        return (s.scalar(select(func.count()).select_from(FriendRequest)) or 0,
                s.scalar(select(func.count()).select_from(Block)) or 0)


def test_delete_social_reports_and_removes_requests_and_blocks_both_ways(db: Database) -> None:
    a, b, c = users(db, "a", "b", "c")
    with db.transaction() as s:
        store.add_request(s, a, b, "", 0)
        store.add_request(s, c, a, "", 0)
        store.add_block(s, b, a)
        store.add_block(s, b, c)
    with db.transaction() as s:
        # the block dropped a's request to b; c's request to a remains
        assert store.delete_social(s, [a]) == {"requests": 1, "blocks": 1}
    assert counts(db) == (0, 1)


def test_deleting_a_user_row_cascades_to_requests_and_blocks(db: Database) -> None:
    a, b = users(db, "a", "b")
    with db.transaction() as s:
        store.add_block(s, b, a)
        store.add_request(s, b, a, "hi", 0)
    assert counts(db) == (1, 1)
    with db.transaction() as s:
        s.execute(delete(User).where(User.id == a))
    assert counts(db) == (0, 0)


def test_search_takes_wildcards_literally_and_ignores_case(db: Database) -> None:
    users(db, "Ann_1", "ann%2", "annie", "bob")
    with db.transaction() as s:
        assert [n for _, n in store.search_users(s, "ANN", 0, 10)] == ["Ann_1", "ann%2", "annie"]
        assert [n for _, n in store.search_users(s, "ann_", 0, 10)] == ["Ann_1"]
        assert [n for _, n in store.search_users(s, "ann%", 0, 10)] == ["ann%2"]
        assert [n for _, n in store.search_users(s, "ann", 1, 1)] == ["ann%2"]
