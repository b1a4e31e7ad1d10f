"""A gap in a conversation is given GAP_GRACE to fill from the live path
before the log is read (gchat/sessions.py): across nodes a gap is most often
a message still on its way through Redis (the other node committed it just
before this node's writer committed the next one), and a read of the log for
each such gap was a transaction every few messages of a group whose members
sit on two nodes (docs/benchmarks.md, "Group fan-out across nodes, profiled
again"). A gap that does not fill is still read from the log."""

from __future__ import annotations

from collections.abc import Callable

import gevent
import pytest

from gchat import convlog
from gchat import sessions as sessions_module
from gchat.sessions import Sessions
from gchat.store import Database
from tests.test_router_slices import BODY, CONV, FakePeer


def until(done: Callable[[], bool]) -> None:
    """Let the repair's greenlet run until done() (10 s at most)."""
    for _ in range(1000):
        if done():
            return
        gevent.sleep(0.01)


def one_session() -> tuple[Sessions, FakePeer, list[tuple[int, int, int]]]:
    """A session with everything of CONV up to 0, whose log reads are
    recorded and answer seq 1 of CONV."""
    sessions = Sessions(Database("sqlite://"), flush_interval=0)
    reads: list[tuple[int, int, int]] = []

    def read(key: tuple[int, int, int]) -> list[convlog.Logged]:
        reads.append(key)
        return [convlog.Logged(CONV, 1, 99, 0, b"from the log".decode())]

    sessions._pages = read  # type: ignore[assignment]
    peer = FakePeer(2, [])
    sessions.begin(2, peer, sync=False)
    sessions.open(2, {CONV: 0})
    return sessions, peer, reads


def test_a_gap_filled_by_the_live_path_within_the_grace_is_not_read_from_the_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a grace no loaded machine outlasts: the missing message comes first
    monkeypatch.setattr(sessions_module, "GAP_GRACE", 60.0)
    sessions, peer, reads = one_session()
    assert sessions.offer(2, CONV, 2, BODY + b"2")
    gevent.sleep(0.01)  # the repair has started and waits
    assert peer.got == []
    assert sessions.offer(2, CONV, 1, BODY + b"1")
    until(lambda: len(peer.got) == 2)
    assert peer.got == [(BODY + b"1", (CONV, 1)), (BODY + b"2", (CONV, 2))]
    assert reads == []
    assert sessions.offer(2, CONV, 3, BODY + b"3")  # and the live path goes on
    assert peer.got[-1] == (BODY + b"3", (CONV, 3))


def test_a_gap_that_stays_open_is_read_from_the_log_after_the_grace() -> None:
    sessions, peer, reads = one_session()
    assert sessions.offer(2, CONV, 2, BODY + b"2")
    until(lambda: len(peer.got) == 2)
    assert reads == [(CONV, 0, 2)]
    assert peer.got == [(b"from the log", (CONV, 1)), (BODY + b"2", (CONV, 2))]
    assert sessions.offer(2, CONV, 1, BODY + b"1")  # late from the bus: a duplicate
    assert len(peer.got) == 2
