"""The failures of gchat's own layers, apart from the wire.

`protocol.ProtocolError` means one thing: the peer sent something the
protocol does not allow. What goes wrong below the handlers (the database or
Redis not answering, a key that a write would break) is one of these, raised
by the store and the cluster modules, which know nothing of errnos. The
service layer maps them to the errnos of docs/protocol.md in one place
(`service.handle`), on the way out, as httpcore translates foreign exceptions
at one boundary.
"""

from __future__ import annotations


class DomainError(Exception):
    """Root of gchat's domain failures."""


class Unavailable(DomainError):
    """A backing store (the database, Redis) did not answer in time; nothing
    the failed unit of work would have written was written."""


class Conflict(DomainError):
    """A write would break a unique key: the row already exists (a racing
    registration, friendship or membership)."""
