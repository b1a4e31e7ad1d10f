"""The gchat wire protocol: frames in, requests out; replies in, bytes out.

Pure: no sockets, no gevent, no database. This module is the one place that
knows the wire format of docs/protocol.md. The server and the client library
both build on it.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import orjson

__all__ = [
    "MsgId",
    "Errno",
    "REPLY_ID",
    "TIME_FORMAT",
    "ProtocolError",
    "FrameTooLarge",
    "FrameDecoder",
    "Limits",
    "Request",
    "parse_request",
    "encode",
    "dumps",
    "loads",
    "valid_name",
    "error_reply",
    "ack",
]


class MsgId(enum.IntEnum):
    LOGIN = 1
    LOGIN_ACK = 2
    REG = 3
    REG_ACK = 4
    ONE_CHAT = 5
    ADD_FRIEND = 6
    CREATE_GROUP = 7
    ADD_GROUP = 8
    GROUP_CHAT = 9
    LOGINOUT = 10
    ACK = 11
    # the conversation log (docs/protocol.md section D)
    RECEIVED = 12  # client: received up to cseq (cumulative)
    READ = 13  # client: read up to cseq
    READ_RECEIPT = 14  # server: the other side of a pair read up to cseq
    READERS = 15  # client: how many members read up to cseq
    HISTORY = 16  # client: a page of a conversation's messages
    # section F of docs/protocol.md: friends, presence, groups (12 to 16 are
    # the conversation log's requests)
    FRIEND_REQUEST = 20
    FRIEND_ANSWER = 21
    FRIEND_REMOVE = 22
    BLOCK = 23
    USER_SEARCH = 24
    GROUP_LEAVE = 25
    GROUP_REMOVE = 26
    GROUP_HANDOVER = 27
    GROUP_DELETE = 28
    GROUP_MEMBERS = 29
    GROUP_SEARCH = 30
    NOTICE = 31  # server to client: a friend request, a group's change...
    PRESENCE = 32  # server to client: a friend came online or went offline


class Errno(enum.IntEnum):
    OK = 0
    AUTH = 1  # login: wrong id or password; register: name taken or invalid
    ONLINE = 2
    BAD_REQUEST = 3
    UNKNOWN_MSGID = 4
    NOT_LOGGED_IN = 5
    FORBIDDEN = 6
    NOT_FOUND = 7
    CONFLICT = 8
    FRAME_TOO_LARGE = 9
    RATE_LIMITED = 10
    UNAVAILABLE = 11


# errno 11's errmsg when the server's database connection broke while a change
# was being committed: it may have been made (docs/protocol.md, errno 11);
# asking again, or looking, tells. The server says it, the client library knows it
OUTCOME_UNKNOWN = "database connection lost during the commit: whether the change was made is unknown"


# An operator's system message (docs/protocol.md part C) is a one-to-one
# message from this id, which no user has (ids start at 1), and this name.
SYSTEM_ID = 0
SYSTEM_NAME = "system"

# Requests answered by a reply of their own id + 1 (part A); the others by ACK_MSG.
REPLY_ID: dict[int, MsgId] = {MsgId.LOGIN: MsgId.LOGIN_ACK, MsgId.REG: MsgId.REG_ACK}

# The chat messages' `time` field, as the original client's getCurrentTime()
# writes it: "2024-05-01 13:04:05" (docs/protocol.md).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Between frames the original client may leave NULs; people typing into nc leave
# CR and spaces. None of these can start a JSON value, so all are skipped.
_SKIPPED = b"\0\n\r\t "
_TERMINATORS = (b"\0", b"\n")
_FILLER = b"\r\t "
# A frame: from its first byte that is neither terminator nor filler to the
# next terminator (its trailing filler is stripped after). No backtracking:
# a failed start costs one byte, so the scan is linear in any input.
_FRAME = re.compile(rb"[^\0\n\r\t ][^\0\n]*")
# Below this many bytes per terminator, splitting would make more pieces than
# the expression costs to scan (a minimal request is about 12 bytes).
_DENSE = 16

# How deeply a request may nest (the request object itself is level 1). A
# request is a flat object; extra fields a client adds are delivered as sent,
# and the encoder that re-encodes them for delivery stops at 254 levels, while
# the decoder accepts up to 1,024: a limit at parse time, well under the
# encoder's, keeps the two in agreement (what is accepted can be delivered).
MAX_DEPTH = 32

# Ids are stored in 32-bit signed INT columns (as in the original schema);
# anything outside that range cannot name a row and is a bad request.
MAX_ID = 2**31 - 1


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow.

    Carries the errno of docs/protocol.md, and as much of the request as could be
    read (msgid, seq) so that the error can still be addressed to it.
    """

    def __init__(
        self, errno: Errno, errmsg: str, msgid: int = 0, seq: int | None = None
    ) -> None:
        super().__init__(errmsg)
        self.errno = errno
        self.errmsg = errmsg
        self.msgid = msgid
        self.seq = seq


class FrameTooLarge(ProtocolError):
    def __init__(self, cap: int, frames: list[bytes] | None = None) -> None:
        super().__init__(Errno.FRAME_TOO_LARGE, f"frame larger than {cap} bytes")
        # the complete frames that came before the oversized one in the same
        # feed: they are valid and must still be handled, in order
        self.frames: list[bytes] = frames or []


@dataclass(frozen=True)
class Limits:
    """Size limits of part B; defaults are those of docs/protocol.md."""

    # 64 KiB holds a maximal chat message (8,000 characters, up to 4 bytes each
    # in UTF-8, and escaped) with room to spare, and bounds what one connection
    # can make the node buffer before it has sent a single complete frame.
    frame_max: int = 64 * 1024
    msg_max: int = 8000
    name_max: int = 50
    desc_max: int = 200
    password_max: int = 128


class FrameDecoder:
    """Splits a byte stream into frames, h11-style: feed bytes, take frames.

    A frame ends at NUL or LF, in any mix. The terminator of the first frame
    seen is remembered: replies use it (`terminator`), LF until then.

    Cost is linear in the bytes fed, in C: each feed looks for terminators
    only in its new bytes (never in what is buffered), and the complete part
    is cut into frames by one regular expression that skips any run of
    terminators and filler at once, with no Python step per terminator. A
    megabyte of NULs costs one scan, not a million loop turns (issue 11: it
    took 0.79 s; scripts/framing-speed).
    """

    def __init__(self, frame_max: int = Limits.frame_max) -> None:
        self._buf = bytearray()  # a partial frame: holds no terminator
        self.frame_max = frame_max
        self.terminator: bytes | None = None

    @property
    def reply_terminator(self) -> bytes:
        return self.terminator or b"\n"

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete, non-empty frame, in order.

        Raises FrameTooLarge when a frame grows past the cap, whether it is
        complete or still arriving; the decoder is then unusable.
        """
        if not self._buf and data[-1:] in _TERMINATORS and data.count(b"\0") + data.count(b"\n") == 1:
            # the usual feed: one whole request, nothing buffered
            frame = data.strip(_SKIPPED)
            if not frame:
                return []
            if len(frame) > self.frame_max:
                raise FrameTooLarge(self.frame_max)
            if self.terminator is None:
                self.terminator = data[-1:]
            return [frame]
        last = max(data.rfind(b"\0"), data.rfind(b"\n"))
        frames: list[bytes] = []
        if last >= 0:
            complete = bytes(self._buf) + data[:last] if self._buf else data[:last]
            self._buf = bytearray(data[last + 1 :])
            # only filler (a flood of NULs): one scan, nothing to split
            if complete.strip(_SKIPPED):
                frames = _frames(complete)
            if self.terminator is None and frames:
                self.terminator = _first_terminator(complete + data[last : last + 1], frames[0])
            if frames and max(map(len, frames)) > self.frame_max:
                ok = next(i for i, f in enumerate(frames) if len(f) > self.frame_max)
                raise FrameTooLarge(self.frame_max, frames[:ok])
        else:
            self._buf += data
        if len(self._buf) > self.frame_max:
            # Leading filler is dropped rather than counted, so a peer cannot
            # grow the buffer with white space; real content past the cap can
            # never become a valid frame.
            stripped = self._buf.lstrip(_SKIPPED)
            if len(stripped) > self.frame_max:
                raise FrameTooLarge(self.frame_max, frames)
            self._buf = stripped
        return frames


def _frames(complete: bytes) -> list[bytes]:
    """The non-empty frames of terminated input, stripped, in order."""
    ends = complete.count(b"\0") + complete.count(b"\n")
    if ends * _DENSE < len(complete):
        # ordinary traffic: few terminators, so few pieces to split into
        pieces = complete.replace(b"\0", b"\n").split(b"\n")
        return list(filter(None, map(bytes.strip, pieces, repeat(_SKIPPED))))
    # dense runs of terminators (a flood): the expression skips each run in one step
    return list(map(bytes.rstrip, _FRAME.findall(complete), repeat(_FILLER)))


def _first_terminator(stream: bytes, frame: bytes) -> bytes:
    """The byte that ended `frame`, the first frame in `stream`: everything
    before it is filler, so its first occurrence is the frame itself, and
    only filler lies between its end and its terminator."""
    end = stream.find(frame) + len(frame)
    return stream[end:].lstrip(b"\r\t ")[:1]


def dumps(obj: Any) -> bytes:
    """JSON text of obj. Control characters inside strings are escaped by the
    codec, so the result never holds a raw NUL or LF (a reply must not)."""
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def encode(obj: Any, terminator: bytes = b"\n") -> bytes:
    return orjson.dumps(obj) + terminator


# --- request validation ----------------------------------------------------

_INT = "int"
_STR = "str"
_BOOL = "bool"

# field -> (type, required). "id" is optional on every request after login (the
# session is the identity); the service checks that it matches when present.
_SCHEMAS: dict[MsgId, dict[str, tuple[str, bool]]] = {
    # password or, in its place, a resume token (section C): one of them is required
    MsgId.LOGIN: {"id": (_INT, True), "password": (_STR, False), "token": (_STR, False), "resume": (_BOOL, False),
                  "sync": (_BOOL, False),
                  "notices": (_BOOL, False),
                  # section F: false leaves the groups' member lists out of the reply
                  "group_members": (_BOOL, False)},
    MsgId.REG: {"name": (_STR, True), "password": (_STR, True)},
    MsgId.ONE_CHAT: {
        "id": (_INT, False),
        "name": (_STR, False),
        "to": (_INT, True),
        "msg": (_STR, True),
        "time": (_STR, False),
    },
    MsgId.ADD_FRIEND: {"id": (_INT, False), "friendid": (_INT, True)},
    MsgId.CREATE_GROUP: {
        "id": (_INT, False),
        "groupname": (_STR, True),
        "groupdesc": (_STR, False),
    },
    MsgId.ADD_GROUP: {"id": (_INT, False), "groupid": (_INT, True)},
    MsgId.GROUP_CHAT: {
        "id": (_INT, False),
        "name": (_STR, False),
        "groupid": (_INT, True),
        "msg": (_STR, True),
        "time": (_STR, False),
    },
    MsgId.LOGINOUT: {"id": (_INT, False)},
    # section D: a conversation is named by `conv`, or for history also by
    # `to` (a pair) or `groupid`; sequence numbers fit the same range as ids
    MsgId.RECEIVED: {"id": (_INT, False), "conv": (_INT, True), "cseq": (_INT, True)},
    MsgId.READ: {"id": (_INT, False), "conv": (_INT, True), "cseq": (_INT, True)},
    MsgId.READERS: {"id": (_INT, False), "conv": (_INT, True), "cseq": (_INT, True)},
    MsgId.HISTORY: {
        "id": (_INT, False),
        "conv": (_INT, False),
        "to": (_INT, False),
        "groupid": (_INT, False),
        "before": (_INT, False),
        "after": (_INT, False),
        "limit": (_INT, False),
    },
    MsgId.FRIEND_REQUEST: {"id": (_INT, False), "to": (_INT, True), "note": (_STR, False)},
    MsgId.FRIEND_ANSWER: {"id": (_INT, False), "from": (_INT, True), "accept": (_BOOL, True)},
    MsgId.FRIEND_REMOVE: {"id": (_INT, False), "friendid": (_INT, True)},
    MsgId.BLOCK: {"id": (_INT, False), "userid": (_INT, True), "block": (_BOOL, False)},
    MsgId.USER_SEARCH: {"id": (_INT, False), "name": (_STR, True), "page": (_INT, False), "limit": (_INT, False)},
    MsgId.GROUP_LEAVE: {"id": (_INT, False), "groupid": (_INT, True)},
    MsgId.GROUP_REMOVE: {"id": (_INT, False), "groupid": (_INT, True), "userid": (_INT, True)},
    MsgId.GROUP_HANDOVER: {"id": (_INT, False), "groupid": (_INT, True), "userid": (_INT, True)},
    MsgId.GROUP_DELETE: {"id": (_INT, False), "groupid": (_INT, True)},
    MsgId.GROUP_MEMBERS: {"id": (_INT, False), "groupid": (_INT, True), "after": (_INT, False),
                          "limit": (_INT, False)},
    MsgId.GROUP_SEARCH: {"id": (_INT, False), "name": (_STR, True), "page": (_INT, False), "limit": (_INT, False)},
}

# Strings whose length docs/protocol.md limits, and the limit that applies.
_LENGTH_LIMITS = {
    "msg": "msg_max",
    "groupdesc": "desc_max",
    "note": "desc_max",
    "password": "password_max",
    "token": "password_max",
    "name": "name_max",
    "groupname": "name_max",
    "time": "name_max",
}


class Request:
    """A validated request. A plain class with slots, not a frozen
    dataclass: one is made per request, and the frozen __init__ (an
    object.__setattr__ per field) cost 1 us of the reader's ~25 on the
    chat path (scripts/handle-speed). Nothing assigns to one after parse."""

    __slots__ = ("msgid", "body", "seq")

    def __init__(self, msgid: MsgId, body: dict[str, Any], seq: int | None = None) -> None:
        self.msgid = msgid
        self.body = body  # the whole decoded object, fields validated
        self.seq = seq

    def __repr__(self) -> str:
        return f"Request(msgid={self.msgid!r}, body={self.body!r}, seq={self.seq!r})"

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


def _is_int(v: Any) -> bool:
    # bool is an int in Python but never a valid id
    return isinstance(v, int) and not isinstance(v, bool)


# msgid -> MsgId: a dict lookup, where MsgId(n) went through EnumType.__call__
# (1-2 % of a node's CPU per chat message in py-spy)
_MSGIDS: dict[int, MsgId] = {int(m): m for m in MsgId}
# each request's fields as the loop of parse_request takes them: (field,
# kind, required, the Limits attribute that caps a string's length)
_CHECKS: dict[MsgId, tuple[tuple[str, str, bool, str], ...]] = {
    msgid: tuple((f, kind, required, _LENGTH_LIMITS.get(f, "msg_max")) for f, (kind, required) in schema.items())
    for msgid, schema in _SCHEMAS.items()
}


def parse_request(frame: bytes, limits: Limits = Limits()) -> Request:
    """Decode and validate one frame. Raises ProtocolError with the errno of
    docs/protocol.md, carrying msgid and seq whenever they could be read."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(Errno.BAD_REQUEST, "not valid JSON") from None
    if type(obj) is dict:
        raw_id = obj.get("msgid")
        # a chat message (nearly every request a node reads) whose every
        # field is as it should be: checked at once, not field by field
        chat = _CHATS.get(raw_id) if type(raw_id) is int else None
        if chat is not None and _chat_valid(obj, frame, chat[1], chat[2], limits):
            return Request(chat[0], obj, obj.get("seq"))
    return _parse_checked(obj, frame, limits)


# The chat messages (msgid 5 and 9, nearly every request a node reads), by
# their msgid: the MsgId, the field naming the recipient, and the fields of
# its schema (with any other field, _chat_valid looks at every value, and at
# the frame's bytes, for a null or anything nested).
_CHATS: dict[Any, tuple[MsgId, str, frozenset[str]]] = {
    int(m): (m, target, frozenset(("msgid", "seq", *_SCHEMAS[m])))
    for m, target in ((MsgId.ONE_CHAT, "to"), (MsgId.GROUP_CHAT, "groupid"))
}
# a field not sent, told from one sent as null (which _parse_checked removes)
_ABSENT: Any = object()


def _chat_valid(obj: dict[str, Any], frame: bytes, target: str, fields: frozenset[str], limits: Limits) -> bool:
    """A chat message that the checks of _parse_checked would accept, told
    in one function with no loop: True, and obj is as they would leave it.
    False for anything else, which goes through them for its exact error
    (or, a field sent as null, its removal)."""
    value = obj.get(target)
    if type(value) is not int or not 0 <= value <= MAX_ID:
        return False
    value = obj.get("msg")
    if type(value) is not str or len(value) > limits.msg_max:
        return False
    # the optional fields: absent, or as they should be (null is neither)
    value = obj.get("seq", _ABSENT)
    if value is not _ABSENT and type(value) is not int:
        return False
    value = obj.get("id", _ABSENT)
    if value is not _ABSENT and (type(value) is not int or not 0 <= value <= MAX_ID):
        return False
    name_max = limits.name_max
    value = obj.get("name", _ABSENT)
    if value is not _ABSENT and (type(value) is not str or len(value) > name_max):
        return False
    value = obj.get("time", _ABSENT)
    if value is not _ABSENT and (type(value) is not str or len(value) > name_max):
        return False
    # no field but those just checked: nothing null, nothing nested (the
    # usual message: one set comparison, not a look at every value and at
    # the frame's bytes); else a field present as null, or anything nested,
    # takes the full checks
    return obj.keys() <= fields or (None not in obj.values() and b"[" not in frame and frame.count(b"{") == 1)


def _parse_checked(obj: Any, frame: bytes, limits: Limits) -> Request:
    """parse_request's checks, one field at a time, each with its error."""
    if not isinstance(obj, dict):
        raise ProtocolError(Errno.BAD_REQUEST, "a request must be a JSON object")
    seq = obj.get("seq")
    if seq is not None and not _is_int(seq):
        raise ProtocolError(Errno.BAD_REQUEST, "seq must be an integer")
    raw_id = obj.get("msgid")
    if not isinstance(raw_id, int) or isinstance(raw_id, bool):
        raise ProtocolError(Errno.BAD_REQUEST, "msgid missing or not an integer", seq=seq)
    msgid = _MSGIDS.get(raw_id)
    if msgid is None:
        raise ProtocolError(Errno.UNKNOWN_MSGID, f"unknown msgid {raw_id}", raw_id, seq)
    checks = _CHECKS.get(msgid)
    if checks is None:  # a server-to-client id sent to the server
        raise ProtocolError(Errno.UNKNOWN_MSGID, f"msgid {raw_id} is not a request", raw_id, seq)
    # orjson gives exact types: `type(v) is int` is an integer and never a bool
    for field, kind, required, cap_name in checks:
        value = obj.get(field)
        if value is None:
            if required:
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' is missing", msgid, seq)
            obj.pop(field, None)
            continue
        if kind == _STR:
            if type(value) is not str:
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' must be a string", msgid, seq)
            cap = getattr(limits, cap_name)
            # register reports a bad name as errno 1 (part A); the service checks it
            if len(value) > cap and not (msgid == MsgId.REG and field == "name"):
                raise ProtocolError(
                    Errno.BAD_REQUEST, f"field '{field}' is longer than {cap} characters", msgid, seq
                )
        elif kind == _INT:
            if type(value) is not int:
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' must be an integer", msgid, seq)
            if not 0 <= value <= MAX_ID:
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' is out of range", msgid, seq)
        elif type(value) is not bool:
            raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' must be true or false", msgid, seq)
    # no bracket but the object's own: nothing nested (the usual request)
    if (b"[" in frame or frame.count(b"{") > 1) and _depth_over(obj, MAX_DEPTH):
        raise ProtocolError(Errno.BAD_REQUEST, f"nested deeper than {MAX_DEPTH} levels", msgid, seq)
    if msgid == MsgId.LOGIN and "password" not in obj and "token" not in obj:
        # part A's login has a password; a resume token (section C) may stand in for it
        raise ProtocolError(Errno.BAD_REQUEST, "field 'password' is missing", msgid, seq)
    return Request(msgid, obj, seq)


_CONTAINERS = (dict, list)


def _depth_over(obj: dict[str, Any], limit: int) -> bool:
    """True when obj nests deeper than `limit` levels. Iterative: a frame
    may nest 1,000 levels, past Python's recursion limit."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        items = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in items if type(v) in _CONTAINERS)
    return False


# Characters that draw nothing but are letters or symbols to Unicode (Lo,
# So): Hangul fillers and the blank Braille pattern. Zero-width and other
# format characters (Cf), separators (Z*) and lone marks (M*) are invisible
# by category.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _visible(c: str) -> bool:
    return unicodedata.category(c)[0] in "LNPS" and c not in _BLANK_LETTERS


def _blank_edge(c: str) -> bool:
    # a mark may end a name (a combining accent, an emoji's variation
    # selector); white space and zero-width characters may not
    return c.isspace() or unicodedata.category(c) in ("Zs", "Zl", "Zp", "Cf") or c in _BLANK_LETTERS


def valid_name(name: str, limits: Limits = Limits()) -> bool:
    """A user or group name: 1 to name_max characters, no control
    characters, at least one visible character, and neither starting nor
    ending with white space or an invisible character.

    One rule for both stores: MariaDB compares names under a PAD SPACE
    collation ("bob " equals "bob" under its unique key), SQLite exactly;
    with no name ending in white space the two never disagree. A name that
    draws as nothing, or as another name plus something unseen, could not be
    told apart by the people reading it."""
    return (
        0 < len(name) <= limits.name_max
        and not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name)
        and not _blank_edge(name[0])
        and not _blank_edge(name[-1])
        and any(map(_visible, name))
    )


# --- replies ---------------------------------------------------------------


def error_reply(err: ProtocolError) -> dict[str, Any]:
    """The reply to a request the protocol refuses, addressed from the error."""
    return refusal(err.errno, err.errmsg, err.msgid, err.seq)


def refusal(errno: Errno, errmsg: str, msgid: int, seq: int | None) -> dict[str, Any]:
    """The reply to a refused request: LOGIN_ACK / REG_ACK for login and
    register (the original client reads only those), ACK_MSG otherwise."""
    reply_id = REPLY_ID.get(MsgId(msgid)) if msgid in (1, 3) else None
    out: dict[str, Any]
    if reply_id is not None:
        out = {"msgid": int(reply_id), "errno": int(errno), "errmsg": errmsg}
    else:
        out = {"msgid": int(MsgId.ACK), "ack": msgid, "errno": int(errno), "errmsg": errmsg}
    if seq is not None:
        out["seq"] = seq
    return out


def ack(msgid: int, seq: int, **result: Any) -> dict[str, Any]:
    return {"msgid": int(MsgId.ACK), "ack": msgid, "seq": seq, "errno": 0, **result}
