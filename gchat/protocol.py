"""The gchat wire protocol: frames in, requests out; replies in, bytes out.

Pure: no sockets, no gevent, no database. This module is the one place that
knows the wire format of docs/protocol.md. The server and the client library
both build on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
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


# Requests answered by a reply of their own id + 1 (part A); the others by ACK_MSG.
REPLY_ID: dict[int, MsgId] = {MsgId.LOGIN: MsgId.LOGIN_ACK, MsgId.REG: MsgId.REG_ACK}

# The chat messages' `time` field, as the original client's getCurrentTime()
# writes it: "2024-05-01 13:04:05" (docs/protocol.md).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Between frames the original client may leave NULs; people typing into nc leave
# CR and spaces. None of these can start a JSON value, so all are skipped.
_SKIPPED = b"\0\n\r\t "

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
    """

    def __init__(self, frame_max: int = Limits.frame_max) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no terminator
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
        self._buf += data
        frames: list[bytes] = []
        buf = self._buf
        start = 0
        pos = self._scanned
        n = len(buf)
        while pos < n:
            nul = buf.find(b"\0", pos)
            lf = buf.find(b"\n", pos)
            if nul < 0 and lf < 0:
                break
            end = lf if nul < 0 else nul if lf < 0 else min(nul, lf)
            frame = bytes(buf[start:end]).strip(_SKIPPED)
            if frame:
                if len(frame) > self.frame_max:
                    raise FrameTooLarge(self.frame_max, frames)
                if self.terminator is None:
                    self.terminator = bytes(buf[end : end + 1])
                frames.append(frame)
            start = pos = end + 1
        del buf[:start]
        if len(buf) > self.frame_max:
            # Leading filler is dropped rather than counted, so a peer cannot
            # grow the buffer with white space; real content past the cap can
            # never become a valid frame.
            stripped = buf.lstrip(_SKIPPED)
            if len(stripped) > self.frame_max:
                raise FrameTooLarge(self.frame_max, frames)
            self._buf = buf = bytearray(stripped)
        self._scanned = len(buf)
        return frames


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
    MsgId.LOGIN: {"id": (_INT, True), "password": (_STR, False), "token": (_STR, False), "resume": (_BOOL, False)},
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
}

# Strings whose length docs/protocol.md limits, and the limit that applies.
_LENGTH_LIMITS = {
    "msg": "msg_max",
    "groupdesc": "desc_max",
    "password": "password_max",
    "token": "password_max",
    "name": "name_max",
    "groupname": "name_max",
    "time": "name_max",
}


@dataclass(frozen=True)
class Request:
    msgid: MsgId
    body: dict[str, Any]  # the whole decoded object, fields validated
    seq: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


def _is_int(v: Any) -> bool:
    # bool is an int in Python but never a valid id
    return isinstance(v, int) and not isinstance(v, bool)


def parse_request(frame: bytes, limits: Limits = Limits()) -> Request:
    """Decode and validate one frame. Raises ProtocolError with the errno of
    docs/protocol.md, carrying msgid and seq whenever they could be read."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(Errno.BAD_REQUEST, "not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Errno.BAD_REQUEST, "a request must be a JSON object")
    seq = obj.get("seq")
    if seq is not None and not _is_int(seq):
        raise ProtocolError(Errno.BAD_REQUEST, "seq must be an integer")
    raw_id = obj.get("msgid")
    if not isinstance(raw_id, int) or isinstance(raw_id, bool):
        raise ProtocolError(Errno.BAD_REQUEST, "msgid missing or not an integer", seq=seq)
    try:
        msgid = MsgId(raw_id)
    except ValueError:
        raise ProtocolError(Errno.UNKNOWN_MSGID, f"unknown msgid {raw_id}", raw_id, seq) from None
    schema = _SCHEMAS.get(msgid)
    if schema is None:  # a server-to-client id sent to the server
        raise ProtocolError(Errno.UNKNOWN_MSGID, f"msgid {raw_id} is not a request", raw_id, seq)
    for field, (kind, required) in schema.items():
        if field not in obj or obj[field] is None:
            if required:
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' is missing", msgid, seq)
            obj.pop(field, None)
            continue
        value = obj[field]
        if kind == _BOOL:
            if not isinstance(value, bool):
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' must be true or false", msgid, seq)
        elif kind == _INT:
            if not _is_int(value):
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' must be an integer", msgid, seq)
            if not 0 <= value <= MAX_ID:
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' is out of range", msgid, seq)
        else:
            if not isinstance(value, str):
                raise ProtocolError(Errno.BAD_REQUEST, f"field '{field}' must be a string", msgid, seq)
            cap = getattr(limits, _LENGTH_LIMITS.get(field, "msg_max"))
            # register reports a bad name as errno 1 (part A); the service checks it
            if len(value) > cap and not (msgid == MsgId.REG and field == "name"):
                raise ProtocolError(
                    Errno.BAD_REQUEST, f"field '{field}' is longer than {cap} characters", msgid, seq
                )
    if msgid == MsgId.LOGIN and "password" not in obj and "token" not in obj:
        # part A's login has a password; a resume token (section C) may stand in for it
        raise ProtocolError(Errno.BAD_REQUEST, "field 'password' is missing", msgid, seq)
    return Request(msgid, obj, seq)


def valid_name(name: str, limits: Limits = Limits()) -> bool:
    """A user or group name: 1 to name_max characters, no control characters,
    not only white space."""
    return (
        0 < len(name) <= limits.name_max
        and name.strip() != ""
        and not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name)
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
