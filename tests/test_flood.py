"""Flood control (issue 5, point 2): a per-connection token bucket answers
errno 10 past the limit; a client that keeps flooding far past it is cut
off, its unhandled frames logged as dropped and none of them applied; limits
on connections per address and in total, each with a clear log line."""

from __future__ import annotations

import time

from gchat.protocol import dumps
from tests.support import Wire, unique, user

# the register and login of tests.support.user come out of the same bucket
SETUP_REQUESTS = 2


def chats(to: int, seqs: range) -> bytes:
    return b"".join(dumps({"msgid": 5, "to": to, "msg": f"m{i}", "seq": i}) + b"\n" for i in seqs)


def received(w: Wire, timeout: float = 0.5) -> list[dict]:
    out = []
    while True:
        try:
            out.append(w.recv(timeout))
        except AssertionError:
            return out


def test_past_the_rate_errno_10_and_nothing_applied(make_server):
    node = make_server("--rate", "2", "--rate-burst", "10")
    sender, _ = user(node.address)
    recipient, rid = user(node.address)
    start = time.monotonic()
    sender.send_raw(chats(rid, range(15)))  # 8 within the burst (10 less the register and login), 7 past it
    acks = [sender.recv() for _ in range(15)]
    elapsed = time.monotonic() - start
    assert [a["seq"] for a in acks] == list(range(15))
    assert {a["errno"] for a in acks} == {0, 10}, acks
    assert all(a["ack"] == 5 for a in acks)
    accepted = [a["seq"] for a in acks if a["errno"] == 0]
    refused = [a for a in acks if a["errno"] == 10]
    print(f"\n15 requests at once, rate 2/s burst 10: {len(accepted)} accepted, {len(refused)} errno 10")
    # what the burst left, plus at most the tokens earned while they were handled
    assert 10 - SETUP_REQUESTS <= len(accepted) <= 10 - SETUP_REQUESTS + int(2 * elapsed), (len(accepted), elapsed)
    # the recipient sees exactly the accepted ones, in order
    got = [m["msg"] for m in received(recipient)]
    assert got == [f"m{i}" for i in accepted]
    # told to slow down, not cut off: once tokens are back, requests pass again
    ack = None
    for _ in range(40):
        ack = sender.request({"msgid": 5, "to": rid, "msg": "later", "seq": 99})
        if ack["errno"] == 0:
            break
        time.sleep(0.25)  # a token comes back every 0.5 s
    assert ack is not None and ack["errno"] == 0, ack
    assert recipient.recv()["msg"] == "later"


def test_a_flood_far_past_the_limit_is_cut_off_and_logged(make_server):
    # a token every 1,000 s: no refill during the test, so the counts are exact
    node = make_server("--rate", "0.001", "--rate-burst", "10")
    sender, sid = user(node.address)
    recipient, rid = user(node.address)
    sender.send_raw(chats(rid, range(300)))
    assert sender.closed(timeout=10), "a flooding client must be disconnected"
    acks = [sender.recv() for _ in range(len(sender.frames))]
    accepted = [a["seq"] for a in acks if a["errno"] == 0]
    refused = [a["seq"] for a in acks if a["errno"] == 10]
    line = node.wait_for_log("dropped")
    print(f"\n300 requests at once: {len(accepted)} accepted, {len(refused)} errno 10, then cut off")
    # the burst less the register and login, then as many refusals as the burst, then the cut
    assert accepted == list(range(10 - SETUP_REQUESTS))
    assert refused == list(range(10 - SETUP_REQUESTS, 20 - SETUP_REQUESTS))
    print("log:", node.wait_for_log("flooding").split(": ", 1)[1])
    print("log:", line.split(": ", 1)[1])
    assert f"user {sid}" in line and "msgid 5 x" in line
    # never half-applied: the recipient has exactly the accepted messages
    got = [m["msg"] for m in received(recipient)]
    assert got == [f"m{i}" for i in accepted]
    # the flooder's user is offline again: it can log in on a new connection
    with Wire(node.address) as again:
        again.login(sid)


def test_connections_per_address_are_limited(make_server):
    node = make_server("--max-per-ip", "2")
    a, b = Wire(node.address), Wire(node.address)
    a.register(), b.register()
    with Wire(node.address) as third:
        reply = third.recv()
        assert reply["errno"] == 10 and reply["ack"] == 0, reply
        assert third.closed()
    line = node.wait_for_log("per-address limit of 2 connections reached")
    print("\nlog:", line.split(": ", 1)[1])
    a.close()
    node.wait_for_log("below the per-address limit again")
    with Wire(node.address) as later:
        later.register()
    b.close()


def test_total_connections_wait_for_a_free_slot(make_server):
    node = make_server("--max-connections", "2")
    a, b = Wire(node.address), Wire(node.address)
    a.register(), b.register()
    with Wire(node.address) as third:
        third.send({"msgid": 3, "name": unique(), "password": "pw"})
        line = node.wait_for_log("connection limit of 2 reached")
        print("\nlog:", line.split(": ", 1)[1])
        # connected (the kernel's backlog) but not served: nothing to read yet
        third.sock.settimeout(0)  # look, do not wait (recv_frame sets its own timeout again)
        try:
            early: bytes | None = third.sock.recv(1)
        except BlockingIOError:
            early = None
        assert early is None, "served past the connection limit"
        a.close()
        assert third.recv()["errno"] == 0  # served once a slot is free, nothing lost
    b.close()


def test_refused_connections_do_not_leak_slots(make_server):
    node = make_server("--max-per-ip", "1")
    held = Wire(node.address)
    held.register()
    for _ in range(20):
        with Wire(node.address) as extra:
            assert extra.recv()["errno"] == 10
            assert extra.closed()
    held.close()
    line = node.wait_for_log("below the per-address limit again")
    print("\nlog:", line.split(": ", 1)[1])
    assert "20 connection(s) were refused" in line
    with Wire(node.address) as later:
        later.register()
