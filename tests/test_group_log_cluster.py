"""A group's membership changes against the log across two nodes (issues 10
and 12): a removal raises the member epoch under the writer's lock, so a
node whose member list is cached from before it addresses nothing numbered
after it to the removed member; and the periodic sweep delivers a message
whose live notification was lost, with no later message to reveal the gap.
Two nodes on one MariaDB database and a Redis of the module's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gchat import convlog, store
from gchat.cluster.redis_keys import online_key
from gchat.store import Database
from tests.cluster_support import FAST, Cluster, RedisServer
from tests.support import Wire, unique, user


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    c = Cluster(mariadb.create(), redis_server, extra=(*FAST, "--repair-sweep", "0.5"))
    try:
        c.add_nodes(2)
        yield c
    finally:
        c.stop()


def modern(address: tuple[str, int]) -> tuple[Wire, int, dict[str, Any]]:
    """A user logged in with sync and notices (docs/protocol.md D and F)."""
    w = Wire(address)
    uid = w.register(unique("m"))
    reply = w.request({"msgid": 1, "id": uid, "password": "pw", "sync": True, "notices": True})
    assert reply["errno"] == 0, reply
    return w, uid, reply


def answer(w: Wire, req: dict[str, Any]) -> dict[str, Any]:
    """The reply to req, past whatever is pushed to w meanwhile."""
    w.send(req)
    while True:
        got = w.recv(30)
        if got.get("msgid") == 11 and got.get("ack") == req["msgid"] and got.get("seq") == req["seq"]:
            return got


def test_a_removed_member_gets_nothing_numbered_after_its_removal_on_any_node(cluster: Cluster) -> None:
    """Node B caches the group's member list, then the creator on node A
    removes members one by one, each removal followed at once by a message
    from node B: no removed member gets it (nor at its next login), and a
    member with notices sees every removal and every message in one
    gap-free order."""
    n0, n1 = cluster.nodes[0].address, cluster.nodes[1].address
    creator, _ = user(n0)
    sender, _ = user(n1)
    watcher, _, _ = modern(n0)
    gid = creator.request({"msgid": 7, "groupname": unique("g"), "seq": 1})["groupid"]
    victims = [user(n0) for _ in range(10)]
    for w in [sender, watcher, *(v for v, _ in victims)]:
        assert w.request({"msgid": 8, "groupid": gid, "seq": 1})["errno"] == 0
    # node B caches the member list, the victims in it
    warm = sender.request({"msgid": 9, "groupid": gid, "msg": "warm", "seq": 2})
    assert warm["errno"] == 0 and warm["members"] == 12
    for v, _ in victims:
        assert v.recv()["msg"] == "warm"
    acks = []
    try:
        for i, (_, vid) in enumerate(victims):
            removed = answer(creator, {"msgid": 26, "groupid": gid, "userid": vid, "seq": 10 + i})
            assert removed["errno"] == 0, removed
            ack = answer(sender, {"msgid": 9, "groupid": gid, "msg": f"after removal {i}", "seq": 10 + i})
            assert ack["errno"] == 0 and ack["members"] == 11 - i, ack
            acks.append(ack)
        # a one-to-one message from node B marks the end: whatever the group
        # sent a victim after its removal would come before it. Victim i was
        # a member for the messages before its removal, and only those
        for i, (v, vid) in enumerate(victims):
            assert answer(sender, {"msgid": 5, "to": vid, "msg": "the end", "seq": 100 + i})["errno"] == 0
            got = [v.recv(30)]
            while got[-1].get("msg") != "the end":
                got.append(v.recv(30))
            assert [m["msg"] for m in got[:-1]] == [f"after removal {j}" for j in range(i)], (i, got)
            v.request({"msgid": 10, "seq": 1})
            stale = [m for m in map(json.loads, v.login(vid).get("offlinemsg", [])) if m.get("groupid") == gid]
            assert stale == [], stale
        # the watcher: the joins, "warm", then per victim its removal notice
        # and the message after it, with their own numbers, none missing
        frames = []
        while len([f for f in frames if f.get("msgid") == 9]) < 11:
            frames.append(watcher.recv(30))
        logged = [f for f in frames if "cseq" in f]
        seqs = [f["cseq"] for f in logged]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        removals = [f for f in logged if f.get("kind") == "group_remove"]
        assert [f["user"]["id"] for f in removals] == [vid for _, vid in victims]
        for removal, ack in zip(removals, acks, strict=True):
            assert ack["cseq"] == removal["cseq"] + 1
    finally:
        for v, _ in victims:
            v.close()
        creator.close(), sender.close(), watcher.close()


def test_the_sweep_delivers_a_last_message_whose_notification_was_lost(cluster: Cluster,
                                                                       redis_server: RedisServer) -> None:
    """The recipient's claim is taken out of Redis for one message, so the
    sender's node routes it nowhere (as if the recipient's node had missed
    the publish), and nothing follows it in the conversation: the recipient's
    node finds it missing at its sweep and delivers it from the log."""
    n0, n1 = cluster.nodes[0].address, cluster.nodes[1].address
    a, _ = user(n0)
    b, ub = user(n1)
    assert a.request({"msgid": 5, "to": ub, "msg": "first", "seq": 1})["delivered"] == "online"
    assert b.recv()["msg"] == "first"
    r = redis_server.client()
    owner = r.get(online_key(ub))
    assert owner is not None
    r.delete(online_key(ub))
    try:
        lost = a.request({"msgid": 5, "to": ub, "msg": "lost on the way", "seq": 2})
        assert lost["errno"] == 0 and lost["delivered"] == "offline"
    finally:
        r.set(online_key(ub), owner)
    got = b.recv(30)
    assert (got["msg"], got["cseq"]) == ("lost on the way", lost["cseq"])
    cluster.nodes[1].wait_for_log("sweep: repairing")
    a.close(), b.close()


def test_a_removed_member_is_refused_by_a_node_that_has_not_heard_of_the_removal(cluster: Cluster) -> None:
    """The member is removed in the log as another node removes one
    (gchat/groups.py: under the conversation's lock, the member epoch
    raised), but no invalidation reaches node B: its member cache still
    has the member, so node B lets its message through to the writer. The
    writer, reading the members under the lock, refuses that message
    (errno 6), and nobody gets it."""
    n0, n1 = cluster.nodes[0].address, cluster.nodes[1].address
    creator, _ = user(n0)
    other, _ = user(n0)
    removed, rid = user(n1)
    gid = creator.request({"msgid": 7, "groupname": unique("g"), "seq": 1})["groupid"]
    for w in (other, removed):
        assert w.request({"msgid": 8, "groupid": gid, "seq": 1})["errno"] == 0
    # node B caches the member list (its service and its writer), the member in it
    warm = answer(removed, {"msgid": 9, "groupid": gid, "msg": "warm", "seq": 2})
    assert warm["errno"] == 0 and warm["members"] == 2, warm
    assert other.recv(30)["msg"] == "warm"
    db = Database(cluster.database_url)
    try:
        with db.transaction() as s:
            locked = convlog.lock_group(s, gid)
            assert locked is not None
            conv = locked[0]
            assert store.remove_member(s, gid, rid)
            convlog.leave_group(s, conv, [rid])
        refused = answer(removed, {"msgid": 9, "groupid": gid, "msg": "after the removal", "seq": 3})
        assert refused["errno"] == 6 and refused["errmsg"] == f"not a member of group {gid}", refused
        # the others get nothing from it: the next message they get is the creator's
        ack = answer(creator, {"msgid": 9, "groupid": gid, "msg": "next", "seq": 4})
        assert ack["errno"] == 0 and ack["members"] == 1, ack
        got = other.recv(30)
        assert (got["msg"], got["cseq"]) == ("next", warm["cseq"] + 1), got
        with db.transaction() as s:
            logged = convlog.messages_between(s, conv, warm["cseq"], notices=False)
        assert [json.loads(m.body)["msg"] for m in logged] == ["next"]
    finally:
        db.dispose()
        creator.close(), other.close(), removed.close()


def test_a_group_written_from_both_nodes_at_once_reaches_each_member_once_in_order(cluster: Cluster) -> None:
    """Members on both nodes, a sender on each writing without waiting for
    its acknowledgements, so that the two nodes' writers commit the group's
    messages in turn and each node's share of them reaches the other through
    ROUTE_BATCH (a message's users in one argument) while the other's own
    deliveries go on: every member gets every message of the others once,
    in the log's order."""
    n0, n1 = cluster.nodes[0].address, cluster.nodes[1].address
    a, ua = user(n0)
    b, ub = user(n1)
    gid = a.request({"msgid": 7, "groupname": unique("g"), "seq": 1})["groupid"]
    others = [user(n0) for _ in range(3)] + [user(n1) for _ in range(3)]
    for w in [b, *(w for w, _ in others)]:
        assert w.request({"msgid": 8, "groupid": gid, "seq": 1})["errno"] == 0
    n = 20
    try:
        for i in range(n):
            a.send({"msgid": 9, "groupid": gid, "msg": f"a{i}", "seq": 100 + i})
            b.send({"msgid": 9, "groupid": gid, "msg": f"b{i}", "seq": 100 + i})

        def received(w: Wire, count: int) -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []
            while len(got) < count:
                frame = w.recv(30)
                if frame.get("msgid") == 9:
                    got.append(frame)
            return got

        expect = {"a": [f"a{i}" for i in range(n)], "b": [f"b{i}" for i in range(n)]}
        for w, uid in [(a, ua), (b, ub), *others]:
            froms = [k for k in expect if (k, uid) not in (("a", ua), ("b", ub))]
            got = received(w, n * len(froms))
            cseqs = [f["cseq"] for f in got]
            assert cseqs == sorted(set(cseqs)), cseqs  # in the log's order, none twice
            for k in froms:
                assert [f["msg"] for f in got if f["msg"].startswith(k)] == expect[k]
            assert all(not f["msg"].startswith(k) for f in got for k in expect if k not in froms)
        for w, _ in others:  # and nothing more (a late duplicate) behind them
            w.nothing(0.3)
    finally:
        for w, _ in others:
            w.close()
        a.close(), b.close()
