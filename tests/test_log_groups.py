"""A group's membership notices as entries of its conversation log, and a
sync login's reply bounded by messages and bytes, not by conversation
(docs/protocol.md sections D and F). No sockets; a SQLite store, as
tests/test_service.py."""

from __future__ import annotations

import json
from typing import Any

import gevent

from gchat.service import Services
from gchat.writer import Outgoing
from tests import test_service
from tests.support import unique
from tests.test_service import FakePeer, call, new_user, refused

svc = test_service.svc  # the same fixture: a SQLite store, an in-process bus


def login(svc: Services, uid: int, **extra: object) -> tuple[FakePeer, dict[str, Any]]:
    peer = FakePeer()
    peer.notices = extra.get("notices") is True  # as the server's Peer after such a login
    (reply,) = call(svc, peer, msgid=1, id=uid, password="pw", **extra)
    assert reply["errno"] == 0, reply
    return peer, reply


def relogin(svc: Services, peer: FakePeer, uid: int, **extra: object) -> tuple[FakePeer, dict[str, Any]]:
    call(svc, peer, msgid=10)
    return login(svc, uid, **extra)


def conv_of(reply: dict[str, Any], gid: int) -> dict[str, Any]:
    (c,) = [c for c in reply["convs"] if c.get("groupid") == gid]
    return c


def test_joins_leaves_and_removals_are_entries_with_their_own_numbers(svc: Services) -> None:
    owner, _ = new_user(svc, "owner")
    ann, ann_id = new_user(svc, "ann")
    bob, bob_id = new_user(svc, "bob")
    gid = call(svc, owner, msgid=7, groupname="crag", seq=1)[0]["groupid"]
    ann, _ = relogin(svc, ann, ann_id, sync=True, notices=True)
    call(svc, ann, msgid=8, groupid=gid)
    call(svc, owner, msgid=9, groupid=gid, msg="hi ann")
    call(svc, ann, msgid=10)  # away: bob joins, talks, leaves
    call(svc, bob, msgid=8, groupid=gid)
    call(svc, bob, msgid=9, groupid=gid, msg="hi all")
    assert call(svc, bob, msgid=25, groupid=gid, seq=2)[0]["errno"] == 0
    # a sync login with notices: the backlog holds them, in the one order
    ann, reply = login(svc, ann_id, sync=True, notices=True)
    c = conv_of(reply, gid)
    got = [json.loads(m) for m in c["msgs"]]
    assert [(m.get("kind"), m.get("msg"), m["cseq"]) for m in got] == [
        (None, "hi ann", 2), ("group_join", None, 3), (None, "hi all", 4), ("group_leave", None, 5)]
    assert got[1]["user"] == {"id": bob_id, "name": "bob"} and got[1]["msgid"] == 31
    assert c["last"] == 5 and c["unread"] == 2  # notices are not something to read
    # history has them too, her own join among them; a classic client and a
    # sync one without notices never
    hist = call(svc, ann, msgid=16, groupid=gid, seq=3)[0]
    assert [json.loads(m)["cseq"] for m in hist["msgs"]] == [1, 2, 3, 4, 5]
    ann, reply = relogin(svc, ann, ann_id, sync=True)
    assert [json.loads(m)["cseq"] for m in call(svc, ann, msgid=16, groupid=gid, seq=4)[0]["msgs"]] == [2, 4]
    assert [json.loads(m)["cseq"] for m in conv_of(reply, gid)["msgs"]] == [2, 4]
    assert all(m["msgid"] == 9 for m in owner.pushed)  # the creator, a classic client
    carol, carol_id = new_user(svc, "carol")
    call(svc, carol, msgid=8, groupid=gid)
    call(svc, carol, msgid=10)
    call(svc, owner, msgid=9, groupid=gid, msg="welcome")
    call(svc, owner, msgid=26, groupid=gid, userid=ann_id, seq=5)
    carol, reply = login(svc, carol_id)
    assert [json.loads(m)["msg"] for m in reply["offlinemsg"]] == ["welcome"]


def test_live_notices_go_to_sessions_that_asked_and_a_removed_member_keeps_nothing(svc: Services) -> None:
    owner, owner_id = new_user(svc, "owner")
    ann, ann_id = new_user(svc, "ann")
    bob, bob_id = new_user(svc, "bob")
    gid = call(svc, owner, msgid=7, groupname="crag", seq=1)[0]["groupid"]
    ann, _ = relogin(svc, ann, ann_id, notices=True)  # a classic client that asked for notices
    call(svc, ann, msgid=8, groupid=gid)
    call(svc, bob, msgid=8, groupid=gid)
    (joined,) = ann.pushed
    assert (joined["kind"], joined["user"]["id"], joined["cseq"]) == ("group_join", bob_id, 2)
    assert bob.pushed == [] and owner.pushed == []
    call(svc, bob, msgid=10)
    call(svc, owner, msgid=9, groupid=gid, msg="before")
    call(svc, owner, msgid=26, groupid=gid, userid=bob_id, seq=2)
    call(svc, owner, msgid=9, groupid=gid, msg="after")
    assert [(m.get("kind"), m.get("msg"), m["cseq"]) for m in ann.pushed[1:]] == [
        (None, "before", 3), ("group_remove", None, 4), (None, "after", 5)]
    # bob was away: what came before the removal is gone with his place in
    # the conversation, and nothing after it reaches him
    bob, reply = login(svc, bob_id, sync=True)
    assert all(c.get("groupid") != gid for c in reply["convs"])
    assert refused(svc, bob, msgid=16, groupid=gid, seq=3) == 6
    # he may join again: from the end of the conversation
    call(svc, bob, msgid=8, groupid=gid)
    call(svc, owner, msgid=9, groupid=gid, msg="again")
    assert [m["msg"] for m in bob.pushed] == ["again"]
    # removed while online, and back: what was said meanwhile is not his
    call(svc, owner, msgid=26, groupid=gid, userid=bob_id, seq=6)
    call(svc, owner, msgid=9, groupid=gid, msg="without bob")
    call(svc, bob, msgid=8, groupid=gid)
    call(svc, owner, msgid=9, groupid=gid, msg="with bob")
    assert [m["msg"] for m in bob.pushed] == ["again", "with bob"]
    assert owner_id


def test_a_deleted_groups_history_stays_with_its_members_ending_with_the_notice(svc: Services) -> None:
    owner, _ = new_user(svc, "owner")
    ann, ann_id = new_user(svc, "ann")
    gid = call(svc, owner, msgid=7, groupname="crag", seq=1)[0]["groupid"]
    call(svc, ann, msgid=8, groupid=gid)
    call(svc, ann, msgid=10)
    call(svc, owner, msgid=9, groupid=gid, msg="last words")
    assert call(svc, owner, msgid=28, groupid=gid, seq=2)[0]["errno"] == 0
    assert refused(svc, owner, msgid=9, groupid=gid, msg="anyone?") == 7
    ann, reply = login(svc, ann_id, sync=True, notices=True)
    (c,) = [c for c in reply["convs"] if c["kind"] == "group"]
    assert c["groupid"] is None
    assert [json.loads(m).get("kind", "chat") for m in c["msgs"]] == ["chat", "group_delete"]
    hist = call(svc, ann, msgid=16, conv=c["conv"], seq=3)[0]
    assert [json.loads(m).get("kind", "chat") for m in hist["msgs"]] == ["group_join", "chat", "group_delete"]
    call(svc, ann, msgid=12, conv=c["conv"], cseq=c["last"])  # written when answered
    _, reply = relogin(svc, ann, ann_id, sync=True, notices=True)
    assert all(x["kind"] != "group" for x in reply["convs"])  # all handed over: no longer listed


def _flood(svc: Services, sender: int, to: int, n: int, size: int = 20, group: int | None = None) -> None:
    """n messages in the writer's batches (as pipelined chats would be)."""
    pending = [svc.writer.submit(Outgoing(sender, {"msgid": 9 if group else 5, "msg": f"{i:05}" + "x" * size},
                                          to=None if group else to, group=group)) for i in range(n)]
    for p in pending:
        svc.writer.result(p)


def test_a_sync_login_hands_over_a_thousand_waiting_messages_in_its_reply(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    c, c_id = new_user(svc, "carol")
    bob, b_id = new_user(svc, "bob")
    gid = call(svc, a, msgid=7, groupname="g", seq=1)[0]["groupid"]
    call(svc, bob, msgid=8, groupid=gid)
    call(svc, bob, msgid=10)
    _flood(svc, a_id, b_id, 500)
    _flood(svc, c_id, b_id, 300)
    _flood(svc, a_id, b_id, 200, group=gid)
    bob, reply = login(svc, b_id, sync=True)  # its time: docs/benchmarks.md, never asserted
    convs = {(x["kind"], x.get("with", x.get("groupid"))): x for x in reply["convs"]}
    for key, n in ((("pair", a_id), 500), (("pair", c_id), 300), (("group", gid), 200)):
        got = [json.loads(m)["msg"][:5] for m in convs[key]["msgs"]]
        assert got == [f"{i:05}" for i in range(n)] and convs[key]["more"] is False


def test_a_sync_reply_past_its_byte_budget_is_cut_without_a_hole_and_history_has_the_rest(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    bob, b_id = new_user(svc, "bob")
    call(svc, bob, msgid=10)
    _flood(svc, a_id, b_id, 300, size=1000)
    svc.sync_bytes = 100 * 1024
    bob, reply = login(svc, b_id, sync=True)
    (c,) = reply["convs"]
    got = [json.loads(m)["cseq"] for m in c["msgs"]]
    assert c["more"] is True and 50 < len(got) < 100 and got == list(range(1, len(got) + 1))
    assert sum(len(m) for m in c["msgs"]) <= svc.sync_bytes
    rest = call(svc, bob, msgid=16, conv=c["conv"], after=got[-1], limit=200, seq=1)[0]["msgs"]
    assert json.loads(rest[0])["cseq"] == got[-1] + 1


def test_admin_delete_user_takes_requests_blocks_cursors_and_memberships(svc: Services) -> None:
    """gchat-admin delete-user on the store the node serves: nothing of the
    user is left (friend requests and blocks both ways, its cursors, its
    memberships, its one-to-one conversations), the groups it was in go on
    without it, and their member epoch moved (a writer reloads the list)."""
    from sqlalchemy import func, or_, select

    from gchat.models import Block, Conversation, Cursor, FriendRequest, GroupUser, Message
    from tests.cluster_support import admin

    doomed, d_id = new_user(svc, "doomed")
    ann, ann_id = new_user(svc, "ann")
    bob, bob_id = new_user(svc, "bob")
    carol, carol_id = new_user(svc, "carol")
    gid = call(svc, ann, msgid=7, groupname="stays", seq=1)[0]["groupid"]
    call(svc, doomed, msgid=8, groupid=gid)
    call(svc, doomed, msgid=9, groupid=gid, msg="mine stays in the group's history")
    call(svc, doomed, msgid=5, to=bob_id, msg="goes with me")
    assert call(svc, doomed, msgid=20, to=ann_id, seq=2)[0]["errno"] == 0
    assert call(svc, carol, msgid=20, to=d_id, seq=3)[0]["errno"] == 0
    assert call(svc, bob, msgid=23, userid=d_id, seq=4)[0]["errno"] == 0
    assert call(svc, doomed, msgid=23, userid=carol_id, seq=5)[0]["errno"] == 0
    call(svc, doomed, msgid=10)
    with svc.db.transaction() as s:
        epoch = s.scalar(select(Conversation.member_epoch).where(Conversation.groupid == gid))

    done = admin("delete-user", "doomed", env={"GCHAT_DATABASE_URL": str(svc.db.engine.url)})
    assert done.returncode == 0, done.stderr
    assert ("deleted 1 user(s), 0 friendship(s), 1 group membership(s), 1 stored message(s), "
            "0 group(s) left empty, 1 friend request(s), 2 block(s)") in done.stdout  # carol's went with the block
    with svc.db.transaction() as s:
        left = [s.scalar(select(func.count()).select_from(t).where(w)) for t, w in (
            (FriendRequest, or_(FriendRequest.fromid == d_id, FriendRequest.toid == d_id)),
            (Block, or_(Block.userid == d_id, Block.blockedid == d_id)),
            (Cursor, Cursor.user_id == d_id),
            (GroupUser, GroupUser.userid == d_id),
            (Conversation, or_(Conversation.user_lo == d_id, Conversation.user_hi == d_id)),
        )]
        assert left == [0, 0, 0, 0, 0]
        assert s.scalar(select(Conversation.member_epoch).where(Conversation.groupid == gid)) == epoch + 1
        assert s.scalar(select(func.count()).select_from(Message).where(Message.sender == d_id)) == 2  # join, chat
    assert call(svc, bob, msgid=8, groupid=gid, seq=6)[0]["errno"] == 0
    assert call(svc, ann, msgid=9, groupid=gid, msg="on without", seq=7)[0]["members"] == 1


def test_the_client_library_tells_missed_group_notices_as_events_not_chats(make_server) -> None:  # type: ignore[no-untyped-def]
    """gchat.client with sync and notices: a group's notices missed while
    away come as events at login, once, acknowledged with the chats; its
    history holds the chats only."""
    from gchat.client import Client
    from gchat.client.types import Notice

    node = make_server()
    with Client.connect(node.host, node.port) as c:
        ann_id, bob_id = c.register(unique("ann"), "pa"), c.register(unique("bob"), "pb")
    with Client.connect(node.host, node.port) as ann:
        ann.login(ann_id, "pa", sync=True, notices=True)
        gid = ann.create_group(unique("g"))
        assert gid is not None
    with Client.connect(node.host, node.port) as bob:
        bob.login(bob_id, "pb")
        bob.join_group(gid)
        bob.group_chat(gid, "hello")
        bob.leave_group(gid)
    for _ in range(2):  # the second login finds them acknowledged
        with Client.connect(node.host, node.port) as ann:
            me = ann.login(ann_id, "pa", sync=True, notices=True)
            (conv,) = me.convs
            events = []
            while (e := ann.next_event(0.5)) is not None:
                events.append(e)
            assert [m.text for m in ann.history(groupid=gid)] == ["hello"]
            if _ == 0:
                assert [m.text for m in conv.messages] == ["hello"]
                assert [(e.kind, e.person("user").id) for e in events if isinstance(e, Notice)] == [  # type: ignore[union-attr]
                    ("group_join", bob_id), ("group_leave", bob_id)]
            else:
                assert conv.messages == () and conv.notices == ()


def test_the_sweep_repairs_what_stayed_missing_for_a_whole_sweep(svc: Services) -> None:
    """Two nodes on one store with no bus between them: a message from a
    user on one to a user on the other is never told there (a lost
    notification, and the last of its conversation). The other node's first
    sweep only notes it (it might be in flight); the second delivers it."""
    from gchat.cluster.bus import LocalBus
    from gchat.cluster.mirror import StateMirror
    from gchat.cluster.presence import LocalPresence
    from gchat.passwords import Passwords
    from gchat.registry import Registry
    from gchat.router import Router

    registry, bus = Registry(), LocalBus()
    other = Services(db=svc.db, registry=registry, presence=LocalPresence("n2", StateMirror(svc.db)),
                     router=Router(registry, bus, svc.db), passwords=Passwords(time_cost=1, memory_kib=8))
    bus.start(other.router.on_bus_delivery, other.invalidate_group, lambda: None)
    a, a_id = new_user(svc, "alice")
    (reg,) = call(svc, FakePeer(), msgid=3, name="bob", password="pw")
    bob = FakePeer()
    assert call(other, bob, msgid=1, id=reg["id"], password="pw")[0]["errno"] == 0
    assert call(svc, a, msgid=5, to=reg["id"], msg="lost", seq=1)[0]["delivered"] == "offline"
    assert other.sessions.sweep() == 0 and bob.pushed == []
    assert other.sessions.sweep() == 1
    for _ in range(200):  # the repair runs on a greenlet of its own
        if bob.pushed:
            break
        gevent.sleep(0.05)
    assert [(m["msg"], m["cseq"]) for m in bob.pushed] == [("lost", 1)]
    assert other.sessions.sweep() == 0 and len(bob.pushed) == 1  # had: nothing more
