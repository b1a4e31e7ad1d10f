"""Settings: the database URL a node and gchat-admin hand to SQLAlchemy."""

from __future__ import annotations

import argparse

import pytest

from gchat import config
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


def test_the_resume_token_ttl_is_a_setting() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    assert config.from_sources(parser.parse_args(["--resume-ttl", "60"]), {}).resume_ttl == 60
    assert config.from_sources(None, {"GCHAT_RESUME_TTL": "90"}).resume_ttl == 90
    assert config.from_sources(None, {}).resume_ttl == 24 * 3600
