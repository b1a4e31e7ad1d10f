"""The users a run needs: registered on the spot, or reused from a users file
(one JSON object a line: id, password, token) so that a run of 20,000 or
50,000 users does not pay for 20,000 slow password hashes every time."""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import gevent
from gevent.pool import Pool

from gchat.protocol import dumps, loads
from gchat.tools.bench.wire import BenchError, Conn

PER_CONNECTION = 20  # registrations on one connection


@dataclass
class Account:
    id: int
    password: str
    name: str = ""
    token: str = ""


def load(path: str) -> list[Account]:
    if not path or not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [Account(**loads(line)) for line in f if line.strip()]


def save(path: str, accounts: list[Account]) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for a in accounts:
            f.write(dumps(asdict(a)) + b"\n")
    os.replace(tmp, path)


def register(address: tuple[str, int], n: int, concurrency: int = 16, prefix: str = "") -> list[Account]:
    """n new users, registered over `concurrency` connections at once."""
    prefix = prefix or "b" + uuid.uuid4().hex[:8]
    out: list[Account | None] = [None] * n

    def worker(start: int) -> None:
        conn: Conn | None = None
        try:
            for k, i in enumerate(range(start, n, concurrency)):
                # a node closes a connection that has not logged in within its
                # login timeout (30 s by default): a fresh one now and then
                if conn is None or k % PER_CONNECTION == 0:
                    if conn is not None:
                        conn.close()
                    conn = Conn(address)
                name, password = f"{prefix}_{i}", f"pw-{uuid.uuid4().hex[:12]}"
                uid, _ = conn.register(name, password)
                out[i] = Account(uid, password, name)
        finally:
            if conn is not None:
                conn.close()

    jobs = [gevent.spawn(worker, s) for s in range(min(concurrency, n))]
    gevent.joinall(jobs, raise_error=True)
    return [a for a in out if a is not None]


def ensure(address: tuple[str, int], n: int, path: str = "", concurrency: int = 16) -> list[Account]:
    """The first n users of the file, registering (and saving) what is missing."""
    have = load(path)
    if len(have) < n:
        have += register(address, n - len(have), concurrency)
        save(path, have)
    return have[:n]


def fetch_tokens(address: tuple[str, int], accounts: list[Account], path: str = "",
                 concurrency: int = 16) -> int:
    """Log in (password, asking for a resume token) every account that has no
    token yet, then leave without logging out (a log-out revokes the token).
    Returns how many tokens were fetched."""
    missing = [a for a in accounts if not a.token]

    def one(a: Account) -> None:
        conn = Conn(address)
        try:
            reply = conn.login(a.id, a.password, resume=True)
            if "token" not in reply:
                raise BenchError("the server does not issue resume tokens (docs/protocol.md section C)")
            a.token = reply["token"]
        finally:
            conn.close()

    Pool(concurrency).map(one, missing)
    if missing:
        save(path, _merge(path, accounts))
    return len(missing)


def _merge(path: str, accounts: list[Account]) -> list[Account]:
    """The file's accounts with the tokens of `accounts` written in."""
    by_id = {a.id: a for a in accounts}
    merged = [by_id.get(a.id, a) for a in load(path)]
    return merged or accounts


def to_wire(accounts: list[Account]) -> list[dict[str, Any]]:
    return [asdict(a) for a in accounts]


def from_wire(items: list[dict[str, Any]]) -> list[Account]:
    return [Account(**a) for a in items]
