"""gchat-client's commands for friends, presence and groups (docs/protocol.md
section F), what the client knows of them now, and how their notices look.

The client logs in with notices (unless --classic): it learns pending
requests from the login reply, and keeps its lists up to date from the
notices and presence changes pushed while it runs; `friends`, `groups` and
`requests` show those lists without asking the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from gchat.client import Client, Event, Friend, LoginResult, Notice, Person, PresenceChange

if TYPE_CHECKING:
    from gchat.client.tui import TerminalClient


@dataclass
class Known:
    """What the client knows now: friends (id -> name, state), groups
    (id -> name), pending requests (id -> name, note) both ways."""

    friends: dict[int, tuple[str, str]] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)
    incoming: dict[int, tuple[str, str]] = field(default_factory=dict)
    outgoing: dict[int, tuple[str, str]] = field(default_factory=dict)
    me: int = 0

    @classmethod
    def from_login(cls, me: LoginResult) -> Known:
        k = cls({f.id: (f.name, f.state) for f in me.friends}, {g.id: g.name for g in me.groups}, me=me.id)
        if me.requests is not None:
            k.incoming = {p.id: (p.name, p.note) for p in me.requests.incoming}
            k.outgoing = {p.id: (p.name, p.note) for p in me.requests.outgoing}
        return k

    def befriend(self, f: Friend | Person) -> None:
        self.friends[f.id] = (f.name, f.state or "offline")
        self.incoming.pop(f.id, None)
        self.outgoing.pop(f.id, None)

    def name(self, user_id: int) -> str:
        for table in (self.friends, self.incoming, self.outgoing):
            if user_id in table:
                return f"{table[user_id][0]} ({user_id})"
        return f"user {user_id}"

    def learn(self, e: Event) -> str:
        """Take in a pushed event; the line that shows it."""
        if isinstance(e, PresenceChange):
            if e.id in self.friends:
                self.friends[e.id] = (self.friends[e.id][0], e.state)
            return f"* {self.name(e.id)} is {e.state}"
        return self._notice(e)

    def _notice(self, n: Notice) -> str:
        f = n.fields
        gid = int(f.get("groupid", 0))
        group = f"group {self.groups[gid]} ({gid})" if gid in self.groups else f"group {gid}"
        if n.kind == "friend_request" and (p := n.person("from")) is not None:
            self.incoming[p.id] = (p.name, str(f.get("note", "")))
            note = f": {f['note']}" if f.get("note") else ""
            return f"* friend request from {p.name} ({p.id}){note} - accept:{p.id} or decline:{p.id}"
        if n.kind == "friend_accepted" and (p := n.person("friend")) is not None:
            self.befriend(p)
            return f"* {p.name} ({p.id}) accepted: you are friends"
        if n.kind == "friend_removed":
            uid = int(f.get("id", 0))
            who = self.name(uid)
            self.friends.pop(uid, None)
            return f"* {who} is no longer your friend"
        if n.kind in ("group_join", "group_leave", "group_remove") and (p := n.person("user")) is not None:
            verb = {"group_join": "joined", "group_leave": "left", "group_remove": "was removed from"}[n.kind]
            if n.kind == "group_remove" and p.id == self.me:
                self.groups.pop(gid, None)
                return f"* you were removed from {group}"
            return f"* {p.name} ({p.id}) {verb} {group}"
        if n.kind == "group_handover" and (p := n.person("creator")) is not None:
            return f"* {p.name} ({p.id}) now leads {group}"
        if n.kind == "group_delete":
            self.groups.pop(gid, None)
            return f"* group {f.get('groupname', '')} ({gid}) was deleted"
        return f"* {n.kind}: {f}"


# --- the commands --------------------------------------------------------------


def _known(t: TerminalClient) -> Known:
    return t.known


def user_id(t: TerminalClient, c: Client, text: str, usage: str) -> int | None:
    """A user given by id or by exact name (any case)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if not text:
        t.io.show(f"usage: {usage}")
        return None
    page = t.call(lambda: c.search_users(text, limit=50))
    if page is None:
        return None
    exact = [p for p in page.items if p.name.lower() == text.lower()]
    if len(exact) != 1:
        t.io.show(f"no user named {text!r}" if not exact else f"several users named {text!r}: give the id")
        return None
    return int(exact[0].id)


def _request(t: TerminalClient, c: Client, rest: str) -> None:
    who, _, note = rest.partition(":")
    uid = user_id(t, c, who, SOCIAL["request"].usage)
    if uid is None:
        return
    result = t.call(lambda: c.request_friend(uid, note.strip()))
    if isinstance(result, Friend):
        _known(t).befriend(result)
        t.io.show(f"you are friends with {result.name} ({result.id}) now: they had asked you")
    elif isinstance(result, Person):
        _known(t).outgoing[result.id] = (result.name, note.strip())
        t.io.show(f"friend request sent to {result.name} ({result.id})")


def _answer(accept: bool) -> Callable[[TerminalClient, Client, str], None]:
    def run(t: TerminalClient, c: Client, rest: str) -> None:
        uid = t.number(rest, SOCIAL["accept" if accept else "decline"].usage)
        if uid is None:
            return
        known = _known(t)
        if accept:
            friend = t.call(lambda: c.answer_request(uid, True))
            if friend is not None:
                known.befriend(friend)
                t.io.show(f"you are friends with {friend.name} ({friend.id}) now")
        elif t.done(lambda: c.answer_request(uid, False)):
            known.incoming.pop(uid, None)
            t.io.show(f"declined the request of user {uid}")
    return run


def _remove(t: TerminalClient, c: Client, rest: str) -> None:
    uid = t.number(rest, SOCIAL["remove"].usage)
    if uid is not None and t.done(lambda: c.remove_friend(uid)):
        who = _known(t).name(uid)
        _known(t).friends.pop(uid, None)
        t.io.show(f"{who} is no longer your friend")


def _block(on: bool) -> Callable[[TerminalClient, Client, str], None]:
    def run(t: TerminalClient, c: Client, rest: str) -> None:
        uid = t.number(rest, SOCIAL["block" if on else "unblock"].usage)
        if uid is not None and t.done(lambda: c.block(uid, on)):
            if on:
                _known(t).friends.pop(uid, None)
            t.io.show(f"user {uid} {'blocked' if on else 'unblocked'}")
    return run


def _page(rest: str) -> tuple[str, int]:
    text, _, page = rest.partition(":")
    return text.strip(), int(page) if page.strip().isdigit() else 0


def _search(t: TerminalClient, c: Client, rest: str) -> None:
    text, page = _page(rest)
    found = t.call(lambda: c.search_users(text, page))
    if found is None:
        return
    lines = [f"{len(found.items)} user(s) named {text}*" + (f", page {page}" if page else "")]
    lines += [f"  {p.id:>6}  {p.name:<20} {p.state or ''}".rstrip() for p in found.items]
    if found.more:
        lines.append(f"  more: search:{text}:{page + 1}")
    t.io.show("\n".join(lines))


def _searchgroup(t: TerminalClient, c: Client, rest: str) -> None:
    text, page = _page(rest)
    found = t.call(lambda: c.search_groups(text, page))
    if found is None:
        return
    lines = [f"{len(found.items)} group(s) named {text}*" + (f", page {page}" if page else "")]
    lines += [f"  [{g.id}] {g.name} - {g.members} member(s)" + (f" - {g.desc}" if g.desc else "")
              for g in found.items]
    if found.more:
        lines.append(f"  more: searchgroup:{text}:{page + 1}")
    t.io.show("\n".join(lines))


def _group_and_user(t: TerminalClient, rest: str, usage: str) -> tuple[int | None, int | None]:
    gid, user = t.number_and_text(rest, usage)
    return gid, t.number(user, usage) if gid is not None else None


def _leavegroup(t: TerminalClient, c: Client, rest: str) -> None:
    gid = t.number(rest, SOCIAL["leavegroup"].usage)
    if gid is not None and t.done(lambda: c.leave_group(gid)):
        _known(t).groups.pop(gid, None)
        t.io.show(f"you left group {gid}")


def _removemember(t: TerminalClient, c: Client, rest: str) -> None:
    gid, uid = _group_and_user(t, rest, SOCIAL["removemember"].usage)
    if gid is not None and uid is not None and t.done(lambda: c.remove_member(gid, uid)):
        t.io.show(f"user {uid} removed from group {gid}")


def _handover(t: TerminalClient, c: Client, rest: str) -> None:
    gid, uid = _group_and_user(t, rest, SOCIAL["handover"].usage)
    if gid is not None and uid is not None and t.done(lambda: c.hand_over(gid, uid)):
        t.io.show(f"user {uid} now leads group {gid}")


def _deletegroup(t: TerminalClient, c: Client, rest: str) -> None:
    gid = t.number(rest, SOCIAL["deletegroup"].usage)
    if gid is not None and t.done(lambda: c.delete_group(gid)):
        _known(t).groups.pop(gid, None)
        t.io.show(f"group {gid} deleted")


def _members(t: TerminalClient, c: Client, rest: str) -> None:
    gid = t.number(rest, SOCIAL["members"].usage)
    members = t.call(lambda: c.group_members(gid)) if gid is not None else None
    if members is not None:
        t.io.show("\n".join([f"group {gid}: {len(members)} member(s)"] +
                            [f"  {m.id:>6}  {m.name:<20} {m.role:<8} {m.state}" for m in members]))


def _friends(t: TerminalClient, c: Client, rest: str) -> None:
    k = _known(t)
    t.io.show("\n".join([f"friends: {len(k.friends) or 'none'}"] +
                        [f"  {uid:>6}  {n:<20} {s}" for uid, (n, s) in sorted(k.friends.items())]))


def _groups(t: TerminalClient, c: Client, rest: str) -> None:
    k = _known(t)
    t.io.show("\n".join([f"groups: {len(k.groups) or 'none'}"] +
                        [f"  [{gid}] {n}" for gid, n in sorted(k.groups.items())]))


def _requests(t: TerminalClient, c: Client, rest: str) -> None:
    k = _known(t)
    lines = [f"requests to you: {len(k.incoming) or 'none'}"]
    lines += [f"  {uid:>6}  {n:<20} {note}".rstrip() for uid, (n, note) in k.incoming.items()]
    lines.append(f"requests you sent: {len(k.outgoing) or 'none'}")
    lines += [f"  {uid:>6}  {n:<20} {note}".rstrip() for uid, (n, note) in k.outgoing.items()]
    t.io.show("\n".join(lines))


class Command(NamedTuple):
    usage: str
    help: str
    run: Callable[[TerminalClient, Client, str], None]


SOCIAL: dict[str, Command] = {
    "request": Command("request:id-or-name[:note]", "ask a user to be friends", _request),
    "accept": Command("accept:userid", "accept a friend request", _answer(True)),
    "decline": Command("decline:userid", "decline a friend request", _answer(False)),
    "remove": Command("remove:friendid", "stop being friends (both ways)", _remove),
    "block": Command("block:userid", "refuse a user's chats and requests", _block(True)),
    "unblock": Command("unblock:userid", "take a block back", _block(False)),
    "search": Command("search:name[:page]", "find users whose name starts so", _search),
    "friends": Command("friends", "your friends and their state", _friends),
    "requests": Command("requests", "pending friend requests", _requests),
    "groups": Command("groups", "your groups", _groups),
    "members": Command("members:groupid", "a group's members and their state", _members),
    "searchgroup": Command("searchgroup:name[:page]", "find groups whose name starts so", _searchgroup),
    "leavegroup": Command("leavegroup:groupid", "leave a group", _leavegroup),
    "removemember": Command("removemember:groupid:userid", "remove a member (creator)", _removemember),
    "handover": Command("handover:groupid:userid", "make a member the creator (creator)", _handover),
    "deletegroup": Command("deletegroup:groupid", "delete a group (creator)", _deletegroup),
}
