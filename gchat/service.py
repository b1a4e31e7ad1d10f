"""The rules of docs/protocol.md: one plain handler per msgid, in a table.

Handlers get the services, the peer (what they may know of a connection) and
a validated request; they return the replies for the requester. They never
touch a socket or Redis: deliveries go through the router, presence through
the presence store, data through the store.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gevent.event import Event
from sqlalchemy.orm import Session

from gchat import audit, convlog, friends, groups, loghandlers, store
from gchat.batch import Batcher
from gchat.cache import Cache
from gchat.cluster.presence import Presence
from gchat.errors import Conflict, DomainError, Unavailable
from gchat.handling import Reply as Reply  # re-exported: the server's type of a reply
from gchat.handling import acked, refuse, session_user, silent
from gchat.metrics import Counts
from gchat.models import AllGroup, User
from gchat.passwords import Passwords
from gchat.protocol import TIME_FORMAT, Errno, Limits, MsgId, ProtocolError, Request, dumps, refusal, valid_name
from gchat.registry import Peer, Registry
from gchat.router import Router
from gchat.sessions import Sessions
from gchat.store import Database
from gchat.throttle import LoginThrottle
from gchat.writer import Done, LogWriter, Outgoing

log = logging.getLogger(__name__)

class Handover(Reply):
    """A reply that hands over stored messages, taken from the store for it
    (a login's `offlinemsg`): if it never reaches the peer, the connection
    stores `restore` again for `user_id`, so nothing accepted is lost."""

    __slots__ = ("user_id", "restore", "marks")

    def __init__(self, body: Reply, user_id: int, restore: list[str],
                 marks: list[tuple[int, int]] | None = None) -> None:
        super().__init__(body)
        self.user_id = user_id
        self.restore = restore
        # the log's (conversation, seq) it hands over: the user's delivered
        # cursor stays below them until the reply is written (sessions.py)
        self.marks = marks or []


# a login's session to open: user id, (token hash, expiry) when it asked for
# one, whether it is a sync login (its backlog is bounded: section D), and
# whether its groups come with their member lists (section F)
SessionOpen = tuple[int, tuple[str, int] | None, bool, bool]
# what its reply carries: friends, groups with their members, legacy stored
# messages, the log's backlog (what the user has not been handed), its
# conversations: conv -> (delivered, read, joined, last_seq), and, for a
# login without member lists, each of its groups' member count
SessionData = tuple[
    list[tuple[int, str]], list[store.GroupEntry], list[str], list[convlog.Logged],
    dict[int, tuple[int, int, int, int]], dict[int, int],
]


@dataclass
class Services:
    db: Database
    registry: Registry
    presence: Presence
    router: Router
    passwords: Passwords
    limits: Limits = field(default_factory=Limits)
    # a sync login's messages, and their bytes, all conversations together
    # (docs/protocol.md section D)
    sync_max: int = 5000
    sync_bytes: int = 4 * 1024 * 1024
    writer: LogWriter = field(init=False, repr=False)
    # modern clients' cumulative receipts, written in batches
    receipts: Batcher[tuple[int, int, int], None] = field(init=False, repr=False)
    cache: Cache = field(default_factory=Cache)
    counts: Counts = field(default_factory=Counts)
    failed_logins: audit.FailedLogins = field(default_factory=audit.FailedLogins)
    # how long a resume token is accepted after the login that issued it
    resume_ttl: int = 24 * 3600
    # failed logins slow their next tries down (gchat/throttle.py)
    throttle: LoginThrottle = field(default_factory=lambda: LoginThrottle(clock=time.monotonic))
    # the classic ADD_FRIEND (msgid 6) sends a friend request instead of
    # adding at once (docs/protocol.md section F)
    friend_requests: bool = False
    # seconds the log's writer waits to gather a busy stream's next batch (Settings.log_linger)
    log_linger: float = 0.0
    # messages waiting that end that wait at once (Settings.log_gather)
    log_gather: int = 0
    # joins and leaves are pushed live to the members of groups up to this
    # size only (docs/protocol.md section F, "Notices of a large group")
    group_notices_live: int = 1000
    # who blocked a user: hidden in its login reply's member lists (section F)
    blockers: Batcher[int, set[int]] = field(init=False, repr=False)
    # whom a user blocked: read by every chat to it, cached from its login
    block_lists: Batcher[int, list[int]] = field(init=False, repr=False)
    # concurrent logins share their units of work (gchat/batch.py):
    # a reconnect storm costs a few statements per batch, not per user
    users_by_id: Batcher[int, User | None] = field(init=False, repr=False)
    session_data: Batcher[SessionOpen, SessionData] = field(init=False, repr=False)
    # who has a user as a friend, for presence: logins and disconnects in a
    # storm share one query
    watchers: Batcher[int, list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.users_by_id = Batcher(self._load_users)
        self.session_data = Batcher(self._open_sessions)
        self.writer = LogWriter(self.db, self.router.deliver_logged, linger=self.log_linger,
                                counts=self.router.counts, gather=self.log_gather)
        self.router.heard = self.writer.heard  # what other nodes log, the writer learns (LogWriter.heard)
        self.receipts = Batcher(self._write_receipts)
        self.watchers = Batcher(self.load_watchers)
        self.blockers = Batcher(self._load_blockers)
        self.block_lists = Batcher(self._load_block_lists)

    @property
    def sessions(self) -> Sessions:
        return self.router.sessions

    def _write_receipts(self, marks: list[tuple[int, int, int]]) -> list[None]:
        with self.db.transaction() as s:
            convlog.set_delivered(s, marks)
        return [None] * len(marks)

    def load_watchers(self, user_ids: list[int]) -> list[list[int]]:
        with self.db.transaction() as s:
            found = store.watchers_of(s, user_ids)
        return [found[uid] for uid in user_ids]

    def _load_blockers(self, user_ids: list[int]) -> list[set[int]]:
        with self.db.transaction() as s:
            found = store.blockers_of(s, user_ids)
        return [found[uid] for uid in user_ids]

    def _load_users(self, user_ids: list[int]) -> list[User | None]:
        with self.db.transaction() as s:
            users = store.get_users(s, user_ids)
        return [users.get(uid) for uid in user_ids]

    def _open_sessions(self, items: list[SessionOpen]) -> list[SessionData]:
        """A new token where asked, and what each login reply
        carries: friends, groups, stored messages (taken)."""
        ids = [uid for uid, _, _, _ in items]
        synced = [uid for uid, _, sync, _ in items if sync]
        classic = [uid for uid, _, sync, _ in items if not sync]
        bare = {uid for uid, _, _, listed in items if not listed}

        def work(s: Session) -> list[SessionData]:
            # user rows (a new token's) before offline rows: the lock order
            # of store.store_offline
            store.set_tokens(s, [(uid, *tok) for uid, tok, _, _ in items if tok is not None])
            friends = store.friends_of_many(s, ids)
            groups = store.groups_of_many(s, ids, bare)
            counts = store.member_counts(s, {g.id for uid in bare for g, _ in groups[uid]})
            offline = store.take_offline_many(s, ids)
            cursors = convlog.cursors_of(s, ids)
            # one query for all the sync logins of the batch (only the
            # conversations with something waiting, each read up to what a
            # reply may carry), one for the classic ones, handed everything
            # at once (part A)
            backlog = convlog.backlog(s, {u: cursors[u] for u in synced}, per_conv=self.sync_max)
            backlog.update(convlog.backlog(s, {u: cursors[u] for u in classic}))
            return [(friends[uid], groups[uid], offline[uid], backlog[uid], cursors[uid],
                     {g.id: counts.get(g.id, 0) for g, _ in groups[uid]} if uid in bare else {})
                    for uid in ids]

        return self.db.run(work)

    # hashed once so that a login for an unknown id costs as much as a wrong
    # password: response time does not tell which ids exist
    _dummy_hash: str = ""

    def dummy_hash(self) -> str:
        if not self._dummy_hash:
            self._dummy_hash = self.passwords.hash("not a password")
        return self._dummy_hash

    def user_exists(self, user_id: int) -> bool:
        return self.cache.user_exists(user_id, self._load_user_exists)

    def _load_user_exists(self, user_id: int) -> bool:
        with self.db.transaction() as s:
            return store.user_exists(s, user_id)

    def members(self, group_id: int) -> tuple[int, ...]:
        def load(gid: int) -> list[int]:
            with self.db.transaction() as s:
                return store.member_ids(s, gid)

        return self.cache.members(group_id, load)

    def invalidate_group(self, group_id: int) -> None:
        self.cache.invalidate_group(group_id)

    def blocks(self, user_id: int) -> frozenset[int]:
        """Those the user blocked (loads of concurrent logins share a query)."""
        return self.cache.blocks(user_id, self.block_lists)

    def _load_block_lists(self, user_ids: list[int]) -> list[list[int]]:
        with self.db.transaction() as s:
            found = store.blocked_by_many(s, user_ids)
        return [found[uid] for uid in user_ids]

    def invalidate_blocks(self, user_id: int) -> None:
        self.cache.invalidate_blocks(user_id)


class Pending:
    """Replies that exist once the log has committed (a chat's ACK): the
    connection goes on with its next frames meanwhile and writes these in
    order, so a client's pipelined messages share the writer's batches
    instead of waiting for one commit each.

    It is the writer's sink for the message (batch.Sink): the writer's
    greenlet sets the outcome and calls the connection back at once, with
    no AsyncResult, link and event-loop callback per chat message."""

    __slots__ = ("_reply", "req", "_done", "_value", "_error", "_callback", "_woken")

    def __init__(self, reply: Callable[[Request, Any], list[Reply]], req: Request) -> None:
        # the replies, made from the request and the writer's outcome
        # (writer.Done): a module function, not a closure made per chat
        self._reply = reply
        self.req = req
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callback: Callable[[Any], None] | None = None
        self._woken: Event | None = None  # a get() that came before the commit waits on it

    def set(self, value: Any) -> None:
        self._value = value
        self._done = True
        if self._woken is not None:
            self._woken.set()
        callback = self._callback
        if callback is not None:
            self._callback = None
            try:
                callback(self)
            except Exception:  # in the writer's greenlet: the batch's other messages go on
                log.exception("a chat's commit callback failed")

    def set_exception(self, exception: BaseException) -> None:
        self._error = exception
        self.set(None)

    def done(self) -> bool:
        """get() would not block."""
        return self._done

    def when_done(self, callback: Callable[[Any], None]) -> None:
        """callback(self) once get() would not block, called in the writer's
        greenlet as it hands out the batch's outcomes (it must not block):
        the connection writes the ACK from there, with no greenlet of its
        own per chat (spawning and waking one was a tenth of a node's CPU
        per message in pingpong)."""
        if self._done:
            callback(self)
        else:
            self._callback = callback

    def get(self) -> list[Reply]:
        """The replies (waiting for the commit if it is not done); a refusal
        or a failure becomes the error reply addressed to the request, as
        in handle()."""
        if not self._done:
            self._woken = Event()
            self._woken.wait()
        req = self.req
        try:
            if self._error is not None:
                raise self._error
            return self._reply(req, self._value)
        except ProtocolError as e:
            return [refusal(e.errno, e.errmsg, req.msgid, req.seq)]
        except DomainError as e:
            return [refusal(ERRNO_OF[type(e)], str(e), req.msgid, req.seq)]


Handler = Callable[[Services, Peer, Request], "list[Reply] | Pending"]


_err, _acked, _session_user = refuse, acked, session_user


def _ip(peer: Peer) -> str:
    return str(peer.address[0])


def _now() -> str:
    return time.strftime(TIME_FORMAT)


# --- register and login ----------------------------------------------------

# what protocol.valid_name asks of user and group names, told to the client
_NAME_RULE = (
    "1 to {} characters, no control characters, something visible, "
    "no white space or invisible character at either end"
)


def register(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    name, password = req["name"], req["password"]
    if not valid_name(name, svc.limits):
        raise _err(Errno.AUTH, f"invalid name: {_NAME_RULE.format(svc.limits.name_max)}")
    if not password:
        raise _err(Errno.BAD_REQUEST, f"password must be 1 to {svc.limits.password_max} characters")
    with svc.db.transaction() as s:
        taken = store.name_taken(s, name)
    if taken:
        raise _err(Errno.AUTH, "name is taken")
    password_hash = svc.passwords.hash(password)
    try:
        with svc.db.transaction() as s:
            user_id = store.create_user(s, name, password_hash)
    except Conflict as e:  # lost a race for the name
        raise _err(Errno.AUTH, "name is taken") from e
    svc.cache.known_user(user_id)
    audit.event("register", user=user_id, name=name, ip=_ip(peer))
    reply: Reply = {"msgid": int(MsgId.REG_ACK), "errno": 0, "id": user_id}
    return [_with_seq(reply, req)]


def _with_seq(reply: Reply, req: Request) -> Reply:
    if req.seq is not None:
        reply["seq"] = req.seq
    return reply


class _LoginRefused(ProtocolError):
    """A refused login, with the reason the audit log gets; the peer sees
    only errmsg (which ids exist is not its business)."""

    def __init__(self, errno: Errno, errmsg: str, why: str) -> None:
        super().__init__(errno, errmsg)
        self.why = why


def login(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    """A login, timed (gchat_login_seconds) and audited: success, or failure
    with its reason (a storm of failures is summarised)."""
    start = time.perf_counter()
    result = "refused"
    try:
        replies = _login(svc, peer, req)
        result = "ok"
    except ProtocolError as e:
        svc.failed_logins.failed(getattr(e, "why", e.errmsg), _ip(peer), user=req.get("id"))
        raise
    except DomainError as e:
        result = "unavailable"
        svc.failed_logins.failed(str(e), _ip(peer), user=req.get("id"))
        raise
    finally:
        svc.counts.login_seconds.labels(result).observe(time.perf_counter() - start)
    audit.event("login", user=peer.user_id, name=peer.user_name, ip=_ip(peer),
                method="password" if req.get("password") is not None else "resume token")
    return replies


def _login(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    # parse_request made sure one of password and token is there
    user_id, password, token = req["id"], req.get("password"), req.get("token")
    if peer.user_id is not None:
        if peer.user_id == user_id:
            raise _LoginRefused(Errno.ONLINE, "id is online", "already logged in on this connection")
        raise _LoginRefused(Errno.FORBIDDEN, "log out before logging in as another user",
                            "another user is logged in on this connection")
    address = peer.address[0]
    wait = svc.throttle.admit(user_id, address)
    if wait > 0:
        # refused before anything costly, and nothing more is read from this
        # connection until then: a guesser that ignores the wait costs the
        # node nothing either
        peer.hold(wait)
        raise _LoginRefused(Errno.RATE_LIMITED, f"too many failed logins, retry in {math.ceil(wait)} s",
                            "throttled after failed logins")
    try:
        user = svc.users_by_id(user_id)
        if password is not None:
            stored = user.password if user is not None else svc.dummy_hash()
            ok = svc.passwords.verify(stored, password) and user is not None
        else:
            ok = _token_valid(user, token)
    except DomainError:
        svc.throttle.cancel(user_id, address)
        raise
    if not ok or user is None:
        why = "no such user" if user is None else "wrong password" if password is not None else "bad resume token"
        raise _LoginRefused(Errno.AUTH, "id or password error", why)
    svc.throttle.succeeded(user_id, address)

    # Online is claimed in the presence store first: it is the one atomic
    # step across nodes (a racing login elsewhere finds it taken). Everything
    # after it is undone if it fails, so the user is never left claimed.
    if not svc.presence.claim(user_id):
        raise _LoginRefused(Errno.ONLINE, svc.presence.why_online(user_id), "online elsewhere")
    if svc.registry.get(user_id) not in (None, peer):
        svc.presence.release(user_id)
        raise _LoginRefused(Errno.ONLINE, "id is online", "online elsewhere")
    # deliveries that come before the read below are parked, then sorted
    # against it: none is missed, none handed twice
    sync = req.get("sync") is True
    svc.sessions.begin(user_id, peer, sync, req.get("notices") is True)  # type: ignore[arg-type]
    svc.registry.bind(user_id, peer)
    peer.user_id, peer.user_name = user_id, user.name
    # bound: from here on messages to the user are pushed (after this reply);
    # those found offline before are stored first, so the take below has them
    svc.router.wait_stored(user_id)
    new_token = secrets.token_urlsafe(32) if req.get("resume") else None
    # a new token replaces (so revokes) any earlier one
    token = (_token_hash(new_token), int(time.time()) + svc.resume_ttl) if new_token is not None else None
    try:
        listed = req.get("group_members") is not False
        friend_list, group_list, offline, backlog, cursors, counts = svc.session_data(
            (user_id, token, sync, listed))
        if password is not None and svc.passwords.needs_rehash(user.password):
            new_hash = svc.passwords.hash(password)
            with svc.db.transaction() as s:
                store.set_password(s, user_id, new_hash)
    except DomainError:
        _leave(svc, peer)
        raise
    svc.sessions.open(user_id, {c: last for c, (_d, _r, _j, last) in cursors.items()})
    # the backlog oldest first across conversations, after the legacy rows
    # (stored before the log existed)
    if sync:
        # section D: the log's messages by conversation, the client acknowledges them
        try:
            convs = loghandlers.sync_reply(svc, user_id, cursors, backlog, req.get("notices") is True)
        except DomainError:
            _leave(svc, peer)
            raise
        reply = _login_reply(svc, user_id, user.name, friend_list, group_list, offline, counts)
        reply["convs"] = convs
        marks: list[tuple[int, int]] = []
    else:
        # part A's offlinemsg holds chat messages only: a group's notices
        # are for sessions that asked for them (section F), live
        backlog = [m for m in backlog if m.kind == convlog.CHAT]
        backlog.sort(key=lambda m: (m.created, m.conv, m.seq))
        handed = [*offline, *(m.body for m in backlog)]
        reply = _login_reply(svc, user_id, user.name, friend_list, group_list, handed, counts)
        marks = [(m.conv, m.seq) for m in backlog]
    if new_token is not None:
        reply["token"], reply["token_ttl"] = new_token, svc.resume_ttl
    if req.get("notices"):
        try:
            reply.update(friends.login_extras(svc, user_id))
        except DomainError:
            _leave(svc, peer)
            raise
        peer.notices = True
    try:
        # cached while the user is online: a chat to it needs no database
        # (docs/robustness.md: live chat goes on through a database outage)
        svc.blocks(user_id)
    except Unavailable:
        log.warning("database unavailable: user %d's blocks load at the first chat to it", user_id)
    friends.announce(svc, [user_id], "online")
    if offline or marks:
        return [Handover(_with_seq(reply, req), user_id, offline, marks)]
    return [_with_seq(reply, req)]


def _token_hash(token: str) -> str:
    # A resume token is 256 random bits: nothing to guess, so a fast hash is
    # enough (a slow one protects guessable passwords, not random keys); the
    # database holds only this digest, so a leaked table logs nobody in.
    return hashlib.sha256(token.encode()).hexdigest()


def _token_valid(user: User | None, token: str) -> bool:
    if user is None or not user.token_hash or not user.token_expires or user.token_expires <= time.time():
        return False
    return hmac.compare_digest(user.token_hash, _token_hash(token))


def _login_reply(
    svc: Services,
    user_id: int,
    name: str,
    friends: list[tuple[int, str]],
    groups: list[tuple[AllGroup, list[tuple[int, str, str]]]],
    offline: list[str],
    counts: dict[int, int],
) -> Reply:
    """Part A's reply. `counts` is set for a login that left the member lists
    out (`"group_members": false`, docs/protocol.md section F): each group
    then says how many members it has instead of listing them, so neither
    the reply nor the presence lookup grows with the groups' sizes."""
    everyone = {uid for uid, _ in friends} | {uid for _, ms in groups for uid, _, _ in ms}
    try:
        online = svc.presence.online(everyone)
    except Unavailable:
        online = set()  # presence unknown: say offline rather than refuse the login
    online.add(user_id)
    if any(ms for _, ms in groups) and online:
        # those who blocked the user show offline to it (docs/protocol.md
        # section F); friends need no such care: a block ends the friendship
        online -= svc.blockers(user_id)

    def state(uid: int) -> str:
        return "online" if uid in online else "offline"

    # Part A: each element is a JSON object encoded as a string; the original
    # client calls json::parse on each. Keys are left out when empty.
    reply: Reply = {"msgid": int(MsgId.LOGIN_ACK), "errno": 0, "id": user_id, "name": name}
    if friends:
        reply["friends"] = [dumps({"id": uid, "name": n, "state": state(uid)}).decode() for uid, n in friends]
    if groups:
        reply["groups"] = [
            dumps(
                {
                    "id": g.id,
                    "groupname": g.groupname,
                    "groupdesc": g.groupdesc,
                    **({"members": counts[g.id]} if g.id in counts else {"users": [
                        dumps({"id": uid, "name": n, "state": state(uid), "role": role}).decode()
                        for uid, n, role in members
                    ]}),
                }
            ).decode()
            for g, members in groups
        ]
    if offline:
        reply["offlinemsg"] = offline
    return reply


def _leave(svc: Services, peer: Peer) -> None:
    """The session's user goes offline here and in the presence store."""
    user_id = peer.user_id
    if user_id is None:
        return
    peer.user_id, peer.user_name, peer.notices = None, "", False
    # the delivered cursors are written before the user can log in again
    # (here, after the unbind; elsewhere, after the release): a new session
    # starts from them
    svc.sessions.end(user_id, peer)  # type: ignore[arg-type]
    svc.registry.unbind(user_id, peer)
    try:
        svc.presence.release(user_id)  # and mirrors user.state
    except Unavailable:
        log.warning("presence store unavailable: user %d is released when this node's claim expires", user_id)
        return  # its friends are told when a node sweeps the claim away
    friends.announce(svc, [user_id], "offline")


def disconnect(svc: Services, peer: Peer) -> None:
    """The connection is gone: its user, if any, is offline."""
    _leave(svc, peer)


def logout(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = _session_user(peer, req)
    # a log-out revokes the resume token: the next login needs the password.
    # First, so that when the store is down nothing changes (errno 11).
    with svc.db.transaction() as s:
        store.set_token(s, user_id, None, None)
    _leave(svc, peer)
    audit.event("logout", user=user_id, ip=_ip(peer))
    return _acked(req)


# --- chat ------------------------------------------------------------------


def _delivery(peer: Peer, user_id: int, req: Request) -> dict[str, Any]:
    """The delivered object: the request as sent, with the sender's real id
    (user_id: the session's) and name set by the server, and the sender's
    own seq removed. The writer adds the log's conv, cseq and ts."""
    body = dict(req.body)
    body.pop("seq", None)
    body["id"], body["name"] = user_id, peer.user_name
    if "time" not in body:  # not setdefault: strftime for every message cost more than the rest of this
        body["time"] = _now()
    return body


def _blocks_or_none(svc: Services, user_id: int) -> frozenset[int]:
    """Whom the user blocked; none when that cannot be read (its cache entry
    lost while the database is down): live chat to an online user goes on
    through an outage, as before blocks existed; a stored message fails on
    the database anyway."""
    try:
        return svc.blocks(user_id)
    except Unavailable:
        log.warning("database unavailable: user %d's blocks unknown, a chat to it is let through", user_id)
        return frozenset()


def one_chat(svc: Services, peer: Peer, req: Request) -> Pending:
    user_id = _session_user(peer, req)
    to = req.body["to"]
    if not svc.user_exists(to):
        raise _err(Errno.NOT_FOUND, f"no user {to}")
    if user_id in _blocks_or_none(svc, to):
        raise _err(Errno.FORBIDDEN, f"user {to} does not take your messages")  # and nothing is stored
    # answered once the message is committed to the log (docs/protocol.md, section D)
    pending = Pending(_one_chat_ack, req)
    # Outgoing's fields by position: its keywords cost a third of its making
    svc.writer.submit_to(Outgoing(user_id, _delivery(peer, user_id, req), to, None, not silent(req)), pending)
    return pending


def _one_chat_ack(req: Request, done: Done) -> list[Reply]:
    w, reached = LogWriter.outcome(done)  # or the log's refusal, raised
    if silent(req):  # part A: nothing to build (its fields made for acked to drop were 5 % of this path)
        return []
    return _acked(req, delivered="online" if reached else "offline", conv=w.conv, cseq=w.seq, ts=w.ts)


def group_chat(svc: Services, peer: Peer, req: Request) -> Pending:
    user_id = _session_user(peer, req)
    group_id = req.body["groupid"]
    members = svc.members(group_id)
    if not members:
        raise _err(Errno.NOT_FOUND, f"no group {group_id}")
    if user_id not in members:
        raise _err(Errno.FORBIDDEN, f"not a member of group {group_id}")
    pending = Pending(_group_chat_ack, req)
    svc.writer.submit_to(Outgoing(user_id, _delivery(peer, user_id, req), None, group_id), pending)
    return pending


def _group_chat_ack(req: Request, done: Done) -> list[Reply]:
    w, _ = LogWriter.outcome(done)  # or the log's refusal, raised
    if silent(req):  # as _one_chat_ack
        return []
    return _acked(req, members=len(w.recipients), conv=w.conv, cseq=w.seq, ts=w.ts)


# --- friends and groups ----------------------------------------------------


def add_friend(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = _session_user(peer, req)
    friend_id = req["friendid"]
    if svc.friend_requests:
        return _acked(req, **friends.ask(svc, peer, user_id, friend_id, ""))
    if friend_id == user_id:
        raise _err(Errno.BAD_REQUEST, "you cannot add yourself")
    if user_id in svc.blocks(friend_id):
        raise _err(Errno.FORBIDDEN, f"user {friend_id} does not take your requests")
    with svc.db.transaction() as s:
        friend = store.get_user(s, friend_id)
        if friend is None:
            raise _err(Errno.NOT_FOUND, f"no user {friend_id}")
        if store.is_friend(s, user_id, friend_id):
            raise _err(Errno.CONFLICT, f"user {friend_id} is already your friend")
        store.add_friend(s, user_id, friend_id)
        name = friend.name
    try:
        online = bool(svc.presence.online([friend_id]))
    except Unavailable:
        online = False
    state = "online" if online else "offline"
    return _acked(req, friend={"id": friend_id, "name": name, "state": state})


def create_group(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = _session_user(peer, req)
    name, desc = req["groupname"], req.get("groupdesc", "")
    if not valid_name(name, svc.limits):
        raise _err(Errno.BAD_REQUEST, f"invalid group name: {_NAME_RULE.format(svc.limits.name_max)}")
    with svc.db.transaction() as s:
        if store.group_name_taken(s, name):
            raise _err(Errno.CONFLICT, f"group name {name!r} is taken")
        group_id = store.create_group(s, name, desc, user_id)
        conv = convlog.create_group_conversation(s, group_id, user_id)
    svc.writer.known_group(group_id, conv)
    svc.sessions.joined(user_id, conv, 0)
    return _acked(req, groupid=group_id)


def add_group(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = _session_user(peer, req)
    group_id = req["groupid"]
    groups.join(svc, group_id, user_id, peer.user_name)
    return _acked(req, groupid=group_id)


HANDLERS: dict[MsgId, Handler] = {
    MsgId.LOGIN: login,
    MsgId.REG: register,
    MsgId.ONE_CHAT: one_chat,
    MsgId.ADD_FRIEND: add_friend,
    MsgId.CREATE_GROUP: create_group,
    MsgId.ADD_GROUP: add_group,
    MsgId.GROUP_CHAT: group_chat,
    MsgId.LOGINOUT: logout,
    **friends.HANDLERS,
    **groups.HANDLERS,
    **loghandlers.HANDLERS,
}


# The one place where gchat's own failures become errnos of docs/protocol.md
# (part B); the text the peer sees is the exception's.
ERRNO_OF: dict[type[DomainError], Errno] = {
    Unavailable: Errno.UNAVAILABLE,
    Conflict: Errno.CONFLICT,
}


def handle(svc: Services, peer: Peer, req: Request) -> list[Reply] | Pending:
    """Run the request's handler; a refusal or a failure becomes the error
    reply addressed to this request (its msgid and seq), now or from
    Pending.get once the log has committed."""
    try:
        return HANDLERS[req.msgid](svc, peer, req)  # a Pending holds its request
    except ProtocolError as e:
        svc.counts.error(e.errno)
        return [refusal(e.errno, e.errmsg, req.msgid, req.seq)]
    except DomainError as e:
        errno = ERRNO_OF[type(e)]
        svc.counts.error(errno)
        return [refusal(errno, str(e), req.msgid, req.seq)]
