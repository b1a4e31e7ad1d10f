"""The handlers alone: no sockets, an in-process bus, a SQLite store. Peers are
plain objects that collect what is pushed to them."""

from __future__ import annotations

import json
from pathlib import Path

import gevent
import pytest
from sqlalchemy import func, select, text

from gchat import schema, service
from gchat.cluster.bus import LocalBus
from gchat.cluster.mirror import StateMirror
from gchat.cluster.presence import LocalPresence
from gchat.models import AllGroup, GroupUser, User
from gchat.passwords import Passwords
from gchat.protocol import Errno, parse_request
from gchat.registry import Registry
from gchat.router import Router
from gchat.service import Services
from gchat.store import Database
from tests.support import HandedOver


class FakePeer(HandedOver):
    def __init__(self) -> None:
        self.user_id: int | None = None
        self.user_name = ""
        self.pushed: list[dict] = []  # type: ignore[type-arg]
        self.closed = ""
        self.address = ("127.0.0.1", 40000)
        self.held = 0.0
        self.notices = False

    def push(self, body: bytes, mark: tuple[int, int] | None = None) -> None:
        self.pushed.append(json.loads(body))

    def notify(self, body: bytes) -> None:
        self.pushed.append(json.loads(body))
    def close(self, reason: str) -> None:
        self.closed = reason

    def hold(self, seconds: float) -> None:
        self.held = seconds


@pytest.fixture
def svc(tmp_path: Path) -> Services:
    db = Database(f"sqlite:///{tmp_path / 'h.db'}")
    schema.upgrade(db)
    return services_on(db)


def services_on(db: Database) -> Services:
    """One node's services on db, with an in-process bus (the svc fixture's,
    on any store)."""
    registry, presence, bus = Registry(), LocalPresence("n1", StateMirror(db)), LocalBus()
    router = Router(registry, bus, db)
    s = Services(db=db, registry=registry, presence=presence, router=router,
                 passwords=Passwords(time_cost=1, memory_kib=8))
    presence.start(on_lost=lambda uid: None)
    bus.start(router.on_bus_delivery, s.invalidate_group, lambda: None)
    return s


def call(svc: Services, peer: FakePeer, **req: object) -> list[dict]:  # type: ignore[type-arg]
    out = service.handle(svc, peer, parse_request(json.dumps(req).encode()))
    if not isinstance(out, service.Pending):
        return out
    replies = out.get()  # a chat: answered after the commit
    # its push to a session new to its conversation comes once the track's
    # start is read (with the others' that wait meanwhile: a greenlet of
    # its own), a few turns of the loop after the ACK
    with gevent.Timeout(5):
        while any(s.repairing for s in svc.router.sessions._by_user.values()):
            gevent.sleep(0.001)
    return replies


def refused(svc: Services, peer: FakePeer, **req: object) -> Errno:
    """The errno of the one error reply, addressed to the request."""
    (reply,) = call(svc, peer, **req)
    assert reply["errno"] != 0, reply
    assert reply.get("ack", reply["msgid"] - 1) == req["msgid"], reply
    assert reply.get("seq") == req.get("seq"), reply
    return Errno(reply["errno"])


def new_user(svc: Services, name: str) -> tuple[FakePeer, int]:
    peer = FakePeer()
    (reply,) = call(svc, FakePeer(), msgid=3, name=name, password="pw")
    uid = reply["id"]
    assert call(svc, peer, msgid=1, id=uid, password="pw")[0]["errno"] == 0
    return peer, uid


def test_password_is_stored_only_as_an_argon2id_hash(svc: Services) -> None:
    _, uid = new_user(svc, "alice")
    with svc.db.transaction() as s:
        stored = s.get(User, uid).password  # type: ignore[union-attr]
    # ("pw" may occur by chance in the base64 of a salt or digest: that is no leak)
    assert stored.startswith("$argon2id$") and stored.count("$") == 5 and svc.passwords.verify(stored, "pw")


def test_login_binds_the_session_and_a_second_login_is_refused(svc: Services) -> None:
    peer, uid = new_user(svc, "alice")
    assert peer.user_id == uid and peer.user_name == "alice"
    assert svc.registry.get(uid) is peer
    assert refused(svc, FakePeer(), msgid=1, id=uid, password="pw") == Errno.ONLINE
    assert refused(svc, FakePeer(), msgid=1, id=uid, password="nope") == Errno.AUTH


def test_chat_to_online_user_is_pushed_with_the_real_sender(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    b, b_id = new_user(svc, "bob")
    (ack,) = call(svc, a, msgid=5, to=b_id, msg="hi", name="mallory", seq=1)
    log_fields = {k: ack.pop(k) for k in ("conv", "cseq", "ts")}
    assert ack == {"msgid": 11, "ack": 5, "seq": 1, "errno": 0, "delivered": "online"}
    (got,) = b.pushed
    assert got["id"] == a_id and got["name"] == "alice" and got["msg"] == "hi" and "seq" not in got and got["time"]
    assert {k: got[k] for k in log_fields} == log_fields and log_fields["cseq"] == 1


def test_chat_to_offline_user_is_stored_and_handed_over_once(svc: Services) -> None:
    a, _ = new_user(svc, "alice")
    (reg,) = call(svc, FakePeer(), msgid=3, name="bob", password="pw")
    for i in range(3):
        assert call(svc, a, msgid=5, to=reg["id"], msg=str(i), seq=i)[0]["delivered"] == "offline"
    bob = FakePeer()
    (login,) = call(svc, bob, msgid=1, id=reg["id"], password="pw")
    assert [json.loads(m)["msg"] for m in login["offlinemsg"]] == ["0", "1", "2"]
    call(svc, bob, msgid=10)
    (again,) = call(svc, bob, msgid=1, id=reg["id"], password="pw")
    assert "offlinemsg" not in again


def test_group_membership_cache_sees_a_new_member(svc: Services) -> None:
    a, _ = new_user(svc, "alice")
    b, _ = new_user(svc, "bob")
    (ack,) = call(svc, a, msgid=7, groupname="g", groupdesc="", seq=1)
    gid = ack["groupid"]
    assert call(svc, a, msgid=9, groupid=gid, msg="alone", seq=2)[0]["members"] == 0  # now cached
    call(svc, b, msgid=8, groupid=gid)
    assert call(svc, a, msgid=9, groupid=gid, msg="hi", seq=3)[0]["members"] == 1
    assert [m["msg"] for m in b.pushed] == ["hi"]


def test_group_chat_reaches_the_other_members_never_the_sender_nor_an_outsider(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    b, _ = new_user(svc, "bob")
    outsider, _ = new_user(svc, "mallory")
    gid = call(svc, a, msgid=7, groupname="g", groupdesc="", seq=1)[0]["groupid"]
    assert call(svc, b, msgid=8, groupid=gid, seq=2)[0]["errno"] == 0
    (ack,) = call(svc, a, msgid=9, groupid=gid, msg="hi all", seq=3)
    assert {k: ack[k] for k in ("msgid", "ack", "seq", "errno", "members", "cseq")} == {
        # the group's first message follows bob's join notice (cseq 1), which
        # alice, who did not ask for notices, is not handed
        "msgid": 11, "ack": 9, "seq": 3, "errno": 0, "members": 1, "cseq": 2}
    assert [(m["id"], m["groupid"], m["msg"]) for m in b.pushed] == [(a_id, gid, "hi all")]
    assert a.pushed == []  # not echoed to its sender
    assert refused(svc, outsider, msgid=9, groupid=gid, msg="let me in") == Errno.FORBIDDEN
    assert refused(svc, outsider, msgid=9, groupid=gid + 1000, msg="x") == Errno.NOT_FOUND
    assert [m["msg"] for m in b.pushed] == ["hi all"] and a.pushed == []


def test_a_bus_delivery_for_a_user_who_just_left_is_stored_for_the_next_login(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    b, b_id = new_user(svc, "bob")
    assert call(svc, b, msgid=10, seq=1)[0]["errno"] == 0  # bob left after another node routed to him
    body = json.dumps({"msgid": 5, "id": 9, "name": "carol", "to": b_id, "msg": "routed", "time": "t"}).encode()
    svc.router.on_bus_delivery([a_id, b_id], body)
    assert [m["msg"] for m in a.pushed] == ["routed"]  # alice is here: pushed
    (login,) = call(svc, b, msgid=1, id=b_id, password="pw")
    assert [json.loads(m) for m in login["offlinemsg"]] == [json.loads(body)]


def test_every_request_after_login_acts_as_the_session_user_only(svc: Services) -> None:
    a, _ = new_user(svc, "alice")
    _, b_id = new_user(svc, "bob")
    for req in [dict(msgid=5, to=b_id, msg="x"), dict(msgid=6, friendid=b_id), dict(msgid=7, groupname="g"),
                dict(msgid=8, groupid=1), dict(msgid=9, groupid=1, msg="x"), dict(msgid=10)]:
        assert refused(svc, a, id=b_id, **req) == Errno.FORBIDDEN, req
    assert refused(svc, FakePeer(), msgid=5, to=b_id, msg="x") == Errno.NOT_LOGGED_IN


def test_a_database_error_is_errno_11_and_leaves_nothing_half_written(svc: Services) -> None:
    a, _ = new_user(svc, "alice")
    with svc.db.engine.begin() as conn:  # the second insert of create_group will fail
        conn.execute(text("ALTER TABLE groupuser RENAME TO groupuser_gone"))
    assert refused(svc, a, msgid=7, groupname="g", groupdesc="d", seq=1) == Errno.UNAVAILABLE
    with svc.db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE groupuser_gone RENAME TO groupuser"))
    with svc.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(AllGroup)) == 0
        assert s.scalar(select(func.count()).select_from(GroupUser)) == 0
    # and the same request succeeds once the store is back
    assert call(svc, a, msgid=7, groupname="g", groupdesc="d", seq=2)[0]["errno"] == 0


def test_login_that_fails_on_the_database_leaves_the_user_free(svc: Services) -> None:
    (reg,) = call(svc, FakePeer(), msgid=3, name="bob", password="pw")
    with svc.db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE friend RENAME TO friend_gone"))
    peer = FakePeer()
    assert refused(svc, peer, msgid=1, id=reg["id"], password="pw") == Errno.UNAVAILABLE
    assert peer.user_id is None and svc.registry.get(reg["id"]) is None
    assert svc.presence.owner(reg["id"]) is None


def test_disconnect_sets_the_user_offline(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    with svc.db.transaction() as s:
        assert s.get(User, a_id).state == "online"  # type: ignore[union-attr]
    service.disconnect(svc, a)
    with svc.db.transaction() as s:
        assert s.get(User, a_id).state == "offline"  # type: ignore[union-attr]
    assert svc.registry.get(a_id) is None and not svc.presence.online([a_id])


def test_a_chat_without_seq_is_silent_when_logged_and_refused_when_the_log_refuses_it() -> None:
    """The ACK's early return for part A (nothing built for a silent
    request) comes after the log's outcome: a refusal still reaches a
    client that sent no seq, and a chat with seq gets its ACK."""
    from gchat.protocol import ProtocolError, dumps
    from gchat.writer import Written

    logged = (Written(40, 7, 1764298800000, 2, b"{}", (3,)), 1)
    refused = ProtocolError(Errno.FORBIDDEN, "not a member")
    for ack_of, frame in ((service._one_chat_ack, {"msgid": 5, "to": 3, "msg": "hi"}),
                          (service._group_chat_ack, {"msgid": 9, "groupid": 4, "msg": "hi"})):
        classic = parse_request(dumps(frame))
        assert ack_of(classic, logged) == []
        with pytest.raises(ProtocolError) as e:
            ack_of(classic, refused)
        assert e.value.errno == Errno.FORBIDDEN
        [reply] = ack_of(parse_request(dumps({**frame, "seq": 12})), logged)
        assert (reply["seq"], reply["errno"], reply["conv"], reply["cseq"]) == (12, 0, 40, 7)
