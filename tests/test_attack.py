"""Issue 11, "under attack": hostile input that once broke a node, against
a running node on real sockets. Each test fails on the code before its fix
and prints the figure docs/robustness.md quotes (`pytest -s`)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import pytest

from gchat.protocol import MAX_DEPTH
from tests.support import ServerProcess, Wire, unique, user


def _nest(levels: int) -> object:
    value: object = []
    for _ in range(levels - 2):  # the request is level 1, the field's list level 2
        value = [value]
    return value


# --- defect 2: decoding and encoding agree ---------------------------------


def test_deep_extra_fields_are_refused_at_parse_or_delivered_intact(server: ServerProcess) -> None:
    a, a_id = user(server.address)
    b, b_id = user(server.address)
    with a, b:
        for levels in (MAX_DEPTH + 1, 254, 300, 1000):
            a.send_raw(b'{"msgid":5,"to":%d,"msg":"deep","seq":%d,"extra":%s}\n'
                       % (b_id, levels, b"[" * (levels - 1) + b"]" * (levels - 1)))
            reply = a.recv()
            # before the fix: errno 11 "internal error" from 254 levels on
            assert reply["errno"] == 3 and reply["seq"] == levels and "nested" in reply["errmsg"], reply
        deepest = _nest(MAX_DEPTH)
        reply = a.request({"msgid": 5, "to": b_id, "msg": "deep", "seq": 1, "extra": deepest})
        assert reply["errno"] == 0, reply
        got = b.recv()
        assert got["extra"] == deepest and got["msg"] == "deep"
        print(f"\n{MAX_DEPTH} levels delivered intact; {MAX_DEPTH + 1}, 254, 300 and 1,000 levels: errno 3")
        b.nothing(0.2)


# --- defect 5: one rule for names on both stores ---------------------------


def test_names_with_white_space_at_an_end_or_nothing_visible_are_refused_on_every_store(
    server: ServerProcess,
) -> None:
    base = unique("nm")
    with Wire(server.address) as w:
        w.register(base)
        refused = [base + " ", " " + base, base + "\u00a0", base + "\u200b", "\u200b\u200b", "\u3164", "\u2060"]
        for name in refused:
            reply = w.request({"msgid": 3, "name": name, "password": "pw"})
            # before: "NAME " next to "NAME" was registered on SQLite, taken on MariaDB
            assert reply["msgid"] == 4 and reply["errno"] == 1 and "invalid name" in reply["errmsg"], (name, reply)
        w.login(w.register())
        group = unique("gr")
        assert w.request({"msgid": 7, "groupname": group, "seq": 1})["errno"] == 0
        for name in [group + " ", "\t" + group, group + "\u200b", "\u200b", "\ufeff\u200d"]:
            reply = w.request({"msgid": 7, "groupname": name, "seq": 2})
            assert reply["errno"] == 3 and "invalid group name" in reply["errmsg"], (name, reply)
        inner = base[:3] + " " + base[3:]  # white space inside a name is fine, on both stores
        assert w.request({"msgid": 3, "name": inner, "password": "pw"})["errno"] == 0
        print(f"\n{len(refused)} user names and 5 group names refused alike; {inner!r} accepted")


# --- defect 3: one client stalls everyone ----------------------------------

MiB = 1 << 20
# The issue's goal is other users' p99 round trip under 20 ms while one
# connection sends megabytes of NULs; docs/robustness.md has the figures the
# test printed. The bound asserted is ten times that because this machine is
# shared with other test runs (a scheduler hiccup is not a stall); before the
# fix each MiB stalled every user for about 0.8 s, far past either.
RTT_P99_BOUND = 0.2


# A client of its own (a process, not a thread of the test: the test's
# measurements must not wait on this one's share of the GIL). It sends the
# NULs, then registers on the same connection: the flood was only filler, so
# the connection still speaks the protocol. Prints the REG_ACK's errno.
FLOODER = """
import socket, sys, json
host, port, mib, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
chunk = bytes(256 * 1024)
print("go", flush=True)
for r in range(rounds):
    s = socket.create_connection((host, port))
    for _ in range(mib * 4):
        s.sendall(chunk)
    s.sendall(json.dumps({"msgid": 3, "name": "flooder%d_%d" % (r, port), "password": "pw"}).encode() + b"\\n")
    reply = b""
    while not reply.endswith(b"\\n"):
        reply += s.recv(4096)
    print(json.loads(reply)["errno"], flush=True)
    s.close()
"""


@pytest.mark.parametrize("mib", [1, 6])
def test_a_flood_of_nul_bytes_does_not_stall_other_users(make_server, mib: int) -> None:  # type: ignore[no-untyped-def]
    node = make_server()
    a, a_id = user(node.address)
    b, b_id = user(node.address)
    rounds = 5  # five connections one after the other, each sending `mib` MiB
    host, port = node.address
    rtts: list[float] = []
    with a, b:
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, host, str(port), str(mib), str(rounds)],
                                   stdout=subprocess.PIPE, text=True)
        assert flooder.stdout is not None and flooder.stdout.readline() == "go\n"
        seq = 0
        while flooder.poll() is None:
            seq += 1
            t0 = time.perf_counter()
            a.send({"msgid": 5, "to": b_id, "msg": "ping", "seq": seq})
            assert b.recv()["msg"] == "ping" and a.recv()["seq"] == seq
            rtts.append(time.perf_counter() - t0)
        out, _ = flooder.communicate()
    assert flooder.returncode == 0 and out.split() == ["0"] * rounds
    rtts.sort()
    p99 = rtts[max(0, int(len(rtts) * 0.99) - 1)]
    print(f"\n{rounds} x {mib} MiB of NUL, each from a new connection, during {seq} round trips of two other "
          f"users: median {statistics.median(rtts) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {rtts[-1] * 1000:.1f} ms")
    assert p99 < RTT_P99_BOUND
