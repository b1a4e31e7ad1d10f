"""Slow readers (issue 5, point 3): a client that stops reading is cut off
once its outbox passes the bound, without slowing anyone else, and every
message not written to it is stored offline: what it read before the cut
plus what it gets at its next login is everything sent to it, in order,
each message once."""

from __future__ import annotations

import threading

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
    node.wait_for_log("unsent message(s) offline")

    with Wire(node.address) as again:
        reply = again.login(slow_id)
        offline = [loads(m)["msg"] for m in reply.get("offlinemsg", [])]
    print(f"\n{bound}: sent {len(sent)} messages of {BIG} chars to a client that stopped reading; "
          f"it read {len(live)} from its socket after the cut and got {len(offline)} at its next login")
    print("log:", line.split(": ", 1)[1])
    print("log:", node.wait_for_log("unsent message(s) offline").split(": ", 1)[1])
    assert offline, "the cut must leave messages to store"
    assert live + offline == sent
