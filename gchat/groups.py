"""Groups beyond create and chat (docs/protocol.md section F): join, leave;
the creator removes a member, hands the group over, deletes it; the member
list with states; search by name.

Members are told of joins, leaves, removals, handovers and deletions by a
NOTICE that is an entry of the group's conversation log (docs/protocol.md
sections D and F): written in the transaction that changes the group, under
the conversation's row lock (the writer's, gchat/writer.py), with its own
seq. So every member sees it in the one order of the conversation, a sync
login and history carry it, and a lost push is repaired from the log like a
chat message. Only sessions that asked for notices are handed one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from gchat import convlog, store
from gchat.errors import Unavailable
from gchat.friends import page_of
from gchat.handling import Reply, answered, refuse, session_user
from gchat.protocol import Errno, MsgId, Request
from gchat.registry import Peer
from gchat.writer import Written

if TYPE_CHECKING:
    from gchat.service import Services

Members = list[tuple[int, str, str]]  # (id, name, role)


def _members(svc: Services, group_id: int) -> tuple[str, Members]:
    """The group's name and members; errno 7 when there is no such group."""
    with svc.db.transaction() as s:
        group = store.group_of(s, group_id)
        if group is None:
            raise refuse(Errno.NOT_FOUND, f"no group {group_id}")
        return group.groupname, store.group_members(s, group_id)


def _creator(members: Members) -> int | None:
    return next((uid for uid, _, role in members if role == "creator"), None)


def _changed(svc: Services, group_id: int) -> None:
    # after the commit, so a node that reloads sees the change; before any
    # notice, so a removed member who got one is refused everywhere
    svc.invalidate_group(group_id)
    svc.router.invalidate_group(group_id)


def _note(s: Session, conv: int, last: int, sender: int, to: list[int], kind: str, live: bool = True,
          **fields: Any) -> Written:
    """The notice as an entry of the conversation (after convlog.lock_group
    returned `last`), for `to` but its sender; when not `live`, for nobody:
    in the log only, marked so that no repair pushes it either."""
    now = int(time.time() * 1000)
    body = {"msgid": int(MsgId.NOTICE), **({} if live else {"live": False}), "kind": kind, **fields}
    seq, text = convlog.note(s, conv, last, sender, body, now)
    return Written(conv, seq, now, sender, text, tuple(u for u in to if u != sender) if live else ())


def _live(svc: Services, members: list[int]) -> bool:
    """Whether a join or leave is pushed to the group's members: not in a
    group past `group_notices_live`, where every join would cost a push to
    each member (50,000 joins into a group of 50,000: 1.25 billion). The
    notice stays an entry of the log: a sync login and history carry it,
    and the members' sessions take its number at the next message (a gap,
    read from the log) without pushing it."""
    return len(members) <= svc.group_notices_live


def _lock(s: Session, group_id: int) -> tuple[int, int]:
    """The group's conversation, locked (convlog.lock_group); errno 7 when
    the group went meanwhile."""
    locked = convlog.lock_group(s, group_id)
    if locked is None:
        raise refuse(Errno.NOT_FOUND, f"no group {group_id}")
    return locked


def join(svc: Services, group_id: int, user_id: int, name: str) -> int:
    """A user joins (msgid 8): the member, its cursor at the conversation's
    end and the raised member epoch (gchat/convlog.py join_group), and the
    `group_join` notice for the other members, in one transaction. Returns
    the conversation."""
    with svc.db.transaction() as s:
        if not store.group_exists(s, group_id):
            raise refuse(Errno.NOT_FOUND, f"no group {group_id}")
        if store.is_member(s, group_id, user_id):
            raise refuse(Errno.CONFLICT, f"already a member of group {group_id}")
        # the conversation's lock first, as every change of the group and the
        # writer take it: one lock order, no deadlock between them
        _lock(s, group_id)
        store.add_member(s, group_id, user_id)
        # the writers of every node see this join under the conversation's
        # lock: every message numbered after it reaches the new member
        conv, joined = convlog.join_group(s, group_id, user_id)
        members = store.member_ids(s, group_id)
        w = _note(s, conv, joined, user_id, members, "group_join", _live(svc, members), groupid=group_id,
                  user={"id": user_id, "name": name})
    svc.sessions.joined(user_id, conv, joined)
    _changed(svc, group_id)
    svc.writer.known_group(group_id, conv)
    svc.router.deliver_logged([w])
    return conv


def _leave(svc: Services, group_id: int, sender: int, leaver: int, kind: str, **fields: Any) -> Written:
    """`leaver` goes (its cursor too, the member epoch rises: gchat/convlog.py
    leave_group) and the remaining members get the notice `sender` made, in
    one transaction; errno 7 when another request removed it first."""
    with svc.db.transaction() as s:
        conv, last = _lock(s, group_id)
        if not store.remove_member(s, group_id, leaver):
            raise refuse(Errno.NOT_FOUND, f"user {leaver} is not a member of group {group_id}")
        convlog.leave_group(s, conv, [leaver])
        members = store.member_ids(s, group_id)
        w = _note(s, conv, last, sender, members, kind, _live(svc, members), **fields)
    _changed(svc, group_id)
    svc.router.deliver_logged([w])
    return w


def group_leave(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    group_id = req["groupid"]
    _, members = _members(svc, group_id)
    if user_id not in {uid for uid, _, _ in members}:
        raise refuse(Errno.FORBIDDEN, f"not a member of group {group_id}")
    if _creator(members) == user_id:
        raise refuse(Errno.FORBIDDEN, "the creator hands the group over or deletes it")
    _leave(svc, group_id, user_id, user_id, "group_leave", groupid=group_id,
           user={"id": user_id, "name": peer.user_name})
    return answered(req, groupid=group_id)


def _as_creator(svc: Services, peer: Peer, req: Request) -> tuple[int, int, str, Members]:
    """user, group, group name and members, for a request only the creator
    may make."""
    user_id = session_user(peer, req)
    group_id = req["groupid"]
    name, members = _members(svc, group_id)
    if _creator(members) != user_id:
        raise refuse(Errno.FORBIDDEN, f"only the creator of group {group_id} may do that")
    return user_id, group_id, name, members


def _other_member(members: Members, user_id: int, target: int, group_id: int) -> str:
    if target == user_id:
        raise refuse(Errno.BAD_REQUEST, "name another member, not yourself")
    name = next((n for uid, n, _ in members if uid == target), None)
    if name is None:
        raise refuse(Errno.NOT_FOUND, f"user {target} is not a member of group {group_id}")
    return name


def group_remove(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id, group_id, _, members = _as_creator(svc, peer, req)
    target = req["userid"]
    name = _other_member(members, user_id, target, group_id)
    w = _leave(svc, group_id, user_id, target, "group_remove", groupid=group_id,
               user={"id": target, "name": name}, by=user_id)
    # the removed member has no cursor in the conversation any more: told
    # live only (a notice, never stored), like every notice before the log
    svc.router.notify([target], w.body)
    return answered(req, groupid=group_id, userid=target)


def group_handover(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id, group_id, _, members = _as_creator(svc, peer, req)
    target = req["userid"]
    name = _other_member(members, user_id, target, group_id)
    with svc.db.transaction() as s:
        conv, last = _lock(s, group_id)
        store.hand_over(s, group_id, user_id, target)
        w = _note(s, conv, last, user_id, store.member_ids(s, group_id), "group_handover", groupid=group_id,
                  creator={"id": target, "name": name})
    svc.router.deliver_logged([w])
    return answered(req, groupid=group_id, userid=target)


def group_delete(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id, group_id, name, _ = _as_creator(svc, peer, req)
    with svc.db.transaction() as s:
        conv, last = _lock(s, group_id)
        # the notice is the conversation's last entry; the conversation
        # stays (history by conv), without its group
        w = _note(s, conv, last, user_id, store.member_ids(s, group_id), "group_delete", groupid=group_id,
                  groupname=name)
        convlog.detach_group(s, conv)
        store.delete_group(s, group_id)
    _changed(svc, group_id)
    svc.router.deliver_logged([w])
    return answered(req, groupid=group_id)


# a page of GROUP_MEMBERS (msgid 29 with `after` or `limit`): the member list
# of a group of 50,000 is some 3 MB as one reply, past the 64 KiB a client
# may be sent comfortably in one frame; 1,000 members are about 60 KB
MEMBERS_PAGE = 200
MEMBERS_PAGE_MAX = 1000


def group_members(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    """The member list with states: whole (part of section F from the
    start), or a page of it by id when the request names `after` or
    `limit` (for a group too large to list at once); `more` then says
    whether members with larger ids follow."""
    user_id = session_user(peer, req)
    group_id = req["groupid"]
    paged = req.get("after") is not None or req.get("limit") is not None
    if not paged:
        _, members = _members(svc, group_id)
        if user_id not in {uid for uid, _, _ in members}:
            raise refuse(Errno.FORBIDDEN, f"not a member of group {group_id}")
        more = None
    else:
        after, limit = req.get("after", 0), req.get("limit", MEMBERS_PAGE)
        if not 1 <= limit <= MEMBERS_PAGE_MAX:
            raise refuse(Errno.BAD_REQUEST, f"limit must be 1 to {MEMBERS_PAGE_MAX}")
        with svc.db.transaction() as s:
            if not store.group_exists(s, group_id):
                raise refuse(Errno.NOT_FOUND, f"no group {group_id}")
            if not store.is_member(s, group_id, user_id):
                raise refuse(Errno.FORBIDDEN, f"not a member of group {group_id}")
            members = store.group_members_page(s, group_id, after, limit + 1)
        more, members = len(members) > limit, members[:limit]
    ids = [uid for uid, _, _ in members]
    try:
        online = svc.presence.online(ids)
    except Unavailable:
        online = set()
    online.add(user_id)

    def state(uid: int) -> str:
        # whoever blocked the asker shows as offline to them
        return "online" if uid in online and user_id not in svc.blocks(uid) else "offline"

    listed = [{"id": uid, "name": n, "state": state(uid), "role": role} for uid, n, role in members]
    if more is None:
        return answered(req, groupid=group_id, members=listed)
    return answered(req, groupid=group_id, members=listed, more=more)


def group_search(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    session_user(peer, req)
    prefix, page, limit = page_of(svc, req)
    with svc.db.transaction() as s:
        found = store.search_groups(s, prefix, page * limit, limit + 1)
    groups = [{"id": g.id, "groupname": g.groupname, "groupdesc": g.groupdesc, "members": n}
              for g, n in found[:limit]]
    return answered(req, groups=groups, page=page, more=len(found) > limit)


HANDLERS = {
    MsgId.GROUP_LEAVE: group_leave,
    MsgId.GROUP_REMOVE: group_remove,
    MsgId.GROUP_HANDOVER: group_handover,
    MsgId.GROUP_DELETE: group_delete,
    MsgId.GROUP_MEMBERS: group_members,
    MsgId.GROUP_SEARCH: group_search,
}
