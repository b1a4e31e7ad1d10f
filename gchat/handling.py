"""What every handler module shares: the session check and the shapes of a
reply (docs/protocol.md part B)."""

from __future__ import annotations

from typing import Any, cast

from gchat.protocol import Errno, MsgId, ProtocolError, Request, ack, dumps
from gchat.registry import Peer

Reply = dict[str, Any]


def refuse(errno: Errno, msg: str) -> ProtocolError:
    return ProtocolError(errno, msg)


def silent(req: Request) -> bool:
    """Requests 5 to 10 are silent in part A: answered only when they carry seq."""
    return req.seq is None


def acked(req: Request, **result: Any) -> list[Reply]:
    """The ACK of a request 5 to 10, or nothing (silent)."""
    return [] if silent(req) else [ack(req.msgid, cast(int, req.seq), **result)]


def answered(req: Request, **result: Any) -> list[Reply]:
    """The requests of section F are always answered (seq echoed when given)."""
    reply: Reply = {"msgid": int(MsgId.ACK), "ack": int(req.msgid), "errno": 0, **result}
    if req.seq is not None:
        reply["seq"] = req.seq
    return [reply]


def session_user(peer: Peer, req: Request) -> int:
    """The session is the identity: a request acts as the logged-in user, and
    an `id` that names anyone else is refused."""
    if peer.user_id is None:
        raise refuse(Errno.NOT_LOGGED_IN, "log in first")
    claimed = req.body.get("id")
    if claimed is not None and claimed != peer.user_id:
        raise refuse(Errno.FORBIDDEN, "id is not yours")
    return peer.user_id


def notice(kind: str, **fields: Any) -> bytes:
    """A NOTICE (docs/protocol.md section F), as pushed."""
    return dumps({"msgid": int(MsgId.NOTICE), "kind": kind, **fields})
