"""Audit lines: who registered, who logged in (or failed to, and why), who
logged out, and what an administrator did. INFO on the `gchat.audit` logger;
with `--log-format json` each field is a key of the line's object
(gchat/logs.py).

Never a password, a hash or a token, and never a chat message: callers pass
ids, names, addresses and reasons only, and `event` refuses the field names
that would carry a secret.

A storm of failed logins (a password guesser, a client retrying in a loop) is
summarised: `FailedLogins` logs the first few of each minute one by one and
the rest as one line at the end of the minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent

log = logging.getLogger("gchat.audit")

# fields that must never reach a log line
SECRET_FIELDS = frozenset({"password", "token", "hash", "password_hash", "token_hash"})

# failed logins logged one by one per window; the rest go into its summary
FAILED_LOGINS_LOGGED = 10
FAILED_LOGINS_WINDOW = 60.0


def _text(value: object) -> str:
    s = str(value)
    # a name may hold spaces or quotes: quoted, so a line splits back into fields
    return repr(s) if not s or any(c in s for c in " \"'=") or not s.isprintable() else s


def event(action: str, **fields: Any) -> None:
    """One audit line: `action key=value ...`. In JSON, `event` is the
    action and each field a key."""
    secret = SECRET_FIELDS.intersection(fields)
    if secret:
        raise ValueError(f"audit: {sorted(secret)} must never be logged")
    text = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
    log.info("%s %s", action, text, extra={"audit": {"event": action, **fields}})


def admin_action(action: str, *, operator: str = "", **fields: Any) -> None:
    """What an administrator did (gchat-admin, or a node acting on its
    request): `admin.ACTION`, with who asked when known (the OS user of
    gchat-admin) and what it was done to (user ids, counts; never a new
    password or the text of a broadcast)."""
    if operator:
        fields = {"operator": operator, **fields}
    event("admin." + action, **fields)


class FailedLogins:
    """Failed logins, summarised past FAILED_LOGINS_LOGGED per window: at
    most that many lines and one summary per window, however many fail."""

    def __init__(self, logged: int = FAILED_LOGINS_LOGGED, window: float = FAILED_LOGINS_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logged = logged
        self.window = window
        self.clock = clock
        self._start = clock()
        self._shown = 0
        self._held: Counter[str] = Counter()  # reason -> failures not logged one by one
        self._addresses: set[str] = set()
        self._timer: gevent.Greenlet[[], None] | None = None

    def failed(self, reason: str, ip: str, **fields: Any) -> None:
        now = self.clock()
        if now - self._start >= self.window:
            self.flush()
        if self._shown < self.logged:
            self._shown += 1
            event("login.failed", reason=reason, ip=ip, **fields)
            return
        self._held[reason] += 1
        self._addresses.add(ip)
        if self._timer is None:
            # the summary comes at the end of the window even if the storm stops
            self._timer = gevent.spawn_later(max(0.0, self._start + self.window - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Log the summary of the window, if anything was held, and start a new one."""
        if self._held:
            total = sum(self._held.values())
            reasons = ", ".join(f"{r} x{n}" for r, n in self._held.most_common())
            log.info(
                "login.failed.summary %d more failed login(s) in %g s, not logged one by one: %s; from %d address(es)",
                total, self.window, reasons, len(self._addresses),
                extra={"audit": {"event": "login.failed.summary", "count": total, "window": self.window,
                                 "reasons": dict(self._held), "addresses": len(self._addresses)}},
            )
        if self._timer is not None:
            self._timer.kill(block=False)
            self._timer = None
        self._start = self.clock()
        self._shown = 0
        self._held.clear()
        self._addresses.clear()
