"""The writer's queries on the MySQL wire itself (gchat/sqlwire.py), against
the real MariaDB: OK packets (one, or a multi-statement query's several),
an answer that comes a byte at a time, ERR packets raised as PyMySQL's own
errors, a connection the server closed, and the TLS guard (a TLS
connection's queries stay PyMySQL's)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

from gchat import convlog, sqlwire, store
from gchat.writer import MULTI_STATEMENTS, NO_BACKSLASH_ESCAPES, LogWriter, Outgoing
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER


@pytest.fixture
def raw(mariadb: Any) -> Iterator[pymysql.connections.Connection]:
    """A PyMySQL connection as the writer's (several statements a query,
    found rows counted, read and write timeouts), on a fresh database with
    a table t(id primary key, v)."""
    url = mariadb.create()
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                           database=url.rsplit("/", 1)[1].split("?")[0], autocommit=False,
                           client_flag=MULTI_STATEMENTS | pymysql.constants.CLIENT.FOUND_ROWS,
                           read_timeout=10, write_timeout=10)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
    yield conn
    conn.close()


def _rows(conn: pymysql.connections.Connection) -> list[tuple[int, int]]:
    with conn.cursor() as cur:
        cur.execute("SELECT id, v FROM t ORDER BY id")
        return [(int(i), int(v)) for i, v in cur.fetchall()]


def test_a_multi_statement_query_answers_its_first_count_and_commits(raw: Any) -> None:
    wire = sqlwire.Wire(raw)
    assert wire.usable
    n = wire.query("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3); UPDATE t SET v = 9 WHERE id = 1; COMMIT")
    assert n == 3
    # found rows (FOUND_ROWS), not changed ones: the writer's UPDATE counts matches
    assert wire.query("UPDATE t SET v = v WHERE id IN (1, 2)") == 2
    raw.rollback()
    assert _rows(raw) == [(1, 9), (2, 2), (3, 3)]
    # the compound statement of the fast path: one OK packet
    wire.query("BEGIN NOT ATOMIC UPDATE t SET v = 5 WHERE id = 2; COMMIT; END")
    assert _rows(raw) == [(1, 9), (2, 5), (3, 3)]
    # PyMySQL's own queries go on after ours on the same connection
    with raw.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchall() == ((1,),)
    assert sqlwire.Wire.for_(raw, wire) is wire


def test_a_query_longer_than_a_packet_goes_through_the_cursor_every_result_read(
        raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query that would not fit one packet is PyMySQL's to send: its
    first count answered, and its later results read with it, so that a
    statement failing after the first (the INSERT after the UPDATE) fails
    this query, not the next one on the connection."""
    monkeypatch.setattr(sqlwire, "MAX_PACKET", 16)
    wire = sqlwire.Wire(raw)
    assert wire.query("INSERT INTO t VALUES (1, 1), (2, 2); UPDATE t SET v = 7 WHERE id = 2; COMMIT") == 2
    with pytest.raises(pymysql.err.IntegrityError):
        wire.query("UPDATE t SET v = 8 WHERE id = 1; INSERT INTO t VALUES (1, 3); COMMIT")
    raw.rollback()
    assert _rows(raw) == [(1, 1), (2, 7)]


def test_a_result_set_is_read_where_the_caller_takes_rows(raw: Any) -> None:
    """The fast path's compound statement answers the rows it locked when a
    conversation moved: a result set of ints (NULL as None), then the
    compound's own OK packet."""
    wire = sqlwire.Wire(raw)
    wire.query("INSERT INTO t VALUES (1, 10), (2, 20), (3, 300000); COMMIT")
    branch = ("BEGIN NOT ATOMIC UPDATE t SET v = v + 1 WHERE id IN (1, 2) AND (id, v) IN ((1, 10), (2, {v})); "
              "IF ROW_COUNT() <> 2 THEN ROLLBACK; SELECT id, v, NULL FROM t WHERE id IN (1, 2, 3) ORDER BY id "
              "FOR UPDATE; ELSE COMMIT; END IF; END")
    sets: list[sqlwire.Rows] = []
    wire.query(branch.format(v=20), sets)  # both matched: committed, no rows
    assert sets == []
    assert _rows(raw) == [(1, 11), (2, 21), (3, 300000)]
    wire.query(branch.format(v=99), sets)  # one moved: rolled back, the rows read (and locked)
    assert sets == [[(1, 11, None), (2, 21, None), (3, 300000, None)]]
    raw.rollback()
    assert _rows(raw) == [(1, 11), (2, 21), (3, 300000)]
    # a result set of no rows is still one
    wire.query("BEGIN NOT ATOMIC SELECT id, v FROM t WHERE id = 9; END", sets)
    assert sets[1:] == [[]]
    # through the cursor (a TLS connection's path), the same
    through: list[sqlwire.Rows] = []
    sqlwire.through_cursor(raw, branch.format(v=99), through)
    assert through == [[(1, 11, None), (2, 21, None), (3, 300000, None)]]
    raw.rollback()


def test_the_server_status_is_read_from_every_answer(raw: Any) -> None:
    """The writer quotes by the connection's sql_mode (NO_BACKSLASH_ESCAPES
    in server_status): a mode set by a query on the wire shows there."""
    wire = sqlwire.Wire(raw)
    assert not raw.server_status & NO_BACKSLASH_ESCAPES
    wire.query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
    assert raw.server_status & NO_BACKSLASH_ESCAPES


class _Trickle:
    """A socket that gives at most one byte a read: every packet of an
    answer arrives split, its header too."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        return self._sock.recv(1)

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def __getattr__(self, name: str) -> Any:
        if name in ("pending", "_wait"):  # not TLS's; no wait first: recv blocks
            raise AttributeError(name)
        return getattr(self._sock, name)


def test_an_answer_split_across_reads_is_read_whole(raw: Any) -> None:
    real = raw._sock
    raw._sock = _Trickle(real)
    try:
        wire = sqlwire.Wire(raw)
        assert wire.query("INSERT INTO t VALUES (1, 1), (2, 2); UPDATE t SET v = 3; COMMIT") == 2
        with pytest.raises(pymysql.err.IntegrityError) as e:
            wire.query("INSERT INTO t VALUES (1, 1)")
        assert e.value.args[0] == 1062
        sets: list[sqlwire.Rows] = []
        wire.query("BEGIN NOT ATOMIC SELECT id, v FROM t ORDER BY id; END", sets)
        assert sets == [[(1, 3), (2, 3)]]
    finally:
        raw._sock = real
    raw.rollback()
    assert _rows(raw) == [(1, 3), (2, 3)]


def test_an_err_packet_is_raised_as_pymysqls_error_and_runs_nothing_after(raw: Any) -> None:
    wire = sqlwire.Wire(raw)
    with pytest.raises(pymysql.err.ProgrammingError) as syntax:
        wire.query("INSERT INTO t VALUES (1, 1); NOT SQL; INSERT INTO t VALUES (2, 2)")
    assert syntax.value.args[0] == 1064
    raw.rollback()
    # a signal inside a compound statement, as the fast path's is
    with pytest.raises(pymysql.err.MySQLError) as signal:
        wire.query("BEGIN NOT ATOMIC UPDATE t SET v = 1 WHERE id = 7; IF ROW_COUNT() <> 1 THEN "
                   "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'short'; END IF; INSERT INTO t VALUES (7, 7); "
                   "COMMIT; END")
    assert signal.value.args == (1644, "short")
    raw.rollback()
    assert _rows(raw) == []
    # the connection is still sound, for the wire and for PyMySQL
    assert raw.open
    assert wire.query("INSERT INTO t VALUES (3, 3); COMMIT") == 1
    assert _rows(raw) == [(3, 3)]


def test_a_connection_the_server_closed_is_a_lost_connection(raw: Any) -> None:
    """Killed by the server (a restart, wait_timeout): the error is
    PyMySQL's OperationalError that SQLAlchemy calls a disconnect, and the
    connection is closed (PyMySQL refuses it from then on)."""
    wire = sqlwire.Wire(raw)
    admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD)
    with admin.cursor() as cur:
        cur.execute(f"KILL {int(raw.thread_id())}")
    admin.close()
    with pytest.raises(pymysql.err.OperationalError) as e:
        wire.query("INSERT INTO t VALUES (1, 1); COMMIT")
    assert e.value.args[0] in (sqlwire.CR_SERVER_LOST, sqlwire.CR_SERVER_GONE_ERROR)
    dialect = MySQLDialect_pymysql(dbapi=pymysql)  # type: ignore[call-arg]
    assert dialect.is_disconnect(e.value, None, None)
    assert not raw.open
    with pytest.raises(pymysql.err.InterfaceError):  # as PyMySQL's own query would
        wire.query("COMMIT")


def test_a_socket_closed_here_is_a_lost_connection(raw: Any) -> None:
    wire = sqlwire.Wire(raw)
    raw._sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(pymysql.err.OperationalError) as e:
        wire.query("COMMIT")
    assert e.value.args[0] in (sqlwire.CR_SERVER_LOST, sqlwire.CR_SERVER_GONE_ERROR)
    assert not raw.open


def test_an_answer_with_rows_is_refused_and_the_connection_dropped(raw: Any) -> None:
    """A result set is not an answer the writer's queries have: the
    connection is out of step, closed rather than read on."""
    wire = sqlwire.Wire(raw)
    with pytest.raises(pymysql.err.InternalError):
        wire.query("SELECT 1")
    assert not raw.open


def test_a_tls_connection_keeps_pymysqls_path(mariadb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test MariaDB offers no TLS: the writer's connection is marked as
    PyMySQL marks one that is (`_secure`), and its batches (the fast path's
    and the locking path's) must not touch the wire."""
    db = store.Database(mariadb.create())
    try:
        with db.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
        writer = LogWriter(db)
        writer.append(Outgoing(a, {"msg": "on the wire"}, to=b))  # opens the connection
        assert writer._wire is not None and writer._wire.usable
        assert writer._conn is not None
        raw = writer._conn.connection.dbapi_connection
        raw._secure = True  # type: ignore[union-attr]
        writer._wire = None  # made again for the connection: TLS is known from its handshake on

        def refused(self: sqlwire.Wire, sql: str, sets: Any = None) -> int:
            raise AssertionError("a TLS connection's query went on the wire")

        monkeypatch.setattr(sqlwire.Wire, "query", refused)
        fast = writer.counts.batches_fast
        second, _ = writer.append(Outgoing(a, {"msg": "through PyMySQL"}, to=b))
        assert writer.counts.batches_fast == fast + 1
        writer._contested.add(second.conv)  # the locking path next
        third, _ = writer.append(Outgoing(b, {"msg": "locked"}, to=a))
        assert writer._wire is not None and not writer._wire.usable
        assert third.seq == second.seq + 1
        with db.transaction() as s:
            assert [m.seq for m in convlog.messages_between(s, second.conv, 0)][-2:] == [second.seq, third.seq]
        writer.close()
    finally:
        db.dispose()


_DEADLINE = """
from gevent import monkey; monkey.patch_all()
import sys, time
import gevent, pymysql
from gchat import sqlwire
host, port, user, password, db = sys.argv[1:6]
def connect():
    return pymysql.connect(host=host, port=int(port), user=user, password=password, database=db,
                           read_timeout=1, write_timeout=1, client_flag=1 << 16)
quick = sqlwire.Wire(connect())
assert quick.reads._wait is not None  # gevent's socket: the wire's own deadline
for _ in range(3):
    quick.query("DO 1")
gevent.sleep(1.5)  # a deadline left running would fire into nothing, or into the next wait
quick.query("DO 1")
monkey.get_original("time", "sleep")(1.5)  # the loop held past the timeout: its time is behind
quick.query("DO SLEEP(0.3)")  # answered in time, counted from now
for _ in range(5):  # waits that add up to more than the timeout, each well within it
    quick.query("DO SLEEP(0.3)")
slow = sqlwire.Wire(connect())
began = time.monotonic()
try:
    slow.query("DO SLEEP(4)")
except pymysql.err.OperationalError as e:
    print(e.args[0], round(time.monotonic() - began, 1), slow.raw.open)
"""


def test_an_answer_later_than_the_read_timeout_is_a_lost_connection_under_gevent(mariadb: Any) -> None:
    """In a node (gevent's sockets) the wire waits under its own timer, not
    gevent's Timeout: the read timeout still ends a query the server does
    not answer (a lost connection, closed), a query answered in time leaves
    no deadline behind, one sent after the loop was held past the timeout
    is timed from when it was sent, and waits that add up to more than the
    timeout, each within it, are each timed afresh (libev's stop and start
    of one timer resume it: it fired once they added up)."""
    url = mariadb.create()
    db = url.rsplit("/", 1)[1].split("?")[0]
    out = subprocess.run([sys.executable, "-c", _DEADLINE, MYSQL_HOST, str(MYSQL_PORT), MYSQL_USER,
                          MYSQL_PASSWORD, db], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    errno, took, still_open = out.stdout.split()
    assert int(errno) == sqlwire.CR_SERVER_LOST
    assert 0.9 <= float(took) < 3.0  # the 1 s read timeout, not the 4 s sleep
    assert still_open == "False"
