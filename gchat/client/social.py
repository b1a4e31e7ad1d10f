"""The calls of docs/protocol.md section F (friends, presence, groups), typed.
They need a gchat node: each is always answered, so each returns its result
or raises the GchatError of its errno. `Client` has them all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gchat.client.types import Friend, GroupInfo, GroupMember, Page, Person
from gchat.protocol import MsgId


class SocialCalls:
    def request(self, obj: dict[str, Any], timeout: float | None = None, check: bool = True) -> dict[str, Any]:
        raise NotImplementedError

    def _call(self, msgid: MsgId, **fields: Any) -> dict[str, Any]:
        return self.request({"msgid": int(msgid), **fields})

    def request_friend(self, to: int, note: str = "") -> Friend | Person:
        """Ask user `to` to be friends. A Person: the request waits for their
        answer; a Friend: they had asked you, so you are friends now."""
        reply = self._call(MsgId.FRIEND_REQUEST, to=to, **({"note": note} if note else {}))
        if "friend" in reply:
            return Friend.from_obj(reply["friend"])
        return Person.from_obj(reply["requested"])

    def answer_request(self, from_id: int, accept: bool) -> Friend | None:
        """Accept (the new Friend) or decline (None) a request."""
        reply = self._call(MsgId.FRIEND_ANSWER, accept=accept, **{"from": from_id})
        return Friend.from_obj(reply["friend"]) if "friend" in reply else None

    def remove_friend(self, friendid: int) -> None:
        self._call(MsgId.FRIEND_REMOVE, friendid=friendid)

    def block(self, userid: int, block: bool = True) -> None:
        """Block (or unblock) a user: their chats and requests are refused."""
        self._call(MsgId.BLOCK, userid=userid, block=block)

    def search_users(self, name: str, page: int = 0, limit: int = 20) -> Page:
        """Users whose name starts with `name` (any case): a Page of Person."""
        reply = self._call(MsgId.USER_SEARCH, name=name, page=page, limit=limit)
        return Page(tuple(Person.from_obj(u) for u in reply.get("users") or ()), page, bool(reply.get("more")))

    def leave_group(self, groupid: int) -> None:
        self._call(MsgId.GROUP_LEAVE, groupid=groupid)

    def remove_member(self, groupid: int, userid: int) -> None:
        self._call(MsgId.GROUP_REMOVE, groupid=groupid, userid=userid)

    def hand_over(self, groupid: int, userid: int) -> None:
        self._call(MsgId.GROUP_HANDOVER, groupid=groupid, userid=userid)

    def delete_group(self, groupid: int) -> None:
        self._call(MsgId.GROUP_DELETE, groupid=groupid)

    def group_members(self, groupid: int) -> tuple[GroupMember, ...]:
        reply = self._call(MsgId.GROUP_MEMBERS, groupid=groupid)
        return tuple(GroupMember.from_obj(m) for m in reply.get("members") or ())

    def member_page(self, groupid: int, after: int = 0, limit: int = 200) -> tuple[tuple[GroupMember, ...], bool]:
        """The members with ids above `after`, by id, at most `limit` (1 to
        1,000), and whether more follow: a group too large for one reply."""
        reply = self._call(MsgId.GROUP_MEMBERS, groupid=groupid, after=after, limit=limit)
        return tuple(GroupMember.from_obj(m) for m in reply.get("members") or ()), bool(reply.get("more"))

    def member_pages(self, groupid: int, limit: int = 200) -> Iterator[GroupMember]:
        """Every member of the group, a page at a time."""
        after, more = 0, True
        while more:
            page, more = self.member_page(groupid, after, limit)
            yield from page
            if page:
                after = page[-1].id
            else:
                more = False

    def search_groups(self, name: str, page: int = 0, limit: int = 20) -> Page:
        """Groups whose name starts with `name` (any case): a Page of GroupInfo."""
        reply = self._call(MsgId.GROUP_SEARCH, name=name, page=page, limit=limit)
        return Page(tuple(GroupInfo.from_obj(g) for g in reply.get("groups") or ()), page, bool(reply.get("more")))
