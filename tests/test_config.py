"""Settings: the database URL a node and gchat-admin hand to SQLAlchemy."""

from __future__ import annotations

import pytest

from gchat.config import Settings


@pytest.mark.parametrize(("given", "used"), [
    # MySQL and MariaDB go through PyMySQL (pure Python: it yields under gevent), in utf8mb4
    ("mysql://u:pw@db/chat", "mysql+pymysql://u:pw@db/chat?charset=utf8mb4"),
    ("mariadb://u@db:3307/chat", "mysql+pymysql://u@db:3307/chat?charset=utf8mb4"),
    ("mariadb+pymysql://u@db/chat?connect_timeout=3", "mysql+pymysql://u@db/chat?charset=utf8mb4&connect_timeout=3"),
    ("mysql+pymysql://u:p%40ss@db/chat", "mysql+pymysql://u:p%40ss@db/chat?charset=utf8mb4"),
    # a charset the operator chose is kept; other databases are left alone
    ("mysql://u@db/chat?charset=latin1", "mysql+pymysql://u@db/chat?charset=latin1"),
    ("sqlite:///gchat.db", "sqlite:///gchat.db"),
    ("postgresql://u:pw@db/chat", "postgresql://u:pw@db/chat"),
])
def test_sqlalchemy_url_picks_pymysql_and_utf8mb4(given: str, used: str) -> None:
    assert Settings(database_url=given).sqlalchemy_url == used
