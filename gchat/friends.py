"""Friends as people expect them (docs/protocol.md section F): requests and
their answers, removal, blocks, search by name, and presence pushed to the
friends of whoever comes online or goes offline.

Notices go through `Router.notify`: pushed to online sessions that asked
for them (a login with `"notices": true`), on any node, and never stored: a
client that was away learns the state from its next login reply.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from gchat import store
from gchat.errors import Unavailable
from gchat.handling import Reply, answered, notice, refuse, session_user
from gchat.protocol import Errno, MsgId, Request, dumps
from gchat.registry import Peer

if TYPE_CHECKING:
    from gchat.service import Services

log = logging.getLogger(__name__)

# a page of search results, unless the request asks for fewer (or up to PAGE_MAX)
PAGE = 20
PAGE_MAX = 50


def _state(svc: Services, user_id: int) -> str:
    try:
        return "online" if svc.presence.online([user_id]) else "offline"
    except Unavailable:
        return "offline"


def _person(user_id: int, name: str) -> dict[str, Any]:
    return {"id": user_id, "name": name}


# --- requests ----------------------------------------------------------------


def ask(svc: Services, peer: Peer, user_id: int, to: int, note: str) -> dict[str, Any]:
    """user_id asks `to` to be friends; the result fields of the answer. A
    request crossing one the other sent first makes them friends at once."""
    if to == user_id:
        raise refuse(Errno.BAD_REQUEST, "you cannot befriend yourself")
    if user_id in svc.blocks(to):
        # the same answer as any refusal of a chat: nothing stored for them
        raise refuse(Errno.FORBIDDEN, f"user {to} does not take your requests")
    if to in svc.blocks(user_id):
        raise refuse(Errno.FORBIDDEN, f"you blocked user {to}: unblock first")
    with svc.db.transaction() as s:
        other = store.get_user(s, to)
        if other is None:
            raise refuse(Errno.NOT_FOUND, f"no user {to}")
        if store.is_friend(s, user_id, to) and store.is_friend(s, to, user_id):
            raise refuse(Errno.CONFLICT, f"user {to} is already your friend")
        mutual = store.take_request(s, to, user_id)
        if mutual:
            store.make_friends(s, user_id, to)
        elif store.request_exists(s, user_id, to):
            raise refuse(Errno.CONFLICT, f"you asked user {to} already")
        else:
            store.add_request(s, user_id, to, note, int(time.time()))
        name = other.name
    me = _person(user_id, peer.user_name)
    if mutual:
        svc.router.notify([to], notice("friend_accepted", friend={**me, "state": "online"}))
        return {"friend": {**_person(to, name), "state": _state(svc, to)}}
    svc.router.notify([to], notice("friend_request", **{"from": me, "note": note}))
    return {"requested": _person(to, name)}


def friend_request(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    return answered(req, **ask(svc, peer, user_id, req["to"], req.get("note", "")))


def friend_answer(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    other, accept = req["from"], req["accept"]
    with svc.db.transaction() as s:
        if not store.take_request(s, other, user_id):
            raise refuse(Errno.NOT_FOUND, f"no friend request from user {other}")
        requester = store.get_user(s, other) if accept else None
        if requester is not None:
            store.make_friends(s, user_id, other)
    if requester is None:
        return answered(req)  # declined: the requester is not told
    svc.router.notify([other], notice("friend_accepted", friend={**_person(user_id, peer.user_name),
                                                                 "state": "online"}))
    return answered(req, friend={**_person(other, requester.name), "state": _state(svc, other)})


def friend_remove(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    friend_id = req["friendid"]
    with svc.db.transaction() as s:
        removed = store.remove_friends(s, user_id, friend_id)
    if not removed:
        raise refuse(Errno.NOT_FOUND, f"user {friend_id} is not your friend")
    svc.router.notify([friend_id], notice("friend_removed", id=user_id))
    return answered(req, friendid=friend_id)


def block(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    target, on = req["userid"], req.get("block", True)
    if target == user_id:
        raise refuse(Errno.BAD_REQUEST, "you cannot block yourself")
    with svc.db.transaction() as s:
        if not store.user_exists(s, target):
            raise refuse(Errno.NOT_FOUND, f"no user {target}")
        was_friend = store.is_friend(s, target, user_id)
        if on:
            store.add_block(s, user_id, target)
        else:
            store.remove_block(s, user_id, target)
    # after the commit, so a node that reloads sees the change
    svc.invalidate_blocks(user_id)
    svc.router.invalidate_blocks(user_id)
    if on and was_friend:
        # they lose the friendship (and so your presence), not told why
        svc.router.notify([target], notice("friend_removed", id=user_id))
    return answered(req, userid=target, block=on)


# --- search ------------------------------------------------------------------


def page_of(svc: Services, req: Request) -> tuple[str, int, int]:
    """The prefix, page and page size of a search request, checked."""
    prefix, page, limit = req["name"], req.get("page", 0), req.get("limit", PAGE)
    if not prefix.strip():
        raise refuse(Errno.BAD_REQUEST, "name: give the first letters to search for")
    if not 1 <= limit <= PAGE_MAX:
        raise refuse(Errno.BAD_REQUEST, f"limit must be 1 to {PAGE_MAX}")
    return prefix, page, limit


def user_search(svc: Services, peer: Peer, req: Request) -> list[Reply]:
    user_id = session_user(peer, req)
    prefix, page, limit = page_of(svc, req)
    with svc.db.transaction() as s:
        found = store.search_users(s, prefix, page * limit, limit + 1)
        friends = store.friends_among(s, user_id, [uid for uid, _ in found[:limit]])
    try:
        online = svc.presence.online(friends)
    except Unavailable:
        online = set()
    users = []
    for uid, name in found[:limit]:
        entry = _person(uid, name)
        if uid in friends:  # presence only for friends
            entry["state"] = "online" if uid in online else "offline"
        users.append(entry)
    return answered(req, users=users, page=page, more=len(found) > limit)


# --- presence and the login --------------------------------------------------


def announce(svc: Services, user_ids: list[int], state: str) -> None:
    """Tell the online friends of these users, on any node, that they came
    online or went offline: one query for all, then per user one notice to
    its watchers (one bus message per node holding some of them). Best
    effort: presence is repaired by the next login reply."""
    try:
        # a login or a disconnect joins the others of the moment; a dead
        # node's users go in one query of their own
        watchers = [svc.watchers(user_ids[0])] if len(user_ids) == 1 else svc.load_watchers(user_ids)
    except Unavailable:
        log.warning("database unavailable: presence of %d user(s) not pushed", len(user_ids))
        return
    for uid, ws in zip(user_ids, watchers, strict=True):
        if ws:
            svc.router.notify(ws, dumps({"msgid": int(MsgId.PRESENCE), "id": uid, "state": state}))


def login_extras(svc: Services, user_id: int) -> dict[str, Any]:
    """What a login that asked for notices gets besides part A's reply: the
    pending requests both ways, and whom the user blocked."""
    with svc.db.transaction() as s:
        incoming, outgoing = store.pending_requests(s, user_id)
        blocked = store.blocked_by(s, user_id)
    return {
        "requests": {
            "in": [{**_person(uid, name), "note": note} for uid, name, note in incoming],
            "out": [{**_person(uid, name), "note": note} for uid, name, note in outgoing],
        },
        "blocked": blocked,
    }


HANDLERS = {
    MsgId.FRIEND_REQUEST: friend_request,
    MsgId.FRIEND_ANSWER: friend_answer,
    MsgId.FRIEND_REMOVE: friend_remove,
    MsgId.BLOCK: block,
    MsgId.USER_SEARCH: user_search,
}
