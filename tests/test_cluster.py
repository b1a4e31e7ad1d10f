"""The cluster as its users see it: three gchat-server nodes on one MariaDB
database and one Redis (our own, so it can be restarted), nginx in front.

Nodes run with --node-ttl 3 --heartbeat-interval 1 so that a killed node is
found dead quickly; the tests assert what users see (messages, errnos), and
wait with generous deadlines, never on timings.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_support import (
    Cluster,
    Nginx,
    RedisServer,
    group_chat_until_all_in,
    received_until,
    running_cluster,
    wait_until,
)
from tests.support import Wire, unique, user

# how long a killed node's users may stay locked: its node_ttl (3 s) plus a
# loaded machine's slack
DEAD_NODE_DEADLINE = 20.0


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(mariadb.create(), redis_server, 3) as c:
        yield c


@pytest.fixture(scope="module")
def nginx(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    proxy = Nginx([n.address for n in cluster.nodes[:3]], Path(tmp_path_factory.mktemp("nginx"))).start()
    yield proxy
    proxy.stop()


def chat(w: Wire, to: int, msg: str, seq: int) -> dict[str, Any]:
    reply = w.request({"msgid": 5, "to": to, "msg": msg, "seq": seq})
    assert reply["msgid"] == 11 and reply["seq"] == seq, reply
    return reply


def login_reply(address: tuple[str, int], user_id: int) -> dict[str, Any]:
    with Wire(address) as w:
        return w.request({"msgid": 1, "id": user_id, "password": "pw"})


def spread(cluster: Cluster, nginx: Nginx, nodes: int) -> list[tuple[Wire, int]]:
    """Users logged in through nginx, one on each of `nodes` different nodes."""
    by_node: dict[str, tuple[Wire, int]] = {}
    extra: list[Wire] = []
    for _ in range(3 * nodes):
        w, uid = user(nginx.address)
        node = cluster.owner(uid)
        assert node is not None
        if node in by_node:
            extra.append(w)
        else:
            by_node[node] = (w, uid)
        if len(by_node) == nodes:
            break
    for w in extra:
        w.close()
    assert len(by_node) == nodes, f"nginx spread the users over {len(by_node)} node(s) only"
    return list(by_node.values())


def test_one_to_one_across_nodes_through_nginx(cluster: Cluster, nginx: Nginx) -> None:
    (a, ua), (b, ub) = spread(cluster, nginx, 2)
    assert chat(a, ub, "hello from A", 1)["delivered"] == "online"
    got = b.recv()
    assert (got["msgid"], got["id"], got["to"], got["msg"]) == (5, ua, ub, "hello from A")
    assert chat(b, ua, "hello from B", 2)["delivered"] == "online"
    assert a.recv()["msg"] == "hello from B"
    # nothing twice: the next message on each path is the next one sent
    assert chat(a, ub, "again from A", 3)["delivered"] == "online"
    assert b.recv()["msg"] == "again from A"
    assert chat(b, ua, "again from B", 4)["delivered"] == "online"
    assert a.recv()["msg"] == "again from B"


def test_a_client_that_half_closes_through_nginx_gets_its_replies(nginx: Nginx) -> None:
    """printf '...' | nc HOST 8000: requests, then FIN from the client."""
    w = Wire(nginx.address)
    w.send({"msgid": 3, "name": unique(), "password": "pw"})
    w.sock.shutdown(socket.SHUT_WR)
    assert w.recv()["errno"] == 0
    w.close()


def test_order_kept_between_one_sender_and_one_recipient(cluster: Cluster) -> None:
    a, _ = user(cluster.nodes[0].address)
    b, ub = user(cluster.nodes[1].address)
    for i in range(200):
        a.send({"msgid": 5, "to": ub, "msg": f"m{i}"})
    assert chat(a, ub, "last", 1)["delivered"] == "online"
    assert [b.recv()["msg"] for _ in range(201)] == [f"m{i}" for i in range(200)] + ["last"]
    assert chat(a, ub, "after the last", 2)["delivered"] == "online"
    assert b.recv()["msg"] == "after the last"  # nothing twice


@pytest.mark.parametrize("classic", [0, 4], ids=["all-acked", "mostly-classic"])
def test_a_burst_to_two_nodes_and_an_offline_user_reaches_each_once_in_order(cluster: Cluster, classic: int) -> None:
    """Five senders pipeline their messages, so the writer commits them in
    batches that it routes in one go, each node getting its share of a batch
    together: every recipient still gets each sender's messages once, in
    order, and each ACK says where its own message went. With `classic` of
    them sending without seq (no ACK: their batches' routes are not waited
    for), the ACKs of the one that asks still say exactly that."""
    senders = [user(cluster.nodes[0].address)[0] for _ in range(5)]
    r1, u1 = user(cluster.nodes[1].address)
    r2, u2 = user(cluster.nodes[2].address)
    with Wire(cluster.nodes[0].address) as w:
        away = w.register()
    targets = [u1, u2, away]
    for k, s in enumerate(senders):
        for i in range(60):
            s.send({"msgid": 5, "to": targets[i % 3], "msg": f"{k}.{i:02}"} | ({} if k < classic else {"seq": i}))
    for s in senders[classic:]:
        acks = [s.recv(30) for _ in range(60)]
        assert [a["seq"] for a in acks] == list(range(60)), acks[:3]
        assert all(a["errno"] == 0 for a in acks), [a for a in acks if a["errno"]][:3]
        assert [a["delivered"] for a in acks] == ["online", "online", "offline"] * 20
    for r, first in ((r1, 0), (r2, 1)):
        got = [r.recv(30)["msg"] for _ in range(5 * 20)]
        for k in range(5):
            assert [m for m in got if m.startswith(f"{k}.")] == [f"{k}.{i:02}" for i in range(first, 60, 3)]
        r.nothing(1.0)  # nothing twice
    reply = login_reply(cluster.nodes[1].address, away)
    assert reply["errno"] == 0, reply
    stored = [json.loads(m)["msg"] for m in reply.get("offlinemsg", [])]
    for k in range(5):
        assert [m for m in stored if m.startswith(f"{k}.")] == [f"{k}.{i:02}" for i in range(2, 60, 3)]
    for w in (*senders, r1, r2):
        w.close()


def test_group_chat_reaches_members_on_every_node_once(cluster: Cluster, nginx: Nginx) -> None:
    (a, ua), (b, ub), (c, uc) = spread(cluster, nginx, 3)
    created = a.request({"msgid": 7, "groupname": unique("g"), "groupdesc": "d", "seq": 1})
    gid = created["groupid"]
    # A's node now caches a group of one; the joins on the other nodes must
    # reach that cache through the bus
    assert a.request({"msgid": 9, "groupid": gid, "msg": "alone", "seq": 2})["members"] == 0
    for w in (b, c):
        assert w.request({"msgid": 8, "groupid": gid, "seq": 3})["errno"] == 0
    last = group_chat_until_all_in(a, gid, 2, what="the joins known on the creator's node")
    for w in (b, c):
        # earlier tries may have reached one of them; each arrives once
        got = received_until(w, last)
        assert all(f["msgid"] == 9 and f["groupid"] == gid and f["id"] == ua for f in got)
        assert len({f["msg"] for f in got}) == len(got)
    assert c.request({"msgid": 9, "groupid": gid, "msg": "from C", "seq": 5})["members"] == 2
    assert a.recv()["msg"] == "from C" and b.recv()["msg"] == "from C"
    # nothing twice, and C does not get its own: the next each gets is B's
    assert b.request({"msgid": 9, "groupid": gid, "msg": "from B", "seq": 6})["members"] == 2
    assert a.recv()["msg"] == "from B" and c.recv()["msg"] == "from B"
    assert a.request({"msgid": 9, "groupid": gid, "msg": "from A", "seq": 7})["members"] == 2
    assert b.recv()["msg"] == "from A"


def test_a_delivery_routed_to_a_node_the_user_just_left_is_stored(cluster: Cluster) -> None:
    n0, n1 = cluster.nodes[0], cluster.nodes[1]
    a, _ = user(n0.address)
    witness, uw = user(n1.address)
    with Wire(n1.address) as w:
        ub = w.register()
    # the presence store still names n1 as B's, but B is gone from n1
    cluster.set_owner(ub, n1)
    try:
        assert chat(a, ub, "just missed you", 1)["delivered"] == "online"  # routed to n1
        # n1 handles its deliveries in order: once the next one arrived, the first was handled
        assert chat(a, uw, "after it", 2)["delivered"] == "online"
        assert witness.recv()["msg"] == "after it"
    finally:
        cluster.set_owner(ub, None)
    reply = login_reply(n1.address, ub)
    assert reply["errno"] == 0, reply
    assert [json.loads(m)["msg"] for m in reply.get("offlinemsg", [])] == ["just missed you"]
    a.close(), witness.close()


def test_a_user_held_by_a_dead_or_deaf_node_gets_the_message_stored(cluster: Cluster) -> None:
    """Both ways a routed message can miss: the owner's heartbeat has
    expired (a hung node: its subscription may still be open), or it is
    fresh but the node is gone (nobody on its channel)."""
    a, _ = user(cluster.nodes[0].address)
    with Wire(cluster.nodes[1].address) as w:
        ub = w.register()
    ghost = f"ghost-{ub}"
    cluster.set_owner(ub, ghost)
    hung = cluster.redis.client().pubsub()
    try:
        hung.subscribe(f"gchat:node:{ghost}")
        assert wait_until(lambda: hung.get_message(timeout=1), 10, what="subscribed")["type"] == "subscribe"
        assert chat(a, ub, "to a dead node", 1)["delivered"] == "offline"
        hung.close()
        cluster.fake_heartbeat(ghost, alive=True)
        assert chat(a, ub, "to a deaf node", 2)["delivered"] == "offline"
    finally:
        hung.close()
        cluster.set_owner(ub, None)
        cluster.fake_heartbeat(ghost, alive=False)
    reply = login_reply(cluster.nodes[2].address, ub)
    assert reply["errno"] == 0, reply
    assert [json.loads(m)["msg"] for m in reply["offlinemsg"]] == ["to a dead node", "to a deaf node"]
    a.close()


def test_second_login_on_another_node_is_refused(cluster: Cluster) -> None:
    _, uid = user(cluster.nodes[0].address)
    for node in cluster.nodes[1:3]:
        reply = login_reply(node.address, uid)
        assert (reply["msgid"], reply["errno"]) == (2, 2), reply


def race_logins(addresses: list[tuple[str, int]], user_id: int) -> list[dict[str, Any]]:
    """The same login sent at once on a connection to each address."""
    wires = [Wire(a) for a in addresses]
    start = threading.Barrier(len(wires))
    replies: list[dict[str, Any]] = []

    def race(w: Wire) -> None:
        start.wait()
        replies.append(w.request({"msgid": 1, "id": user_id, "password": "pw"}))

    threads = [threading.Thread(target=race, args=(w,)) for w in wires]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for w in wires:
        w.close()
    return replies


def test_racing_logins_exactly_one_wins(cluster: Cluster) -> None:
    with Wire(cluster.nodes[0].address) as w:
        uids = [w.register() for _ in range(3)]
    addresses = [cluster.nodes[i % 3].address for i in range(6)]
    for uid in uids:
        replies = race_logins(addresses, uid)
        assert sorted(r["errno"] for r in replies) == [0, 2, 2, 2, 2, 2], replies


def test_clean_shutdown_releases_only_its_own_users(cluster: Cluster) -> None:
    # a long TTL: what frees its users is the clean shutdown, not expiry
    leaving = cluster.add_node("--node-ttl", "60")
    p, up = user(cluster.nodes[0].address)
    q, uq = user(leaving.address)
    assert leaving.stop() == 0
    assert q.closed()
    q2 = Wire(cluster.nodes[1].address)
    assert q2.request({"msgid": 1, "id": uq, "password": "pw"})["errno"] == 0
    assert login_reply(cluster.nodes[2].address, up)["errno"] == 2  # still online on its node
    assert chat(q2, up, "still here?", 1)["delivered"] == "online"
    assert p.recv()["msg"] == "still here?"


def test_killed_node_users_log_in_elsewhere_and_get_what_was_sent(cluster: Cluster) -> None:
    doomed = cluster.add_node()
    sender, _ = user(cluster.nodes[0].address)
    victim, uv = user(doomed.address)
    doomed.kill()  # kill -9: no clean-up of its own
    for i in range(3):
        assert chat(sender, uv, f"while dead {i}", i)["errno"] == 0
    victim.close()

    def login_elsewhere() -> dict[str, Any] | None:
        reply = login_reply(cluster.nodes[1].address, uv)
        assert reply["errno"] in (0, 2), reply
        return reply if reply["errno"] == 0 else None

    reply = wait_until(login_elsewhere, DEAD_NODE_DEADLINE, every=0.5, what="login after the node died")
    assert [json.loads(m)["msg"] for m in reply["offlinemsg"]] == [f"while dead {i}" for i in range(3)]


def test_redis_down_then_restarted(cluster: Cluster, redis_server: RedisServer) -> None:
    n0, n1 = cluster.nodes[0], cluster.nodes[1]
    a, _ = user(n0.address)
    near, un = user(n0.address)
    b, ub = user(n1.address)

    redis_server.stop()
    # a node keeps serving its local users and answers truthfully
    assert chat(a, un, "local", 1)["delivered"] == "online"
    assert near.recv()["msg"] == "local"
    ack = chat(a, ub, "sent 1", 2)
    assert (ack["errno"], ack["delivered"]) == (0, "offline")  # in the log, not handed over yet
    with Wire(n0.address) as w:
        fresh = w.register()
        assert w.request({"msgid": 1, "id": fresh, "password": "pw"})["errno"] == 11

    redis_server.start()  # comes back empty
    n0.wait_for_log("reconnected", 20)
    n1.wait_for_log("reconnected", 20)
    sent = ["sent 1"]

    def live_again() -> bool:
        seq = len(sent) + 10
        msg = f"after restart {seq}"
        sent.append(msg)
        return chat(a, ub, msg, seq)["delivered"] == "online"

    wait_until(live_again, 30, every=0.3, what="live cross-node delivery after the restart")
    # presence was rebuilt from the connections: b is online again cluster-wide
    assert login_reply(cluster.nodes[2].address, ub)["errno"] == 2
    # and nothing sent meanwhile was lost: b's node found it missing from the
    # log (after its bus came back, or at the next message), in order, once:
    # the log-out's ACK comes next, with nothing before it
    assert [b.recv()["msg"] for _ in sent] == sent
    assert b.request({"msgid": 10, "seq": 99}) == {"msgid": 11, "ack": 10, "seq": 99, "errno": 0}
    again = b.request({"msgid": 1, "id": ub, "password": "pw"})
    assert again["errno"] == 0 and "offlinemsg" not in again
