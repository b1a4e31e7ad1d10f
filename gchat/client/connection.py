"""Client: one connection, its background reader, and the calls of
docs/protocol.md. See the package docstring for the shape."""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import ssl
import threading
import time as _time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from gchat.client.errors import (
    ConnectionLost,
    GchatError,
    NotLoggedIn,
    RequestTimeout,
    error_from_reply,
)
from gchat.client.framing import TERMINATOR, ReplySplitter, ReplyTo
from gchat.client.seen import Seen
from gchat.client.social import SocialCalls
from gchat.client.tls import TlsStream
from gchat.client.types import ChatMessage, Event, Friend, LoginResult, Notice, event_from_obj
from gchat.protocol import TIME_FORMAT, Errno, MsgId, ProtocolError, dumps, loads

log = logging.getLogger(__name__)

_DELIVERIES = (MsgId.ONE_CHAT, MsgId.GROUP_CHAT)


def now() -> str:
    return _time.strftime(TIME_FORMAT)


@dataclass
class _Pending:
    expect: ReplyTo
    done: threading.Event = field(default_factory=lambda: threading.Event())
    reply: dict[str, Any] | None = None


_CLOSED = object()  # ends messages() once the connection is gone


def tls_context(ca: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server: its certificate chains to
    the system's CAs (or to the CA in the PEM file `ca`) and names the host."""
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise ConnectionLost(f"cannot read the CA file {ca}: {e.strerror or e}") from e


def _tls_reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"the server's certificate was not verified: {e.verify_message} "
                "(a private CA: pass its certificate with --ca)")
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return str(e)


class Client(SocialCalls):
    """One connection. Thread-safe: requests are serialized, `send()` may be
    called from any thread. Use `Client.connect()`, or pass a connected socket.

    on_message(ChatMessage): called in the reader for each delivery, instead
        of queueing it for messages().
    on_reply(dict): called in the reader for each reply that no request waits
        for (acks of `send()`, errors to silent classic requests); without it,
        those are logged and dropped.
    on_event(Notice or PresenceChange): called in the reader for each notice
        of a login that asked for them (docs/protocol.md section F), instead
        of queueing it for events().
    on_close(exc or None): called once in the reader when the connection
        ends (None when `close()` ended it), before `closed` turns true.
    The callbacks run in the reader thread: they must be quick, and must not
    make requests on this client (the reader would wait for itself).
    """

    def __init__(
        self,
        sock: socket.socket | TlsStream,
        *,
        acks: bool | None = None,
        timeout: float = 10.0,
        on_message: Callable[[ChatMessage], None] | None = None,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
        on_close: Callable[[GchatError | None], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self._sock = sock
        sock.settimeout(None)  # the reader blocks; requests time out on their event
        self._acks_wanted = acks
        self.acks = bool(acks)  # known after login/register when acks is None
        self.timeout = timeout
        self.on_message = on_message
        self.on_reply = on_reply
        self.on_close = on_close
        self.on_event = on_event
        self._events: queue.Queue[Event] = queue.Queue()
        self.user: LoginResult | None = None
        # a sync session (docs/protocol.md section D): deliveries are
        # de-duplicated by (conv, cseq) and acknowledged once the application
        # has them
        self.seen = Seen()
        self._sync = False
        self._messages: queue.Queue[Any] = queue.Queue()
        self._seq = itertools.count(1)
        self._request_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: _Pending | None = None
        self._error: GchatError | None = None
        self._closing = False
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="gchat-client-reader", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0, *, tls: bool | ssl.SSLContext = False,
                ca: str | None = None, **kwargs: Any) -> Client:
        """Connect, over TLS when `tls` (nginx terminates it in front of the
        nodes; docs/operations.md). The server's certificate is verified
        against the system's CAs, or `ca` (a PEM file: a private CA), and
        must name `host`; pass an SSLContext of your own to decide otherwise."""
        context = tls if isinstance(tls, ssl.SSLContext) else tls_context(ca) if tls else None
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {e.strerror or e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream: socket.socket | TlsStream = sock
        if context is not None:
            try:
                stream = TlsStream(sock, context, host)
            except (ssl.SSLError, OSError) as e:
                sock.close()
                raise ConnectionLost(f"TLS with {host}:{port} failed: {_tls_reason(e)}") from e
        return cls(stream, timeout=timeout, **kwargs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Close the connection (without logging out: the server does that on
        disconnect) and wait for the reader to end."""
        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(self.timeout)

    # --- low level ---------------------------------------------------------

    def next_seq(self) -> int:
        """A seq no request of this client will use (for send())."""
        return next(self._seq)

    def send(self, obj: dict[str, Any]) -> None:
        """Write one frame and return at once. Replies to it, if any, go to
        on_reply. The fast path of load generators."""
        self.send_many((obj,))

    def send_many(self, objs: Iterable[dict[str, Any]]) -> None:
        """Write several frames in one sendall."""
        self._write(b"".join(dumps(o) + TERMINATOR for o in objs))

    def request(self, obj: dict[str, Any], timeout: float | None = None, check: bool = True) -> dict[str, Any]:
        """Send obj and return its reply: LOGIN_ACK / REG_ACK for msgid 1 / 3;
        for any other msgid an ACK_MSG, so a `seq` is added if obj lacks one
        (a part-B server is needed). Raises the GchatError of a non-zero errno
        when check is true, RequestTimeout, ConnectionLost."""
        msgid = int(obj["msgid"])
        if not ReplyTo.of(obj).expected:
            obj = {**obj, "seq": self.next_seq()}
        pending = _Pending(ReplyTo.of(obj))
        with self._request_lock:
            self._pending = pending
            try:
                self._write(dumps(obj) + TERMINATOR)
                if not pending.done.wait(self.timeout if timeout is None else timeout):
                    raise RequestTimeout(f"no reply to msgid {msgid} in time")
            finally:
                self._pending = None
        if pending.reply is None:
            raise self._error or ConnectionLost()
        if check and pending.reply.get("errno", 0) != 0:
            raise error_from_reply(pending.reply)
        return pending.reply

    def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as e:
            raise ConnectionLost(f"connection lost: {e.strerror or e}") from e

    # --- the reader --------------------------------------------------------

    def _read_loop(self) -> None:
        splitter = ReplySplitter()
        error: GchatError | None = None
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    error = ConnectionLost("the server closed the connection")
                    break
                for frame in splitter.feed(data):
                    self._route(frame)
        except OSError as e:
            error = ConnectionLost(f"connection lost: {e.strerror or e}")
        except (ProtocolError, ValueError, TypeError, KeyError) as e:  # garbage from the peer
            error = ConnectionLost(f"bad data from the server: {e}")
        except Exception as e:  # a callback's bug must still release waiters
            log.exception("client reader failed")
            error = ConnectionLost(f"client reader failed: {e!r}")
        finally:
            if self._closing:
                error = None
            self._error = error or ConnectionLost("connection closed")
            try:
                self._sock.close()
            except OSError:
                pass
            # on_close first, so that whoever then sees `closed` or a
            # ConnectionLost also finds its effects (the TUI's notice).
            if self.on_close is not None:
                try:
                    self.on_close(error)
                except Exception:
                    log.exception("on_close callback failed")
            self._closed.set()
            pending = self._pending
            if pending is not None:
                pending.done.set()
            self._messages.put(_CLOSED)

    def _route(self, frame: bytes) -> None:
        obj = loads(frame)
        if not isinstance(obj, dict):
            raise TypeError(f"a frame that is not an object: {frame[:80]!r}")
        msgid = obj.get("msgid")
        if msgid in _DELIVERIES:
            message = ChatMessage.from_obj(obj)
            if not self.seen.first(message):
                return  # at least once from the server: each shown once
            if self.on_message is not None:
                self.on_message(message)
                self._received(message)
            else:
                self._messages.put(message)
            return
        event = event_from_obj(obj)
        if event is not None:
            place = event.place if isinstance(event, Notice) else None
            if place is not None and self._sync:
                # a group's notice, logged: at least once, as a chat message
                if not self.seen.first(place):
                    return
                self.seen.took(place)
                self.ack_received(place.conv)
            if self.on_event is not None:
                self.on_event(event)
            else:
                self._events.put(event)
            return
        pending = self._pending
        if pending is not None and not pending.done.is_set() and pending.expect.matches(obj):
            pending.reply = obj
            pending.done.set()
        elif self.on_reply is not None:
            self.on_reply(obj)
        elif obj.get("errno"):
            log.warning("unrequested error from the server: %s", obj)
        else:
            log.debug("unrequested reply: %s", obj)

    # --- pushed messages ---------------------------------------------------

    def next_message(self, timeout: float | None = None) -> ChatMessage | None:
        """The next delivered message, or None if none came within timeout.
        Raises ConnectionLost once the connection is gone and the queue empty
        (unless close() ended it: then None)."""
        try:
            item = self._messages.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._messages.put(_CLOSED)  # every later call ends too
            if self._closing:
                return None
            raise self._error or ConnectionLost()
        assert isinstance(item, ChatMessage)
        self._received(item)
        return item

    def messages(self, timeout: float | None = None) -> Iterator[ChatMessage]:
        """Delivered messages as they come; ends when none arrives within
        timeout (None: wait for ever) or when close() is called."""
        while (message := self.next_message(timeout)) is not None:
            yield message

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next notice or presence change, or None if none came within
        timeout (only a login with notices=True gets them)."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    # --- the calls of docs/protocol.md ------------------------------------------

    def _seq_field(self) -> dict[str, int]:
        return {} if self._acks_wanted is False else {"seq": self.next_seq()}

    def register(self, name: str, password: str) -> int:
        """Create an account; returns its id. AuthError if the name is taken."""
        obj = {"msgid": int(MsgId.REG), "name": name, "password": password, **self._seq_field()}
        reply = self.request(obj)
        self._learn_acks(obj, reply)
        return int(reply["id"])

    def login(self, user_id: int, password: str, sync: bool = False, notices: bool = False,
              group_members: bool = True) -> LoginResult:
        """Log in; returns the user, friends, groups and offline messages.
        With sync (docs/protocol.md section D): the conversations, with their
        unread counts and the messages not acknowledged yet (`convs`), which
        are acknowledged here; later deliveries are acknowledged as the
        application takes them. notices=True (a gchat node, section F) also
        brings pending friend requests, and pushes notices and presence
        changes (events()). group_members=False (section F): the groups come
        with their member counts (Group.size), not their member lists, which
        page in with member_pages. AuthError (wrong id or password),
        AlreadyOnline."""
        obj: dict[str, Any] = {"msgid": int(MsgId.LOGIN), "id": user_id, "password": password,
                               **self._seq_field()}
        if sync:
            obj["sync"] = True
        if notices:
            obj["notices"] = True
        if not group_members:
            obj["group_members"] = False
        reply = self.request(obj)
        self._learn_acks(obj, reply)
        self.user = LoginResult.from_reply(reply)
        self._sync = sync
        if sync:
            for c in self.user.convs:
                self.seen.start(c.conv, c.delivered)
                # in the conversation's order: the notices missed while
                # away are told as events
                told = {n.place.cseq: n for n in c.notices if n.place is not None}
                places = [*c.messages, *(n.place for n in c.notices if n.place is not None)]
                for m in sorted(places, key=lambda m: m.cseq or 0):
                    if self.seen.first(m) and m.cseq in told:
                        self._events.put(told[m.cseq])
                    self.seen.took(m)
            self.ack_received()
        return self.user

    # --- the conversation log (section D) -----------------------------------

    def _received(self, message: ChatMessage) -> None:
        """The application has the message: a sync session acknowledges it
        (cumulative, one small frame without seq: no reply)."""
        if self._sync and message.conv is not None:
            self.seen.took(message)
            self.ack_received(message.conv)

    def ack_received(self, conv: int | None = None) -> None:
        """Tell the server what this client has, up to the first gap, for one
        conversation or all; what is not acknowledged comes at the next sync."""
        frames = [{"msgid": int(MsgId.RECEIVED), "conv": c, "cseq": q} for c, q in self.seen.to_ack(conv)]
        if frames:
            self.send_many(frames)

    def history(self, *, to: int | None = None, groupid: int | None = None, conv: int | None = None,
                before: int | None = None, after: int | None = None, limit: int | None = None,
                ) -> list[ChatMessage]:
        """A page of a conversation (with a user, a group, or by id), oldest
        first: after a cseq, before one, or the newest."""
        obj: dict[str, Any] = {"msgid": int(MsgId.HISTORY)}
        for key, value in (("to", to), ("groupid", groupid), ("conv", conv), ("before", before),
                           ("after", after), ("limit", limit)):
            if value is not None:
                obj[key] = value
        reply = self.request(obj)
        # a group's notices (a session with notices gets them in history too)
        # are not chat messages
        entries = [loads(m) if isinstance(m, (str, bytes)) else m for m in reply.get("msgs") or ()]
        return [ChatMessage.from_obj(m) for m in entries if m.get("msgid") != MsgId.NOTICE]

    def mark_read(self, conv: int, cseq: int) -> None:
        """Read up to cseq; the other side of a pair gets a receipt (msgid 14,
        through on_reply)."""
        self.request({"msgid": int(MsgId.READ), "conv": conv, "cseq": cseq})

    def readers(self, conv: int, cseq: int) -> tuple[int, int]:
        """(members who read up to cseq, other members)."""
        reply = self.request({"msgid": int(MsgId.READERS), "conv": conv, "cseq": cseq})
        return int(reply["readers"]), int(reply["members"])

    def _learn_acks(self, obj: dict[str, Any], reply: dict[str, Any]) -> None:
        if self._acks_wanted is None:
            self.acks = "seq" in obj and reply.get("seq") == obj["seq"]

    def _me(self) -> LoginResult:
        if self.user is None:
            raise NotLoggedIn(int(Errno.NOT_LOGGED_IN), "log in first")
        return self.user

    def _silent(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """A request that part A does not answer: acknowledged when the
        server can, else sent like the original client does."""
        if self.acks:
            return self.request(obj)
        self.send(obj)
        return None

    def chat(self, to: int, msg: str, time: str | None = None) -> str | None:
        """Send msg to user `to`; returns "online" or "offline" (stored for
        the next login), or None without acks."""
        me = self._me()
        obj = {"msgid": int(MsgId.ONE_CHAT), "id": me.id, "name": me.name, "to": to, "msg": msg, "time": time or now()}
        reply = self._silent(obj)
        return None if reply is None else reply.get("delivered")

    def add_friend(self, friendid: int) -> Friend | None:
        obj = {"msgid": int(MsgId.ADD_FRIEND), "id": self._me().id, "friendid": friendid}
        reply = self._silent(obj)
        return None if reply is None or "friend" not in reply else Friend.from_obj(reply["friend"])

    def create_group(self, name: str, desc: str = "") -> int | None:
        """Create a group, led by this user; returns its id (None without
        acks: the original server does not say; it shows at next login)."""
        obj = {"msgid": int(MsgId.CREATE_GROUP), "id": self._me().id, "groupname": name, "groupdesc": desc}
        reply = self._silent(obj)
        return None if reply is None else int(reply["groupid"])

    def join_group(self, groupid: int) -> None:
        self._silent({"msgid": int(MsgId.ADD_GROUP), "id": self._me().id, "groupid": groupid})

    def group_chat(self, groupid: int, msg: str, time: str | None = None) -> int | None:
        """Send msg to the group; returns how many members it reached, or
        None without acks."""
        me = self._me()
        obj = {
            "msgid": int(MsgId.GROUP_CHAT),
            "id": me.id,
            "name": me.name,
            "groupid": groupid,
            "msg": msg,
            "time": time or now(),
        }
        reply = self._silent(obj)
        return None if reply is None else int(reply.get("members", 0))

    def logout(self) -> None:
        """Go offline; the connection stays open and may log in again."""
        obj = {"msgid": int(MsgId.LOGINOUT), "id": self._me().id}
        self.user = None
        self._silent(obj)
