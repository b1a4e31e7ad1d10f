"""Issue 11, "under attack": hostile input that once broke a node, against
a running node on real sockets. Each test fails on the code before its fix
and prints the figure docs/robustness.md quotes (`pytest -s`)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
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


# --- defect 4: password guessing -------------------------------------------

GUESSERS = 20
GUESSES = 15  # each, pipelined: 300 wrong passwords in all
ATTACK = 6.0  # seconds the node is watched


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_password_guessing_is_throttled_and_the_owner_still_logs_in(make_server) -> None:  # type: ignore[no-untyped-def]
    # the default argon2id costs (the suite's nodes use the cheapest): what a guess really costs
    node = make_server("--hash-time-cost", "2", "--hash-memory-kib", "19456")
    with Wire(node.address) as w:
        victim = w.register(password="the right one")
    assert node.proc is not None
    replies: dict[int, int] = {}
    waits: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    cpu_before = _cpu_seconds(node.proc.pid)

    def guess(n: int) -> None:
        with Wire(node.address) as g:
            g.send_raw(b"".join(b'{"msgid":1,"id":%d,"password":"guess %d.%d"}\n' % (victim, n, i)
                                for i in range(GUESSES)))
            while (left := start + ATTACK - time.monotonic()) > 0:
                try:
                    reply = g.recv(left)
                except AssertionError:  # nothing more within the window
                    break
                with lock:
                    replies[reply["errno"]] = replies.get(reply["errno"], 0) + 1
                    if reply["errno"] == 10:
                        waits.append(reply["errmsg"])

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(GUESSERS)]
    for t in threads:
        t.start()
    while replies.get(10, 0) < GUESSERS:  # the attack is on: every guesser has been told to wait
        assert time.monotonic() - start < ATTACK, replies
        time.sleep(0.01)
    # the owner, from another address, during the attack
    with Wire(node.address, source="127.0.0.2") as owner:
        t0 = time.perf_counter()
        reply = owner.request({"msgid": 1, "id": victim, "password": "the right one"})
        owner_secs = time.perf_counter() - t0
    for t in threads:
        t.join()
    cores = (_cpu_seconds(node.proc.pid) - cpu_before) / (time.monotonic() - start)
    print(f"\n{GUESSERS} connections x {GUESSES} wrong passwords for one id: in {ATTACK:.0f} s "
          f"{replies.get(1, 0)} answered errno 1 (hashed), {replies.get(10, 0)} errno 10 ({waits[0]!r} .. "
          f"{waits[-1]!r}), the rest unread; node CPU {cores:.2f} cores; "
          f"the owner's login from 127.0.0.2 answered in {owner_secs * 1000:.0f} ms")
    assert reply["errno"] == 0 and reply["id"] == victim, reply
    assert replies.get(1, 0) < GUESSERS  # fewer hashed than there are connections: throttled from the start
    # The requirements, as a user sees them: the owner is answered in
    # under 1 s during the attack, and the attack costs the node under half
    # a core. Before the fix: every guess hashed, CPU near both cores, and the
    # owner's login queued behind the guesses.
    assert owner_secs < 1.0
    assert cores < 0.5
