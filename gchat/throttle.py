"""Failed logins, throttled: password guessing costs the guesser time, not
the node CPU (issue 11: 300 wrong passwords were hashed at 65/s, both cores
busy, none refused).

Three counts of failures, each forgotten `forget` seconds after its last one:

- per account and address: after `free` failures, that address waits before
  its next try on that account, `backoff` seconds doubled at each further
  failure, up to `backoff_max`. This stops one address guessing one
  password, and only that address: the owner logging in from anywhere else
  is not slowed at all.
- per address, over all accounts: the same backoff after `free_per_address`
  failures (one address trying one password on many accounts). Higher than
  `free`, because many honest users may share an address (NAT).
- per account, over all addresses: past `free_per_account` failures, the
  account's passwords are checked at most once every `backoff` seconds
  (many addresses guessing one password). This one does touch the owner,
  mildly: at worst "retry in 1 s", never a lock-out.

An attempt that must wait is refused before its password is hashed: a
refusal costs a dictionary lookup. An attempt let through counts as a
failure until it is known to have succeeded, so concurrent attempts (20
connections at once) see it: no more than the free ones are ever hashed at
the same time.

Pure: a clock is passed in; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

# Records kept per table at most: the oldest are dropped past it, so a
# flood of addresses or ids cannot grow the node's memory without bound.
MAX_RECORDS = 100_000


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0  # when the last one was counted (monotonic seconds)


class _Table:
    """Records by key, oldest first (a record moves to the end when counted)."""

    def __init__(self, forget: float) -> None:
        self.forget = forget
        self.records: dict[Hashable, _Record] = {}

    def get(self, key: Hashable, now: float) -> _Record | None:
        rec = self.records.get(key)
        if rec is not None and now - rec.last > self.forget:
            del self.records[key]
            return None
        return rec

    def count(self, key: Hashable, now: float) -> None:
        rec = self.records.pop(key, None) or _Record()
        rec.failures += 1
        rec.last = now
        self.records[key] = rec
        if len(self.records) > MAX_RECORDS:
            self._prune(now)

    def uncount(self, key: Hashable) -> None:
        rec = self.records.get(key)
        if rec is not None:
            rec.failures -= 1
            if rec.failures <= 0:
                del self.records[key]

    def _prune(self, now: float) -> None:
        for key in [k for k, r in self.records.items() if now - r.last > self.forget]:
            del self.records[key]
        while len(self.records) > MAX_RECORDS:
            del self.records[next(iter(self.records))]

    def __len__(self) -> int:
        return len(self.records)


class LoginThrottle:
    def __init__(
        self,
        *,
        free: int = 5,
        free_per_address: int = 50,
        free_per_account: int = 20,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        forget: float = 900.0,
        clock: Callable[[], float],
    ) -> None:
        self.free = free
        self.free_per_address = free_per_address
        self.free_per_account = free_per_account
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.clock = clock
        self._pairs = _Table(forget)
        self._addresses = _Table(forget)
        self._accounts = _Table(forget)

    @property
    def enabled(self) -> bool:
        return self.backoff > 0

    def _wait(self, rec: _Record | None, free: int, now: float) -> float:
        if rec is None or rec.failures < free:
            return 0.0
        delay = min(self.backoff_max, self.backoff * 2.0 ** (rec.failures - free))
        return max(0.0, rec.last + delay - now)

    def admit(self, account: int, address: str) -> float:
        """0.0 when this login may check its password (it then counts as a
        failure until `succeeded`); otherwise the seconds to wait first."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        wait = max(
            self._wait(self._pairs.get((account, address), now), self.free, now),
            self._wait(self._addresses.get(address, now), self.free_per_address, now),
        )
        acct = self._accounts.get(account, now)
        if acct is not None and acct.failures >= self.free_per_account:
            # spacing, not backoff: the owner is among those it spaces
            wait = max(wait, acct.last + self.backoff - now)
        if wait > 0:
            return wait
        self._pairs.count((account, address), now)
        self._addresses.count(address, now)
        self._accounts.count(account, now)
        return 0.0

    def succeeded(self, account: int, address: str) -> None:
        """The admitted login was right: it was no failure. The earlier
        failures stay counted (a guesser may own an account of its own);
        those of this account from this address go, as the owner is here."""
        if not self.enabled:
            return
        self._pairs.records.pop((account, address), None)
        self._addresses.uncount(address)
        self._accounts.uncount(account)

    def cancel(self, account: int, address: str) -> None:
        """The admitted login could not be checked (the database did not
        answer): it was neither a failure nor a success."""
        if not self.enabled:
            return
        self._pairs.uncount((account, address))
        self._addresses.uncount(address)
        self._accounts.uncount(account)

    def sizes(self) -> tuple[int, int, int]:
        return len(self._pairs), len(self._addresses), len(self._accounts)
