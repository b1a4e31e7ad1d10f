"""The operator's view (issue 14, item 1): /metrics scraped from real nodes
moves with real traffic; /healthz answers while the node serves; /readyz
says 503 while MariaDB (or Redis, in cluster mode) is gone and 200 again
when it is back."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.cluster_support import RedisServer, running_cluster, wait_until
from tests.support import ServerProcess, Wire, unique, user
from tests.test_outage import PrivateMariaDB, private_mariadb  # noqa: F401 - the fixture


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(node: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, body = get(node.metrics_url())
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_real_traffic(make_server: Any) -> None:
    node = make_server()
    before = scrape(node)
    assert value(before, "gchat_connections") == 0
    assert value(before, "process_resident_memory_bytes") > 0
    assert value(before, "process_open_fds") > 0
    assert value(before, "process_cpu_seconds_total") > 0

    (a, _), (b, bid) = user(node.address), user(node.address)
    with Wire(node.address) as w:
        offline = w.register()
        assert w.request({"msgid": 1, "id": offline, "password": "wrong"})["errno"] == 1
        assert w.request({"msgid": 5, "to": bid, "msg": "x"})["errno"] == 5  # not logged in
        w.send_raw(b"not json\n")
        assert w.recv()["errno"] == 3
    for i in range(3):
        a.send({"msgid": 5, "to": bid, "msg": f"live {i}"})
        assert b.recv()["msg"] == f"live {i}"
    assert a.request({"msgid": 5, "to": offline, "msg": "later", "seq": 1})["delivered"] == "offline"

    after = scrape(node)
    assert value(after, "gchat_connections") == 2
    assert value(after, "gchat_users_logged_in") == 2
    assert value(after, "gchat_messages_total", path="local") - value(before, "gchat_messages_total", path="local") == 3
    assert value(after, "gchat_messages_total", path="stored") == 1
    assert value(after, "gchat_messages_total", path="routed") == 0  # alone: no other node
    for errno in ("1", "3", "5"):
        assert value(after, "gchat_errors_total", errno=errno) == 1, errno
    assert value(after, "gchat_login_seconds_count", result="ok") == 2
    assert value(after, "gchat_login_seconds_count", result="refused") == 1
    assert value(after, "gchat_login_seconds_bucket", result="ok", le="+Inf") == 2
    assert value(after, "gchat_db_pool_size") > 0

    a.close()
    b.close()
    wait_until(lambda: value(scrape(node), "gchat_users_logged_in") == 0, what="users gone from the gauge")
    assert value(scrape(node), "gchat_connections") == 0


def test_healthz_and_readyz_follow_mariadb(private_mariadb: PrivateMariaDB) -> None:  # noqa: F811
    m = private_mariadb
    node = ServerProcess(m.url("gchat"), extra=["--db-timeout", "2"]).start()
    try:
        assert get(node.metrics_url("/healthz")) == (200, "ok\n")
        assert get(node.metrics_url("/readyz")) == (200, "ready\n")
        assert get(node.metrics_url("/nothing"))[0] == 404

        m.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]  # frozen: answers nothing, refuses nothing
        status, body = wait_until(lambda: (r := get(node.metrics_url("/readyz")))[0] == 503 and r,
                                  what="/readyz 503 with MariaDB frozen")
        assert "database" in body, body
        assert get(node.metrics_url("/healthz"))[0] == 200  # the process still serves
        m.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        wait_until(lambda: get(node.metrics_url("/readyz"))[0] == 200, what="/readyz 200 after SIGCONT")

        m.kill()
        status, body = wait_until(lambda: (r := get(node.metrics_url("/readyz")))[0] == 503 and r,
                                  what="/readyz 503 with MariaDB killed")
        assert "database" in body, body
        m.start()
        wait_until(lambda: get(node.metrics_url("/readyz"))[0] == 200, timeout=30, what="/readyz 200 after restart")
    finally:
        node.stop()


def test_cluster_routed_messages_and_readyz_follows_redis(mariadb: Any, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    try:
        with running_cluster(mariadb.create(), redis_server, 2) as cluster:
            n0, n1 = cluster.nodes
            (a, _), (b, bid) = user(n0.address), user(n1.address)
            assert a.request({"msgid": 5, "to": bid, "msg": "across", "seq": 1})["delivered"] == "online"
            assert b.recv()["msg"] == "across"
            assert value(scrape(n0), "gchat_messages_total", path="routed") == 1
            assert value(scrape(n1), "gchat_messages_total", path="local") == 1
            assert get(n0.metrics_url("/readyz"))[0] == 200

            redis_server.stop()
            status, body = wait_until(lambda: (r := get(n0.metrics_url("/readyz")))[0] == 503 and r,
                                      what="/readyz 503 with Redis stopped")
            assert "redis" in body and "database" not in body, body
            redis_server.start()
            wait_until(lambda: get(n0.metrics_url("/readyz"))[0] == 200, timeout=30, what="/readyz 200 again")
            n0.wait_for_log("reconnected", 30)
            wait_until(lambda: value(scrape(n0), "gchat_bus_reconnects_total") >= 1, what="a bus reconnect counted")
            a.close()
            b.close()
    finally:
        redis_server.stop()


def test_metrics_endpoint_off_and_busy(make_server: Any) -> None:
    node = make_server("--metrics-bind", "")
    assert not any("metrics on" in line for line in node.lines)
    with Wire(node.address) as w:  # the chat does not need it
        w.register(unique())
    first = make_server()
    first.metrics_url()  # waits until it listens
    second = make_server("--metrics-bind", f"127.0.0.1:{first.metrics_port}")
    second.wait_for_log("metrics: cannot listen on")
    with Wire(second.address) as w:  # one line says why, and the chat serves
        w.register(unique())


def test_a_busy_writer_keeps_its_connection(make_server: Any, mariadb: Any) -> None:
    """The writer waits for each batch's answer under a deadline of
    db_timeout. Seconds of chat whose waits add up to many times that (a
    pair chatting back and forth, db_timeout 1 s) lose no batch's
    connection: gchat_log_commits_lost_total stays at zero, and nothing is
    refused. Before the deadline was armed afresh for each wait, libev's
    timer resumed what was left of it and fired once the waits had added up
    to the timeout, its answer already there (docs/robustness.md case 16):
    the counter then said "committed" for batches nothing had happened to."""
    node = make_server("--db-timeout", "1", database_url=mariadb.create())
    (a, ua), (b, ub) = user(node.address), user(node.address)
    sent = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        sent += 1
        assert a.request({"msgid": 5, "to": ub, "msg": f"ping {sent}", "seq": sent})["errno"] == 0
        assert b.recv()["msg"] == f"ping {sent}"
        assert b.request({"msgid": 5, "to": ua, "msg": f"pong {sent}", "seq": sent})["errno"] == 0
        assert a.recv()["msg"] == f"pong {sent}"
    samples = scrape(node)
    lost = {o: value(samples, "gchat_log_commits_lost_total", outcome=o)
            for o in ("committed", "rolled_back", "unknown")}
    print(f"\n{2 * sent} messages in 6 s; commits lost: {lost}")
    assert lost == {"committed": 0, "rolled_back": 0, "unknown": 0}
    assert value(samples, "gchat_errors_total", errno="11") == 0
    a.close()
    b.close()
