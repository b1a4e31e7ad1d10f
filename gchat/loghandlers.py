"""The handlers of docs/protocol.md section D: a sync login's reply,
receipts, read cursors, readers and history. Registered in
`service.HANDLERS`; the same rules as service.py (the session is the identity,
ProtocolErrors carry the errno), from gchat/handling.py as friends.py and
groups.py have them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gchat import convlog
from gchat.handling import Reply, acked, session_user
from gchat.protocol import Errno, MsgId, ProtocolError, Request, dumps
from gchat.registry import Peer

if TYPE_CHECKING:  # types only: service.py imports this module for its HANDLERS
    from gchat.service import Handler, Services

HISTORY_DEFAULT = 50
HISTORY_MAX = 200


def _err(errno: Errno, msg: str) -> ProtocolError:
    return ProtocolError(errno, msg)


def sync_reply(svc: Services, user_id: int, cursors: dict[int, tuple[int, int, int, int]],
               backlog: list[convlog.Logged], notices: bool = False) -> list[dict[str, Any]]:
    """The `convs` of a sync login: each conversation with its cursors,
    unread count and the messages after the delivered cursor (a group's
    notices too when the login asked for them). All conversations share one
    budget, `sync_max` messages and `sync_bytes` bytes of their text, filled
    oldest first across conversations: a conversation's `msgs` always follow
    its delivered cursor without a hole, and one cut short says `more` (the
    rest through history)."""
    waiting = sorted((m for m in backlog if notices or m.kind == convlog.CHAT),
                     key=lambda m: (m.created, m.conv, m.seq))
    by_conv: dict[int, list[str]] = {}
    cut: set[int] = set()
    size = 0
    for n, m in enumerate(waiting):
        size += len(m.body)
        if n >= svc.sync_max or size > svc.sync_bytes:
            # past the budget: nothing more of any conversation, so each
            # keeps its order; those with messages left say `more`
            cut = {x.conv for x in waiting[n:]}
            break
        by_conv.setdefault(m.conv, []).append(m.body)
    with svc.db.transaction() as s:
        info = convlog.conv_info(s, cursors)
        unread = convlog.unread_counts(s, user_id)
        peers_read = {c: convlog.read_cursor(s, o, c) for c, i in info.items()
                      if (o := i.other(user_id)) is not None}
    out = []
    for conv in sorted(cursors):
        delivered, read, _joined, last = cursors[conv]
        i = info.get(conv)
        if i is None:
            continue
        if i.kind == convlog.GROUP and i.groupid is None and delivered >= last:
            continue  # a deleted group's conversation, all of it handed over
        entry: dict[str, Any] = {"conv": conv, "kind": i.kind, "last": last, "delivered": delivered,
                                 "read": read, "unread": unread.get(conv, 0)}
        if i.kind == convlog.PAIR:
            entry["with"], entry["peer_read"] = i.other(user_id), peers_read.get(conv, 0)
        else:
            entry["groupid"] = i.groupid
        entry["msgs"] = by_conv.get(conv, [])
        # read up to sync_max numbers past the cursor (convlog.backlog)
        entry["more"] = conv in cut or last > delivered + svc.sync_max
        out.append(entry)
    return out


def _mark(svc: Services, peer: Peer, req: Request) -> tuple[int, int, int]:
    """(user, conv, cseq) of a receipt, read mark or readers question: the
    conversation must be the user's (errno 6), cseq within it (errno 3)."""
    user_id = session_user(peer, req)
    conv: int = req["conv"]
    with svc.db.transaction() as s:
        cur = convlog.cursor(s, user_id, conv)
    if cur is None:
        raise _err(Errno.FORBIDDEN, f"conversation {conv} is not yours")
    last = cur[3]
    seq: int = req["cseq"]
    if seq > last:
        raise _err(Errno.BAD_REQUEST, f"cseq {seq} is beyond the end of conversation {conv} ({last})")
    return user_id, conv, seq


def received(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    """A modern client has everything up to cseq: its delivered cursor moves
    (never back). What it does not acknowledge comes again at its next sync."""
    user_id, conv, seq = _mark(svc, peer, req)
    svc.receipts((user_id, conv, seq))
    return acked(req)


def read(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id, conv, seq = _mark(svc, peer, req)
    with svc.db.transaction() as s:
        convlog.set_read(s, user_id, conv, seq)
        info = convlog.conv_info(s, [conv])[conv]
    other = info.other(user_id)
    if other is not None:
        # live when the other side is online; otherwise its next sync shows `peer_read`
        body = dumps({"msgid": int(MsgId.READ_RECEIPT), "conv": conv, "id": user_id, "cseq": seq})
        svc.router.tell([other], body)
    return acked(req, conv=conv, cseq=seq)


def readers(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    """How many of the other members have read up to cseq."""
    user_id, conv, seq = _mark(svc, peer, req)
    with svc.db.transaction() as s:
        n = convlog.readers(s, conv, seq, exclude=user_id)
        members = convlog.member_count(s, conv) - 1
    return acked(req, conv=conv, cseq=seq, readers=n, members=members)


def history(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    """A page of a conversation: after a seq (oldest first), before a seq,
    or the newest; a member who joined a group reads what followed the join."""
    user_id = session_user(peer, req)
    named = [k for k in ("conv", "to", "groupid") if req.get(k) is not None]
    if len(named) != 1:
        raise _err(Errno.BAD_REQUEST, "name one conversation: conv, to or groupid")
    if req.get("before") is not None and req.get("after") is not None:
        raise _err(Errno.BAD_REQUEST, "before or after, not both")
    limit = req.get("limit", HISTORY_DEFAULT)
    if not 1 <= limit <= HISTORY_MAX:
        raise _err(Errno.BAD_REQUEST, f"limit must be 1 to {HISTORY_MAX}")
    with svc.db.transaction() as s:
        if req.get("to") is not None:
            conv = convlog.find_pair(s, user_id, req["to"])
            if conv is None:  # never talked: nothing to read
                return acked(req, conv=None, last=0, msgs=[])
        elif req.get("groupid") is not None:
            conv = convlog.find_group(s, req["groupid"])
            if conv is None:
                raise _err(Errno.NOT_FOUND, f"no group {req['groupid']}")
        else:
            conv = req["conv"]
        cur = convlog.cursor(s, user_id, conv)
        if cur is None:
            raise _err(Errno.FORBIDDEN, "not a member of that conversation")
        _d, _r, joined, last = cur
        # a group's notices are in the history of sessions that asked for them
        if req.get("after") is not None:
            page = convlog.messages_between(s, conv, max(joined, req["after"]), limit=limit, notices=peer.notices)
        else:
            before = req.get("before")
            upto = last if before is None else min(last, before - 1)
            page = convlog.messages_between(s, conv, joined, upto, limit=limit, newest=True, notices=peer.notices)
    return acked(req, conv=conv, last=last, msgs=[m.body for m in page])


HANDLERS: dict[MsgId, Handler] = {
    MsgId.RECEIVED: received,
    MsgId.READ: read,
    MsgId.READERS: readers,
    MsgId.HISTORY: history,
}
