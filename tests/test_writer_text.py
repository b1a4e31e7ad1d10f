"""The writer's batch as one text (convlog.FastSql.fast): its values are
formatted into the SQL so that the server reads them back as they were, in
either quoting mode of the connection."""

from __future__ import annotations

import random

import pymysql
import pytest
from pymysql.constants import SERVER_STATUS
from sqlalchemy import select, text
from sqlalchemy.dialects import mysql

from gchat import convlog, store
from gchat.errors import Conflict
from gchat.models import Conversation, Message
from gchat.protocol import loads
from gchat.store import Database
from gchat.writer import LogWriter, Outgoing

NOW = 1_764_270_000_000


def _strings() -> list[str]:
    """Every character up to U+07FF, a sample of the rest (no surrogates:
    not UTF-8), and random runs of the characters a quoting rule names."""
    chars = [chr(i) for i in [*range(0x800), *range(0x800, 0x110000, 97)] if not 0xD800 <= i < 0xE000]
    out = [f"a{c}\\b{c}'" for c in chars]
    specials = "\\'\"\0\n\r\x1a aé\U0001f600%"
    rng = random.Random(11)
    out += ["".join(rng.choice(specials) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    return out


def _rows(strings: list[str], conv: int = 7) -> list[convlog.Row]:
    return [(conv, i + 1, 3, NOW, s, convlog.CHAT) for i, s in enumerate(strings)]


# MariaDB's reading of a quoted string with backslash escapes on (its manual,
# "String Literals"): \x is one of these, or x itself; a quote is doubled
_UNESCAPE = {"0": "\0", "'": "'", '"': '"', "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a",
             "\\": "\\", "%": "\\%", "_": "\\_"}


def _read_literal(text: str, at: int, backslash_escapes: bool) -> tuple[str, int]:
    """The string of the literal starting at text[at] (a quote), as the
    server reads it, and where the literal ends."""
    assert text[at] == "'"
    out, i = [], at + 1
    while True:
        ch = text[i]
        if ch == "\\" and backslash_escapes:
            out.append(_UNESCAPE.get(text[i + 1], text[i + 1]))
            i += 2
        elif ch == "'":
            if text[i + 1:i + 2] != "'":
                return "".join(out), i + 1
            out.append("'")
            i += 2
        else:
            out.append(ch)
            i += 1


@pytest.mark.parametrize("backslash_escapes", [True, False])
def test_the_insert_text_reads_back_as_each_value_for_every_character(backslash_escapes: bool) -> None:
    """The INSERT's values, formatted into its text by FastSql, read back
    (by the server's rules for the connection's sql_mode) as the values
    themselves, whatever a string holds: no quote ends one early, no
    backslash is lost. Without backslash escapes the text is the driver's
    own (PyMySQL's Connection.escape in that mode) to the byte."""
    sql = convlog.FastSql(mysql.pymysql.dialect())
    strings = _strings()
    rows = _rows(strings)
    head, _, values = sql.append(rows, backslash_escapes).partition(" VALUES ")
    assert head == "INSERT INTO message (conversation_id, seq, sender, created, body, kind)"
    at, read = 0, []
    for i, row in enumerate(rows):
        ints = f"({row[0]}, {row[1]}, {row[2]}, {row[3]}, "
        assert values.startswith(ints, at)
        body, at = _read_literal(values, at + len(ints), backslash_escapes)
        assert values.startswith(", ", at)
        kind, at = _read_literal(values, at + 2, backslash_escapes)
        assert values.startswith(")" + (", " if i < len(rows) - 1 else ""), at)
        at += 3 if i < len(rows) - 1 else 1
        read.append((body, kind))
    assert at == len(values)
    assert read == [(s, convlog.CHAT) for s in strings]
    if not backslash_escapes:
        driver = pymysql.connect(defer_connect=True)  # escape() needs no server, only its status
        driver.server_status = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
        assert values == ", ".join("(" + ", ".join(driver.escape(v) for v in row) + ")" for row in rows)


def test_the_update_text_is_sqlalchemys_for_any_number_of_conversations() -> None:
    sql = convlog.FastSql(mysql.pymysql.dialect())
    for n in range(1, 12):
        assert sql._advance_text(n) == sql._advance_if(n)  # joined from parts == compiled for n


def test_only_ints_go_into_the_update() -> None:
    sql = convlog.FastSql(mysql.pymysql.dialect())
    assert "WHERE conversation.id IN (5, 9)" in sql.advance_if({9: (4, 1, 2), 5: (0, 0, 1)})
    with pytest.raises(TypeError):
        sql.advance_if({5: ("0 OR 1=1", 0, 1)})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        sql.append([(7, 1, "3; DROP TABLE message", NOW, "x", convlog.CHAT)])  # type: ignore[list-item]


@pytest.mark.parametrize("backslash_escapes", [True, False])
def test_a_batch_of_every_character_is_stored_exactly_in_either_quoting_mode(mariadb, backslash_escapes: bool) -> None:  # type: ignore[no-untyped-def]
    """FastSql.fast's whole batch (the checking UPDATE, the check, the
    INSERT, the COMMIT) run as the writer runs it on a connection in each
    sql_mode: every string comes back as it went in, and last_seq moved."""
    url = mariadb.create()
    db = Database(url)
    try:
        with db.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
            conv = convlog.create_pair(s, a, b)
        strings = _strings()
        name = db.engine.url.database
        raw = pymysql.connect(host="127.0.0.1", user="root", password="", database=name, charset="utf8mb4",
                              client_flag=pymysql.constants.CLIENT.FOUND_ROWS)
        try:
            cur = raw.cursor()
            if not backslash_escapes:
                cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
            escapes_off = raw.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
            assert bool(escapes_off) is not backslash_escapes  # the driver knows the mode
            sql = convlog.FastSql(db.engine.dialect)
            cur.execute(sql.fast({conv: (0, 0, len(strings))}, _rows(strings, conv), backslash_escapes))
            assert not cur.nextset()  # one statement, one result
            cur.close()
        finally:
            raw.close()
        with db.transaction() as s:
            stored = list(s.scalars(select(Message.body).where(Message.conversation_id == conv)
                                    .order_by(Message.seq)))
            assert s.scalar(select(Conversation.last_seq).where(Conversation.id == conv)) == len(strings)
        assert stored == strings
    finally:
        db.dispose()


def test_a_writer_on_a_connection_without_backslash_escapes_stores_odd_texts_exactly(mariadb) -> None:  # type: ignore[no-untyped-def]
    odd = ["it's \"quoted\"", "back\\slash \\n not a newline", "nul \0 and \x1a", "%s %(x)s %%", "''\\'",
           "'); DROP TABLE message; --"]
    db = Database(mariadb.create())
    try:
        with db.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
        writer = LogWriter(db)
        writer.append(Outgoing(a, {"msgid": 5, "msg": "warm"}, to=b))  # the locking path; the fast one next
        assert writer._conn is not None
        writer._conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        pending = [writer.submit(Outgoing(b, {"msgid": 5, "msg": t}, to=a)) for t in odd]
        written = [writer.result(p)[0] for p in pending]
        with db.transaction() as s:
            stored = convlog.messages_between(s, written[0].conv, 0)
        assert [loads(m.body)["msg"] for m in stored] == ["warm", *odd]
        assert [m.body.encode() for m in stored[1:]] == [w.body for w in written]
        assert writer.counts.batches_fast >= 1
        writer.close()
    finally:
        db.dispose()


def test_a_fast_batch_whose_insert_fails_commits_nothing(mariadb) -> None:  # type: ignore[no-untyped-def]
    """The fast path's one statement: its UPDATE ran, its INSERT failed (a
    row already holding the number, never expected), so its COMMIT never
    ran; the writer rolls back, last_seq stays, and the next batch goes."""
    db = Database(mariadb.create())
    try:
        with db.transaction() as s:
            a, b = store.create_user(s, "a", "x"), store.create_user(s, "b", "x")
        writer = LogWriter(db)
        conv = writer.append(Outgoing(a, {"msgid": 5, "msg": "first"}, to=b))[0].conv
        fast = writer.counts.batches_fast
        with db.transaction() as s:
            s.execute(text("INSERT INTO message (conversation_id, seq, sender, created, body, kind) "
                           "VALUES (:c, 2, :a, 0, 'in the way', 'chat')"), {"c": conv, "a": a})
        with pytest.raises(Conflict):
            writer.append(Outgoing(b, {"msgid": 5, "msg": "blocked"}, to=a))
        with db.transaction() as s:
            assert s.scalar(select(Conversation.last_seq).where(Conversation.id == conv)) == 1
            s.execute(text("DELETE FROM message WHERE conversation_id = :c AND seq = 2"), {"c": conv})
        w, _ = writer.append(Outgoing(b, {"msgid": 5, "msg": "through"}, to=a))
        assert (w.conv, w.seq) == (conv, 2)
        assert writer.counts.batches_fast == fast + 1  # the failed one was not counted, this one was fast
        with db.transaction() as s:
            assert [loads(m.body)["msg"] for m in convlog.messages_between(s, conv, 0)] == ["first", "through"]
        writer.close()
    finally:
        db.dispose()
