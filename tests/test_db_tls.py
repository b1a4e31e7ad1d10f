"""TLS to MySQL/MariaDB (store.Tls, the database_tls setting): one TLS
context per engine, not one per connection as PyMySQL builds on its own;
no TLS to a database on this host by default; `required` never falls back
to plain. The test MariaDB offers no TLS."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest
from sqlalchemy import text

from gchat.errors import Unavailable
from gchat.store import Database, tls_mode


@pytest.mark.parametrize(("url", "mode"), [
    ("mysql+pymysql://u:p@127.0.0.1:3306/chat", "off"),
    ("mysql+pymysql://u:p@127.1.2.3/chat", "off"),
    ("mysql+pymysql://u:p@localhost/chat", "off"),
    ("mysql+pymysql://u:p@[::1]:3306/chat", "off"),
    ("mysql+pymysql://u:p@/chat?unix_socket=/run/mysqld/mysqld.sock", "off"),
    ("mysql+pymysql://u:p@10.0.0.7:3306/chat", "preferred"),
    ("mysql+pymysql://u:p@db.example.org/chat", "preferred"),
])
def test_auto_is_off_on_this_host_only(url: str, mode: str) -> None:
    assert tls_mode(url, "auto") == mode
    for given in ("preferred", "required", "off"):
        assert tls_mode(url, given) == given
    with pytest.raises(ValueError):
        tls_mode(url, "maybe")


@pytest.fixture
def contexts(monkeypatch: pytest.MonkeyPatch) -> list[ssl.SSLContext]:
    """Every TLS context built from now on (PyMySQL's and ours)."""
    made: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kw: Any) -> ssl.SSLContext:
        made.append(real(*args, **kw))
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    return made


def _open(db: Database, n: int) -> None:
    """n connections opened at once, each used."""
    conns = [db.engine.connect() for _ in range(n)]
    for c in conns:
        assert c.execute(text("SELECT 1")).scalar() == 1
    for c in conns:
        c.close()


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_database_on_this_host_gets_no_tls_context(mariadb: Any, contexts: list[ssl.SSLContext], mode: str) -> None:
    url = mariadb.create(migrate=False)
    contexts.clear()  # the fixture's own connection
    db = Database(url, pool_size=6, overflow=0, tls=mode)
    try:
        _open(db, 6)
    finally:
        db.dispose()
    assert contexts == []


def test_preferred_builds_one_context_and_falls_back_to_plain_once(
        mariadb: Any, contexts: list[ssl.SSLContext], caplog: pytest.LogCaptureFixture) -> None:
    url = mariadb.create(migrate=False)
    contexts.clear()  # the fixture's own connection
    caplog.set_level(logging.INFO, logger="gchat.store")
    db = Database(url, pool_size=6, overflow=0, tls="preferred")
    try:
        _open(db, 6)
        db.engine.dispose()  # a new pool: the engine remembers the server's answer
        _open(db, 6)
    finally:
        db.dispose()
    assert len(contexts) == 1  # PyMySQL alone: one per connection
    assert contexts[0].verify_mode == ssl.CERT_NONE and not contexts[0].check_hostname
    assert [r.getMessage() for r in caplog.records if "offers no TLS" in r.getMessage()] == [
        "the database offers no TLS: its connections are not encrypted (database_tls=preferred)"]


def test_required_refuses_a_database_without_tls(mariadb: Any, contexts: list[ssl.SSLContext]) -> None:
    url = mariadb.create(migrate=False)
    contexts.clear()  # the fixture's own connection
    db = Database(url, pool_size=2, overflow=0, tls="required")
    try:
        for _ in range(2):  # and again: no answer remembered that would make it plain
            with pytest.raises(Unavailable):
                with db.transaction() as s:
                    s.execute(text("SELECT 1"))
    finally:
        db.dispose()
    assert len(contexts) == 1
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname


def test_the_urls_own_tls_options_win_over_the_setting(mariadb: Any) -> None:
    """ssl_ca= in the URL asks PyMySQL for TLS with that CA: `off` must not
    turn it into a plain connection (this server offers no TLS: refused)."""
    url = mariadb.create(migrate=False) + "&ssl_ca=/etc/ssl/certs/ca-certificates.crt"
    db = Database(url, pool_size=1, overflow=0, tls="off")
    try:
        with pytest.raises(Unavailable):
            with db.transaction() as s:
                s.execute(text("SELECT 1"))
    finally:
        db.dispose()
