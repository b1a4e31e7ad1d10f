"""A message to a large group is one offer (and one push) per member held
by the node, some 16,700 each for a group of 50,000 over three nodes: the
router lets the event loop run between slices of them, as an operator
broadcast does (tests/test_control_broadcast.py), so that the node's readers
and its heartbeat's watchdog are not held up for the whole loop."""

from __future__ import annotations

from gchat.cluster.bus import LocalBus
from gchat.registry import Registry
from gchat.router import OFFER_SLICE, Router
from gchat.sessions import Sessions
from gchat.store import Database
from gchat.writer import Written
from tests.support import HandedOver
from tests.test_control_broadcast import while_running

CONV = 7
BODY = b'{"msgid":9,"id":1,"name":"a","groupid":3,"msg":"hi","conv":7,"cseq":1}'


class FakePeer(HandedOver):
    def __init__(self, uid: int, log: list[int]) -> None:
        self.user_id: int | None = uid
        self.notices = False
        self.log = log
        self.got: list[tuple[bytes, tuple[int, int] | None]] = []

    def push(self, body: bytes, mark: tuple[int, int] | None = None) -> None:
        self.got.append((body, mark))
        self.log.append(self.user_id or 0)


def members(n: int) -> tuple[Router, list[FakePeer], list[int]]:
    """n users with a session here, each with everything of CONV up to 0."""
    sessions = Sessions(Database("sqlite://"), flush_interval=0)
    router = Router(Registry(), LocalBus(), sessions.db, sessions)
    log: list[int] = []
    peers = [FakePeer(uid, log) for uid in range(2, n + 2)]
    for p in peers:
        sessions.begin(p.user_id or 0, p, sync=False)
        sessions.open(p.user_id or 0, {CONV: 0})
    return router, peers, log


def test_a_delivery_from_the_bus_reaches_every_member_once_and_the_loop_runs_meanwhile() -> None:
    n = 4 * OFFER_SLICE + 10
    router, peers, log = members(n)
    seen_at = while_running(lambda: router.on_bus_delivery([p.user_id or 0 for p in peers], b"7,1 " + BODY), n, log)
    assert all(p.got == [(BODY, (CONV, 1))] for p in peers)
    assert any(0 < k < n for k in seen_at)


def test_a_committed_message_reaches_every_local_member_once_and_the_loop_runs_meanwhile() -> None:
    n = 4 * OFFER_SLICE + 10
    router, peers, log = members(n)
    message = Written(CONV, 1, 0, 1, BODY, tuple(p.user_id or 0 for p in peers))
    reached: list[list[int]] = []
    seen_at = while_running(lambda: reached.append(router.deliver_logged([message])), n, log)
    assert reached == [[n]]
    assert all(p.got == [(BODY, (CONV, 1))] for p in peers)
    assert any(0 < k < n for k in seen_at)
