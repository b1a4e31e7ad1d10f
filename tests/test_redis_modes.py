"""When one Redis is not enough (issue 16): the cluster bus on a master
watched by Redis Sentinel (redis+sentinel://), and on a Redis Cluster with
sharded pub/sub (redis+cluster://). Each test starts its own Redis processes
on free ports, and gchat nodes on one MariaDB database; what is asserted is
what users see."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gchat.cluster.redis_client import parse
from gchat.cluster.redis_keys import SLOTTED, node_channel
from gchat.config import from_sources
from tests.cluster_support import (
    REDIS_SERVER,
    Cluster,
    RedisServer,
    admin,
    group_chat_until_all_in,
    received_until,
    wait_until,
)
from tests.support import ServerProcess, Wire, free_port, user

REDIS_CLI = "/usr/bin/redis-cli"
# a killed node's users are free after its TTL (3 s) plus a loaded machine's slack
DEAD_NODE_DEADLINE = 30.0
# a Redis failover: detection (1 s here), election and promotion, on a loaded machine
FAILOVER_DEADLINE = 60.0
FAST = ("--node-ttl", "3", "--heartbeat-interval", "1")


def _redis(port: int, *args: str, tmp: Path) -> subprocess.Popen[bytes]:
    if not os.path.exists(REDIS_SERVER):
        pytest.fail(f"{REDIS_SERVER} is required for the Redis tests (apt-get install redis-server)")
    return subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


class SentinelSet:
    """A master, its replica and three sentinels (quorum 2) watching them as
    `gchat`, each on a free port; a master unreachable for 1 s is failed over."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/gchat/0"

    def start(self) -> SentinelSet:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no process left behind by a start that failed
            raise

    def _start(self) -> SentinelSet:
        self.procs[self.master_port] = _redis(self.master_port, tmp=self.tmp)
        wait_until(lambda: _answers(self.master_port), 10, what="the master")
        self.procs[self.replica_port] = _redis(self.replica_port, "--replicaof", "127.0.0.1",
                                               str(self.master_port), tmp=self.tmp)
        wait_until(self._replicated, 20, what="the replica in sync")
        for port in self.sentinel_ports:
            conf = self.tmp / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                            f"sentinel monitor gchat 127.0.0.1 {self.master_port} 2\n"
                            "sentinel down-after-milliseconds gchat 1000\n"
                            "sentinel failover-timeout gchat 10000\n")
            self.procs[port] = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.sentinel_ports:
            wait_until(lambda port=port: self._sees_all(port), 20, what=f"sentinel {port} ready")
        return self

    def _replicated(self) -> bool:
        info = redis.Redis(port=self.replica_port, socket_timeout=2).info("replication")
        return info.get("master_link_status") == "up"

    def _sees_all(self, port: int) -> bool:
        try:
            s = redis.Redis(port=port, socket_timeout=2)
            master = s.sentinel_master("gchat")
            return bool(master["num-other-sentinels"] == 2 and master["num-slaves"] == 1)
        except redis.RedisError:
            return False

    def master(self) -> int:
        """The master's port, as the sentinels say."""
        s = redis.Redis(port=self.sentinel_ports[0], socket_timeout=2)
        _, port = s.sentinel_get_master_addr_by_name("gchat")
        return int(port)

    def stop(self) -> None:
        _stop(list(self.procs.values()))


class RedisClusterSet:
    """A Redis Cluster of three masters (each with a replica when `replicas`),
    every node on a free port; a master unreachable for 2 s is failed over."""

    def __init__(self, tmp: Path, replicas: bool = False) -> None:
        self.tmp = tmp
        self.ports = [free_port() for _ in range(6 if replicas else 3)]
        self.replicas = replicas
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> RedisClusterSet:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no process left behind by a start that failed
            raise

    def _start(self) -> RedisClusterSet:
        for port in self.ports:
            # the bus port on a free port too: the default, port + 10000, may not exist
            self.procs[port] = _redis(port, "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                                      "--cluster-config-file",
                                      str(self.tmp / f"nodes-{port}.conf"), "--cluster-node-timeout", "2000",
                                      # a replica's first full sync without the default 5 s wait
                                      "--repl-diskless-sync-delay", "0", tmp=self.tmp)
        for port in self.ports:
            wait_until(lambda port=port: _answers(port), 10, what=f"cluster node {port}")
        done = subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                               "--cluster-replicas", "1" if self.replicas else "0", "--cluster-yes"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        for port in self.ports:
            wait_until(lambda port=port: self._ok(port), 30, what=f"cluster state ok on {port}")
        for port in self.ports:
            # a replica that has never finished its first sync refuses to take
            # over ("Disconnected from master for longer than allowed"): a kill
            # right after the start would then fail over nothing
            wait_until(lambda port=port: self._synced(port), 30, what=f"replica {port} in sync")
        return self

    @staticmethod
    def _synced(port: int) -> bool:
        info = redis.Redis(port=port, socket_timeout=2).info("replication")
        return info.get("role") == "master" or info.get("master_link_status") == "up"

    def _ok(self, port: int) -> bool:
        try:
            info = redis.Redis(port=port, socket_timeout=2).cluster("info")
        except redis.RedisError:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text if isinstance(info, (bytes, str)) else info["cluster_state"] == "ok"

    def client(self) -> redis.RedisCluster:
        """A client that finds the cluster through any node still running."""
        alive = [redis.cluster.ClusterNode("127.0.0.1", p) for p in self.ports if self.procs[p].poll() is None]
        return redis.RedisCluster(startup_nodes=alive, socket_timeout=5)

    def owner(self, user_id: int) -> str | None:
        raw = self.client().get(SLOTTED.online_key(user_id))
        return raw.decode() if isinstance(raw, bytes) else None

    def port_of(self, channel: str) -> int:
        """The port of the master holding a channel's (or key's) slot."""
        return int(self.client().get_node_from_key(channel).port)

    def stop(self) -> None:
        _stop(list(self.procs.values()))


def chat(w: Wire, to: int, msg: str, seq: int) -> dict[str, Any]:
    reply = w.request({"msgid": 5, "to": to, "msg": msg, "seq": seq})
    assert reply["msgid"] == 11 and reply["seq"] == seq and reply["errno"] == 0, reply
    return reply


def login_reply(address: tuple[str, int], user_id: int) -> dict[str, Any]:
    with Wire(address) as w:
        return w.request({"msgid": 1, "id": user_id, "password": "pw"})


def test_the_url_forms() -> None:
    s = parse("redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26380/chat/2")
    assert (s.kind, s.hosts, s.service, s.db, s.password) == (
        "sentinel", (("10.0.0.1", 26379), ("10.0.0.2", 26380)), "chat", 2, "secret")
    c = parse("redis+cluster://a:7000,b:7001")
    assert (c.kind, c.hosts, c.layout.prefix) == ("cluster", (("a", 7000), ("b", 7001)), "{gchat}:")
    assert parse("redis://127.0.0.1:6379/0").layout.prefix == "gchat:"
    for bad in ("redis+sentinel://a:1", "redis+cluster://a:1/0", "redis+cluster://a", "http://a:1"):
        with pytest.raises(ValueError):
            parse(bad)
    # a URL of no known form is refused when the settings are read, before anything starts
    with pytest.raises(ValueError, match="redis_url"):
        from_sources(environ={"GCHAT_REDIS_URL": "sentinel://10.0.0.1:26379/chat"})
    assert from_sources(environ={"GCHAT_REDIS_URL": "redis+cluster://a:7000"}).redis_url == "redis+cluster://a:7000"


def test_a_node_keeps_the_subscription_it_made_before_it_said_ready(mariadb: Any, redis_server: RedisServer) -> None:
    """On one Redis (the default): the subscriber a node makes before it
    says ready is the one that serves. (It used to be closed as soon as the
    client that made its pool was collected, then made again by redis-py at
    the first read: whatever was published in between was lost until the
    repair from the log, and every start logged a lost subscription.)"""
    cluster = Cluster(mariadb.create(), redis_server, extra=FAST)
    try:
        n0, n1 = cluster.add_nodes(2)
        a, _ = user(n0.address)
        b, ub = user(n1.address)
        assert chat(a, ub, "first", 1)["delivered"] == "online"
        assert b.recv()["msg"] == "first"
        for node in (n0, n1):
            assert "re-subscribed" not in node.log(), node.log()
    finally:
        cluster.stop()


# --- Sentinel -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path_factory.mktemp("sentinel")).start()
    yield s
    s.stop()


def test_sentinel_failover_loses_no_acknowledged_message(mariadb: Any, sentinels: SentinelSet) -> None:
    """Two nodes on a master that Sentinel watches. The master is killed in
    the middle of a conversation: the sentinels promote the replica, every
    client of the nodes finds the new master through them, cross-node chat
    is live again, and every message acknowledged before, during and after
    the failover reaches its recipient once, in order (what the bus dropped
    comes from the conversation log)."""
    cluster = Cluster(mariadb.create(), sentinels, extra=FAST)  # type: ignore[arg-type]
    try:
        n0, n1 = cluster.add_nodes(2)
        a, ua = user(n0.address)
        b, ub = user(n1.address)
        assert chat(a, ub, "before", 1)["delivered"] == "online"
        assert b.recv()["msg"] == "before"
        assert chat(b, ua, "back", 2)["delivered"] == "online"
        assert a.recv()["msg"] == "back"
        for node in (n0, n1):  # each kept the subscription it made at start
            assert "re-subscribed" not in node.log(), node.log()

        old = sentinels.master()
        sentinels.procs[old].send_signal(signal.SIGKILL)
        sent = ["before"]
        # acknowledged all along: the log has them, whatever the bus does
        for i in range(5):
            sent.append(f"during {i}")
            chat(a, ub, sent[-1], 10 + i)
        wait_until(lambda: sentinels.master() != old, FAILOVER_DEADLINE, every=0.5, what="the replica promoted")
        assert sentinels.master() == sentinels.replica_port

        def live_again() -> bool:
            sent.append(f"after {len(sent)}")
            return chat(a, ub, sent[-1], 100 + len(sent))["delivered"] == "online"

        wait_until(live_again, FAILOVER_DEADLINE, every=0.5, what="live cross-node delivery on the new master")
        # live means through the new master: the nodes hold subscriptions there
        new = redis.Redis(port=sentinels.replica_port, socket_timeout=5)
        assert new.pubsub_numsub(node_channel(n1.node_id))[0][1] == 1
        assert [b.recv(30)["msg"] for _ in sent[1:]] == sent[1:]
        b.nothing(1.0)  # once
        # presence works on the new master: a second login is refused, a new
        # user on n1 is reached from n0
        assert login_reply(n0.address, ub)["errno"] == 2
        c, uc = user(n1.address)
        assert chat(a, uc, "hello C", 500)["delivered"] == "online"
        assert c.recv()["msg"] == "hello C"
    finally:
        cluster.stop()


# --- Redis Cluster ------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    c = RedisClusterSet(tmp_path_factory.mktemp("rcluster")).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def sharded(mariadb: Any, redis_cluster: RedisClusterSet) -> Iterator[Cluster]:
    cluster = Cluster(mariadb.create(), redis_cluster, extra=FAST)  # type: ignore[arg-type]
    try:
        cluster.add_nodes(3)
        yield cluster
    finally:
        cluster.stop()


def test_cluster_one_to_one_across_nodes_on_sharded_channels(sharded: Cluster, redis_cluster: RedisClusterSet) -> None:
    n0, n1, n2 = sharded.nodes[:3]
    a, ua = user(n0.address)
    b, ub = user(n1.address)
    assert redis_cluster.owner(ub) == n1.node_id  # presence in the cluster, under its hash tag
    assert chat(a, ub, "hello from A", 1)["delivered"] == "online"
    got = b.recv()
    assert (got["msgid"], got["id"], got["to"], got["msg"]) == (5, ua, ub, "hello from A")
    for node in (n0, n1, n2):  # each kept the subscription it made at start
        assert "re-subscribed" not in node.log(), node.log()
    assert chat(b, ua, "hello from B", 2)["delivered"] == "online"
    assert a.recv()["msg"] == "hello from B"
    # each node listens on the shard of its own channel, by SSUBSCRIBE
    for node in (n0, n1, n2):
        channel = node_channel(node.node_id)
        shard = redis.Redis(port=redis_cluster.port_of(channel), socket_timeout=5)
        assert shard.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
    for i in range(20):  # order kept, nothing twice
        a.send({"msgid": 5, "to": ub, "msg": f"m{i}"})
    assert [b.recv()["msg"] for _ in range(20)] == [f"m{i}" for i in range(20)]
    b.nothing(0.5)


def test_cluster_group_chat_reaches_members_on_every_node_once(sharded: Cluster) -> None:
    (a, ua), (b, ub), (c, uc) = (user(n.address) for n in sharded.nodes[:3])
    gid = a.request({"msgid": 7, "groupname": f"g{ua}", "groupdesc": "d", "seq": 1})["groupid"]
    for w in (b, c):
        assert w.request({"msgid": 8, "groupid": gid, "seq": 3})["errno"] == 0
    last = group_chat_until_all_in(a, gid, 2,
                                   what="the joins known on the creator's node (invalidations on the cluster)")
    for w in (b, c):
        got = received_until(w, last)
        assert len({f["msg"] for f in got}) == len(got)
    assert c.request({"msgid": 9, "groupid": gid, "msg": "from C", "seq": 5})["members"] == 2
    assert a.recv()["msg"] == "from C" and b.recv()["msg"] == "from C"
    b.nothing(0.3)


def test_cluster_presence_refuses_a_second_login_and_frees_a_killed_nodes_users(sharded: Cluster) -> None:
    _, uid = user(sharded.nodes[0].address)
    assert login_reply(sharded.nodes[1].address, uid)["errno"] == 2
    doomed = sharded.add_node()
    sender, _ = user(sharded.nodes[0].address)
    victim, uv = user(doomed.address)
    doomed.kill()  # kill -9: its heartbeat expires, a live node reaps it
    for i in range(3):
        chat(sender, uv, f"while dead {i}", i)
    victim.close()

    def login_elsewhere() -> dict[str, Any] | None:
        reply = login_reply(sharded.nodes[1].address, uv)
        assert reply["errno"] in (0, 2), reply
        return reply if reply["errno"] == 0 else None

    reply = wait_until(login_elsewhere, DEAD_NODE_DEADLINE, every=0.5, what="login after the node died")
    assert [json.loads(m)["msg"] for m in reply["offlinemsg"]] == [f"while dead {i}" for i in range(3)]
    # a live node reaped it (whichever swept first)
    wait_until(lambda: any("is dead" in n.log() for n in sharded.nodes if n is not doomed), DEAD_NODE_DEADLINE,
               what="a node reports the dead node reaped")


def test_gchat_admin_works_on_a_redis_cluster_url(sharded: Cluster, redis_cluster: RedisClusterSet) -> None:
    """nodes, users, broadcast and kick through redis+cluster://, as the
    nodes use it: the hash-tagged keys, the sharded channel of one node."""
    env = {"GCHAT_DATABASE_URL": sharded.database_url, "GCHAT_REDIS_URL": redis_cluster.url}
    n0, n1 = sharded.nodes[:2]
    (a, ua), (b, ub) = user(n0.address), user(n1.address)
    done = admin("nodes", env=env)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:-1]}
    assert rows[n0.node_id][0] == rows[n1.node_id][0] == "alive"
    assert int(rows[n0.node_id][1]) >= 1 and int(rows[n1.node_id][1]) >= 1
    listed = admin("users", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    where = {row["id"]: row["node"] for row in json.loads(listed.stdout)}
    assert (where[ua], where[ub]) == (n0.node_id, n1.node_id)
    # the cluster-wide channel: every node listens, each user gets it
    sent = admin("broadcast", "maintenance at noon", env=env)
    assert sent.returncode == 0, sent.stderr
    alive = sum(state == "alive" for state, _ in rows.values())  # an earlier test's killed node is not
    assert sent.stdout.startswith(f"broadcast to {alive} node(s)"), sent.stdout
    for w in (a, b):
        got = w.recv()
        assert (got["id"], got["msg"], got.get("system")) == (0, "maintenance at noon", True)
    # one node's own channel, sharded: the kick reaches the node holding ub
    kicked = admin("kick", str(ub), "--reason", "test", env=env)
    assert kicked.returncode == 0, kicked.stderr
    assert f"from node {n1.node_id}" in kicked.stdout
    assert "disconnected by an operator" in b.recv()["msg"]
    assert redis_cluster.owner(ub) is None
    a.close()
    b.close()


def test_cluster_master_failover_moves_the_subscription_and_loses_nothing(
        mariadb: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three masters, each with a replica. The master holding both a node's
    channel and presence's slot is killed in the middle of a conversation:
    its replica takes the slots over, the node subscribes again where its
    channel went, presence is claimed again, cross-node chat is live again,
    and every acknowledged message reaches the recipient once, in order."""
    rc = RedisClusterSet(tmp_path_factory.mktemp("rcluster-ha"), replicas=True).start()
    cluster = Cluster("", rc, extra=FAST)  # type: ignore[arg-type]
    try:
        cluster.database_url = mariadb.create()
        n0 = cluster.add_node()
        # n1's name puts its channel on presence's master: one kill (a
        # majority of masters must live to promote a replica) takes both
        presence = rc.port_of(SLOTTED.nodes)
        name = next(f"n1-{i}" for i in range(10_000) if rc.port_of(node_channel(f"n1-{i}")) == presence)
        n1 = ServerProcess(cluster.database_url, redis_url=rc.url, extra=FAST, node_id=name)
        cluster.nodes.append(n1)
        n1.start(timeout=60)
        a, _ = user(n0.address)
        b, ub = user(n1.address)
        assert chat(a, ub, "before", 1)["delivered"] == "online"
        assert b.recv()["msg"] == "before"
        channel = node_channel(n1.node_id)
        doomed = {presence}
        rc.procs[presence].send_signal(signal.SIGKILL)
        sent = ["before"]
        for i in range(5):
            sent.append(f"during {i}")
            chat(a, ub, sent[-1], 10 + i)

        def promoted() -> bool:
            try:
                return rc.port_of(channel) not in doomed and rc.port_of(SLOTTED.nodes) not in doomed
            except (redis.RedisError, redis.exceptions.RedisClusterException):
                return False  # the slot not covered yet

        wait_until(promoted, FAILOVER_DEADLINE, every=0.5, what="replicas promoted for both slots")

        def live_again() -> bool:
            sent.append(f"after {len(sent)}")
            return chat(a, ub, sent[-1], 100 + len(sent))["delivered"] == "online"

        wait_until(live_again, FAILOVER_DEADLINE, every=0.5, what="live cross-node delivery after the failover")
        shard = redis.Redis(port=rc.port_of(channel), socket_timeout=5)
        assert shard.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
        assert [b.recv(30)["msg"] for _ in sent[1:]] == sent[1:]
        b.nothing(1.0)
    finally:
        cluster.stop()
        rc.stop()
