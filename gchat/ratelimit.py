"""Flood control for one connection: a token bucket for requests, and a
second one for refusals.

A client may send `burst` requests at once and `rate` per second on average;
past that each request is refused (errno 10). Refusals draw on their own
bucket of the same rate and burst: a client that overshoots now and then is
only told to slow down, but one that keeps sending at more than twice the
rate empties that bucket too and is cut off.
"""

from __future__ import annotations

import enum


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self.tokens = self.burst
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token if there is one; `now` is a monotonic clock."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Verdict(enum.Enum):
    ALLOW = "allow"  # handle the request
    REFUSE = "refuse"  # answer errno 10, handle nothing
    CUT = "cut"  # flooding far past the limit: disconnect


class FloodGuard:
    def __init__(self, rate: float, burst: int) -> None:
        self.requests = TokenBucket(rate, burst)
        self.refusals = TokenBucket(rate, burst)
        self.refused = 0  # refusals so far, for the log

    def check(self, now: float) -> Verdict:
        if self.requests.take(now):
            return Verdict.ALLOW
        self.refused += 1
        if self.refusals.take(now):
            return Verdict.REFUSE
        return Verdict.CUT
