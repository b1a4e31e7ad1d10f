"""gchat.batch.Batcher, and the batched store reads a login storm relies on
(they must answer exactly what the one-user queries answer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest

from gchat import schema, store
from gchat.batch import Batcher
from gchat.errors import Unavailable


def test_callers_arriving_during_a_batch_share_the_next_one() -> None:
    seen: list[list[int]] = []

    def run(keys: list[int]) -> list[int]:
        seen.append(keys)
        gevent.sleep(0.01)  # the database
        return [k * 10 for k in keys]

    b: Batcher[int, int] = Batcher(run)
    jobs = [gevent.spawn(b, k) for k in range(1, 8)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value for j in jobs] == [10, 20, 30, 40, 50, 60, 70]
    assert seen == [[1, 2, 3, 4, 5, 6, 7]]  # all arrived before the first batch ran
    assert b(9) == 90  # one caller alone: one batch of one


@pytest.mark.parametrize("linger", [0.0, 0.5])
def test_a_busy_stream_lingers_to_share_a_batch_and_a_lone_call_does_not_wait(linger: float) -> None:
    """The log's writer (Settings.log_linger): the first batch after a quiet
    spell runs at once; a batch that follows another at once waits `linger`
    so that callers arriving meanwhile share it (one commit for all)."""
    sizes: list[int] = []
    late: list[gevent.Greenlet] = []  # type: ignore[type-arg]

    def run(keys: list[int]) -> list[int]:
        sizes.append(len(keys))
        gevent.sleep(0.01)  # the batch's round trip
        if keys == [1]:  # a caller that arrives just as the first batch is done
            late.append(gevent.spawn(b, 5))
        return keys

    b: Batcher[int, int] = Batcher(run, linger=linger)
    started = time.monotonic()
    assert b(0) == 0 and sizes == [1]
    assert time.monotonic() - started < 0.4  # alone: its batch at once, not after the linger
    sizes.clear()
    gevent.sleep(linger)  # a quiet spell
    first = gevent.spawn(b, 1)
    gevent.sleep(0.001)  # its batch runs; three more callers meanwhile
    others = [gevent.spawn(b, k) for k in (2, 3, 4)]
    gevent.joinall([first, *others], raise_error=True)
    gevent.joinall(late, raise_error=True)
    assert [g.value for g in (first, *others, *late)] == [1, 2, 3, 4, 5]
    if linger:
        assert sizes == [1, 4]  # the late one caught the batch of those before it
    else:
        assert sizes == [1, 3, 1]  # each batch took what had arrived


def _round_trips(sizes: list[int]) -> Callable[[list[int]], list[int]]:
    """A batch's work that takes a round trip (10 ms) and records its size."""
    def run(keys: list[int]) -> list[int]:
        sizes.append(len(keys))
        gevent.sleep(0.01)
        return keys

    return run


def test_a_call_soon_after_a_batch_waits_what_is_left_of_the_linger_when_more_are_coming() -> None:
    """A stream a little slower than the batch's round trip (each call finds
    the last batch done and its worker gone) still shares batches: a call
    less than `linger` after the last batch was taken waits what is left of
    it when the stream's rate says more calls come meanwhile. A slow stream
    (less than a call in what is left) and a call after a quiet spell go at
    once."""
    sizes: list[int] = []
    run = _round_trips(sizes)
    b: Batcher[int, int] = Batcher(run, linger=1.0)
    assert b(0) == 0  # the first: at once
    stream = []
    for k in range(1, 7):  # ten a second, each after the last batch is done
        gevent.sleep(0.1)
        stream.append(gevent.spawn(b, k))
    gevent.joinall(stream, raise_error=True)
    assert [g.value for g in stream] == [1, 2, 3, 4, 5, 6]
    # the second call's batch, 0.1 s after the first, set the rate; the third
    # then waited for the rest of the linger, and the three after it joined
    # (without waiting, a batch each: [1, 1, 1, 1, 1, 1, 1])
    assert sizes == [1, 1, 5]
    gevent.sleep(1.0)  # a quiet spell
    sizes.clear()
    started = time.monotonic()
    assert b(7) == 7 and sizes == [1]
    assert time.monotonic() - started < 0.25  # at once, not after a linger

    slow: Batcher[int, int] = Batcher(run, linger=1.0)
    sizes.clear()
    for k in range(3):  # one every 0.7 s: less than one call in the 0.3 s left of a linger
        started = time.monotonic()
        assert slow(k) == k
        assert time.monotonic() - started < 0.25  # at once
        gevent.sleep(0.7)
    assert sizes == [1, 1, 1]


def test_a_stream_of_pairs_is_not_held_for_calls_that_do_not_come() -> None:
    """Calls in pairs (a node's messages when two nodes' members take turns
    in a group): the second of a pair comes soon after the first's batch,
    and the next pair only after a linger. The stream's rate says about one
    call in what is left of the linger: less than PACE_MIN, so the second
    goes at once instead of waiting out the linger for nothing (it did, for
    a batch of one each time: a group message's p50 across two nodes was
    8.3 ms against 1.8 locally)."""
    sizes: list[int] = []
    run = _round_trips(sizes)
    b: Batcher[int, int] = Batcher(run, linger=0.5)
    waits = []
    for pair in range(4):
        for k in (2 * pair, 2 * pair + 1):
            started = time.monotonic()
            assert b(k) == k
            waits.append(time.monotonic() - started)
            gevent.sleep(0.15 if k % 2 == 0 else 0.55)  # the pair 0.15 s apart, then a linger and more
    assert sizes == [1] * 8
    assert max(waits) < 0.15, waits  # none held for the rest of the linger (0.35 s)


def test_a_lingering_batch_goes_once_gather_calls_wait_and_a_slow_stream_waits_the_linger() -> None:
    """Settings.log_gather: a long linger costs a fast stream no latency (its
    batch goes as soon as `gather` calls wait) and gives a slow one bigger
    batches (it waits the whole linger); nothing is lost or reordered."""
    sizes: list[int] = []
    run = _round_trips(sizes)
    b: Batcher[int, int] = Batcher(run, linger=30.0, gather=3)
    first = gevent.spawn(b, 0)
    gevent.sleep(0.001)  # its batch runs; a burst arrives meanwhile
    burst = [gevent.spawn(b, k) for k in range(1, 6)]
    started = time.monotonic()
    gevent.joinall([first, *burst], raise_error=True)
    assert time.monotonic() - started < 15  # far from the linger of 30 s: gathered at once
    assert [g.value for g in (first, *burst)] == [0, 1, 2, 3, 4, 5]
    assert sizes == [1, 5]  # everything that had arrived, not only `gather` of them

    sizes.clear()
    slow: Batcher[int, int] = Batcher(run, linger=0.2, gather=3)
    lead = gevent.spawn(slow, 10)
    gevent.sleep(0.001)
    one = gevent.spawn(slow, 11)  # alone behind it: below gather, so it lingers
    gevent.sleep(0.05)
    two = gevent.spawn(slow, 12)  # arrives during that linger and shares the batch
    gevent.joinall([lead, one, two], raise_error=True)
    assert [g.value for g in (lead, one, two)] == [10, 11, 12]
    assert sizes == [1, 2]


def test_an_error_reaches_every_caller_of_its_batch_only() -> None:
    def run(keys: list[int]) -> list[int]:
        gevent.sleep(0)
        if 2 in keys:
            raise Unavailable("down")
        return keys

    b: Batcher[int, int] = Batcher(run, max_batch=2)
    jobs = [gevent.spawn(b, k) for k in (1, 2, 3, 4)]
    gevent.joinall(jobs)
    assert [type(j.exception) for j in jobs] == [Unavailable, Unavailable, type(None), type(None)]
    assert [j.value for j in jobs[2:]] == [3, 4]


def test_a_storm_is_cut_into_batches_of_the_bound_in_arrival_order() -> None:
    seen: list[list[int]] = []

    def run(keys: list[int]) -> list[int]:
        seen.append(keys)
        gevent.sleep(0)
        return keys

    b: Batcher[int, int] = Batcher(run, max_batch=2)
    jobs = [gevent.spawn(b, k) for k in range(5)]
    gevent.joinall(jobs, raise_error=True)
    assert seen == [[0, 1], [2, 3], [4]] and [j.value for j in jobs] == [0, 1, 2, 3, 4]
    assert Batcher(run).__dict__["_max"] == 500  # the default bound of one IN (...) list


def test_the_batcher_works_on_after_an_error_and_after_an_exit() -> None:
    def run(keys: list[int]) -> list[int]:
        if keys == [1]:
            raise Unavailable("down")
        if keys == [2]:
            raise gevent.GreenletExit  # the worker is being killed: its callers hear of it too
        return keys

    b: Batcher[int, int] = Batcher(run)
    with pytest.raises(Unavailable):
        b(1)
    with pytest.raises(gevent.GreenletExit):
        b(2)
    assert b(3) == 3  # a new worker serves the next caller


def test_a_sink_of_the_callers_own_hears_each_outcome_as_its_batch_ends() -> None:
    """submit_to (the log's writer: a chat's Pending): the worker sets each
    key's value, or its batch's exception, on the caller's sink in key
    order as soon as the batch is done, before the event loop runs anything
    else (no AsyncResult and loop callback per key)."""
    heard: list[object] = []

    class Sink:
        def __init__(self, key: int) -> None:
            self.key = key

        def set(self, value: int) -> None:
            heard.append((self.key, value))

        def set_exception(self, exception: BaseException) -> None:
            heard.append((self.key, type(exception).__name__))

    def run(keys: list[int]) -> list[int]:
        gevent.spawn(heard.append, "the loop ran")  # runs only once the worker yields
        if 13 in keys:
            raise Unavailable("down")
        return [k * 10 for k in keys]

    b: Batcher[int, int] = Batcher(run, max_batch=2)
    for k in (1, 2, 13, 4):
        b.submit_to(k, Sink(k))
    gevent.sleep(0.05)
    # both batches ran without a switch: every outcome came before the loop ran the greenlets they spawned
    assert heard == [(1, 10), (2, 20), (13, "Unavailable"), (4, "Unavailable"), "the loop ran", "the loop ran"]


@pytest.fixture
def db(tmp_path: Path) -> store.Database:
    d = store.Database(f"sqlite:///{tmp_path / 'b.db'}")
    schema.prepare(d)
    return d


def test_batched_login_reads_equal_the_one_user_reads(db: store.Database) -> None:
    with db.transaction() as s:
        a, b, c, d = (store.create_user(s, n, "h") for n in ("a", "b", "c", "d"))
        store.add_friend(s, a, b)
        store.add_friend(s, a, c)
        store.add_friend(s, c, a)
        g1 = store.create_group(s, "g1", "", a)
        g2 = store.create_group(s, "g2", "x", c)
        store.add_member(s, g1, c)
        store.add_member(s, g2, a)
        store.store_offline(s, [(a, "m1"), (c, "n1"), (a, "m2"), (a, "m3")])
    ids = [a, b, c, d]
    with db.transaction() as s:
        single = {u: (store.friends_of(s, u), [(g.id, m) for g, m in store.groups_of(s, u)]) for u in ids}
    with db.transaction() as s:
        friends = store.friends_of_many(s, ids)
        groups = store.groups_of_many(s, ids)
        offline = store.take_offline_many(s, ids)
    for u in ids:
        assert friends[u] == single[u][0]
        assert [(g.id, m) for g, m in groups[u]] == single[u][1]
    assert offline == {a: ["m1", "m2", "m3"], b: [], c: ["n1"], d: []}
    with db.transaction() as s:  # taken once
        assert store.take_offline_many(s, ids) == {a: [], b: [], c: [], d: []}
        assert set(store.get_users(s, [a, 999])) == {a}
