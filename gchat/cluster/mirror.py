"""`user.state`, the SQL mirror of presence, written from this one place.

The presence store is the truth (gchat/cluster/presence.py); the column is
for operators (`gchat-admin users`), so a write that fails is logged, never
a reason to refuse a login. Single users are coalesced with the other
logins and log-outs in flight (gchat/batch.py): a reconnect storm costs a
few statements per batch, not per user.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gchat import store
from gchat.batch import Batcher
from gchat.errors import Unavailable
from gchat.store import Database

log = logging.getLogger(__name__)


class StateMirror:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._online = Batcher(self._write_online)
        self._offline = Batcher(self._write_offline)

    def online(self, user_id: int) -> None:
        self._one(self._online, user_id, "online")

    def offline(self, user_id: int) -> None:
        self._one(self._offline, user_id, "offline")

    def online_many(self, user_ids: Sequence[int]) -> None:
        self._many(user_ids, "online")

    def offline_many(self, user_ids: Sequence[int]) -> None:
        self._many(user_ids, "offline")

    def write(self, user_ids: Sequence[int], state: str) -> None:
        """Mark these users, now. Raises gchat.errors.Unavailable."""
        if user_ids:
            self._write(list(user_ids), state)

    def reset(self) -> int:
        """Every user offline (nobody can be online: no node runs, or this
        one is alone on its store); how many were marked online. Raises
        gchat.errors.Unavailable."""
        with self._db.transaction() as s:
            return store.reset_states(s)

    def _one(self, batcher: Batcher[int, None], user_id: int, state: str) -> None:
        try:
            batcher(user_id)
        except Unavailable:
            log.warning("could not mirror user %d %s in the database", user_id, state)

    def _many(self, user_ids: Sequence[int], state: str) -> None:
        try:
            self.write(user_ids, state)
        except Unavailable:
            log.warning("could not mirror %d user(s) %s in the database", len(user_ids), state)

    def _write_online(self, user_ids: list[int]) -> list[None]:
        return self._write(user_ids, "online")

    def _write_offline(self, user_ids: list[int]) -> list[None]:
        return self._write(user_ids, "offline")

    def _write(self, user_ids: list[int], state: str) -> list[None]:
        with self._db.transaction() as s:
            store.set_state(s, user_ids, state)
        return [None] * len(user_ids)
