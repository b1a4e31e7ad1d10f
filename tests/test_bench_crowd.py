"""gchat-bench over a real three-node cluster: crowd on a small crowd (every
user logged in twice, password then resume token, every broadcast counted
on every connection, the nodes sampled), and pingpong's pairs and group's
groups across nodes or each on one node (--local), counted by the nodes'
/metrics. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gchat.tools.bench.crowd import crowd_group, plan_crowd
from gchat.tools.bench.scenarios import Options
from gchat.tools.bench.wire import BenchError
from tests.cluster_support import Cluster, RedisServer, running_cluster, wait_until
from tests.support import ROOT, unique
from tests.test_metrics import scrape, value


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(mariadb.create(), redis_server, 3) as c:
        yield c


def bench(cluster: Cluster, scenario: str, *args: str) -> dict[str, Any]:
    """gchat-bench's JSON report of a scenario over every node of the cluster."""
    cmd = [sys.executable, "-m", "gchat.tools.bench", scenario, "--json", "--quiet", *args]
    for node in cluster.nodes:
        assert node.proc is not None
        cmd += ["--server", f"{node.host}:{node.port}", "--server-pid", str(node.proc.pid)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def crowd(cluster: Cluster, users_file: Path, *args: str) -> dict[str, Any]:
    return bench(cluster, "crowd", "--redis-url", cluster.redis.url, "--users-file", str(users_file),
                 "--drain", "20", "--hold", "0.2", *args)


def counted(cluster: Cluster, path: str) -> float:
    """The nodes' chat message copies by path (local, routed, stored), summed."""
    return sum(value(scrape(node), "gchat_messages_total", path=path) for node in cluster.nodes)


def test_a_crowd_over_three_nodes_logs_in_twice_and_gets_every_broadcast_once(
        cluster: Cluster, tmp_path: Path) -> None:
    r = crowd(cluster, tmp_path / "users.jsonl", "--users", "30", "--procs", "2", "--concurrency", "10",
              "--broadcasts", "2", "--sources", "127.0.0.1,127.0.0.2")
    assert r["errors"] == 0, r["error_samples"]
    assert r["password"]["logins"] == r["resume"]["logins"] == 30 and r["not_logged_in"] == 0
    assert r["password"]["latency_ms"]["samples"] == 30
    assert len(r["broadcasts"]) == 2
    for b in r["broadcasts"]:
        assert b["reached"] == b["expected"] == 30 and b["lost"] == 0 and b["duplicates"] == 0
        assert b["latency_ms"]["samples"] == 30 and b["last_delivery_ms"] >= b["latency_ms"]["p50"]
        # sent the way an operator sends it, to every node of the cluster
        assert b["admin"].startswith("broadcast to 3 node(s)")
    assert r["lost"] == 0 and r["duplicates"] == 0
    # users spread round-robin: each node holds its third, and is sampled
    for sample in (r["nodes_after_password"], r["nodes_after_resume"]):
        assert [n["connections"] for n in sample] == [10, 10, 10]
        assert all(n["open_files"] >= 10 and isinstance(n["bytes_per_connection"], int) for n in sample)
    assert len(r["bench_open_files_peak"]) == 2 and all(15 <= f < 20_000 for f in r["bench_open_files_peak"])


def test_a_group_of_the_whole_crowd_gets_each_group_message_once(cluster: Cluster, tmp_path: Path) -> None:
    users = tmp_path / "users.jsonl"
    seeded = subprocess.run([sys.executable, "scripts/crowd-seed", cluster.database_url, str(users), "30",
                             "--hash-time-cost", "1", "--hash-memory-kib", "8", "--group", unique("crowd")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert seeded.returncode == 0, seeded.stderr
    r = crowd(cluster, users, "--users", "30", "--procs", "2", "--concurrency", "10", "--broadcasts", "2")
    assert r["errors"] == 0, r["error_samples"]
    assert r["resume"]["logins"] == 30
    assert len(r["group_messages"]) == 2
    for g in r["group_messages"]:
        # every member but the sender, once
        assert g["reached"] == g["expected"] == 29 and g["lost"] == 0 and g["duplicates"] == 0
        assert g["latency_ms"]["samples"] == 29
    # a run asking for more users than the group holds is refused
    with pytest.raises(BenchError, match="fewer than --users 31"):
        crowd_group(str(users), 31)


def test_a_share_past_the_open_file_limit_is_refused_before_anything_starts() -> None:
    opts = Options(scenario="crowd", servers=[("127.0.0.1", 1)], users=50_000, procs=2, redis_url="redis://x")
    with pytest.raises(BenchError, match="--procs 3"):
        plan_crowd(opts)


def test_pingpong_pairs_cross_nodes_unless_local(cluster: Cluster, tmp_path: Path) -> None:
    """The cross-node figure and its local reference on the same nodes: by
    default every pair spans two nodes, so each message is routed through
    Redis; with --local each pair is on one node (the nodes still share the
    pairs), and none is. Counted by the nodes' own /metrics."""

    for local in (False, True):
        before = counted(cluster, "routed")
        r = bench(cluster, "pingpong", "--pairs", "6", "--duration", "1", "--drain", "5",
                  "--users-file", str(tmp_path / "users.jsonl"), *(["--local"] if local else []))
        assert r["errors"] == 0 and r["lost"] == 0 and r["local"] is local, r
        assert r["deliveries"] == r["sent"] > 12
        if local:
            assert counted(cluster, "routed") == before
        else:  # every message, once each
            want = before + r["sent"]
            wait_until(lambda: counted(cluster, "routed") >= want, 10,  # noqa: B023 - used at once
                       what="the route counts")
            assert counted(cluster, "routed") == want


def test_groups_span_the_nodes_unless_local(cluster: Cluster, tmp_path: Path) -> None:
    """The group fan-out's cross-node figure and its local reference on the
    same nodes: by default the users are spread over the nodes round-robin,
    so a message's copies to members on other nodes are routed through
    Redis; with --local each of the --groups groups is on one node of its
    own, and none is. Every copy reaches its member once either way."""
    groups, members, nodes = 2, 4, len(cluster.nodes)
    # user i (of group i // members) is on node i % nodes: the copies of one
    # message from each member that go to a member on another node
    crossing = sum(1 for i in range(groups * members) for j in range(groups * members)
                   if i != j and i // members == j // members and i % nodes != j % nodes)
    # and before them the joins' notices, from each joiner (all but a group's
    # first user, its creator; one after another) to the members already in
    notices = sum(1 for i in range(groups * members) for j in range(i - i % members, i)
                  if i % nodes != j % nodes)

    for local in (False, True):
        routed, delivered = counted(cluster, "routed"), counted(cluster, "local")
        # eight senders at 40 a second in all for 1 s: five messages each (open loop: sent on schedule)
        r = bench(cluster, "group", "--groups", str(groups), "--members", str(members), "--rate", "40",
                  "--duration", "1", "--drain", "5", "--users-file", str(tmp_path / "users.jsonl"),
                  *(["--local"] if local else []))
        assert r["errors"] == 0 and r["lost"] == 0 and r["duplicates"] == 0, r
        assert r["local"] is local and r["groups"] == groups and r["sent"] == 40
        # each message to the three other members of its own group, not to the other group's
        assert r["deliveries"] == r["expected"] == 3 * r["sent"]
        # (and the notices of the joins, to the members already in)
        assert counted(cluster, "local") >= delivered + r["deliveries"]
        if local:
            assert counted(cluster, "routed") == routed
        else:  # a group message's route is not waited for: its count comes when its reply is read
            want = routed + notices + 5 * crossing
            wait_until(lambda: counted(cluster, "routed") >= want, 10,  # noqa: B023 - used at once
                       what="the route counts")
            assert counted(cluster, "routed") == want
