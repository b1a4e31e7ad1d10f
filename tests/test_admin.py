"""gchat-admin against a running cluster, as an operator uses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster_support import Cluster, RedisServer, admin, running_cluster
from tests.support import Wire, free_port, unique, user


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(mariadb.create(), redis_server, 2) as c:
        yield c


def env(cluster: Cluster) -> dict[str, str]:
    return {"GCHAT_DATABASE_URL": cluster.database_url, "GCHAT_REDIS_URL": cluster.redis.url}


def login(address: tuple[str, int], user_id: int) -> int:
    with Wire(address) as w:
        return int(w.request({"msgid": 1, "id": user_id, "password": "pw"})["errno"])


def test_nodes_lists_live_nodes_and_their_users(cluster: Cluster) -> None:
    n0, n1 = cluster.nodes[:2]
    held = [user(n0.address), user(n0.address), user(n1.address)]
    done = admin("nodes", env=env(cluster))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:-1]}
    assert rows[n0.node_id] == ["alive", "2"]
    assert rows[n1.node_id] == ["alive", "1"]
    for w, _ in held:
        w.close()


def test_users_and_groups_listing(cluster: Cluster) -> None:
    name, group = unique("listed"), unique("grp")
    w, uid = user(cluster.nodes[0].address, name=name)
    assert w.request({"msgid": 7, "groupname": group, "groupdesc": "for the list", "seq": 1})["errno"] == 0
    # flags work as well as the environment
    users = admin("--database-url", cluster.database_url, "--redis-url", cluster.redis.url, "users")
    assert users.returncode == 0, users.stderr
    row = next(line for line in users.stdout.splitlines() if name in line).split()
    assert row == [str(uid), name, "online", cluster.nodes[0].node_id]
    groups = admin("groups", env=env(cluster))
    assert groups.returncode == 0, groups.stderr
    row = next(line for line in groups.stdout.splitlines() if group in line).split(maxsplit=3)
    assert row[1:] == [group, "1", "for the list"]
    w.close()


def test_reset_online_node_touches_that_node_only(cluster: Cluster) -> None:
    # a long TTL: only the operator can free its users quickly
    lost = cluster.add_node("--node-ttl", "120")
    stays, us = user(cluster.nodes[0].address)
    gone, ug = user(lost.address)
    refused = admin("reset-online", "--node", lost.node_id, env=env(cluster))
    assert refused.returncode == 1 and "alive" in refused.stderr
    lost.kill()
    gone.close()
    assert login(cluster.nodes[1].address, ug) == 2  # its heartbeat has not expired
    done = admin("reset-online", "--node", lost.node_id, "--force", env=env(cluster))
    assert done.returncode == 0, done.stderr
    assert "1 user(s) set offline" in done.stdout
    assert login(cluster.nodes[1].address, ug) == 0
    assert login(cluster.nodes[1].address, us) == 2  # another node's user stays online
    stays.close()


def test_reset_online_all_is_refused_while_nodes_run(cluster: Cluster) -> None:
    done = admin("reset-online", "--all", env=env(cluster))
    assert done.returncode == 1
    assert "alive" in done.stderr and cluster.nodes[0].node_id in done.stderr


@pytest.mark.parametrize("args", [
    ["reset-online"],
    ["reset-online", "--node", "x", "--all"],
    ["delete-user"],
    ["delete-user", "x", "--prefix", "y"],
    ["frobnicate"],
    ["users", "--limit", "0"],
])
def test_wrong_arguments_exit_2(args: list[str]) -> None:
    done = admin(*args)
    assert done.returncode == 2
    assert "usage" in done.stderr


def test_unreachable_stores_exit_1(cluster: Cluster) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    done = admin("nodes", env={**env(cluster), "GCHAT_REDIS_URL": dead_redis})
    assert done.returncode == 1 and "cannot reach Redis" in done.stderr
    dead_db = f"mysql+pymysql://root@127.0.0.1:{free_port()}/nothing"
    done = admin("users", env={**env(cluster), "GCHAT_DATABASE_URL": dead_db})
    assert done.returncode == 1 and "cannot reach the database" in done.stderr
    done = admin("nodes", env={"GCHAT_DATABASE_URL": cluster.database_url})
    assert done.returncode == 1 and "--redis-url" in done.stderr


def test_passwords_in_store_urls_are_not_printed() -> None:
    done = admin("users", env={"GCHAT_DATABASE_URL": f"mysql://root:s3cret@127.0.0.1:{free_port()}/nothing"})
    assert done.returncode == 1 and "cannot reach the database" in done.stderr
    assert "s3cret" not in done.stderr and "root:***@127.0.0.1" in done.stderr
    done = admin("nodes", env={"GCHAT_REDIS_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0"})
    assert done.returncode == 1 and "cannot reach Redis" in done.stderr
    assert "s3cret" not in done.stderr and ":***@127.0.0.1" in done.stderr


def test_reset_online_all_once_the_cluster_is_stopped(cluster: Cluster) -> None:
    # a long TTL: its heartbeat stays fresh after the kill for as long as the
    # admin takes to start on a loaded machine (the others' expire in 3 s)
    slow = cluster.add_node("--node-ttl", "120")
    w, uid = user(slow.address)
    for node in cluster.nodes:
        node.kill()
    # every node died without a word: a heartbeat is still fresh
    done = admin("reset-online", "--all", env=env(cluster))
    assert done.returncode == 1 and slow.node_id in done.stderr
    for node in cluster.nodes:
        assert admin("reset-online", "--node", node.node_id, "--force", env=env(cluster)).returncode == 0
    done = admin("reset-online", "--all", env=env(cluster))
    assert done.returncode == 0, done.stderr
    assert "set offline" in done.stdout
    listed = admin("users", env=env(cluster))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[2:] for line in listed.stdout.splitlines()[1:-1]}
    assert rows[str(uid)] == ["offline", "-"]  # the listing is not empty: it holds this test's user
    assert all(state == ["offline", "-"] for state in rows.values()), rows
    nodes = admin("nodes", env=env(cluster))
    assert nodes.returncode == 0 and nodes.stdout.strip() == "no nodes"
    w.close()
