"""An operator broadcast to a node's whole crowd lets the event loop run
between slices of pushes: 16,700 pushes in one go held a node's loop for
33 to 43 s on the loaded machine, long enough for the heartbeat's watchdog
to take the node for wedged and free its users (docs/benchmarks.md, 50,000
connections across three nodes)."""

from __future__ import annotations

from collections.abc import Callable

import gevent

from gchat.control import BROADCAST_SLICE, Control
from gchat.protocol import loads
from gchat.registry import Registry


class FakePeer:
    def __init__(self, uid: int, log: list[int]) -> None:
        self.user_id: int | None = uid
        self.user_name = f"u{uid}"
        self.address = ("127.0.0.1", 1)
        self.notices = False
        self.log = log
        self.got: list[bytes] = []

    def push(self, body: bytes, mark: tuple[int, int] | None = None) -> None:
        self.got.append(body)
        self.log.append(self.user_id or 0)

    def notify(self, body: bytes) -> None:
        pass

    def close(self, reason: str) -> None:
        pass

    def hold(self, seconds: float) -> None:
        pass


def crowd(n: int) -> tuple[Registry, list[FakePeer], list[int]]:
    registry, log = Registry(), []
    peers = [FakePeer(uid, log) for uid in range(1, n + 1)]
    for p in peers:
        registry.bind(p.user_id or 0, p)
    return registry, peers, log


def while_running(job: Callable[[], object], n: int, log: list[int]) -> list[int]:
    """Run job; how many pushes another greenlet saw done each time it ran."""
    seen_at: list[int] = []

    def other_work() -> None:  # a connection's reader, the heartbeat's watchdog...
        while len(log) < n:
            seen_at.append(len(log))
            gevent.sleep(0)

    other = gevent.spawn(other_work)
    gevent.joinall([gevent.spawn(job), other], raise_error=True)
    return seen_at


def test_every_user_gets_one_system_message_and_the_loop_runs_meanwhile() -> None:
    n = 4 * BROADCAST_SLICE + 10
    registry, peers, log = crowd(n)
    control = Control("n1", registry, forget=lambda ids: None)
    reached: list[int] = []
    seen_at = while_running(lambda: reached.append(control.broadcast("maintenance at noon")), n, log)
    assert reached == [n]
    assert all(len(p.got) == 1 for p in peers)
    message = loads(peers[0].got[0])
    assert message["id"] == 0 and message["system"] is True and message["msg"] == "maintenance at noon"
    # the other greenlet ran while the broadcast was half done, not only before and after
    assert any(0 < k < n for k in seen_at)


def test_a_user_who_left_during_the_broadcast_is_skipped() -> None:
    n = 2 * BROADCAST_SLICE
    registry, peers, _ = crowd(n)
    control = Control("n1", registry, forget=lambda ids: None)
    last = peers[-1]

    def leave() -> None:
        registry.unbind(last.user_id or 0, last)

    gevent.spawn(leave)  # runs at the broadcast's first turn of the loop
    assert control.broadcast("bye") == n - 1
    assert last.got == []
