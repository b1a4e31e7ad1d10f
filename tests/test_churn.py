"""Churn without leaks (issue 5, point 6): many connect / login / chat /
disconnect cycles against one node leave no file descriptors, greenlets or
registry entries behind, and its memory comes back to where it was.

The node reports its counts on SIGUSR1 ("stats connections=.. users=..
greenlets=.. fds=.. rss=.."); the test also reads the process from outside
with psutil. GCHAT_CHURN_CYCLES sets the number of cycles (default 10,000).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

from tests.support import ServerProcess, Wire

CYCLES = int(os.environ.get("GCHAT_CHURN_CYCLES", "10000"))
THREADS = 4
USERS_PER_THREAD = 8
WARMUP = 500


def stats(node: ServerProcess) -> dict[str, int]:
    seen = len(node.lines)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in node.lines[seen:]:
            if " stats " in line:
                return {k: int(v) for k, v in (kv.split("=") for kv in line.split(" stats ", 1)[1].split())}
        time.sleep(0.05)
    raise AssertionError("no stats line")


def settle(node: ServerProcess, want_connections: int, timeout: float = 30.0) -> dict[str, int]:
    """Stats once the node has finished with the closed connections; an
    AssertionError if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(node)
        if s["connections"] == want_connections:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"the node did not settle at {want_connections} connection(s): {s}")
        time.sleep(0.1)


def churn(address, users: list[int], sink: int, cycles: int, counts: dict[str, int], failures: list[str],
          tag: str) -> None:
    try:
        for i in range(cycles):
            uid = users[i % len(users)]
            with Wire(address) as w:
                reply = w.request({"msgid": 1, "id": uid, "password": "pw"})
                while reply["errno"] == 2:  # the previous cycle's disconnect not seen yet
                    counts["retries"] += 1
                    time.sleep(0.01)
                    reply = w.request({"msgid": 1, "id": uid, "password": "pw"})
                assert reply["errno"] == 0, reply
                ack = w.request({"msgid": 5, "to": sink, "msg": f"{tag}:{uid}:{i}", "seq": i})
                assert ack["errno"] == 0 and ack["delivered"] == "online", ack
            counts["cycles"] += 1
    except Exception as e:
        failures.append(repr(e))


def run(address, groups: list[list[int]], sink: int, cycles: int, counts: dict[str, int], tag: str) -> list[str]:
    """The churn; returns the messages sent to the sink (each is unique)."""
    failures: list[str] = []
    per_thread = cycles // len(groups)
    threads = [threading.Thread(target=churn, args=(address, g, sink, per_thread, counts, failures, tag))
               for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    return [f"{tag}:{g[i % len(g)]}:{i}" for g in groups for i in range(per_thread)]


def test_churn_leaves_nothing_behind(make_server):
    node = make_server()
    proc = psutil.Process(node.proc.pid)
    with Wire(node.address) as w:
        groups = [[w.register() for _ in range(USERS_PER_THREAD)] for _ in range(THREADS)]
    sink_wire = Wire(node.address)
    sink = sink_wire.register()
    sink_wire.login(sink)
    received: list[str] = []
    reader_errors: list[str] = []
    done = threading.Event()  # set before the sink is closed: what follows is the expected end

    def drain() -> None:
        try:
            while True:
                received.append(sink_wire.recv(120)["msg"])
        except Exception as e:
            if not done.is_set():
                reader_errors.append(repr(e))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    counts = {"cycles": 0, "retries": 0}

    sent = run(node.address, groups, sink, WARMUP, counts, "warmup")
    before = settle(node, 1)
    rss_before = proc.memory_info().rss
    start = time.monotonic()
    sent += run(node.address, groups, sink, CYCLES, counts, "churn")
    elapsed = time.monotonic() - start
    after = settle(node, 1)
    rss_after = proc.memory_info().rss
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline and reader.is_alive():
        time.sleep(0.05)
    done.set()
    sink_wire.close()
    reader.join(10)

    print(f"\nchurn: {counts['cycles'] - WARMUP} connect/login/chat/disconnect cycles in {elapsed:.1f} s "
          f"({THREADS} client threads, {counts['retries']} login retries while a disconnect was pending)")
    print(f"  before: {before}")
    print(f"  after:  {after}")
    print(f"  RSS (psutil): {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB "
          f"({100 * (rss_after - rss_before) / rss_before:+.1f} %); fds {proc.num_fds()}")
    assert counts["cycles"] == WARMUP // THREADS * THREADS + CYCLES // THREADS * THREADS
    assert not reader_errors, reader_errors
    assert len(received) == len(set(received)), "a chat reached the sink twice"
    assert sorted(received) == sorted(sent)  # the sink saw every chat, once
    for key in ("connections", "users", "per_ip", "pool", "greenlets", "fds"):
        assert after[key] == before[key], (key, before, after)
    assert after["users"] == 1 and after["connections"] == 1
    assert rss_after <= rss_before * 1.05, "memory did not come back to within 5 %"
