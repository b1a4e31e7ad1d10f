"""Presence fan-out, measured (docs/protocol.md section F, issue 12): one
user with FRIENDS friends, all online with notices, spread over NODES nodes
(one MariaDB database, one Redis of its own); the user logs in and out
ROUNDS times. For each change: the time until every friend saw it, the
nodes' CPU (user + system from /proc, summed over the nodes), and how many
messages crossed the bus (a PSUBSCRIBE on the node channels counts them).

    python3 scripts/bench_presence.py [--friends 1000] [--nodes 3] [--rounds 10] [--json]

Users and friendships are written to the database directly (one password
hash for all), so the setup does not measure registration. Nodes run with
the cheap test hash: logins are not what is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymysql  # noqa: E402

from gchat import schema, store  # noqa: E402
from gchat.models import User  # noqa: E402
from gchat.passwords import Passwords  # noqa: E402
from tests.cluster_support import RedisServer  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def setup(url: str, friends: int) -> tuple[int, list[int]]:
    db = store.Database(url)
    schema.upgrade(db)
    pw = Passwords(1, 8).hash("pw")
    tag = uuid.uuid4().hex[:6]
    with db.transaction() as s:
        users = [User(name=f"pres{tag}_{i}", password=pw, state="offline") for i in range(friends + 1)]
        s.add_all(users)
        s.flush()
        ids = [u.id for u in users]
        for f in ids[1:]:
            store.make_friends(s, ids[0], f)
    db.dispose()
    return ids[0], ids[1:]


def login(address: tuple[str, int], uid: int) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    sock.sendall(json.dumps({"msgid": 1, "id": uid, "password": "pw", "notices": True}).encode() + b"\n")
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during login")
        buf += chunk
    reply = json.loads(buf.split(b"\n", 1)[0])
    assert reply.get("errno") == 0, reply
    sock.setblocking(False)
    return sock


class Watch:
    """Reads every friend's socket; records when each saw star's state."""

    def __init__(self, socks: list[socket.socket], star: int) -> None:
        self.sel = selectors.DefaultSelector()
        for s in socks:
            self.sel.register(s, selectors.EVENT_READ, [b""])
        self.star = star
        self.n = len(socks)
        self.seen: dict[str, list[float]] = {"online": [], "offline": []}
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        marker = f'"id":{self.star},'.encode()
        while True:
            for key, _ in self.sel.select(1):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                buf = key.data[0] + data
                *frames, key.data[0] = buf.split(b"\n")
                now = time.monotonic()
                for f in frames:
                    if b'"msgid":32' in f and marker in f:
                        state = json.loads(f)["state"]
                        with self.lock:
                            self.seen[state].append(now)

    def wait_all(self, state: str, since: float, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = [t for t in self.seen[state] if t >= since]
            if len(got) >= self.n:
                return max(got) - since
            time.sleep(0.001)
        raise AssertionError(f"only {len(got)} of {self.n} friends saw {state}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--friends", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    dbname = f"gchat_presence_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE `{dbname}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    url = f"mysql+pymysql://root@127.0.0.1:3306/{dbname}?charset=utf8mb4"
    rs = RedisServer(Path(tempfile.mkdtemp())).start()
    nodes: list[ServerProcess] = []
    try:
        star, friends = setup(url, a.friends)
        for i in range(a.nodes):
            nodes.append(ServerProcess(url, redis_url=rs.url, extra=[],
                                       node_id=f"pres{i}").start(timeout=60))
        # the friends on every node but the star's (node 0) when there are
        # several: every notice crosses the bus
        targets = nodes[1:] or nodes
        socks = [login(targets[i % len(targets)].address, f) for i, f in enumerate(friends)]
        watch = Watch(socks, star)
        bus = rs.client().pubsub()
        bus.psubscribe("gchat:node:*")
        counted = [0]

        def count() -> None:
            for m in bus.listen():
                if m["type"] == "pmessage" and m["data"][:1] == b"N" and f"\"id\":{star},".encode() in m["data"]:
                    counted[0] += 1

        threading.Thread(target=count, daemon=True).start()
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        time.sleep(1)  # the logins' own notices settle
        rounds: list[dict[str, Any]] = []
        for _ in range(a.rounds):
            for state in ("online", "offline"):
                before_msgs = counted[0]
                cpu0 = sum(cpu_seconds(pid) for pid in pids)
                t0 = time.monotonic()
                if state == "online":
                    conn = login(nodes[0].address, star)
                else:
                    conn.setblocking(True)
                    conn.sendall(b'{"msgid":10}\n')
                took = watch.wait_all(state, t0)
                time.sleep(0.2)  # let the last bus messages be counted
                cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
                rounds.append({"state": state, "time_to_all_ms": took * 1000, "cpu_ms": cpu * 1000,
                               "bus_messages": counted[0] - before_msgs})
            conn.close()
        times = [r["time_to_all_ms"] for r in rounds]
        cpus = [r["cpu_ms"] for r in rounds]
        report = {
            "friends": a.friends, "nodes": a.nodes, "rounds": a.rounds, "loadavg_before": os.getloadavg(),
            "time_to_all_ms": {"median": statistics.median(times), "max": max(times)},
            # /proc counts in 10 ms ticks: the mean over every change is the figure
            "cpu_ms_per_change": {"mean": statistics.mean(cpus), "median": statistics.median(cpus), "max": max(cpus)},
            "bus_messages_per_change": sorted({r["bus_messages"] for r in rounds}),
            "changes": rounds,
        }
        if a.json:
            print(json.dumps(report))
        else:
            where = "another" if a.nodes > 1 else "the same"
            print(f"{a.friends} friends on {len(targets)} node(s), the user on {where}; {a.rounds} rounds "
                  f"of login + logout (load {report['loadavg_before'][0]:.1f})")
            print(f"time until every friend saw it: median {report['time_to_all_ms']['median']:.1f} ms, "
                  f"max {report['time_to_all_ms']['max']:.1f} ms")
            print(f"CPU of all nodes per change (login or logout, including it): mean "
                  f"{report['cpu_ms_per_change']['mean']:.1f} ms, max {report['cpu_ms_per_change']['max']:.1f} ms")
            print(f"bus messages per change: {report['bus_messages_per_change']}")
            print("time to all, ms, each change: " + " ".join(f"{r['time_to_all_ms']:.0f}" for r in rounds))
        for s in socks:
            s.close()
        return 0
    finally:
        for n in nodes:
            n.stop()
        rs.stop()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{dbname}`")


if __name__ == "__main__":
    sys.exit(main())
