"""Typed results: the login ack's JSON strings, and deliveries, decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gchat.protocol import MsgId, loads


def _obj(item: Any) -> dict[str, Any]:
    """An element of a login list: JSON text in part A; a server that sends
    the object itself is accepted too."""
    value = loads(item) if isinstance(item, (str, bytes)) else item
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {item!r}")
    return value


@dataclass(frozen=True)
class Friend:
    id: int
    name: str
    state: str  # "online" | "offline"

    @property
    def online(self) -> bool:
        return self.state == "online"

    @classmethod
    def from_obj(cls, item: Any) -> Friend:
        d = _obj(item)
        return cls(int(d["id"]), str(d.get("name", "")), str(d.get("state", "offline")))


@dataclass(frozen=True)
class GroupMember:
    id: int
    name: str
    state: str
    role: str  # "creator" | "normal"

    @property
    def online(self) -> bool:
        return self.state == "online"

    @classmethod
    def from_obj(cls, item: Any) -> GroupMember:
        d = _obj(item)
        return cls(
            int(d["id"]),
            str(d.get("name", "")),
            str(d.get("state", "offline")),
            str(d.get("role", "normal")),
        )


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    desc: str
    members: tuple[GroupMember, ...] = ()
    # how many members it has (from a login reply): the length of `members`,
    # or, after a login that left the member lists out (group_members=False),
    # the count the node gave instead (the members then page in with
    # Client.member_pages); not compared: it follows from the reply
    size: int = field(default=0, compare=False)

    @classmethod
    def from_obj(cls, item: Any) -> Group:
        d = _obj(item)
        members = tuple(GroupMember.from_obj(u) for u in d.get("users") or ())
        return cls(
            int(d["id"]),
            str(d.get("groupname", "")),
            str(d.get("groupdesc", "")),
            members,
            int(d.get("members", len(members))),
        )


@dataclass(frozen=True)
class ChatMessage:
    """A delivered chat message: one-to-one (msgid 5, `to` set) or group
    (msgid 9, `groupid` set). `time` is the sender's text, as sent."""

    msgid: int
    sender_id: int
    sender_name: str
    text: str
    time: str = ""
    to: int | None = None
    groupid: int | None = None
    # the message's place in the conversation log (docs/protocol.md section
    # D); None from a server without one
    conv: int | None = None
    cseq: int | None = None
    ts: int | None = None

    @property
    def is_group(self) -> bool:
        return self.msgid == MsgId.GROUP_CHAT

    @classmethod
    def from_obj(cls, item: Any) -> ChatMessage:
        d = _obj(item)
        msgid = int(d["msgid"])
        return cls(
            msgid=msgid,
            sender_id=int(d.get("id", 0)),
            sender_name=str(d.get("name", "")),
            text=str(d.get("msg", "")),
            time=str(d.get("time", "")),
            to=int(d["to"]) if "to" in d and msgid == MsgId.ONE_CHAT else None,
            groupid=int(d["groupid"]) if "groupid" in d and msgid == MsgId.GROUP_CHAT else None,
            conv=_int_or_none(d.get("conv")),
            cseq=_int_or_none(d.get("cseq")),
            ts=_int_or_none(d.get("ts")),
        )


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class Conversation:
    """One conversation of a sync login (docs/protocol.md section D)."""

    conv: int
    kind: str  # "pair" | "group"
    last: int
    delivered: int
    read: int
    unread: int
    with_user: int | None = None
    groupid: int | None = None
    peer_read: int = 0
    messages: tuple[ChatMessage, ...] = ()
    more: bool = False
    # a group's notices among the waiting entries (a login with notices:
    # they are entries of the conversation log, section F)
    notices: tuple[Notice, ...] = ()

    @classmethod
    def from_obj(cls, d: dict[str, Any]) -> Conversation:
        entries = [_obj(m) for m in d.get("msgs") or ()]
        return cls(
            conv=int(d["conv"]),
            kind=str(d.get("kind", "")),
            last=int(d.get("last", 0)),
            delivered=int(d.get("delivered", 0)),
            read=int(d.get("read", 0)),
            unread=int(d.get("unread", 0)),
            with_user=_int_or_none(d.get("with")),
            groupid=_int_or_none(d.get("groupid")),
            peer_read=int(d.get("peer_read", 0)),
            messages=tuple(ChatMessage.from_obj(m) for m in entries if m.get("msgid") != MsgId.NOTICE),
            more=bool(d.get("more", False)),
            notices=tuple(Notice.of(m) for m in entries if m.get("msgid") == MsgId.NOTICE),
        )


@dataclass(frozen=True)
class LoginResult:
    id: int
    name: str
    friends: tuple[Friend, ...] = ()
    groups: tuple[Group, ...] = ()
    offline: tuple[ChatMessage, ...] = ()
    convs: tuple[Conversation, ...] = ()  # a sync login's
    # section F, for a login that asked for notices
    requests: Requests | None = None
    blocked: tuple[int, ...] = ()

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> LoginResult:
        return cls(
            id=int(reply["id"]),
            name=str(reply.get("name", "")),
            friends=tuple(Friend.from_obj(f) for f in reply.get("friends") or ()),
            groups=tuple(Group.from_obj(g) for g in reply.get("groups") or ()),
            offline=tuple(ChatMessage.from_obj(m) for m in reply.get("offlinemsg") or ()),
            convs=tuple(Conversation.from_obj(c) for c in reply.get("convs") or ()),
            requests=Requests.from_obj(reply["requests"]) if "requests" in reply else None,
            blocked=tuple(int(u) for u in reply.get("blocked") or ()),
        )


# --- docs/protocol.md section F: friends, presence, groups --------------------


@dataclass(frozen=True)
class Person:
    """A user as a search or a request shows it; `state` only for friends."""

    id: int
    name: str
    state: str | None = None
    note: str = ""  # a friend request's note

    @classmethod
    def from_obj(cls, item: Any) -> Person:
        d = _obj(item)
        state = d.get("state")
        return cls(int(d["id"]), str(d.get("name", "")), None if state is None else str(state),
                   str(d.get("note", "")))


@dataclass(frozen=True)
class GroupInfo:
    """A group as a search shows it."""

    id: int
    name: str
    desc: str
    members: int

    @classmethod
    def from_obj(cls, item: Any) -> GroupInfo:
        d = _obj(item)
        return cls(int(d["id"]), str(d.get("groupname", "")), str(d.get("groupdesc", "")), int(d.get("members", 0)))


@dataclass(frozen=True)
class Page:
    """A page of search results; `more` when the next page has some."""

    items: tuple[Any, ...]
    page: int
    more: bool


@dataclass(frozen=True)
class PresenceChange:
    """Pushed (msgid 32): a friend came online or went offline."""

    id: int
    state: str

    @property
    def online(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True)
class Notice:
    """Pushed (msgid 31): `kind` is friend_request, friend_accepted,
    friend_removed, group_join, group_leave, group_remove, group_handover or
    group_delete; `fields` the rest of the object."""

    kind: str
    fields: dict[str, Any]

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Notice:
        return cls(str(obj.get("kind", "")), {k: v for k, v in obj.items() if k not in ("msgid", "kind")})

    @property
    def place(self) -> ChatMessage | None:
        """A group's notice is an entry of the conversation log (its `conv`
        and `cseq`): its place, for de-duplication and receipts as a chat
        message's; None for the friends' notices."""
        conv, cseq = _int_or_none(self.fields.get("conv")), _int_or_none(self.fields.get("cseq"))
        if conv is None or cseq is None:
            return None
        return ChatMessage(int(MsgId.NOTICE), 0, "", "", conv=conv, cseq=cseq)

    def person(self, key: str) -> Person | None:
        """The user object under key ("from", "friend", "user", "creator")."""
        value = self.fields.get(key)
        return Person.from_obj(value) if isinstance(value, dict) else None


Event = Notice | PresenceChange


def event_from_obj(obj: dict[str, Any]) -> Event | None:
    """The typed event of a pushed frame, None when it is not one."""
    msgid = obj.get("msgid")
    if msgid == MsgId.PRESENCE:
        return PresenceChange(int(obj["id"]), str(obj.get("state", "offline")))
    if msgid == MsgId.NOTICE:
        return Notice.of(obj)
    return None


@dataclass(frozen=True)
class Requests:
    """Pending friend requests, received and sent (a login that asked for
    notices)."""

    incoming: tuple[Person, ...] = ()
    outgoing: tuple[Person, ...] = ()

    @classmethod
    def from_obj(cls, d: Any) -> Requests:
        d = d if isinstance(d, dict) else {}
        return cls(tuple(Person.from_obj(p) for p in d.get("in") or ()),
                   tuple(Person.from_obj(p) for p in d.get("out") or ()))
