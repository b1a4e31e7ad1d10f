"""The store: one engine, one sessionmaker, and the queries of the original's
UserModel, FriendModel, GroupModel and OfflineMessageModel.

Every query function takes a session and never commits: the caller wraps one
unit of work in `Database.transaction()`, which is also the one boundary where
driver errors become gchat's own (gchat/errors.py): `Unavailable`, or
`Conflict` for a violated key. The store knows nothing of errnos.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import Session, sessionmaker

from gchat.errors import Conflict, Unavailable
from gchat.models import (
    AllGroup,
    Block,
    Conversation,
    Cursor,
    Friend,
    FriendRequest,
    GroupUser,
    Message,
    OfflineMessage,
    User,
)
from gchat.protocol import OUTCOME_UNKNOWN

log = logging.getLogger(__name__)

T = TypeVar("T")

# MySQL/MariaDB: "Deadlock found when trying to get lock; try restarting
# transaction". InnoDB has rolled the victim back whole, so running it again
# is safe and is what the server asks for.
ER_LOCK_DEADLOCK = 1213


@dataclass(frozen=True)
class Retry:
    """How often a unit of work chosen as a deadlock victim is run again,
    and how long to wait first: `backoff` doubled each time, with jitter, so
    the transactions that collided do not collide again in step."""

    attempts: int = 3  # runs in all, the first included
    backoff: float = 0.005

    def delay(self, attempt: int) -> float:
        return float(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))


class Database:
    def __init__(
        self, url: str, *, pool_size: int = 10, overflow: int = 10, timeout: float = 5.0, retry: Retry = Retry(),
        tls: str = "auto",
    ) -> None:
        self.url = url
        self.tls = tls  # for the engines made beside this one (the log writer's)
        self.timeout = timeout
        self.engine = make_engine(url, pool_size=pool_size, overflow=overflow, timeout=timeout, tls=tls)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.retry = retry

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed if the block ends normally, rolled
        back whole otherwise, so nothing is ever half-written. A connection
        lost while its COMMIT was on the way leaves the outcome unknown (the
        server may have committed before the answer was lost): the
        Unavailable then says so (OUTCOME_UNKNOWN), not "nothing was
        changed" (docs/protocol.md, errno 11)."""
        committing = False
        try:
            with driver_errors():
                with self.sessions.begin() as session:
                    yield session
                    session.flush()  # the block's writes sent first: a failure there left nothing
                    committing = True
        except Unavailable as e:
            if committing and getattr(e.__cause__, "connection_invalidated", False):
                raise Unavailable(OUTCOME_UNKNOWN) from e.__cause__
            raise

    def run(self, work: Callable[[Session], T]) -> T:
        """work(session) as one unit of work, as `transaction()`; run again
        from the start, up to the retry policy's attempts, when the database
        rolled it back as a deadlock victim. Only for work that does nothing
        but database work (it may run more than once)."""
        attempt = 1
        while True:
            try:
                with self.transaction() as s:
                    return work(s)
            except Unavailable as e:
                if attempt >= self.retry.attempts or not deadlock(e.__cause__):
                    raise
            time.sleep(self.retry.delay(attempt))
            attempt += 1

    def dispose(self) -> None:
        self.engine.dispose()


class driver_errors:  # noqa: N801 -- the context manager it was (a class: contextlib's generator wrapper cost a few µs a use)
    """The boundary where the driver's errors become gchat's own: Conflict
    for a violated key, Unavailable for anything else (the database is down,
    a pool wait timed out, a deadlock rolled the work back)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        if e is None:
            return
        if isinstance(e, sa_exc.IntegrityError):
            # a key the request would break: duplicate friend, member, name
            raise Conflict("already exists") from e
        if isinstance(e, (sa_exc.DBAPIError, sa_exc.TimeoutError)):
            if deadlock(e):
                log.info("deadlock: the unit of work was rolled back")
                raise Unavailable("database deadlock, nothing was changed") from e
            log.warning("database unavailable: %s", e.__class__.__name__,
                        exc_info=e if log.isEnabledFor(logging.DEBUG) else None)
            raise Unavailable("database unavailable, nothing was changed") from e


def deadlock(e: BaseException | None) -> bool:
    """e (an Unavailable's cause) is InnoDB's deadlock: the work was rolled
    back whole and may run again."""
    args: tuple[Any, ...] = getattr(getattr(e, "orig", None), "args", ())
    return len(args) > 0 and args[0] == ER_LOCK_DEADLOCK


def make_engine(url: str, *, pool_size: int = 10, overflow: int = 10, timeout: float = 5.0,
                tls: str = "auto") -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    tls_hook: Tls | None = None
    if url.startswith("mysql+pymysql"):
        # bounded waits: a stopped database gives errno 11 within `timeout`
        # instead of hanging the request for the kernel's TCP timeout
        t = max(1, int(timeout))
        connect_args = {"connect_timeout": t, "read_timeout": t, "write_timeout": t}
        if not any(k.startswith("ssl") for k in make_url(url).query):  # else the URL's own TLS options
            tls_hook = Tls(tls_mode(url, tls))
            connect_args.update(tls_hook.connect_args())
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=overflow,
        pool_timeout=timeout,
        pool_pre_ping=True,  # a restarted database is noticed at checkout, not by a failed request
        pool_recycle=3600,  # below MySQL's wait_timeout, which closes idle connections
        hide_parameters=True,  # an error's text must not carry a password hash into the log
        connect_args=connect_args,
    )
    if tls_hook is not None and tls_hook.mode == "preferred":
        event.listen(engine, "do_connect", tls_hook.connect)
    return engine


# --- TLS to MySQL/MariaDB ------------------------------------------------------
#
# PyMySQL (2.x), given no TLS option, asks for TLS whenever the server offers
# it, without checking its certificate ("preferred"), and builds a new
# ssl.SSLContext for every connection to do so, offered or not: loading the
# system's CA bundle into it is 24 ms of CPU on this machine, a hundred
# times the rest of the connect. Here the context is built once per engine
# and passed in, and the mode is a setting (`database_tls`).

TLS_MODES = ("auto", "preferred", "required", "off")
# PyMySQL's "SSL is required but the server doesn't support it"
CR_SSL_CONNECTION_ERROR = 2026


def tls_mode(url: str, mode: str) -> str:
    """The mode `auto` stands for: `off` to a database on this host (a
    loopback address, localhost, a Unix socket: whoever could read that
    traffic can read the node's memory), `preferred` (PyMySQL's default,
    as before) to any other."""
    if mode not in TLS_MODES:
        raise ValueError(f"database TLS mode {mode!r} is not one of {', '.join(TLS_MODES)}")
    if mode != "auto":
        return mode
    u = make_url(url)
    host = u.host or "localhost"
    if "unix_socket" in u.query or host == "localhost":
        return "off"
    try:
        return "off" if ipaddress.ip_address(host.strip("[]")).is_loopback else "preferred"
    except ValueError:  # a name: another host
        return "preferred"


class Tls:
    """The TLS arguments of one engine's PyMySQL connections (when the URL
    gives none of its own: ssl_ca=... and the like win).

    - `off`: no TLS.
    - `preferred`: TLS when the server offers it, its certificate not
      checked, as PyMySQL's default, with one context. PyMySQL treats a
      given context as "required", so a server that offers no TLS refuses
      the first connection (before any credential is sent); it is then
      made without (the engine's do_connect hook), and so are the engine's
      next ones: asking again would cost a refused handshake per connection.
    - `required`: TLS or no connection, the server's certificate checked
      against the system's CAs and its name against the URL's host."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.offered = True  # preferred: until the server says it has no TLS
        self.ctx: ssl.SSLContext | None = None
        if mode == "required":
            self.ctx = ssl.create_default_context()
        elif mode == "preferred":
            self.ctx = ssl.create_default_context()
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE

    def connect_args(self) -> dict[str, Any]:
        return {"ssl_disabled": True} if self.ctx is None else {"ssl": self.ctx}

    def connect(self, dialect: Dialect, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        """`preferred`: TLS if the server has it, else plain from now on."""
        if not self.offered:
            del cparams["ssl"]
            cparams["ssl_disabled"] = True
            return None
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as e:
            if not e.args or e.args[0] != CR_SSL_CONNECTION_ERROR:
                raise
        log.info("the database offers no TLS: its connections are not encrypted (database_tls=preferred)")
        self.offered = False
        del cparams["ssl"]
        cparams["ssl_disabled"] = True
        return None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers (admin scripts) do not block the node
    cur.execute("PRAGMA synchronous=NORMAL")
    # the conversation log grows with every message: each pooled connection's
    # page cache (2 MiB by default) would fill with it, up to the pool's size
    # times that; the OS's file cache already holds the hot pages
    cur.execute("PRAGMA cache_size=-256")
    cur.close()


# --- users -----------------------------------------------------------------


def create_user(s: Session, name: str, password_hash: str) -> int:
    user = User(name=name, password=password_hash, state="offline")
    s.add(user)
    s.flush()
    return user.id


def get_user(s: Session, user_id: int) -> User | None:
    return s.get(User, user_id)


def get_users(s: Session, user_ids: Sequence[int]) -> dict[int, User]:
    """The users that exist among user_ids, by id: one query for a batch."""
    return {u.id: u for u in s.scalars(select(User).where(User.id.in_(list(user_ids))))}


def user_exists(s: Session, user_id: int) -> bool:
    return s.scalar(select(User.id).where(User.id == user_id)) is not None


def name_taken(s: Session, name: str) -> bool:
    return s.scalar(select(User.id).where(User.name == name)) is not None


def set_password(s: Session, user_id: int, password_hash: str) -> None:
    s.execute(update(User).where(User.id == user_id).values(password=password_hash))


def set_token(s: Session, user_id: int, token_hash: str | None, expires: int | None) -> None:
    """The user's resume token (its hash), replacing any other; None revokes it."""
    s.execute(update(User).where(User.id == user_id).values(token_hash=token_hash, token_expires=expires))


def set_tokens(s: Session, tokens: Sequence[tuple[int, str, int]]) -> None:
    """(user id, token hash, expiry) for several users, in one executemany."""
    if tokens:  # the ORM's bulk UPDATE by primary key
        s.execute(update(User), [{"id": u, "token_hash": h, "token_expires": e} for u, h, e in tokens])


def set_state(s: Session, user_ids: Iterable[int], state: str) -> None:
    ids = list(user_ids)
    if ids:
        # synchronize_session=False: no loaded User needs the new state, and
        # the ORM's search of the session for them was a fifth of a login's CPU
        q = update(User).where(User.id.in_(ids)).values(state=state)
        s.execute(q.execution_options(synchronize_session=False))


def reset_states(s: Session) -> int:
    """Every user offline: for a node that is alone on its store."""
    result = s.execute(update(User).where(User.state == "online").values(state="offline"))
    return int(getattr(result, "rowcount", 0) or 0)


def list_users(s: Session, limit: int = 1000) -> Sequence[User]:
    return s.scalars(select(User).order_by(User.id).limit(limit)).all()


def user_by_name(s: Session, name: str) -> User | None:
    return s.scalar(select(User).where(User.name == name))


def users_named(s: Session, prefix: str) -> Sequence[User]:
    """Users whose name starts with prefix (LIKE's wildcards in it are literal)."""
    return s.scalars(select(User).where(User.name.startswith(prefix, autoescape=True)).order_by(User.id)).all()


def delete_users(s: Session, user_ids: Sequence[int]) -> dict[str, int]:
    """Remove users with their friendships (both ways), memberships and
    stored messages, then the groups left without a member. Explicit
    deletes, not the foreign keys' cascade: the counts are reported, and an
    old SQLite file may lack the cascade. How many rows of each went."""
    ids = list(user_ids)
    if not ids:
        return {"users": 0, "friendships": 0, "memberships": 0, "messages": 0, "groups": 0}

    def count(result: Any) -> int:
        return int(getattr(result, "rowcount", 0) or 0)

    groups = select(GroupUser.groupid).where(GroupUser.userid.in_(ids)).distinct()
    touched = list(s.scalars(groups))
    # their one-to-one conversations go whole (the other side's copy too: a
    # conversation with a deleted account has no one to continue it); in
    # groups their messages stay, part of the others' history
    pairs = list(s.scalars(select(Conversation.id).where(
        or_(Conversation.user_lo.in_(ids), Conversation.user_hi.in_(ids)))))
    logged = _delete_conversations(s, pairs)
    s.execute(delete(Cursor).where(Cursor.user_id.in_(ids)))
    done = {
        "messages": logged + count(s.execute(delete(OfflineMessage).where(OfflineMessage.userid.in_(ids)))),
        "friendships": count(s.execute(delete(Friend).where(or_(Friend.userid.in_(ids), Friend.friendid.in_(ids))))),
        "memberships": count(s.execute(delete(GroupUser).where(GroupUser.userid.in_(ids)))),
        "users": count(s.execute(delete(User).where(User.id.in_(ids)))),
    }
    empty = select(AllGroup.id).where(AllGroup.id.in_(touched), ~AllGroup.id.in_(select(GroupUser.groupid)))
    gone = list(s.scalars(empty))
    if gone:
        _delete_conversations(s, list(s.scalars(select(Conversation.id).where(Conversation.groupid.in_(gone)))))
    done["groups"] = count(s.execute(delete(AllGroup).where(AllGroup.id.in_(gone)))) if gone else 0
    return done


def _delete_conversations(s: Session, conv_ids: list[int]) -> int:
    """Conversations with their messages and cursors; how many messages."""
    if not conv_ids:
        return 0
    n = s.execute(delete(Message).where(Message.conversation_id.in_(conv_ids)))
    s.execute(delete(Cursor).where(Cursor.conversation_id.in_(conv_ids)))
    s.execute(delete(Conversation).where(Conversation.id.in_(conv_ids)))
    return int(getattr(n, "rowcount", 0) or 0)


# --- friends ---------------------------------------------------------------


def add_friend(s: Session, user_id: int, friend_id: int) -> None:
    s.add(Friend(userid=user_id, friendid=friend_id))
    s.flush()


def is_friend(s: Session, user_id: int, friend_id: int) -> bool:
    q = select(Friend.userid).where(Friend.userid == user_id, Friend.friendid == friend_id)
    return s.scalar(q) is not None


def friends_of(s: Session, user_id: int) -> list[tuple[int, str]]:
    q = (
        select(User.id, User.name)
        .join(Friend, Friend.friendid == User.id)
        .where(Friend.userid == user_id)
        .order_by(User.id)
    )
    return [(r.id, r.name) for r in s.execute(q)]


# --- groups ----------------------------------------------------------------


def create_group(s: Session, name: str, desc: str, creator_id: int) -> int:
    group = AllGroup(groupname=name, groupdesc=desc)
    s.add(group)
    s.flush()
    s.add(GroupUser(groupid=group.id, userid=creator_id, grouprole="creator"))
    s.flush()
    return group.id


def group_exists(s: Session, group_id: int) -> bool:
    return s.scalar(select(AllGroup.id).where(AllGroup.id == group_id)) is not None


def group_name_taken(s: Session, name: str) -> bool:
    return s.scalar(select(AllGroup.id).where(AllGroup.groupname == name)) is not None


def add_member(s: Session, group_id: int, user_id: int, role: str = "normal") -> None:
    s.add(GroupUser(groupid=group_id, userid=user_id, grouprole=role))
    s.flush()


def is_member(s: Session, group_id: int, user_id: int) -> bool:
    q = select(GroupUser.userid).where(GroupUser.groupid == group_id, GroupUser.userid == user_id)
    return s.scalar(q) is not None


def member_ids(s: Session, group_id: int) -> list[int]:
    q = select(GroupUser.userid).where(GroupUser.groupid == group_id).order_by(GroupUser.userid)
    return list(s.scalars(q))


def groups_of(s: Session, user_id: int) -> list[tuple[AllGroup, list[tuple[int, str, str]]]]:
    """The user's groups, each with its members as (id, name, role), in two
    queries whatever the number of groups."""
    mine = select(GroupUser.groupid).where(GroupUser.userid == user_id)
    groups = s.scalars(select(AllGroup).where(AllGroup.id.in_(mine)).order_by(AllGroup.id)).all()
    members: dict[int, list[tuple[int, str, str]]] = {g.id: [] for g in groups}
    if groups:
        q = (
            select(GroupUser.groupid, User.id, User.name, GroupUser.grouprole)
            .join(User, User.id == GroupUser.userid)
            .where(GroupUser.groupid.in_(list(members)))
            .order_by(GroupUser.groupid, User.id)
        )
        for gid, uid, name, role in s.execute(q):
            members[gid].append((uid, name, role))
    return [(g, members[g.id]) for g in groups]


def list_groups(s: Session, limit: int = 1000) -> list[tuple[AllGroup, int]]:
    q = (
        select(AllGroup, func.count(GroupUser.userid))
        .outerjoin(GroupUser, GroupUser.groupid == AllGroup.id)
        .group_by(AllGroup.id)
        .order_by(AllGroup.id)
        .limit(limit)
    )
    return [(g, int(n)) for g, n in s.execute(q)]


# --- offline messages ------------------------------------------------------


def store_offline(s: Session, items: Iterable[tuple[int, str]]) -> int:
    """Store (user id, message text) pairs; one statement for the lot.

    Lock order (MariaDB): the recipients' user rows first, in id order, then
    the new offline rows, as a login does (when it writes the user row, a
    new resume token, it does so before it takes the offline rows). Without
    the explicit lock, InnoDB took the user row only through the foreign key
    check, after the new row: holding that row, the INSERT waited for a
    login that held the user row and was waiting for the offline rows, a
    deadlock (issue 11)."""
    items_list = list(items)
    rows = [{"userid": uid, "message": text} for uid, text in items_list]
    if rows:
        if s.get_bind().dialect.name != "sqlite":  # SQLite locks the whole file: no order to keep
            ids = sorted({uid for uid, _ in items_list})
            s.execute(select(User.id).where(User.id.in_(ids)).order_by(User.id).with_for_update(read=True))
        s.execute(insert(OfflineMessage), rows)
    return len(rows)


# --- a batch of logins -----------------------------------------------------

GroupEntry = tuple[AllGroup, list[tuple[int, str, str]]]


def friends_of_many(s: Session, user_ids: Sequence[int]) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {u: [] for u in user_ids}
    q = (
        select(Friend.userid, User.id, User.name)
        .join(User, Friend.friendid == User.id)
        .where(Friend.userid.in_(list(user_ids)))
        .order_by(Friend.userid, User.id)
    )
    for owner, uid, name in s.execute(q):
        out[owner].append((uid, name))
    return out


def groups_of_many(s: Session, user_ids: Sequence[int], bare: Collection[int] = ()) -> dict[int, list[GroupEntry]]:
    """Each user's groups with their members, in three queries for the batch.
    The users in `bare` get their groups with empty member lists (a login
    that left them out, docs/protocol.md section F): members are read only
    for the groups of the others, so a group of 50,000 costs them nothing."""
    out: dict[int, list[GroupEntry]] = {u: [] for u in user_ids}
    mine = s.execute(select(GroupUser.userid, GroupUser.groupid).where(GroupUser.userid.in_(list(user_ids)))).all()
    if not mine:
        return out
    group_ids = sorted({gid for _, gid in mine})
    groups = {g.id: g for g in s.scalars(select(AllGroup).where(AllGroup.id.in_(group_ids)))}
    members: dict[int, list[tuple[int, str, str]]] = {gid: [] for gid in group_ids}
    listed = sorted({gid for uid, gid in mine if uid not in bare})
    q = (
        select(GroupUser.groupid, User.id, User.name, GroupUser.grouprole)
        .join(User, User.id == GroupUser.userid)
        .where(GroupUser.groupid.in_(listed))
        .order_by(GroupUser.groupid, User.id)
    )
    for gid, uid, name, role in (s.execute(q) if listed else ()):
        members[gid].append((uid, name, role))
    for uid, gid in sorted(mine, key=lambda r: (r[0], r[1])):
        out[uid].append((groups[gid], [] if uid in bare else members[gid]))
    return out


def member_counts(s: Session, group_ids: Collection[int]) -> dict[int, int]:
    """How many members each group has (one GROUP BY on the member table's key)."""
    if not group_ids:
        return {}
    q = (select(GroupUser.groupid, func.count()).where(GroupUser.groupid.in_(sorted(group_ids)))
         .group_by(GroupUser.groupid))
    return {int(gid): int(n) for gid, n in s.execute(q)}


def group_members_page(s: Session, group_id: int, after: int, limit: int) -> list[tuple[int, str, str]]:
    """(id, name, role) of the members with id > after, by id, at most limit:
    keyset paging, so a page costs the same anywhere in a group of 50,000 and
    a join meanwhile neither repeats nor skips anyone."""
    q = (select(User.id, User.name, GroupUser.grouprole).join(GroupUser, GroupUser.userid == User.id)
         .where(GroupUser.groupid == group_id, User.id > after).order_by(User.id).limit(limit))
    return [(r.id, r.name, r.grouprole) for r in s.execute(q)]


def take_offline_many(s: Session, user_ids: Sequence[int]) -> dict[int, list[str]]:
    """Each user's stored messages, oldest first, removed in the same unit of
    work so that they are handed over exactly once (only those read: the
    locked rows, up to each user's last id)."""
    out: dict[int, list[str]] = {u: [] for u in user_ids}
    q = (
        select(OfflineMessage.userid, OfflineMessage.id, OfflineMessage.message)
        .where(OfflineMessage.userid.in_(list(user_ids)))
        .order_by(OfflineMessage.userid, OfflineMessage.id)
        .with_for_update()
    )
    last: dict[int, int] = {}
    for uid, mid, text in s.execute(q):
        out[uid].append(text)
        last[uid] = mid
    if last:
        taken = or_(*(and_(OfflineMessage.userid == u, OfflineMessage.id <= m) for u, m in last.items()))
        s.execute(delete(OfflineMessage).where(taken))
    return out


# --- friend requests, blocks, search (docs/protocol.md section F) -----------

Person = tuple[int, str]  # (id, name)


def _like_prefix(prefix: str) -> str:
    """LIKE pattern for names starting with prefix, its wildcards literal;
    compared lower-cased, since names are stored with a binary collation."""
    escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def search_users(s: Session, prefix: str, offset: int, limit: int) -> list[Person]:
    """Users whose name starts with prefix, any case, by name then id.
    A scan of the user table: fine for the original's scale, an index on a
    lower-cased name column when it is not."""
    q = (
        select(User.id, User.name)
        .where(func.lower(User.name).like(_like_prefix(prefix), escape="\\"))
        .order_by(User.name, User.id)
        .offset(offset)
        .limit(limit)
    )
    return [(r.id, r.name) for r in s.execute(q)]


def friends_among(s: Session, user_id: int, candidates: Sequence[int]) -> set[int]:
    """Those of candidates in the user's friend list."""
    if not candidates:
        return set()
    q = select(Friend.friendid).where(Friend.userid == user_id, Friend.friendid.in_(list(candidates)))
    return set(s.scalars(q))


def watchers_of(s: Session, user_ids: Sequence[int]) -> dict[int, list[int]]:
    """For each user, those who have it in their friend list: who sees its
    presence."""
    out: dict[int, list[int]] = {u: [] for u in user_ids}
    if out:
        q = select(Friend.friendid, Friend.userid).where(Friend.friendid.in_(list(out)))
        for uid, watcher in s.execute(q):
            out[uid].append(watcher)
    return out


def make_friends(s: Session, a: int, b: int) -> None:
    """Friends both ways (either direction may exist already)."""
    have = set(s.execute(select(Friend.userid, Friend.friendid).where(
        or_(and_(Friend.userid == a, Friend.friendid == b), and_(Friend.userid == b, Friend.friendid == a)))).all())
    for pair in ((a, b), (b, a)):
        if pair not in have:
            s.add(Friend(userid=pair[0], friendid=pair[1]))
    s.flush()


def remove_friends(s: Session, a: int, b: int) -> int:
    """No friendship left between a and b, either way; rows removed."""
    both = or_(and_(Friend.userid == a, Friend.friendid == b), and_(Friend.userid == b, Friend.friendid == a))
    return int(getattr(s.execute(delete(Friend).where(both)), "rowcount", 0) or 0)


def request_exists(s: Session, from_id: int, to_id: int) -> bool:
    q = select(FriendRequest.fromid).where(FriendRequest.fromid == from_id, FriendRequest.toid == to_id)
    return s.scalar(q) is not None


def add_request(s: Session, from_id: int, to_id: int, note: str, now: int) -> None:
    s.add(FriendRequest(fromid=from_id, toid=to_id, note=note, created=now))
    s.flush()


def take_request(s: Session, from_id: int, to_id: int) -> bool:
    """Remove a pending request; False when there was none."""
    q = delete(FriendRequest).where(FriendRequest.fromid == from_id, FriendRequest.toid == to_id)
    return bool(getattr(s.execute(q), "rowcount", 0))


def drop_requests(s: Session, a: int, b: int) -> None:
    """Every pending request between a and b, either way."""
    both = or_(and_(FriendRequest.fromid == a, FriendRequest.toid == b),
               and_(FriendRequest.fromid == b, FriendRequest.toid == a))
    s.execute(delete(FriendRequest).where(both))


def pending_requests(s: Session, user_id: int) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    """The user's pending requests as (id, name, note): received, then sent;
    oldest first."""
    incoming = (select(User.id, User.name, FriendRequest.note).join(FriendRequest, FriendRequest.fromid == User.id)
                .where(FriendRequest.toid == user_id).order_by(FriendRequest.created, User.id))
    outgoing = (select(User.id, User.name, FriendRequest.note).join(FriendRequest, FriendRequest.toid == User.id)
                .where(FriendRequest.fromid == user_id).order_by(FriendRequest.created, User.id))
    return ([(r.id, r.name, r.note) for r in s.execute(incoming)],
            [(r.id, r.name, r.note) for r in s.execute(outgoing)])


def add_block(s: Session, user_id: int, blocked_id: int) -> bool:
    """user_id blocks blocked_id: their friendship and requests, both ways,
    go too. False when the block was there already."""
    remove_friends(s, user_id, blocked_id)
    drop_requests(s, user_id, blocked_id)
    q = select(Block.userid).where(Block.userid == user_id, Block.blockedid == blocked_id)
    if s.scalar(q) is not None:
        return False
    s.add(Block(userid=user_id, blockedid=blocked_id))
    s.flush()
    return True


def remove_block(s: Session, user_id: int, blocked_id: int) -> bool:
    q = delete(Block).where(Block.userid == user_id, Block.blockedid == blocked_id)
    return bool(getattr(s.execute(q), "rowcount", 0))


def blockers_of(s: Session, user_ids: Sequence[int]) -> dict[int, set[int]]:
    """For each user, those who blocked it."""
    out: dict[int, set[int]] = {u: set() for u in user_ids}
    if out:
        for blocker, uid in s.execute(select(Block.userid, Block.blockedid).where(Block.blockedid.in_(list(out)))):
            out[uid].add(blocker)
    return out


def blocked_by(s: Session, user_id: int) -> list[int]:
    """Those the user blocked."""
    return blocked_by_many(s, [user_id])[user_id]


def blocked_by_many(s: Session, user_ids: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {u: [] for u in user_ids}
    if out:
        q = select(Block.userid, Block.blockedid).where(Block.userid.in_(list(out))).order_by(Block.blockedid)
        for uid, blocked in s.execute(q):
            out[uid].append(blocked)
    return out


def delete_social(s: Session, user_ids: Sequence[int]) -> dict[str, int]:
    """A deleted user's friend requests and blocks, both ways (the foreign
    keys cascade too; explicit, so the counts can be reported)."""
    ids = list(user_ids)

    def count(result: Any) -> int:
        return int(getattr(result, "rowcount", 0) or 0)

    return {
        "requests": count(s.execute(delete(FriendRequest).where(
            or_(FriendRequest.fromid.in_(ids), FriendRequest.toid.in_(ids))))),
        "blocks": count(s.execute(delete(Block).where(or_(Block.userid.in_(ids), Block.blockedid.in_(ids))))),
    }


# --- group management (docs/protocol.md section F) --------------------------


def group_of(s: Session, group_id: int) -> AllGroup | None:
    return s.get(AllGroup, group_id)


def group_members(s: Session, group_id: int) -> list[tuple[int, str, str]]:
    """(id, name, role) of each member, by id."""
    q = (select(User.id, User.name, GroupUser.grouprole).join(GroupUser, GroupUser.userid == User.id)
         .where(GroupUser.groupid == group_id).order_by(User.id))
    return [(r.id, r.name, r.grouprole) for r in s.execute(q)]


def remove_member(s: Session, group_id: int, user_id: int) -> bool:
    q = delete(GroupUser).where(GroupUser.groupid == group_id, GroupUser.userid == user_id)
    return bool(getattr(s.execute(q), "rowcount", 0))


def hand_over(s: Session, group_id: int, old: int, new: int) -> None:
    s.execute(update(GroupUser).where(GroupUser.groupid == group_id, GroupUser.userid == old)
              .values(grouprole="normal"))
    s.execute(update(GroupUser).where(GroupUser.groupid == group_id, GroupUser.userid == new)
              .values(grouprole="creator"))


def delete_group(s: Session, group_id: int) -> None:
    s.execute(delete(GroupUser).where(GroupUser.groupid == group_id))
    s.execute(delete(AllGroup).where(AllGroup.id == group_id))


def search_groups(s: Session, prefix: str, offset: int, limit: int) -> list[tuple[AllGroup, int]]:
    """Groups whose name starts with prefix, any case, with their member
    counts, by name then id."""
    q = (
        select(AllGroup, func.count(GroupUser.userid))
        .outerjoin(GroupUser, GroupUser.groupid == AllGroup.id)
        .where(func.lower(AllGroup.groupname).like(_like_prefix(prefix), escape="\\"))
        .group_by(AllGroup.id)
        .order_by(AllGroup.groupname, AllGroup.id)
        .offset(offset)
        .limit(limit)
    )
    return [(g, int(n)) for g, n in s.execute(q)]
