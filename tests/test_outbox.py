"""gchat.outbox.Outbox without a socket: a fake transport stands for the
kernel's send buffer (it takes bytes until it is full, and more once the
test "reads"), as h11 tests its receive buffer with bytes fed by hand."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import pytest
from gevent.event import Event

from gchat.errors import Unavailable
from gchat.outbox import Outbox


class Sink:
    """The kernel's send buffer for one client: takes up to `room` bytes;
    `drain` stands for the client reading, `shutdown` for a cut."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.written = bytearray()
        self.sends = 0
        self.shut = False
        self._space = Event()

    def send(self, data: bytes | memoryview) -> int:
        while self.room == 0 and not self.shut:
            self._space.clear()
            self._space.wait()
        return self.send_nowait(bytes(data))

    def send_nowait(self, data: bytes) -> int:
        if self.shut:
            raise BrokenPipeError("shut down")
        n = min(len(data), self.room)
        self.room -= n
        self.written += data[:n]
        self.sends += 1
        return n

    def drain(self, n: int) -> None:
        self.room += n
        self._space.set()

    def shutdown(self) -> None:
        self.shut = True
        self._space.set()

    def shutdown_read(self) -> None:
        pass

    def receive(self) -> None:
        return None

    buffered = 0

    def frame(self, body: bytes) -> bytes:
        return body + b"\n"

    def close(self, reason: str = "") -> None:
        pass

    def messages(self) -> list[bytes]:
        return bytes(self.written).split(b"\n")[:-1]


class Harness:
    def __init__(self, room: int = 1 << 30, max_messages: int = 100, max_bytes: int = 1000,
                 store: Callable[[list[tuple[int, bytes]]], None] | None = None) -> None:
        self.sink = Sink(room)
        self.stored: list[tuple[int, bytes]] = []
        self._store = store or self.stored.extend
        self.cuts = 0
        self.errors: list[OSError] = []
        self.outbox = Outbox(self.sink, self, max_messages, max_bytes)

    # the outbox's owner
    def who(self) -> str:
        return "test"

    def cut_off(self) -> None:
        self.cuts += 1

    def write_failed(self, e: OSError) -> None:
        self.errors.append(e)

    def store_offline(self, items: list[tuple[int, bytes]]) -> None:
        self._store(items)


def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the writer greenlet run until the condition holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        gevent.sleep(0.001)


def test_a_reply_the_kernel_takes_whole_is_written_at_once_without_a_writer() -> None:
    h = Harness()
    h.outbox.reply(b'{"msgid":2}')
    assert h.sink.messages() == [b'{"msgid":2}']  # no switch happened: written by the caller
    assert not h.outbox.writing and len(h.outbox) == 0


def test_a_lone_push_goes_at_once_and_a_burst_in_one_send_by_the_writer() -> None:
    h = Harness()
    for i in range(50):  # in one iteration of the event loop
        h.outbox.push(b"m%d" % i, 7)
    # the first written by the caller, the others queued for the writer
    assert h.outbox.writing and h.sink.messages() == [b"m0"]
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"m%d" % i for i in range(50)]
    assert h.sink.sends == 2  # the lone one, then the burst in one send
    gevent.sleep(0.01)  # a later iteration: alone again, at once
    h.outbox.push(b"later", 7)
    assert h.sink.messages()[-1] == b"later" and h.sink.sends == 3


def test_a_lone_push_the_kernel_takes_in_part_is_finished_by_a_writer_and_kept_queued_until_then() -> None:
    # a lone push is written without entering the queue (Outbox._send_now):
    # in part, it is queued as the head, its sent bytes counted, with its mark
    h = Harness(room=3)
    h.outbox.push(b"abcdef", 7, (4, 9))
    assert h.outbox.writing and len(h.outbox) == 1 and h.outbox.queued_bytes == 6
    assert h.outbox.unsent() == {4: 9}  # the cursor stays below it until its last byte is out
    gevent.sleep(0.01)  # a later iteration: the next push would go at once if nothing were queued
    h.outbox.push(b"next", 7, (4, 10))  # behind it, in order
    h.sink.drain(100)
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"abcdef", b"next"] and h.outbox.queued_bytes == 0 and h.outbox.unsent() == {}


def test_a_lone_push_after_the_last_flush_is_stored_not_written() -> None:
    h = Harness()
    h.outbox.finish(timeout=0.01)
    gevent.sleep(0)  # a later iteration: the push would go at once if it could
    h.outbox.push(b"late", 7)
    assert h.sink.messages() == [] and len(h.outbox) == 1  # queued, as any push after the flush: never written


class StampedSink(Sink):
    """A sink that notes when each send happened (the kernel's clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[float, bytes]] = []

    def send_nowait(self, data: bytes) -> int:
        self.stamps.append((time.monotonic(), bytes(data)))
        return super().send_nowait(data)


def test_a_paced_outbox_writes_each_frame_in_its_own_send_apart_in_time() -> None:
    """A classic client (docs/protocol.md part A only) reads one frame per
    recv: a burst for it goes out one frame per send, `pace` apart."""
    h = Harness()
    h.sink = sink = StampedSink()
    h.outbox = Outbox(sink, h, 100, 1000)
    h.outbox.pace = 0.02
    h.outbox.reply(b"login reply")
    for i in range(5):
        h.outbox.push(b"m%d" % i, 7)
    until(lambda: len(h.outbox) == 0)
    assert [data for _, data in sink.stamps] == [b"login reply\n"] + [b"m%d\n" % i for i in range(5)]
    gaps = [b[0] - a[0] for a, b in zip(sink.stamps, sink.stamps[1:], strict=False)]
    assert min(gaps) >= 0.02, gaps  # never closer than the pace (a lower bound: no clock race)


def test_a_paced_outbox_falling_behind_writes_bursts_again() -> None:
    from gchat.outbox import PACED_MAX

    h = Harness(max_messages=1000, max_bytes=1 << 20)
    h.outbox.pace = 60.0  # a gap no test waits for
    for i in range(PACED_MAX + 10):
        h.outbox.push(b"m%d" % i, 7)
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"m%d" % i for i in range(PACED_MAX + 10)]
    assert h.cuts == 0


def test_a_reply_close_behind_a_paced_frame_waits_for_the_writer() -> None:
    h = Harness()
    h.outbox.pace = 60.0  # as if the last frame had just gone out
    h.outbox.push(b"m0", 7)
    until(lambda: len(h.outbox) == 0)
    h.outbox.reply(b"reply")
    assert h.sink.messages() == [b"m0"] and len(h.outbox) == 1  # not sent by the caller
    h.outbox.pace = 0.0  # a client that turned out to speak part B: written at once from now on
    h.outbox.push(b"m1", 7)
    h.outbox.finish(timeout=5)
    assert h.sink.messages() == [b"m0", b"reply", b"m1"] and h.stored == []


def test_pushes_during_a_request_follow_its_reply() -> None:
    h = Harness()
    h.outbox.hold()
    h.outbox.push(b"pushed", 7)
    h.outbox.reply(b"reply")
    h.outbox.release()
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"reply", b"pushed"]


def test_a_reply_the_kernel_takes_in_part_is_finished_by_a_writer() -> None:
    h = Harness(room=3)
    h.outbox.reply(b"abcdef")
    assert h.outbox.writing and len(h.outbox) == 1  # still queued: not all of it is out
    h.sink.drain(100)
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"abcdef"]


def test_over_the_message_bound_the_reader_is_cut_and_everything_unwritten_is_stored_in_order() -> None:
    h = Harness(room=0, max_messages=5, max_bytes=1 << 20)
    for i in range(8):
        h.outbox.push(b"m%d" % i, 7)
    assert h.cuts == 1 and h.sink.shut
    h.outbox.finish(timeout=1)
    assert h.sink.messages() == []
    assert h.stored == [(7, b"m%d" % i) for i in range(8)]


def test_over_the_byte_bound_of_deliveries_the_reader_is_cut() -> None:
    h = Harness(room=0, max_messages=1000, max_bytes=100)
    for _ in range(3):
        h.outbox.push(b"x" * 40, 7)
    assert h.cuts == 1 and h.outbox.queued_bytes == 120


def test_a_lone_message_over_the_byte_bound_still_goes_out() -> None:
    h = Harness(room=0, max_bytes=100)
    h.outbox.push(b"x" * 500, 7)
    assert h.cuts == 0
    h.sink.drain(1000)
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"x" * 500]


def test_a_reply_over_the_byte_bound_does_not_cut_off_the_deliveries_behind_it() -> None:
    """Issue 11, defect 1: a login reply carrying a backlog larger than the
    byte bound, written slowly, while live messages arrive behind it."""
    h = Harness(room=1000, max_bytes=1000)
    backlog = b"B" * 5000
    h.outbox.reply(backlog, 7, [b"stored1", b"stored2"])
    for i in range(10):
        h.outbox.push(b"live%d" % i, 7)
        h.sink.drain(600)  # the client reads on, slowly
        gevent.sleep(0)
    assert h.cuts == 0
    h.sink.drain(1 << 20)
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [backlog] + [b"live%d" % i for i in range(10)]


def test_an_unwritten_reply_stores_what_it_hands_over_and_nothing_else() -> None:
    h = Harness(room=0)
    h.outbox.reply(b'{"msgid":4}')  # a reply: nothing to keep
    h.outbox.reply(b'{"offlinemsg":[...]}', 7, [b"s1", b"s2"])
    h.outbox.push(b"live", 7)
    h.outbox.finish(timeout=0.05)  # the client never reads
    assert h.stored == [(7, b"s1"), (7, b"s2"), (7, b"live")]


def test_a_message_half_written_when_the_write_fails_is_stored_whole() -> None:
    h = Harness(room=4)
    h.outbox.push(b"first", 7)
    h.outbox.push(b"second", 7)
    until(lambda: h.sink.written == b"firs")
    h.sink.shutdown()  # the peer is gone
    until(lambda: not h.outbox.writing)
    assert len(h.errors) == 1
    h.outbox.finish(timeout=1)
    assert h.stored == [(7, b"first"), (7, b"second")]


def test_pushes_while_finishing_are_stored_after_the_rest() -> None:
    batches: list[list[tuple[int, bytes]]] = []
    h: Harness

    def store(items: list[tuple[int, bytes]]) -> None:
        batches.append(items)
        if len(batches) == 1:
            h.outbox.push(b"late", 7)  # delivered while the first batch is being stored

    h = Harness(room=0, store=store)
    h.outbox.push(b"early", 7)
    h.outbox.finish(timeout=0.01)
    assert batches == [[(7, b"early")], [(7, b"late")]]


def test_a_store_outage_loses_the_batch_with_an_error_logged_and_raises_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    def store(items: list[tuple[int, bytes]]) -> None:
        raise Unavailable("database down")

    h = Harness(room=0, store=store)
    h.outbox.push(b"m", 7)
    h.outbox.finish(timeout=0.01)
    assert "lost 1 undelivered message(s)" in caplog.text


def test_an_idle_writer_retires_after_a_whole_sweep_and_comes_back_on_demand() -> None:
    h = Harness()
    h.outbox.push(b"a", 7)  # at once
    h.outbox.push(b"a2", 7)  # the same iteration: the writer's
    until(lambda: len(h.outbox) == 0)
    assert h.outbox.writing  # parked
    h.outbox.retire_if_idle()  # it wrote since the last sweep: kept
    gevent.sleep(0)
    assert h.outbox.writing
    h.outbox.retire_if_idle()  # idle for a whole sweep
    until(lambda: not h.outbox.writing)
    h.outbox.push(b"b", 7)
    h.outbox.push(b"c", 7)
    assert h.outbox.writing
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"a", b"a2", b"b", b"c"]


def test_closing_writes_what_is_queued_then_the_writer_ends() -> None:
    h = Harness(room=2)
    h.outbox.push(b"bye", 7)
    gevent.spawn_later(0.01, h.sink.drain, 100)
    h.outbox.finish(timeout=5)
    assert h.sink.messages() == [b"bye"] and h.stored == [] and not h.outbox.writing


def test_after_the_request_pushes_are_written_again_at_once() -> None:
    h = Harness()
    h.outbox.hold()
    h.outbox.reply(b"reply")
    h.outbox.release()
    h.outbox.push(b"later", 7)  # not held for the client's next request
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"reply", b"later"]


def test_pushes_held_during_a_request_are_stored_for_their_user_if_never_written() -> None:
    h = Harness(room=0)
    h.outbox.hold()
    h.outbox.push(b"pushed", 7)
    h.outbox.reply(b"reply")
    h.outbox.release()
    assert h.outbox.queued_bytes == len(b"pushed")  # the bound counts deliveries, not replies
    h.outbox.finish(timeout=0.01)
    assert h.stored == [(7, b"pushed")]


def test_finishing_with_nothing_queued_does_not_wait_for_the_flush_deadline() -> None:
    """Else a user stays online (errno 2 at its next login) for the whole
    flush timeout after every disconnect."""
    h = Harness()
    h.outbox.push(b"a", 7)
    h.outbox.push(b"a2", 7)  # the writer's
    until(lambda: len(h.outbox) == 0)
    assert h.outbox.writing  # parked
    with gevent.Timeout(2, AssertionError("finish waited out its deadline")):
        h.outbox.finish(timeout=60)
    assert not h.outbox.writing and h.stored == []


def test_the_bounds_are_exact() -> None:
    """The settings say how much a slow reader may have queued: that much
    is kept, one more is the cut."""
    h = Harness(room=0, max_messages=3, max_bytes=1 << 20)
    for i in range(3):
        h.outbox.push(b"m%d" % i, 7)
    assert h.cuts == 0
    h.outbox.push(b"m3", 7)
    assert h.cuts == 1
    h = Harness(room=0, max_messages=100, max_bytes=10)
    h.outbox.push(b"x" * 6, 7)
    h.outbox.push(b"y" * 4, 7)  # exactly the byte bound
    assert h.cuts == 0
    h.outbox.push(b"z", 7)
    assert h.cuts == 1
    h = Harness(room=0, max_messages=100, max_bytes=10)
    h.outbox.push(b"x" * 8, 7)
    h.outbox.push(b"y" * 8, 7)  # only a lone message may be over the bound
    assert h.cuts == 1


def test_written_messages_leave_the_byte_count() -> None:
    """Else a client that reads all the time is cut off once enough has
    passed through its outbox."""
    h = Harness(room=0, max_bytes=1000)
    for i in range(5):
        h.outbox.push(b"m%d" % i + b"." * 98, 7)  # 100 bytes each
    assert h.outbox.queued_bytes == 500
    h.sink.drain(2 * 101 + 50)  # two whole messages (and terminators) and half of the third
    until(lambda: len(h.outbox) == 3)
    assert h.outbox.queued_bytes == 300
    h.sink.drain(1 << 20)
    until(lambda: len(h.outbox) == 0)
    assert h.outbox.queued_bytes == 0
    for _ in range(20):  # ten times the bound passes through without a cut
        h.outbox.push(b"n" * 500, 7)
        until(lambda: len(h.outbox) == 0)
    assert h.cuts == 0


def test_a_burst_larger_than_one_send_chunk_is_all_written() -> None:
    h = Harness(max_messages=1000, max_bytes=1 << 24)
    burst = [b"%d:" % i + b"x" * 8000 for i in range(40)]  # about 320 KB, over WRITE_CHUNK
    for m in burst:
        h.outbox.push(m, 7)
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == burst and h.sink.sends >= 2


def test_log_entries_never_written_are_not_stored_but_hold_the_delivered_cursor_back() -> None:
    """A delivery from the conversation log (its mark: conversation, seq) is
    kept by the log: unwritten, it is not stored offline, and unsent() keeps
    the user's delivered cursor below it; a read receipt is neither."""
    h = Harness(room=0)  # the kernel takes nothing
    h.outbox.push(b"legacy", 7)
    h.outbox.push(b"c3s5", 7, (3, 5))
    h.outbox.push(b"c3s6", 7, (3, 6))
    h.outbox.hold()
    h.outbox.push(b"c4s2", 7, (4, 2))  # held behind a reply
    assert h.outbox.unsent() == {3: 5, 4: 2}
    h.outbox.release()
    h.outbox.push(b"receipt", 7, (0, 0))
    h.outbox.finish(timeout=0.1)
    assert h.stored == [(7, b"legacy")]
    assert h.outbox.unsent() == {3: 5, 4: 2, 0: 0}  # conversation 0 is no one's


def test_a_log_out_withdraws_held_log_entries_and_they_still_hold_the_cursor_back() -> None:
    h = Harness()
    h.outbox.hold()
    h.outbox.push(b"c3s7", 7, (3, 7))
    h.outbox.push(b"plain", 7)
    assert h.outbox.settle_log_entries(timeout=1) == {3: 7}  # the cursor stays below it
    h.outbox.release()
    until(lambda: len(h.outbox) == 0)
    assert h.sink.messages() == [b"plain"]  # the log entry comes at the next login instead
    assert h.outbox.unsent() == {}
