"""Friends, presence and groups through the client library's typed calls and
events, and through gchat-client's commands (docs/protocol.md section F)."""

from __future__ import annotations

from typing import Any

import pytest

from gchat.client import Client, Forbidden, Friend, Notice, Person, PresenceChange
from tests.support import unique
from tests.test_tui import Lines, spawn


def account(server: Any, name: str | None = None) -> tuple[int, str]:
    name = name or unique("c")
    with Client.connect(server.host, server.port) as c:
        return c.register(name, "pw"), name


def event(c: Client, cls: type, **match: Any) -> Any:
    """The next event of that type matching the fields (others are skipped)."""
    while True:
        e = c.next_event(timeout=15)
        assert e is not None, f"no {cls.__name__} {match}"
        if isinstance(e, cls) and all(getattr(e, k, None) == v or
                                       (isinstance(e, Notice) and e.fields.get(k) == v) for k, v in match.items()):
            return e


def test_the_library_calls_and_events(server: Any) -> None:
    (ida, na), (idb, nb) = account(server), account(server)
    with Client.connect(server.host, server.port) as a, Client.connect(server.host, server.port) as b:
        a.login(ida, "pw", notices=True)
        me_b = b.login(idb, "pw", notices=True)
        assert me_b.requests is not None and me_b.requests.incoming == ()
        assert a.request_friend(idb, "hi") == Person(idb, nb)
        got = event(b, Notice, kind="friend_request")
        assert got.person("from") == Person(ida, na) and got.fields["note"] == "hi"
        assert b.answer_request(ida, True) == Friend(ida, na, "online")
        assert event(a, Notice, kind="friend_accepted").person("friend") == Person(idb, nb, "online")
        page = a.search_users(nb.upper())
        assert page.items == (Person(idb, nb, "online"),) and not page.more
        b.logout()
        assert event(a, PresenceChange, id=idb) == PresenceChange(idb, "offline")
        b.login(idb, "pw", notices=True)
        assert event(a, PresenceChange, id=idb).online
        gname = unique("Grp")
        gid = a.create_group(gname, "d")
        assert gid is not None
        b.join_group(gid)
        assert event(a, Notice, kind="group_join").person("user") == Person(idb, nb)
        assert [m.role for m in a.group_members(gid)] == ["creator", "normal"]
        assert [(g.id, g.members) for g in b.search_groups(gname.lower()).items] == [(gid, 2)]
        a.hand_over(gid, idb)
        b.remove_member(gid, ida)
        assert event(a, Notice, kind="group_remove").person("user") == Person(ida, na)
        b.delete_group(gid)
        b.remove_friend(ida)
        assert event(a, Notice, kind="friend_removed").fields["id"] == idb
        a.block(idb)
        with pytest.raises(Forbidden):
            b.chat(ida, "hello?")
        a.block(idb, False)


def test_gchat_client_commands(server: Any) -> None:
    ida, (idb, nb) = account(server)[0], account(server)
    with Client.connect(server.host, server.port) as b:
        b.login(idb, "pw", notices=True)
        p = spawn(server, "--login", str(ida))
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("pw\n")  # the password is a script's first line (never a flag: ps shows flags)
        p.stdin.flush()
        out = Lines(p.stdout)
        out.until("type help")

        def do(line: str, expect: str) -> str:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()
            return out.until(expect)

        do(f"request:{nb}:climbing?", f"friend request sent to {nb} ({idb})")
        event(b, Notice, kind="friend_request")
        do("requests", "requests you sent: 1")
        b.answer_request(ida, True)
        out.until(f"* {nb} ({idb}) accepted: you are friends")
        do("friends", f"{nb}")
        b.logout()
        out.until(f"* {nb} ({idb}) is offline")
        do(f"search:{nb[:4]}", f"{nb}")
        do(f"creategroup:{nb}g:x", "group created")
        gid = int(out.seen[-1].rsplit("id ", 1)[1].rstrip(")"))
        do(f"members:{gid}", f"group {gid}: 1 member(s)")
        do(f"searchgroup:{nb}g", f"[{gid}] {nb}g - 1 member(s)")
        do("groups", f"[{gid}] {nb}g")
        do(f"deletegroup:{gid}", f"group {gid} deleted")
        do(f"remove:{idb}", f"{nb} ({idb}) is no longer your friend")
        do(f"block:{idb}", f"user {idb} blocked")
        do(f"unblock:{idb}", f"user {idb} unblocked")
        do(f"leavegroup:{gid}", "no such user or group")
        p.stdin.write("quit\n")
        p.stdin.flush()
        assert p.wait(10) == 0
