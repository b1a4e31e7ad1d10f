"""gchat.ratelimit with a fake clock: the burst, the refill, the cut-off.
Times are exact binary fractions, so the arithmetic is exact too."""

from __future__ import annotations

from gchat.ratelimit import FloodGuard, TokenBucket, Verdict


def test_exactly_the_burst_passes_at_once() -> None:
    bucket = TokenBucket(rate=1.0, burst=5)
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=2)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert not bucket.take(0.125)  # half a token back
    assert bucket.take(0.25)  # the whole token
    assert not bucket.take(0.25)


def test_an_idle_bucket_refills_to_the_burst_and_no_further() -> None:
    bucket = TokenBucket(rate=4.0, burst=3)
    for _ in range(3):
        bucket.take(0.0)
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]


def test_a_clock_that_steps_back_gives_no_tokens_and_takes_none() -> None:
    bucket = TokenBucket(rate=4.0, burst=2)
    bucket.take(10.0)
    assert bucket.take(5.0)  # the token left over
    assert not bucket.take(5.0)
    assert bucket.take(5.25)  # time runs on from the step back


def test_a_burst_below_one_still_allows_one_request() -> None:
    bucket = TokenBucket(rate=1.0, burst=0)
    assert bucket.take(0.0) and not bucket.take(0.0)


def test_flood_guard_allows_the_burst_then_refuses_as_many_then_cuts() -> None:
    guard = FloodGuard(rate=1.0, burst=3)
    verdicts = [guard.check(0.0) for _ in range(7)]
    assert verdicts == [Verdict.ALLOW] * 3 + [Verdict.REFUSE] * 3 + [Verdict.CUT]
    assert guard.refused == 4


def test_flood_guard_forgives_a_client_that_slows_down() -> None:
    guard = FloodGuard(rate=4.0, burst=1)
    assert guard.check(0.0) is Verdict.ALLOW
    assert guard.check(0.0) is Verdict.REFUSE
    assert guard.check(0.25) is Verdict.ALLOW  # a token came back: served again
    assert guard.refused == 1


def test_refusals_come_back_too_so_an_occasional_overshoot_is_never_cut() -> None:
    guard = FloodGuard(rate=4.0, burst=1)
    for t in (0.0, 0.25, 0.5):  # one request too many every quarter second: twice the rate
        assert [guard.check(t), guard.check(t)] == [Verdict.ALLOW, Verdict.REFUSE], t
