"""The log is the record, the bus only tells (issue 10): what Redis drops is
found missing by its sequence number and delivered from the log. Two nodes
on one MariaDB database and a Redis of the module's own."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster_support import Cluster, RedisServer
from tests.support import Wire, unique, user


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    # a long node TTL: the paused node is not reaped, whatever the machine's load
    c = Cluster(mariadb.create(), redis_server, extra=("--heartbeat-interval", "1", "--node-ttl", "60"))
    try:
        c.add_nodes(2)
        yield c
    finally:
        c.stop()


def drain(w: Wire, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    return [w.recv(timeout) for _ in range(n)]


def test_a_paused_node_gets_every_message_of_a_burst_once_in_order(cluster: Cluster,
                                                                    redis_server: RedisServer) -> None:
    """A node stopped (SIGSTOP: a long GC pause, a stalled VM) during a burst
    of cross-node 8 KB messages: Redis closes its subscriber for passing the
    pub/sub output buffer limit, and everything it held goes with it. The
    recipient still gets every acknowledged message, in order, once."""
    # a small limit, so a burst of a few hundred messages passes it
    redis_server.client().config_set("client-output-buffer-limit", "pubsub 262144 131072 1")
    senders = [user(cluster.nodes[0].address)[0] for _ in range(5)]
    b, ub = user(cluster.nodes[1].address)
    paused = cluster.nodes[1]
    assert paused.proc is not None
    # 5 senders x 120 messages of 8 KB: past Redis's limit and the kernel's
    # socket buffers (about 3 MB on loopback) by far
    sent = {s: [f"{k}.{i:03}:" + "x" * 7990 for i in range(120)] for k, s in enumerate(senders)}
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        for s, msgs in sent.items():
            for i, msg in enumerate(msgs):
                s.send({"msgid": 5, "to": ub, "msg": msg, "seq": i})
        acks = [ack for s in senders for ack in drain(s, 120)]
        assert all(ack["errno"] == 0 for ack in acks), [x for x in acks if x["errno"]][:3]
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    got = []
    try:
        while len(got) < len(acks):
            got.append(b.recv(30))
    except AssertionError:
        pass
    texts = [m["msg"] for m in got]
    assert len(texts) == len(acks), f"got {len(texts)} of {len(acks)}:\n{paused.log()}"
    for msgs in sent.values():  # each sender's order kept, nothing twice
        assert [m for m in texts if m[:2] == msgs[0][:2]] == msgs
    for conv in {ack["conv"] for ack in acks}:  # in each conversation, the log's order, gap-free
        assert [m["cseq"] for m in got if m["conv"] == conv] == sorted(
            ack["cseq"] for ack in acks if ack["conv"] == conv)
    b.nothing(1.0)  # no duplicate
    # the bus had really dropped them: the node says it repaired from the log
    paused.wait_for_log("repairing")
    redis_server.client().config_set("client-output-buffer-limit", "pubsub 33554432 8388608 60")
    for s in senders:
        s.close()
    b.close()


def test_a_member_who_joined_gets_every_group_message_after_the_join(cluster: Cluster) -> None:
    """Joins on node A race a group message from busy node B, whose member
    list may be cached from before the join: every joiner gets the message
    sent after its join's ACK."""
    n0, n1 = cluster.nodes[0].address, cluster.nodes[1].address
    creator, _ = user(n0)
    sender, _ = user(n1)
    gid = creator.request({"msgid": 7, "groupname": unique("g"), "seq": 1})["groupid"]
    assert sender.request({"msgid": 8, "groupid": gid, "seq": 1})["errno"] == 0
    # node B caches the member list now
    assert sender.request({"msgid": 9, "groupid": gid, "msg": "warm", "seq": 2})["errno"] == 0
    assert creator.recv()["msg"] == "warm"
    joiners: list[Wire] = []
    acked = []
    try:
        for i in range(60):
            j, _ = user(n0)
            joiners.append(j)
            assert j.request({"msgid": 8, "groupid": gid, "seq": 1})["errno"] == 0
            ack = sender.request({"msgid": 9, "groupid": gid, "msg": f"after join {i}", "seq": 10 + i})
            assert ack["errno"] == 0 and ack["members"] == i + 2, ack
            acked.append(ack["cseq"])
            got = j.recv(30)
            assert (got["msg"], got["cseq"]) == (f"after join {i}", ack["cseq"])
        # every member sees the one order: each join's notice (for sessions
        # that asked for notices, not this one) took the number before
        seqs = [creator.recv()["cseq"] for _ in range(60)]
        assert seqs == acked and seqs == list(range(seqs[0], seqs[0] + 120, 2))
    finally:
        for j in joiners:
            j.close()
        creator.close(), sender.close()


def test_two_senders_on_two_nodes_one_gap_free_order_for_every_member(cluster: Cluster) -> None:
    n0, n1 = cluster.nodes[0].address, cluster.nodes[1].address
    s0, _ = user(n0)
    s1, _ = user(n1)
    r0, _ = user(n0)
    r1, _ = user(n1)
    gid = s0.request({"msgid": 7, "groupname": unique("g"), "seq": 1})["groupid"]
    for w in (s1, r0, r1):
        assert w.request({"msgid": 8, "groupid": gid, "seq": 1})["errno"] == 0
    n = 150
    for i in range(n):  # pipelined from both nodes at once
        s0.send({"msgid": 9, "groupid": gid, "msg": f"s0 {i}", "seq": i})
        s1.send({"msgid": 9, "groupid": gid, "msg": f"s1 {i}", "seq": i})
    for s in (s0, s1):  # each also gets the other's messages
        frames = drain(s, 2 * n)
        assert [x["errno"] for x in frames if x["msgid"] == 11] == [0] * n
    seen0 = [(m["cseq"], m["msg"]) for m in drain(r0, 2 * n)]
    seen1 = [(m["cseq"], m["msg"]) for m in drain(r1, 2 * n)]
    assert seen0 == seen1
    first = seen0[0][0]
    assert [q for q, _ in seen0] == list(range(first, first + 2 * n))
    # each sender's own order is kept within the one order
    assert [m for _, m in seen0 if m.startswith("s0")] == [f"s0 {i}" for i in range(n)]
    r0.nothing(0.5), r1.nothing(0.5)
    for w in (s0, s1, r0, r1):
        w.close()


def test_kill_9_right_after_an_ack_loses_nothing(cluster: Cluster) -> None:
    doomed = cluster.add_node()
    try:
        a, _ = user(doomed.address)
        with Wire(cluster.nodes[0].address) as w:
            ub = w.register()
        acks = []
        for i in range(20):
            acks.append(a.request({"msgid": 5, "to": ub, "msg": f"durable {i}", "seq": i}))
        assert all(x["errno"] == 0 for x in acks)
        doomed.kill()  # kill -9 right after the last ACK
        a.close()
        with Wire(cluster.nodes[0].address) as b:
            stored = [m for m in b.login(ub).get("offlinemsg", [])]
        assert [json.loads(m)["msg"] for m in stored] == [f"durable {i}" for i in range(20)]
    finally:
        doomed.kill()




def test_a_read_receipt_reaches_the_sender_on_the_other_node(cluster: Cluster) -> None:
    a, ua = user(cluster.nodes[0].address)
    b, ub = user(cluster.nodes[1].address)
    ack = a.request({"msgid": 5, "to": ub, "msg": "read me", "seq": 1})
    assert b.recv()["msg"] == "read me"
    assert b.request({"msgid": 13, "conv": ack["conv"], "cseq": ack["cseq"], "seq": 2})["errno"] == 0
    assert a.recv() == {"msgid": 14, "conv": ack["conv"], "id": ub, "cseq": ack["cseq"]}
    # and a member of a group can ask how many have read
    gid = a.request({"msgid": 7, "groupname": unique("g"), "seq": 3})["groupid"]
    assert b.request({"msgid": 8, "groupid": gid, "seq": 4})["errno"] == 0
    g = a.request({"msgid": 9, "groupid": gid, "msg": "all", "seq": 5})
    assert b.recv()["msg"] == "all"
    b.request({"msgid": 13, "conv": g["conv"], "cseq": g["cseq"], "seq": 6})
    count = a.request({"msgid": 15, "conv": g["conv"], "cseq": g["cseq"], "seq": 7})
    assert (count["readers"], count["members"]) == (1, 1)
    a.close(), b.close()
