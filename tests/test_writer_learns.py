"""The log's writer learns where a conversation is from what the bus
delivers (LogWriter.heard): a one-to-one conversation whose users sit on two
nodes is written by both in turn, and each node's next batch takes the fast
path (one round trip) instead of locking first. The guess is never trusted:
a wrong one (a message still on its way) ends in the locking path, with one
gap-free order and nothing lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from gchat import convlog, sqlwire, store
from gchat.protocol import loads
from gchat.store import Database
from gchat.writer import LogWriter, Outgoing
from tests.cluster_support import Cluster, RedisServer, running_cluster
from tests.support import ServerProcess, user
from tests.test_metrics import scrape, value
from tests.test_writer import _store_url, two_writers_on_a_pair


def batches(node: ServerProcess) -> dict[str, float]:
    samples = scrape(node)
    return {p: value(samples, "gchat_log_batches_total", path=p) for p in ("fast", "locked", "moved")}


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(mariadb.create(), redis_server, 2) as c:
        yield c


def test_a_node_that_heard_a_conversation_over_the_bus_writes_it_in_one_round_trip(cluster: Cluster) -> None:
    """Pingpong across two nodes: each reply is written by the node that
    just received the other side's message over the bus. Without learning,
    every one of those batches found the conversation moved and locked it
    first (the locking path); now, after each node's first, all take the
    fast path and none tries it in vain."""
    n0, n1 = cluster.nodes
    a, ua = user(n0.address)
    b, ub = user(n1.address)
    try:
        # the first exchange: each node writes the pair once, under the lock
        assert a.request({"msgid": 5, "to": ub, "msg": "hello", "seq": 1})["errno"] == 0
        assert b.recv()["msg"] == "hello"
        assert b.request({"msgid": 5, "to": ua, "msg": "hi", "seq": 1})["errno"] == 0
        assert a.recv()["msg"] == "hi"
        before = batches(n0), batches(n1)
        rounds = 10
        for i in range(rounds):
            assert a.request({"msgid": 5, "to": ub, "msg": f"ping {i}", "seq": 2 + i})["errno"] == 0
            assert b.recv()["msg"] == f"ping {i}"
            assert b.request({"msgid": 5, "to": ua, "msg": f"pong {i}", "seq": 2 + i})["errno"] == 0
            assert a.recv()["msg"] == f"pong {i}"
        after = batches(n0), batches(n1)
        for was, now in zip(before, after, strict=True):
            assert now["fast"] - was["fast"] == rounds, (before, after)
            assert now["locked"] == was["locked"] and now["moved"] == was["moved"], (before, after)
    finally:
        a.close()
        b.close()


def test_both_sides_of_a_pair_on_two_nodes_at_once_keep_one_gap_free_order(cluster: Cluster) -> None:
    """Both users of a pair send at once, pipelined, from two nodes: what
    each node heard is often behind (the other's message still on its way),
    and those fast tries find the conversation moved. Every message arrives
    once, in the one gap-free order of the log."""
    n0, n1 = cluster.nodes
    a, ua = user(n0.address)
    b, ub = user(n1.address)
    n = 150
    try:
        for i in range(n):
            a.send({"msgid": 5, "to": ub, "msg": f"a {i}", "seq": i})
            b.send({"msgid": 5, "to": ua, "msg": f"b {i}", "seq": i})
        seqs: dict[str, list[int]] = {"a": [], "b": []}
        for w, mine, theirs in ((a, "a", "b"), (b, "b", "a")):
            frames = [w.recv(60) for _ in range(2 * n)]
            acks = [f for f in frames if f["msgid"] == 11]
            got = [f for f in frames if f["msgid"] != 11]
            assert [f["errno"] for f in acks] == [0] * n
            seqs[mine] += [f["cseq"] for f in acks]
            assert [f["msg"] for f in got] == [f"{theirs} {i}" for i in range(n)]  # each once, in order
            assert [f["cseq"] for f in got] == sorted(f["cseq"] for f in got)
        every = sorted(seqs["a"] + seqs["b"])
        assert every == list(range(every[0], every[0] + 2 * n))  # one order, no gap, no number twice
        a.nothing(0.5), b.nothing(0.5)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_a_wrong_guess_takes_the_locking_path_and_numbers_stay_gap_free(backend: str, mariadb: Any,
                                                                       tmp_path: Path) -> None:
    """Two nodes' writers on one pair. Writer two hears of message 1 only
    while writer one has written 1 to 3 (the others still on the bus): its
    fast try finds the conversation moved, and the locking path numbers the
    message 4. Heard right, the next batch is fast; a notice (a membership
    change) sends the conversation to the lock first."""
    with two_writers_on_a_pair(_store_url(backend, mariadb, tmp_path)) as (a, b, one, two, db):
        def send(writer: LogWriter, text: str) -> int:
            w, _ = writer.append(Outgoing(a, {"msgid": 5, "msg": text}, to=b))
            return w.seq

        assert send(two, "m0") == 1  # two knows the pair (as it left it: 1)
        c = two.pair(a, b)
        assert [send(one, f"m{i}") for i in (1, 2, 3)] == [2, 3, 4]
        two.heard(c, 2)  # behind: 3 and 4 are still on their way
        assert two.counts.batches_moved == 0
        fast = two.counts.batches_fast
        assert send(two, "m4") == 5
        assert two.counts.batches_moved == 1  # the guess was tried, and found wrong
        assert two.counts.batches_fast == fast
        assert send(one, "m5") == 6
        two.heard(c, 6)
        two.heard(c, 3)  # old news changes nothing
        fast = two.counts.batches_fast
        locked = two.counts.batches_locked
        assert send(two, "m6") == 7
        assert (two.counts.batches_fast, two.counts.batches_locked) == (fast + 1, locked)
        one.heard(c, 7, notice=True)  # the epoch moved: lock first, no vain try
        moved, locked = one.counts.batches_moved, one.counts.batches_locked
        assert send(one, "m7") == 8
        assert (one.counts.batches_moved, one.counts.batches_locked) == (moved, locked + 1)
        with db.transaction() as s:
            stored = convlog.messages_between(s, c, 0)
        assert [(m.seq, loads(m.body)["msg"]) for m in stored] == [(i + 1, f"m{i}") for i in range(8)]


def _queries(monkeypatch: pytest.MonkeyPatch, raw: Any) -> list[str]:
    """The first word of each query sent on the driver connection `raw`
    from now on, on the wire (gchat/sqlwire.py) or through PyMySQL: one a
    round trip."""
    trips: list[str] = []
    query, command = sqlwire.Wire.query, pymysql.connections.Connection._execute_command

    def on_the_wire(wire: sqlwire.Wire, sql: str, sets: Any = None) -> int:
        if wire.raw is raw:
            trips.append(sql.split(" ", 1)[0])
        return query(wire, sql, sets)

    def through_pymysql(conn: Any, kind: int, sql: Any) -> Any:
        if conn is raw:
            trips.append((sql.decode() if isinstance(sql, bytes) else sql).split(" ", 1)[0])
        return command(conn, kind, sql)

    monkeypatch.setattr(sqlwire.Wire, "query", on_the_wire)
    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", through_pymysql)
    return trips


def test_a_moved_batch_is_written_in_two_round_trips(mariadb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast try that finds its conversation moved brings back, in the same
    round trip, the rows it then locked: the batch is numbered again and
    written in the next query. Two round trips on the writer's connection,
    the locking path's count; before, four (the try, its ROLLBACK, the
    lock's SELECT, the write): at 300 group messages a second across two
    nodes, on the evening's slower machine, a third of the batches paid
    them (docs/benchmarks.md)."""
    with two_writers_on_a_pair(mariadb.create()) as (a, b, one, two, db):
        def send(writer: LogWriter, text: str) -> int:
            w, _ = writer.append(Outgoing(a, {"msgid": 5, "msg": text}, to=b))
            return w.seq

        assert send(two, "m0") == 1
        c = two.pair(a, b)
        assert [send(one, f"m{i}") for i in (1, 2)] == [2, 3]  # two has not heard of them
        assert two._conn is not None
        trips = _queries(monkeypatch, two._conn.connection.dbapi_connection)
        counts = two.counts.batches_fast, two.counts.batches_moved, two.counts.batches_locked
        assert send(two, "m3") == 4
        assert trips == ["BEGIN", "UPDATE"]  # the fast try (a compound statement), then the write
        assert (two.counts.batches_fast, two.counts.batches_moved, two.counts.batches_locked) == (
            counts[0], counts[1] + 1, counts[2] + 1)
        del trips[:]
        assert send(two, "m4") == 5  # where it moved was learnt under the lock: locked first now
        assert trips == ["SELECT", "UPDATE"]
        monkeypatch.undo()
        with db.transaction() as s:
            stored = convlog.messages_between(s, c, 0)
        assert [(m.seq, loads(m.body)["msg"], loads(m.body)["cseq"]) for m in stored] == [
            (i + 1, f"m{i}", i + 1) for i in range(5)]


def test_a_join_this_node_has_not_heard_of_reaches_the_next_message_through_the_moved_branch(
        mariadb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member joins (committed elsewhere: the epoch moves) while this
    writer holds the group's old member list and last_seq: its fast try
    comes short on the epoch, the same round trip locks the row, the
    members are read again under the lock, and the message goes to the
    newcomer too. Three round trips: the try, the members, the write."""
    db = Database(mariadb.create())
    try:
        with db.transaction() as s:
            a, b, c = (store.create_user(s, name, "x") for name in "abc")
            gid = store.create_group(s, "g", "", c)
            conv = convlog.create_group_conversation(s, gid, c)
            store.add_member(s, gid, a)
            convlog.join_group(s, gid, a)
        writer = LogWriter(db)
        first, _ = writer.append(Outgoing(c, {"msgid": 9, "msg": "before"}, group=gid))
        assert (first.seq, first.recipients) == (1, (a,))  # a join here logs no notice (gchat/groups.py does)
        assert writer.append(Outgoing(c, {"msgid": 9, "msg": "known"}, group=gid))[0].seq == 2  # fast now
        with db.transaction() as s:  # another node's join
            store.add_member(s, gid, b)
            convlog.join_group(s, gid, b)
        assert writer._conn is not None
        trips = _queries(monkeypatch, writer._conn.connection.dbapi_connection)
        moved = writer.counts.batches_moved
        after, _ = writer.append(Outgoing(c, {"msgid": 9, "msg": "after"}, group=gid))
        assert trips == ["BEGIN", "SELECT", "UPDATE"]
        assert writer.counts.batches_moved == moved + 1
        assert (after.conv, after.seq, sorted(after.recipients)) == (conv, 3, sorted([a, b]))
        monkeypatch.undo()
        with db.transaction() as s:
            stored = convlog.messages_between(s, conv, 0)
        assert [(m.seq, loads(m.body)["msg"]) for m in stored] == [(1, "before"), (2, "known"), (3, "after")]
        writer.close()
    finally:
        db.dispose()
