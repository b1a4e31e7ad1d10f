"""gchat-bench smoke tests: each scenario runs on a tiny load and reports
sane numbers (no timing is asserted: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT


def bench(server: Any, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gchat.tools.bench", *args, "--server", f"{server.host}:{server.port}",
           "--server-pid", str(server.proc.pid), "--json", "--quiet", "--drain", "5"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["errors"] == 0, report["error_samples"]
    assert report["lost"] == 0
    return report


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.support import ServerProcess

    proc = ServerProcess(f"sqlite:///{tmp_path_factory.mktemp('bench') / 'gchat.db'}").start()
    yield proc
    proc.stop()


def test_pingpong(node: Any) -> None:
    r = bench(node, "pingpong", "--pairs", "2", "--duration", "1")
    assert r["deliveries"] > 10 and r["sent"] == r["deliveries"]
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    assert r["server_cpu_us_per_delivery"] > 0


def test_pingpong_with_acks_over_two_processes(node: Any) -> None:
    r = bench(node, "pingpong", "--pairs", "2", "--duration", "1", "--procs", "2", "--acks")
    assert r["deliveries"] > 10 and len(r["bench_cpu_per_proc"]) == 2


def test_group_counts_every_member_once(node: Any) -> None:
    r = bench(node, "group", "--members", "5", "--rate", "50", "--duration", "1", "--procs", "2")
    assert r["expected"] == r["sent"] * 4 == r["deliveries"]
    assert r["duplicates"] == 0


def test_offline_drains_in_order_in_the_login_reply(node: Any) -> None:
    r = bench(node, "offline", "--pairs", "2", "--messages", "50")
    assert r["drained"] == 100 and r["in_order"]


def test_login_storm_with_registration(node: Any) -> None:
    r = bench(node, "login", "--users", "20", "--concurrency", "5", "--register")
    assert r["logins"] == 20 and r["server_cpu_us_per_login"] > 0


def test_reconnect_with_resume_tokens(node: Any, tmp_path: Any) -> None:
    users = str(tmp_path / "users.jsonl")
    r = bench(node, "login", "--users", "10", "--concurrency", "5", "--resume", "--users-file", users)
    assert r["logins"] == 10
    assert all(json.loads(line)["token"] for line in open(users))


def test_connections_reports_memory_per_connection(node: Any) -> None:
    r = bench(node, "connections", "--users", "20", "--concurrency", "10", "--hold", "1",
              "--sources", "127.0.0.1,127.0.0.2")
    assert r["connections"] == 20 and r["server_bytes_per_connection"] is not None


def test_the_classic_protocol_is_enough(node: Any) -> None:
    r = bench(node, "group", "--members", "3", "--rate", "20", "--duration", "1", "--classic")
    assert r["part_b"] is False and r["deliveries"] == r["sent"] * 2
