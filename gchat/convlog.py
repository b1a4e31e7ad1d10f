"""The conversation log's queries (docs/architecture.md, "The conversation
log"): conversations, messages with gap-free sequence numbers, and each
user's cursors.

As in gchat/store.py, every function takes a session and never commits; the
caller makes one unit of work of them. The hot statements (the writer's lock,
advance and insert, the cursors' flush) are SQLAlchemy Core: one statement
per batch, never one per row. The writer's take its own Connection
(gchat/writer.py holds one), not a session.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Dialect,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from gchat.models import Conversation, Cursor, GroupUser, Message
from gchat.protocol import dumps

# The hot statements run on the session's Connection with the Core tables:
# the ORM's bulk paths (per-row state, identity map) cost more CPU than the
# database round trips they wrap.
CONV = cast(Table, Conversation.__table__)
MESSAGE = cast(Table, Message.__table__)
GROUP_USER = cast(Table, GroupUser.__table__)
# The writer's locking statements name their rows by primary key, and must
# lock only those: when a batch names a large part of a small table (a
# benchmark's 50 conversations), MariaDB's optimizer scans the whole index
# instead and locks every row, other nodes' conversations too; two nodes'
# writers then wait for each other and deadlock (measured: 25-80 deadlocks
# in 4 s of two writers, each a batch run again). The hint keeps point
# lookups whatever the table's size. And a row constructor alone is not a
# key range: `WHERE (id, last_seq, member_epoch) IN ((5, 1, 0))` is run as a
# scan of the whole primary key, hint or not (EXPLAIN: type "index"), which
# locked every row for a batch of one conversation and made the two nodes'
# writers deadlock (errno 11 refusals in the cross-node group bench); the
# checking UPDATEs therefore also say `id IN (...)`, which is a range.
BY_KEY = "FORCE INDEX (PRIMARY)"
# built once: an expanding IN list is one bound parameter, so a batch of any
# size reuses one compiled statement
_LOCK = (
    select(CONV.c.id, CONV.c.last_seq, CONV.c.member_epoch)
    .with_hint(CONV, BY_KEY, "mysql")
    .where(CONV.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(CONV.c.id)
    .with_for_update()
)
_ADVANCE = (
    update(CONV)
    .with_hint(BY_KEY, dialect_name="mysql")
    .where(CONV.c.id.in_(bindparam("ids", expanding=True)))
    .values(last_seq=CONV.c.last_seq + bindparam("n"))
)
_ADVANCE_IF = (
    update(CONV)
    .with_hint(BY_KEY, dialect_name="mysql")
    .where(CONV.c.id.in_(bindparam("ids", expanding=True)),
           tuple_(CONV.c.id, CONV.c.last_seq, CONV.c.member_epoch).in_(bindparam("keys", expanding=True)))
    .values(last_seq=CONV.c.last_seq + bindparam("n"))
)
_APPEND = insert(MESSAGE)

PAIR = "pair"
GROUP = "group"
# message.kind (migration 0005)
CHAT = "chat"
NOTICE = "notice"
# how a notice's delivered text starts (gchat.handling.notice puts msgid
# first; a chat's msgid is 5 or 9): the live path and the bus carry the text
# only, and this tells them apart without parsing it
NOTICE_HEAD = b'{"msgid":31,'


def is_notice(body: bytes | str) -> bool:
    return (body.encode() if isinstance(body, str) else body).startswith(NOTICE_HEAD)


# a notice of a large group's join or leave, in the log only: never pushed,
# by the live path or a repair (docs/protocol.md section F, "Notices of a
# large group"); gchat/groups.py puts "live" right after msgid
QUIET_HEAD = b'{"msgid":31,"live":false,'


def is_quiet(body: bytes) -> bool:
    return body.startswith(QUIET_HEAD)


def pair_key(a: int, b: int) -> tuple[int, int]:
    """A pair's conversation is found by its two user ids, smaller first."""
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True)
class ConvInfo:
    id: int
    kind: str
    user_lo: int | None
    user_hi: int | None
    groupid: int | None

    def other(self, user_id: int) -> int | None:
        """The other side of a pair (None for a group)."""
        if self.kind != PAIR:
            return None
        return self.user_hi if self.user_lo == user_id else self.user_lo


# --- conversations ---------------------------------------------------------


def find_pair(s: Session, a: int, b: int) -> int | None:
    lo, hi = pair_key(a, b)
    q = select(Conversation.id).where(Conversation.user_lo == lo, Conversation.user_hi == hi)
    return s.scalar(q)


def find_pairs(s: Session, keys: Collection[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """The conversations of these pairs (pair_key order) there are, in one
    query: a range of the (user_lo, user_hi) key, the pairs not asked for
    that it also holds left out."""
    q = select(Conversation.id, Conversation.user_lo, Conversation.user_hi).where(
        Conversation.user_lo.in_({lo for lo, _ in keys}), Conversation.user_hi.in_({hi for _, hi in keys}))
    wanted = set(keys)
    rows = cast(Iterable[tuple[int, int, int]], s.execute(q))  # user_lo, user_hi: never NULL for a pair
    return {(lo, hi): conv for conv, lo, hi in rows if (lo, hi) in wanted}


def create_pairs(s: Session, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """create_pair for several pairs (pair_key order, each once) in one
    transaction; IntegrityError (Conflict) if another node made any of them."""
    convs = {key: Conversation(kind=PAIR, user_lo=key[0], user_hi=key[1], last_seq=0, member_epoch=0) for key in keys}
    s.add_all(convs.values())
    s.flush()
    s.execute(insert(Cursor), [{"user_id": u, "conversation_id": conv.id}
                               for key, conv in convs.items() for u in sorted(set(key))])
    return {key: conv.id for key, conv in convs.items()}


def create_pair(s: Session, a: int, b: int) -> int:
    """A pair's conversation and both users' cursors. Raises IntegrityError
    (through the caller's transaction: Conflict) when another node created
    it first; the caller then finds it."""
    key = pair_key(a, b)
    return create_pairs(s, [key])[key]


def find_group(s: Session, group_id: int) -> int | None:
    return s.scalar(select(Conversation.id).where(Conversation.groupid == group_id))


def create_group_conversation(s: Session, group_id: int, creator_id: int) -> int:
    """In the transaction that creates the group: its conversation, and the
    creator's cursor."""
    conv = Conversation(kind=GROUP, groupid=group_id, last_seq=0, member_epoch=0)
    s.add(conv)
    s.flush()
    s.execute(insert(Cursor), [{"user_id": creator_id, "conversation_id": conv.id}])
    return conv.id


def lock_group(s: Session, group_id: int) -> tuple[int, int] | None:
    """The group's conversation locked until the commit (the lock the writer
    takes before numbering: a membership change and a message are put in
    one order); (conversation id, last_seq), None when the group has none
    (deleted meanwhile: its conversation is detached, gchat/groups.py)."""
    row = s.execute(
        select(Conversation.id, Conversation.last_seq).where(Conversation.groupid == group_id).with_for_update()
    ).first()
    return None if row is None else (int(row.id), int(row.last_seq))


def _members_changed(s: Session, conv_id: int, **values: object) -> None:
    s.execute(
        update(Conversation)
        .where(Conversation.id == conv_id)
        .values(member_epoch=Conversation.member_epoch + 1, **values)
        .execution_options(synchronize_session=False)
    )


def join_group(s: Session, group_id: int, user_id: int) -> tuple[int, int]:
    """In the transaction that adds the member: lock the group's
    conversation, raise its member epoch and give the member a cursor at the
    current last_seq. Returns (conversation id, joined_seq).

    The lock is the one the writer takes before numbering messages: a message
    numbered after this commit sees the new epoch and reloads the members
    (the joiner among them); one numbered before has a seq <= joined_seq,
    which the joiner is not owed."""
    locked = lock_group(s, group_id)
    if locked is None:  # a group made before the log, not migrated (never expected)
        conv = Conversation(kind=GROUP, groupid=group_id, last_seq=0, member_epoch=0)
        s.add(conv)
        s.flush()
        locked = conv.id, 0
    conv_id, joined = locked
    _members_changed(s, conv_id)
    s.execute(
        insert(Cursor),
        [{"user_id": user_id, "conversation_id": conv_id, "delivered_seq": joined, "read_seq": joined,
          "joined_seq": joined}],
    )
    return conv_id, joined


def leave_group(s: Session, conv_id: int, user_ids: Sequence[int]) -> None:
    """In the transaction that removes the members, after lock_group: raise
    the member epoch (as a join does) and drop their cursors. A writer on any
    node numbering a message after this commit reloads the members under the
    same lock, so no message numbered after the removal is addressed to
    them; without a cursor, neither a login, a repair nor history hands them
    one from the log."""
    _members_changed(s, conv_id)
    s.execute(delete(Cursor).where(Cursor.conversation_id == conv_id, Cursor.user_id.in_(list(user_ids))))


def members_left(s: Session, user_ids: Sequence[int]) -> None:
    """Users about to be deleted (gchat-admin delete-user): every group
    conversation they are in gets its member epoch raised, under its lock in
    id order, as a leave does; the caller deletes their cursors and
    memberships in the same transaction."""
    convs = select(Conversation.id).join(GroupUser, GroupUser.groupid == Conversation.groupid).where(
        GroupUser.userid.in_(list(user_ids)))
    ids = sorted({int(c) for c in s.scalars(convs)})
    if ids:
        s.execute(select(Conversation.id).where(Conversation.id.in_(ids)).order_by(Conversation.id).with_for_update())
        s.execute(update(Conversation).where(Conversation.id.in_(ids))
                  .values(member_epoch=Conversation.member_epoch + 1).execution_options(synchronize_session=False))


def detach_group(s: Session, conv_id: int) -> None:
    """Before the group's row is deleted (its foreign key would take the
    conversation with it), after lock_group: the conversation stays, with its
    messages and the members' cursors (history by `conv`), and no group; its
    member epoch rises, so a writer holding the member list reloads it (empty)."""
    _members_changed(s, conv_id, groupid=None)


def note(s: Session, conv_id: int, last_seq: int, sender: int, body: dict[str, object],
         now: int) -> tuple[int, bytes]:
    """Append a notice (a group's membership change, docs/protocol.md
    section F) to the conversation, after lock_group returned last_seq: its
    own seq, in the one order of the conversation. Returns (seq, delivered
    text)."""
    seq = last_seq + 1
    text = dumps({**body, "conv": conv_id, "cseq": seq, "ts": now})
    s.execute(update(Conversation).where(Conversation.id == conv_id).values(last_seq=seq)
              .execution_options(synchronize_session=False))
    s.execute(insert(Message), [{"conversation_id": conv_id, "seq": seq, "sender": sender, "created": now,
                                 "body": text.decode(), "kind": NOTICE}])
    return seq, text


def conv_info(s: Session, conv_ids: Iterable[int]) -> dict[int, ConvInfo]:
    ids = list(conv_ids)
    if not ids:
        return {}
    q = select(Conversation.id, Conversation.kind, Conversation.user_lo, Conversation.user_hi,
               Conversation.groupid).where(Conversation.id.in_(ids))
    return {r.id: ConvInfo(r.id, r.kind, r.user_lo, r.user_hi, r.groupid) for r in s.execute(q)}


# --- the writer's unit of work ---------------------------------------------


def lock_conversations(conn: Connection, conv_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """(last_seq, member_epoch) of each conversation, its row locked until
    the commit. Locked in id order, so two nodes locking overlapping sets
    wait for each other instead of deadlocking."""
    ids = sorted(set(conv_ids))
    return locked_state(conn.execute(_LOCK, {"ids": ids}))


def locked_state(rows: Iterable[Sequence[Any]]) -> dict[int, tuple[int, int]]:
    """The lock's rows (id, last_seq, member_epoch), by any driver, as conv
    -> (last_seq, member_epoch)."""
    return {int(i): (int(last), int(epoch)) for i, last, epoch in rows}


def group_members(conn: Connection, group_ids: Iterable[int]) -> dict[int, tuple[int, ...]]:
    ids = list(group_ids)
    out: dict[int, list[int]] = {g: [] for g in ids}
    if ids:
        q = select(GroupUser.groupid, GroupUser.userid).where(GroupUser.groupid.in_(ids))
        for gid, uid in conn.execute(q.order_by(GroupUser.groupid, GroupUser.userid)):
            out[gid].append(uid)
    return {g: tuple(m) for g, m in out.items()}


def advance(conn: Connection, added: Mapping[int, int]) -> None:
    """Raise each conversation's last_seq by the number of messages added
    (its row is locked: lock_conversations). One statement per distinct
    count: one for the batch when each conversation got as many (pingpong)."""
    by_count: dict[int, list[int]] = {}
    for conv, n in added.items():
        if n:
            by_count.setdefault(n, []).append(conv)
    for n, ids in by_count.items():
        conn.execute(_ADVANCE, {"ids": sorted(ids), "n": n})


def advance_if(conn: Connection, expected: Mapping[int, tuple[int, int, int]]) -> bool:
    """The writer's fast path: conv -> (last_seq, member_epoch, n) as this
    node last wrote them; raise each last_seq by n where both still hold.
    False when some conversation moved (another node wrote to it, a member
    joined): the caller rolls back and takes the locking path. The UPDATE
    takes the same row locks as lock_conversations, so two nodes still take
    turns, and one statement (per distinct n) replaces the lock's SELECT."""
    by_count: dict[int, list[tuple[int, int, int]]] = {}
    for conv, (last, epoch, n) in expected.items():
        by_count.setdefault(n, []).append((conv, last, epoch))
    matched = 0
    for n, keys in by_count.items():
        matched += conn.execute(_ADVANCE_IF, {"ids": sorted(k[0] for k in keys), "keys": sorted(keys),
                                              "n": n}).rowcount
    return matched == len(expected)


def append(conn: Connection, rows: Sequence[Mapping[str, object]]) -> None:
    """Insert messages (conversation_id, seq, sender, created, body): one
    multi-row INSERT (the driver's executemany) for the batch."""
    if rows:
        conn.execute(_APPEND, list(rows))


# --- the writer's statements, rendered for the driver -----------------------
#
# On MySQL/MariaDB the writer sends its statements (both paths: the checking
# UPDATE and the INSERT; the lock, the UPDATE and the INSERT) to the driver
# itself: SQLAlchemy's execution of a Core statement (its cache key,
# the expanding IN list rendered per call, the parameter processing of each
# row) cost more CPU than the round trip it wraps. The SQL text is still
# SQLAlchemy Core's, compiled once per batch shape for the dialect with
# positional placeholders. The values are bound here, by the driver's rules:
# the lock's and the member read's ids by render; the UPDATE's and the
# INSERT's (a batch's whole query, by FastSql.fast) formatted into the text
# as the driver would (ints by `%d`, strings quoted by _quote or
# _quote_doubling for the connection's sql_mode): the driver's mogrify of a
# batch's hundreds of values, or render's loop over them, was a tenth of the
# writer's CPU (docs/benchmarks.md, "The writer's batch, cheaper").

# every column, kind too: Core would add its default as one more parameter
APPEND_COLUMNS = ("conversation_id", "seq", "sender", "created", "body", "kind")
Row = tuple[int, int, int, int, str, str]  # a message to append, in APPEND_COLUMNS order

def render(sql: str, args: Sequence[object]) -> str:
    """sql's "%s" placeholders bound to args, as the driver's mogrify would
    bind them (this module's statements take only ints and strings; a
    string quoted by _quote, as FastSql's INSERT quotes a body), for a
    connection with backslash escapes on (the caller checks)."""
    literals = []
    for a in args:
        if type(a) is int:
            literals.append(str(a))
        elif type(a) is str:
            literals.append(_quote(a))
        else:
            raise TypeError(f"cannot bind {type(a).__name__}")
    return sql % tuple(literals)


class FastSql:
    """The writer's statements for PyMySQL: its lock and member read as
    (SQL text, positional args) for a "format" paramstyle; its UPDATE and
    INSERT (and the fast path's whole batch) as SQL text with the values in
    it."""

    def __init__(self, dialect: Dialect) -> None:
        # the same dialect, positional: "%s" placeholders in the order of the args
        self._dialect = type(dialect)(paramstyle="format")  # type: ignore[call-arg]

    @functools.lru_cache(maxsize=512)  # noqa: B019 -- one FastSql per writer, for the node's life
    def _advance_if(self, n: int) -> str:
        keys = [tuple_(bindparam(f"i{k}"), bindparam(f"l{k}"), bindparam(f"e{k}")) for k in range(n)]
        new = case(*[(CONV.c.id == bindparam(f"c{k}"), bindparam(f"s{k}")) for k in range(n)],
                   else_=CONV.c.last_seq)
        ids: list[Any] = [bindparam(f"d{k}") for k in range(n)]
        stmt = (update(CONV)
                .with_hint(BY_KEY, dialect_name="mysql")
                .where(CONV.c.id.in_(ids),  # the key range (see BY_KEY)
                       tuple_(CONV.c.id, CONV.c.last_seq, CONV.c.member_epoch).in_(keys))
                .values(last_seq=new))
        order = ([f"{p}{k}" for k in range(n) for p in "cs"] + [f"d{k}" for k in range(n)]
                 + [f"{p}{k}" for k in range(n) for p in "ile"])
        return _ints_only(self._render(stmt, order), len(order))

    @functools.cached_property
    def _append_head(self) -> tuple[str, str]:
        """The INSERT's text up to its rows, and one row's placeholders with
        the ints as %d (formatted by `%`, which refuses anything but a
        number) and the strings as %s (quoted first: _quote)."""
        rows: list[dict[str, Any]] = [{c: bindparam(f"{c}0") for c in APPEND_COLUMNS}]
        text = self._render(insert(MESSAGE).values(rows), [f"{c}0" for c in APPEND_COLUMNS])
        head, sep, row = text.partition(" VALUES ")
        if not sep or row != "(%s, %s, %s, %s, %s, %s)":
            raise AssertionError(f"unexpected INSERT text {text!r}")
        return head + sep, "(%d, %d, %d, %d, %s, %s)"

    def _render(self, stmt: Any, order: list[str]) -> str:
        compiled = stmt.compile(dialect=self._dialect)
        # the callers pass the args in this order: the text must take them so
        if list(compiled.positiontup or []) != order:
            raise AssertionError(f"unexpected parameter order {compiled.positiontup}")
        return str(compiled.string)

    @functools.lru_cache(maxsize=512)  # noqa: B019
    def _lock(self, n: int) -> str:
        ids: list[Any] = [bindparam(f"i{k}") for k in range(n)]
        stmt = (select(CONV.c.id, CONV.c.last_seq, CONV.c.member_epoch).with_hint(CONV, BY_KEY, "mysql")
                .where(CONV.c.id.in_(ids))
                .order_by(CONV.c.id).with_for_update())
        return self._render(stmt, [f"i{k}" for k in range(n)])

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _members(self, n: int) -> str:
        ids: list[Any] = [bindparam(f"g{k}") for k in range(n)]
        stmt = (select(GROUP_USER.c.groupid, GROUP_USER.c.userid).where(GROUP_USER.c.groupid.in_(ids))
                .order_by(GROUP_USER.c.groupid, GROUP_USER.c.userid))
        return self._render(stmt, [f"g{k}" for k in range(n)])

    @functools.cached_property
    def _committed(self) -> str:
        stmt = select(MESSAGE.c.sender, MESSAGE.c.created).where(
            MESSAGE.c.conversation_id == bindparam("c"), MESSAGE.c.seq == bindparam("s"))
        return self._render(stmt, ["c", "s"])

    def committed(self, conv: int, seq: int) -> tuple[str, list[int]]:
        """The sender and time of the message at (conv, seq), if any: did a
        batch whose connection was lost during its query commit?"""
        return self._committed, [conv, seq]

    def lock(self, conv_ids: Iterable[int]) -> tuple[str, list[int]]:
        """lock_conversations' SELECT ... FOR UPDATE: rows (id, last_seq,
        member_epoch), locked in id order until the commit."""
        ids = sorted(set(conv_ids))
        return self._lock(len(ids)), ids

    def members(self, group_ids: Iterable[int]) -> tuple[str, list[int]]:
        """group_members' SELECT: rows (groupid, userid), in that order."""
        ids = sorted(set(group_ids))
        return self._members(len(ids)), ids

    @functools.cached_property
    def _advance_parts(self) -> tuple[str, str, str, str, str, str]:
        """_advance_if(1)'s text cut where a batch's conversations go: the
        text before the CASE's first WHEN, one WHEN, the text up to the
        id list, the text up to the key list, one key, and the end.
        advance_if joins them for any number of conversations (compiling
        the statement for each new number was most of a busy node's first
        minutes; tests/test_writer_text.py checks the joined text is what
        _advance_if(n) is)."""
        one = self._advance_if(1)
        head, _, rest = one.partition("WHEN ")
        when, _, rest = rest.partition(" ELSE ")
        to_ids, _, rest = rest.partition("%d")
        to_keys, _, rest = rest.partition("((")
        if (when.count("%d"), to_ids.count("%d"), to_keys.count("%d"), rest) != (2, 0, 0, "%d, %d, %d))"):
            raise AssertionError(f"unexpected UPDATE text {one!r}")
        return head, "WHEN " + when, " ELSE " + to_ids, to_keys + "(", "(%d, %d, %d)", ")"

    @functools.lru_cache(maxsize=512)  # noqa: B019
    def _advance_text(self, n: int) -> str:
        """_advance_if(n)'s text, joined from _advance_parts."""
        head, when, to_ids, to_keys, key, end = self._advance_parts
        return head + " ".join([when] * n) + to_ids + ", ".join(["%d"] * n) + to_keys + ", ".join([key] * n) + end

    def advance_if(self, expected: Mapping[int, tuple[int, int, int]]) -> str:
        """One UPDATE for the batch: conv -> (last_seq, member_epoch, n) as
        this node last left them; each matching row's last_seq goes to
        last_seq + n (as advance_if). Its row count (the driver counts found
        rows) says how many matched. Only ints go into it, formatted by
        `%d` (one `%` for the whole text: the cheapest way measured)."""
        convs = sorted(expected)
        args: list[int] = []
        for c in convs:  # CASE: new last_seq by conversation
            last, _, n = expected[c]
            args += (c, last + n)
        args += convs  # WHERE: id IN (...), the key range
        for c in convs:  # and (id, last_seq, member_epoch) as expected
            last, epoch, _ = expected[c]
            args += (c, last, epoch)
        return self._advance_text(len(convs)) % tuple(args)

    @functools.lru_cache(maxsize=512)  # noqa: B019
    def _append_text(self, n: int) -> str:
        head, row = self._append_head
        return head + ", ".join([row] * n)

    def append(self, rows: Sequence[Row], backslash_escapes: bool = True) -> str:
        """One multi-row INSERT of the messages (APPEND_COLUMNS order), its
        values in the text: ints by `%d`, strings quoted for the connection
        (`backslash_escapes`: its sql_mode has not NO_BACKSLASH_ESCAPES)."""
        quote = _quote if backslash_escapes else _quote_doubling
        kinds = _KINDS
        args: list[object] = []
        for c, s, u, t, b, k in rows:
            args += (c, s, u, t, quote(b), kinds.get(k) or quote(k))
        return self._append_text(len(rows)) % tuple(args)

    def fast(self, expected: Mapping[int, tuple[int, int, int]], rows: Sequence[Row],
             backslash_escapes: bool = True) -> str:
        """The fast path's whole batch as one compound statement (MariaDB's
        BEGIN NOT ATOMIC), so that either outcome is one round trip:
        - the checking UPDATE; when its count (found rows: the writer's
          connection has FOUND_ROWS) is the batch's conversations, the
          INSERT and the COMMIT, one OK packet to read;
        - when it is short (a conversation moved: another node wrote it, a
          member joined), a ROLLBACK and the locking path's SELECT ... FOR
          UPDATE of the batch's conversations: the answer is its rows (id,
          last_seq, member_epoch), locked until the caller's next query
          commits. A moved batch then costs the locking path's two round
          trips, not four (the fast try, its rollback, the lock, the write).
        A statement that fails (a duplicate key, a deadlock) ends it with
        its error, the rest unrun: the COMMIT goes only with a batch
        numbered right; the caller rolls back what ran."""
        lock, ids = self.lock(expected)
        return (f"BEGIN NOT ATOMIC {self.advance_if(expected)}; IF ROW_COUNT() <> {len(ids)} THEN ROLLBACK; "
                f"{render(lock, ids)}; ELSE {self.append(rows, backslash_escapes)}; COMMIT; END IF; END")


def _ints_only(text: str, n: int) -> str:
    """A statement of n "%s" placeholders, all for ints: "%d" instead, so
    that `%` formats only numbers into it (anything else raises)."""
    if text.count("%s") != n or "%%" in text:
        raise AssertionError(f"unexpected statement text {text!r}")
    return text.replace("%s", "%d")


def _quote(s: str) -> str:
    """A string literal, backslash escapes on. Only the backslash and the
    quote must be escaped inside single quotes, and NUL is, as the driver
    does (the server reads a raw one as well); the driver's escape_string
    also escapes '"', LF, CR and ^Z, needless there: a JSON text holds a
    '"' for every key, and that replacement was most of escape_string's
    time. tests/test_writer_text.py stores every character through it and
    reads it back."""
    if "\\" in s:
        s = s.replace("\\", "\\\\")
    if "'" in s:
        s = s.replace("'", "\\'")
    if "\0" in s:
        s = s.replace("\0", "\\0")
    return "'" + s + "'"


# the kinds' literals, the same in either quoting mode
_KINDS = {CHAT: "'chat'", NOTICE: "'notice'"}


def _quote_doubling(s: str) -> str:
    """A string literal under NO_BACKSLASH_ESCAPES: a quote is doubled,
    nothing else is special (the driver's escape_string in that mode)."""
    return "'" + s.replace("'", "''") + "'"


# --- reading the log -------------------------------------------------------


@dataclass(frozen=True)
class Logged:
    conv: int
    seq: int
    sender: int
    created: int
    body: str
    kind: str = CHAT


def messages_between(s: Session, conv_id: int, after: int, upto: int | None = None,
                     limit: int | None = None, newest: bool = False, notices: bool = True) -> list[Logged]:
    """Messages with after < seq (<= upto), oldest first; with `newest`, the
    last `limit` of them (still returned oldest first); without `notices`,
    chats only."""
    q = select(Message.conversation_id, Message.seq, Message.sender, Message.created, Message.body,
               Message.kind).where(Message.conversation_id == conv_id, Message.seq > after)
    if upto is not None:
        q = q.where(Message.seq <= upto)
    if not notices:
        q = q.where(Message.kind == CHAT)
    q = q.order_by(Message.seq.desc() if newest else Message.seq)
    if limit is not None:
        q = q.limit(limit)
    rows = [Logged(*r) for r in s.execute(q)]
    return rows[::-1] if newest else rows


def cursors_of(s: Session, user_ids: Sequence[int]) -> dict[int, dict[int, tuple[int, int, int, int]]]:
    """Each user's conversations: conv -> (delivered, read, joined, last_seq)
    (the repair sweep's question, only those behind, is behind_of)."""
    out: dict[int, dict[int, tuple[int, int, int, int]]] = {u: {} for u in user_ids}
    if not user_ids:
        return out
    q = (
        select(Cursor.user_id, Cursor.conversation_id, Cursor.delivered_seq, Cursor.read_seq, Cursor.joined_seq,
               Conversation.last_seq)
        .join(Conversation, Conversation.id == Cursor.conversation_id)
        .where(Cursor.user_id.in_(list(user_ids)))
    )
    for uid, conv, d, r, j, last in s.execute(q):
        out[uid][conv] = (int(d), int(r), int(j), int(last))
    return out


def backlog(s: Session, cursors: Mapping[int, Mapping[int, tuple[int, int, int, int]]],
            per_conv: int | None = None) -> dict[int, list[Logged]]:
    """What each user has not been handed: the messages after its delivered
    cursor that others sent, by conversation and seq. `cursors` is
    cursors_of's answer for the users; only conversations with something
    after a cursor are read, each as a range of the primary key, all in one
    statement. `per_conv`: only the first that many numbers after each
    cursor (a conversation far behind costs that many rows, not all)."""
    out: dict[int, list[Logged]] = {u: [] for u in cursors}
    # conversation -> (user, after, upto) of those behind in it
    behind: dict[int, list[tuple[int, int, int]]] = {}
    for uid, convs in cursors.items():
        for conv, (delivered, _read, _joined, last) in convs.items():
            if last > delivered:
                upto = last if per_conv is None else min(last, delivered + per_conv)
                behind.setdefault(conv, []).append((uid, delivered, upto))
    if not behind:
        return out
    ranges = [and_(Message.conversation_id == conv, Message.seq > min(a for _, a, _ in who),
                   Message.seq <= max(b for _, _, b in who)) for conv, who in sorted(behind.items())]
    q = (
        select(Message.conversation_id, Message.seq, Message.sender, Message.created, Message.body, Message.kind)
        .where(or_(*ranges))
        .order_by(Message.conversation_id, Message.seq)
    )
    for conv, seq, sender, created, body, kind in s.execute(q):
        for uid, after, upto in behind[conv]:
            if after < seq <= upto and sender != uid:
                out[uid].append(Logged(conv, seq, sender, created, body, kind))
    return out


def unread_counts(s: Session, user_id: int) -> dict[int, int]:
    """Chat messages after the read cursor that others sent, per
    conversation (a notice is not something to read)."""
    q = (
        select(Message.conversation_id, func.count())
        .join(Cursor, and_(Cursor.conversation_id == Message.conversation_id, Message.seq > Cursor.read_seq))
        .where(Cursor.user_id == user_id, Message.sender != user_id, Message.kind == CHAT)
        .group_by(Message.conversation_id)
    )
    return {int(c): int(n) for c, n in s.execute(q)}


# --- cursors ---------------------------------------------------------------


def _raise_to(column: object, value: object) -> object:
    # portable max(column, value): a cursor never moves back, whoever writes last
    return case((column < value, value), else_=column)  # type: ignore[operator]


# delivered cursors raised per statement of set_delivered: a flush of every
# session's news is a few statements, each of bounded size (about 30 bytes a row)
DELIVERED_BATCH = 1000
CURSOR = cast(Table, Cursor.__table__)


def set_delivered(s: Session, marks: Iterable[tuple[int, int, int]]) -> None:
    """(user, conversation, seq): raise each delivered cursor to seq, one
    statement per DELIVERED_BATCH cursors. Only existing cursors move, and
    only forward: a member removed meanwhile has no row, and gets none."""
    best: dict[tuple[int, int], int] = {}
    for u, c, q in marks:
        # ints, rendered into the text by str(): nothing else can get in
        key = (int(u), int(c))
        q = int(q)
        if q > best.get(key, -1):
            best[key] = q
    if not best:
        return
    conn = s.connection()
    keys = sorted(best)  # one lock order for every writer of cursors
    for i in range(0, len(keys), DELIVERED_BATCH):
        rows = [(u, c, best[u, c]) for u, c in keys[i:i + DELIVERED_BATCH]]
        sql = delivered_sql(conn.dialect, rows)
        if sql is None:
            conn.execute(_SET_DELIVERED, [{"u": u, "c": c, "s": q} for u, c, q in rows])
        else:
            conn.exec_driver_sql(sql)


# the portable form, one UPDATE per row (a dialect delivered_sql has no text for)
_SET_DELIVERED = (
    update(CURSOR)
    .where(CURSOR.c.user_id == bindparam("u"), CURSOR.c.conversation_id == bindparam("c"))
    .values(delivered_seq=_raise_to(CURSOR.c.delivered_seq, bindparam("s")))
)


def delivered_sql(dialect: Dialect, rows: Sequence[tuple[int, int, int]]) -> str | None:
    """One UPDATE raising the cursors of rows (user, conv, seq; ints, no key
    twice) to seq, joined to them as a derived table: a row that is not
    there is not made, a cursor already further stays. The values are ints
    formatted by str() (the caller's int()): SQLAlchemy's compilation of a
    statement of 3,000 bound parameters cost more than the round trips it
    saves, and PyMySQL's executemany sends an UPDATE as one query per row.
    None for a dialect without such a statement."""
    t, u, c, d = CURSOR.name, "user_id", "conversation_id", "delivered_seq"
    if dialect.name in ("mysql", "mariadb"):
        first, rest = rows[0], rows[1:]
        derived = f"SELECT {first[0]} AS u, {first[1]} AS c, {first[2]} AS s" + "".join(
            f" UNION ALL SELECT {uu}, {cc}, {qq}" for uu, cc, qq in rest)
        return (f"UPDATE {t} JOIN ({derived}) AS v ON {t}.{u} = v.u AND {t}.{c} = v.c "
                f"SET {t}.{d} = GREATEST({t}.{d}, v.s)")
    if dialect.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 33, 0):  # UPDATE ... FROM
        values = ", ".join(f"({uu}, {cc}, {qq})" for uu, cc, qq in rows)
        return (f"UPDATE {t} SET {d} = max({t}.{d}, v.column3) FROM (VALUES {values}) AS v "
                f"WHERE {t}.{u} = v.column1 AND {t}.{c} = v.column2")
    return None


def set_read(s: Session, user_id: int, conv_id: int, seq: int) -> None:
    """Read up to seq: delivered too (what was read was received)."""
    s.execute(
        update(Cursor)
        .where(Cursor.user_id == user_id, Cursor.conversation_id == conv_id)
        .values(read_seq=_raise_to(Cursor.read_seq, seq), delivered_seq=_raise_to(Cursor.delivered_seq, seq))
        .execution_options(synchronize_session=False)
    )


def cursor(s: Session, user_id: int, conv_id: int) -> tuple[int, int, int, int] | None:
    """(delivered, read, joined, last_seq) of the user in the conversation,
    None when it is not one of the user's."""
    q = (
        select(Cursor.delivered_seq, Cursor.read_seq, Cursor.joined_seq, Conversation.last_seq)
        .join(Conversation, Conversation.id == Cursor.conversation_id)
        .where(Cursor.user_id == user_id, Cursor.conversation_id == conv_id)
    )
    row = s.execute(q).first()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def delivered_of(s: Session, keys: Collection[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """The delivered cursor of each (user, conversation) that has one (a
    batch of `cursor`'s first field): one query, by the users and the
    conversations of the keys."""
    if not keys:
        return {}
    q = select(Cursor.user_id, Cursor.conversation_id, Cursor.delivered_seq).where(
        Cursor.user_id.in_(sorted({u for u, _ in keys})), Cursor.conversation_id.in_(sorted({c for _, c in keys})))
    found = {(int(u), int(c)): int(d) for u, c, d in s.execute(q)}
    return {k: found[k] for k in keys if k in found}


def readers(s: Session, conv_id: int, seq: int, exclude: int | None = None) -> int:
    """How many members have read up to seq (`exclude` not counted)."""
    q = select(func.count()).select_from(Cursor).where(Cursor.conversation_id == conv_id, Cursor.read_seq >= seq)
    if exclude is not None:
        q = q.where(Cursor.user_id != exclude)
    return int(s.scalar(q) or 0)


def member_count(s: Session, conv_id: int) -> int:
    return int(s.scalar(select(func.count()).select_from(Cursor).where(Cursor.conversation_id == conv_id)) or 0)


def read_cursor(s: Session, user_id: int, conv_id: int) -> int:
    return int(s.scalar(select(Cursor.read_seq).where(Cursor.user_id == user_id,
                                                        Cursor.conversation_id == conv_id)) or 0)


# --- retention -------------------------------------------------------------


def prune(s: Session, *, older_than_ms: int | None = None, keep_last: int | None = None, limit: int = 10_000) -> int:
    """Delete up to `limit` messages older than a time, or beyond the last
    `keep_last` of their conversation. last_seq and the cursors stay: numbers
    are never reused, and a gap below the oldest kept message is retention,
    not loss. Small batches: a node writing meanwhile waits at most for one."""
    conds = []
    if older_than_ms is not None:
        conds.append(Message.created < older_than_ms)
    if keep_last is not None:
        floor = (
            select(Conversation.last_seq - keep_last)
            .where(Conversation.id == Message.conversation_id)
            .scalar_subquery()
        )
        conds.append(Message.seq <= floor)
    if not conds:
        return 0
    keys = s.execute(select(Message.conversation_id, Message.seq).where(or_(*conds)).limit(limit)).all()
    if not keys:
        return 0
    by_conv: dict[int, list[int]] = {}
    for c, q in keys:
        by_conv.setdefault(c, []).append(q)
    s.execute(delete(Message).where(or_(*(and_(Message.conversation_id == c, Message.seq.in_(qs))
                                         for c, qs in by_conv.items()))))
    return len(keys)


def behind_of(s: Session, user_ids: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(user, conversation, delivered, last_seq) for the users' conversations
    with something after the delivered cursor: the repair sweep's question,
    asked of every session of a node every few seconds. The ids are ints
    formatted by str() into the text: SQLAlchemy's literal rendering and
    PyMySQL's escaping of thousands of parameters were most of an idle
    node's CPU at 16,000 sessions (see docs/benchmarks.md, "Idle and
    low-rate cost")."""
    if not user_ids:
        return []
    ids = ",".join(str(int(u)) for u in user_ids)
    conv = Conversation.__tablename__
    sql = (f"SELECT k.user_id, k.conversation_id, k.delivered_seq, v.last_seq FROM {CURSOR.name} AS k "
           f"JOIN {conv} AS v ON v.id = k.conversation_id "
           f"WHERE k.user_id IN ({ids}) AND v.last_seq > k.delivered_seq")
    return [(int(u), int(c), int(d), int(q)) for u, c, d, q in s.connection().exec_driver_sql(sql)]
