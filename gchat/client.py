"""The gchat client library: one connection to a gchat node (or to nginx in
front of a cluster, or to the original C++ server), with typed calls.

    with Client.connect("127.0.0.1", 6000) as c:
        me = c.login(13, "secret")          # LoginResult: friends, groups, offline
        c.chat(15, "hello")                 # "online" / "offline", or None (classic)
        for m in c.messages(timeout=5):      # ChatMessage pushed by the server
            print(m.sender_name, m.text)

Shape: one background reader (a `threading.Thread`, hence a greenlet when the
process has called `gevent.monkey.patch_all()` before connecting) decodes
frames with `protocol.FrameDecoder` and routes each one: a reply goes to the
request waiting for it, a delivery (msgid 5 and 9) to the message queue or the
`on_message` callback, anything else (acks of fire-and-forget `send()`s, errors
to silent requests) to `on_reply`. Requests hold a lock from send to reply, so
one reply always matches one request, and deliveries arriving meanwhile are
queued, never lost.

Acknowledgements (PROTOCOL.md part B `seq`): requests 5 to 10 are silent in
part A. `acks=None` (the default) decides per connection: login and register
carry a `seq`; a gchat node echoes it in its reply, the original server does
not (it ignores unknown fields), so the reply itself tells whether later
requests can be acknowledged. With acks the calls return their results
(group id, friend, delivery state) and raise on errors; without them they are
fire-and-forget exactly like the original client, and return None.
`acks=False` forces classic frames: part-A fields only, NUL-terminated.

Every foreign error (OSError, bad JSON from the peer) is translated here into
`ConnectionLost`; every errno of PROTOCOL.md into a `GchatError` subclass.
Depends only on the standard library and `gchat.protocol`.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import threading
import time as _time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from gchat.protocol import Errno, FrameDecoder, MsgId, ProtocolError, dumps, loads

__all__ = [
    "AlreadyOnline",
    "AuthError",
    "BadRequest",
    "ChatMessage",
    "Client",
    "Conflict",
    "ConnectionLost",
    "Forbidden",
    "Friend",
    "GchatError",
    "Group",
    "GroupMember",
    "LoginResult",
    "NotFound",
    "NotLoggedIn",
    "RateLimited",
    "RequestTimeout",
    "Unavailable",
    "now",
]

log = logging.getLogger(__name__)

# The original client sends `strlen(s) + 1` bytes: the JSON text and its NUL.
TERMINATOR = b"\0"

# Replies can be far larger than requests: a login ack carries every stored
# offline message (each up to 8,000 characters) and every group with its
# members. This cap only stops a broken peer from exhausting memory.
REPLY_FRAME_MAX = 64 * 1024 * 1024

# Same format as the original client's getCurrentTime(): "2024-05-01 13:04:05".
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_DELIVERIES = (MsgId.ONE_CHAT, MsgId.GROUP_CHAT)
# Requests answered by a reply of their own (part A); all others by ACK_MSG.
_REPLY_ID: dict[int, MsgId] = {MsgId.LOGIN: MsgId.LOGIN_ACK, MsgId.REG: MsgId.REG_ACK}


def now() -> str:
    return _time.strftime(TIME_FORMAT)


# --- errors ----------------------------------------------------------------


class GchatError(Exception):
    """Root of the library's errors. `errno` is PROTOCOL.md's, or None for
    failures on this side (lost connection, timeout)."""

    def __init__(self, errno: int | None, errmsg: str, msgid: int = 0) -> None:
        super().__init__(errmsg if errno is None else f"{errmsg} (errno {errno})")
        self.errno = errno
        self.errmsg = errmsg
        self.msgid = msgid  # the request refused, when known


class AuthError(GchatError):
    """errno 1: wrong id or password at login; name taken/invalid at register."""


class AlreadyOnline(GchatError):
    """errno 2."""


class BadRequest(GchatError):
    """errno 3, and 4 (unknown msgid) and 9 (frame too large)."""


class NotLoggedIn(GchatError):
    """errno 5."""


class Forbidden(GchatError):
    """errno 6."""


class NotFound(GchatError):
    """errno 7: no such user or group."""


class Conflict(GchatError):
    """errno 8: already friends, already a member, group name taken."""


class RateLimited(GchatError):
    """errno 10."""


class Unavailable(GchatError):
    """errno 11: a store the request needs is down; nothing was changed."""


class ConnectionLost(GchatError):
    def __init__(self, errmsg: str = "connection lost") -> None:
        super().__init__(None, errmsg)


class RequestTimeout(GchatError):
    def __init__(self, errmsg: str = "no reply in time") -> None:
        super().__init__(None, errmsg)


_BY_ERRNO: dict[int, type[GchatError]] = {
    Errno.AUTH: AuthError,
    Errno.ONLINE: AlreadyOnline,
    Errno.BAD_REQUEST: BadRequest,
    Errno.UNKNOWN_MSGID: BadRequest,
    Errno.NOT_LOGGED_IN: NotLoggedIn,
    Errno.FORBIDDEN: Forbidden,
    Errno.NOT_FOUND: NotFound,
    Errno.CONFLICT: Conflict,
    Errno.FRAME_TOO_LARGE: BadRequest,
    Errno.RATE_LIMITED: RateLimited,
    Errno.UNAVAILABLE: Unavailable,
}


def error_from_reply(reply: dict[str, Any]) -> GchatError:
    """The exception for a reply whose errno is not 0."""
    errno = int(reply.get("errno", 0))
    msgid = int(reply.get("ack", reply.get("msgid", 0)))
    cls = _BY_ERRNO.get(errno, GchatError)
    return cls(errno, str(reply.get("errmsg") or f"error {errno}"), msgid)


# --- typed results ---------------------------------------------------------


def _obj(item: Any) -> dict[str, Any]:
    """An element of a login list: JSON text in part A; a server that sends
    the object itself is accepted too."""
    value = loads(item) if isinstance(item, (str, bytes)) else item
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {item!r}")
    return value


@dataclass(frozen=True)
class Friend:
    id: int
    name: str
    state: str  # "online" | "offline"

    @property
    def online(self) -> bool:
        return self.state == "online"

    @classmethod
    def from_obj(cls, item: Any) -> Friend:
        d = _obj(item)
        return cls(int(d["id"]), str(d.get("name", "")), str(d.get("state", "offline")))


@dataclass(frozen=True)
class GroupMember:
    id: int
    name: str
    state: str
    role: str  # "creator" | "normal"

    @property
    def online(self) -> bool:
        return self.state == "online"

    @classmethod
    def from_obj(cls, item: Any) -> GroupMember:
        d = _obj(item)
        return cls(
            int(d["id"]),
            str(d.get("name", "")),
            str(d.get("state", "offline")),
            str(d.get("role", "normal")),
        )


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    desc: str
    members: tuple[GroupMember, ...] = ()

    @classmethod
    def from_obj(cls, item: Any) -> Group:
        d = _obj(item)
        return cls(
            int(d["id"]),
            str(d.get("groupname", "")),
            str(d.get("groupdesc", "")),
            tuple(GroupMember.from_obj(u) for u in d.get("users") or ()),
        )


@dataclass(frozen=True)
class ChatMessage:
    """A delivered chat message: one-to-one (msgid 5, `to` set) or group
    (msgid 9, `groupid` set). `time` is the sender's text, as sent."""

    msgid: int
    sender_id: int
    sender_name: str
    text: str
    time: str = ""
    to: int | None = None
    groupid: int | None = None

    @property
    def is_group(self) -> bool:
        return self.msgid == MsgId.GROUP_CHAT

    @classmethod
    def from_obj(cls, item: Any) -> ChatMessage:
        d = _obj(item)
        msgid = int(d["msgid"])
        return cls(
            msgid=msgid,
            sender_id=int(d.get("id", 0)),
            sender_name=str(d.get("name", "")),
            text=str(d.get("msg", "")),
            time=str(d.get("time", "")),
            to=int(d["to"]) if "to" in d and msgid == MsgId.ONE_CHAT else None,
            groupid=int(d["groupid"]) if "groupid" in d and msgid == MsgId.GROUP_CHAT else None,
        )


@dataclass(frozen=True)
class LoginResult:
    id: int
    name: str
    friends: tuple[Friend, ...] = ()
    groups: tuple[Group, ...] = ()
    offline: tuple[ChatMessage, ...] = ()

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> LoginResult:
        return cls(
            id=int(reply["id"]),
            name=str(reply.get("name", "")),
            friends=tuple(Friend.from_obj(f) for f in reply.get("friends") or ()),
            groups=tuple(Group.from_obj(g) for g in reply.get("groups") or ()),
            offline=tuple(ChatMessage.from_obj(m) for m in reply.get("offlinemsg") or ()),
        )


# --- framing of what the server sends --------------------------------------


class _ReplySplitter:
    """FrameDecoder, plus tolerance for the original server, which writes
    `response.dump()` with no terminator at all. Bytes after the last
    terminator are kept aside; once they end in '}' and hold whole JSON
    objects, those objects are frames. A gchat frame whose terminator is still
    in flight is caught the same way; its terminator then arrives as an empty
    frame, which FrameDecoder skips."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder(REPLY_FRAME_MAX)
        self._tail = b""
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[bytes]:
        frames = self._decoder.feed(data)
        cut = max(data.rfind(b"\0"), data.rfind(b"\n"))
        self._tail = data[cut + 1 :] if cut >= 0 else self._tail + data
        if not self._tail.rstrip().endswith(b"}"):
            return frames
        try:
            text = self._tail.decode()
        except UnicodeDecodeError:
            return frames  # a multi-byte character cut by the read; wait
        pos, n = 0, len(text)
        while True:
            while pos < n and text[pos] in " \t\r":
                pos += 1
            if pos >= n:
                break
            try:
                _, end = self._json.raw_decode(text, pos)
            except ValueError:
                break
            frames.append(text[pos:end].encode())
            pos = end
        if pos:  # whole objects were taken: restart the decoder on the rest
            rest = text[pos:].encode()
            self._decoder = FrameDecoder(REPLY_FRAME_MAX)
            self._decoder.feed(rest)
            self._tail = rest
        return frames


# --- the client ------------------------------------------------------------


@dataclass
class _Pending:
    reply_msgid: int
    seq: int | None
    done: threading.Event = field(default_factory=lambda: threading.Event())
    reply: dict[str, Any] | None = None

    def matches(self, reply: dict[str, Any]) -> bool:
        if reply.get("msgid") != self.reply_msgid:
            return False
        if self.reply_msgid == MsgId.ACK:
            return self.seq is not None and reply.get("seq") == self.seq
        # login / register: the original server does not echo seq
        return "seq" not in reply or reply["seq"] == self.seq


_CLOSED = object()  # ends messages() once the connection is gone


class Client:
    """One connection. Thread-safe: requests are serialized, `send()` may be
    called from any thread. Use `Client.connect()`, or pass a connected socket.

    on_message(ChatMessage): called in the reader for each delivery, instead
        of queueing it for messages().
    on_reply(dict): called in the reader for each reply that no request waits
        for (acks of `send()`, errors to silent classic requests); without it,
        those are logged and dropped.
    on_close(exc or None): called once in the reader when the connection
        ends (None when `close()` ended it), before `closed` turns true.
    The callbacks run in the reader thread: they must be quick, and must not
    make requests on this client (the reader would wait for itself).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        acks: bool | None = None,
        timeout: float = 10.0,
        on_message: Callable[[ChatMessage], None] | None = None,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
        on_close: Callable[[GchatError | None], None] | None = None,
    ) -> None:
        self._sock = sock
        sock.settimeout(None)  # the reader blocks; requests time out on their event
        self._acks_wanted = acks
        self.acks = bool(acks)  # known after login/register when acks is None
        self.timeout = timeout
        self.on_message = on_message
        self.on_reply = on_reply
        self.on_close = on_close
        self.user: LoginResult | None = None
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
    def connect(cls, host: str, port: int, timeout: float = 10.0, **kwargs: Any) -> Client:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {e.strerror or e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout=timeout, **kwargs)

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
        reply_msgid = _REPLY_ID.get(msgid, MsgId.ACK)
        if reply_msgid == MsgId.ACK and "seq" not in obj:
            obj = {**obj, "seq": self.next_seq()}
        pending = _Pending(int(reply_msgid), obj.get("seq"))
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
        splitter = _ReplySplitter()
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
            if self.on_message is not None:
                self.on_message(message)
            else:
                self._messages.put(message)
            return
        pending = self._pending
        if pending is not None and not pending.done.is_set() and pending.matches(obj):
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
        return item

    def messages(self, timeout: float | None = None) -> Iterator[ChatMessage]:
        """Delivered messages as they come; ends when none arrives within
        timeout (None: wait for ever) or when close() is called."""
        while (message := self.next_message(timeout)) is not None:
            yield message

    # --- the calls of PROTOCOL.md ------------------------------------------

    def _seq_field(self) -> dict[str, int]:
        return {} if self._acks_wanted is False else {"seq": self.next_seq()}

    def register(self, name: str, password: str) -> int:
        """Create an account; returns its id. AuthError if the name is taken."""
        obj = {"msgid": int(MsgId.REG), "name": name, "password": password, **self._seq_field()}
        reply = self.request(obj)
        self._learn_acks(obj, reply)
        return int(reply["id"])

    def login(self, user_id: int, password: str) -> LoginResult:
        """Log in; returns the user, friends, groups and offline messages.
        AuthError (wrong id or password), AlreadyOnline."""
        obj = {"msgid": int(MsgId.LOGIN), "id": user_id, "password": password, **self._seq_field()}
        reply = self.request(obj)
        self._learn_acks(obj, reply)
        self.user = LoginResult.from_reply(reply)
        return self.user

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
