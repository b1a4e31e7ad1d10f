"""Classic clients get every message (issue 14, item 6). The original
ChatClient's reader does one recv of 1,024 bytes, parses up to the first NUL
and drops the rest of what that recv returned: two messages arriving close
together show as one. Here a reader that does exactly that, in a process of
its own as the real client is, gets messages from two senders writing to it
at once, 20 rounds; it must show all 40."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

from tests.support import ROOT, Wire, user

READER = r"""
import json, socket, sys
host, port, uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port))
s.sendall(json.dumps({"msgid": 1, "id": uid, "password": "pw"}).encode() + b"\0")
print("login", json.loads(s.recv(1024).split(b"\0", 1)[0])["errno"], flush=True)
while True:
    data = s.recv(1024)                # readTaskHandler: recv(clientfd, buffer, 1024, 0)
    if not data:
        break
    msg = json.loads(data.split(b"\0", 1)[0])  # json::parse(buffer): up to the first NUL
    if msg.get("msgid") == 5:
        print(msg["msg"], flush=True)
"""

ROUNDS = 20


class ClassicReader:
    """The original client's way of reading, in its own process."""

    def __init__(self, address: tuple[str, int], user_id: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", READER, address[0], str(address[1]), str(user_id)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().split() == ["login", "0"]
        self.seen: list[str] = []
        self._more = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._more:
                self.seen.append(line.rstrip("\n"))
                self._more.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        with self._more:
            return self._more.wait_for(lambda: len(self.seen) >= n, timeout)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def shown_of_40(address: tuple[str, int]) -> tuple[int, list[str]]:
    (a, aid), (b, bid) = user(address, b"\0"), user(address, b"\0")  # classic senders: NUL, no seq
    with Wire(address, b"\0") as w:
        cid = w.register()
    reader = ClassicReader(address, cid)
    sent: list[str] = []
    try:
        start = threading.Barrier(2)

        def send(w: Wire, uid: int, who: str, i: int) -> None:
            start.wait()
            w.send({"msgid": 5, "id": uid, "name": who, "to": cid, "msg": f"{who}{i}", "time": "2026-11-27 10:00:00"})

        for i in range(ROUNDS):
            threads = [threading.Thread(target=send, args=(w, uid, who, i))
                       for w, uid, who in ((a, aid, "a"), (b, bid, "b"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent += [f"a{i}", f"b{i}"]
            # the next round once this one is shown, or given up for lost
            reader.wait_for(len(sent), 1.0)
        reader.wait_for(len(sent), 3.0)
        return len(set(reader.seen) & set(sent)), reader.seen
    finally:
        reader.stop()
        a.close()
        b.close()


def test_a_classic_reader_sees_all_40_messages_from_two_senders(make_server: Any) -> None:
    node = make_server()
    shown, seen = shown_of_40(node.address)
    print(f"\nclassic reader, two senders at once, {ROUNDS} rounds: {shown} of {2 * ROUNDS} shown")
    assert shown == 2 * ROUNDS, seen


def test_without_pacing_such_a_reader_loses_messages(make_server: Any) -> None:
    """What the pacing is for: the same run on a node with --classic-gap 0
    (bursts written whole) loses messages. Repeated up to 5 times: on an idle
    machine the reader may happen to keep up."""
    node = make_server("--classic-gap", "0")
    results = []
    for _ in range(5):
        shown, _ = shown_of_40(node.address)
        results.append(shown)
        if shown < 2 * ROUNDS:
            break
        time.sleep(0)
    print(f"\nwithout pacing: {results} of {2 * ROUNDS} shown")
    assert min(results) < 2 * ROUNDS
