"""Password hashing: argon2id from argon2-cffi, never plain text.

Hashing is deliberately slow (tens of milliseconds), so the server runs it
through `offload` (gevent's thread pool): argon2-cffi releases the GIL, which
keeps the event loop serving chat while a login storm hashes on another core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import PasswordHasher as _Argon2
from argon2 import exceptions as argon2_exc

T = TypeVar("T")
Offload = Callable[..., Any]


def run_inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


class Passwords:
    def __init__(self, time_cost: int = 2, memory_kib: int = 19456, offload: Offload = run_inline) -> None:
        self._hasher = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self._offload = offload

    def hash(self, password: str) -> str:
        return str(self._offload(self._hasher.hash, password))

    def verify(self, stored_hash: str, password: str) -> bool:
        return bool(self._offload(self._verify, stored_hash, password))

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other costs than configured now."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except argon2_exc.InvalidHashError:
            return True

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (argon2_exc.VerificationError, argon2_exc.InvalidHashError):
            return False
