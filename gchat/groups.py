"""Groups beyond create, join and chat (docs/protocol.md section F): leave;
the creator removes a member, hands the group over, deletes it; the member
list with states; search by name. Members are told of joins, leaves,
removals, handovers and deletions by a NOTICE (pushed to sessions that asked
for notices; never stored)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gchat import store
from gchat.errors import Unavailable
from gchat.friends import page_of
from gchat.handling import Reply, answered, notice, refuse, session_user
from gchat.protocol import Errno, MsgId, Request
from gchat.registry import Peer

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


def _tell(svc: Services, user_ids: list[int], kind: str, **fields: Any) -> None:
    if user_ids:
        svc.router.notify(user_ids, notice(kind, **fields))


def joined(svc: Services, group_id: int, user_id: int, name: str) -> None:
    """A user joined (msgid 8): the other members are told."""
    others = [m for m in svc.members(group_id) if m != user_id]
    _tell(svc, others, "group_join", groupid=group_id, user={"id": user_id, "name": name})


def group_leave(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    group_id = req["groupid"]
    _, members = _members(svc, group_id)
    if user_id not in {uid for uid, _, _ in members}:
        raise refuse(Errno.FORBIDDEN, f"not a member of group {group_id}")
    if _creator(members) == user_id:
        raise refuse(Errno.FORBIDDEN, "the creator hands the group over or deletes it")
    with svc.db.transaction() as s:
        store.remove_member(s, group_id, user_id)
    _changed(svc, group_id)
    others = [uid for uid, _, _ in members if uid != user_id]
    _tell(svc, others, "group_leave", groupid=group_id, user={"id": user_id, "name": peer.user_name})
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
    with svc.db.transaction() as s:
        store.remove_member(s, group_id, target)
    _changed(svc, group_id)
    _tell(svc, [uid for uid, _, _ in members if uid != user_id], "group_remove", groupid=group_id,
          user={"id": target, "name": name}, by=user_id)
    return answered(req, groupid=group_id, userid=target)


def group_handover(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id, group_id, _, members = _as_creator(svc, peer, req)
    target = req["userid"]
    name = _other_member(members, user_id, target, group_id)
    with svc.db.transaction() as s:
        store.hand_over(s, group_id, user_id, target)
    _tell(svc, [uid for uid, _, _ in members if uid != user_id], "group_handover", groupid=group_id,
          creator={"id": target, "name": name})
    return answered(req, groupid=group_id, userid=target)


def group_delete(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id, group_id, name, members = _as_creator(svc, peer, req)
    with svc.db.transaction() as s:
        store.delete_group(s, group_id)
    _changed(svc, group_id)
    _tell(svc, [uid for uid, _, _ in members if uid != user_id], "group_delete", groupid=group_id,
          groupname=name)
    return answered(req, groupid=group_id)


def group_members(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    group_id = req["groupid"]
    _, members = _members(svc, group_id)
    ids = [uid for uid, _, _ in members]
    if user_id not in ids:
        raise refuse(Errno.FORBIDDEN, f"not a member of group {group_id}")
    try:
        online = svc.presence.online(ids)
    except Unavailable:
        online = set()
    online.add(user_id)

    def state(uid: int) -> str:
        # whoever blocked the asker shows as offline to them
        return "online" if uid in online and user_id not in svc.blocks(uid) else "offline"

    return answered(req, groupid=group_id, members=[
        {"id": uid, "name": n, "state": state(uid), "role": role} for uid, n, role in members])


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
