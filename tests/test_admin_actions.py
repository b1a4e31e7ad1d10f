"""gchat-admin acting on connected users: kick, broadcast, delete-user,
passwd, and the listings as JSON; on a cluster (reached through Redis) and
on a lone node (reached through its admin socket)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_support import Cluster, RedisServer, admin, running_cluster, wait_until
from tests.support import ROOT, ServerProcess, Wire, unique, user


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(mariadb.create(), redis_server, 2) as c:
        yield c


def env(cluster: Cluster, **extra: str) -> dict[str, str]:
    return {"GCHAT_DATABASE_URL": cluster.database_url, "GCHAT_REDIS_URL": cluster.redis.url, **extra}


def login(address: tuple[str, int], user_id: int, password: str = "pw") -> int:
    with Wire(address) as w:
        return int(w.request({"msgid": 1, "id": user_id, "password": password})["errno"])


def system_message(w: Wire) -> dict[str, Any]:
    m = w.recv()
    assert (m["msgid"], m["id"], m["name"]) == (5, 0, "system"), m
    return m


def test_kick_closes_the_users_connection_on_the_node_holding_it(cluster: Cluster) -> None:
    w, uid = user(cluster.nodes[1].address)
    done = admin("kick", str(uid), "--reason", "testing", env=env(cluster))
    assert done.returncode == 0, done.stderr
    assert f"kicked user {uid}" in done.stdout and cluster.nodes[1].node_id in done.stdout
    assert system_message(w)["msg"] == "disconnected by an operator: testing"
    assert w.closed()
    assert login(cluster.nodes[0].address, uid) == 0  # free again at once, on any node
    again = admin("kick", str(uid), env=env(cluster))
    assert again.returncode == 1 and "is not online" in again.stderr


def test_broadcast_reaches_every_online_user_on_every_node(cluster: Cluster) -> None:
    a, _ = user(cluster.nodes[0].address)
    b, _ = user(cluster.nodes[1].address)
    done = admin("broadcast", "maintenance at 10:00", env=env(cluster))
    assert done.returncode == 0, done.stderr
    assert "broadcast to 2 node(s)" in done.stdout
    for w in (a, b):
        assert system_message(w)["msg"] == "maintenance at 10:00"
        w.close()


def test_delete_user_takes_everything_of_the_user_and_the_nodes_forget_it(cluster: Cluster) -> None:
    n0, n1 = cluster.nodes[:2]
    doomed_name, group = unique("doomed"), unique("alone")
    with Wire(n1.address) as friend:
        fid = friend.register()
        friend.login(fid)
        doomed, did = user(n0.address, name=doomed_name)
        for seq, req in enumerate([{"msgid": 6, "friendid": fid}, {"msgid": 7, "groupname": group},
                                   {"msgid": 10}], 1):
            assert doomed.request({**req, "seq": seq})["errno"] == 0
        assert friend.request({"msgid": 6, "friendid": did, "seq": 1})["errno"] == 0
        # stored (the user logged out), and node1 now caches the user as existing
        assert friend.request({"msgid": 5, "to": did, "msg": "never read", "seq": 2})["delivered"] == "offline"

        done = admin("delete-user", doomed_name, env=env(cluster))
        assert done.returncode == 0, done.stderr
        assert ("deleted 1 user(s), 2 friendship(s), 1 group membership(s), 1 stored message(s), "
                "1 group(s) left empty") in done.stdout
        # node1 is told to forget it: a message to it is refused as to an unknown user
        assert friend.request({"msgid": 5, "to": did, "msg": "to nobody", "seq": 3})["errno"] == 7
        doomed.close()
    assert login(n0.address, did) == 1
    groups = json.loads(admin("groups", "--json", env=env(cluster)).stdout)
    assert group not in {g["name"] for g in groups}
    with Wire(n1.address) as w:
        assert "friends" not in w.login(fid)


def test_delete_user_by_prefix_needs_yes_and_bench_accounts_go(cluster: Cluster) -> None:
    prefix = unique("gone")
    ids = []
    for i in range(3):
        with Wire(cluster.nodes[0].address) as w:
            ids.append(w.register(f"{prefix}-{i}"))
    with Wire(cluster.nodes[0].address) as w:
        bench = [w.register(f"b{os.urandom(4).hex()}_{i}") for i in range(2)]
        keep = w.register(f"b{os.urandom(4).hex()}_x")  # not the bench's pattern
    online = Wire(cluster.nodes[1].address)
    online.login(ids[0])
    refused = admin("delete-user", "--prefix", prefix, env=env(cluster))
    assert refused.returncode == 1 and "3 user(s) match" in refused.stderr and "--yes" in refused.stderr
    done = admin("delete-user", "--prefix", prefix, "--yes", env=env(cluster))
    assert done.returncode == 0 and "deleted 3 user(s)" in done.stdout, done.stderr
    assert f"kicked user {ids[0]}" in done.stdout  # online: kicked first
    assert system_message(online)["msg"] == "disconnected by an operator: account deleted"
    assert online.closed()
    done = admin("delete-user", "--bench", "--yes", env=env(cluster))
    assert done.returncode == 0, done.stderr
    left = {u["id"] for u in json.loads(admin("users", "--json", "--limit", "100000", env=env(cluster)).stdout)}
    assert not left & {*ids, *bench} and keep in left


def test_passwd_sets_the_password_and_revokes_the_token(cluster: Cluster) -> None:
    name = unique("forgetful")
    with Wire(cluster.nodes[0].address) as w:
        uid = w.register(name, "old")
        token = w.request({"msgid": 1, "id": uid, "password": "old", "resume": True})["token"]
    wait_until(lambda: login(cluster.nodes[0].address, uid, "old") == 0, what="released")
    done = admin("passwd", name, env=env(cluster, GCHAT_NEW_PASSWORD="new"))
    assert done.returncode == 0, done.stderr
    assert login(cluster.nodes[0].address, uid, "old") == 1
    assert login(cluster.nodes[1].address, uid, "new") == 0
    with Wire(cluster.nodes[0].address) as w:
        assert w.request({"msgid": 1, "id": uid, "token": token})["errno"] == 1


def test_listings_as_json(cluster: Cluster) -> None:
    w, uid = user(cluster.nodes[0].address)
    nodes = json.loads(admin("nodes", "--json", env=env(cluster)).stdout)
    assert {(n["node"], n["state"]) for n in nodes} >= {(cluster.nodes[0].node_id, "alive")}
    users = json.loads(admin("users", "--json", "--limit", "100000", env=env(cluster)).stdout)
    assert {"id": uid, "name": next(u["name"] for u in users if u["id"] == uid), "state": "online",
            "node": cluster.nodes[0].node_id} in users
    w.close()


def test_a_dead_node_is_listed_as_dead_until_a_live_node_sweeps_it(mariadb: Any, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    try:
        with running_cluster(mariadb.create(), redis_server, 1) as c:
            e = {"GCHAT_DATABASE_URL": c.database_url, "GCHAT_REDIS_URL": redis_server.url}
            dead = c.nodes[0]
            w, _ = user(dead.address)
            dead.kill()
            w.close()

            def state() -> list[dict[str, Any]]:
                return json.loads(admin("nodes", "--json", env=e).stdout)  # type: ignore[no-any-return]

            listed = wait_until(lambda: [n for n in state() if n["state"] == "dead"], what="the node seen dead")
            assert listed == [{"node": dead.node_id, "state": "dead", "users": 1}]
            text = admin("nodes", env=e)
            assert "0 alive, 1 dead" in text.stdout and "freed by the next sweep" in text.stdout
            assert state() == listed  # no live node: nobody swept it
            live = c.add_node()
            wait_until(lambda: state() == [{"node": live.node_id, "state": "alive", "users": 0}],
                       what="the dead node swept")
    finally:
        redis_server.stop()


# --- a lone node, through its admin socket ------------------------------------


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    sock = tmp_path / "admin.sock"
    node = ServerProcess(f"sqlite:///{tmp_path / 'lone.db'}", extra=["--admin-socket", str(sock)]).start()
    yield node, {"GCHAT_DATABASE_URL": node.database_url, "GCHAT_ADMIN_SOCKET": str(sock)}
    node.stop()


def test_a_lone_node_is_reached_through_its_admin_socket(lone: tuple[ServerProcess, dict[str, str]]) -> None:
    node, e = lone
    assert stat.S_IMODE(os.stat(e["GCHAT_ADMIN_SOCKET"]).st_mode) == 0o600
    a, _ = user(node.address)
    b, bid = user(node.address)
    nodes = json.loads(admin("nodes", "--json", env=e).stdout)
    assert nodes == [{"node": node.node_id, "state": "alive", "users": 2}]
    done = admin("broadcast", "hello all", env=e)
    assert done.returncode == 0 and "broadcast to 2 user(s)" in done.stdout, done.stderr
    for w in (a, b):
        assert system_message(w)["msg"] == "hello all"
    done = admin("kick", str(bid), env=e)
    assert done.returncode == 0 and f"kicked user {bid}" in done.stdout, done.stderr
    assert system_message(b)["msg"] == "disconnected by an operator"
    assert b.closed()
    assert login(node.address, bid) == 0
    refused = admin("reset-online", "--all", env=e)
    assert refused.returncode == 1 and "is running" in refused.stderr and "--force" in refused.stderr
    a.close()


def test_reset_online_all_on_a_lone_node_once_it_is_stopped(lone: tuple[ServerProcess, dict[str, str]]) -> None:
    node, e = lone
    node.stop()
    assert not os.path.exists(e["GCHAT_ADMIN_SOCKET"])  # removed on a clean stop
    done = admin("reset-online", "--all", env=e)
    assert done.returncode == 0, done.stderr
    without_socket = {"GCHAT_DATABASE_URL": e["GCHAT_DATABASE_URL"]}
    refused = admin("reset-online", "--all", env=without_socket)
    assert refused.returncode == 1 and "cannot tell whether a node is running" in refused.stderr
    assert admin("reset-online", "--all", "--force", env=without_socket).returncode == 0
    kick = admin("kick", "1", env=without_socket)
    assert kick.returncode == 1


def test_a_second_node_on_the_same_admin_socket_refuses_to_start(
        lone: tuple[ServerProcess, dict[str, str]], tmp_path: Path) -> None:
    node, e = lone
    other = ServerProcess(f"sqlite:///{tmp_path / 'other.db'}", extra=["--admin-socket", e["GCHAT_ADMIN_SOCKET"]])
    out = subprocess.run(other.command(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"gchat-server: admin socket {e['GCHAT_ADMIN_SOCKET']} is in use by a running node")
    assert json.loads(admin("nodes", "--json", env=e).stdout)[0]["node"] == node.node_id  # the first one still answers
