"""The client's exceptions: one root, one class per errno of docs/protocol.md,
and the failures of this side (lost connection, no reply in time)."""

from __future__ import annotations

from typing import Any

from gchat.protocol import OUTCOME_UNKNOWN, Errno


class GchatError(Exception):
    """Root of the library's errors. `errno` is docs/protocol.md's, or None for
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
    """errno 11: a store the request needs is down; nothing was changed,
    unless `outcome_unknown` (then asking again, or looking, tells)."""

    @property
    def outcome_unknown(self) -> bool:
        return self.errmsg == OUTCOME_UNKNOWN


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
    # the refused request: ACK_MSG names it in `ack`; LOGIN_ACK / REG_ACK are
    # the request's msgid + 1
    msgid = int(reply["ack"]) if "ack" in reply else int(reply.get("msgid", 1)) - 1
    cls = _BY_ERRNO.get(errno, GchatError)
    return cls(errno, str(reply.get("errmsg") or f"error {errno}"), msgid)
