"""Issue 11, "under races": a user who logs in again and again while
others write to it, on SQLite and on MariaDB (where the login and the
offline INSERT once deadlocked). Prints the figures docs/robustness.md
quotes (`pytest -s`)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from gchat import convlog, store
from gchat.service import Services
from tests.support import ServerProcess, Wire, user
from tests.test_service import FakePeer, call, svc  # noqa: F401 - the fixture

SENDERS = 8
LOGINS = 25


def test_messages_to_a_user_who_logs_in_again_and_again(server: ServerProcess) -> None:
    with Wire(server.address) as w:
        receiver = w.register()
    stop = threading.Event()
    # (text, errno, delivered, when the sender read the ack)
    acks: list[tuple[str, int, str, float]] = []
    failures: list[BaseException] = []

    def send(n: int) -> None:
        try:
            w, _ = user(server.address)
            with w:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    text = f"{n}:{seq}"
                    reply = w.request({"msgid": 5, "to": receiver, "msg": text, "seq": seq})
                    assert reply["msgid"] == 11 and reply["seq"] == seq, reply
                    acks.append((text, reply["errno"], reply.get("delivered", ""), time.monotonic()))
                    time.sleep(0.001)  # a busy chat, not a flood: the receiver is one Python thread
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failures.append(e)

    # session number -> (when its login reply was read, texts it received)
    sessions: list[tuple[float, list[str]]] = []
    cuts: list[int] = []
    refused_logins: list[dict[str, Any]] = []

    def session(logout: bool) -> None:
        with Wire(server.address) as r:
            # with a resume token: the login then writes the user row (its
            # token) in the unit of work that takes the stored messages
            reply = r.request({"msgid": 1, "id": receiver, "password": "pw", "resume": True})
            replied = time.monotonic()
            if reply["errno"] == 11:  # counted, and asserted below: the user saw it
                refused_logins.append(reply)
                return
            assert reply["errno"] == 0, reply
            got = [_text(m) for m in reply.get("offlinemsg", [])]
            if logout:
                time.sleep(0.01)  # online for a moment: some messages are pushed live
                r.send({"msgid": 10, "seq": 1})
                # messages pushed while the log-out was handled follow its
                # ack; a second request's refusal follows them
                r.send({"msgid": 10, "seq": 2})
                try:
                    while (frame := r.recv()).get("seq") != 2:
                        if frame["msgid"] == 5:
                            got.append(frame["msg"])
                except ConnectionError:
                    # this thread fell 10,000 messages behind and was cut off as
                    # a slow reader: what it did not read comes at a later login
                    cuts.append(len(sessions))
            sessions.append((replied, got))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(SENDERS)]
    for t in threads:
        t.start()
    for _ in range(LOGINS):
        session(logout=True)
        time.sleep(0.02)  # offline for a moment: some messages are stored
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures
    session(logout=False)  # the last login collects whatever is left

    refused = [a for a in acks if a[1] != 0]
    received: dict[str, int] = {}
    for i, (_, texts) in enumerate(sessions):
        for text in texts:
            assert text not in received, f"{text} received twice"
            received[text] = i
    stored = [a for a in acks if a[1] == 0 and a[2] == "offline"]
    late = []  # acked as stored before a login replied, handed to a later one
    for text, _, _, acked in stored:
        due = next(i for i, (replied, _) in enumerate(sessions) if replied > acked or i == len(sessions) - 1)
        if received[text] > due:
            late.append(text)
    print(f"\n{len(acks)} messages from {SENDERS} senders to a user who logged in {LOGINS + 1} times: "
          f"{len(stored)} stored, {len(acks) - len(stored) - len(refused)} pushed live, "
          f"{len(refused)} refused (errno 11), {len(late)} stored during a login and not handed to it; "
          f"{len(refused_logins)} of the logins refused (errno 11)"
          + (f" (the receiving thread was cut off as a slow reader {len(cuts)} time(s))" if cuts else ""))
    assert refused == [] and refused_logins == []
    assert late == []
    missing = sorted({a[0] for a in acks if a[1] == 0} - set(received))
    assert missing == [], f"{len(missing)} acked messages never arrived: {missing[:10]}"


def _text(delivered: str) -> str:
    obj: dict[str, Any] = json.loads(delivered)
    return str(obj["msg"])


def test_a_message_committed_during_a_login_reaches_it_once(
    svc: Services, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - the fixture
) -> None:
    """The race of the test above, made certain, on the conversation log: a
    message's transaction is held (as a pool wait or a slow disk would)
    between its numbering and its INSERT while the recipient logs in. The
    login's read does not see it; its commit then reaches the new session
    (parked until the login's read was done, then sorted against it): the
    user gets it once, in the login reply or right after."""
    sender, recipient = FakePeer(), FakePeer()
    (reg,) = call(svc, sender, msgid=3, name="sender", password="pw")
    (reg2,) = call(svc, recipient, msgid=3, name="recipient", password="pw")
    call(svc, sender, msgid=1, id=reg["id"], password="pw")
    insert, release = Event(), Event()
    real = convlog.append

    def held(s: Any, rows: Any) -> None:
        insert.set()
        release.wait()
        real(s, rows)

    monkeypatch.setattr(convlog, "append", held)
    chat = gevent.spawn(call, svc, sender, msgid=5, to=reg2["id"], msg="just before", seq=1)
    insert.wait()  # numbered; its INSERT has not run, nothing is committed
    login = gevent.spawn(call, svc, recipient, msgid=1, id=reg2["id"], password="pw")
    login.join(timeout=0.5)  # time for the login to read the log without it
    release.set()
    (ack,) = chat.get(timeout=10)
    (reply,) = login.get(timeout=10)
    assert ack["errno"] == 0
    got = [json.loads(m)["msg"] for m in reply.get("offlinemsg", [])] + [m["msg"] for m in recipient.pushed]
    assert got == ["just before"], (reply, recipient.pushed)


def test_a_deadlock_victim_is_run_again_before_errno_11(mariadb) -> None:  # type: ignore[no-untyped-def]
    """A real InnoDB deadlock: Database.run's unit of work and another
    transaction each lock a row the other wants next. InnoDB rolls back the
    lighter one (the unit of work: it changed nothing) with error 1213, and
    run() runs it again, which then succeeds once the other has committed."""
    from sqlalchemy import select, update

    from gchat.models import User
    from gchat.store import Database, Retry
    from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER

    url = mariadb.create()
    db = Database(url, retry=Retry(attempts=3))
    with db.transaction() as s:
        ids = [store.create_user(s, f"u{n}", "x") for n in range(12)]
    a, b, rest = ids[0], ids[1], ids[2:]
    other_holds_b, work_holds_a = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        import pymysql

        conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                               database=url.rsplit("/", 1)[1].split("?")[0], autocommit=False)
        try:
            with conn.cursor() as cur:
                # ten rows changed: the heavier transaction, which InnoDB keeps
                # (one by one: an IN list over most of a small table is a scan
                # that would lock row a too)
                for uid in rest:
                    cur.execute("UPDATE user SET state='online' WHERE id=%s", (uid,))
                cur.execute("UPDATE user SET state='online' WHERE id=%s", (b,))
                other_holds_b.set()
                work_holds_a.wait(10)
                cur.execute("UPDATE user SET state='online' WHERE id=%s", (a,))  # waits for the work's lock
            conn.commit()
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)
        finally:
            conn.close()

    runs = 0

    def work(s: Any) -> int:
        nonlocal runs
        runs += 1
        s.execute(select(User.id).where(User.id == a).with_for_update())
        if runs == 1:
            # whichever of the two then asks first, the second closes the cycle
            work_holds_a.set()
        s.execute(update(User).where(User.id == b).values(state="offline"))
        return runs

    thread = threading.Thread(target=other)
    thread.start()
    assert other_holds_b.wait(10)
    result = db.run(work)
    thread.join()
    db.dispose()
    print(f"\nthe unit of work ran {result} times: the first was the deadlock victim, the second committed")
    assert not errors, errors
    assert result == 2


def test_the_writer_survives_its_connection_killed_between_batches(mariadb) -> None:  # type: ignore[no-untyped-def]
    """The writer holds one connection for its batches (no checkout and ping
    per batch). When the database drops it between two batches (a restart,
    wait_timeout), the next message is still logged, numbered next, instead
    of failing with errno 11: the lost batch was rolled back whole and runs
    again on a fresh connection."""
    import pymysql

    from gchat.writer import Outgoing
    from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER

    with _a_pairs_writer(mariadb) as (db, writer, a, b, first):
        assert writer._conn is not None
        thread_id = writer._conn.connection.dbapi_connection.thread_id()  # type: ignore[union-attr]
        admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD)
        with admin.cursor() as cur:
            cur.execute(f"KILL {int(thread_id)}")
        admin.close()
        second, _ = writer.append(Outgoing(a, {"msg": "two"}, to=b))
        assert (second.conv, second.seq) == (first.conv, first.seq + 1)
        with db.transaction() as s:
            assert [m.seq for m in convlog.messages_between(s, first.conv, 0)] == [first.seq, second.seq]


@contextlib.contextmanager
def _a_pairs_writer(mariadb) -> Iterator[tuple[Any, Any, int, int, Any]]:  # type: ignore[no-untyped-def]
    """A fresh MariaDB store with users a and b and a LogWriter that has
    logged a's first message to b: (db, writer, a, b, that message)."""
    from gchat.store import Database
    from gchat.writer import LogWriter, Outgoing

    db = Database(mariadb.create())
    try:
        with db.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
        writer = LogWriter(db)
        first, _ = writer.append(Outgoing(a, {"msg": "one"}, to=b))
        yield db, writer, a, b, first
        writer.close()
    finally:
        db.dispose()


@pytest.mark.parametrize("reached", [True, False], ids=["committed", "never-ran"])
def test_a_batch_whose_connection_is_lost_during_its_commit_is_logged_once(mariadb, monkeypatch, reached) -> None:  # type: ignore[no-untyped-def]
    """The writer sends a batch's statements and its COMMIT in one query. If
    the connection is lost before the answer, the writer asks the log (on a
    fresh connection) whether the batch's first row is there: committed, the
    senders are answered as written (running it again would log every
    message twice); not committed, it runs again. Either way each message is
    in the log once, numbered without a gap."""
    import pymysql

    from gchat import sqlwire
    from gchat.writer import Outgoing

    with _a_pairs_writer(mariadb) as (db, writer, a, b, first):
        real = sqlwire.Wire.query
        lost: list[bool] = []

        def query_then_lose(wire, sql, sets=None):  # type: ignore[no-untyped-def]
            if "COMMIT" in sql and not lost:
                lost.append(True)
                if reached:
                    real(wire, sql, sets)
                wire.raw.close()  # the socket goes, as with a network cut
                raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
            return real(wire, sql, sets)

        monkeypatch.setattr(sqlwire.Wire, "query", query_then_lose)
        second, _ = writer.append(Outgoing(a, {"msg": "two"}, to=b))
        third, _ = writer.append(Outgoing(a, {"msg": "three"}, to=b))
        assert lost == [True]
        assert writer.counts.commits_lost == {"committed" if reached else "rolled_back": 1}  # /metrics says which
        assert [second.seq, third.seq] == [first.seq + 1, first.seq + 2]
        with db.transaction() as s:
            logged = convlog.messages_between(s, first.conv, 0)
        assert [m.seq for m in logged] == [first.seq, second.seq, third.seq]
        assert ['"two"' in m.body for m in logged] == [False, True, False]


def test_a_batch_whose_query_is_still_on_the_server_when_its_connection_is_given_up_is_logged_once(
        mariadb) -> None:  # type: ignore[no-untyped-def]
    """The writer gave up on its batch's answer (a read timeout: the node
    was stalled, or the server slow) while the server still holds the
    query, here queued behind another transaction's lock on the
    conversation. Asked at once, the log says "not committed"; the batch
    runs again, and the old query, let go, would commit it a second time:
    every message twice, under two numbers. The writer ends the old server
    thread before it asks, so each message is logged once."""
    import struct
    import threading

    import pymysql

    from gchat import sqlwire
    from gchat.writer import Outgoing
    from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER

    with _a_pairs_writer(mariadb) as (db, writer, a, b, first):
        database = db.engine.url.database
        holder = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                                 database=database, autocommit=False)
        with holder.cursor() as cur:
            cur.execute("SELECT last_seq FROM conversation WHERE id = %s FOR UPDATE", (first.conv,))
        real = sqlwire.Wire.query
        given_up: list[int] = []

        def sent_then_given_up(wire, sql, sets=None):  # type: ignore[no-untyped-def]
            if "COMMIT" in sql and not given_up:
                given_up.append(wire.raw.thread_id())
                data = sql.encode()
                wire.sock.sendall(struct.pack("<IB", len(data) + 1, sqlwire.COM_QUERY) + data)
                wire.raw._force_close()  # the server reads the query all the same, and waits for the lock
                raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query (timed out)")
            return real(wire, sql, sets)

        release = threading.Timer(1.0, holder.commit)
        release.start()
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(sqlwire.Wire, "query", sent_then_given_up)
                second, _ = writer.append(Outgoing(a, {"msg": "two"}, to=b))
            third, _ = writer.append(Outgoing(a, {"msg": "three"}, to=b))
        finally:
            release.join()
            holder.close()
        assert len(given_up) == 1
        assert [second.seq, third.seq] == [first.seq + 1, first.seq + 2]
        with db.transaction() as s:
            logged = convlog.messages_between(s, first.conv, 0)
        assert [m.seq for m in logged] == [first.seq, second.seq, third.seq]
        assert ['"two"' in m.body for m in logged] == [False, True, False]


def test_the_fence_ends_the_lost_connections_thread_but_not_a_namesake_after_a_restart(mariadb) -> None:  # type: ignore[no-untyped-def]
    """The writer's fence kills the lost connection's server thread. A
    thread id names a connection of one run of the server only: after a
    restart the same number may be another node's connection, which the
    fence must leave alone (told by the server's start: its uptime)."""
    import pymysql

    from gchat.writer import _fence, _server_started
    from tests.conftest import _mysql_admin

    other, admin = _mysql_admin(), _mysql_admin()
    try:
        cur = admin.cursor()
        started = _server_started(admin)
        # as if the thread id were from a run of the server a day earlier
        _fence(cur, other.thread_id(), started - 86_400, 5, pymysql)
        other.ping(reconnect=False)  # still there
        _fence(cur, other.thread_id(), started, 5, pymysql)
        with pytest.raises(pymysql.err.OperationalError):
            other.ping(reconnect=False)
    finally:
        other.close()
        admin.close()


@pytest.mark.parametrize("reached", [True, False], ids=["committed", "never-ran"])
def test_a_request_whose_connection_is_lost_during_its_commit_is_told_the_outcome_is_unknown(
        mariadb, monkeypatch, reached) -> None:  # type: ignore[no-untyped-def]
    """errno 11 says "nothing was changed", true whenever the failure came
    before the COMMIT was sent. A connection lost while it was on the way
    may have committed (its answer lost) or not: the reply says the outcome
    is unknown, and asking again tells: the name is taken when it was
    committed, free when it was not. A failure before the commit still says
    nothing was changed."""
    import pymysql
    from sqlalchemy import event

    from gchat import client
    from gchat.client.screen import describe
    from gchat.protocol import OUTCOME_UNKNOWN, Errno
    from gchat.store import Database
    from tests.test_service import services_on

    db = Database(mariadb.create())
    try:
        svc = services_on(db)
        inserted: list[str] = []

        @event.listens_for(db.engine, "before_cursor_execute")
        def seen(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            if statement.startswith("INSERT INTO user"):
                inserted.append(statement)

        real = db.engine.dialect.do_commit
        lost: list[bool] = []

        def commit_then_lose(dbapi_connection):  # type: ignore[no-untyped-def]
            if inserted and not lost:  # the unit of work that registers
                lost.append(True)
                if reached:
                    real(dbapi_connection)
                dbapi_connection._force_close()  # the socket goes, as with a network cut
                raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
            real(dbapi_connection)

        monkeypatch.setattr(db.engine.dialect, "do_commit", commit_then_lose)
        (reply,) = call(svc, FakePeer(), msgid=3, name="alice", password="pw", seq=1)
        assert lost == [True]
        assert (reply["errno"], reply["errmsg"]) == (Errno.UNAVAILABLE, OUTCOME_UNKNOWN)
        # the client library knows that text, and gchat-client does not say "nothing was changed"
        told = client.Unavailable(reply["errno"], reply["errmsg"])
        assert told.outcome_unknown
        assert describe(told).startswith("the server lost its database while saving this: it may have been done")
        (again,) = call(svc, FakePeer(), msgid=3, name="alice", password="pw", seq=2)
        assert again["errno"] == (Errno.AUTH if reached else 0), again  # asking again tells

        # a connection lost before the commit: nothing was changed, and it says so
        def lose_at_once(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            if statement.startswith("INSERT INTO user"):
                conn.connection.dbapi_connection._force_close()

        event.listen(db.engine, "before_cursor_execute", lose_at_once)
        (reply,) = call(svc, FakePeer(), msgid=3, name="bob", password="pw", seq=3)
        assert reply["errno"] == Errno.UNAVAILABLE
        assert reply["errmsg"] == "database unavailable, nothing was changed"
    finally:
        db.dispose()


def test_a_batch_whose_commit_is_lost_when_the_log_cannot_be_asked_is_refused_as_unknown(
        mariadb, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The batch's COMMIT went and its answer was lost, and the database
    cannot be reached to ask the log whether the batch is there: the chats
    are refused (errno 11), saying the outcome is unknown, not that nothing
    was changed (a sync shows them if they were logged)."""
    import pymysql
    from sqlalchemy import exc as sa_exc

    from gchat import sqlwire
    from gchat.errors import Unavailable
    from gchat.protocol import OUTCOME_UNKNOWN
    from gchat.writer import Outgoing

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise sa_exc.OperationalError("connect", {}, pymysql.err.OperationalError(2003, "Can't connect"))

    with _a_pairs_writer(mariadb) as (db, writer, a, b, first):
        real = sqlwire.Wire.query

        def query_then_lose(wire, sql, sets=None):  # type: ignore[no-untyped-def]
            if "COMMIT" in sql:
                real(wire, sql, sets)
                wire.raw.close()  # the socket goes, and the database with it
                monkeypatch.setattr(writer._engine, "connect", unreachable)
                raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
            return real(wire, sql, sets)

        monkeypatch.setattr(sqlwire.Wire, "query", query_then_lose)
        with pytest.raises(Unavailable) as refused:
            writer.append(Outgoing(a, {"msg": "two"}, to=b))
        assert str(refused.value) == OUTCOME_UNKNOWN
        assert writer.counts.commits_lost == {"unknown": 1}
