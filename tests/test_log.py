"""The conversation log through the handlers (docs/protocol.md section D):
sequence numbers, a sync login, receipts, read cursors, history and its
errnos. No sockets; a SQLite store, as tests/test_service.py."""

from __future__ import annotations

import json
import time

import pytest

from gchat.protocol import Errno, ProtocolError, parse_request
from gchat.service import Services
from tests import test_service
from tests.support import unique
from tests.test_service import FakePeer, call, new_user, refused

svc = test_service.svc  # the same fixture: a SQLite store, an in-process bus


def login(svc: Services, uid: int, **extra: object) -> tuple[FakePeer, dict]:  # type: ignore[type-arg]
    peer = FakePeer()
    (reply,) = call(svc, peer, msgid=1, id=uid, password="pw", **extra)
    assert reply["errno"] == 0, reply
    return peer, reply


def test_numbers_go_up_by_one_per_conversation_and_acks_carry_them(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    b, b_id = new_user(svc, "bob")
    c, c_id = new_user(svc, "carol")
    acks = [call(svc, a, msgid=5, to=b_id, msg=str(i), seq=i)[0] for i in range(3)]
    acks.append(call(svc, b, msgid=5, to=a_id, msg="back", seq=9)[0])
    other = call(svc, a, msgid=5, to=c_id, msg="c", seq=10)[0]
    assert [x["cseq"] for x in acks] == [1, 2, 3, 4] and len({x["conv"] for x in acks}) == 1
    assert other["cseq"] == 1 and other["conv"] != acks[0]["conv"]
    assert [(m["msg"], m["cseq"]) for m in b.pushed] == [("0", 1), ("1", 2), ("2", 3)]
    assert [m["cseq"] for m in a.pushed] == [4] and [m["cseq"] for m in c.pushed] == [1]


def test_a_classic_login_gets_what_it_was_not_handed_oldest_first(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    b, b_id = new_user(svc, "bob")
    call(svc, b, msgid=10)  # bob offline
    for i in range(3):
        assert call(svc, a, msgid=5, to=b_id, msg=f"m{i}", seq=i)[0]["delivered"] == "offline"
    bob, reply = login(svc, b_id)
    assert [json.loads(m)["msg"] for m in reply["offlinemsg"]] == ["m0", "m1", "m2"]
    # live after that, no duplicate of what the login handed over
    call(svc, a, msgid=5, to=b_id, msg="live")
    assert [m["msg"] for m in bob.pushed] == ["live"]
    call(svc, bob, msgid=10)
    assert "offlinemsg" not in login(svc, b_id)[1]


def test_a_sync_login_gets_conversations_unread_counts_and_receipts_move_the_cursor(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    bob0, b_id = new_user(svc, "bob")
    call(svc, bob0, msgid=10)  # bob logs in again later, as a modern client
    acks = [call(svc, a, msgid=5, to=b_id, msg=f"m{i}", seq=i)[0] for i in range(5)]
    conv = acks[0]["conv"]
    bob, reply = login(svc, b_id, sync=True)
    assert "offlinemsg" not in reply
    (entry,) = reply["convs"]
    assert (entry["conv"], entry["kind"], entry["with"], entry["last"], entry["unread"]) == (conv, "pair", a_id, 5, 5)
    assert [json.loads(m)["msg"] for m in entry["msgs"]] == [f"m{i}" for i in range(5)]
    # acknowledges the first three, then loses its connection
    assert call(svc, bob, msgid=12, conv=conv, cseq=3, seq=1)[0]["errno"] == 0
    call(svc, bob, msgid=10)
    bob, reply = login(svc, b_id, sync=True)
    (entry,) = reply["convs"]
    assert [json.loads(m)["cseq"] for m in entry["msgs"]] == [4, 5]  # what it did not acknowledge
    # read up to 5: the sender gets a receipt, the unread count is 0
    assert call(svc, bob, msgid=13, conv=conv, cseq=5, seq=2)[0]["errno"] == 0
    assert a.pushed[-1] == {"msgid": 14, "conv": conv, "id": b_id, "cseq": 5}
    call(svc, bob, msgid=10)
    (entry,) = login(svc, b_id, sync=True)[1]["convs"]
    assert (entry["unread"], entry["read"], entry["msgs"]) == (0, 5, [])


def test_receipt_and_history_errnos(svc: Services) -> None:
    a, a_id = new_user(svc, "alice")
    _, b_id = new_user(svc, "bob")
    mallory, _ = new_user(svc, "mallory")
    conv = call(svc, a, msgid=5, to=b_id, msg="x", seq=1)[0]["conv"]
    assert refused(svc, a, msgid=12, conv=conv, cseq=2) == Errno.BAD_REQUEST  # beyond the end
    with pytest.raises(ProtocolError) as negative:  # refused by the parser, before any handler
        parse_request(json.dumps({"msgid": 12, "conv": conv, "cseq": -1}).encode())
    assert negative.value.errno == Errno.BAD_REQUEST
    assert refused(svc, mallory, msgid=12, conv=conv, cseq=1) == Errno.FORBIDDEN  # another's conversation
    assert refused(svc, mallory, msgid=16, conv=conv) == Errno.FORBIDDEN
    assert refused(svc, a, msgid=16, conv=conv, limit=201) == Errno.BAD_REQUEST
    assert refused(svc, a, msgid=16, conv=conv, limit=0) == Errno.BAD_REQUEST
    assert refused(svc, a, msgid=16, conv=conv, before=1, after=0) == Errno.BAD_REQUEST
    assert refused(svc, a, msgid=16) == Errno.BAD_REQUEST
    assert refused(svc, a, msgid=16, groupid=2_000_000_000) == Errno.NOT_FOUND


def test_history_pages_return_exactly_the_stored_messages(svc: Services) -> None:
    a, _ = new_user(svc, "alice")
    _, b_id = new_user(svc, "bob")
    sent = [f"h{i}" for i in range(120)]
    for i, m in enumerate(sent):
        call(svc, a, msgid=5, to=b_id, msg=m, seq=i)
    (newest,) = call(svc, a, msgid=16, to=b_id, seq=1)
    assert newest["last"] == 120 and [json.loads(m)["msg"] for m in newest["msgs"]] == sent[-50:]
    got: list[str] = []
    after = 0
    while True:
        (page,) = call(svc, a, msgid=16, conv=newest["conv"], after=after, limit=33, seq=2)
        msgs = [json.loads(m) for m in page["msgs"]]
        if not msgs:
            break
        got += [m["msg"] for m in msgs]
        after = msgs[-1]["cseq"]
    assert got == sent
    (before,) = call(svc, a, msgid=16, conv=newest["conv"], before=11, limit=200, seq=3)
    assert [json.loads(m)["msg"] for m in before["msgs"]] == sent[:10]


def test_a_member_who_joins_later_reads_from_the_join_and_readers_are_counted(svc: Services) -> None:
    a, _ = new_user(svc, "alice")
    b, b_id = new_user(svc, "bob")
    gid = call(svc, a, msgid=7, groupname="g", seq=1)[0]["groupid"]
    call(svc, a, msgid=9, groupid=gid, msg="before b", seq=2)
    call(svc, b, msgid=8, groupid=gid, seq=3)
    ack = call(svc, a, msgid=9, groupid=gid, msg="after b", seq=4)[0]
    (page,) = call(svc, b, msgid=16, groupid=gid, seq=5)
    assert [json.loads(m)["msg"] for m in page["msgs"]] == ["after b"]
    (count,) = call(svc, a, msgid=15, conv=ack["conv"], cseq=ack["cseq"], seq=6)
    assert (count["readers"], count["members"]) == (0, 1)
    call(svc, b, msgid=13, conv=ack["conv"], cseq=ack["cseq"])
    (count,) = call(svc, a, msgid=15, conv=ack["conv"], cseq=ack["cseq"], seq=7)
    assert (count["readers"], count["members"]) == (1, 1)
    assert b.pushed and all(m["msgid"] == 9 for m in b.pushed)  # no receipt push in a group


# --- the client library: sync, acknowledgement, de-duplication ---------------


def test_seen_shows_each_message_once_and_acknowledges_the_highest() -> None:
    from gchat.client.seen import Seen
    from gchat.client.types import ChatMessage

    def m(conv: int, cseq: int) -> ChatMessage:
        return ChatMessage(5, 1, "a", "x", conv=conv, cseq=cseq)

    seen = Seen()
    seen.start(3, 2)  # the server's delivered cursor
    assert [seen.first(m(3, q)) for q in (1, 2, 3, 5, 3, 5, 4)] == [False, False, True, True, False, False, True]
    assert seen.to_ack() == []  # arrived, but the application has not taken them
    seen.took(m(3, 5))
    assert seen.to_ack() == [(3, 5)] and seen.to_ack() == []
    assert seen.first(m(8, 40)) and not seen.first(m(8, 39))  # joined later: nothing below is owed
    assert seen.first(ChatMessage(5, 1, "a", "classic"))  # no place in a log: always shown


def test_a_sync_client_gets_again_what_it_did_not_acknowledge_once_each(make_server) -> None:  # type: ignore[no-untyped-def]
    from gchat.client import Client
    from tests.support import user

    node = make_server()
    a, _ = user(node.address)
    with Client.connect(*node.address) as c:
        b_id = c.register(unique(), "pw")
        c.login(b_id, "pw", sync=True)
        for i in range(20):
            assert a.request({"msgid": 5, "to": b_id, "msg": f"m{i}", "seq": i})["errno"] == 0
        # the application takes 5; 15 arrived but are still in the library's queue
        first = [c.next_message(10) for _ in range(5)]
        assert [x.text for x in first if x is not None] == [f"m{i}" for i in range(5)]
        deadline = time.monotonic() + 10
        while c._messages.qsize() < 15 and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.05)
    # the connection is gone with 15 not acknowledged: the next sync has them
    c, result = _login_once_free(Client, node.address, b_id)
    with c:
        (conv,) = result.convs
        assert [x.text for x in conv.messages] == [f"m{i}" for i in range(5, 20)]
        assert conv.unread == 20
        # acknowledged at login: not again
        assert a.request({"msgid": 5, "to": b_id, "msg": "live", "seq": 99})["errno"] == 0
        got = c.next_message(10)
        assert got is not None and (got.text, got.cseq) == ("live", 21)
    c, result = _login_once_free(Client, node.address, b_id)
    with c:
        (conv,) = result.convs
        assert conv.messages == () and conv.delivered == 21
    a.close()


def _login_once_free(client, address, user_id):  # type: ignore[no-untyped-def]
    """A sync login right after the same user's connection closed: the node
    may read it before it has seen the close, and answers errno 2 (id is
    online) until it has, as it would a person reconnecting at once."""
    from gchat.client.errors import AlreadyOnline

    deadline = time.monotonic() + 10
    while True:
        c = client.connect(*address)
        try:
            return c, c.login(user_id, "pw", sync=True)
        except AlreadyOnline:
            c.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_retention_by_count_while_the_node_serves(make_server, tmp_path, backend, request) -> None:  # type: ignore[no-untyped-def]
    from tests.cluster_support import admin
    from tests.support import user

    url = f"sqlite:///{tmp_path / 'kept.db'}" if backend == "sqlite" else request.getfixturevalue("mariadb").create()
    node = make_server(database_url=url)
    a, _ = user(node.address)
    b, b_id = user(node.address)
    for i in range(30):
        assert a.request({"msgid": 5, "to": b_id, "msg": f"r{i}", "seq": i})["errno"] == 0
    assert [b.recv()["msg"] for _ in range(30)] == [f"r{i}" for i in range(30)]
    assert admin("prune", env={"GCHAT_DATABASE_URL": url}).returncode == 1  # no retention set: refused
    done = admin("--database-url", url, "--retention-keep", "10", "prune")
    assert done.returncode == 0 and "pruned 20 message(s)" in done.stdout, done.stdout + done.stderr
    page = a.request({"msgid": 16, "to": b_id, "limit": 200, "seq": 100})
    assert [json.loads(m)["msg"] for m in page["msgs"]] == [f"r{i}" for i in range(20, 30)]
    # numbers are never reused, and the node goes on
    ack = a.request({"msgid": 5, "to": b_id, "msg": "after", "seq": 101})
    assert ack["cseq"] == 31 and b.recv()["msg"] == "after"
    a.close(), b.close()


def test_two_first_messages_written_at_once_both_arrive(make_server) -> None:  # type: ignore[no-untyped-def]
    """A new conversation whose two users send each other their first
    message at the same instant: both are numbered in one writer batch (1
    and 2), and each user is handed the other's, live and exactly once.
    The sender's own message once made the session's track of the new
    conversation count everything below it as had, and the other's message
    (still on its way: parked for a repair, or behind on the bus) was
    dropped and the delivered cursor moved past it: gchat-bench's onetoone
    counted 8 to 12 of 40 such first messages lost."""
    from tests.support import user

    node = make_server()
    pairs = [(user(node.address), user(node.address)) for _ in range(20)]
    # every frame out before any is read: the node's readers take them in
    # one loop, and the writer numbers both of a pair in one batch
    for (a, a_id), (b, b_id) in pairs:
        a.send_raw(b'{"msgid":5,"to":%d,"msg":"from a"}\n' % b_id)
        b.send_raw(b'{"msgid":5,"to":%d,"msg":"from b"}\n' % a_id)
    for (a, a_id), (b, b_id) in pairs:
        got_a, got_b = a.recv(10), b.recv(10)
        assert (got_a["msg"], got_a["id"]) == ("from b", b_id), got_a
        assert (got_b["msg"], got_b["id"]) == ("from a", a_id), got_b
        assert got_a["conv"] == got_b["conv"] and {got_a["cseq"], got_b["cseq"]} == {1, 2}
    for (a, _), (b, _) in pairs:  # and nothing twice: a later message is the next frame
        a.close()
        b.close()
