"""The login throttle alone (gchat/throttle.py), on a clock the test moves."""

from __future__ import annotations

from gchat import throttle
from gchat.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: float) -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    return LoginThrottle(clock=clock, **kw), clock  # type: ignore[arg-type]


def fail(t: LoginThrottle, account: int, address: str) -> float:
    """One wrong password: the wait it was told, or 0.0 when it was let through."""
    return t.admit(account, address)


def test_free_failures_then_a_wait_that_doubles() -> None:
    t, clock = make(free=3, backoff=1.0, backoff_max=8.0)
    assert [fail(t, 1, "a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert fail(t, 1, "a") == 1.0
    clock.now += 1.0
    assert fail(t, 1, "a") == 0.0  # waited: let through, and failed again
    assert fail(t, 1, "a") == 2.0
    clock.now += 2.0
    assert fail(t, 1, "a") == 0.0
    assert fail(t, 1, "a") == 4.0
    for _ in range(5):
        clock.now += 8.0
        assert fail(t, 1, "a") == 0.0
    assert fail(t, 1, "a") == 8.0  # capped at backoff_max


def test_attempts_in_flight_count_so_concurrent_guesses_are_bounded() -> None:
    t, _ = make(free=5)
    # 20 connections at once, none finished hashing: only the free ones pass
    assert sum(fail(t, 1, "a") == 0.0 for _ in range(20)) == 5


def test_the_owner_elsewhere_is_not_slowed_and_a_success_clears_its_own_failures() -> None:
    t, _ = make(free=5, free_per_account=1000)
    for _ in range(50):
        fail(t, 1, "attacker")
    assert t.admit(1, "attacker") > 0
    assert t.admit(1, "owner") == 0.0  # another address: a clean start on the account
    t.succeeded(1, "owner")
    for _ in range(4):
        assert fail(t, 1, "owner") == 0.0  # the owner's own typos later are still free
    assert t.admit(1, "attacker") > 0


def test_one_address_on_many_accounts_waits_too() -> None:
    t, _ = make(free=5, free_per_address=10)
    assert [fail(t, account, "sprayer") for account in range(10)] == [0.0] * 10
    assert fail(t, 10, "sprayer") > 0
    assert t.admit(10, "someone else") == 0.0


def test_many_addresses_on_one_account_are_spaced_never_locked_out() -> None:
    t, clock = make(free=5, free_per_account=20, backoff=1.0)
    for n in range(20):
        assert fail(t, 1, f"bot{n}") == 0.0
    wait = t.admit(1, "owner")
    assert 0 < wait <= 1.0  # mildly: one check a second for the account
    clock.now += wait
    assert t.admit(1, "owner") == 0.0


def test_failures_are_forgotten_and_records_are_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    t, clock = make(free=1, forget=60.0)
    fail(t, 1, "a")
    assert t.admit(1, "a") > 0
    clock.now += 61
    assert t.admit(1, "a") == 0.0
    monkeypatch.setattr(throttle, "MAX_RECORDS", 100)
    for n in range(1000):
        fail(t, n, f"10.0.{n // 250}.{n % 250}")
    assert max(t.sizes()) <= 100


def test_a_login_that_could_not_be_checked_counts_for_nothing() -> None:
    t, _ = make(free=2)
    for _ in range(10):
        assert t.admit(1, "a") == 0.0
        t.cancel(1, "a")  # the database did not answer
    assert t.sizes() == (0, 0, 0)


def test_off() -> None:
    t, _ = make(free=1, backoff=0.0)
    assert all(fail(t, 1, "a") == 0.0 for _ in range(100))
