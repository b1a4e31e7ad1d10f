"""Slow readers (issue 5, point 3): a client that stops reading is cut off
once its outbox passes the bound, without slowing anyone else, and every
message not written to it stays after its delivered cursor in the log: what it read before the cut
plus what it gets at its next login is everything sent to it, in order,
each message once."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from gchat.protocol import FrameDecoder, dumps, loads
from tests.support import Wire, user

BIG = 7990  # characters per message (near the 8,000 maximum): kernel buffers fill after a few hundred


def bystanders(address: tuple[str, int], n: int, failures: list[str]) -> None:
    """Two users chatting meanwhile: each message arrives, in order."""
    (c, _), (d, did) = user(address), user(address)
    try:
        for i in range(n):
            ack = c.request({"msgid": 5, "to": did, "msg": f"b{i}", "seq": i})
            if ack["errno"] != 0 or ack["delivered"] != "online":
                failures.append(f"bystander ack {ack}")
                return
            got = d.recv(30)
            if got.get("msg") != f"b{i}":
                failures.append(f"bystander got {got}")
                return
    except Exception as e:  # reported by the test
        failures.append(repr(e))
    finally:
        c.close(), d.close()


@pytest.mark.parametrize("bound", [["--outbox-max-messages", "50"], ["--outbox-max-bytes", "300000"]],
                         ids=["messages", "bytes"])
def test_slow_reader_is_cut_off_and_loses_nothing(make_server, bound):
    node = make_server(*bound)
    slow, slow_id = user(node.address)
    sender, _ = user(node.address)
    failures: list[str] = []
    side = threading.Thread(target=bystanders, args=(node.address, 300, failures))
    side.start()

    sent: list[str] = []
    after_cut = 0
    while after_cut < 100 and len(sent) < 3000:
        batch = [f"{len(sent) + i}:" + "x" * BIG for i in range(100)]
        sender.send_raw(b"".join(dumps({"msgid": 5, "to": slow_id, "msg": m, "seq": 1}) + b"\n" for m in batch))
        for _ in batch:
            assert sender.recv(30)["errno"] == 0  # accepted: must never be lost
        sent += batch
        if after_cut or any("slow reader" in line for line in node.lines):
            after_cut += len(batch)
    line = node.wait_for_log("slow reader")
    side.join(60)
    assert not side.is_alive() and not failures, failures

    # what reached the slow client's socket before the cut is still readable
    live = []
    decoder = FrameDecoder(1 << 24)
    slow.sock.settimeout(30)
    live_frames = list(slow.frames)
    while True:
        data = slow.sock.recv(1 << 20)
        if not data:
            break
        live_frames += decoder.feed(data)
    live = [loads(f)["msg"] for f in live_frames]
    slow.close()
    node.wait_for_log("stay in the log for its next login")

    with Wire(node.address) as again:
        reply = again.login(slow_id)
        offline = [loads(m)["msg"] for m in reply.get("offlinemsg", [])]
    print(f"\n{bound}: sent {len(sent)} messages of {BIG} chars to a client that stopped reading; "
          f"it read {len(live)} from its socket after the cut and got {len(offline)} at its next login")
    print("log:", line.split(": ", 1)[1])
    print("log:", node.wait_for_log("stay in the log for its next login").split(": ", 1)[1])
    assert offline, "the cut must leave messages to store"
    assert live + offline == sent


READ_RATE = 20_000_000  # bytes/s: a client on a fast link, reading all the time
LIVE_RATE = 50  # messages/s from a friend


def test_a_backlog_over_the_byte_bound_is_collected_while_a_friend_writes(make_server):
    """Issue 11, defect 1: the login reply that carries a backlog larger than
    outbox_max_bytes (8 MiB) is being written while live messages arrive;
    none of it may cut the user off, and everything arrives, in order, once."""
    node = make_server()
    friend, _ = user(node.address)
    with Wire(node.address) as w:
        user_id = w.register()
    backlog: list[str] = []
    while len(backlog) * BIG < 9_000_000:
        batch = [f"old{len(backlog) + i}:" + "x" * BIG for i in range(100)]
        friend.send_raw(b"".join(dumps({"msgid": 5, "to": user_id, "msg": m, "seq": 1}) + b"\n" for m in batch))
        for _ in batch:
            assert friend.recv(30)["delivered"] == "offline"
        backlog += batch

    # a small receive buffer: the reply waits in the node's outbox, not in the kernel
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect(node.address)
    sock.sendall(dumps({"msgid": 1, "id": user_id, "password": "pw"}) + b"\n")
    frames: list[bytes] = []
    first_bytes, reply_read = threading.Event(), threading.Event()
    done = threading.Event()
    errors: list[str] = []

    def read() -> None:
        """Read steadily at READ_RATE until the connection ends or `done`."""
        decoder = FrameDecoder(1 << 25)
        start, total = time.monotonic(), 0
        try:
            while not done.is_set():
                data = sock.recv(64 * 1024)
                if not data:
                    errors.append("the node closed the connection")
                    return
                first_bytes.set()
                total += len(data)
                frames.extend(decoder.feed(data))
                if frames:
                    reply_read.set()
                ahead = start + total / READ_RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # the client's pace, not a wait for a condition
        except OSError as e:
            if not done.is_set():
                errors.append(repr(e))

    reader = threading.Thread(target=read)
    reader.start()
    assert first_bytes.wait(30)
    live: list[str] = []
    during_reply = 0
    start = time.monotonic()
    # on through the reply, then a second more
    while not errors and (not reply_read.is_set() or len(live) - during_reply < LIVE_RATE):
        if not reply_read.is_set():
            during_reply += 1
        live.append(f"live{len(live)}")
        ack = friend.request({"msgid": 5, "to": user_id, "msg": live[-1], "seq": len(live)})
        assert ack["errno"] == 0 and ack["delivered"] == "online", (
            ack, errors, [line for line in node.lines if "slow reader" in line])
        time.sleep(max(0.0, start + len(live) / LIVE_RATE - time.monotonic()))  # the friend's pace
    deadline = time.monotonic() + 30
    while len(frames) < 1 + len(live) and not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    sock.close()
    reader.join(10)
    friend.close()
    assert not errors, (errors, [line for line in node.lines if "slow reader" in line])
    reply = loads(frames[0])
    got_backlog = [loads(m)["msg"] for m in reply.get("offlinemsg", [])]
    got_live = [loads(f)["msg"] for f in frames[1:]]
    print(f"\na backlog of {len(backlog)} messages ({len(frames[0]):,} bytes in the login reply, over the "
          f"8 MiB bound) read at {READ_RATE / 1e6:g} MB/s while a friend sent {len(live)} live messages at "
          f"{LIVE_RATE}/s, {during_reply} of them while the reply was being read: {len(got_backlog)} + "
          f"{len(got_live)} arrived, in order, once each")
    assert reply["errno"] == 0 and got_backlog == backlog
    assert during_reply > 0, "no live message arrived while the reply was being written"
    assert got_live == live
    assert not any("slow reader" in line for line in node.lines)


def test_a_login_reply_never_read_gives_its_backlog_back(make_server):
    """The stored messages are taken from the store for the login reply; a
    client that resets the connection before the reply is written must get
    them all again at its next login."""
    node = make_server()
    sender, _ = user(node.address)
    with Wire(node.address) as w:
        uid = w.register()
    # about 6 MB: more than the node's send buffer and the client's receive
    # buffer together can take, so most of the reply is still in the outbox
    backlog = [f"{i}:" + "x" * BIG for i in range(800)]
    sender.send_raw(b"".join(dumps({"msgid": 5, "to": uid, "msg": m, "seq": i}) + b"\n"
                             for i, m in enumerate(backlog)))
    for _ in backlog:
        assert sender.recv(30)["delivered"] == "offline"

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    s.connect(node.address)
    s.sendall(dumps({"msgid": 1, "id": uid, "password": "pw"}) + b"\n")
    s.settimeout(30)
    assert s.recv(1, socket.MSG_PEEK)  # the reply has begun to arrive; none of it is read
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # linger 0: a reset, not a FIN

    with Wire(node.address) as again:
        deadline = time.monotonic() + 30
        reply = again.request({"msgid": 1, "id": uid, "password": "pw"})
        while reply["errno"] == 2 and time.monotonic() < deadline:  # the reset not handled yet
            time.sleep(0.05)
            reply = again.request({"msgid": 1, "id": uid, "password": "pw"})
        assert reply["errno"] == 0, reply
        got = [loads(m)["msg"] for m in reply.get("offlinemsg", [])]
    assert len(got) == len(backlog) and got == backlog
