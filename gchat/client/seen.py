"""De-duplication of a sync session's deliveries by (conv, cseq).

The server delivers at least once (a repair from its log and the live path
may both bring a message, a sync repeats what was not acknowledged): per
conversation, `high` is the number up to which the client has everything and
`ahead` what it has beyond, so a message is shown once.

The acknowledgement is the highest number the application took (`took`),
not merely what arrived: what waits in the library's queue when the
connection drops comes again at the next sync. Within one connection the
server hands a conversation's messages over in order, without holes but the
user's own messages, so nothing below it is missing (a sync reply's `more`
is the exception the application fetches through history)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from gchat.client.types import ChatMessage


@dataclass
class _Conv:
    high: int = 0
    ahead: set[int] = field(default_factory=set)
    taken: int = 0
    acked: int = 0


class Seen:
    def __init__(self) -> None:
        self._convs: dict[int, _Conv] = {}
        self._lock = threading.Lock()  # the reader thread and the application's

    def start(self, conv: int, delivered: int) -> None:
        """The server's delivered cursor: everything up to it was acknowledged."""
        with self._lock:
            c = self._convs.setdefault(conv, _Conv())
            if delivered > c.high:
                c.high = c.acked = c.taken = delivered
                c.ahead = {q for q in c.ahead if q > delivered}

    def first(self, message: ChatMessage) -> bool:
        """True the first time a message is seen (always for one without a
        place in a log: a classic server's)."""
        if message.conv is None or message.cseq is None:
            return True
        with self._lock:
            c = self._convs.setdefault(message.conv, _Conv())
            q = message.cseq
            if q <= c.high or q in c.ahead:
                return False
            if c.high == 0 and not c.ahead and c.taken == 0:
                # a conversation this session did not sync: numbers below
                # the first one seen are not owed to it (a group joined later)
                c.high = q - 1
            c.ahead.add(q)
            while c.high + 1 in c.ahead:
                c.high += 1
                c.ahead.discard(c.high)
            return True

    def took(self, message: ChatMessage) -> None:
        """The application has the message."""
        if message.conv is None or message.cseq is None:
            return
        with self._lock:
            c = self._convs.setdefault(message.conv, _Conv())
            c.taken = max(c.taken, message.cseq)

    def to_ack(self, conv: int | None = None) -> list[tuple[int, int]]:
        """(conv, highest taken) where it moved since the last acknowledgement."""
        with self._lock:
            pick: Iterable[int] = self._convs if conv is None else [conv]
            out = []
            for k in pick:
                c = self._convs.get(k)
                if c is None:
                    continue
                if c.taken > c.acked:
                    c.acked = c.taken
                    out.append((k, c.taken))
            return out
